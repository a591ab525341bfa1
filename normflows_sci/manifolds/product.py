"""Product manifolds ``M_1 x M_2 x ...`` (e.g. ``R^3 x SO(3)`` rigid bodies), their product
bases and the coupling layer that transforms one factor conditioned on all the others."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from normflows_sci.checks import check_context, check_features
from normflows_sci.distributions import Distribution
from normflows_sci.transforms import Transform

from .base import Euclidean, Manifold
from .torus import Torus

__all__ = ["Product", "ProductDistribution", "PartTransform", "circular_manifold"]


class Product(Manifold):
    """Cartesian product of manifolds, points stored side by side: ``(batch, sum of features)``.

    Volume, uniform sampling, charts and tangent bases are those of the factors; conditioners see
    the concatenated embeddings of the factors.

    Args:
        *manifolds: the factors, e.g. ``Product(Euclidean(3), SO3(), Torus(2))``.

    Example:
        >>> from normflows_sci.manifolds import Euclidean, SO3, Torus
        >>> m = Product(Euclidean(3), SO3(), Torus(2))
        >>> m.features, m.dim
        (9, 8)
        >>> [tuple(p.shape) for p in m.split(torch.zeros(5, 9))]
        [(5, 3), (5, 4), (5, 2)]
    """

    representation = "factors side by side"

    def __init__(self, *manifolds: Manifold):
        if len(manifolds) == 1 and isinstance(manifolds[0], (list, tuple)):
            manifolds = tuple(manifolds[0])
        if not manifolds or not all(isinstance(m, Manifold) for m in manifolds):
            raise TypeError(f"Product needs one or more Manifold factors, got {manifolds!r}")
        self.factors: tuple[Manifold, ...] = tuple(manifolds)
        self.sizes = [m.features for m in self.factors]
        self.offsets = [0, *torch.tensor(self.sizes).cumsum(0).tolist()]
        self.features = sum(self.sizes)
        self.dim = sum(m.dim for m in self.factors)
        self.conditioner_features = sum(m.conditioner_features for m in self.factors)
        # Block-diagonal tangent frames are the identity when every block is.
        self.flat = all(m.flat for m in self.factors)

    def __repr__(self) -> str:
        return "Product(" + ", ".join(map(repr, self.factors)) + ")"

    def __len__(self) -> int:
        return len(self.factors)

    @property
    def volume(self) -> float:
        return math.prod(m.volume for m in self.factors)

    @property
    def log_volume(self) -> float:
        return sum(m.log_volume for m in self.factors)

    def split(self, x: Tensor) -> list[Tensor]:
        """The factors' parts of ``x: (..., features)``."""
        return list(x.split(self.sizes, dim=-1))

    def join(self, parts: Sequence[Tensor]) -> Tensor:
        return torch.cat(list(parts), dim=-1)

    def distance_to_manifold(self, x: Tensor) -> Tensor:
        distances = [m.distance_to_manifold(p) for m, p in zip(self.factors, self.split(x))]
        return torch.stack(distances, -1).amax(-1)

    def proj(self, x: Tensor) -> Tensor:
        return self.join(m.proj(p) for m, p in zip(self.factors, self.split(x)))

    def sample_uniform(self, num_samples, *, generator=None, dtype=None, device=None):
        parts = [
            m.sample_uniform(num_samples, generator=generator, dtype=dtype, device=device)
            for m in self.factors
        ]
        return self.join(parts)

    def tangent_basis(self, x: Tensor) -> Tensor:
        """Block-diagonal: each factor's frame in its rows and columns (one copy per factor)."""
        basis = x.new_zeros(x.shape[0], self.features, self.dim)
        column = 0
        for m, p, row in zip(self.factors, self.split(x), self.offsets):
            basis[:, row : row + m.features, column : column + m.dim] = m.tangent_basis(p)
            column += m.dim
        return basis

    def _chart_split(self, u: Tensor) -> list[Tensor]:
        return list(u.split([m.dim for m in self.factors], dim=-1))

    def from_chart(self, u: Tensor) -> Tensor:
        return self.join(m.from_chart(p) for m, p in zip(self.factors, self._chart_split(u)))

    def to_chart(self, x: Tensor) -> Tensor:
        return torch.cat([m.to_chart(p) for m, p in zip(self.factors, self.split(x))], dim=-1)

    def chart_log_volume(self, u: Tensor) -> Tensor:
        terms = [m.chart_log_volume(p) for m, p in zip(self.factors, self._chart_split(u))]
        return torch.stack(terms, -1).sum(-1)

    def embed(self, x: Tensor) -> Tensor:
        return torch.cat([m.embed(p) for m, p in zip(self.factors, self.split(x))], dim=-1)

    def interpolant(self, x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Each factor's geodesic (the product geodesic), joined."""
        pieces = zip(self.factors, self.split(x0), self.split(x1))
        paths = [m.interpolant(a, b, t) for m, a, b in pieces]
        return self.join(p[0] for p in paths), self.join(p[1] for p in paths)

    def squared_distance_matrix(self, x: Tensor, y: Tensor) -> Tensor:
        """Sum of the factors' squared distances (the product metric)."""
        pieces = zip(self.factors, self.split(x), self.split(y))
        return sum(m.squared_distance_matrix(a, b) for m, a, b in pieces)

    def default_base(self) -> ProductDistribution:
        """The factors' default bases side by side (standard normal on ``R^k``, uniform on the
        compact factors, Haar on SO(3))."""
        return ProductDistribution([m.default_base() for m in self.factors])

    def flow_block(self, context_features=0, *, bins=8, hidden_features=(64, 64), tail_bound=5.0):
        raise TypeError(
            f"no flow layers for the factor {self!r} (nested products are not supported)"
        )

    def embed_others(self, x: Tensor, index: int) -> Tensor:
        """Concatenated embeddings of every factor except ``index``."""
        parts = self.split(x)
        return torch.cat(
            [m.embed(p) for i, (m, p) in enumerate(zip(self.factors, parts)) if i != index],
            dim=-1,
        )


class ProductDistribution(Distribution):
    """Independent distributions on the factors; ``log p`` is the sum.

    Args:
        distributions: one per factor, each with a flat ``event_shape``.

    Example:
        >>> from normflows_sci.distributions import StandardNormal
        >>> from normflows_sci.manifolds import HaarSO3
        >>> base = ProductDistribution([StandardNormal(3), HaarSO3()])
        >>> base.sample(4).shape
        torch.Size([4, 7])
    """

    def __init__(self, distributions: Sequence[Distribution]):
        distributions = list(distributions)
        if not distributions:
            raise ValueError("distributions must name at least one distribution")
        for d in distributions:
            if len(d.event_shape) != 1:
                raise ValueError(f"each distribution needs a flat event_shape, got {d.event_shape}")
        sizes = [d.event_shape[0] for d in distributions]
        super().__init__(sum(sizes))
        self.sizes = sizes
        self.parts = torch.nn.ModuleList(distributions)

    def log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        pieces = inputs.split(self.sizes, dim=-1)
        return sum(d.log_prob(p, context) for d, p in zip(self.parts, pieces))

    def _sample(self, num_samples, generator):
        return torch.cat([d.sample(num_samples, generator=generator) for d in self.parts], dim=-1)


class PartTransform(Transform):
    """Transforms factor ``index`` of a product manifold, conditioned on the others (coupling).

    The inner transform acts on the factor's points and receives as context the embeddings of all
    other factors (``(cos, sin)`` of angles, unit vectors, rotation matrices of quaternions), then
    the external context. The other factors pass through, so ``log|det|`` is the inner one's.

    Args:
        product: the product manifold.
        index: which factor to transform.
        transform: a transform of that factor built with ``context_features =
            PartTransform.context_width(product, index, context_features)``.
        context_features: width of the external context.

    Example:
        >>> from normflows_sci.manifolds import Euclidean, SO3, SphereRotation
        >>> m = Product(Euclidean(3), SO3())
        >>> width = PartTransform.context_width(m, 1)
        >>> layer = PartTransform(m, 1, SphereRotation(3, context_features=width))
        >>> x = m.proj(torch.randn(2, 7))
        >>> layer(x)[0].shape
        torch.Size([2, 7])
    """

    def __init__(
        self, product: Product, index: int, transform: Transform, *, context_features: int = 0
    ):
        super().__init__()
        if not isinstance(product, Product):
            raise TypeError(f"product must be a Product, got {type(product).__name__}")
        if not 0 <= index < len(product):
            raise ValueError(f"index must be in [0, {len(product)}), got {index}")
        self.product = product
        self.index = int(index)
        self.transform = transform
        self.context_features = int(context_features)

    @staticmethod
    def context_width(product: Product, index: int, context_features: int = 0) -> int:
        """Context width the inner transform of factor ``index`` must accept."""
        others = product.conditioner_features - product.factors[index].conditioner_features
        return others + context_features

    def _run(self, inputs, context, inverse):
        check_features(inputs, self.product.features)
        check_context(context, self.context_features)
        parts = self.product.split(inputs)
        cond = self.product.embed_others(inputs, self.index)
        if self.context_features:
            cond = torch.cat([cond, context], dim=-1)
        if cond.shape[-1] == 0:
            cond = None
        step = self.transform.inverse if inverse else self.transform
        parts[self.index], logabsdet = step(parts[self.index], cond)
        return self.product.join(parts), logabsdet

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._run(inputs, context, inverse=False)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._run(inputs, context, inverse=True)


def circular_manifold(circular: Sequence[bool] | Tensor) -> Manifold:
    """The manifold of coordinates of which ``circular`` marks the angles, positions kept.

    Runs of angles become :class:`~normflows_sci.manifolds.Torus` factors and runs of other
    coordinates :class:`~normflows_sci.manifolds.Euclidean` factors, in order: ``R^k x T^m`` with
    arc length on the angles and Lebesgue measure elsewhere. This is the manifold that
    ``NSF(..., circular=...)`` models; all angles give ``Torus(n)``, none ``Euclidean(n)``.

    Args:
        circular: ``(features,)`` booleans (or 0/1), True for angles in ``[-pi, pi)``.

    Example:
        >>> circular_manifold([False, True, True, False])
        Product(Euclidean(1), Torus(2), Euclidean(1))
        >>> circular_manifold([True, True])
        Torus(2)
    """
    flags = torch.as_tensor(circular)
    if flags.ndim != 1 or len(flags) == 0:
        raise ValueError(
            f"circular must be a non-empty 1-D sequence of booleans, got shape {tuple(flags.shape)}"
        )
    if flags.dtype != torch.bool and not bool(((flags == 0) | (flags == 1)).all()):
        raise ValueError(f"circular must hold booleans (or 0/1), got {flags.tolist()}")
    angles, counts = torch.unique_consecutive(flags.bool(), return_counts=True)
    factors = [
        Torus(n) if angle else Euclidean(n) for angle, n in zip(angles.tolist(), counts.tolist())
    ]
    return factors[0] if len(factors) == 1 else Product(*factors)
