"""Continuous normalizing flows (CNF): a neural ODE with an exact or Hutchinson log-likelihood.

Time convention (flow matching, Lipman et al. 2022): the base (noise) lives at ``t = 0`` and the
data at ``t = 1``; the velocity field ``v(x, t[, c])`` carries noise to data along
``dx/dt = v(x, t)``. Along a trajectory the log-density obeys the instantaneous change of variables
(Chen et al. 2018) ``d log p_t(x(t)) / dt = -div v(x(t), t)``, so

    log p_1(x) = log p_0(z) - int_0^1 div v(x(t), t) dt,     z = x(0), x(1) = x.

As a :class:`~normflows_sci.transforms.Transform` (data -> latent), ``forward`` integrates from
``t = 1`` down to ``t = 0`` with ``logabsdet = log|det dz/dx| = -int_0^1 div v dt``; ``inverse``
integrates upwards. The divergence is exact (``D`` backward passes: the trace of the autograd
Jacobian) or Hutchinson's estimator ``eps^T (dv/dx) eps`` with one probe ``eps`` per solve
(Grathwohl et al. 2019, FFJORD), unbiased for ``E[eps eps^T] = I``.

Solvers (written here, batched, gradients flow through the steps): classical fixed-step RK4 and
adaptive Dormand-Prince 5(4) (Dormand & Prince 1980; Hairer, Norsett & Wanner, *Solving ODEs I*,
II.4-5) with per-sample mixed error control ``|err_i| <= atol + rtol max(|y_i|, |y_i'|)``, the step
accepted when the largest per-row RMS of the scaled error over the batch is <= 1 (so the accuracy
of a row does not degrade with the batch it is in).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from normflows_sci.checks import check_context, check_int
from normflows_sci.distributions import Distribution
from normflows_sci.flows.base import Flow
from normflows_sci.manifolds import Manifold, as_manifold
from normflows_sci.nn import MLP, bounded_inputs
from normflows_sci.transforms import Transform

__all__ = [
    "CNF",
    "ContinuousFlow",
    "ODETransform",
    "VelocityMLP",
    "SOLVERS",
    "DIVERGENCES",
    "check_divergence",
    "divergence_estimator",
]

SOLVERS = ("dopri5", "rk4")
DIVERGENCES = ("exact", "hutchinson")
_NOISES = ("rademacher", "gaussian")
# The ODETransform settings CNF takes as keywords (its **solver).
_SOLVER_KEYWORDS = ("solver", "rtol", "atol", "steps", "divergence", "noise", "max_steps")

# Dormand-Prince 5(4) tableau (FSAL): nodes, stage weights, 5th-order solution, error weights
# (5th minus embedded 4th order).
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_B = _DP_A[6] + (0.0,)
_DP_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_DP_E = tuple(b - b4 for b, b4 in zip(_DP_B, _DP_B4))


def check_divergence(divergence) -> str:
    """``divergence`` if it is one of :data:`DIVERGENCES`, else a ``ValueError`` naming it.

    >>> check_divergence("hutchinson")
    'hutchinson'
    """
    if not isinstance(divergence, str) or divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    return divergence


def _combine(y: Tensor, h: float, weights: Sequence[float], ks: Sequence[Tensor]) -> Tensor:
    out = y
    for w, k in zip(weights, ks):
        if w != 0.0:
            out = out + (h * w) * k
    return out


def _norm(values: Tensor) -> float:
    """Largest per-row RMS (rows are independent samples).

    Each row is divided by its largest magnitude before squaring: float32 squares overflow at
    ``1.8e19``, and the solver's scaled quantities reach that for states of ``1e30``.
    """
    if not values.numel():
        return 0.0
    magnitude = values.detach().abs()
    peak = magnitude.amax(1, keepdim=True)
    relative = magnitude / peak.clamp_min(torch.finfo(magnitude.dtype).tiny)
    return float((peak[:, 0] * relative.square().mean(1).sqrt()).max())


def rk4(func: Callable, y: Tensor, t0: float, t1: float, steps: int) -> tuple[Tensor, int]:
    """Classical fixed-step Runge-Kutta 4 from ``t0`` to ``t1``; returns ``(y(t1), evaluations)``."""
    h = (t1 - t0) / steps
    for i in range(steps):
        t = t0 + i * h
        k1 = func(t, y)
        k2 = func(t + h / 2, y + (h / 2) * k1)
        k3 = func(t + h / 2, y + (h / 2) * k2)
        k4 = func(t + h, y + h * k3)
        y = y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
    return y, 4 * steps


def _initial_step(
    func: Callable, y: Tensor, k1: Tensor, t0: float, span: float, *, rtol: float, atol: float
) -> float:
    """Hairer, Norsett & Wanner's starting step size (I, II.4) towards ``t0 + span`` (signed);
    one evaluation of ``func``."""
    direction, span = math.copysign(1.0, span), abs(span)
    scale = atol + rtol * y.detach().abs()
    d0, d1 = _norm(y / scale), _norm(k1 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    if not 0.0 < h0 < math.inf:  # d1 = inf or NaN: the error control rejects such steps
        h0 = 1e-6
    h0 = min(h0, span)
    k_probe = func(t0 + direction * h0, y + (direction * h0) * k1)
    d2 = _norm((k_probe - k1) / scale) / h0
    big = max(d1, d2)
    h1 = max(1e-6, h0 * 1e-3) if big <= 1e-15 else (0.01 / big) ** 0.2
    return min(100 * h0, h1, span)


def dopri5(
    func: Callable,
    y: Tensor,
    t0: float,
    t1: float,
    *,
    rtol: float,
    atol: float,
    max_steps: int = 10000,
) -> tuple[Tensor, int]:
    """Adaptive Dormand-Prince 5(4) from ``t0`` to ``t1`` (either direction) on a batch
    ``y: (batch, d)``; returns ``(y(t1), evaluations)``.

    Error control per row: ``sqrt(mean_j (err_ij / (atol + rtol max(|y_ij|, |y'_ij|)))^2) <= 1`` for
    every row ``i``; step factor ``0.9 err^(-1/5)`` clamped to ``[0.2, 10]``; initial step by
    Hairer-Norsett-Wanner's heuristic. Raises ``RuntimeError`` after ``max_steps`` attempted steps.
    """
    span = abs(t1 - t0)
    if span == 0.0:
        return y, 0
    direction = 1.0 if t1 > t0 else -1.0
    k1 = func(t0, y)
    h = _initial_step(func, y, k1, t0, direction * span, rtol=rtol, atol=atol)
    evaluations = 2
    t, attempts = t0, 0
    while direction * (t1 - t) > 0:
        if attempts >= max_steps:
            raise RuntimeError(
                f"dopri5 took more than max_steps={max_steps} steps (at t={t:.6g}); loosen "
                "rtol/atol or raise max_steps"
            )
        attempts += 1
        remaining = abs(t1 - t)
        last = h >= remaining * (1 - 1e-12)
        if last:
            h = remaining
        dt = direction * h
        ks = [k1]
        for i in range(1, 6):
            ks.append(func(t + _DP_C[i] * dt, _combine(y, dt, _DP_A[i], ks)))
        y_new = _combine(y, dt, _DP_B[:6], ks)
        k7 = func(t + dt, y_new)
        evaluations += 6
        ks.append(k7)
        error = _combine(torch.zeros_like(y), dt, _DP_E, ks)
        scale = atol + rtol * torch.maximum(y.detach().abs(), y_new.detach().abs())
        err = _norm(error / scale)
        if not math.isfinite(err):
            factor, accepted = 0.2, False
        else:
            accepted = err <= 1.0
            factor = 10.0 if err == 0.0 else min(10.0, max(0.2, 0.9 * err**-0.2))
        if accepted:
            t = t1 if last else t + dt
            y, k1 = y_new, k7
        else:
            factor = min(factor, 1.0)
        h = h * factor
        if h < 1e-14 * max(1.0, abs(t)):
            raise RuntimeError(f"dopri5 step size underflow at t={t:.6g} (non-finite dynamics?)")
    return y, evaluations


class VelocityMLP(nn.Module):
    """Velocity field ``v(x, t[, c])``: an :class:`~normflows_sci.nn.MLP` on ``[x, t, c]``.

    The point features pass through :func:`~normflows_sci.nn.bounded_inputs` (``±2**32`` in
    float32), so the field is constant in each coordinate far beyond any data scale.

    Args:
        features: data dimension ``D``.
        context_features: width of the context (0 for none).
        hidden_features: hidden widths.
        activation: module class; smooth (default SiLU) so the ODE is smooth for adaptive steps.
        input_features: width of the point features the field sees (default ``features``; on a
            manifold its ``conditioner_features``, e.g. ``(cos, sin)`` of torus angles).

    Shapes:
        ``forward(x: (batch, D), t: (batch, 1), context: (batch, C) | None) -> (batch, D)``.

    Example:
        >>> field = VelocityMLP(2, context_features=1, hidden_features=(8,))
        >>> field(torch.zeros(5, 2), torch.full((5, 1), 0.5), torch.ones(5, 1)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        hidden_features: int | Sequence[int] = (128, 128),
        *,
        activation: Callable[[], nn.Module] = nn.SiLU,
        input_features: int | None = None,
    ):
        super().__init__()
        self.features = int(features)
        self.context_features = int(context_features)
        self.input_features = self.features if input_features is None else int(input_features)
        self.net = MLP(
            self.input_features + 1 + self.context_features,
            self.features,
            hidden_features,
            activation=activation,
        )

    def forward(self, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
        check_context(context, self.context_features, flatten=True)
        # Bounded point features: at states of ~1e30 the field would be numerical noise and
        # adaptive steps could not meet any tolerance.
        parts = [bounded_inputs(x), t.to(x.dtype).expand(x.shape[0], 1)]
        if self.context_features:
            parts.append(context.flatten(1).to(x.dtype))
        return self.net(torch.cat(parts, dim=1))


class ODETransform(Transform):
    """The time-1 map of ``dx/dt = v(x, t[, c])`` as a Transform (data at ``t = 1``, latent at
    ``t = 0``), with ``logabsdet`` from the integrated divergence (see the module docstring).

    Args:
        velocity: module called as ``velocity(x, t, context)`` with ``t: (batch, 1)``.
        features: data dimension ``D``.
        solver: ``"dopri5"`` (adaptive, ``rtol``/``atol``) or ``"rk4"`` (``steps`` fixed steps).
        rtol, atol: dopri5 tolerances (the log-density is part of the controlled state).
        steps: number of RK4 steps.
        divergence: ``"exact"`` (``D`` backward passes, or the velocity's own exact
            divergence) or ``"hutchinson"`` (one vector-Jacobian product, or one forward-mode
            tangent of a velocity that supplies it, with a fresh probe per row and solve, drawn
            from :attr:`probe_generator`); :func:`divergence_estimator` switches it for a block.
        noise: Hutchinson probe distribution, ``"rademacher"`` or ``"gaussian"``.
        max_steps: dopri5 step budget per solve.
        manifold: solve on a :class:`~normflows_sci.manifolds.Manifold` (torus, sphere, SO(3),
            products) instead of ``R^D`` (Riemannian CNF; Mathieu & Nickel 2020, Chen & Lipman
            2023): the field sees ``manifold.embed(x)``; unless the manifold is ``flat`` its
            output is projected onto the tangent space (``B B^T f`` with ``B =
            manifold.tangent_basis``) and the divergence is the Riemannian one ``sum_k b_k^T
            (dv/dx) b_k`` (Hutchinson: probe ``B r``); the end point is ``manifold.proj``-ected,
            and densities are with respect to the Riemannian volume. ``None`` is ``R^D``.

    Attributes:
        evaluations: velocity evaluations of the last solve (a cost diagnostic).
        probe_generator: generator of the Hutchinson probes (``None``: torch's global one).
        geometry: the manifold solved on (``Euclidean(D)`` when ``manifold`` is ``None``).

    Gradients flow through the solver steps (discretise-then-optimise); under
    ``torch.no_grad()`` the divergence is computed without keeping any graph.

    Example:
        >>> class Linear(nn.Module):  # v = -x: x(1) = e^{-1} z, log|det dz/dx| = D
        ...     def forward(self, x, t, context=None):
        ...         return -x
        >>> transform = ODETransform(Linear(), 2, rtol=1e-8, atol=1e-8)
        >>> z, logabsdet = transform(torch.ones(1, 2))
        >>> [round(v, 4) for v in z[0].tolist()], round(logabsdet.item(), 4)
        ([2.7183, 2.7183], 2.0)
    """

    def __init__(
        self,
        velocity: nn.Module,
        features: int,
        *,
        solver: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        steps: int = 20,
        divergence: str = "exact",
        noise: str = "rademacher",
        max_steps: int = 10000,
        manifold=None,
    ):
        super().__init__()
        features = check_int("features", features)
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if noise not in _NOISES:
            raise ValueError(f"noise must be one of {_NOISES}, got {noise!r}")
        for name, value in (("rtol", rtol), ("atol", atol)):
            if isinstance(value, bool) or not float(value) > 0 or not math.isfinite(value):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        steps, max_steps = check_int("steps", steps), check_int("max_steps", max_steps)
        self.manifold = manifold
        self.geometry = as_manifold(manifold, features)
        self._flat = self.geometry.flat  # the tangent basis is the identity (R^D, tori)
        self.velocity = velocity
        self.features = features
        self.solver = solver
        self.rtol, self.atol = float(rtol), float(atol)
        self.steps, self.max_steps = steps, max_steps
        self.divergence = divergence
        self.noise = noise
        self.probe_generator: torch.Generator | None = None
        self.evaluations = 0

    @property
    def divergence(self) -> str:
        """``"exact"`` or ``"hutchinson"``; assigning another value is a ``ValueError``."""
        return self._divergence_kind

    @divergence.setter
    def divergence(self, value: str) -> None:
        self._divergence_kind = check_divergence(value)

    def __setstate__(self, state: dict) -> None:
        # Transforms pickled before ``divergence`` became a checked property (e.g. inside saved
        # estimators) carry it as a plain attribute and have no probe generator.
        if "divergence" in state:
            state["_divergence_kind"] = check_divergence(state.pop("divergence"))
        state.setdefault("probe_generator", None)
        super().__setstate__(state)

    def _basis(self, x: Tensor) -> Tensor:
        return self.geometry.tangent_basis(self.geometry.proj(x))

    def _velocity(self, x: Tensor, t: float, context: Tensor | None) -> Tensor:
        times = torch.full((x.shape[0], 1), t, dtype=x.dtype, device=x.device)
        return self.field(x, times, context)

    def field(self, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
        """The (tangent) velocity ``v(x, t[, c])`` for ``t: (batch, 1)``: the network's output,
        on a manifold seen through ``embed`` and projected onto the tangent space."""
        if self.manifold is None:  # R^D: the field reads the raw coordinates
            return self.velocity(x, t, context)
        field = self.velocity(self.manifold.embed(x), t, context)
        if self._flat:
            return field
        basis = self._basis(x)
        return (basis @ (basis.transpose(1, 2) @ field[..., None]))[..., 0]

    def _supplied(
        self, x: Tensor, t: float, context: Tensor | None, probe: Tensor | None, graph: bool
    ):
        """``(v, div)`` from the velocity's own divergence, or ``None``.

        Opt-in hooks of the velocity module (raw coordinates ``x: (batch, D)``, ``t: (batch,
        1)``, ``manifold`` the manifold or ``None`` for ``R^D``), each returning ``(its output at
        manifold.embed(x), div)`` with ``div: (batch,)``, or ``None`` to fall back to autograd:

        * ``value_and_divergence(x, t, context, manifold)``, for ``divergence="exact"``: the
          exact divergence of the tangent field :meth:`field` on that manifold;
        * ``value_and_probed_divergence(x, t, context, manifold, probe)``, for
          ``divergence="hutchinson"``: ``probe^T (dv/dx) probe`` for the per-row tangent
          direction ``probe: (batch, D)`` (on a curved manifold ``B r``, ``B`` its tangent basis;
          Hutchinson's estimate of the same divergence).
        """
        times = torch.full((x.shape[0], 1), t, dtype=x.dtype, device=x.device)
        if probe is None:
            hook = getattr(self.velocity, "value_and_divergence", None)
            arguments = (x, times, context, self.manifold)
        else:
            hook = getattr(self.velocity, "value_and_probed_divergence", None)
            arguments = (x, times, context, self.manifold, self._direction(x, probe))
        if hook is None:
            return None
        with torch.set_grad_enabled(graph):
            supplied = hook(*arguments)
        if supplied is None:
            return None
        v, div = supplied
        if self.manifold is not None and not self._flat:
            basis = self._basis(x)
            v = (basis @ (basis.transpose(1, 2) @ v[..., None]))[..., 0]
        return v, div

    def _direction(self, x: Tensor, probe: Tensor) -> Tensor:
        """The tangent direction ``(batch, D)`` of a probe drawn in the manifold's frame."""
        if self._flat:
            return probe
        return (self._basis(x) @ probe[..., None])[..., 0]

    def _draw_probe(self, inputs: Tensor) -> Tensor:
        """One Hutchinson probe per row, ``(batch, dim)``, from :attr:`probe_generator` (the
        global generator when ``None``)."""
        shape = (inputs.shape[0], self.geometry.dim)
        options = dict(generator=self.probe_generator, dtype=inputs.dtype, device=inputs.device)
        if self.noise == "gaussian":
            return torch.randn(shape, **options)
        return torch.randint(0, 2, shape, **options) * 2 - 1

    def _divergence(self, v: Tensor, x: Tensor, probe: Tensor | None, graph: bool) -> Tensor:
        if not v.requires_grad:  # the field does not depend on x (nor on parameters)
            return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        if not self._flat:  # Riemannian divergence in an orthonormal tangent frame
            basis = self._basis(x)
            directions = [basis @ probe[..., None]] if probe is not None else basis.unbind(2)
            total = torch.zeros_like(v[:, 0])
            for e in directions:
                e = e.reshape(v.shape)
                (vjp,) = torch.autograd.grad(
                    v, x, e, create_graph=graph, retain_graph=True, allow_unused=True
                )
                if vjp is not None:
                    total = total + (vjp * e).sum(1)
            return total
        if probe is not None:
            (vjp,) = torch.autograd.grad(
                v, x, probe, create_graph=graph, retain_graph=graph, allow_unused=True
            )
            return torch.zeros_like(v[:, 0]) if vjp is None else (vjp * probe).sum(1)
        total = torch.zeros_like(v[:, 0])
        for i in range(self.features):
            (row,) = torch.autograd.grad(
                v[:, i].sum(), x, create_graph=graph, retain_graph=True, allow_unused=True
            )
            if row is not None:
                total = total + row[:, i]
        return total

    def integrate(
        self,
        inputs: Tensor,
        context: Tensor | None = None,
        *,
        t0: float,
        t1: float,
        logdet: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Solve from ``t0`` to ``t1`` starting at ``inputs: (batch, D)``.

        Returns:
            ``(x(t1), int_{t0}^{t1} div v dt)`` (``None`` for the second when ``logdet=False``).
        """
        if inputs.ndim != 2 or inputs.shape[1] != self.features:
            raise ValueError(
                f"inputs must have shape (batch, {self.features}), got {tuple(inputs.shape)}"
            )
        d = self.features
        graph = torch.is_grad_enabled()
        probe = None
        if logdet and self.divergence == "hutchinson":
            probe = self._draw_probe(inputs)

        if logdet:

            def func(t: float, state: Tensor) -> Tensor:
                x = state[:, :d]
                supplied = self._supplied(x, t, context, probe, graph)
                if supplied is not None:
                    v, div = supplied
                    return torch.cat([v, div[:, None]], dim=1)
                with torch.enable_grad():
                    if not (graph and x.requires_grad):
                        x = x.detach().requires_grad_(True)
                    v = self._velocity(x, t, context)
                    div = self._divergence(v, x, probe, graph)
                if not graph:
                    v, div = v.detach(), div.detach()
                return torch.cat([v, div[:, None]], dim=1)

            state = torch.cat([inputs, inputs.new_zeros(inputs.shape[0], 1)], dim=1)
        else:

            def func(t: float, state: Tensor) -> Tensor:
                return self._velocity(state, t, context)

            state = inputs
        if self.solver == "rk4":
            state, self.evaluations = rk4(func, state, t0, t1, self.steps)
        else:
            state, self.evaluations = dopri5(
                func, state, t0, t1, rtol=self.rtol, atol=self.atol, max_steps=self.max_steps
            )
        outputs, total = (state[:, :d], state[:, d]) if logdet else (state, None)
        return self.geometry.proj(outputs), total

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data (``t = 1``) to latent (``t = 0``); ``logabsdet = -int_0^1 div v dt``."""
        return self.integrate(inputs, context, t0=1.0, t1=0.0)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latent (``t = 0``) to data (``t = 1``); ``logabsdet = int_0^1 div v dt``."""
        return self.integrate(inputs, context, t0=0.0, t1=1.0)


@contextmanager
def divergence_estimator(
    module: nn.Module, divergence: str, *, generator: torch.Generator | None = None
) -> Iterator[list[ODETransform]]:
    """Within the block, every :class:`ODETransform` inside ``module`` computes its divergence
    with ``divergence`` (Hutchinson probes drawn from ``generator``, or torch's global generator
    when ``None``); on exit, also by an exception, each gets back its own setting and probe
    generator. Yields the transforms switched.

    The use: train with ``"hutchinson"`` (one tangent per field evaluation instead of ``D``)
    while the model keeps the exact divergence for evaluation, importance weights and ``log Z``
    (:func:`~normflows_sci.training.fit_boltzmann` with ``divergence=``). Losses linear in ``log
    q`` (reverse KL, negative log-likelihood) stay unbiased, and so do their gradients, since the
    probe does not depend on the parameters; nonlinear functions of ``log q`` (importance
    weights, the ESS) do not.

    Raises:
        ValueError: ``divergence`` is not one of :data:`DIVERGENCES`.
        TypeError: ``module`` is not a module or contains no :class:`ODETransform`.

    Example:
        >>> flow = CNF(2, hidden_features=(8,), solver="rk4", steps=2)
        >>> with divergence_estimator(flow, "hutchinson") as switched:
        ...     [transform.divergence for transform in switched]
        ['hutchinson']
        >>> flow.transform.divergence
        'exact'
    """
    divergence = check_divergence(divergence)
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    transforms = [m for m in module.modules() if isinstance(m, ODETransform)]
    if not transforms:
        raise TypeError(
            f"module ({type(module).__name__}) contains no ODETransform: the divergence "
            "estimator applies to continuous flows only"
        )
    saved = [(m, m.divergence, m.probe_generator) for m in transforms]
    try:
        for transform in transforms:
            transform.divergence, transform.probe_generator = divergence, generator
        yield transforms
    finally:
        for transform, kind, previous in saved:
            transform.divergence, transform.probe_generator = kind, previous


class ContinuousFlow(Flow):
    """A :class:`~normflows_sci.flows.Flow` whose transform is an :class:`ODETransform`.

    ``log_prob`` and ``sample_and_log_prob`` are the Flow's (exact up to the solver tolerance,
    or unbiased with ``divergence="hutchinson"``); ``sample`` integrates the ODE without the
    divergence (cheaper); :meth:`velocity` evaluates the field for flow-matching training.
    """

    def __init__(self, transform: ODETransform, base: Distribution, **options):
        if not isinstance(transform, ODETransform):
            raise TypeError(f"transform must be an ODETransform, got {type(transform).__name__}")
        super().__init__(transform, base, **options)
        if self.features != transform.features:
            raise ValueError(
                f"base has {self.features} features but the transform {transform.features}"
            )

    def velocity(self, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
        """``v(x, t[, c])`` for ``x: (batch, D)``, ``t: (batch,)`` or ``(batch, 1)``; the context
        goes through the flow's embedding like in ``log_prob``."""
        context = self._context(context, x.shape[0])
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1)
        return self.transform.field(x, t.expand(x.shape[0], 1), context)

    def _samples(self, latent: Tensor, context: Tensor | None) -> Tensor:
        # Sampling integrates the ODE without the divergence (cheaper).
        return self.transform.integrate(latent, context, t0=0.0, t1=1.0, logdet=False)[0]


def CNF(
    features: int | None = None,
    context_features: int = 0,
    hidden_features: int | Sequence[int] = (128, 128),
    *,
    activation: Callable[[], nn.Module] = nn.SiLU,
    base: Distribution | None = None,
    embedding: nn.Module | None = None,
    velocity: nn.Module | None = None,
    manifold: Manifold | None = None,
    seed: int | None = None,
    **solver,
) -> ContinuousFlow:
    """Continuous normalizing flow (Chen et al. 2018; FFJORD, Grathwohl et al. 2019) with a
    :class:`VelocityMLP` field, for flow-matching training
    (:func:`~normflows_sci.training.fit_flow_matching`) or maximum likelihood
    (:func:`~normflows_sci.training.fit_flow`).

    ``log p(x) = log p0(z) - int_0^1 div v(x(t), t) dt`` with the base ``p0`` at ``t = 0`` and
    data at ``t = 1``.

    Args:
        features: data dimension ``D`` (optional with a ``manifold``: its coordinate count).
        context_features: context width (after ``embedding``, if any); 0 for none.
        hidden_features: hidden widths of the velocity MLP.
        activation: activation of the velocity MLP.
        base: latent distribution at ``t = 0`` (default: the manifold's
            :meth:`~normflows_sci.manifolds.Manifold.default_base`, standard normal in ``R^D``).
        embedding: network applied to the context first.
        velocity: a custom field ``velocity(x, t, context)`` replacing the MLP.
        manifold: a :class:`~normflows_sci.manifolds.Manifold` such as
            :class:`~normflows_sci.manifolds.Torus` or :class:`~normflows_sci.manifolds.Sphere`
            (points as that manifold represents them); see :class:`ODETransform` and
            :func:`~normflows_sci.training.fit_flow_matching` (geodesic interpolants).
        seed: seeds the MLP initialisation (reproducible models).
        **solver: the :class:`ODETransform` settings ``solver`` (``"dopri5"``), ``rtol``,
            ``atol`` (``1e-5``), ``steps`` (20), ``divergence`` (``"exact"``), ``noise``
            (``"rademacher"``) and ``max_steps`` (10000); any other keyword is a ``TypeError``.

    Example:
        >>> flow = CNF(2, hidden_features=(16,), solver="rk4", steps=8)
        >>> x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
        >>> flow.log_prob(x).shape
        torch.Size([4])
        >>> samples, log_prob = flow.sample_and_log_prob(3, generator=torch.Generator().manual_seed(1))
        >>> bool(torch.allclose(flow.log_prob(samples), log_prob, atol=1e-3))
        True
    """
    unknown = sorted(set(solver) - set(_SOLVER_KEYWORDS))
    if unknown:
        raise TypeError(
            f"CNF() got unexpected keyword arguments {unknown}; its solver settings are "
            f"{', '.join(_SOLVER_KEYWORDS)}"
        )
    geometry = _cnf_geometry(features, manifold)
    features = geometry.features
    context_features = check_int("context_features", context_features, minimum=0)
    if velocity is None:
        # The field reads the manifold's embedding (e.g. (cos, sin) of torus angles).
        width = None if manifold is None else geometry.conditioner_features
        options = dict(activation=activation, input_features=width)
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            velocity = VelocityMLP(features, context_features, hidden_features, **options)
    transform = ODETransform(velocity, features, manifold=manifold, **solver)
    if base is None:
        base = geometry.default_base()
    elif base.event_shape.numel() != features:
        raise ValueError(
            f"base must have {features} features, got event_shape {tuple(base.event_shape)}"
        )
    return ContinuousFlow(transform, base, embedding=embedding)


def _cnf_geometry(features: int | None, manifold: Manifold | None) -> Manifold:
    """The manifold of a CNF: ``manifold`` (``features``, if given, must match it) or ``R^D``."""
    if manifold is None:
        if features is None:
            raise ValueError(
                "features is required (the data dimension D) unless a manifold is given"
            )
        return as_manifold(None, check_int("features", features))
    geometry = as_manifold(manifold)
    if features is not None and features != geometry.features:
        raise ValueError(
            f"features={features!r} does not match the {geometry.features} coordinates of "
            f"{geometry!r} (leave features out with a manifold)"
        )
    return geometry
