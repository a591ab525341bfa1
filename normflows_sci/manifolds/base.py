"""The manifold protocol, Euclidean space, the uniform base and a chart wrapper for transforms.

A manifold object states how points are represented (angles, unit vectors, unit quaternions), checks
and projects points, samples uniformly, knows its Riemannian volume, gives orthonormal tangent bases
and one chart ``R^d -> M`` with its volume density. Densities on a manifold are with respect to its
Riemannian volume measure, so they integrate to 1 over it.
"""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor

from normflows_sci.checks import check_features, check_tensor
from normflows_sci.distributions import Distribution
from normflows_sci.nn import bounded_inputs
from normflows_sci.transforms import Transform

__all__ = ["Manifold", "Euclidean", "UniformManifold", "ChartTransform"]


def default_atol(dtype: torch.dtype) -> float:
    """Membership tolerance: loose enough for data stored in single precision."""
    return 1e-4


class Manifold(abc.ABC):
    """A Riemannian manifold embedded in ``R^features`` (its representation).

    Attributes:
        dim: intrinsic dimension ``d``.
        features: size of one point's representation (``event_shape == (features,)``).
        volume: Riemannian volume (``inf`` for unbounded manifolds).
        conditioner_features: width of :meth:`embed`, the continuous features conditioners see.
    """

    dim: int
    features: int
    conditioner_features: int

    @property
    def event_shape(self) -> torch.Size:
        return torch.Size([self.features])

    @property
    @abc.abstractmethod
    def volume(self) -> float:
        """Riemannian volume of the whole manifold."""

    @property
    def log_volume(self) -> float:
        return math.log(self.volume)

    @abc.abstractmethod
    def distance_to_manifold(self, x: Tensor) -> Tensor:
        """``(batch,)`` how far each representation is from a valid point (0 on the manifold)."""

    def contains(self, x: Tensor, *, atol: float | None = None) -> Tensor:
        """``(batch,)`` booleans: the rows of ``x`` that lie on the manifold (within ``atol``)."""
        atol = default_atol(x.dtype) if atol is None else atol
        return self.distance_to_manifold(x) <= atol

    def check(self, x: Tensor, *, name: str = "inputs", atol: float | None = None) -> Tensor:
        """Return ``x`` if every row is a finite point of the manifold, else raise ``ValueError``.

        Args:
            x: ``(batch, features)``.
            name: the argument name used in the error message.
            atol: tolerance (default 1e-4: data saved in single precision passes).
        """
        check_tensor(name, x, (self.features,))
        atol = default_atol(x.dtype) if atol is None else atol
        distance = self.distance_to_manifold(x)
        bad = distance > atol
        if bool(bad.any()):
            raise ValueError(
                f"{name} must lie on {self!r} ({self.representation}); {int(bad.sum())} of "
                f"{len(x)} rows are off it (largest deviation {float(distance.max()):.3g} > "
                f"atol={atol:g}). Project them with manifold.proj(x) if that is intended."
            )
        return x

    representation: str = ""

    @abc.abstractmethod
    def proj(self, x: Tensor) -> Tensor:
        """The nearest point of the manifold (wrapping, normalisation) for each row of ``x``."""

    @abc.abstractmethod
    def sample_uniform(
        self,
        num_samples: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """``(num_samples, features)`` uniform draws (density ``1 / volume``)."""

    @abc.abstractmethod
    def tangent_basis(self, x: Tensor) -> Tensor:
        """``(batch, features, dim)``: orthonormal columns spanning the tangent space at ``x``."""

    @abc.abstractmethod
    def from_chart(self, u: Tensor) -> Tensor:
        """Chart ``R^dim -> M``: ``u: (batch, dim) -> (batch, features)``."""

    @abc.abstractmethod
    def to_chart(self, x: Tensor) -> Tensor:
        """Inverse chart ``(batch, features) -> (batch, dim)``."""

    @abc.abstractmethod
    def chart_log_volume(self, u: Tensor) -> Tensor:
        """``(batch,)`` log of the volume element ``sqrt(det g(u))`` of the chart at ``u``."""

    def embed(self, x: Tensor) -> Tensor:
        """Continuous features of the points for conditioners: ``(batch, conditioner_features)``."""
        return x


class FlatChart:
    """Chart methods of a flat manifold (R^n, T^n): coordinates are their own chart, the tangent
    basis is the identity and the volume element is 1."""

    def tangent_basis(self, x: Tensor) -> Tensor:
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        return eye.expand(x.shape[0], self.dim, self.dim)

    def from_chart(self, u: Tensor) -> Tensor:
        return u

    def to_chart(self, x: Tensor) -> Tensor:
        return x

    def chart_log_volume(self, u: Tensor) -> Tensor:
        return torch.zeros(u.shape[0], dtype=u.dtype, device=u.device)


class Euclidean(FlatChart, Manifold):
    """``R^n`` (flat vectors): the positions of a product manifold.

    Example:
        >>> Euclidean(3).contains(torch.zeros(2, 3)).tolist()
        [True, True]
    """

    representation = "real vectors"

    def __init__(self, n: int):
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        self.dim = self.features = self.conditioner_features = int(n)

    def __repr__(self) -> str:
        return f"Euclidean({self.dim})"

    @property
    def volume(self) -> float:
        return math.inf

    def distance_to_manifold(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    def proj(self, x: Tensor) -> Tensor:
        return x

    def sample_uniform(self, num_samples, *, generator=None, dtype=None, device=None):
        raise ValueError(f"{self!r} has infinite volume: there is no uniform distribution on it")

    def embed(self, x: Tensor) -> Tensor:
        """The coordinates clamped by :func:`~normflows_sci.nn.bounded_inputs` (``±2**32`` in
        float32): the conditioners of the other factors of a product read them, and a
        coordinate of ``1e30`` would overflow their layers (NaN gradients)."""
        return bounded_inputs(x)


class UniformManifold(Distribution):
    """The uniform distribution on a manifold of finite volume: ``log p = -log volume``.

    Args:
        manifold: a :class:`Manifold` with finite volume (torus, sphere, SO(3), products of them).

    Example:
        >>> from normflows_sci.manifolds import Sphere
        >>> base = UniformManifold(Sphere(2))
        >>> round(float(base.log_prob(torch.tensor([[0.0, 0.0, 1.0]]))[0]), 4)  # -log(4 pi)
        -2.531
    """

    def __init__(self, manifold: Manifold):
        if not math.isfinite(manifold.volume):
            raise ValueError(f"manifold must have finite volume, got {manifold!r}")
        super().__init__(manifold.features)
        self.manifold = manifold

    def log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        return torch.full(
            inputs.shape[:1], -self.manifold.log_volume, dtype=inputs.dtype, device=inputs.device
        )

    def _sample(self, num_samples, generator):
        anchor = self._anchor
        return self.manifold.sample_uniform(
            num_samples, generator=generator, dtype=anchor.dtype, device=anchor.device
        )


class ChartTransform(Transform):
    """A manifold transform seen through the manifold's chart: a map ``R^dim -> R^dim``.

    ``u -> x = chart(u) -> transform(x) -> chart^{-1}``, with the log-determinant corrected by the
    chart's volume elements, ``log|det| = logabsdet_M + log vol(u) - log vol(u')``. It lets
    Euclidean machinery (autograd Jacobians, plots in coordinates) check and use manifold flows.

    Args:
        transform: a transform whose inputs and outputs are points of ``manifold``.
        manifold: the manifold.
    """

    def __init__(self, transform: Transform, manifold: Manifold):
        super().__init__()
        self.transform = transform
        self.manifold = manifold

    def _run(self, u, context, inverse):
        check_features(u, self.manifold.dim)
        x = self.manifold.from_chart(u)
        step = self.transform.inverse if inverse else self.transform
        y, logabsdet = step(x, context)
        v = self.manifold.to_chart(y)
        chart = self.manifold.chart_log_volume(u) - self.manifold.chart_log_volume(v)
        return v, logabsdet + chart

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._run(inputs, context, inverse=False)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._run(inputs, context, inverse=True)
