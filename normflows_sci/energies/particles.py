"""Particle systems: pair-potential clusters with translation, rotation and permutation symmetry.

Configurations are flat: ``x: (batch, n_particles * spatial_dim)``, particle ``i`` in columns
``i * spatial_dim : (i + 1) * spatial_dim``. The helpers ``center_of_mass``,
``remove_center_of_mass`` and ``pairwise_distances`` work on that layout for any leading batch
dimensions and are usable by flows and samplers directly.

Centre of mass: the energies here are invariant under translations (and rotations and permutations),
so ``exp(-u)`` cannot be normalised over all of ``R^(n d)``. As in the equivariant-flow literature
(Köhler, Klein, Noé 2020; Satorras et al. 2021; FAB, Midgley et al. 2023), samplers and flows should
work in the zero-centre-of-mass subspace (dimension ``(n - 1) d``): project with
``remove_center_of_mass``, draw base samples there (e.g. a standard normal projected by it), and
count densities with respect to the ``(n - 1) d``-dimensional volume of that subspace. The energies
themselves accept any configuration; they ignore the centre of mass, so projecting changes nothing.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from normflows_sci.energies.base import Energy

__all__ = [
    "ParticleEnergy",
    "DW4",
    "LJ13",
    "center_of_mass",
    "remove_center_of_mass",
    "pairwise_distances",
    "pairwise_squared_distances",
]


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def _check_real(name: str, value, *, positive: bool = False, non_negative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if non_negative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return value


def _particles(x: Tensor, n_particles: int, spatial_dim: int) -> Tensor:
    """``(..., n * d)`` -> ``(..., n, d)`` with a clear error on a mismatched last dimension."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    expected = n_particles * spatial_dim
    if x.ndim < 1 or x.shape[-1] != expected:
        raise ValueError(
            f"x must have shape (..., {expected}) for {n_particles} particles in {spatial_dim}-D "
            f"(n_particles * spatial_dim), got {tuple(x.shape)}"
        )
    return x.unflatten(-1, (n_particles, spatial_dim))


def center_of_mass(x: Tensor, n_particles: int, spatial_dim: int) -> Tensor:
    """Centre of mass (equal masses) of flat configurations.

    Args:
        x: ``(..., n_particles * spatial_dim)``.
        n_particles: number of particles.
        spatial_dim: dimension of space.

    Returns:
        ``(..., spatial_dim)``.

    >>> center_of_mass(torch.tensor([[0.0, 0.0, 2.0, 4.0]]), 2, 2)
    tensor([[1., 2.]])
    """
    return _particles(x, n_particles, spatial_dim).mean(-2)


def remove_center_of_mass(x: Tensor, n_particles: int, spatial_dim: int) -> Tensor:
    """Project flat configurations onto the zero-centre-of-mass subspace (an orthogonal projection).

    Differentiable and idempotent; the result has the shape of ``x``. Applied to a standard normal
    in ``R^(n d)`` it gives the standard normal of the ``(n - 1) d``-dimensional subspace.

    Args:
        x: ``(..., n_particles * spatial_dim)``.
        n_particles: number of particles.
        spatial_dim: dimension of space.

    >>> remove_center_of_mass(torch.tensor([[0.0, 0.0, 2.0, 4.0]]), 2, 2)
    tensor([[-1., -2.,  1.,  2.]])
    """
    particles = _particles(x, n_particles, spatial_dim)
    return (particles - particles.mean(-2, keepdim=True)).flatten(-2)


def pairwise_squared_distances(x: Tensor, n_particles: int, spatial_dim: int) -> Tensor:
    """Squared distances of all particle pairs ``i < j``, in ``torch.triu_indices(n, n, 1)`` order.

    Args:
        x: ``(..., n_particles * spatial_dim)``.
        n_particles: number of particles.
        spatial_dim: dimension of space.

    Returns:
        ``(..., n_particles * (n_particles - 1) / 2)``.

    Example:
        >>> x = torch.tensor([[0.0, 0.0, 3.0, 0.0, 0.0, 4.0]])  # 3 particles in 2-D
        >>> pairwise_squared_distances(x, 3, 2).tolist()  # pairs (0, 1), (0, 2), (1, 2)
        [[9.0, 16.0, 25.0]]
    """
    particles = _particles(x, n_particles, spatial_dim)
    first, second = torch.triu_indices(n_particles, n_particles, 1, device=x.device)
    differences = particles[..., first, :] - particles[..., second, :]
    return differences.pow(2).sum(-1)


def pairwise_distances(x: Tensor, n_particles: int, spatial_dim: int) -> Tensor:
    """Distances of all particle pairs ``i < j``, in ``torch.triu_indices(n, n, 1)`` order.

    Coincident particles get distance 0 with a zero gradient (instead of the NaN of ``sqrt'(0)``).

    Args:
        x: ``(..., n_particles * spatial_dim)``.
        n_particles: number of particles.
        spatial_dim: dimension of space.

    Returns:
        ``(..., n_particles * (n_particles - 1) / 2)``.

    >>> pairwise_distances(torch.tensor([[0.0, 0.0, 3.0, 4.0, 0.0, 1.0]]), 3, 2)
    tensor([[5.0000, 1.0000, 4.2426]])
    """
    squared = pairwise_squared_distances(x, n_particles, spatial_dim)
    positive = squared > 0
    # The inner where keeps sqrt away from 0 so its infinite slope never meets a zero upstream.
    safe = torch.where(positive, squared, torch.ones_like(squared))
    return torch.where(positive, safe.sqrt(), torch.zeros_like(squared))


class ParticleEnergy(Energy):
    """Base class of energies of ``n_particles`` identical particles in ``spatial_dim`` dimensions.

    Inputs are flat, ``x: (batch, n_particles * spatial_dim)``. Subclasses implement ``_energy``;
    the helpers below call the module-level functions with this system's sizes.

    Args:
        n_particles: number of particles (>= 2).
        spatial_dim: dimension of space (>= 1).
        validate_args: check inputs (shape, finiteness) on every call.

    Attributes:
        n_particles, spatial_dim: the sizes.
        num_pairs: ``n_particles * (n_particles - 1) / 2``.
        zero_com_dim: ``(n_particles - 1) * spatial_dim``, the dimension of the zero-centre-of-mass
            subspace in which flows and samplers should work.
    """

    def __init__(self, n_particles: int, spatial_dim: int, *, validate_args: bool = True):
        n = _check_count("n_particles", n_particles, 2)
        d = _check_count("spatial_dim", spatial_dim, 1)
        super().__init__(n * d, validate_args=validate_args)
        self.n_particles = n
        self.spatial_dim = d
        self.num_pairs = n * (n - 1) // 2
        self.zero_com_dim = (n - 1) * d

    def center_of_mass(self, x: Tensor) -> Tensor:
        """Centre of mass ``(..., spatial_dim)`` of ``x: (..., n_particles * spatial_dim)``."""
        return center_of_mass(x, self.n_particles, self.spatial_dim)

    def remove_center_of_mass(self, x: Tensor) -> Tensor:
        """Projection of ``x`` onto the zero-centre-of-mass subspace (shape of ``x``)."""
        return remove_center_of_mass(x, self.n_particles, self.spatial_dim)

    def pairwise_distances(self, x: Tensor) -> Tensor:
        """Pair distances ``(..., num_pairs)`` in ``torch.triu_indices`` order."""
        return pairwise_distances(x, self.n_particles, self.spatial_dim)

    def pairwise_squared_distances(self, x: Tensor) -> Tensor:
        """Squared pair distances ``(..., num_pairs)`` in ``torch.triu_indices`` order."""
        return pairwise_squared_distances(x, self.n_particles, self.spatial_dim)


class DW4(ParticleEnergy):
    """Double-well pair potential: 4 particles in 2-D (DW4), or any other count.

    ``u(x) = (1 / tau) Σ_{i<j} [a (d_ij - d0) + b (d_ij - d0)² + c (d_ij - d0)⁴]``, each unordered pair
    once (the paper's ``1 / (2 tau) Σ_{i≠j}``, as in bgflow and FAB). With the defaults every pair
    distance has two preferred values, ``d0 ± sqrt(-b / (2c)) ≈ 4 ± 1.49``, separated by a barrier
    of ``b² / (4c) ≈ 4.4 kT`` per pair.

    Invariant under translations, rotations, reflections and permutations of the particles; work
    in the zero-centre-of-mass subspace (see the module docstring). ``log_z`` is not known
    (``None``). Coincident particles give a finite energy (distance 0, zero distance gradient).

    Args:
        a, b, c: coefficients of the linear, quadratic and quartic terms (c > 0 keeps it confining).
        d0: preferred distance offset.
        tau: temperature dividing the energy, > 0.
        n_particles: number of particles (4 for DW4).
        spatial_dim: dimension of space (2 for DW4).
        validate_args: check inputs (shape, finiteness) on every call.

    References:
        Köhler, Klein, Noé, "Equivariant flows: exact likelihood generative learning for symmetric
        densities", ICML 2020; Midgley et al., "Flow annealed importance sampling bootstrap", ICLR 2023.

    >>> target = DW4()
    >>> square = torch.tensor([[0.0, 0.0, 4.0, 0.0, 4.0, 4.0, 0.0, 4.0]])
    >>> target.pairwise_distances(square)
    tensor([[4.0000, 5.6569, 4.0000, 4.0000, 5.6569, 4.0000]])
    >>> target.energy(square).shape
    torch.Size([1])
    """

    def __init__(
        self,
        a: float = 0.0,
        b: float = -4.0,
        c: float = 0.9,
        d0: float = 4.0,
        tau: float = 1.0,
        *,
        n_particles: int = 4,
        spatial_dim: int = 2,
        validate_args: bool = True,
    ):
        super().__init__(n_particles, spatial_dim, validate_args=validate_args)
        self.a = _check_real("a", a)
        self.b = _check_real("b", b)
        self.c = _check_real("c", c)
        self.d0 = _check_real("d0", d0)
        self.tau = _check_real("tau", tau, positive=True)

    def pair_energy(self, distances: Tensor) -> Tensor:
        """Energy of pairs at ``distances`` (any shape, same shape out), already divided by tau."""
        offset = distances - self.d0
        squared = offset * offset
        return (self.a * offset + self.b * squared + self.c * squared * squared) / self.tau

    def _energy(self, x: Tensor) -> Tensor:
        return self.pair_energy(self.pairwise_distances(x)).sum(-1)


class LJ13(ParticleEnergy):
    """Lennard-Jones cluster with harmonic centring: 13 particles in 3-D (LJ13), or any other count.

    ``u(x) = (epsilon / tau) Σ_{i<j} [(r_min / d_ij)¹² - 2 (r_min / d_ij)⁶]
    + (oscillator_scale / 2) Σ_i |x_i - x_com|²``.
    Each unordered pair is counted once: the paper's ``epsilon / (2 tau) Σ_{i≠j}`` over ordered
    pairs, as in bgflow and FAB; so a pair at ``r_min`` contributes ``-epsilon / tau`` and the
    icosahedral LJ13 ground state has LJ energy ``-44.326801 epsilon`` (Cambridge Cluster Database).
    The harmonic term (as in bgflow/FAB, not divided by tau) keeps the cluster from evaporating; it
    pulls particles towards their centre of mass, not towards the origin, so the energy stays
    translation invariant: work in the zero-centre-of-mass subspace (see the module docstring).
    ``oscillator_scale=0`` gives the plain LJ cluster (then ``exp(-u)`` is not normalisable).

    Close contacts: distances below ``min_distance`` (default ``0.01 r_min``) are raised to it in the
    pair term, which is then ``≈ 1e24 epsilon / tau`` (probability ``exp(-1e24) = 0``, as for the true
    potential) with zero force from that pair, so energies and forces are finite and NaN-free
    everywhere, even at coincident particles and in float32. This changes nothing a sampler can
    see; ``min_distance=0`` gives the bare potential, which is ``+inf`` at coincident particles and
    whose forces overflow (``inf``, and NaN in components whose separation is exactly zero) below
    ``d ≈ 1.3e-3 r_min`` in float32.

    Args:
        epsilon: well depth, > 0.
        r_min: distance of the pair-energy minimum, > 0.
        tau: temperature dividing the Lennard-Jones term, > 0.
        oscillator_scale: spring constant of the centring term, >= 0.
        min_distance: floor on pair distances in the pair term, >= 0; ``None`` means ``0.01 r_min``.
        n_particles: number of particles (13 for LJ13).
        spatial_dim: dimension of space (3 for LJ13).
        validate_args: check inputs (shape, finiteness) on every call.

    References:
        Köhler, Klein, Noé, "Equivariant flows: exact likelihood generative learning for symmetric
        densities", ICML 2020; Midgley et al., "Flow annealed importance sampling bootstrap", ICLR 2023.

    >>> target = LJ13()
    >>> float(target.pair_energy(torch.tensor(1.0)))
    -1.0
    """

    def __init__(
        self,
        epsilon: float = 1.0,
        r_min: float = 1.0,
        tau: float = 1.0,
        oscillator_scale: float = 1.0,
        *,
        min_distance: float | None = None,
        n_particles: int = 13,
        spatial_dim: int = 3,
        validate_args: bool = True,
    ):
        super().__init__(n_particles, spatial_dim, validate_args=validate_args)
        self.epsilon = _check_real("epsilon", epsilon, positive=True)
        self.r_min = _check_real("r_min", r_min, positive=True)
        self.tau = _check_real("tau", tau, positive=True)
        self.oscillator_scale = _check_real("oscillator_scale", oscillator_scale, non_negative=True)
        if min_distance is None:
            min_distance = 0.01 * self.r_min
        self.min_distance = _check_real("min_distance", min_distance, non_negative=True)

    def _pair_energy_squared(self, squared_distances: Tensor) -> Tensor:
        if self.min_distance:
            squared_distances = squared_distances.clamp_min(self.min_distance**2)
        sixth = (self.r_min**2 / squared_distances).pow(3)
        return (self.epsilon / self.tau) * sixth * (sixth - 2.0)

    def pair_energy(self, distances: Tensor) -> Tensor:
        """Lennard-Jones energy of pairs at ``distances`` (any shape, same shape out), over tau."""
        return self._pair_energy_squared(distances * distances)

    def lennard_jones_energy(self, x: Tensor) -> Tensor:
        """The pair part of the energy alone, ``(batch,)`` (no centring term)."""
        return self._pair_energy_squared(self.pairwise_squared_distances(x)).sum(-1)

    def _energy(self, x: Tensor) -> Tensor:
        energy = self.lennard_jones_energy(x)
        if self.oscillator_scale:
            centred = self.remove_center_of_mass(x)
            energy = energy + 0.5 * self.oscillator_scale * centred.pow(2).sum(-1)
        return energy
