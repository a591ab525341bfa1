"""The manifold protocol, Euclidean space, the uniform base and a chart wrapper for transforms.

A manifold object states how points are represented (angles, unit vectors, unit quaternions), checks
and projects points, samples uniformly, knows its Riemannian volume, gives orthonormal tangent bases
and one chart ``R^d -> M`` with its volume density. Densities on a manifold are with respect to its
Riemannian volume measure, so they integrate to 1 over it.

A manifold also owns the geometry the flows and trainers use, so they never branch on its type:
the geodesic interpolant and its velocity (:meth:`Manifold.interpolant`, flow matching), squared
geodesic distances between two batches (:meth:`Manifold.squared_distance_matrix`, OT pairing),
its default base distribution (:meth:`Manifold.default_base`), whether its tangent frame is the
identity (:attr:`Manifold.flat`, continuous flows) and the layers a product flow uses for it as a
factor (:meth:`Manifold.flow_block`). ``R^n`` is the manifold :class:`Euclidean`;
:func:`as_manifold` maps ``manifold=None`` to it.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from normflows_sci.checks import check_features, check_int, check_tensor
from normflows_sci.distributions import Distribution, StandardNormal
from normflows_sci.nn import bounded_inputs
from normflows_sci.transforms import (
    CompositeTransform,
    MaskedSplineAutoregressiveTransform,
    SplineCouplingTransform,
    Transform,
    alternating_mask,
)

__all__ = ["Manifold", "Euclidean", "UniformManifold", "ChartTransform", "as_manifold"]


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

    #: True when :meth:`tangent_basis` is the identity everywhere (``R^n``, ``T^n``): a velocity
    #: field needs no tangent projection and its Riemannian divergence is the Euclidean one.
    flat: bool = False

    def interpolant(self, x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The geodesic from ``x0`` to ``x1`` at time ``t`` and its velocity (flow matching).

        ``x_t = exp_{x0}(t log_{x0}(x1))`` and ``u_t = d x_t / dt`` (Chen & Lipman 2023).

        Args:
            x0, x1: ``(batch, features)`` points; ``t``: ``(batch, 1)`` times in ``[0, 1]``.

        Returns:
            ``(x_t, u_t)``, both ``(batch, features)``.
        """
        raise ValueError(
            f"{self!r} defines no geodesic interpolant (flow matching supports R^n, Torus, "
            "Sphere and products of them)"
        )

    def squared_distance_matrix(self, x: Tensor, y: Tensor) -> Tensor:
        """``(len(x), len(y))`` squared geodesic distances ``d(x_i, y_j)^2`` (OT pairing costs).

        Args:
            x: ``(n, features)`` points; ``y``: ``(m, features)`` points.
        """
        raise ValueError(
            f"{self!r} defines no geodesic distance (flow matching supports R^n, Torus, Sphere "
            "and products of them)"
        )

    def default_base(self) -> Distribution:
        """The base distribution flows on this manifold start from: uniform (finite volume)."""
        return UniformManifold(self)

    def flow_block(
        self,
        context_features: int = 0,
        *,
        bins: int = 8,
        hidden_features: int | Sequence[int] = (64, 64),
        tail_bound: float = 5.0,
    ) -> Transform:
        """The layers a manifold flow applies to this manifold (a factor of a product) per round.

        Args:
            context_features: context width the layers accept (in a product: the embeddings of
                the other factors, then the external context).
            bins: spline bins.
            hidden_features: conditioner widths.
            tail_bound: spline range of Euclidean coordinates (identity tails outside).

        Returns:
            A transform of ``(batch, features)`` points, the identity at initialisation.
        """
        raise TypeError(f"no flow layers for the factor {self!r}")


def as_manifold(manifold: Manifold | None, features: int | None = None) -> Manifold:
    """The manifold a flow or trainer works on: ``None`` is ``R^features`` (:class:`Euclidean`).

    Args:
        manifold: a :class:`Manifold`, or ``None`` for Euclidean space.
        features: the number of coordinates the caller expects (required with ``None``).

    Example:
        >>> as_manifold(None, 3)
        Euclidean(3)
    """
    if manifold is None:
        if features is None:
            raise ValueError("features is required when manifold is None (R^features)")
        return Euclidean(features)
    if not isinstance(manifold, Manifold):
        raise TypeError(
            f"manifold must be a normflows_sci.manifolds Manifold or None, got "
            f"{type(manifold).__name__}"
        )
    if features is not None and manifold.features != features:
        raise ValueError(
            f"manifold {manifold!r} has {manifold.features} coordinates, not features={features}"
        )
    return manifold


class FlatChart:
    """Chart methods of a flat manifold (R^n, T^n): coordinates are their own chart, the tangent
    basis is the identity and the volume element is 1."""

    flat = True

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
        self.dim = self.features = self.conditioner_features = check_int("n", n)

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

    def interpolant(self, x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The straight line ``t x1 + (1 - t) x0`` and its velocity ``x1 - x0``."""
        return t * x1 + (1 - t) * x0, x1 - x0

    def squared_distance_matrix(self, x: Tensor, y: Tensor) -> Tensor:
        return torch.cdist(x, y).square()

    def default_base(self) -> Distribution:
        """The standard normal (``R^n`` has no uniform distribution)."""
        return StandardNormal(self.dim)

    def flow_block(self, context_features=0, *, bins=8, hidden_features=(64, 64), tail_bound=5.0):
        """Two spline couplings with complementary masks (every coordinate moves, one pass both
        ways), or one autoregressive spline for ``R^1``."""
        net = dict(bins=bins, hidden_features=hidden_features, context_features=context_features)
        if self.dim == 1:
            return MaskedSplineAutoregressiveTransform(1, tail_bound=tail_bound, **net)
        masks = [alternating_mask(self.dim, even=True), alternating_mask(self.dim, even=False)]
        return CompositeTransform(
            [SplineCouplingTransform(m, tail_bound=tail_bound, **net) for m in masks]
        )


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
