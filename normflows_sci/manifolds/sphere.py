"""The sphere ``S^n`` (unit vectors in ``R^(n+1)``): manifold, bases and flows with exact
densities with respect to surface measure.

Layers:

* :class:`SphereRotation`: ``x -> R x`` with a learned (or context-conditioned) rotation.
* :class:`CylindricalSplineTransform` (``S^2``): in cylindrical coordinates
  ``x = (sqrt(1 - h^2) cos phi, sqrt(1 - h^2) sin phi, h)``, which are area-preserving
  (``dA = dh dphi``, Archimedes), an interval spline on ``h`` and a circular spline on ``phi``
  conditioned on ``h``: ``log|det| = log G'(h) + log C'(phi | h)``.
* :class:`RadialSplineTransform` (``S^n``): the recursive construction with the direction kept,
  ``x = (sqrt(1 - h^2) u, h) -> (sqrt(1 - h'^2) u, h')``; since
  ``dV_n = (1 - h^2)^((n - 2)/2) dh dV_(n-1)(u)``,
  ``log|det| = log G'(h) + (n - 2)/2 [log(1 - h'^2) - log(1 - h^2)]``. With an odd spline it
  commutes with ``x -> -x`` (quaternions, SO(3)).
* :class:`AxialTwistTransform` (``S^n``, ``n >= 2``): keeps ``h`` and moves ``u in S^(n-1)`` by a
  radial spline and a rotation conditioned on ``h`` (``h^2`` in the antipodal variant);
  ``dV_n`` factorises, so the log-determinant is that of the map of ``S^(n-1)``.

References:
    Rezende, Papamakarios, Racanière, Albergo, Kanwar, Shanahan, Cranmer (2020), "Normalizing
    Flows on Tori and Spheres"; Wood (1994), "Simulation of the von Mises Fisher distribution".
"""

from __future__ import annotations

import math

import scipy.special
import torch
from torch import Tensor, nn

from normflows_sci.checks import check_context, check_features, check_int
from normflows_sci.distributions import Distribution
from normflows_sci.transforms import CircularSplineMap, CompositeTransform, Transform
from normflows_sci.transforms.splines import (
    DEFAULT_MIN_BIN_HEIGHT,
    DEFAULT_MIN_BIN_WIDTH,
    DEFAULT_MIN_DERIVATIVE,
)

from ._utils import (
    IntervalSpline,
    num_rotation_params,
    safe_sqrt_one_minus_square,
    skew_to_rotation,
    zero_mlp,
)
from .base import Manifold

__all__ = [
    "Sphere",
    "VonMisesFisher",
    "householder_frame",
    "SphereRotation",
    "CylindricalSplineTransform",
    "RadialSplineTransform",
    "AxialTwistTransform",
    "CircleSplineTransform",
]


def sphere_volume(n: int) -> float:
    """Surface area of ``S^n``: ``2 pi^((n+1)/2) / Gamma((n+1)/2)``."""
    return 2.0 * math.pi ** ((n + 1) / 2) / math.gamma((n + 1) / 2)


def householder_frame(x: Tensor) -> Tensor:
    """``(batch, m, m)`` orthogonal matrices whose last column is ``x`` (or ``-x``).

    A Householder reflection exchanging the last basis vector with ``x``: its first ``m - 1``
    columns are an orthonormal basis of the tangent space at ``x``. The reflection axis
    ``e - x`` or ``e + x`` is chosen by the sign of ``x``'s last entry to avoid cancellation.

    Args:
        x: ``(batch, m)`` unit vectors.
    """
    m = x.shape[-1]
    e = torch.zeros_like(x)
    e[..., -1] = 1.0
    sign = torch.where(x[..., -1:] >= 0, 1.0, -1.0).to(x.dtype)
    v = e + sign * x  # e + x when x_last >= 0, else e - x: |v| >= 1
    norm2 = v.square().sum(-1, keepdim=True)
    eye = torch.eye(m, dtype=x.dtype, device=x.device)
    return eye - 2.0 * v[..., :, None] * v[..., None, :] / norm2[..., None]


class Sphere(Manifold):
    """The unit sphere ``S^n`` in ``R^(n+1)``, with surface (Riemannian) measure.

    Points are ``(batch, n + 1)`` unit vectors; :meth:`proj` normalises. The chart is the
    stereographic projection from the last basis vector, ``u in R^n``, with volume element
    ``(2 / (1 + |u|^2))^n``. The chart maps are evaluated without forming ``|u|^2`` where it
    would overflow: beyond the unit ball through the inversion ``u / |u|^2`` (the projection from
    the other pole), so ``|u|`` up to the dtype's largest number maps near the last basis vector
    with finite values and gradients, and :meth:`to_chart` recovers such points from the small
    first coordinates instead of the cancelling ``1 - x_last``. The last basis vector itself (the
    chart's point at infinity) maps to the largest finite number on the first axis.

    Example:
        >>> sphere = Sphere(2)
        >>> round(sphere.volume, 4)  # 4 pi
        12.5664
        >>> sphere.contains(torch.tensor([[0.0, 0.6, 0.8], [1.0, 1.0, 0.0]])).tolist()
        [True, False]
    """

    representation = "unit vectors"
    #: Whether the flow layers must commute with ``x -> -x`` (SO(3) as unit quaternions).
    antipodal = False

    def __init__(self, n: int = 2):
        self.dim = check_int("n", n)
        self.features = self.dim + 1
        self.conditioner_features = self.features

    def __repr__(self) -> str:
        return f"Sphere({self.dim})"

    @property
    def volume(self) -> float:
        return sphere_volume(self.dim)

    def distance_to_manifold(self, x: Tensor) -> Tensor:
        return (x.norm(dim=-1) - 1.0).abs()

    def proj(self, x: Tensor) -> Tensor:
        norm = x.norm(dim=-1, keepdim=True)
        if bool((norm == 0).any()):
            raise ValueError("cannot project the zero vector onto the sphere (x has a zero row)")
        return x / norm

    def sample_uniform(self, num_samples, *, generator=None, dtype=None, device=None):
        normal = torch.randn(
            num_samples, self.features, generator=generator, dtype=dtype, device=device
        )
        return normal / normal.norm(dim=-1, keepdim=True)

    def tangent_basis(self, x: Tensor) -> Tensor:
        return householder_frame(x)[..., :, :-1]

    def from_chart(self, u: Tensor) -> Tensor:
        inverted, outside, _ = _inversion(u)
        norm2 = inverted.square().sum(-1, keepdim=True)
        # Inside the unit ball (2u, |u|^2 - 1) / (|u|^2 + 1); outside the same point written
        # with w = u / |u|^2: (2w, 1 - |w|^2) / (1 + |w|^2).
        last = torch.where(outside, 1.0 - norm2, norm2 - 1.0)
        return torch.cat([2.0 * inverted, last], dim=-1) / (norm2 + 1.0)

    def to_chart(self, x: Tensor) -> Tensor:
        head, last = x[..., :-1], x[..., -1:]
        south = last <= 0.0
        # North: 1 - last = |head|^2 / (1 + last) for unit x, with head rescaled so that its
        # square neither underflows nor overflows. (Only the pole itself has head == 0.)
        scale = head.detach().abs().amax(-1, keepdim=True)
        pole = (scale == 0.0) & ~south
        scale = torch.where(south | pole, 1.0, scale)
        unit = head / scale
        norm2 = torch.where(south | pole, 1.0, unit.square().sum(-1, keepdim=True))
        north = unit * ((1.0 + last) / (scale * norm2))
        plain = head / torch.where(south, 1.0 - last, 1.0)
        chart = torch.where(south, plain, north)
        infinity = torch.zeros_like(chart)
        infinity[..., 0] = torch.finfo(x.dtype).max
        return torch.where(pole, infinity, chart)

    def chart_log_volume(self, u: Tensor) -> Tensor:
        inverted, _, log_norm2 = _inversion(u)
        # log1p(|u|^2) = log|u|^2 + log1p(|w|^2) outside the unit ball (log_norm2 = 0 inside).
        log1p_norm2 = torch.log1p(inverted.square().sum(-1)) + log_norm2[..., 0]
        return self.dim * (math.log(2.0) - log1p_norm2)

    def interpolant(self, x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Spherical linear interpolation along the great circle, ``theta = arccos <x0, x1>``:
        ``x_t = (sin((1-t) theta) x0 + sin(t theta) x1) / sin theta`` and
        ``u_t = theta (cos(t theta) x1 - cos((1-t) theta) x0) / sin theta``.

        ``cos theta`` is kept ``1e-4`` (float64: ``1e-6``) inside ``(-1, 1)``, so coincident and
        antipodal pairs give finite values (antipodes have no unique geodesic).
        """
        eps = 1e-6 if x0.dtype == torch.float64 else 1e-4
        cos = (x0 * x1).sum(1, keepdim=True).clamp(-1.0 + eps, 1.0 - eps)
        theta = torch.arccos(cos)
        sin = torch.sin(theta)
        xt = (torch.sin((1 - t) * theta) * x0 + torch.sin(t * theta) * x1) / sin
        ut = theta * (torch.cos(t * theta) * x1 - torch.cos((1 - t) * theta) * x0) / sin
        return xt, ut

    def squared_distance_matrix(self, x: Tensor, y: Tensor) -> Tensor:
        """Squared great-circle angles ``arccos(<x_i, y_j>)^2``."""
        return torch.arccos((x @ y.T).clamp(-1.0, 1.0)).square()

    def block_layers(
        self, context_features: int = 0, *, bins: int = 8, hidden_features=(64, 64)
    ) -> list[Transform]:
        """One block of a sphere flow: a rotation, then the spline layers of ``S^n`` (circular
        splines of the angle on ``S^1``; cylindrical splines on ``S^2``; radial spline and axial
        twist otherwise, odd and antipodal when :attr:`antipodal`)."""
        net = dict(bins=bins, hidden_features=hidden_features, context_features=context_features)
        n, antipodal = self.dim, self.antipodal
        if n == 1:
            return [CircleSplineTransform(**net)]
        rotation = dict(context_features=context_features, hidden_features=hidden_features)
        steps: list[Transform] = [SphereRotation(n, **rotation)]
        if n == 2 and not antipodal:
            steps.append(CylindricalSplineTransform(**net))
            return steps
        steps.append(RadialSplineTransform(n, antipodal=antipodal, **net))
        steps.append(AxialTwistTransform(n, antipodal=antipodal, **net))
        return steps

    def flow_block(self, context_features=0, *, bins=8, hidden_features=(64, 64), tail_bound=5.0):
        """:meth:`block_layers` composed (``tail_bound`` is unused: spheres have no tails)."""
        return CompositeTransform(
            self.block_layers(context_features, bins=bins, hidden_features=hidden_features)
        )


def _inversion(u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(w, outside, log_norm2)``: ``w = u`` inside the unit ball and the inversion
    ``u / |u|^2`` outside it (so ``|w| <= 1``), ``outside: (batch, 1)`` and ``log|u|^2``
    (``(batch, 1)``, 0 inside), computed without forming ``|u|^2`` (which overflows float32 at
    ``|u| ~ 1.8e19``) and with finite gradients everywhere.
    """
    # Rows are rescaled by their largest entry (a constant for autograd: u / |u|^2 is the same
    # function of u for any fixed scale), so the rescaled square lies in [1, dim] outside.
    scale = u.detach().abs().amax(-1, keepdim=True).clamp_min(1.0)
    rescaled = u / scale
    norm2 = rescaled.square().sum(-1, keepdim=True)
    outside = (scale > 1.0) | (norm2 > 1.0)
    norm2 = torch.where(outside, norm2, 1.0)
    # Two divisions: scale * norm2 itself may overflow near the largest number.
    inverted = torch.where(outside, rescaled / norm2 / scale, u)
    log_norm2 = torch.where(outside, 2.0 * scale.log() + norm2.log(), 0.0)
    return inverted, outside, log_norm2


def _vmf_log_normalizer(p: int, kappa: float) -> float:
    """``log C_p(kappa)`` of the von Mises-Fisher density on ``S^(p-1)`` (``kappa > 0``)."""
    nu = p / 2.0 - 1.0
    if p == 3:  # C = kappa / (4 pi sinh kappa), computed without overflow
        log_sinh = kappa + math.log1p(-math.exp(-2.0 * kappa)) - math.log(2.0)
        return math.log(kappa) - math.log(4.0 * math.pi) - log_sinh
    log_bessel = math.log(float(scipy.special.ive(nu, kappa))) + kappa
    return nu * math.log(kappa) - (p / 2.0) * math.log(2.0 * math.pi) - log_bessel


def _sample_vmf_height(p: int, kappa: float, num_samples: int, generator, dtype, device) -> Tensor:
    """``(num_samples,)`` draws of ``w = <x, mu>`` under a vMF on ``S^(p-1)`` (Wood 1994)."""
    if kappa == 0.0:
        sphere = Sphere(p - 1)
        return sphere.sample_uniform(num_samples, generator=generator, dtype=dtype, device=device)[
            :, -1
        ]
    if p == 3:  # exact inverse CDF
        u = torch.rand(num_samples, generator=generator, dtype=torch.float64, device=device)
        w = 1.0 + torch.log(u + (1.0 - u) * math.exp(-2.0 * kappa)) / kappa
        return w.clamp(-1.0, 1.0).to(dtype)
    b = (p - 1) / (2.0 * kappa + math.sqrt(4.0 * kappa**2 + (p - 1) ** 2))
    x0 = (1.0 - b) / (1.0 + b)
    c = kappa * x0 + (p - 1) * math.log(1.0 - x0**2)
    alpha = torch.full((num_samples,), (p - 1) / 2.0, dtype=torch.float64, device=device)
    result = torch.zeros(num_samples, dtype=torch.float64, device=device)
    done = torch.zeros(num_samples, dtype=torch.bool, device=device)
    while not bool(done.all()):
        g1 = torch._standard_gamma(alpha, generator=generator)
        g2 = torch._standard_gamma(alpha, generator=generator)
        z = g1 / (g1 + g2)
        w = (1.0 - (1.0 + b) * z) / (1.0 - (1.0 - b) * z)
        u = torch.rand(num_samples, generator=generator, dtype=torch.float64, device=device)
        accept = kappa * w + (p - 1) * torch.log(1.0 - x0 * w) - c >= torch.log(u)
        result = torch.where(accept & ~done, w, result)
        done = done | accept
    return result.to(dtype)


class VonMisesFisher(Distribution):
    """Von Mises-Fisher density on ``S^n``: ``C(kappa) exp(kappa <mu, x>)``.

    Sampling (Wood 1994; the exact inverse CDF on ``S^2``) is reparameterised in the mean
    direction ``mu`` (a reflection of a draw around the last basis vector); ``kappa`` is fixed.

    Args:
        n: sphere dimension.
        mean_direction: ``(n + 1,)`` (normalised); default the last basis vector.
        concentration: ``kappa >= 0``.
        learnable_mean: train the mean direction.

    References:
        Wood (1994), "Simulation of the von Mises Fisher distribution".

    Example:
        >>> vmf = VonMisesFisher(2, concentration=0.0)
        >>> round(float(vmf.log_prob(torch.tensor([[1.0, 0.0, 0.0]]))[0]), 4)  # -log(4 pi)
        -2.531
    """

    def __init__(
        self,
        n: int = 2,
        *,
        mean_direction=None,
        concentration: float = 1.0,
        learnable_mean: bool = False,
    ):
        self.manifold = Sphere(n)
        super().__init__(self.manifold.features)
        if mean_direction is None:
            mean_direction = torch.zeros(self.manifold.features)
            mean_direction[-1] = 1.0
        mean = torch.as_tensor(mean_direction, dtype=torch.get_default_dtype()).clone()
        if mean.shape != (self.manifold.features,) or not bool(mean.norm() > 0):
            raise ValueError(
                f"mean_direction must be a non-zero vector of shape ({self.manifold.features},), "
                f"got {tuple(mean.shape)}"
            )
        kappa = float(concentration)
        if not (math.isfinite(kappa) and kappa >= 0):
            raise ValueError(f"concentration must be finite and >= 0, got {concentration!r}")
        self.concentration = kappa
        mean = mean / mean.norm()
        if learnable_mean:
            self.raw_mean = nn.Parameter(mean)
        else:
            self.register_buffer("raw_mean", mean)
        p = self.manifold.features
        self.log_normalizer = (
            -self.manifold.log_volume if kappa == 0.0 else _vmf_log_normalizer(p, kappa)
        )

    @property
    def mean_direction(self) -> Tensor:
        return self.raw_mean / self.raw_mean.norm()

    def log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        return self.concentration * (inputs @ self.mean_direction) + self.log_normalizer

    def _sample(self, num_samples, generator):
        anchor = self._anchor
        p = self.manifold.features
        w = _sample_vmf_height(
            p, self.concentration, num_samples, generator, anchor.dtype, anchor.device
        )
        direction = (
            Sphere(p - 2).sample_uniform(
                num_samples, generator=generator, dtype=anchor.dtype, device=anchor.device
            )
            if p > 2
            else torch.where(
                torch.rand(num_samples, 1, generator=generator, device=anchor.device) < 0.5,
                -1.0,
                1.0,
            ).to(anchor.dtype)
        )
        local = torch.cat([safe_sqrt_one_minus_square(w)[:, None] * direction, w[:, None]], -1)
        frame = householder_frame(self.mean_direction.to(anchor.dtype)[None])[0]
        # frame maps e_last to +-mu; fix the sign so the mode sits at +mu.
        sign = torch.where(frame[-1] @ self.mean_direction.to(anchor.dtype) >= 0, 1.0, -1.0)
        return sign * (local @ frame.T)


def _check_sphere_dim(n, minimum: int = 1) -> int:
    if isinstance(n, bool) or int(n) != n or n < minimum:
        raise ValueError(f"n must be an integer >= {minimum}, got {n!r}")
    return int(n)


class _ConditionedParams(nn.Module):
    """Parameters that are free (no context) or emitted by a zero-initialised MLP of the context."""

    def __init__(self, num_params: int, context_features: int, hidden_features):
        super().__init__()
        self.num_params = num_params
        self.context_features = int(context_features)
        if self.context_features:
            self.net = zero_mlp(self.context_features, num_params, hidden_features)
        else:
            self.value = nn.Parameter(torch.zeros(num_params))

    def forward(self, batch: int, context: Tensor | None) -> Tensor:
        if self.context_features:
            check_context(context, self.context_features)
            return self.net(context)
        return self.value.expand(batch, -1)


class SphereRotation(Transform):
    """``x -> R x`` on ``S^n`` with ``R = exp(A)`` in ``SO(n + 1)``; ``log|det| = 0``.

    ``A`` is a learned skew-symmetric matrix, or emitted by an MLP of the context. Rotations
    commute with ``x -> -x``, so they are valid layers of SO(3) flows on quaternions.

    Args:
        n: sphere dimension.
        context_features: width of the context (0: one learned rotation).
        hidden_features: hidden widths of the context MLP.

    Example:
        >>> t = SphereRotation(2)
        >>> t(torch.tensor([[0.0, 0.0, 1.0]]))[0].tolist()
        [[0.0, 0.0, 1.0]]
    """

    def __init__(self, n: int = 2, *, context_features: int = 0, hidden_features=(64, 64)):
        super().__init__()
        self.n = _check_sphere_dim(n)
        self.features = self.n + 1
        self.params = _ConditionedParams(
            num_rotation_params(self.features), context_features, hidden_features
        )

    def _rotation(self, inputs, context):
        check_features(inputs, self.features)
        params = self.params(inputs.shape[0], context)
        if not self.params.context_features:
            # One matrix for the whole batch (cheaper than one exponential per row).
            return skew_to_rotation(params[:1], self.features).expand(inputs.shape[0], -1, -1)
        return skew_to_rotation(params, self.features)

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        rotation = self._rotation(inputs, context)
        outputs = (rotation @ inputs[..., None])[..., 0]
        return outputs, inputs.new_zeros(inputs.shape[0])

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        rotation = self._rotation(inputs, context)
        outputs = (rotation.transpose(-1, -2) @ inputs[..., None])[..., 0]
        return outputs, inputs.new_zeros(inputs.shape[0])


def _radial(x: Tensor, params: Tensor, spline: IntervalSpline, n: int, inverse: bool):
    """Radial spline of ``S^n`` about the last axis: ``h -> G(h)``, direction kept."""
    h = x[..., -1].clamp(-1.0, 1.0)
    rest = x[..., :-1]
    new_h, logabsdet = spline(h, params, inverse=inverse)
    # |rest| is accurate near the poles, where 1 - h^2 loses every digit in single precision.
    radius = rest.norm(dim=-1).clamp_min(torch.finfo(x.dtype).tiny)
    # Where h rounds to +-1 (|rest| below about sqrt(eps)) 1 - G(h)^2 is 0 too: the radius
    # ratio is its limit there, sqrt(G'(h)) (1 - G(h)^2 = G'(h) (1 - h^2) (1 + O(1 - h)), exact
    # to working precision), instead of the floor of the square root over |rest|.
    at_pole = h.abs() == 1.0
    half_log_derivative = 0.5 * logabsdet
    new_radius = safe_sqrt_one_minus_square(new_h)
    ratio = torch.where(at_pole, half_log_derivative.exp(), new_radius / radius)
    outputs = torch.cat([rest * ratio[..., None], new_h[..., None]], dim=-1)
    if n != 2:
        log_ratio = torch.where(at_pole, half_log_derivative, new_radius.log() - radius.log())
        logabsdet = logabsdet + (n - 2) * log_ratio
    return outputs, logabsdet


class RadialSplineTransform(Transform):
    """Radial spline of ``S^n`` about the last axis: ``(sqrt(1-h^2) u, h) -> (sqrt(1-h'^2) u, h')``.

    ``h' = G(h)`` is a monotone rational-quadratic spline of ``[-1, 1]``;
    ``log|det| = log G'(h) + (n - 2)/2 [log(1 - h'^2) - log(1 - h^2)]`` with respect to surface
    measure. With ``antipodal=True``, ``G`` is odd and the map commutes with ``x -> -x`` (layers of
    SO(3) flows on unit quaternions; the "double Moebius" layers of Koehler et al. are maps of the
    same kind, along great circles through an axis). Combine with :class:`SphereRotation` to move
    the axis.

    Args:
        n: sphere dimension.
        bins: spline bins.
        antipodal: odd spline (commutes with ``x -> -x``).
        context_features: width of the context (0: learned spline).
        hidden_features: hidden widths of the context MLP.

    References:
        Rezende et al. (2020), "Normalizing Flows on Tori and Spheres" (recursive construction);
        Koehler, Invernizzi, de Haan, Noé (2023), "Rigid body flows for sampling molecular crystal
        structures".

    Example:
        >>> t = RadialSplineTransform(3, bins=4, antipodal=True)
        >>> x = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
        >>> torch.allclose(t(-x)[0], -t(x)[0])
        True
    """

    def __init__(
        self,
        n: int = 2,
        *,
        bins: int = 8,
        antipodal: bool = False,
        context_features: int = 0,
        hidden_features=(64, 64),
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    ):
        super().__init__()
        self.n = _check_sphere_dim(n)
        self.features = self.n + 1
        self.antipodal = bool(antipodal)
        self.spline = IntervalSpline(
            bins,
            odd=antipodal,
            min_bin_width=min_bin_width,
            min_bin_height=min_bin_height,
            min_derivative=min_derivative,
        )
        self.params = _ConditionedParams(self.spline.num_params, context_features, hidden_features)

    def _run(self, inputs, context, inverse):
        check_features(inputs, self.features)
        params = self.params(inputs.shape[0], context)
        return _radial(inputs, params, self.spline, self.n, inverse)

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._run(inputs, context, inverse=False)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._run(inputs, context, inverse=True)


class CylindricalSplineTransform(Transform):
    """Flow layer of ``S^2`` in cylindrical coordinates: interval spline on the height ``h`` and a
    circular spline (with rotation) on the azimuth ``phi`` conditioned on ``h``.

    ``x = (sqrt(1-h^2) cos phi, sqrt(1-h^2) sin phi, h)`` preserves area (``dA = dh dphi``), so
    ``log|det| = log G'(h) + log C'(phi | h)``. The azimuth conditioner sees ``h`` on the data
    side (and the context); the height spline is learned, or conditioned on the context. Starts as
    the identity. Put a :class:`SphereRotation` before it so the poles can move.

    Args:
        bins: spline bins (both splines).
        context_features: width of the context (0 for none).
        hidden_features: hidden widths of the conditioners.

    References:
        Rezende et al. (2020), "Normalizing Flows on Tori and Spheres".

    Example:
        >>> t = CylindricalSplineTransform(bins=4, hidden_features=(8,))
        >>> x = torch.tensor([[0.6, 0.0, 0.8]])
        >>> z, logabsdet = t(x)
        >>> torch.allclose(z, x, atol=1e-6), abs(float(logabsdet[0].detach())) < 1e-6
        (True, True)
    """

    def __init__(
        self,
        *,
        bins: int = 8,
        context_features: int = 0,
        hidden_features=(64, 64),
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    ):
        super().__init__()
        self.features = 3
        self.context_features = int(context_features)
        options = dict(
            min_bin_width=min_bin_width,
            min_bin_height=min_bin_height,
            min_derivative=min_derivative,
        )
        self.height = IntervalSpline(bins, **options)
        self.azimuth = CircularSplineMap(bins, **options)
        self.height_params = _ConditionedParams(
            self.height.num_params, context_features, hidden_features
        )
        self.azimuth_conditioner = zero_mlp(
            1 + self.context_features, self.azimuth.num_params, hidden_features
        )

    def _azimuth_params(self, h, context):
        cond = h[:, None]
        if self.context_features:
            cond = torch.cat([cond, context], dim=-1)
        return self.azimuth_conditioner(cond)

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(inputs, 3)
        h = inputs[:, 2].clamp(-1.0, 1.0)
        phi = torch.atan2(inputs[:, 1], inputs[:, 0])
        new_h, logabsdet_h = self.height(h, self.height_params(len(h), context))
        new_phi, logabsdet_phi = self.azimuth.forward(phi, self._azimuth_params(h, context))
        return _from_cylindrical(new_h, new_phi), logabsdet_h + logabsdet_phi

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(inputs, 3)
        new_h = inputs[:, 2].clamp(-1.0, 1.0)
        new_phi = torch.atan2(inputs[:, 1], inputs[:, 0])
        h, logabsdet_h = self.height(new_h, self.height_params(len(new_h), context), inverse=True)
        phi, logabsdet_phi = self.azimuth.inverse(new_phi, self._azimuth_params(h, context))
        return _from_cylindrical(h, phi), logabsdet_h + logabsdet_phi


def _from_cylindrical(h: Tensor, phi: Tensor) -> Tensor:
    radius = safe_sqrt_one_minus_square(h)
    return torch.stack([radius * phi.cos(), radius * phi.sin(), h], dim=-1)


class AxialTwistTransform(Transform):
    """Keeps the height ``h = x_last`` of ``x = (sqrt(1-h^2) u, h)`` on ``S^n`` and moves the
    direction ``u in S^(n-1)`` by a radial spline followed by a rotation, both conditioned on
    ``h`` (and the context).

    The volume element ``(1-h^2)^((n-2)/2) dh dV(u)`` keeps its ``h`` factor, so ``log|det|`` is
    the radial spline's on ``S^(n-1)`` (rotations add 0). With ``antipodal=True`` the conditioner
    sees ``h^2`` and the radial spline is odd, so the layer commutes with ``x -> -x``: a valid
    layer of SO(3) flows that couples the quaternion's components nonlinearly.

    Args:
        n: sphere dimension (``>= 2``).
        bins: spline bins.
        antipodal: commute with ``x -> -x``.
        context_features: width of the context.
        hidden_features: hidden widths of the conditioner.

    Example:
        >>> t = AxialTwistTransform(3, bins=4, antipodal=True, hidden_features=(8,))
        >>> x = torch.tensor([[0.5, -0.5, 0.5, 0.5]])
        >>> torch.allclose(t.inverse(t(x)[0])[0], x, atol=1e-6)
        True
    """

    def __init__(
        self,
        n: int = 3,
        *,
        bins: int = 8,
        antipodal: bool = False,
        context_features: int = 0,
        hidden_features=(64, 64),
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    ):
        super().__init__()
        self.n = _check_sphere_dim(n, 2)
        self.features = self.n + 1
        self.antipodal = bool(antipodal)
        self.context_features = int(context_features)
        self.spline = IntervalSpline(
            bins,
            odd=antipodal,
            min_bin_width=min_bin_width,
            min_bin_height=min_bin_height,
            min_derivative=min_derivative,
        )
        self.num_rotation = num_rotation_params(self.n)
        self.conditioner = zero_mlp(
            1 + self.context_features, self.spline.num_params + self.num_rotation, hidden_features
        )

    def _params(self, h, context):
        check_context(context, self.context_features)
        cond = (h.square() if self.antipodal else h)[:, None]
        if self.context_features:
            cond = torch.cat([cond, context], dim=-1)
        params = self.conditioner(cond)
        spline_params = params[:, : self.spline.num_params]
        rotation = skew_to_rotation(params[:, self.spline.num_params :], self.n)
        return spline_params, rotation

    def _run(self, inputs, context, inverse):
        check_features(inputs, self.features)
        h = inputs[:, -1]
        radius = inputs[:, :-1].norm(dim=-1, keepdim=True)
        u = inputs[:, :-1] / radius.clamp_min(torch.finfo(inputs.dtype).tiny)
        spline_params, rotation = self._params(h, context)
        if inverse:
            u = (rotation.transpose(-1, -2) @ u[..., None])[..., 0]
            u, logabsdet = _radial(u, spline_params, self.spline, self.n - 1, inverse=True)
        else:
            u, logabsdet = _radial(u, spline_params, self.spline, self.n - 1, inverse=False)
            u = (rotation @ u[..., None])[..., 0]
        return torch.cat([radius * u, h[:, None]], dim=-1), logabsdet

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._run(inputs, context, inverse=False)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._run(inputs, context, inverse=True)


class CircleSplineTransform(Transform):
    """Circular spline (with rotation) of ``S^1`` given as unit vectors ``(cos phi, sin phi)``.

    Works on the angle ``phi = atan2(x_1, x_0)``, where arc length is ``dphi``, so
    ``log|det| = log C'(phi)``; accurate everywhere on the circle (unlike height coordinates).

    Args:
        bins: spline bins.
        context_features: width of the context (0: learned spline).
        hidden_features: hidden widths of the context MLP.

    Example:
        >>> t = CircleSplineTransform(bins=4)
        >>> x = torch.tensor([[0.6, 0.8]])
        >>> torch.allclose(t(x)[0], x, atol=1e-6)
        True
    """

    def __init__(
        self,
        *,
        bins: int = 8,
        context_features: int = 0,
        hidden_features=(64, 64),
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    ):
        super().__init__()
        self.features = 2
        self.circle = CircularSplineMap(
            bins,
            min_bin_width=min_bin_width,
            min_bin_height=min_bin_height,
            min_derivative=min_derivative,
        )
        self.params = _ConditionedParams(self.circle.num_params, context_features, hidden_features)

    def _run(self, inputs, context, inverse):
        check_features(inputs, 2)
        phi = torch.atan2(inputs[:, 1], inputs[:, 0])
        params = self.params(len(phi), context)
        step = self.circle.inverse if inverse else self.circle.forward
        new_phi, logabsdet = step(phi, params)
        return torch.stack([new_phi.cos(), new_phi.sin()], dim=-1), logabsdet

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._run(inputs, context, inverse=False)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._run(inputs, context, inverse=True)
