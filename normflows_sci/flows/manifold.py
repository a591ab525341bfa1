"""Ready-made flows on manifolds: tori, spheres, SO(3) and products of them.

Each factory returns a :class:`ManifoldFlow`, a :class:`~normflows_sci.flows.Flow` with a
``.manifold`` whose ``log_prob`` is a density with respect to the manifold's Riemannian volume (it
integrates to 1 over the manifold) and which checks (or projects) its inputs. ``sample`` and
``sample_and_log_prob`` work as for any Flow, so importance sampling, reverse-KL training and the
MCMC kernels take these flows unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from normflows_sci.checks import check_int
from normflows_sci.distributions import Distribution
from normflows_sci.flows.base import Flow
from normflows_sci.manifolds import (
    SO3,
    CircularSplineTransform,
    Manifold,
    PartTransform,
    Product,
    Sphere,
    Torus,
    TorusAutoregressiveTransform,
    TorusCouplingTransform,
    VonMises,
    VonMisesFisher,
)
from normflows_sci.transforms import CompositeTransform, Transform, alternating_mask

__all__ = ["ManifoldFlow", "TorusFlow", "SphereFlow", "SO3Flow", "ProductFlow"]


class ManifoldFlow(Flow):
    """A :class:`Flow` on a manifold: ``log_prob`` is with respect to the Riemannian volume.

    Args:
        transform: maps manifold points (data) to manifold points (latent).
        base: the latent distribution on the manifold.
        manifold: the :class:`~normflows_sci.manifolds.Manifold` of data and latent.
        project: project inputs of ``log_prob`` onto the manifold instead of raising on points
            off it (the default raises a ``ValueError`` naming the tolerance).
        atol: membership tolerance of the check (default 1e-4).
        **kwargs: :class:`Flow` options (``embedding``, ``validate_args``).
    """

    def __init__(
        self,
        transform: Transform,
        base: Distribution,
        manifold: Manifold,
        *,
        project: bool = False,
        atol: float | None = None,
        **kwargs,
    ):
        if base.event_shape != manifold.event_shape:
            raise ValueError(
                f"base must have event_shape {tuple(manifold.event_shape)} to live on {manifold!r}, "
                f"got {tuple(base.event_shape)}"
            )
        super().__init__(transform, base, **kwargs)
        self.manifold = manifold
        self.project = bool(project)
        self.atol = atol

    def log_prob(
        self, inputs: Tensor, context: Tensor | None = None, *, chunk_size: int | None = None
    ) -> Tensor:
        """Log-density of ``inputs: (batch, features)`` w.r.t. the manifold's volume; ``(batch,)``."""
        if self.project:
            inputs = self.manifold.proj(inputs)
        elif self.validate_args:
            self.manifold.check(inputs, atol=self.atol)
        return super().log_prob(inputs, context, chunk_size=chunk_size)


def _named_base(manifold: Manifold, base, named: dict) -> Distribution:
    """``base`` itself, the manifold's default base (``"uniform"``) or a named alternative."""
    if isinstance(base, Distribution):
        return base
    if base == "uniform":
        return manifold.default_base()
    if base in named:
        return named[base]()
    choices = ", ".join(repr(name) for name in ("uniform", *named))
    raise ValueError(f"base must be {choices} or a Distribution, got {base!r}")


def TorusFlow(
    n: int,
    context_features: int = 0,
    *,
    transforms: int = 4,
    bins: int = 8,
    hidden_features: int | Sequence[int] = (64, 64),
    coupling: bool = True,
    base: str | Distribution = "uniform",
    concentration: float = 1.0,
    embedding: nn.Module | None = None,
) -> ManifoldFlow:
    """Flow on the torus ``T^n`` (angles in ``[-pi, pi)``) from circular splines with rotations.

    Layers: independent circular splines (the marginals), then ``transforms`` coupling layers with
    alternating masks (``coupling=True``) or autoregressive layers with alternating orders, whose
    conditioners see ``(cos, sin)`` of the conditioning angles. ``T^1`` uses conditional (or free)
    circular splines only.

    Args:
        n: number of angles.
        context_features: width of the context (0 for none).
        transforms: number of coupling / autoregressive layers.
        bins: spline bins.
        hidden_features: conditioner widths.
        coupling: coupling (fast both ways) or autoregressive (fast density, ``n`` passes to sample).
        base: ``"uniform"``, ``"von_mises"`` (product, ``concentration``) or a Distribution.
        embedding: network applied to the context first.

    References:
        Rezende et al. (2020), "Normalizing Flows on Tori and Spheres".

    Example:
        >>> import math, torch
        >>> flow = TorusFlow(2, transforms=2, hidden_features=(16,))
        >>> x = flow.sample(5, generator=torch.Generator().manual_seed(0))
        >>> bool(((x >= -math.pi) & (x < math.pi)).all()), flow.log_prob(x).shape
        (True, torch.Size([5]))
    """
    n = check_int("n", n)
    transforms = check_int("transforms", transforms)
    net = dict(bins=bins, hidden_features=hidden_features, context_features=context_features)
    steps: list[Transform] = [CircularSplineTransform(n, **net)]
    for i in range(transforms):
        if n == 1:
            if context_features:
                steps.append(CircularSplineTransform(1, **net))
            continue
        if coupling:
            steps.append(TorusCouplingTransform(alternating_mask(n, even=i % 2 == 0), **net))
        else:
            order = list(range(n)) if i % 2 == 0 else list(range(n - 1, -1, -1))
            steps.append(TorusAutoregressiveTransform(n, order=order, **net))
    torus = Torus(n)
    von_mises = dict(von_mises=lambda: VonMises(n, concentration=concentration))
    base = _named_base(torus, base, von_mises)
    return ManifoldFlow(CompositeTransform(steps), base, torus, embedding=embedding)


def SphereFlow(
    n: int = 2,
    context_features: int = 0,
    *,
    transforms: int = 4,
    bins: int = 8,
    hidden_features: int | Sequence[int] = (64, 64),
    base: str | Distribution = "uniform",
    concentration: float = 1.0,
    embedding: nn.Module | None = None,
) -> ManifoldFlow:
    """Flow on the sphere ``S^n`` (unit vectors in ``R^(n+1)``), exact w.r.t. surface measure.

    ``S^2``: ``transforms`` blocks of a learned rotation and a cylindrical spline layer (interval
    spline on the height, circular spline on the azimuth conditioned on the height). ``S^1``:
    circular splines of the angle. ``S^n``, ``n >= 3``: rotation, radial spline (recursive
    construction) and axial twist per block.

    Args:
        n: sphere dimension.
        context_features: width of the context (0 for none).
        transforms: number of blocks.
        bins: spline bins.
        hidden_features: conditioner widths.
        base: ``"uniform"``, ``"vmf"`` (von Mises-Fisher about the last axis, ``concentration``)
            or a Distribution.
        embedding: network applied to the context first.

    References:
        Rezende et al. (2020), "Normalizing Flows on Tori and Spheres".

    Example:
        >>> import torch
        >>> flow = SphereFlow(2, transforms=2, hidden_features=(16,))
        >>> x = flow.sample(4, generator=torch.Generator().manual_seed(0))
        >>> bool(torch.allclose(x.norm(dim=-1), torch.ones(4), atol=1e-5))
        True
    """
    sphere = Sphere(check_int("n", n))
    steps = _blocks(
        sphere, check_int("transforms", transforms), context_features, bins, hidden_features
    )
    vmf = dict(vmf=lambda: VonMisesFisher(sphere.dim, concentration=concentration))
    base = _named_base(sphere, base, vmf)
    return ManifoldFlow(CompositeTransform(steps), base, sphere, embedding=embedding)


def _blocks(sphere: Sphere, transforms: int, context_features, bins, hidden_features) -> list:
    """``transforms`` blocks of the sphere's layers, flattened into one list."""
    net = dict(bins=bins, hidden_features=hidden_features)
    return [t for _ in range(transforms) for t in sphere.block_layers(context_features, **net)]


def SO3Flow(
    context_features: int = 0,
    *,
    transforms: int = 4,
    bins: int = 8,
    hidden_features: int | Sequence[int] = (64, 64),
    base: Distribution | None = None,
    embedding: nn.Module | None = None,
) -> ManifoldFlow:
    """Flow on SO(3) as unit quaternions ``(w, x, y, z)``; every layer commutes with ``q -> -q``.

    Blocks of a learned rotation of ``R^4``, an odd radial spline and an antipodal axial twist
    (conditioned on ``h^2``), on a Haar base: ``p(q) = p(-q)`` exactly, so ``log_prob`` is a proper
    density on SO(3) with respect to the volume ``pi^2`` (see :mod:`normflows_sci.manifolds.so3`).

    Args:
        context_features: width of the context (0 for none).
        transforms: number of blocks.
        bins: spline bins.
        hidden_features: conditioner widths.
        base: base distribution (default Haar); it must satisfy ``p(q) = p(-q)``.
        embedding: network applied to the context first.

    References:
        Koehler, Invernizzi, de Haan, Noé (2023), "Rigid body flows for sampling molecular crystal
        structures"; Rezende et al. (2020).

    Example:
        >>> import torch
        >>> flow = SO3Flow(transforms=2, hidden_features=(16,))
        >>> q = flow.sample(3, generator=torch.Generator().manual_seed(0))
        >>> bool(torch.allclose(flow.log_prob(q), flow.log_prob(-q), atol=1e-5))
        True
    """
    so3 = SO3()
    steps = _blocks(
        so3, check_int("transforms", transforms), context_features, bins, hidden_features
    )
    base = so3.default_base() if base is None else base
    return ManifoldFlow(CompositeTransform(steps), base, so3, embedding=embedding)


def ProductFlow(
    manifold: Product,
    context_features: int = 0,
    *,
    transforms: int = 3,
    bins: int = 8,
    hidden_features: int | Sequence[int] = (64, 64),
    tail_bound: float = 5.0,
    base: Distribution | None = None,
    embedding: nn.Module | None = None,
) -> ManifoldFlow:
    """Flow on a product such as ``R^k x T^m x S^2 x SO(3)^n`` (rigid bodies: positions and
    orientations), with conditioners that couple the factors.

    Each of the ``transforms`` rounds updates every factor in turn with that factor's layers
    (two complementary spline couplings on ``R^k`` and ``T^m``, sphere / SO(3) blocks; one pass
    in both directions, as reverse-KL training needs), conditioned on the
    embeddings of all other factors (``(cos, sin)`` of angles, unit vectors, rotation matrices of
    quaternions, so SO(3) factors keep ``p(q) = p(-q)``) and the context. Base: standard normal on
    ``R^k``, uniform on the compact factors (Haar on SO(3)).

    Args:
        manifold: a :class:`~normflows_sci.manifolds.Product`.
        context_features: width of the external context.
        transforms: rounds over all factors.
        bins: spline bins.
        hidden_features: conditioner widths.
        tail_bound: spline range of the Euclidean factors (identity tails outside).
        base: replaces the default product base.
        embedding: network applied to the context first.

    Example:
        >>> from normflows_sci.manifolds import Euclidean, Product, SO3
        >>> flow = ProductFlow(Product(Euclidean(3), SO3()), transforms=1, hidden_features=(16,))
        >>> flow.sample(2).shape
        torch.Size([2, 7])
    """
    if not isinstance(manifold, Product):
        raise TypeError(f"manifold must be a Product, got {type(manifold).__name__}")
    transforms = check_int("transforms", transforms)
    net = dict(bins=bins, hidden_features=hidden_features, tail_bound=tail_bound)
    steps: list[Transform] = []
    for _ in range(transforms):
        for index, factor in enumerate(manifold.factors):
            # Each factor builds its own layers (Manifold.flow_block), conditioned on the others.
            width = PartTransform.context_width(manifold, index, context_features)
            inner = factor.flow_block(width, **net)
            steps.append(PartTransform(manifold, index, inner, context_features=context_features))
    base = manifold.default_base() if base is None else base
    return ManifoldFlow(CompositeTransform(steps), base, manifold, embedding=embedding)
