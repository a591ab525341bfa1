"""Low-dimensional targets with known answers: double well, many-well, 40-mode mixture, Mueller-Brown.

Every energy here is dimensionless (``u = U / kT``) and written at unit temperature; wrap it in
``TemperedEnergy`` for another temperature. Each exposes ``log_z`` (the log normaliser
``log ∫ exp(-u(x)) dx``), computed exactly or by high-accuracy quadrature, so importance-sampling
estimates, flow likelihoods and sampler mode weights can be checked against a number instead of
another estimate. The double well, the many-well and the Gaussian mixture also draw exact samples.

Energies follow the dtype and device of their input; their constants are kept in float64 and cast
to the input's dtype on each call, so float64 inputs get float64-accurate energies.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from normflows_sci.checks import check_num_samples, check_tensor
from normflows_sci.energies.base import Energy

__all__ = ["DoubleWell", "ManyWell", "GaussianMixture2D", "MuellerBrown"]

_LOG_2PI = math.log(2 * math.pi)


def _check_positive(name: str, value, *, integer: bool = False) -> float:
    """``value`` as a positive finite float (or int), else a ValueError naming ``name``."""
    ok_type = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        kind = "a positive integer" if integer else "a positive finite number"
        raise TypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    if not (math.isfinite(value) and value > 0):
        kind = "a positive integer" if integer else "a positive finite number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(value) if integer else float(value)


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    """Float64 uniforms on the generator's device (CPU without a generator)."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=device)


def _normal(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, dtype=torch.float64, device=device)


def _output_options(dtype, device, default_device=None):
    """Dtype/device of sampled tensors: the arguments, else the default dtype and ``default_device``."""
    if dtype is None:
        dtype = torch.get_default_dtype()
    if device is None:
        device = default_device if default_device is not None else torch.device("cpu")
    return dtype, device


class _QuarticFactor:
    """The 1-D factor ``exp(-(x^4 - 6 x^2 + linear * x))`` of the double/many-well targets.

    Holds its log normaliser and ``P(x > 0)`` (adaptive Gauss-Kronrod quadrature, relative error
    ~1e-13), and an exact sampler: rejection sampling under a piecewise-constant envelope whose
    height on each of ``cells`` cells of ``[-bound, bound]`` is the density's maximum over that cell
    (endpoints and any stationary point inside it), so the envelope dominates the density exactly and
    the accepted points follow it exactly. The only approximation is truncation to
    ``|x| <= bound = 6``, where the neglected mass is below ``exp(-1000)`` relative to the total.
    """

    bound = 6.0
    cells = 4096

    def __init__(self, linear: float):
        from scipy import integrate

        self.linear = float(linear)
        roots = np.roots([4.0, 0.0, -12.0, self.linear])
        self.stationary = np.sort(roots[np.abs(roots.imag) < 1e-12].real)
        self.u_min = float(self.u(self.stationary).min())
        # Integrate exp(-(u - u_min)) so the integrand peaks at 1; |x| > 8 holds < exp(-3500).
        options = dict(epsabs=0.0, epsrel=1e-13, limit=500)
        left, _ = integrate.quad(
            self.shifted_density, -8.0, 0.0, points=self._inside(-8, 0), **options
        )
        right, _ = integrate.quad(
            self.shifted_density, 0.0, 8.0, points=self._inside(0, 8), **options
        )
        self.log_z = math.log(left + right) - self.u_min
        self.prob_positive = right / (left + right)
        assert self.u(self.bound) - self.u_min > 1000 and self.u(-self.bound) - self.u_min > 1000

        edges = np.linspace(-self.bound, self.bound, self.cells + 1)
        cell_min = np.minimum(self.u(edges[:-1]), self.u(edges[1:]))
        for point in self.stationary:
            index = min(int(np.searchsorted(edges, point, side="right")) - 1, self.cells - 1)
            cell_min[index] = min(cell_min[index], float(self.u(point)))
        height = np.exp(-(cell_min - self.u_min))
        mass = height * np.diff(edges)
        self._edges = torch.from_numpy(edges)
        self._height = torch.from_numpy(height)
        self._cdf = torch.from_numpy(np.cumsum(mass) / mass.sum())
        # Exact acceptance rate of the rejection step: ∫ density / ∫ envelope.
        self.acceptance_rate = math.exp(self.log_z + self.u_min) / float(mass.sum())

    def _inside(self, low: float, high: float) -> list[float]:
        return [float(s) for s in self.stationary if low < s < high] or None

    def u(self, x):
        return x**4 - 6.0 * x**2 + self.linear * x

    def shifted_density(self, x):
        return math.exp(-(self.u(x) - self.u_min))

    def sample(self, num_samples: int, generator: torch.Generator | None) -> Tensor:
        """``num_samples`` exact draws, float64, on the generator's device, shape ``(num_samples,)``."""
        device = generator.device if generator is not None else torch.device("cpu")
        edges, height, cdf = (t.to(device) for t in (self._edges, self._height, self._cdf))
        accepted = [torch.empty(0, dtype=torch.float64, device=device)]
        remaining = num_samples
        while remaining > 0:
            proposals = math.ceil(remaining / self.acceptance_rate * 1.05) + 16
            uniforms = _uniform((3, proposals), generator)
            cell = torch.searchsorted(cdf, uniforms[0]).clamp_max(self.cells - 1)
            x = edges[cell] + (edges[cell + 1] - edges[cell]) * uniforms[1]
            keep = uniforms[2] * height[cell] <= torch.exp(-(self.u(x) - self.u_min))
            kept = x[keep][:remaining]
            accepted.append(kept)
            remaining -= len(kept)
        return torch.cat(accepted)


@functools.lru_cache(maxsize=8)
def _quartic_factor(linear: float) -> _QuarticFactor:
    return _QuarticFactor(linear)


class DoubleWell(Energy):
    """The 2-D double well ``u(x) = x1^4 - 6 x1^2 + x1 + x2^2 / 2``.

    Two wells near ``x1 = -1.77`` and ``x1 = 1.69``; the linear term tilts the left one lower
    (``P(x1 > 0) ≈ 0.033``); the barrier at ``x1 ≈ 0.08`` is 10.8 kT above the left well and 7.3 kT
    above the right one.

    ``log_z`` is exact up to quadrature error (~1e-13): the 1-D integral of the ``x1`` factor (adaptive
    Gauss-Kronrod) plus ``log(2π) / 2`` for the Gaussian ``x2``.

    Args:
        validate_args: check inputs (shape, finiteness) on every call.

    Attributes:
        log_z: exact log normaliser (float).
        well_probability: exact ``P(x1 > 0)`` (the shallower right well).

    References:
        Noé, Olsson, Köhler, Wu, "Boltzmann generators", Science 365 (2019).

    >>> target = DoubleWell()
    >>> target.energy(torch.tensor([[0.0, 0.0], [1.0, 2.0]])).tolist()
    [0.0, -2.0]
    >>> round(target.log_z, 6)
    11.020467
    """

    def __init__(self, *, validate_args: bool = True):
        super().__init__(2, validate_args=validate_args)
        self._factor = _quartic_factor(1.0)
        self.log_z = self._factor.log_z + 0.5 * _LOG_2PI
        self.well_probability = self._factor.prob_positive

    def _energy(self, x: Tensor) -> Tensor:
        x1, x2 = x[:, 0], x[:, 1]
        return x1**4 - 6.0 * x1**2 + x1 + 0.5 * x2**2

    def sample(
        self,
        num_samples: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Exact samples ``(num_samples, 2)`` (see ``ManyWell.sample`` for the method and accuracy).

        Args:
            num_samples: number of samples.
            generator: source of randomness (draws happen on its device; CPU without one).
            dtype: output dtype, default ``torch.get_default_dtype()``.
            device: output device, default CPU.
        """
        num_samples = check_num_samples(num_samples)
        dtype, device = _output_options(dtype, device)
        x1 = self._factor.sample(num_samples, generator)
        x2 = _normal((num_samples,), generator)
        return torch.stack([x1, x2], dim=-1).to(device=device, dtype=dtype)


class ManyWell(Energy):
    """The many-well target: ``dim / 2`` independent copies of a 2-D double well.

    ``u(x) = Σ_i [x_{2i}^4 - 6 x_{2i}^2 - 0.5 x_{2i} + x_{2i+1}^2 / 2]`` over the consecutive pairs
    ``(x_{2i}, x_{2i+1})``, so there are ``2^(dim/2)`` modes, one for each choice of well per pair. The
    right well (``x_{2i} > 0``) is the deeper one, with probability ``well_probability ≈ 0.844``
    independently for every pair.

    ``log_z = (dim / 2) (log Z1 + log(2π) / 2)`` is exact up to the quadrature error of the 1-D
    factor ``Z1 = ∫ exp(-(t^4 - 6 t^2 - 0.5 t)) dt`` (adaptive Gauss-Kronrod, relative error ~1e-13).

    Args:
        dim: number of coordinates, even and >= 2 (32 in FAB).
        validate_args: check inputs (shape, finiteness) on every call.

    Attributes:
        log_z: exact log normaliser (float).
        well_probability: exact ``P(x_{2i} > 0)`` for one pair (float).
        num_modes: ``2^(dim/2)`` (int).
        num_pairs: ``dim / 2``.

    References:
        Midgley, Stimper, Simm, Schölkopf, Hernández-Lobato, "Flow annealed importance sampling
        bootstrap", ICLR 2023 (the 32-D many-well); Noé et al., "Boltzmann generators", 2019.

    >>> target = ManyWell(4)
    >>> target.num_modes, target.energy(torch.zeros(3, 4)).shape
    (4, torch.Size([3]))
    >>> target.mode_index(torch.tensor([[1.0, 0.0, -1.0, 0.0], [-1.0, 0.0, 1.0, 0.0]]))
    tensor([1, 2])
    """

    def __init__(self, dim: int = 32, *, validate_args: bool = True):
        dim = _check_positive("dim", dim, integer=True)
        if dim % 2:
            raise ValueError(
                f"dim must be even (the coordinates come in (x1, x2) pairs), got dim={dim}"
            )
        super().__init__(dim, validate_args=validate_args)
        self.num_pairs = dim // 2
        self.num_modes = 2**self.num_pairs
        self._factor = _quartic_factor(-0.5)
        self.log_z = self.num_pairs * (self._factor.log_z + 0.5 * _LOG_2PI)
        self.well_probability = self._factor.prob_positive

    def _energy(self, x: Tensor) -> Tensor:
        x1, x2 = x[:, 0::2], x[:, 1::2]
        return (x1**4 - 6.0 * x1**2 - 0.5 * x1 + 0.5 * x2**2).sum(-1)

    def which_well(self, x: Tensor) -> Tensor:
        """Which well each pair sits in: ``(batch, dim / 2)`` bool, True for ``x_{2i} > 0``.

        Args:
            x: configurations ``(batch, dim)``.
        """
        if self.validate_args:
            check_tensor("x", x, (self.dim,))
        return x[:, 0::2] > 0

    def mode_index(self, x: Tensor) -> Tensor:
        """Mode of each configuration as an integer in ``[0, num_modes)``, shape ``(batch,)`` long.

        Bit ``i`` is set when pair ``i`` is in its right well (``x_{2i} > 0``); count occupancy with
        ``torch.bincount(target.mode_index(x), minlength=target.num_modes)``. Needs ``dim <= 126``
        (the index must fit in int64); use ``which_well`` beyond that.

        Args:
            x: configurations ``(batch, dim)``.
        """
        if self.num_pairs > 63:
            raise ValueError(
                f"mode_index needs dim <= 126 to fit int64, got dim={self.dim}; use which_well(x)"
            )
        wells = self.which_well(x).long()
        powers = torch.arange(self.num_pairs, device=x.device)
        return (wells << powers).sum(-1)

    def mode_log_probability(self, wells: Tensor) -> Tensor:
        """Exact log-probability of the mode given by ``wells: (batch, dim / 2)`` bool -> ``(batch,)``.

        Pairs are independent, so ``log P = Σ_i [w_i log p + (1 - w_i) log(1 - p)]`` with
        ``p = well_probability``. Float64.
        """
        if not isinstance(wells, Tensor) or wells.dtype != torch.bool:
            raise TypeError(f"wells must be a bool tensor (from which_well), got {wells!r:.60}")
        if wells.ndim != 2 or wells.shape[1] != self.num_pairs:
            raise ValueError(
                f"wells must have shape (batch, {self.num_pairs}), got {tuple(wells.shape)}"
            )
        p = self.well_probability
        return torch.where(wells, math.log(p), math.log1p(-p)).to(torch.float64).sum(-1)

    def sample(
        self,
        num_samples: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Exact samples ``(num_samples, dim)``, e.g. ground truth for samplers and flows.

        Each ``x_{2i}`` comes from rejection sampling under a piecewise-constant envelope (4096 cells
        on ``[-6, 6]``) that provably dominates ``exp(-(t^4 - 6 t^2 - 0.5 t))`` (its height in each
        cell is the density's maximum there), so accepted points are exact draws; the truncation to
        ``|t| <= 6`` drops mass below ``exp(-1000)``. Acceptance is ~99 %. Each ``x_{2i+1}`` is a
        standard normal. Draws are made in float64 and then cast.

        Args:
            num_samples: number of samples.
            generator: source of randomness (draws happen on its device; CPU without one).
            dtype: output dtype, default ``torch.get_default_dtype()``.
            device: output device, default CPU.

        >>> x = ManyWell(8).sample(2000, generator=torch.Generator().manual_seed(0))
        >>> x.shape, bool(abs((x[:, 0::2] > 0).float().mean() - 0.844) < 0.02)
        (torch.Size([2000, 8]), True)
        """
        num_samples = check_num_samples(num_samples)
        dtype, device = _output_options(dtype, device)
        x1 = self._factor.sample(num_samples * self.num_pairs, generator)
        x2 = _normal((num_samples, self.num_pairs), generator)
        x = torch.stack([x1.view(num_samples, self.num_pairs), x2], dim=-1)
        return x.reshape(num_samples, self.dim).to(device=device, dtype=dtype)


class GaussianMixture2D(Energy):
    """The FAB 40-mode benchmark: an equal-weight mixture of isotropic Gaussians in 2-D.

    ``u(x) = -log Σ_k (1/K) N(x; μ_k, σ² I)`` is a normalised log density, so ``log_z = 0``. Means are
    uniform in ``[-mean_range, mean_range]^2``, drawn as
    ``(torch.rand((K, 2), generator=torch.Generator().manual_seed(seed)) - 0.5) * 2 * mean_range``
    (float32 draws, stored in float64), the same recipe as FAB's PyTorch code after
    ``torch.manual_seed(seed)``. FAB's jax code uses ``variance=1`` (the default here); its PyTorch
    code uses standard deviation ``softplus(0.1) ≈ 0.744`` (``variance ≈ 0.554``).

    Args:
        num_components: number of mixture components ``K``.
        mean_range: half-width of the square holding the means.
        variance: variance of every component (isotropic).
        seed: seed of the generator drawing the means.
        validate_args: check inputs (shape, finiteness) on every call.

    Attributes:
        means: buffer ``(num_components, 2)``, float64.
        mean: mixture mean ``(2,)``; covariance: mixture covariance ``(2, 2)``.

    References:
        Midgley et al., "Flow annealed importance sampling bootstrap", ICLR 2023.

    >>> target = GaussianMixture2D()
    >>> target.means.shape, target.log_z
    (torch.Size([40, 2]), 0.0)
    >>> target.sample(5, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([5, 2])
    """

    log_z = 0.0

    def __init__(
        self,
        num_components: int = 40,
        mean_range: float = 40.0,
        variance: float = 1.0,
        seed: int = 0,
        *,
        validate_args: bool = True,
    ):
        super().__init__(2, validate_args=validate_args)
        self.num_components = _check_positive("num_components", num_components, integer=True)
        self.mean_range = _check_positive("mean_range", mean_range)
        self.variance = _check_positive("variance", variance)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        self.seed = int(seed)
        generator = torch.Generator().manual_seed(self.seed)
        means = (torch.rand((self.num_components, 2), generator=generator) - 0.5) * 2 * mean_range
        self.register_buffer("means", means.to(torch.float64))

    @property
    def mean(self) -> Tensor:
        """Mixture mean ``(2,)``: the average of the component means."""
        return self.means.mean(0)

    @property
    def covariance(self) -> Tensor:
        """Mixture covariance ``(2, 2)``: ``σ² I`` plus the (population) covariance of the means."""
        centred = self.means - self.mean
        eye = torch.eye(2, dtype=self.means.dtype, device=self.means.device)
        return self.variance * eye + centred.T @ centred / self.num_components

    def _component_log_probs(self, x: Tensor) -> Tensor:
        means = self.means.to(dtype=x.dtype, device=x.device)
        squared = (x[:, None, :] - means).pow(2).sum(-1)
        normaliser = _LOG_2PI + math.log(self.variance) + math.log(self.num_components)
        return -0.5 * squared / self.variance - normaliser

    def _energy(self, x: Tensor) -> Tensor:
        return -torch.logsumexp(self._component_log_probs(x), dim=-1)

    def sample(
        self,
        num_samples: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Exact samples ``(num_samples, 2)``: a uniform component, then its Gaussian.

        Args:
            num_samples: number of samples.
            generator: source of randomness (draws happen on its device; CPU without one).
            dtype: output dtype, default ``torch.get_default_dtype()``.
            device: output device, default the device of ``means``.
        """
        num_samples = check_num_samples(num_samples)
        dtype, device = _output_options(dtype, device, self.means.device)
        draw_device = generator.device if generator is not None else torch.device("cpu")
        component = torch.randint(
            self.num_components, (num_samples,), generator=generator, device=draw_device
        )
        noise = _normal((num_samples, 2), generator)
        means = self.means.to(device=draw_device, dtype=torch.float64)
        x = means[component] + math.sqrt(self.variance) * noise
        return x.to(device=device, dtype=dtype)


# Mueller & Brown (1979), Theor. Chim. Acta 53, 75: U = Σ_k A_k exp(a_k dx² + b_k dx dy + c_k dy²).
_MB_A = (-200.0, -100.0, -170.0, 15.0)
_MB_a = (-1.0, -1.0, -6.5, 0.7)
_MB_b = (0.0, 0.0, 11.0, 0.6)
_MB_c = (-10.0, -10.0, -6.5, 0.7)
_MB_X0 = (1.0, 0.0, -0.5, -1.0)
_MB_Y0 = (0.0, 0.5, 1.5, 1.0)
# Stationary points, Newton-refined in float64 (|∇U| < 1e-12); U in the potential's own units.
_MB_MINIMA = (
    (-0.5582236346330243, 1.4417258418046686),  # U = -146.6995 (global minimum, "A")
    (0.6234994049308765, 0.028037758528685664),  # U = -108.1667 ("B")
    (-0.05001082299820606, 0.4666941048719721),  # U = -80.7678 (intermediate, "C")
)
_MB_SADDLES = (
    (-0.8220015587327321, 0.6243128028148713),  # U = -40.6648, between A and C
    (0.2124865820006619, 0.29298832510736783),  # U = -72.2489, between C and B
)


class MuellerBrown(Energy):
    """The Mueller-Brown potential scaled to kT units: ``u(x, y) = beta * U_MB(x, y)``.

    ``U_MB = Σ_k A_k exp(a_k (x - x0_k)² + b_k (x - x0_k)(y - y0_k) + c_k (y - y0_k)²)`` with the
    standard parameters ``A = (-200, -100, -170, 15)``, ``a = (-1, -1, -6.5, 0.7)``,
    ``b = (0, 0, 11, 0.6)``, ``c = (-10, -10, -6.5, 0.7)``, ``x0 = (1, 0, -0.5, -1)``,
    ``y0 = (0, 0.5, 1.5, 1)``. Three minima, ``U = -146.70`` (A), ``-108.17`` (B), ``-80.77`` (C),
    joined by saddles at ``-40.66`` (A-C) and ``-72.25`` (C-B).

    Default ``beta = 0.05`` gives barriers of a few kT: leaving A over the A-C saddle costs 5.3 kT,
    B reaches A over 3.4 kT (1.8 kT to C), C leaves over 0.43 kT (to B) or 2.0 kT (to A); the basins
    of A, B, C hold about 80 %, 12 % and 8 % of the mass, so a local sampler hops slowly but every
    basin matters. The also-common ``beta = 0.1`` doubles the barriers (10.6 kT out of A) and leaves
    only about 2.2 % and 0.4 % of the mass in B and C.

    ``log_z`` is computed on first access and cached: trapezoidal rule on a 501 x 501 grid over the
    bounding box of ``{u - u_min < 60}`` (found on a coarse grid of ``[-8, 6] x [-6, 8]``, widened by
    one coarse cell of 0.05); the mass outside is below ``e^-60`` of the peak and the integrand is
    analytic and negligible at the box edge, so the trapezoidal rule converges spectrally: ``log_z``
    agrees with a 2401 x 2401 grid to 2e-13 for beta from 0.002 to 3 (2e-12 at beta = 100, where
    ``log_z ≈ 14660``). For beta = 0.05 the box is ``[-3.75, 1.8] x [-1.75, 3.75]``. The potential's
    positive fourth term grows like ``exp(0.4 r²)``, so far from the minima (``r ≳ 15`` in float32,
    ``r ≳ 42`` in float64) the energy overflows to ``+inf`` (zero density).

    Args:
        beta: inverse temperature multiplying ``U_MB`` (1 / energy unit), > 0.
        validate_args: check inputs (shape, finiteness) on every call.

    Attributes:
        minima: buffer ``(3, 2)``, float64, the minima A, B, C (Newton-refined, ``|∇U| < 1e-12``).
        saddles: buffer ``(2, 2)``, float64, the saddle points A-C and C-B.
        log_z: log normaliser (float), by quadrature on first access.

    References:
        Müller, Brown, "Location of saddle points and minimum energy paths by a constrained
        simplex optimization procedure", Theor. Chim. Acta 53, 75 (1979).

    >>> target = MuellerBrown()
    >>> round(float(target.energy(target.minima[:1])) / target.beta, 4)
    -146.6995
    """

    def __init__(self, beta: float = 0.05, *, validate_args: bool = True):
        super().__init__(2, validate_args=validate_args)
        self.beta = _check_positive("beta", beta)
        coefficients = torch.tensor(
            [_MB_A, _MB_a, _MB_b, _MB_c, _MB_X0, _MB_Y0], dtype=torch.float64
        )
        self.register_buffer("coefficients", coefficients, persistent=False)
        self.register_buffer("minima", torch.tensor(_MB_MINIMA, dtype=torch.float64))
        self.register_buffer("saddles", torch.tensor(_MB_SADDLES, dtype=torch.float64))
        self._log_z: float | None = None

    def potential(self, x: Tensor) -> Tensor:
        """The unscaled Mueller-Brown potential ``U_MB(x): (batch, 2) -> (batch,)``."""
        if self.validate_args:
            check_tensor("x", x, (2,))
        return self._potential(x)

    def _potential(self, x: Tensor) -> Tensor:
        amplitude, a, b, c, x0, y0 = self.coefficients.to(dtype=x.dtype, device=x.device)
        dx = x[:, :1] - x0
        dy = x[:, 1:] - y0
        return (amplitude * torch.exp(a * dx * dx + b * dx * dy + c * dy * dy)).sum(-1)

    def _energy(self, x: Tensor) -> Tensor:
        return self.beta * self._potential(x)

    @property
    def log_z(self) -> float:
        """Log normaliser ``log ∫ exp(-u)``, by 2-D quadrature on first access (cached)."""
        if self._log_z is None:
            self._log_z = self._quadrature_log_z()
        return self._log_z

    def _grid_energy(self, xs: Tensor, ys: Tensor) -> Tensor:
        """``u`` on the tensor-product grid ``xs x ys`` -> ``(len(xs), len(ys))``, by broadcasting."""
        amplitude, a, b, c, x0, y0 = self.coefficients.to(dtype=xs.dtype, device=xs.device)[
            ..., None, None
        ]
        dx = xs[:, None] - x0
        dy = ys[None, :] - y0
        # exp() takes a slow path on underflow; terms below e^-700 change nothing the sum can see.
        exponent = (a * dx * dx + b * dx * dy + c * dy * dy).clamp_min(-700.0)
        return self.beta * (amplitude * torch.exp(exponent)).sum(0)

    def _quadrature_log_z(self, points: int = 501) -> float:
        options = dict(dtype=torch.float64, device=torch.device("cpu"))
        u_min = self.beta * _MB_POTENTIAL_MIN
        # Coarse scan for the region that carries any mass, then a fine trapezoid grid over it.
        coarse_x = torch.linspace(-8.0, 6.0, 281, **options)
        coarse_y = torch.linspace(-6.0, 8.0, 281, **options)
        inside = self._grid_energy(coarse_x, coarse_y) - u_min < 60.0
        step = float(coarse_x[1] - coarse_x[0])
        xs, ys = coarse_x[inside.any(1)], coarse_y[inside.any(0)]
        low_x, high_x = float(xs.min()) - step, float(xs.max()) + step
        low_y, high_y = float(ys.min()) - step, float(ys.max()) + step
        if low_x < -8 or high_x > 6 or low_y < -6 or high_y > 8:
            raise RuntimeError(f"beta={self.beta} spreads the mass beyond the quadrature box")
        self._quadrature_box = (low_x, high_x, low_y, high_y)
        fine_x = torch.linspace(low_x, high_x, points, **options)
        fine_y = torch.linspace(low_y, high_y, points, **options)
        weight_x = torch.full_like(fine_x, float(fine_x[1] - fine_x[0]))
        weight_y = torch.full_like(fine_y, float(fine_y[1] - fine_y[0]))
        weight_x[[0, -1]] *= 0.5
        weight_y[[0, -1]] *= 0.5
        density = torch.exp(-(self._grid_energy(fine_x, fine_y) - u_min).clamp_max(700.0))
        return math.log(float(weight_x @ density @ weight_y)) - u_min


_MB_POTENTIAL_MIN = -146.69951720995402
