"""The Transform contract and its compositions.

Calling convention (shared with nflows, so transforms are interchangeable)::

    z, logabsdet = t(x, context=None)          # data -> latent, log|det dz/dx|, shape (batch,)
    x, logabsdet = t.inverse(z, context=None)  # latent -> data, log|det dx/dz|
"""

from __future__ import annotations

import abc
from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["InverseNotAvailable", "Transform", "CompositeTransform", "InverseTransform"]


class InverseNotAvailable(NotImplementedError):
    """Raised by a transform whose inverse has no closed form and no numerical solver."""


class Transform(nn.Module, abc.ABC):
    """Base class of all invertible maps.

    Subclasses implement ``forward(inputs, context=None)`` and ``inverse(inputs, context=None)``,
    each returning ``(outputs, logabsdet)`` with ``logabsdet`` of shape ``(batch,)``.
    """

    @abc.abstractmethod
    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data to latent: ``(outputs, logabsdet)``."""

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise InverseNotAvailable(f"{type(self).__name__} has no inverse")


class CompositeTransform(Transform):
    """Applies transforms in order; the inverse runs them backwards.

    Args:
        transforms: the steps, data side first.

    Example:
        >>> from normflows_sci.transforms import CompositeTransform, ReversePermutation
        >>> t = CompositeTransform([ReversePermutation(3), ReversePermutation(3)])
        >>> z, logabsdet = t(torch.arange(3.0).reshape(1, 3))
        >>> z.tolist(), logabsdet.tolist()
        ([[0.0, 1.0, 2.0]], [0.0])
    """

    def __init__(self, transforms: Iterable[Transform]):
        super().__init__()
        self._transforms = nn.ModuleList(transforms)

    def __len__(self) -> int:
        return len(self._transforms)

    def __iter__(self):
        return iter(self._transforms)

    def __getitem__(self, index):
        return self._transforms[index]

    @staticmethod
    def _cascade(inputs, context, steps):
        total = torch.zeros(inputs.shape[0], dtype=inputs.dtype, device=inputs.device)
        for step in steps:
            inputs, logabsdet = step(inputs, context)
            total = total + logabsdet
        return inputs, total

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._cascade(inputs, context, self._transforms)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._cascade(inputs, context, (t.inverse for t in reversed(self._transforms)))


class InverseTransform(Transform):
    """Swaps the two directions of a transform: ``forward`` runs ``transform.inverse`` and
    ``inverse`` runs ``transform``.

    Args:
        transform: the transform to invert (parameters shared).

    Example:
        >>> from normflows_sci.transforms import ElementwiseAffine
        >>> affine = ElementwiseAffine(1, shift=1.0, scale=2.0)  # x -> 2 x + 1
        >>> z, logabsdet = InverseTransform(affine)(torch.tensor([[5.0]]))  # x -> (x - 1) / 2
        >>> round(z.item(), 4), round(logabsdet.item(), 4)  # log|det| = -log 2
        (2.0, -0.6931)
    """

    def __init__(self, transform: Transform):
        super().__init__()
        self._transform = transform

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._transform.inverse(inputs, context)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._transform(inputs, context)
