"""The torus ``T^n`` (angles in ``[-pi, pi)``): manifold, bases and circular-spline flows.

Every layer is built from :class:`~normflows_sci.transforms.CircularSplineMap` (a rational-quadratic
spline of the circle with equal end derivatives, followed by a learned rotation), so the maps are
diffeomorphisms of the torus. Conditioners see ``(cos, sin)`` of the angles they depend on, which
makes them periodic.

References:
    Rezende, Papamakarios, Racanière, Albergo, Kanwar, Shanahan, Cranmer (2020), "Normalizing
    Flows on Tori and Spheres".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from normflows_sci.checks import check_context, check_features, check_int
from normflows_sci.distributions import Distribution
from normflows_sci.nn.networks import made_degrees, masked_layers
from normflows_sci.transforms import (
    CircularSplineMap,
    CompositeTransform,
    CouplingTransform,
    Transform,
    alternating_mask,
    wrap_angle,
)
from normflows_sci.transforms.splines import (
    DEFAULT_MIN_BIN_HEIGHT,
    DEFAULT_MIN_BIN_WIDTH,
    DEFAULT_MIN_DERIVATIVE,
)

from ._utils import zero_mlp
from .base import FlatChart, Manifold

__all__ = [
    "Torus",
    "VonMises",
    "CircularSplineTransform",
    "TorusCouplingTransform",
    "TorusAutoregressiveTransform",
]

_TWO_PI = 2.0 * math.pi


class Torus(FlatChart, Manifold):
    """The flat torus ``T^n = [-pi, pi)^n``; volume ``(2 pi)^n``.

    Points are ``(batch, n)`` angles in ``[-pi, pi)``; :meth:`proj` wraps any real angle there.
    The chart is the identity on ``(-pi, pi)^n``.

    Example:
        >>> torus = Torus(2)
        >>> torus.contains(torch.tensor([[0.0, 3.0], [0.0, 4.0]])).tolist()
        [True, False]
        >>> round(torus.volume, 4)
        39.4784
    """

    representation = "angles in [-pi, pi)"

    def __init__(self, n: int):
        self.dim = self.features = check_int("n", n)
        self.conditioner_features = 2 * self.dim

    def __repr__(self) -> str:
        return f"Torus({self.dim})"

    @property
    def volume(self) -> float:
        return _TWO_PI**self.dim

    def distance_to_manifold(self, x: Tensor) -> Tensor:
        # pi itself is accepted within the tolerance: it is -pi up to rounding.
        excess = (x.abs() - math.pi).clamp_min(0.0)
        return excess.amax(-1)

    def proj(self, x: Tensor) -> Tensor:
        return wrap_angle(x)

    def sample_uniform(self, num_samples, *, generator=None, dtype=None, device=None):
        u = torch.rand(num_samples, self.dim, generator=generator, dtype=dtype, device=device)
        return (2.0 * u - 1.0) * math.pi

    def embed(self, x: Tensor) -> Tensor:
        """``(cos, sin)`` of every angle: ``(batch, 2 n)``."""
        return torch.cat([x.cos(), x.sin()], dim=-1)

    def interpolant(self, x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``x_t = wrap(x0 + t delta)`` with the shortest signed arc ``delta = wrap(x1 - x0)``
        as velocity (per angle, across the ``+-pi`` seam)."""
        delta = wrap_angle(x1 - x0)
        return wrap_angle(x0 + t * delta), delta

    def squared_distance_matrix(self, x: Tensor, y: Tensor) -> Tensor:
        """Sum over angles of the squared wrapped differences."""
        return wrap_angle(x[:, None, :] - y[None, :, :]).square().sum(-1)

    def flow_block(self, context_features=0, *, bins=8, hidden_features=(64, 64), tail_bound=5.0):
        """Two circular-spline couplings with complementary masks, or one autoregressive circular
        spline for ``T^1`` (``tail_bound`` is unused: circles have no tails)."""
        net = dict(bins=bins, hidden_features=hidden_features, context_features=context_features)
        if self.dim == 1:
            return TorusAutoregressiveTransform(1, **net)
        masks = [alternating_mask(self.dim, even=True), alternating_mask(self.dim, even=False)]
        return CompositeTransform([TorusCouplingTransform(m, **net) for m in masks])


def von_mises_log_normalizer(concentration: Tensor) -> Tensor:
    """``log(2 pi I_0(kappa))``, stable for large ``kappa`` (``I_0 = i0e * exp(kappa)``)."""
    return math.log(_TWO_PI) + torch.log(torch.special.i0e(concentration)) + concentration


def sample_von_mises(
    concentration: Tensor, num_samples: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """``(num_samples, *concentration.shape)`` draws of a von Mises centred at 0.

    Best & Fisher (1979) rejection sampler, vectorised: rounds of proposals until every entry is
    accepted (acceptance is above 65% for every concentration).

    References:
        Best, Fisher (1979), "Efficient simulation of the von Mises distribution".
    """
    kappa = concentration.detach().to(torch.float64).expand(num_samples, *concentration.shape)
    device = kappa.device
    tiny = kappa < 1e-4
    k = kappa.clamp_min(1e-4)
    tau = 1.0 + torch.sqrt(1.0 + 4.0 * k.square())
    rho = (tau - torch.sqrt(2.0 * tau)) / (2.0 * k)
    r = (1.0 + rho.square()) / (2.0 * rho)
    result = torch.zeros_like(kappa)
    done = torch.zeros_like(kappa, dtype=torch.bool)
    while not bool(done.all()):
        u = torch.rand(3, *kappa.shape, generator=generator, dtype=torch.float64, device=device)
        z = torch.cos(math.pi * u[0])
        f = (1.0 + r * z) / (r + z)
        c = k * (r - f)
        accept = (c * (2.0 - c) - u[1] > 0) | (torch.log(c / u[1]) + 1.0 - c >= 0)
        theta = torch.sign(u[2] - 0.5) * torch.acos(f.clamp(-1.0, 1.0))
        theta = torch.where(tiny, (2.0 * u[2] - 1.0) * math.pi, theta)
        accept = accept | tiny
        new = accept & ~done
        result = torch.where(new, theta, result)
        done = done | accept
    return result.to(concentration.dtype)


class VonMises(Distribution):
    """Product of von Mises densities on ``T^n``: ``p(x) = prod exp(kappa cos(x - mu)) / (2 pi I_0(kappa))``.

    Sampling is reparameterised in ``loc`` (a learned shift of a centred draw); the concentration
    is fixed.

    Args:
        n: number of angles.
        loc: mean angles, scalar or ``(n,)``.
        concentration: ``kappa >= 0``, scalar or ``(n,)``.
        learnable_loc: train ``loc``.

    Example:
        >>> base = VonMises(1, concentration=0.0)
        >>> round(float(base.log_prob(torch.zeros(1, 1))[0]), 4)  # uniform: -log(2 pi)
        -1.8379
    """

    def __init__(self, n: int, *, loc=0.0, concentration=1.0, learnable_loc: bool = False):
        super().__init__(n)
        loc = torch.as_tensor(loc, dtype=torch.get_default_dtype()).expand(n).clone()
        kappa = torch.as_tensor(concentration, dtype=torch.get_default_dtype()).expand(n).clone()
        if not bool(torch.isfinite(kappa).all()) or bool((kappa < 0).any()):
            raise ValueError(f"concentration must be finite and >= 0, got {kappa.tolist()}")
        if learnable_loc:
            self.loc = nn.Parameter(loc)
        else:
            self.register_buffer("loc", loc)
        self.register_buffer("concentration", kappa)

    def log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        kappa = self.concentration
        per_dim = kappa * torch.cos(inputs - self.loc) - von_mises_log_normalizer(kappa)
        return per_dim.sum(-1)

    def _sample(self, num_samples, generator):
        centred = sample_von_mises(self.concentration, num_samples, generator=generator)
        return wrap_angle(centred + self.loc)


def _circle_map(bins, min_bin_width, min_bin_height, min_derivative) -> CircularSplineMap:
    return CircularSplineMap(
        bins,
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
    )


class CircularSplineTransform(Transform):
    """Independent circular splines (with rotations) on each angle of ``T^n``.

    Unconditional: free parameters per angle (the marginals of a torus flow, and the only layer
    a circle ``T^1`` needs). With ``context_features``, an MLP of the context emits them.
    Starts as the identity.

    Args:
        features: number of angles ``n``.
        bins: spline bins.
        context_features: width of the context (0 for none).
        hidden_features: hidden widths of the context MLP.

    References:
        Rezende et al. (2020), "Normalizing Flows on Tori and Spheres".

    Example:
        >>> t = CircularSplineTransform(2, bins=4)
        >>> z, logabsdet = t(torch.tensor([[0.5, -1.0]]))
        >>> [round(v, 4) for v in z[0].tolist()], round(float(logabsdet[0].detach()), 6)
        ([0.5, -1.0], 0.0)
    """

    def __init__(
        self,
        features: int,
        *,
        bins: int = 8,
        context_features: int = 0,
        hidden_features: int | Sequence[int] = (64, 64),
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    ):
        super().__init__()
        self.features = check_int("features", features)
        self.context_features = int(context_features)
        self.elementwise = _circle_map(bins, min_bin_width, min_bin_height, min_derivative)
        num_params = self.features * self.elementwise.num_params
        if self.context_features:
            self.conditioner = zero_mlp(self.context_features, num_params, hidden_features)
        else:
            self.params = nn.Parameter(torch.zeros(self.features, self.elementwise.num_params))

    def _params(self, inputs: Tensor, context: Tensor | None) -> Tensor:
        if self.context_features:
            check_context(context, self.context_features)
            raw = self.conditioner(context)
            return raw.reshape(inputs.shape[0], self.features, self.elementwise.num_params)
        return self.params.expand(inputs.shape[0], -1, -1)

    def _run(self, inputs, context, inverse):
        check_features(inputs, self.features)
        params = self._params(inputs, context)
        step = self.elementwise.inverse if inverse else self.elementwise.forward
        outputs, logabsdet = step(inputs, params)
        return outputs, logabsdet.sum(-1)

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._run(inputs, context, inverse=False)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._run(inputs, context, inverse=True)


class TorusCouplingTransform(CouplingTransform):
    """Coupling layer on ``T^n``: circular splines of the masked angles, conditioned on
    ``(cos, sin)`` of the other angles (and the context).

    Args:
        mask: ``(n,)`` booleans, True for the angles transformed.
        bins: spline bins.
        **kwargs: :class:`~normflows_sci.transforms.CouplingTransform` options (``context_features``,
            ``hidden_features``, ``conditioner``, ...).

    References:
        Rezende et al. (2020), "Normalizing Flows on Tori and Spheres".

    Example:
        >>> t = TorusCouplingTransform([True, False], bins=4, hidden_features=(8,))
        >>> t(torch.zeros(3, 2))[0].shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        mask,
        *,
        bins: int = 8,
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
        **kwargs,
    ):
        if "circular" in kwargs:
            raise TypeError(
                "TorusCouplingTransform treats every feature as an angle; drop circular"
            )
        features = len(torch.as_tensor(mask))
        circle = _circle_map(bins, min_bin_width, min_bin_height, min_derivative)
        super().__init__(mask, circle, circular=[True] * features, **kwargs)


class _PeriodicMADE(nn.Module):
    """MADE whose inputs are ``(cos, sin)`` of the angles: both features of angle ``i`` carry its
    degree, so the outputs of angle ``i`` depend only on ``(cos, sin)`` of earlier angles."""

    def __init__(self, features, params_per_feature, hidden_features, context_features, order):
        super().__init__()
        self.register_buffer("in_degrees", made_degrees(features, order))
        self.features, self.params_per_feature = features, params_per_feature
        # (cos, sin) of angle i both carry its degree.
        self.layers, self.output = masked_layers(
            self.in_degrees, self.in_degrees.repeat(2), hidden_features, params_per_feature
        )
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        width = self.layers[0].out_features
        self.context_layer = nn.Linear(context_features, width) if context_features > 0 else None
        self.activation = nn.ReLU(inplace=True)  # only ever applied to fresh layer outputs

    def forward(self, angles: Tensor, context: Tensor | None) -> Tensor:
        hidden = torch.cat([angles.cos(), angles.sin()], dim=-1)
        for i, layer in enumerate(self.layers):
            hidden = layer(hidden)
            if i == 0 and self.context_layer is not None:
                hidden = hidden + self.context_layer(context)
            hidden = self.activation(hidden)
        out = self.output(hidden)
        return out.reshape(angles.shape[0], self.features, self.params_per_feature)


class TorusAutoregressiveTransform(Transform):
    """Autoregressive circular splines on ``T^n``: angle ``i`` is transformed by a circular spline
    whose parameters depend on ``(cos, sin)`` of the angles before it (in ``order``).

    Density evaluation is one network pass; the inverse (sampling) takes ``n`` passes. Starts as
    the identity.

    Args:
        features: number of angles ``n``.
        bins: spline bins.
        context_features: width of the context (0 for none).
        hidden_features: hidden widths of the masked network.
        order: generation order, a permutation of ``range(n)``.

    References:
        Rezende et al. (2020), "Normalizing Flows on Tori and Spheres"; Germain et al. (2015),
        "MADE".

    Example:
        >>> t = TorusAutoregressiveTransform(3, bins=4, hidden_features=(8,))
        >>> t.inverse(torch.zeros(2, 3))[0].shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        features: int,
        *,
        bins: int = 8,
        context_features: int = 0,
        hidden_features: int | Sequence[int] = (64, 64),
        order: Sequence[int] | None = None,
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    ):
        super().__init__()
        self.features = check_int("features", features)
        self.context_features = int(context_features)
        self.elementwise = _circle_map(bins, min_bin_width, min_bin_height, min_derivative)
        self.made = _PeriodicMADE(
            self.features, self.elementwise.num_params, hidden_features, context_features, order
        )
        self.register_buffer("generation_order", torch.argsort(self.made.in_degrees))

    def _check(self, inputs, context):
        check_features(inputs, self.features)
        check_context(context, self.context_features)

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(inputs, context)
        outputs, logabsdet = self.elementwise.forward(inputs, self.made(inputs, context))
        return outputs, logabsdet.sum(-1)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(inputs, context)
        outputs = torch.zeros_like(inputs)
        logabsdet = inputs.new_zeros(inputs.shape[0])
        positions = torch.arange(self.features, device=inputs.device)
        for feature in self.generation_order.tolist():
            params = self.made(outputs, context)[:, feature]
            value, feature_logabsdet = self.elementwise.inverse(inputs[:, feature], params)
            outputs = torch.where(positions == feature, value[:, None], outputs)
            logabsdet = logabsdet + feature_logabsdet
        return outputs, logabsdet
