"""Toy and particle target energies: known normalisers, exact samplers, forces, symmetries, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, stats
from tests_helpers import grid_integral

from normflows_sci.energies.base import TemperedEnergy
from normflows_sci.energies.particles import (
    DW4,
    LJ13,
    ParticleEnergy,
    center_of_mass,
    pairwise_distances,
    remove_center_of_mass,
)
from normflows_sci.energies.toy import DoubleWell, GaussianMixture2D, ManyWell, MuellerBrown

LOG_2PI = math.log(2 * math.pi)


def quartic(x, linear):
    return x**4 - 6 * x**2 + linear * x


def trapezoid_log_integral(log_density, low=-7.0, high=7.0, points=200_001):
    """log ∫ exp(log_density) on a uniform grid (independent of the package's quad)."""
    grid = torch.linspace(low, high, points, dtype=torch.float64)
    values = log_density(grid)
    shift = values.max()
    return float(torch.log(torch.trapezoid(torch.exp(values - shift), grid)) + shift)


def log_grid_integral(energy, *, bound, points):
    """log ∫ exp(-u) over [-bound, bound]^2 by the shared midpoint rule, shifted for range."""
    grid = torch.linspace(-bound, bound, 201, dtype=torch.float64)
    shift = float(energy.energy(torch.cartesian_prod(grid, grid)).min())
    value = grid_integral(
        lambda x: torch.exp(-(energy.energy(x) - shift)), bound=bound, points=points
    )
    return math.log(value) - shift


def finite_difference_force(energy, x, step=1e-6):
    """-∇u by central differences, float64, one coordinate at a time."""
    force = torch.empty_like(x)
    for j in range(x.shape[1]):
        shift = torch.zeros_like(x)
        shift[:, j] = step
        force[:, j] = -(energy.energy(x + shift) - energy.energy(x - shift)) / (2 * step)
    return force


def random_rotation(dim, generator):
    """A random orthogonal matrix (rotation or reflection), float64."""
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def perturbed_lattice(n_particles, spatial_dim, batch, spacing, generator):
    """Configurations with well-separated particles: a jittered cubic lattice, shuffled."""
    side = math.ceil(n_particles ** (1 / spatial_dim))
    axes = [torch.arange(side, dtype=torch.float64)] * spatial_dim
    sites = torch.cartesian_prod(*axes).reshape(-1, spatial_dim)[:n_particles] * spacing
    jitter = (
        0.15
        * spacing
        * torch.randn(batch, n_particles, spatial_dim, generator=generator, dtype=torch.float64)
    )
    return (sites + jitter).reshape(batch, -1)


# ---------------------------------------------------------------------------------- double well


def test_double_well_log_z_matches_grid_quadrature():
    target = DoubleWell()
    assert abs(log_grid_integral(target, bound=7.0, points=400) - target.log_z) < 1e-9
    factor = trapezoid_log_integral(lambda x: -quartic(x, 1.0))
    assert abs(target.log_z - (factor + 0.5 * LOG_2PI)) < 1e-10


def test_double_well_energy_formula_and_exact_sampler():
    target = DoubleWell()
    x = torch.tensor([[1.5, -2.0], [-0.3, 0.7]], dtype=torch.float64)
    expected = x[:, 0] ** 4 - 6 * x[:, 0] ** 2 + x[:, 0] + x[:, 1] ** 2 / 2
    torch.testing.assert_close(target.energy(x), expected)
    samples = target.sample(
        200_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    assert samples.shape == (200_000, 2) and samples.dtype == torch.float64
    p = target.well_probability
    assert 0.02 < p < 0.05
    observed = float((samples[:, 0] > 0).double().mean())
    assert abs(observed - p) < 4 * math.sqrt(p * (1 - p) / len(samples))


# ------------------------------------------------------------------------------------ many well


def test_many_well_one_dimensional_factor_and_well_probability():
    pair = ManyWell(2)
    log_z1 = trapezoid_log_integral(lambda x: -quartic(x, -0.5))
    assert abs(pair.log_z - (log_z1 + 0.5 * LOG_2PI)) < 1e-10
    log_right = trapezoid_log_integral(lambda x: -quartic(x, -0.5), low=0.0)
    assert abs(pair.well_probability - math.exp(log_right - log_z1)) < 1e-10
    assert 0.8 < pair.well_probability < 0.9


def test_many_well_log_z_by_product_of_grid_integrals():
    pair, four = ManyWell(2), ManyWell(4)
    log_z_pair = log_grid_integral(pair, bound=7.0, points=400)
    assert abs(four.log_z - 2 * log_z_pair) < 2e-9
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(four.energy(x), pair.energy(x[:, :2]) + pair.energy(x[:, 2:]))
    assert ManyWell(32).log_z == pytest.approx(16 * pair.log_z, rel=1e-14)
    assert four.num_modes == 4 and ManyWell().num_modes == 2**16 and ManyWell().dim == 32


def test_many_well_exact_sampler_matches_the_density():
    target = ManyWell(4)
    generator = torch.Generator().manual_seed(0)
    samples = target.sample(100_000, generator=generator, dtype=torch.float64)
    assert samples.shape == (100_000, 4)
    x1 = samples[:, 0::2].reshape(-1).numpy()
    # Kolmogorov-Smirnov against the CDF of exp(-u1) from an independent trapezoid integral.
    grid = np.linspace(-6.0, 6.0, 120_001)
    density = np.exp(-(quartic(grid, -0.5) - quartic(grid, -0.5).min()))
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2)])
    cdf /= cdf[-1]
    assert stats.kstest(x1, lambda t: np.interp(t, grid, cdf)).pvalue > 1e-3
    x2 = samples[:, 1::2].reshape(-1)
    assert abs(float(x2.mean())) < 0.015 and abs(float(x2.var()) - 1) < 0.02
    # Mode occupancy against the exact mode weights (chi-square over the 4 modes).
    counts = torch.bincount(target.mode_index(samples), minlength=4).double()
    codes = torch.arange(4)
    wells = ((codes[:, None] >> torch.arange(2)) & 1).bool()
    expected = target.mode_log_probability(wells).exp() * len(samples)
    assert float(expected.sum()) == pytest.approx(len(samples))
    assert stats.chi2.sf(float(((counts - expected) ** 2 / expected).sum()), df=3) > 1e-3


def test_many_well_sampler_is_reproducible_and_well_probability_holds():
    target = ManyWell(8)
    first = target.sample(50_000, generator=torch.Generator().manual_seed(5))
    second = target.sample(50_000, generator=torch.Generator().manual_seed(5))
    assert first.dtype == torch.get_default_dtype()
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    p = target.well_probability
    observed = float(target.which_well(first).double().mean())
    assert abs(observed - p) < 4 * math.sqrt(p * (1 - p) / (50_000 * 4))
    assert target.sample(0).shape == (0, 8)


def test_many_well_mode_helpers():
    target = ManyWell(6)
    x = torch.tensor([[1.0, 0.0, -1.0, 0.0, 2.0, 0.0], [-1.0, 5.0, -2.0, 0.0, -0.5, 0.0]])
    assert target.which_well(x).tolist() == [[True, False, True], [False, False, False]]
    assert target.mode_index(x).tolist() == [5, 0]
    p = target.well_probability
    log_p = target.mode_log_probability(target.which_well(x))
    assert log_p.tolist() == pytest.approx([2 * math.log(p) + math.log1p(-p), 3 * math.log1p(-p)])
    with pytest.raises(ValueError, match="dim <= 126"):
        ManyWell(128).mode_index(torch.zeros(1, 128))
    with pytest.raises(ValueError, match=r"wells must have shape \(batch, 3\)"):
        target.mode_log_probability(torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        target.mode_log_probability(torch.zeros(2, 3))


# ------------------------------------------------------------------------------ Gaussian mixture


def test_gaussian_mixture_is_normalised_and_matches_torch_distributions():
    target = GaussianMixture2D()
    assert target.log_z == 0.0
    means = target.means
    assert means.shape == (40, 2) and means.dtype == torch.float64
    assert bool((means.abs() <= 40).all()) and float(means.abs().max()) > 30
    value = grid_integral(lambda x: torch.exp(-target.energy(x)), bound=48.0, points=480)
    assert abs(value - 1) < 1e-6
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.ones(40, dtype=torch.float64)),
        torch.distributions.Independent(torch.distributions.Normal(means, 1.0), 1),
    )
    x = (
        50 * torch.rand(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        - 25
    )
    torch.testing.assert_close(target.log_prob(x), reference.log_prob(x))
    # A different seed, range and variance: still normalised, different means.
    other = GaussianMixture2D(num_components=5, mean_range=3.0, variance=0.5, seed=1)
    assert not torch.equal(other.means[:5], GaussianMixture2D(5, 3.0, 0.5, seed=2).means)
    assert (
        abs(grid_integral(lambda x: torch.exp(-other.energy(x)), bound=8.0, points=400) - 1) < 1e-8
    )


def test_gaussian_mixture_sampler_moments():
    target = GaussianMixture2D()
    n = 200_000
    samples = target.sample(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert samples.shape == (n, 2)
    covariance = target.covariance
    standard_error = (torch.diagonal(covariance) / n).sqrt()
    assert bool(((samples.mean(0) - target.mean).abs() < 5 * standard_error).all())
    torch.testing.assert_close(torch.cov(samples.T), covariance, rtol=0.02, atol=5.0)
    # Every sample comes from a component: its nearest mean is within a few standard deviations.
    nearest = torch.cdist(samples[:2000], target.means).min(1).values
    assert float(nearest.max()) < 6.0


# ---------------------------------------------------------------------------------- Mueller-Brown


@pytest.mark.parametrize("beta", [0.05, 0.1])
def test_mueller_brown_log_z_matches_grid_quadrature(beta):
    target = MuellerBrown(beta)
    assert abs(log_grid_integral(target, bound=4.0, points=400) - target.log_z) < 1e-10


def test_mueller_brown_stationary_points():
    target = MuellerBrown()
    assert target.beta == 0.05
    minima = target.minima
    force = target.force(minima)
    assert float(force.abs().max()) < 1e-10
    assert float(target.force(target.saddles).abs().max()) < 1e-10
    for point in minima:
        hessian = torch.autograd.functional.hessian(lambda p: target.energy(p[None])[0], point)
        assert bool((torch.linalg.eigvalsh(hessian) > 0).all())
    for point in target.saddles:
        hessian = torch.autograd.functional.hessian(lambda p: target.energy(p[None])[0], point)
        eigenvalues = torch.linalg.eigvalsh(hessian)
        assert float(eigenvalues[0]) < 0 < float(eigenvalues[1])
    # Local minima: every nearby point is higher.
    angles = torch.linspace(0, 2 * math.pi, 33, dtype=torch.float64)[:-1]
    ring = 1e-3 * torch.stack([angles.cos(), angles.sin()], -1)
    for point in minima:
        assert bool((target.energy(point + ring) > target.energy(point[None])).all())
    potentials = target.potential(minima)
    torch.testing.assert_close(
        potentials,
        torch.tensor([-146.6995, -108.1667, -80.7678], dtype=torch.float64),
        atol=1e-4,
        rtol=0,
    )
    barrier = target.beta * float(target.potential(target.saddles[:1]) - potentials[0])
    assert 4.0 < barrier < 7.0


# -------------------------------------------------------------------------------------- forces

ENERGIES = {
    "double_well": (DoubleWell, 2.0),
    "many_well": (lambda: ManyWell(6), 2.0),
    "gaussian_mixture": (lambda: GaussianMixture2D(num_components=6, mean_range=3.0), 2.0),
    "mueller_brown": (MuellerBrown, 0.5),
    "dw4": (DW4, None),
    "lj13": (LJ13, None),
}


def inputs_for(name, energy, batch, generator):
    if name == "dw4":
        return perturbed_lattice(4, 2, batch, 4.0, generator)
    if name == "lj13":
        return perturbed_lattice(13, 3, batch, 1.1, generator)
    scale = ENERGIES[name][1]
    return scale * torch.randn(batch, energy.dim, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("name", list(ENERGIES))
def test_force_equals_finite_differences(name):
    energy = ENERGIES[name][0]()
    x = inputs_for(name, energy, 8, torch.Generator().manual_seed(3))
    u, force = energy.energy_and_force(x)
    assert u.shape == (8,) and force.shape == x.shape
    torch.testing.assert_close(force, finite_difference_force(energy, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(ENERGIES))
def test_dtype_is_preserved(name, dtype):
    energy = ENERGIES[name][0]()
    x = inputs_for(name, energy, 5, torch.Generator().manual_seed(0)).to(dtype)
    u, force = energy.energy_and_force(x)
    assert u.dtype == dtype and force.dtype == dtype
    assert bool(torch.isfinite(u).all() and torch.isfinite(force).all())
    reference = energy.energy(x.double())
    torch.testing.assert_close(u.double(), reference, rtol=1e-4, atol=1e-4)
    # Converting the module follows too.
    converted = ENERGIES[name][0]().to(dtype)
    assert converted.energy(x).dtype == dtype


@pytest.mark.parametrize("name", list(ENERGIES))
def test_energies_run_on_the_device(name, device):
    energy = ENERGIES[name][0]().to(device)
    x = inputs_for(name, energy, 4, torch.Generator().manual_seed(0)).to(device)
    u, force = energy.energy_and_force(x)
    assert u.device.type == device.type and force.device.type == device.type
    torch.testing.assert_close(u.cpu(), ENERGIES[name][0]().energy(x.cpu()))


def test_samplers_honour_device_and_dtype(device):
    for target in (DoubleWell(), ManyWell(4), GaussianMixture2D()):
        x = target.sample(
            10, generator=torch.Generator().manual_seed(0), device=device, dtype=torch.float64
        )
        assert x.device.type == device.type and x.dtype == torch.float64
        assert x.shape == (10, target.dim)
        assert bool(torch.isfinite(target.energy(x)).all())


# -------------------------------------------------------------------------- tempered double well


def test_tempered_double_well():
    base = DoubleWell()
    hot = TemperedEnergy(base, temperature=2.0)
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(hot.energy(x), base.energy(x) / 2)
    factor, _ = integrate.quad(
        lambda t: math.exp(-(quartic(t, 1.0) + 10.75) / 2),
        -8,
        8,
        points=[-1.77, 0.08, 1.69],
        epsabs=0,
        epsrel=1e-12,
        limit=200,
    )
    # The x2 factor at temperature 2 is ∫ exp(-x2²/4) = sqrt(4π).
    exact = math.log(factor) + 10.75 / 2 + 0.5 * math.log(4 * math.pi)
    assert abs(log_grid_integral(hot, bound=9.0, points=500) - exact) < 1e-9
    cold = TemperedEnergy(base, temperature=0.5)
    torch.testing.assert_close(cold.force(x), 2 * base.force(x))


# ------------------------------------------------------------------------------ particle systems


def test_particle_helpers():
    x = torch.tensor([[0.0, 0.0, 3.0, 4.0, 0.0, 2.0], [1.0, 1.0, 1.0, 1.0, 4.0, 5.0]])
    torch.testing.assert_close(center_of_mass(x, 3, 2), torch.tensor([[1.0, 2.0], [2.0, 7 / 3]]))
    centred = remove_center_of_mass(x, 3, 2)
    assert centred.shape == x.shape
    torch.testing.assert_close(center_of_mass(centred, 3, 2), torch.zeros(2, 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(remove_center_of_mass(centred, 3, 2), centred)
    torch.testing.assert_close(
        pairwise_distances(x, 3, 2), torch.tensor([[5.0, 2.0, math.sqrt(13)], [0.0, 5.0, 5.0]])
    )
    # Leading batch dimensions pass through; coincident particles get a zero (not NaN) gradient.
    assert pairwise_distances(x.reshape(1, 2, 6), 3, 2).shape == (1, 2, 3)
    leaf = x.clone().requires_grad_(True)
    pairwise_distances(leaf, 3, 2).sum().backward()
    assert bool(torch.isfinite(leaf.grad).all())
    # The projection is the orthogonal one: a projected standard normal has covariance I - J/n.
    z = torch.randn(100_000, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    projector = torch.eye(6, dtype=torch.float64) - torch.kron(
        torch.ones(3, 3, dtype=torch.float64) / 3, torch.eye(2, dtype=torch.float64)
    )
    torch.testing.assert_close(
        torch.cov(remove_center_of_mass(z, 3, 2).T), projector, atol=0.02, rtol=0
    )
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 6\)"):
        remove_center_of_mass(torch.zeros(4, 5), 3, 2)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        center_of_mass([[0.0] * 6], 3, 2)


@pytest.mark.parametrize("energy_class", [DW4, LJ13])
def test_particle_energies_are_invariant(energy_class):
    energy = energy_class()
    n, d = energy.n_particles, energy.spatial_dim
    generator = torch.Generator().manual_seed(0)
    spacing = 4.0 if energy_class is DW4 else 1.1
    x = perturbed_lattice(n, d, 16, spacing, generator)
    u = energy.energy(x)
    particles = x.reshape(16, n, d)
    shifted = (
        particles + 10 * torch.randn(16, 1, d, generator=generator, dtype=torch.float64)
    ).reshape(16, -1)
    rotated = (particles @ random_rotation(d, generator).T).reshape(16, -1)
    permuted = particles[:, torch.randperm(n, generator=generator)].reshape(16, -1)
    for other in (shifted, rotated, permuted, energy.remove_center_of_mass(x)):
        torch.testing.assert_close(energy.energy(other), u, rtol=1e-10, atol=1e-10)
    assert energy.zero_com_dim == (n - 1) * d and energy.num_pairs == n * (n - 1) // 2


def test_dw4_energy_formula():
    energy = DW4()
    assert energy.dim == 8
    square = torch.tensor([[0.0, 0.0, 4.0, 0.0, 4.0, 4.0, 0.0, 4.0]], dtype=torch.float64)
    diagonal = 4 * math.sqrt(2) - 4
    expected = 2 * (-4.0 * diagonal**2 + 0.9 * diagonal**4)  # the four sides sit at d0
    assert float(energy.energy(square)) == pytest.approx(expected, rel=1e-12)
    custom = DW4(a=0.5, b=-1.0, c=2.0, d0=1.0, tau=2.0, n_particles=3, spatial_dim=3)
    x = torch.randn(10, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    offset = pairwise_distances(x, 3, 3) - 1.0
    manual = ((0.5 * offset - offset**2 + 2 * offset**4) / 2).sum(-1)
    torch.testing.assert_close(custom.energy(x), manual)
    # Preferred pair distances: d0 ± sqrt(-b / 2c).
    r = torch.linspace(0, 8, 80_001, dtype=torch.float64)
    pair = energy.pair_energy(r)
    local_minima = r[1:-1][(pair[1:-1] < pair[:-2]) & (pair[1:-1] < pair[2:])]
    expected_minima = torch.tensor(
        [4 - math.sqrt(4 / 1.8), 4 + math.sqrt(4 / 1.8)], dtype=torch.float64
    )
    torch.testing.assert_close(local_minima, expected_minima, atol=2e-4, rtol=0)


def test_lj13_pair_minimum_and_ground_state():
    energy = LJ13(epsilon=2.0, r_min=1.3, tau=0.5)
    r = torch.linspace(0.9, 3.0, 210_001, dtype=torch.float64)
    pair = energy.pair_energy(r)
    assert float(r[pair.argmin()]) == pytest.approx(1.3, abs=1e-5)
    assert float(pair.min()) == pytest.approx(-2.0 / 0.5, rel=1e-12)
    at_minimum = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(energy.pair_energy(at_minimum), at_minimum)
    assert abs(float(slope)) < 1e-12
    # The icosahedral ground state of LJ13 (one free radius by symmetry): -44.326801 epsilon.
    phi = (1 + math.sqrt(5)) / 2
    vertices = []
    for s1 in (-1, 1):
        for s2 in (-1, 1):
            vertices += [(0, s1, s2 * phi), (s1, s2 * phi, 0), (s2 * phi, 0, s1)]
    vertices = torch.tensor(vertices, dtype=torch.float64)
    vertices = vertices / vertices.norm(dim=1, keepdim=True)
    plain = LJ13(oscillator_scale=0.0)

    def cluster_energy(radius):
        cluster = torch.cat([torch.zeros(1, 3, dtype=torch.float64), radius * vertices])
        return float(plain.energy(cluster.reshape(1, -1)))

    result = optimize.minimize_scalar(
        cluster_energy, bounds=(0.9, 1.2), method="bounded", options={"xatol": 1e-10}
    )
    assert result.fun == pytest.approx(-44.326801, abs=1e-6)
    # The centring term adds 0.5 Σ |x_i - com|^2 and does not depend on the position of the cluster.
    cluster = (
        torch.cat([torch.zeros(1, 3, dtype=torch.float64), result.x * vertices]).reshape(1, -1)
        + 3.0
    )
    centring = 0.5 * 12 * result.x**2
    assert float(LJ13().energy(cluster)) == pytest.approx(result.fun + centring, rel=1e-10)


def test_lj13_close_contacts_stay_finite():
    energy = LJ13()
    x = perturbed_lattice(13, 3, 2, 1.1, torch.Generator().manual_seed(0))
    x[:, 3:6] = x[:, 0:3]  # particles 0 and 1 coincide
    x[1, 3] += 1e-3
    for dtype in (torch.float32, torch.float64):
        u, force = energy.energy_and_force(x.to(dtype))
        assert bool(torch.isfinite(u).all() and torch.isfinite(force).all())
        assert bool((u > 1e23).all())
    bare = LJ13(min_distance=0.0)
    assert float(bare.energy(x[:1])) == math.inf


# ------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("name", list(ENERGIES))
def test_bad_inputs_raise(name):
    energy = ENERGIES[name][0]()
    with pytest.raises(ValueError, match=rf"x must have shape \(batch, {energy.dim}\)"):
        energy.energy(torch.zeros(3, energy.dim + 1))
    with pytest.raises(ValueError, match="x must have shape"):
        energy.energy(torch.zeros(energy.dim))
    bad = torch.zeros(3, energy.dim)
    bad[1, 0] = math.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        energy.energy(bad)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        energy.energy(np.zeros((3, energy.dim)))


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: ManyWell(5), ValueError, "dim must be even.*got dim=5"),
        (lambda: ManyWell(0), ValueError, "dim must be a positive integer"),
        (lambda: ManyWell(4.0), TypeError, "dim must be a positive integer"),
        (lambda: GaussianMixture2D(num_components=0), ValueError, "num_components"),
        (lambda: GaussianMixture2D(variance=-1.0), ValueError, "variance"),
        (lambda: GaussianMixture2D(mean_range=math.inf), ValueError, "mean_range"),
        (lambda: GaussianMixture2D(seed=1.5), TypeError, "seed"),
        (lambda: MuellerBrown(beta=0.0), ValueError, "beta must be a positive"),
        (lambda: MuellerBrown(beta="hot"), TypeError, "beta"),
        (lambda: DW4(tau=0.0), ValueError, "tau must be > 0"),
        (lambda: DW4(c=math.nan), ValueError, "c must be finite"),
        (lambda: DW4(n_particles=1), ValueError, "n_particles must be an integer >= 2"),
        (lambda: LJ13(epsilon=-1.0), ValueError, "epsilon must be > 0"),
        (lambda: LJ13(oscillator_scale=-0.1), ValueError, "oscillator_scale must be >= 0"),
        (lambda: LJ13(spatial_dim=2.5), TypeError, "spatial_dim must be an integer"),
        (lambda: ManyWell(4).sample(-1), ValueError, "num_samples"),
        (lambda: DoubleWell().sample(2.5), ValueError, "num_samples"),
    ],
)
def test_bad_arguments_raise(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_particle_energy_base_class_gives_subclasses_their_helpers():
    class Harmonic(ParticleEnergy):
        """Sum of squared pair distances: a user-defined particle energy."""

        def _energy(self, x):
            return self.pairwise_squared_distances(x).sum(-1)

    energy = Harmonic(3, 2)
    assert (energy.dim, energy.num_pairs, energy.zero_com_dim) == (6, 3, 4)
    x = torch.tensor([[0.0, 0.0, 3.0, 0.0, 0.0, 4.0]], dtype=torch.float64)
    assert energy.pairwise_distances(x).tolist() == [[3.0, 4.0, 5.0]]
    assert energy.energy(x).item() == pytest.approx(50.0)
    assert torch.allclose(energy.center_of_mass(x), torch.tensor([[1.0, 4 / 3]], dtype=x.dtype))
    assert torch.allclose(energy.center_of_mass(energy.remove_center_of_mass(x)), x.new_zeros(1, 2))
    with pytest.raises(ValueError, match="n_particles"):
        Harmonic(1, 2)
