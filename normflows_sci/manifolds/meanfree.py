"""The zero-centre-of-mass space of ``n`` identical particles in ``d`` dimensions.

Configurations are flat, ``x: (batch, n * d)`` with particle ``i`` in columns ``i d : (i + 1) d``
(the layout of :mod:`normflows_sci.energies.particles`). Energies of particle systems are
invariant under translations, so ``exp(-u)`` cannot be normalised over ``R^(n d)``; flows and
samplers work on the linear subspace ``{x : sum_i x_i = 0}`` of dimension ``(n - 1) d`` instead
(Köhler, Klein & Noé 2020; Satorras et al. 2021; Klein, Krämer & Noé 2023).

Bookkeeping: densities on :class:`MeanFree` are with respect to the ``(n - 1) d``-dimensional
volume (Lebesgue measure) of that subspace. A flow on it therefore estimates ``log Z = log int
exp(-u) dV`` and free energies of a Cartesian target ``exp(-u)`` with respect to the same volume,
as in the FAB and equivariant-flow-matching papers; the energies ignore the centre of mass, so the
target needs no change. A point off the subspace is treated as its projection (its centre of mass
is ignored, as the energies do).

The space also owns the alignment of configurations over its symmetries (permutations of the
identical particles and rotations, :meth:`MeanFree.align`), which equivariant OT flow matching uses
(:class:`~normflows_sci.training.EquivariantOT`).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from normflows_sci.checks import check_int, check_shape
from normflows_sci.distributions import Distribution, StandardNormal
from normflows_sci.manifolds.base import Manifold
from normflows_sci.nn import mean_free_basis

__all__ = ["MeanFree", "MeanFreeNormal", "kabsch_rotation"]


def kabsch_rotation(points: Tensor, reference: Tensor) -> Tensor:
    """The proper rotation ``R`` (``det R = +1``) minimising ``sum_i |R p_i - q_i|^2``.

    Kabsch's algorithm, batched: ``H = P^T Q = U S V^T``, ``R = V diag(1, ..., 1, s) U^T`` with
    ``s = sign det(V U^T)`` (the determinant correction that excludes reflections). In 2-D the
    same optimum in closed form: the angle ``atan2(H_01 - H_10, H_00 + H_11)``.

    Args:
        points, reference: ``(..., n, d)`` point sets ``P`` and ``Q`` (centred by the caller).

    Returns:
        ``(..., d, d)`` rotations; the aligned points are ``points @ R.mT``.

    Example:
        >>> q = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
        >>> p = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
        >>> (p @ kabsch_rotation(p, q).mT).round(decimals=6).abs().tolist()
        [[1.0, 0.0], [1.0, 0.0]]
    """
    covariance = points.mT @ reference
    if points.shape[-1] == 2:  # closed form: maximise tr(R H) over the angle of R
        angle = torch.atan2(
            covariance[..., 0, 1] - covariance[..., 1, 0],
            covariance[..., 0, 0] + covariance[..., 1, 1],
        )
        cos, sin = angle.cos(), angle.sin()
        return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    u, _, vh = torch.linalg.svd(covariance)
    v = vh.mT
    sign = torch.linalg.det(v @ u.mT).sign()
    # det = 0 only for degenerate sets (all points on a hyperplane): any sign is optimal there.
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    flip = torch.ones(
        points.shape[:-2] + points.shape[-1:], dtype=points.dtype, device=points.device
    )
    flip[..., -1] = sign
    return (v * flip[..., None, :]) @ u.mT


# Up to this many particles the optimal assignment is found by trying every permutation at once
# (5! = 120 per pair: one batched tensor operation instead of a scipy call per pair).
_EXHAUSTIVE_PARTICLES = 5


def _assignments(cost: Tensor) -> Tensor:
    """``(batch, n)``: for each ``cost: (batch, n, n)`` the column matched to each row, minimising
    the summed cost (an exact linear assignment: every permutation for ``n <= 5``, else the
    Hungarian/Jonker-Volgenant algorithm of scipy, one call per configuration pair)."""
    n = cost.shape[-1]
    if n <= _EXHAUSTIVE_PARTICLES:
        perms = torch.tensor(list(itertools.permutations(range(n))), device=cost.device)
        # One-hot (n * n, n!) selector: the summed cost of every permutation is one matmul.
        selector = torch.zeros(n, n, len(perms), dtype=cost.dtype, device=cost.device)
        selector[torch.arange(n)[None, :], perms, torch.arange(len(perms))[:, None]] = 1.0
        totals = cost.flatten(1) @ selector.flatten(0, 1)  # (batch, n!)
        return perms[totals.argmin(-1)]
    matrices = cost.detach().double().cpu().numpy()
    columns = [linear_sum_assignment(m)[1] for m in matrices]
    if not columns:
        return torch.zeros(0, n, dtype=torch.long, device=cost.device)
    return torch.as_tensor(np.stack(columns), dtype=torch.long, device=cost.device)


class MeanFree(Manifold):
    """The zero-centre-of-mass subspace of ``n_particles`` particles in ``spatial_dim`` dimensions.

    A linear subspace of ``R^(n d)`` of dimension ``(n - 1) d``: :meth:`proj` removes the centre
    of mass, :meth:`tangent_basis` is a constant orthonormal basis (a Helmert basis of the
    sum-zero vectors of ``R^n`` times ``I_d``), the chart is ``u -> B u`` (volume element 1) and
    :meth:`default_base` is :class:`MeanFreeNormal`. Densities are with respect to the subspace's
    ``(n - 1) d``-dimensional volume (see the module docstring for ``log Z`` bookkeeping).

    Args:
        n_particles: number of identical particles (>= 2).
        spatial_dim: dimension of space (>= 1).

    Example:
        >>> space = MeanFree(2, 2)
        >>> space.dim, space.features
        (2, 4)
        >>> space.proj(torch.tensor([[0.0, 0.0, 2.0, 4.0]])).tolist()
        [[-1.0, -2.0, 1.0, 2.0]]
    """

    representation = "flat particle coordinates with zero centre of mass"

    def __init__(self, n_particles: int, spatial_dim: int):
        self.n_particles = check_int("n_particles", n_particles, minimum=2)
        self.spatial_dim = check_int("spatial_dim", spatial_dim, minimum=1)
        self.features = self.conditioner_features = self.n_particles * self.spatial_dim
        self.dim = (self.n_particles - 1) * self.spatial_dim
        self._basis = mean_free_basis(self.n_particles, self.spatial_dim)

    def __repr__(self) -> str:
        return f"MeanFree(n_particles={self.n_particles}, spatial_dim={self.spatial_dim})"

    @property
    def particle_shape(self) -> tuple[int, int]:
        """``(n_particles, spatial_dim)``: how velocity fields' exact-divergence hooks (e.g.
        :class:`~normflows_sci.nn.EGNNVelocity`) recognise this subspace."""
        return self.n_particles, self.spatial_dim

    @property
    def volume(self) -> float:
        return math.inf

    def particles(self, x: Tensor) -> Tensor:
        """``(..., n * d) -> (..., n, d)`` (a view)."""
        return x.unflatten(-1, (self.n_particles, self.spatial_dim))

    def center_of_mass(self, x: Tensor) -> Tensor:
        """``(..., d)`` centre of mass (equal masses) of ``x: (..., n * d)``."""
        return self.particles(x).mean(-2)

    def distance_to_manifold(self, x: Tensor) -> Tensor:
        """Euclidean distance to the subspace, ``sqrt(n) |centre of mass|``."""
        return self.center_of_mass(x).norm(dim=-1) * math.sqrt(self.n_particles)

    def proj(self, x: Tensor) -> Tensor:
        """Remove the centre of mass (the orthogonal projection onto the subspace)."""
        particles = self.particles(x)
        return (particles - particles.mean(-2, keepdim=True)).flatten(-2)

    def sample_uniform(self, num_samples, *, generator=None, dtype=None, device=None):
        raise ValueError(f"{self!r} has infinite volume: there is no uniform distribution on it")

    def basis(self, like: Tensor) -> Tensor:
        """The ``(n d, (n - 1) d)`` orthonormal basis in the dtype and device of ``like``."""
        return self._basis.to(dtype=like.dtype, device=like.device)

    def tangent_basis(self, x: Tensor) -> Tensor:
        basis = self.basis(x)
        return basis.expand(x.shape[0], *basis.shape)

    def from_chart(self, u: Tensor) -> Tensor:
        return u @ self.basis(u).T

    def to_chart(self, x: Tensor) -> Tensor:
        return x @ self.basis(x)

    def chart_log_volume(self, u: Tensor) -> Tensor:
        return torch.zeros(u.shape[0], dtype=u.dtype, device=u.device)

    def interpolant(self, x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The straight line ``t x1 + (1 - t) x0`` (it stays in the subspace) and ``x1 - x0``."""
        x0, x1 = self.proj(x0), self.proj(x1)
        return t * x1 + (1 - t) * x0, x1 - x0

    def squared_distance_matrix(self, x: Tensor, y: Tensor) -> Tensor:
        """Squared Euclidean distances of the projections (no alignment; see :meth:`align`)."""
        return torch.cdist(self.proj(x), self.proj(y)).square()

    def default_base(self) -> Distribution:
        """:class:`MeanFreeNormal` of this space."""
        return MeanFreeNormal(self.n_particles, self.spatial_dim)

    def align(self, x: Tensor, reference: Tensor, *, iterations: int = 1) -> tuple[Tensor, Tensor]:
        """Move each row of ``x`` towards the matching row of ``reference`` by a permutation of
        the particles and a proper rotation (Klein, Krämer & Noé 2023, equivariant OT).

        Each iteration first permutes (the optimal assignment of particles under the squared
        distance: every permutation at once for up to 5 particles, else scipy's Hungarian
        algorithm per row) and then rotates (:func:`kabsch_rotation`); each
        step minimises the squared distance over its group given the other, and the identity is
        a candidate, so the distance never increases (a local optimum of the joint problem, not
        necessarily the global one). Both are projected onto the subspace first. The result is
        equivalent to ``x`` (same pairwise particle distances).

        Args:
            x, reference: ``(batch, n * d)`` configurations.
            iterations: permutation-then-rotation rounds (>= 1).

        Returns:
            ``(aligned, squared_distance)``: ``(batch, n * d)`` and ``(batch,)``.
        """
        check_shape("x", x, (self.features,))
        check_shape("reference", reference, (self.features,))
        if len(x) != len(reference):
            raise ValueError(
                f"x and reference must have the same batch size, got {len(x)} and {len(reference)}"
            )
        iterations = check_int("iterations", iterations, minimum=1)
        points, target = self.particles(self.proj(x)), self.particles(self.proj(reference))
        for _ in range(iterations):
            # cost[b, i, j]: particle j of x placed at particle i of the reference.
            columns = _assignments(torch.cdist(target, points).square())
            points = torch.take_along_dim(points, columns[..., None], dim=1)
            points = points @ kabsch_rotation(points, target).mT
        aligned = points.flatten(-2)
        return aligned, (aligned - target.flatten(-2)).square().sum(-1)


class MeanFreeNormal(Distribution):
    """Standard normal on the zero-centre-of-mass subspace (:class:`MeanFree`).

    ``log p(x) = -(n - 1) d / 2 log(2 pi) - |x|^2 / 2`` for ``x`` in the subspace, a density with
    respect to its ``(n - 1) d``-dimensional volume (it integrates to 1 over the subspace); a
    point off it is evaluated at its projection (its centre of mass is ignored). Samples are
    standard normal particles with the centre of mass removed.

    Args:
        n_particles: number of particles (>= 2).
        spatial_dim: dimension of space (>= 1).

    Example:
        >>> base = MeanFreeNormal(2, 1)  # the line x_1 = -x_0 of R^2
        >>> round(float(base.log_prob(torch.zeros(1, 2))[0]), 4)  # -log(2 pi) / 2
        -0.9189
    """

    def __init__(self, n_particles: int, spatial_dim: int):
        self.space = MeanFree(n_particles, spatial_dim)
        super().__init__(self.space.features)
        self.n_particles, self.spatial_dim = self.space.n_particles, self.space.spatial_dim
        # The overflow-safe square of StandardNormal over all n d coordinates, then the
        # normalising constant of the (n - 1) d-dimensional subspace.
        self._normal = StandardNormal(self.space.features)
        self._log_offset = 0.5 * self.spatial_dim * math.log(2 * math.pi)

    def __repr__(self) -> str:
        return f"MeanFreeNormal(n_particles={self.n_particles}, spatial_dim={self.spatial_dim})"

    def _log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        return self._normal.log_prob(self.space.proj(inputs)) + self._log_offset

    def _sample(self, num_samples, generator):
        noise = self._randn(num_samples, self.space.features, generator=generator)
        return self.space.proj(noise)
