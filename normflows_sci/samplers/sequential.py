"""Annealed importance sampling and sequential Monte Carlo starting from a flow.

Particles start from the flow ``q`` and move through the geometric path
``log pi_beta = (1 - beta) log q + beta log p`` (``0 = beta_0 < ... < beta_K = 1``): at each
stage the log weights gain ``(beta_k - beta_{k-1}) (log p - log q)``, then MCMC moves targeting
``pi_{beta_k}`` (RWMH, MALA or HMC, batched over particles) refresh the positions. AIS never
resamples; SMC resamples (systematic) whenever the ESS of the current weights drops below
``resample_threshold * N``. Both return an estimate of ``log Z`` of the target's unnormalised
density.

Error bars: particles run in ``replicas`` independent groups (one batch); ``log_z_stderr`` is the
standard error of the mean over groups of the per-group estimates (of ``Z``, mapped to log scale by
the delta method), which is valid for AIS and SMC alike. With one group, AIS reports the
importance-sampling delta-method error and SMC reports NaN.

References:
    Neal (2001), "Annealed importance sampling". Del Moral, Doucet, Jasra (2006), "Sequential
    Monte Carlo samplers".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from normflows_sci.checks import check_num_samples
from normflows_sci.samplers.kernels import (
    HMC,
    MALA,
    HMCState,
    MALAState,
    RandomWalkMH,
    RWState,
    _finite,
    log_prob_and_grad,
)
from normflows_sci.samplers.targets import as_log_prob, check_log_prob, describe_target

__all__ = ["SequentialResult", "AIS", "SMC", "anneal"]

_KERNELS = {"hmc": HMC, "mala": MALA, "rwmh": RandomWalkMH}


@dataclass(frozen=True)
class SequentialResult:
    """Output of :class:`AIS` / :class:`SMC`.

    Attributes:
        samples: ``(N, *event)`` final particles.
        log_weights: ``(N,)`` final log weights (relative within each replica group).
        weights: ``(N,)`` self-normalised over all particles.
        ess, ess_fraction: Kish ESS of the final weights (count and fraction of N).
        log_z, log_z_stderr: the log-normaliser estimate and its standard error.
        acceptance: mean MCMC acceptance per stage, ``(K,)``.
        resamples: number of resampling events (SMC; 0 for AIS).
    """

    samples: Tensor
    log_weights: Tensor
    weights: Tensor
    ess: float
    ess_fraction: float
    log_z: float
    log_z_stderr: float
    acceptance: Tensor
    resamples: int


def _systematic(log_w: Tensor, generator) -> Tensor:
    """Systematic resampling within each row of ``log_w: (groups, m)``: indices ``(groups, m)``."""
    groups, m = log_w.shape
    weights = torch.softmax(log_w, dim=1)
    cumulative = weights.cumsum(1)
    cumulative[:, -1] = 1.0
    offset = torch.rand(groups, 1, generator=generator, dtype=log_w.dtype, device=log_w.device)
    points = (offset + torch.arange(m, dtype=log_w.dtype, device=log_w.device)) / m
    return torch.searchsorted(cumulative, points.contiguous()).clamp_max(m - 1)


def _endpoints(base_log_prob, target_log_prob, x: Tensor, gradients: bool, check: bool = False):
    """``(log q, grad log q, log p, grad log p)`` at ``x`` (gradients ``None`` without them);
    with ``check`` (the first evaluation of a run) both outputs are checked to be ``(N,)``."""
    base, target = (base_log_prob, target_log_prob) if check else (None, None)
    if gradients:
        return (
            *log_prob_and_grad(base_log_prob, x, target=base, what="particles"),
            *log_prob_and_grad(target_log_prob, x, target=target, what="particles"),
        )
    with torch.no_grad():
        log_q, log_p = base_log_prob(x), target_log_prob(x)
        if check:
            check_log_prob(log_q, base_log_prob, x.shape[0], what="particles")
            check_log_prob(log_p, target_log_prob, x.shape[0], what="particles")
        return _finite(log_q), None, _finite(log_p), None


def _kernel_state(move, x: Tensor, log_prob: Tensor, grad: Tensor | None, step_size: Tensor):
    """A state of ``move`` (one of ``_KERNELS``) at ``x`` with known log-density and gradient."""
    if isinstance(move, RandomWalkMH):
        return RWState(x, log_prob, step_size)
    if isinstance(move, HMC):
        return HMCState(x, log_prob, grad, step_size, torch.ones_like(x[0]))
    return MALAState(x, log_prob, grad, step_size)


def anneal(
    x: Tensor,
    base_log_prob: Callable[[Tensor], Tensor],
    target_log_prob: Callable[[Tensor], Tensor],
    betas: Tensor,
    *,
    kernel: str = "hmc",
    mcmc_steps: int = 1,
    step_size: float = 0.1,
    kernel_options: dict | None = None,
    replicas: int = 1,
    resample_threshold: float | None = None,
    generator: torch.Generator | None = None,
) -> dict:
    """The annealing engine behind AIS, SMC and FAB: moves ``x: (N, *event)`` from the base to
    the target along the geometric path and returns particles, log weights and log Z per group.

    ``base_log_prob`` must be the normalised log-density the particles were drawn from.
    One step size, shared by all particles, is adapted towards the kernel's target acceptance
    from the population's mean acceptance as the annealing proceeds.

    Args:
        x: ``(N, *event)`` particles drawn from the base.
        base_log_prob, target_log_prob: log-density callables ``(N, *event) -> (N,)``.
        betas: ``(K + 1,)`` increasing from 0 to 1.
        kernel, mcmc_steps, step_size, kernel_options: the MCMC moves (as for :class:`AIS`).
        replicas: independent groups (``N`` divisible by it), each with its own log Z.
        resample_threshold: resample a group (systematic) when its ESS falls below this fraction
            of its particles (``None``: never, as AIS).
        generator: seeds the moves and the resampling.

    Returns:
        dict with ``samples (N, *event)``, ``log_weights (N,)`` (relative within each group),
        ``log_z_groups (replicas,)`` (float64), ``acceptance (K,)`` and ``resamples``.

    Example:
        >>> from normflows_sci.distributions import StandardNormal
        >>> generator = torch.Generator().manual_seed(0)
        >>> base = StandardNormal(2)
        >>> target = lambda x: -0.5 * ((x - 1.0) ** 2).sum(-1)  # log Z = log(2 pi)
        >>> out = anneal(base.sample(1024, generator=generator), base.log_prob, target,
        ...              torch.linspace(0, 1, 11), kernel="mala", generator=generator)
        >>> abs(out["log_z_groups"][0].item() - math.log(2 * math.pi)) < 0.1
        True
    """
    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {sorted(_KERNELS)}, got {kernel!r}")
    num = x.shape[0]
    if num % replicas:
        raise ValueError(
            f"the number of particles ({num}) must be divisible by replicas={replicas}"
        )
    m = num // replicas
    gradients = kernel != "rwmh"
    log_q, grad_q, log_p, grad_p = _endpoints(
        base_log_prob, target_log_prob, x, gradients, check=True
    )
    log_w = torch.zeros(num, dtype=x.dtype, device=x.device)
    log_z = torch.zeros(replicas, dtype=torch.float64, device=x.device)
    step_sizes = torch.full((num,), float(step_size), dtype=x.dtype, device=x.device)
    acceptance, resamples = [], 0
    previous = 0.0
    levels = betas[1:].tolist()
    for index, beta in enumerate(levels, start=1):
        increment = (beta - previous) * (log_p - log_q)
        increment = torch.where(torch.isnan(increment), -math.inf, increment)
        grouped = log_w.reshape(replicas, m)
        norm = torch.logsumexp(grouped, 1, keepdim=True)
        log_z += (torch.logsumexp(grouped - norm + increment.reshape(replicas, m), 1)).double()
        log_w = (grouped - norm).reshape(-1) + increment
        previous = beta
        if resample_threshold is not None:
            grouped = log_w.reshape(replicas, m)
            ess = torch.exp(2 * torch.logsumexp(grouped, 1) - torch.logsumexp(2 * grouped, 1))
            if bool((ess < resample_threshold * m).any()):
                idx = _systematic(grouped, generator)
                flat = (idx + m * torch.arange(replicas, device=x.device)[:, None]).reshape(-1)
                x, step_sizes = x[flat], step_sizes[flat]
                log_q, log_p = log_q[flat], log_p[flat]
                if gradients:
                    grad_q, grad_p = grad_q[flat], grad_p[flat]
                log_w = torch.zeros_like(log_w)
                resamples += 1

        def intermediate(y, b=beta):
            return (1 - b) * base_log_prob(y) + b * target_log_prob(y)

        options = dict(kernel_options or {})
        if kernel == "hmc":
            options.setdefault("adapt_mass", False)
        move = _KERNELS[kernel](intermediate, step_size=float(step_size), **options)
        # The state at the new level from the endpoint densities already known at x (no
        # evaluation): log pi_beta = (1 - beta) log q + beta log p, and the same for gradients.
        log_pi = _finite((1 - beta) * log_q + beta * log_p)
        grad_pi = (1 - beta) * grad_q + beta * grad_p if gradients else None
        state = _kernel_state(move, x, log_pi, grad_pi, step_sizes)
        accepted = torch.zeros(num, dtype=x.dtype, device=x.device)
        for i in range(mcmc_steps):
            state, info = move.step(state, generator)
            accepted += info.accepted.to(x.dtype)
            # One step size for the whole population, adapted from its mean acceptance: a per-
            # particle rule would make each move depend on the particle's own last move and
            # break the invariance the weights rely on. Kept on the device (no sync per step).
            rate = ((index - 1) * mcmc_steps + i + 1.0) ** -0.6
            error = info.accept_prob.mean() - move.target_accept
            state = state._replace(step_size=state.step_size * torch.exp(2.0 * rate * error))
        x, step_sizes = state.x, state.step_size
        acceptance.append(accepted.mean() / mcmc_steps)
        if index < len(levels):  # the endpoint densities for the next level's increment
            log_q, grad_q, log_p, grad_p = _endpoints(base_log_prob, target_log_prob, x, gradients)
    return dict(
        samples=x,
        log_weights=log_w,
        log_z_groups=log_z,
        acceptance=torch.stack(acceptance).cpu() if acceptance else torch.zeros(0),
        resamples=resamples,
    )


class _Annealer:
    """Shared front end of AIS and SMC."""

    resample_threshold: float | None = None

    def __init__(
        self,
        target,
        flow,
        *,
        num_temperatures: int = 32,
        betas=None,
        kernel: str = "hmc",
        mcmc_steps: int = 1,
        step_size: float = 0.1,
        kernel_options: dict | None = None,
    ):
        self.log_prob_fn = as_log_prob(target)
        for method in ("sample_and_log_prob", "log_prob"):
            if not callable(getattr(flow, method, None)):
                raise TypeError(f"flow must be a Flow (needs {method}), got {type(flow).__name__}")
        self.flow = flow
        if betas is None:
            if int(num_temperatures) != num_temperatures or num_temperatures < 1:
                raise ValueError(
                    f"num_temperatures must be a positive integer, got {num_temperatures!r}"
                )
            betas = torch.linspace(0.0, 1.0, int(num_temperatures) + 1, dtype=torch.float64)
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if (
            betas.ndim != 1
            or len(betas) < 2
            or betas[0] != 0
            or betas[-1] != 1
            or not (betas.diff() > 0).all()
        ):
            raise ValueError("betas must increase strictly from 0 to 1 (at least two values)")
        if kernel not in _KERNELS:
            raise ValueError(f"kernel must be one of {sorted(_KERNELS)}, got {kernel!r}")
        if int(mcmc_steps) != mcmc_steps or mcmc_steps < 1:
            raise ValueError(f"mcmc_steps must be a positive integer, got {mcmc_steps!r}")
        self.betas, self.kernel, self.mcmc_steps = betas, kernel, int(mcmc_steps)
        self.step_size, self.kernel_options = float(step_size), kernel_options

    def _flow_log_prob(self, x: Tensor) -> Tensor:
        return self.flow.log_prob(x)

    def sample(
        self, num_particles: int, *, replicas: int = 1, generator: torch.Generator | None = None
    ) -> SequentialResult:
        """Run with ``num_particles`` particles in ``replicas`` independent groups."""
        num_particles = check_num_samples(num_particles)
        if int(replicas) != replicas or replicas < 1 or num_particles < 2 * replicas:
            raise ValueError(
                f"replicas must be a positive integer with at least 2 particles each, got "
                f"replicas={replicas!r} for {num_particles} particles"
            )
        with torch.no_grad():
            x, _ = self.flow.sample_and_log_prob(num_particles, generator=generator)
        out = anneal(
            x,
            self._flow_log_prob,
            self.log_prob_fn,
            self.betas,
            kernel=self.kernel,
            mcmc_steps=self.mcmc_steps,
            step_size=self.step_size,
            kernel_options=self.kernel_options,
            replicas=int(replicas),
            resample_threshold=self.resample_threshold,
            generator=generator,
        )
        log_w, groups = out["log_weights"], out["log_z_groups"]
        if not bool(torch.isfinite(log_w).any()):
            raise ValueError(
                f"every particle has weight zero: target {describe_target(self.log_prob_fn)} "
                f"has zero density (log-density -inf or NaN) at all {num_particles} particles "
                "(drawn from the flow and annealed); the flow does not reach the target's support"
            )
        weights = torch.softmax(log_w, 0)
        ess = float(1.0 / weights.square().sum())
        if replicas > 1:
            # Mean of the per-group Z estimates (unbiased), its standard error, then log scale.
            shift = float(groups.max())
            z = (groups - shift).exp()
            log_z = shift + math.log(float(z.mean()))
            stderr = float(z.std() / math.sqrt(replicas) / z.mean())
        elif self.resample_threshold is None:
            log_z = float(groups[0])
            stderr = math.sqrt(max(1.0 / ess - 1.0 / num_particles, 0.0))
        else:
            log_z, stderr = float(groups[0]), math.nan
        return SequentialResult(
            samples=out["samples"],
            log_weights=log_w,
            weights=weights,
            ess=ess,
            ess_fraction=ess / num_particles,
            log_z=log_z,
            log_z_stderr=stderr,
            acceptance=out["acceptance"],
            resamples=out["resamples"],
        )


class AIS(_Annealer):
    """Annealed importance sampling from a flow towards ``target``.

    Args:
        target: Energy, Flow or log-density callable (unnormalised).
        flow: the starting distribution (normalised: ``log_z`` is then the target's log Z).
        num_temperatures: number of annealing stages ``K`` (linear betas), or give ``betas``.
        kernel: ``"hmc"`` (default), ``"mala"`` or ``"rwmh"`` moves, ``mcmc_steps`` per stage.
        step_size, kernel_options: initial step size and extra kernel arguments
            (e.g. ``{"num_leapfrog": 5}``).

    Example:
        >>> from normflows_sci.flows import NSF
        >>> flow = NSF(2, transforms=1, hidden_features=(8,))
        >>> target = lambda x: -0.5 * ((x - 1) ** 2).sum(-1)  # Z = 2 pi
        >>> ais = AIS(target, flow, num_temperatures=8, kernel="mala")
        >>> out = ais.sample(1000, replicas=4, generator=torch.Generator().manual_seed(0))
        >>> abs(out.log_z - math.log(2 * math.pi)) < 4 * out.log_z_stderr
        True
    """


class SMC(_Annealer):
    """Sequential Monte Carlo sampler from a flow: AIS plus systematic resampling whenever the
    ESS falls below ``resample_threshold`` (fraction of the particles per replica group).

    Args:
        resample_threshold: in ``(0, 1]``; the other arguments as for :class:`AIS`.

    Example:
        >>> from normflows_sci.flows import NSF
        >>> flow = NSF(2, transforms=1, hidden_features=(8,))  # N(0, I), far from the target
        >>> target = lambda x: -0.5 * ((x - 2.0) ** 2).sum(-1)  # N(2, I) with Z = 2 pi
        >>> smc = SMC(target, flow, num_temperatures=10, kernel="mala")
        >>> out = smc.sample(1000, replicas=4, generator=torch.Generator().manual_seed(0))
        >>> out.resamples > 0, abs(out.log_z - math.log(2 * math.pi)) < 4 * out.log_z_stderr
        (True, True)
        >>> mean = (out.weights[:, None] * out.samples).sum(0)
        >>> torch.allclose(mean, torch.tensor([2.0, 2.0]), atol=0.2)
        True
    """

    def __init__(self, target, flow, *, resample_threshold: float = 0.5, **options):
        super().__init__(target, flow, **options)
        if not 0 < resample_threshold <= 1:
            raise ValueError(f"resample_threshold must be in (0, 1], got {resample_threshold!r}")
        self.resample_threshold = float(resample_threshold)
