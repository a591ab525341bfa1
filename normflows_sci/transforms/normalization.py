"""Elementwise normalisation: a learnable (or fixed) affine layer, ActNorm, and angle centring."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normflows_sci.checks import check_features
from normflows_sci.transforms.base import Transform
from normflows_sci.transforms.elementwise import wrap_angle

__all__ = ["ElementwiseAffine", "ActNorm", "CircularShift"]


class ElementwiseAffine(Transform):
    """``z = x * exp(log_scale) + shift`` per feature.

    Args:
        features: ``D``.
        shift: initial shift, scalar or ``(D,)``.
        scale: initial positive scale, scalar or ``(D,)``.
        learnable: whether shift and scale are trained.

    Example:
        >>> t = ElementwiseAffine(2, shift=[1.0, -1.0], scale=2.0)
        >>> z, logabsdet = t(torch.zeros(1, 2))
        >>> z.tolist(), round(logabsdet.item(), 4)  # log|det| = 2 log 2
        ([[1.0, -1.0]], 1.3863)
    """

    context_features = 0  # takes no context (Flow checks contexts against this)

    def __init__(self, features: int, *, shift=0.0, scale=1.0, learnable: bool = True):
        super().__init__()
        self.features = features
        shift = torch.as_tensor(shift, dtype=torch.get_default_dtype()).expand(features).clone()
        scale = torch.as_tensor(scale, dtype=torch.get_default_dtype()).expand(features).clone()
        if not bool((scale > 0).all()):
            raise ValueError(f"scale must be positive, got {scale.tolist()}")
        if learnable:
            self.shift = nn.Parameter(shift)
            self.log_scale = nn.Parameter(scale.log())
        else:
            self.register_buffer("shift", shift)
            self.register_buffer("log_scale", scale.log())

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(inputs, self.features)
        outputs = inputs * self.log_scale.exp() + self.shift
        return outputs, self.log_scale.sum().expand(inputs.shape[0])

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(inputs, self.features)
        outputs = (inputs - self.shift) * (-self.log_scale).exp()
        return outputs, (-self.log_scale.sum()).expand(inputs.shape[0])


class ActNorm(ElementwiseAffine):
    """Elementwise affine layer initialised from the first training batch to zero mean, unit variance.

    The initialisation happens once, on the first forward call in training mode (with at least two
    samples), and is stored in the state dict; afterwards it is an ordinary learnable affine layer.

    References:
        Kingma, Dhariwal (2018), "Glow: Generative Flow with Invertible 1x1 Convolutions".

    Example:
        >>> t = ActNorm(2)
        >>> x = 3.0 + 2.0 * torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
        >>> z, _ = t(x)  # the first training-mode call initialises from this batch
        >>> bool(t.initialized)
        True
        >>> torch.allclose(z.mean(0), torch.zeros(2), atol=1e-5)
        True
        >>> torch.allclose(z.std(0), torch.ones(2))
        True
    """

    def __init__(self, features: int, *, eps: float = 1e-6):
        super().__init__(features)
        self.eps = eps
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize(self, inputs: Tensor) -> None:
        std = inputs.std(dim=0).clamp_min(self.eps)
        self.log_scale.copy_(-std.log())
        self.shift.copy_(-inputs.mean(dim=0) / std)
        self.initialized.fill_(True)

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(inputs, self.features)
        if self.training and inputs.shape[0] > 1 and not bool(self.initialized):
            self._initialize(inputs)
        return super().forward(inputs, context)


class CircularShift(Transform):
    """Rotate angles on the circle: ``z = wrap(x - shift)`` in ``[-pi, pi)`` on the angle features.

    Centres a concentrated angle on its circular mean, so that it can then be modelled as an
    ordinary real coordinate (standardised, Gaussian base) instead of a periodic one: a torsion
    that stays near ``+-pi`` is split in two by the cut at ``pi``, but ``wrap(x - mean)`` is a
    single bump at 0. Volume preserving (``logabsdet = 0``); a bijection of ``[-pi, pi)`` for the
    angle features, which must lie in that interval; other features pass through unchanged.

    Args:
        features: ``D``.
        shift: ``(D,)`` angles (radians) to subtract; features with shift exactly 0 pass through
            unchanged, so only the angle features may be shifted.

    Example:
        >>> t = CircularShift(2, shift=[3.0, 0.0])
        >>> z, logabsdet = t(torch.tensor([[-3.0, 5.0]], dtype=torch.float64))
        >>> [round(v, 4) for v in z[0].tolist()], logabsdet.tolist()
        ([0.2832, 5.0], [0.0])
        >>> [round(v, 4) for v in t.inverse(z)[0][0].tolist()]
        [-3.0, 5.0]
    """

    context_features = 0  # takes no context (Flow checks contexts against this)

    def __init__(self, features: int, *, shift):
        super().__init__()
        self.features = features
        shift = torch.as_tensor(shift, dtype=torch.get_default_dtype())
        if shift.shape != (features,) or not bool(torch.isfinite(shift).all()):
            raise ValueError(f"shift must be {features} finite angles, got {shift.tolist()}")
        self.register_buffer("shift", shift)
        self.register_buffer("mask", shift != 0)

    def _shift(self, inputs: Tensor, sign: float) -> tuple[Tensor, Tensor]:
        check_features(inputs, self.features)
        shifted = wrap_angle(inputs + sign * self.shift.to(inputs.dtype))
        return torch.where(self.mask, shifted, inputs), inputs.new_zeros(inputs.shape[0])

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._shift(inputs, -1.0)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._shift(inputs, 1.0)
