"""Annealed importance sampling and sequential Monte Carlo starting from a flow.

Particles start from the flow ``q`` and move through the geometric path
``log pi_s = (1 - s) log q + s log p`` whose positions ``s`` form the annealing ``schedule``
(``0 = s_0 < ... < s_K = 1``; ``beta`` is kept for inverse temperatures): at each stage the log
weights gain ``(s_k - s_{k-1}) (log p - log q)``, then MCMC moves targeting ``pi_{s_k}`` (RWMH,
MALA or HMC, batched over particles) refresh the particles. AIS never
resamples; SMC resamples (systematic) whenever the ESS of the current weights drops below
``resample_threshold * N``. Both return an estimate of ``log Z`` of the target's unnormalised
density.

Error bars: particles run in ``replicas`` independent groups (one batch, 4 groups by default);
``log_z_stderr`` is the standard error of the mean over groups of the per-group estimates (of ``Z``,
mapped to log scale by the delta method, widened for the few degrees of freedom), which is valid for
AIS and SMC alike. With one group, AIS reports the importance-sampling delta-method error and SMC
has no error bar (``None``, with a warning).

Trust: every :class:`SequentialResult` carries the Pareto k-hat of its importance weights (for SMC,
the worst over the segments between resamplings) and the agreement of its replicas, and warns
(RuntimeWarning) when they say that log Z and its error bar cannot be trusted.

References:
    Neal (2001), "Annealed importance sampling". Del Moral, Doucet, Jasra (2006), "Sequential
    Monte Carlo samplers".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from normflows_sci.checks import check_int, check_num_samples
from normflows_sci.samplers._mh import finite, log_prob_and_grad
from normflows_sci.samplers._results import FieldMapping
from normflows_sci.samplers.adaptation import StepSizeAdaptation
from normflows_sci.samplers.kernels import HMC, kernel_factory
from normflows_sci.samplers.psis import result_threshold, tail_khat, warn_unreliable
from normflows_sci.samplers.targets import as_log_prob, check_log_prob, describe_target

__all__ = [
    "SequentialResult",
    "AnnealResult",
    "AIS",
    "SMC",
    "anneal",
    "MAX_REPLICA_SPREAD",
]


# Replicas whose log Z estimates differ by more than this (standard deviation) make a result
# unreliable: the mean of their Z is dominated by the largest and its error bar means little.
MAX_REPLICA_SPREAD = 1.0

# The warnings point at the caller of sample(): _warn -> __post_init__ -> __init__ ->
# _sequential_result -> sample -> caller.
_STACKLEVEL = 6

_ADVICE = (
    "use more temperatures (num_temperatures), more MCMC steps per stage, more particles, or a "
    "flow closer to the target (train it)"
)


@dataclass(frozen=True)
class SequentialResult:
    """Output of :class:`AIS` / :class:`SMC`.

    The particles run in ``R`` independent replica groups (``replicas``). Each group's estimate
    ``Z_g`` of the normaliser is unbiased; ``log_z`` is the log of their mean.

    Reliability: the final AIS weights are importance weights on the extended space of the whole
    annealing path, so their Pareto k-hat (:func:`~normflows_sci.samplers.psis.pareto_khat`) says
    whether log Z and its error bar can be trusted, as for :class:`ImportanceResult`. SMC
    resamples; each segment between two resamplings (and the last one, up to the end) is one
    importance-sampling step from the resampled, moved particles to the distribution of the
    segment's end, with weights ``exp(sum of the segment's increments)``. ``stage_pareto_k`` holds
    the k-hat of each segment's weights (over all ``N`` particles) and ``pareto_k`` their maximum
    (NaN if any is NaN): one failed step (the weights collapsing onto a handful of particles) is
    enough to bias log Z, even when the later segments look healthy because every particle then
    descends from the same few. The replicas add a second check: independent groups whose log Z
    estimates spread by more than :data:`MAX_REPLICA_SPREAD` (standard deviation) disagree by
    factors of ``e`` or more, which no error bar from four or so of them describes.

    Construction warns (RuntimeWarning, once per result) when the result is not
    :attr:`reliable`, when ``ess < 2``, or when there is no error bar (SMC with one replica).

    ``reliable`` is necessary, not sufficient: a flow much narrower than the target can give
    weights whose tail is not yet visible in ``N`` draws, so k-hat passes while log Z is biased
    low (the region the flow misses is never sampled). Annealing with more temperatures and
    moves, or a wider flow, is the remedy; the replicas' agreement does not reveal it either.

    Attributes:
        samples: ``(N, *event)`` final particles.
        log_weights: ``(N,)`` final log weights, absolute: ``logsumexp(log_weights) - log N`` is
            ``log_z``. Across groups they are combined by each group's ``Z_g`` (the weights of
            independent SMC runs are pooled in proportion to their normaliser estimates).
        weights: ``(N,)`` ``log_weights`` self-normalised over all particles.
        ess, ess_fraction: Kish ESS of the final weights (count and fraction of N). SMC never
            resamples after the last stage, so these are the weights every estimate uses, not
            ``N`` equal weights of a resampled population. Particles that share an ancestor from
            an earlier resampling still count as distinct: the degeneracy of earlier stages shows
            in ``stage_pareto_k``, not in the ESS.
        log_z: ``log(mean_g Z_g)``, the log-normaliser estimate.
        log_z_stderr: standard error of ``log_z``, or ``None`` when there is none. With ``R >= 2``
            replicas: the standard error of the mean of the ``Z_g`` (mapped to log scale by the
            delta method), widened by ``t_{R-1}(0.975) / 1.96`` (Student's t quantile) so that
            ``log_z +- 1.96 log_z_stderr`` is a 95% interval despite the few degrees of freedom
            of an ``R``-group spread. With one replica: AIS gives the importance-sampling delta
            method ``sqrt(1 / ess - 1 / N)`` of its final weights (``inf`` when ``ess < 2``);
            SMC gives ``None`` (resampled particles are not independent, so only the spread of
            independent replicas measures its error; pass ``replicas >= 2``).
        acceptance: mean MCMC acceptance per stage, ``(K,)``.
        resamples: number of resampling events (SMC; 0 for AIS).
        pareto_k: k-hat of the final weights (AIS) or the maximum over the segments (SMC);
            computed from ``log_weights`` when not given.
        khat_threshold: ``min(1 - 1 / log10(N), 0.7)``; see :attr:`reliable`.
        log_z_replicas: ``(R,)`` float64 log-normaliser estimate of each replica group.
        stage_pareto_k: ``(segments,)`` k-hat of the weights of each segment between resamplings
            (one entry for AIS).
    """

    samples: Tensor
    log_weights: Tensor
    weights: Tensor
    ess: float
    ess_fraction: float
    log_z: float
    log_z_stderr: float | None
    acceptance: Tensor
    resamples: int
    pareto_k: float | None = None
    khat_threshold: float | None = None
    log_z_replicas: Tensor | None = None
    stage_pareto_k: Tensor | None = None

    def __post_init__(self) -> None:
        # Frozen: the defaults of a hand-built result are filled in once, here.
        if self.pareto_k is None:
            object.__setattr__(self, "pareto_k", _segment_khat(self.log_weights))
        if self.khat_threshold is None:
            object.__setattr__(self, "khat_threshold", result_threshold(len(self.log_weights)))
        if self.log_z_replicas is None:
            object.__setattr__(self, "log_z_replicas", torch.tensor([self.log_z]).double())
        if self.stage_pareto_k is None:
            object.__setattr__(self, "stage_pareto_k", torch.tensor([self.pareto_k]).double())
        if not self.reliable or self.ess < 2 or self.log_z_stderr is None:
            self._warn()

    @property
    def replica_spread(self) -> float:
        """Standard deviation of the replicas' log Z estimates (NaN with one replica)."""
        if len(self.log_z_replicas) < 2:
            return math.nan
        if not bool(torch.isfinite(self.log_z_replicas).all()):
            return math.inf
        return float(self.log_z_replicas.std())

    @property
    def reliable(self) -> bool:
        """Whether k-hat is below its threshold (a NaN k-hat, from fewer than 21 particles, is
        not) and, with ``R >= 2`` replicas, their log Z estimates agree (spread at most
        :data:`MAX_REPLICA_SPREAD`)."""
        khat_ok = not math.isnan(self.pareto_k) and self.pareto_k < self.khat_threshold
        return khat_ok and not self.replica_spread > MAX_REPLICA_SPREAD

    def _warn(self) -> None:
        causes = []
        if math.isnan(self.pareto_k):
            causes.append("k-hat is NaN: fewer than 21 particles, or the tail fit failed")
        elif len(self.stage_pareto_k) > 1:
            causes.append(f"maximum over {len(self.stage_pareto_k)} resampling segments")
        if self.replica_spread > MAX_REPLICA_SPREAD:
            causes.append(
                f"the {len(self.log_z_replicas)} replicas' log Z estimates spread by "
                f"{self.replica_spread:.3g} (standard deviation) > {MAX_REPLICA_SPREAD}"
            )
        no_error_bar = (
            "one replica: no error bar (log_z_stderr is None); pass replicas >= 2"
            if self.log_z_stderr is None
            else ""
        )
        if self.reliable and self.ess >= 2:
            warnings.warn(f"SMC with {no_error_bar}", RuntimeWarning, stacklevel=_STACKLEVEL)
            return
        advice = _ADVICE + (f"; {no_error_bar}" if no_error_bar else "")
        warn_unreliable(
            self.pareto_k,
            self.khat_threshold,
            len(self.log_weights),
            self.ess,
            cause="; ".join(causes),
            advice=advice,
            stacklevel=_STACKLEVEL,
        )


def _segment_khat(log_weights: Tensor) -> float:
    """k-hat of one segment's log weights (no warning): ``inf`` when every weight is zero (an
    importance step that lost the whole population), NaN with fewer than 2 weights."""
    if len(log_weights) < 2:
        return math.nan
    log_weights = torch.where(torch.isnan(log_weights), -math.inf, log_weights)
    if not bool(torch.isfinite(log_weights).any()):
        return math.inf
    return tail_khat(log_weights)[0]


@dataclass(frozen=True, eq=False)
class AnnealResult(FieldMapping):
    """Output of :func:`anneal`. A read-only :class:`~collections.abc.Mapping` of its fields too,
    so ``out["log_weights"]``, ``"samples" in out`` and ``out.keys()`` work as for the dict it
    replaces (not a ``dict``: ``pandas.DataFrame(out)`` is not a table of it).

    Attributes:
        samples: ``(N, *event)`` final particles.
        log_weights: ``(N,)`` final log weights, relative within each replica group.
        log_z_groups: ``(replicas,)`` float64 log-normaliser estimate of each group.
        acceptance: ``(K,)`` mean MCMC acceptance per stage (on the CPU).
        resamples: number of resampling events (0 without ``resample_threshold``).
    """

    samples: Tensor
    log_weights: Tensor
    log_z_groups: Tensor
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


class _Particles(NamedTuple):
    """Particle positions with the base and target log-densities (and gradients) there."""

    x: Tensor
    log_q: Tensor
    grad_q: Tensor | None
    log_p: Tensor
    grad_p: Tensor | None

    def take(self, index: Tensor) -> _Particles:
        return _Particles(*(None if v is None else v[index] for v in self))


def _endpoints(
    base_log_prob, target_log_prob, x: Tensor, gradients: bool, check: bool = False
) -> _Particles:
    """The particles at ``x``: base and target log-densities (gradients ``None`` without
    ``gradients``); with ``check`` (the first evaluation of a run) both outputs are checked to be
    ``(N,)``."""
    base, target = (base_log_prob, target_log_prob) if check else (None, None)
    if gradients:
        return _Particles(
            x,
            *log_prob_and_grad(base_log_prob, x, target=base, what="particles"),
            *log_prob_and_grad(target_log_prob, x, target=target, what="particles"),
        )
    with torch.no_grad():
        log_q, log_p = base_log_prob(x), target_log_prob(x)
        if check:
            check_log_prob(log_q, base_log_prob, x.shape[0], what="particles")
            check_log_prob(log_p, target_log_prob, x.shape[0], what="particles")
        return _Particles(x, finite(log_q), None, finite(log_p), None)


def _renamed_schedule(schedule, betas, *, stacklevel: int):
    """``schedule``, or the deprecated ``betas=`` given in its place; the ``DeprecationWarning``
    points ``stacklevel`` frames up from here (3: the caller of the public function)."""
    if betas is None:
        return schedule
    if schedule is not None:
        raise TypeError("give schedule= only (betas= is its deprecated former name), not both")
    warnings.warn(
        "betas= is deprecated: use schedule= (positions on the path from the flow to the target; "
        "beta names an inverse temperature)",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
    return betas


class _Annealing:
    """The steps of one :func:`anneal` run: reweight, resample, move (one object carries the
    densities, the kernel factory, the pooled step-size adaptation and the randomness)."""

    def __init__(self, base_log_prob, target_log_prob, make, replicas, generator):
        self.base_log_prob, self.target_log_prob = base_log_prob, target_log_prob
        self.make, self.replicas, self.generator = make, replicas, generator
        # One step size for the whole population, adapted from its mean acceptance: a per-
        # particle rule would make each move depend on the particle's own last move and break
        # the invariance the weights rely on. Kept on the device (no sync per step).
        self.adaptation = StepSizeAdaptation(make.target_accept, pooled=True)
        # The last run's unnormalised log weights of each segment between resamplings (N,).
        self.segments: list[Tensor] = []

    def reweight(self, log_w: Tensor, particles: _Particles, delta: float):
        """``(log_w, log_z_increment, increment)`` after advancing the position by ``delta``: the
        weights are renormalised within each group, whose log Z gains ``log_z_increment``
        ``(replicas,)``; ``increment (N,)`` is each particle's log-weight increment."""
        increment = delta * (particles.log_p - particles.log_q)
        increment = torch.where(torch.isnan(increment), -math.inf, increment)
        grouped = log_w.reshape(self.replicas, -1)
        norm = torch.logsumexp(grouped, 1, keepdim=True)
        shifted = grouped - norm + increment.reshape(self.replicas, -1)
        log_z = torch.logsumexp(shifted, 1).double()
        return (grouped - norm).reshape(-1) + increment, log_z, increment

    def resample_index(self, log_w: Tensor, threshold: float) -> Tensor | None:
        """Systematic resampling indices ``(N,)`` when some group's ESS falls below
        ``threshold`` of its particles (every group is resampled then), else ``None``."""
        grouped = log_w.reshape(self.replicas, -1)
        m = grouped.shape[1]
        ess = torch.exp(2 * torch.logsumexp(grouped, 1) - torch.logsumexp(2 * grouped, 1))
        if not bool((ess < threshold * m).any()):
            return None
        index = _systematic(grouped, self.generator)
        offsets = m * torch.arange(self.replicas, device=log_w.device)[:, None]
        return (index + offsets).reshape(-1)

    def anneal(self, x: Tensor, levels: list, mcmc_steps: int, resample_threshold) -> AnnealResult:
        """Reweight, resample (SMC) and move ``x: (N, *event)`` through the positions
        ``levels`` after 0; the result :func:`anneal` returns."""
        if x.shape[0] % self.replicas:
            raise ValueError(
                f"the number of particles ({x.shape[0]}) must be divisible by "
                f"replicas={self.replicas}"
            )
        base_log_prob, target_log_prob, make = self.base_log_prob, self.target_log_prob, self.make
        particles = _endpoints(base_log_prob, target_log_prob, x, make.uses_gradient, check=True)
        adapted = self.adaptation.init(make(target_log_prob).initial_step_size(x))
        log_w = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        log_z = torch.zeros(self.replicas, dtype=torch.float64, device=x.device)
        # Unnormalised log weights since the last resampling: each segment between resamplings
        # is one importance-sampling step, diagnosed by the k-hat of these (see SequentialResult).
        since = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        self.segments = []
        acceptance, resamples, previous = [], 0, 0.0
        for index, position in enumerate(levels, start=1):
            log_w, log_z_increment, increment = self.reweight(log_w, particles, position - previous)
            log_z += log_z_increment
            since = since + increment.double()
            previous = position
            flat = None
            # Never after the last level: the final weights are returned as they are (resampling
            # them would only add noise and hide their ESS behind N equal weights).
            if resample_threshold is not None and index < len(levels):
                flat = self.resample_index(log_w, resample_threshold)
            if flat is not None:
                particles = particles.take(flat)
                adapted = adapted._replace(step_size=adapted.step_size[flat])
                log_w, resamples = torch.zeros_like(log_w), resamples + 1
                self.segments.append(since.to(x.dtype))
                since = torch.zeros_like(since)
            x, adapted, rate = self.move(particles, position, adapted, mcmc_steps)
            acceptance.append(rate)
            if index < len(levels):  # the endpoint densities for the next level's increment
                particles = _endpoints(base_log_prob, target_log_prob, x, make.uses_gradient)
        self.segments.append(since.to(x.dtype))
        return AnnealResult(
            samples=x,
            log_weights=log_w,
            log_z_groups=log_z,
            acceptance=torch.stack(acceptance).cpu() if acceptance else torch.zeros(0),
            resamples=resamples,
        )

    def move(self, particles: _Particles, position: float, adapted, mcmc_steps: int):
        """``mcmc_steps`` moves of every particle targeting ``pi_s`` at ``s = position``: ``(x,
        adapted, mean acceptance)``. The kernel state starts from the endpoint densities already
        known at the particles (no evaluation): ``log pi_s = (1 - s) log q + s log p``, the same
        for gradients."""
        base, target = self.base_log_prob, self.target_log_prob

        def intermediate(y, s=position):
            return (1 - s) * base(y) + s * target(y)

        kernel = self.make(intermediate)
        x, log_q, grad_q, log_p, grad_p = particles
        log_pi = finite((1 - position) * log_q + position * log_p)
        grad_pi = None if grad_q is None else (1 - position) * grad_q + position * grad_p
        state = kernel.state_at(x, log_pi, grad_pi, adapted.step_size)
        accepted = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for _ in range(mcmc_steps):
            state, info = kernel.step(state, self.generator)
            accepted += info.accepted.to(x.dtype)
            adapted = self.adaptation.update(adapted, info.accept_prob)
            state = state._replace(step_size=adapted.step_size)
        return state.x, adapted, accepted.mean() / mcmc_steps


def anneal(
    x: Tensor,
    base_log_prob: Callable[[Tensor], Tensor],
    target_log_prob: Callable[[Tensor], Tensor],
    schedule: Tensor | None = None,
    *,
    kernel=HMC,
    mcmc_steps: int = 1,
    step_size: float = 0.1,
    kernel_options: dict | None = None,
    replicas: int = 1,
    resample_threshold: float | None = None,
    generator: torch.Generator | None = None,
    **renamed,
) -> AnnealResult:
    """The annealing engine behind AIS, SMC and FAB: moves ``x: (N, *event)`` from the base to
    the target along the geometric path and returns particles, log weights and log Z per group.

    ``base_log_prob`` must be the normalised log-density the particles were drawn from.
    One step size, shared by all particles, is adapted towards the kernel's target acceptance
    from the population's mean acceptance as the annealing proceeds
    (:class:`~normflows_sci.samplers.StepSizeAdaptation` with ``pooled=True``).

    Args:
        x: ``(N, *event)`` particles drawn from the base.
        base_log_prob, target_log_prob: log-density callables ``(N, *event) -> (N,)``.
        schedule: ``(K + 1,)`` positions on the path, increasing from 0 to 1.
        kernel, mcmc_steps, step_size, kernel_options: the MCMC moves (as for :class:`AIS`).
        replicas: independent groups (``N`` divisible by it), each with its own log Z.
        resample_threshold: resample a group (systematic) when its ESS falls below this fraction
            of its particles (``None``: never, as AIS); never after the last position, so that
            the final weights are returned as they are (their ESS, not ``N`` equal weights).
        generator: seeds the moves and the resampling.
        **renamed: ``betas=``, the deprecated former name of ``schedule``
            (``DeprecationWarning``).

    Returns:
        :class:`AnnealResult`: ``samples (N, *event)``, ``log_weights (N,)`` (relative within
        each group), ``log_z_groups (replicas,)`` (float64), ``acceptance (K,)`` and
        ``resamples``; it also reads by key (``out["log_weights"]``) as the dict it replaces.

    Example:
        >>> from normflows_sci.distributions import StandardNormal
        >>> from normflows_sci.samplers import MALA
        >>> generator = torch.Generator().manual_seed(0)
        >>> base = StandardNormal(2)
        >>> target = lambda x: -0.5 * ((x - 1.0) ** 2).sum(-1)  # log Z = log(2 pi)
        >>> out = anneal(base.sample(1024, generator=generator), base.log_prob, target,
        ...              torch.linspace(0, 1, 11), kernel=MALA, generator=generator)
        >>> abs(out.log_z_groups[0].item() - math.log(2 * math.pi)) < 0.1
        True
    """
    schedule = _renamed_schedule(schedule, renamed.pop("betas", None), stacklevel=3)
    if renamed:
        raise TypeError(f"anneal() got unexpected keyword arguments {sorted(renamed)}")
    if schedule is None:
        raise TypeError("anneal() missing required argument 'schedule' (positions from 0 to 1)")
    make = kernel_factory(kernel, defaults=dict(step_size=step_size), options=kernel_options)
    run = _Annealing(base_log_prob, target_log_prob, make, replicas, generator)
    return run.anneal(x, torch.as_tensor(schedule)[1:].tolist(), mcmc_steps, resample_threshold)


class _Annealer:
    """Shared front end of AIS and SMC."""

    resample_threshold: float | None = None

    def __init__(
        self,
        target,
        flow,
        *,
        num_temperatures: int = 32,
        schedule=None,
        kernel=HMC,
        mcmc_steps: int = 1,
        step_size: float = 0.1,
        kernel_options: dict | None = None,
        betas=None,
    ):
        self.log_prob_fn = as_log_prob(target)
        for method in ("sample_and_log_prob", "log_prob"):
            if not callable(getattr(flow, method, None)):
                raise TypeError(f"flow must be a Flow (needs {method}), got {type(flow).__name__}")
        self.flow = flow
        # A deprecated name is reported at the caller of AIS(...) / SMC(...) (SMC adds a frame).
        stacklevel = 3 if type(self).__init__ is _Annealer.__init__ else 4
        schedule = _renamed_schedule(schedule, betas, stacklevel=stacklevel)
        if schedule is None:
            num_temperatures = check_int("num_temperatures", num_temperatures)
            schedule = torch.linspace(0.0, 1.0, num_temperatures + 1, dtype=torch.float64)
        schedule = torch.as_tensor(schedule, dtype=torch.float64)
        if (
            schedule.ndim != 1
            or len(schedule) < 2
            or schedule[0] != 0
            or schedule[-1] != 1
            or not (schedule.diff() > 0).all()
        ):
            raise ValueError(
                "schedule must increase strictly from 0 to 1 (at least two values), got "
                f"{schedule.tolist()}"
            )
        defaults = dict(step_size=step_size)
        self.kernel = kernel_factory(
            kernel, defaults=defaults, options=kernel_options, stacklevel=stacklevel
        )
        self.schedule, self.mcmc_steps = schedule, check_int("mcmc_steps", mcmc_steps)
        self.step_size, self.kernel_options = float(step_size), kernel_options

    @property
    def betas(self) -> Tensor:
        """Deprecated former name of :attr:`schedule` (``DeprecationWarning``)."""
        warnings.warn(
            f"{type(self).__name__}.betas is deprecated: use .schedule (positions on the path "
            "from the flow to the target; beta names an inverse temperature)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.schedule

    def _flow_log_prob(self, x: Tensor) -> Tensor:
        return self.flow.log_prob(x)

    def sample(
        self,
        num_particles: int,
        *,
        replicas: int | None = None,
        generator: torch.Generator | None = None,
    ) -> SequentialResult:
        """Run with ``num_particles`` particles in ``replicas`` independent groups.

        Args:
            num_particles: ``N``, divisible by ``replicas``.
            replicas: independent groups, each with its own log Z; their spread gives the error
                bar (see :class:`SequentialResult`). Default: 4, so that every result has an
                error bar and a replica cross-check out of the box (4 groups keep most of the
                particles per group while giving the spread 3 degrees of freedom); when 4 does
                not divide ``N`` (or leaves fewer than 2 particles per group), the largest of 3
                and 2 that does, else 1.
            generator: seeds the flow draws, the moves and the resampling.

        Returns:
            :class:`SequentialResult`; it warns (RuntimeWarning) when unreliable or without an
            error bar.
        """
        num_particles = check_num_samples(num_particles)
        if replicas is None:
            replicas = _default_replicas(num_particles)
        if int(replicas) != replicas or replicas < 1 or num_particles < 2 * replicas:
            raise ValueError(
                f"replicas must be a positive integer with at least 2 particles each, got "
                f"replicas={replicas!r} for {num_particles} particles"
            )
        with torch.no_grad():
            x, _ = self.flow.sample_and_log_prob(num_particles, generator=generator)
        run = _Annealing(
            self._flow_log_prob, self.log_prob_fn, self.kernel, int(replicas), generator
        )
        out = run.anneal(x, self.schedule[1:].tolist(), self.mcmc_steps, self.resample_threshold)
        if not bool(torch.isfinite(out.log_weights).any()):
            raise ValueError(
                f"every particle has weight zero: target {describe_target(self.log_prob_fn)} "
                f"has zero density (log-density -inf or NaN) at all {num_particles} particles "
                "(drawn from the flow and annealed); the flow does not reach the target's support"
            )
        return _sequential_result(out, run.segments, delta=self.resample_threshold is None)


def _default_replicas(num_particles: int) -> int:
    """4 groups, else the largest of 3 and 2 that divides ``num_particles`` (2 particles each)."""
    for replicas in (4, 3, 2):
        if num_particles % replicas == 0 and num_particles >= 2 * replicas:
            return replicas
    return 1


def _absolute_log_weights(out: AnnealResult) -> Tensor:
    """anneal's relative weights made absolute (float64): within group ``g`` of ``m`` particles,
    ``log w = log w_rel - logsumexp_g(log w_rel) + log Z_g + log m``, so that
    ``logsumexp(log w) - log N = log mean_g Z_g`` (groups with no weight stay at ``-inf``)."""
    groups = out.log_z_groups
    relative = out.log_weights.double().reshape(len(groups), -1)
    norm = torch.logsumexp(relative, 1, keepdim=True)
    scaled = relative - norm + groups[:, None] + math.log(relative.shape[1])
    return torch.where(torch.isfinite(norm), scaled, -math.inf).reshape(-1)


def _log_z_stderr(groups: Tensor, ess: float, num: int, delta: bool) -> float | None:
    """Standard error of ``log mean_g Z_g`` (see :class:`SequentialResult`): from the groups'
    spread, t-widened, with ``R >= 2``; else the delta method (``delta``, AIS) or ``None``."""
    replicas = len(groups)
    if replicas == 1:
        if not delta:
            return None
        return math.sqrt(max(1.0 / ess - 1.0 / num, 0.0)) if ess >= 2 else math.inf
    from scipy.stats import t as student_t  # only here: scipy's import is slow

    z = (groups - groups.max()).exp()
    stderr = float(z.std() / z.mean()) / math.sqrt(replicas)
    return stderr * float(student_t.ppf(0.975, replicas - 1)) / 1.959963984540054


def _sequential_result(out: AnnealResult, segments: list, delta: bool) -> SequentialResult:
    """The :class:`SequentialResult` of an annealing run and its segments' log weights."""
    log_w = _absolute_log_weights(out)
    num = len(log_w)
    weights = torch.softmax(log_w, 0)
    ess = float(1.0 / weights.square().sum())
    stage = torch.tensor([_segment_khat(segment) for segment in segments], dtype=torch.float64)
    pareto_k = math.nan if bool(stage.isnan().any()) else float(stage.max())
    dtype = out.log_weights.dtype
    return SequentialResult(
        samples=out.samples,
        log_weights=log_w.to(dtype),
        weights=weights.to(dtype),
        ess=ess,
        ess_fraction=ess / num,
        log_z=float(torch.logsumexp(log_w, 0)) - math.log(num),
        log_z_stderr=_log_z_stderr(out.log_z_groups, ess, num, delta),
        acceptance=out.acceptance,
        resamples=out.resamples,
        pareto_k=pareto_k,
        khat_threshold=result_threshold(num),
        log_z_replicas=out.log_z_groups.cpu(),
        stage_pareto_k=stage,
    )


class AIS(_Annealer):
    """Annealed importance sampling from a flow towards ``target``.

    Args:
        target: Energy, Flow or log-density callable (unnormalised).
        flow: the starting distribution (normalised: ``log_z`` is then the target's log Z).
        num_temperatures: number of annealing stages ``K`` (evenly spaced positions), or give
            ``schedule``.
        schedule: ``(K + 1,)`` positions on the path from the flow (0) to the target (1),
            strictly increasing; ``betas=`` is its deprecated former name.
        kernel: the MCMC moves as a value, ``mcmc_steps`` per stage: a kernel class (``HMC``,
            the default, ``MALA``, ``RandomWalkMH``) or a ``functools.partial`` of one with its
            hyperparameters (``partial(HMC, num_leapfrog=5)``). The names ``"hmc"``, ``"mala"``
            and ``"rwmh"`` are deprecated aliases.
        step_size: initial step size (unless the partial sets one).
        kernel_options: extra kernel arguments (e.g. ``{"num_leapfrog": 5}``; a partial says
            the same more directly).

    Example:
        >>> from normflows_sci.flows import NSF
        >>> flow = NSF(2, transforms=1, hidden_features=(8,))
        >>> target = lambda x: -0.5 * ((x - 1) ** 2).sum(-1)  # Z = 2 pi
        >>> from normflows_sci.samplers import MALA
        >>> ais = AIS(target, flow, num_temperatures=8, kernel=MALA)
        >>> out = ais.sample(1000, generator=torch.Generator().manual_seed(0))  # 4 replicas
        >>> out.reliable, abs(out.log_z - math.log(2 * math.pi)) < 4 * out.log_z_stderr
        (True, True)
    """


class SMC(_Annealer):
    """Sequential Monte Carlo sampler from a flow: AIS plus systematic resampling whenever the
    ESS falls below ``resample_threshold`` (fraction of the particles per replica group), except
    after the last stage: the result's weights and ESS are those of the final weights. Its
    ``pareto_k`` is the worst over the segments between resamplings and its error bar comes from
    the spread of independent replicas (see :class:`SequentialResult`).

    Args:
        resample_threshold: in ``(0, 1]``; the other arguments as for :class:`AIS`.

    Example:
        >>> from normflows_sci.flows import NSF
        >>> flow = NSF(2, transforms=1, hidden_features=(8,))  # N(0, I), far from the target
        >>> target = lambda x: -0.5 * ((x - 2.0) ** 2).sum(-1)  # N(2, I) with Z = 2 pi
        >>> from normflows_sci.samplers import MALA
        >>> smc = SMC(target, flow, num_temperatures=10, kernel=MALA)
        >>> out = smc.sample(1000, generator=torch.Generator().manual_seed(0))  # 4 replicas
        >>> out.resamples > 0, out.reliable, out.log_z_replicas.shape
        (True, True, torch.Size([4]))
        >>> abs(out.log_z - math.log(2 * math.pi)) < 4 * out.log_z_stderr
        True
        >>> mean = (out.weights[:, None] * out.samples).sum(0)
        >>> torch.allclose(mean, torch.tensor([2.0, 2.0]), atol=0.2)
        True
    """

    def __init__(self, target, flow, *, resample_threshold: float = 0.5, **options):
        super().__init__(target, flow, **options)
        if not 0 < resample_threshold <= 1:
            raise ValueError(f"resample_threshold must be in (0, 1], got {resample_threshold!r}")
        self.resample_threshold = float(resample_threshold)
