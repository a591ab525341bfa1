"""Flow annealed importance sampling bootstrap (FAB): train a flow on a target without samples.

FAB minimises the alpha = 2 divergence ``D_2(p || q) ∝ ∫ p²/q``, whose gradient is
``-∫ (p²/q) ∇_θ log q_θ``. Its integrand is estimated with annealed importance sampling (AIS)
that starts from the flow ``q`` and targets ``g = p²/q`` (``q`` held fixed), the distribution
that puts mass where the flow misses the target. With AIS samples ``x_i`` and log weights
``log w_i`` the surrogate loss is

``L(θ) = -Σ_i softmax(log w)_i log q_θ(x_i)``   (weights detached).

With the prioritised replay buffer (algorithm 2 of the paper) each AIS run adds its samples,
log weights (for ``g`` at the flow of the run) and ``log q_old = log q(x)`` to a FIFO buffer;
the flow then takes ``buffer_updates`` gradient steps, each on a batch drawn from the buffer with
probability ``∝ w`` (without replacement). The stored weights refer to ``p²/q_old``; for the
current flow ``q`` they are off by ``q_old/q``, so the loss is
``-mean(min(q_old/q, clip) log q(x))`` (:func:`fab_buffer_loss`), and after the update the drawn
points' log weights are corrected by ``log q_old - log q`` and ``log q_old`` is set to
``log q`` (:meth:`PrioritizedReplayBuffer.adjust`).

Settings of the FAB reference code for the 2-D Gaussian mixture: two intermediate
distributions (three stages), linearly spaced; one HMC transition of 5 leapfrog steps per stage,
step size tuned towards acceptance 0.65; batch 128; 4 gradient steps per AIS run; correction clip
10; buffers of 100-400 batches, filled to 10-40 batches before training. The defaults below follow
them (buffer of 100 batches, filled to 10). Where FAB is silent this module follows
:func:`~normflows_sci.training.fit_boltzmann` (AdamW, cosine schedule, gradient clipping).

References:
    Midgley, Stimper, Simm, Schölkopf, Hernández-Lobato (2023), "Flow annealed importance
    sampling bootstrap", ICLR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from normflows_sci.checks import check_int, check_positive
from normflows_sci.samplers._results import FieldMapping
from normflows_sci.samplers.importance import importance_weights
from normflows_sci.samplers.kernels import HMC, kernel_factory
from normflows_sci.samplers.psis import tail_khat
from normflows_sci.samplers.sequential import AnnealResult, anneal
from normflows_sci.samplers.targets import as_log_prob, check_log_prob
from normflows_sci.training.boltzmann import STEP_TRAINING_DEFAULTS
from normflows_sci.training.scaffold import (
    TrainingHistory,
    TrainingLoss,
    TrainingOptions,
    route_keywords,
    train,
)

__all__ = [
    "PrioritizedReplayBuffer",
    "AISResult",
    "fab_ais",
    "fab_loss",
    "fab_buffer_loss",
    "FABLoss",
    "fit_fab",
]


class PrioritizedReplayBuffer:
    """FIFO buffer of weighted samples, drawn with probability proportional to their weights.

    Stores ``(x, log w, log q)``: a sample, its importance log weight and the flow's
    log-density at the time the weight was last valid. Once ``capacity`` is reached the oldest
    entries are overwritten. Entries with a non-finite weight, log-density or coordinate are
    never drawn, so they are not stored. Log weights and log-densities are kept in float64.

    Args:
        capacity: maximum number of stored samples.

    Example:
        >>> buffer = PrioritizedReplayBuffer(4)
        >>> buffer.add(torch.arange(6.0).reshape(3, 2), torch.tensor([0.0, 1.0, 2.0]), torch.zeros(3))
        3
        >>> x, log_w, log_q, index = buffer.sample(2, generator=torch.Generator().manual_seed(0))
        >>> buffer.adjust(index, log_q - 1.0)  # the flow now gives these points log q - 1
        >>> bool(torch.allclose(buffer.log_weights[index], log_w + 1.0))
        True

    References:
        Midgley et al. (2023), "Flow annealed importance sampling bootstrap", algorithm 2.
    """

    def __init__(self, capacity: int):
        self.capacity = check_int("capacity", capacity)
        self._x: Tensor | None = None
        self._log_w: Tensor | None = None
        self._log_q: Tensor | None = None
        self._size = 0
        self._next = 0

    def __len__(self) -> int:
        return self._size

    @property
    def samples(self) -> Tensor:
        """Stored samples ``(len, *event)`` (storage order, not insertion order once full)."""
        return self._x[: self._size] if self._x is not None else torch.empty(0)

    @property
    def log_weights(self) -> Tensor:
        """Stored log weights ``(len,)``, float64."""
        return self._log_w[: self._size] if self._log_w is not None else torch.empty(0)

    @property
    def log_q(self) -> Tensor:
        """Stored flow log-densities ``(len,)``, float64."""
        return self._log_q[: self._size] if self._log_q is not None else torch.empty(0)

    def add(self, x: Tensor, log_weights: Tensor, log_q: Tensor) -> int:
        """Insert samples ``x: (n, *event)`` with ``log_weights, log_q: (n,)``; returns how many
        were stored (rows with non-finite values are dropped)."""
        if not isinstance(x, Tensor) or x.ndim < 2 or not x.is_floating_point():
            shape = getattr(x, "shape", type(x).__name__)
            raise ValueError(f"x must be a floating tensor of shape (n, *event), got {shape}")
        for name, value in (("log_weights", log_weights), ("log_q", log_q)):
            if not isinstance(value, Tensor) or value.shape != x.shape[:1]:
                shape = getattr(value, "shape", type(value).__name__)
                raise ValueError(f"{name} must have shape ({x.shape[0]},), got {shape}")
        if self._x is not None and (x.shape[1:] != self._x.shape[1:] or x.dtype != self._x.dtype):
            raise ValueError(
                f"x must have event shape {tuple(self._x.shape[1:])} and dtype {self._x.dtype} "
                f"like the stored samples, got {tuple(x.shape[1:])} and {x.dtype}"
            )
        x = x.detach()
        log_weights = log_weights.detach().to(device=x.device, dtype=torch.float64)
        log_q = log_q.detach().to(device=x.device, dtype=torch.float64)
        keep = torch.isfinite(log_weights) & torch.isfinite(log_q)
        keep &= torch.isfinite(x.flatten(1)).all(1)
        x, log_weights, log_q = x[keep][-self.capacity :], log_weights[keep], log_q[keep]
        log_weights, log_q = log_weights[-self.capacity :], log_q[-self.capacity :]
        n = x.shape[0]
        if self._x is None:
            self._x = x.new_zeros(self.capacity, *x.shape[1:])
            self._log_w = log_weights.new_zeros(self.capacity)
            self._log_q = log_q.new_zeros(self.capacity)
        slots = (self._next + torch.arange(n, device=x.device)) % self.capacity
        self._x[slots], self._log_w[slots], self._log_q[slots] = x, log_weights, log_q
        self._next = (self._next + n) % self.capacity
        self._size = min(self._size + n, self.capacity)
        return n

    def sample(
        self, batch_size: int, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Draw ``batch_size`` distinct entries with probability ``∝ exp(log_weights)``.

        Returns:
            ``(x, log_weights, log_q, index)``; pass ``index`` to :meth:`adjust`.
        """
        batch_size = check_int("batch_size", batch_size)
        if self._size and not bool(torch.isfinite(self.log_weights).any()):
            raise ValueError("every stored weight is zero (log weight -inf): nothing to draw")
        if batch_size > self._size:
            raise ValueError(
                f"batch_size ({batch_size}) exceeds the number of stored samples ({self._size})"
            )
        probs = torch.softmax(self.log_weights, 0)
        # Draws without replacement need as many entries of non-zero probability; when the
        # weights are that degenerate, fall back to drawing with replacement.
        distinct = int((probs > 0).sum()) >= batch_size
        index = torch.multinomial(probs, batch_size, replacement=not distinct, generator=generator)
        return self._x[index], self._log_w[index], self._log_q[index], index

    def adjust(self, index: Tensor, log_q: Tensor) -> None:
        """After a flow update: ``log w += log q_stored - log q_new`` and ``log q_stored = log q_new``
        for the entries ``index`` (the weights then target ``p²/q_new``)."""
        if self._log_q is None:
            raise ValueError("the buffer is empty: nothing to adjust")
        log_q = log_q.detach().to(device=self._log_q.device, dtype=torch.float64)
        if log_q.shape != index.shape:
            raise ValueError(
                f"log_q must have shape {tuple(index.shape)}, got {tuple(log_q.shape)}"
            )
        corrected = self._log_w[index] + self._log_q[index] - log_q
        # A flow that gives a stored point zero density (or NaN) would make its weight
        # infinite; the point is dropped from the draws (zero weight) rather than letting one
        # entry take over the buffer.
        corrected = torch.where(torch.isfinite(log_q), corrected, -math.inf)
        self._log_w[index] = corrected
        self._log_q[index] = torch.where(torch.isfinite(log_q), log_q, self._log_q[index])


def fab_loss(flow, samples: Tensor, log_weights: Tensor) -> Tensor:
    """FAB surrogate loss ``-Σ softmax(log w)_i log q(x_i)`` on AIS samples (weights detached).

    Args:
        flow: the Flow being trained.
        samples: ``(n, *event)`` AIS samples (detached).
        log_weights: ``(n,)`` their AIS log weights towards ``p²/q``; non-finite ones count as 0.

    Example:
        >>> from normflows_sci.flows import RealNVP
        >>> flow = RealNVP(2, transforms=1, hidden_features=(8,))
        >>> fab_loss(flow, torch.zeros(3, 2), torch.zeros(3)).shape
        torch.Size([])
    """
    log_weights = log_weights.detach()
    log_weights = torch.where(torch.isfinite(log_weights), log_weights, -math.inf)
    if not torch.isfinite(log_weights).any():
        raise ValueError("every AIS log weight is non-finite")
    weights = torch.softmax(log_weights.double(), 0)
    log_q = flow.log_prob(samples.detach())
    return -(weights.to(log_q.dtype) * log_q).sum()


def fab_buffer_loss(
    flow, samples: Tensor, log_q_old: Tensor, *, weight_adjust_clip: float | None = 10.0
) -> tuple[Tensor, Tensor]:
    """FAB loss on a batch drawn from the prioritised buffer (with probability ``∝ w``).

    The stored weights refer to the flow ``q_old`` they were last adjusted with; the current
    flow's target ``p²/q`` reweights them by ``q_old/q``. The loss is
    ``-mean(min(q_old/q, clip) · log q(x))`` with the ratio detached (clipped as in the FAB
    reference code, default 10, to bound the variance of stale entries).

    Args:
        flow: the Flow being trained.
        samples: ``(n, *event)`` buffer samples.
        log_q_old: ``(n,)`` their stored flow log-densities.
        weight_adjust_clip: upper bound of the ratio ``q_old/q`` (None: no clipping).

    Returns:
        ``(loss, log_q)`` with ``log_q`` detached: pass it to
        :meth:`PrioritizedReplayBuffer.adjust` after the optimiser step.

    Example:
        >>> from normflows_sci.flows import RealNVP
        >>> flow = RealNVP(2, transforms=1, hidden_features=(8,))
        >>> x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
        >>> log_q = flow.log_prob(x).detach()
        >>> loss, _ = fab_buffer_loss(flow, x, log_q)  # fresh entries: q_old = q, ratio 1
        >>> torch.allclose(loss, -log_q.mean())
        True
        >>> loss, _ = fab_buffer_loss(flow, x, log_q + 5.0)  # stale: ratio e^5 clipped to 10
        >>> torch.allclose(loss, -10.0 * log_q.mean())
        True
    """
    log_q = flow.log_prob(samples.detach())
    log_adjust = log_q_old.to(log_q.dtype) - log_q.detach()
    adjust = log_adjust.exp()
    if weight_adjust_clip is not None:
        adjust = adjust.clamp_max(weight_adjust_clip)
    return -(adjust * log_q).mean(), log_q.detach()


def _check_bounds(bounds, reference: Tensor) -> tuple[Tensor, Tensor] | None:
    if bounds is None:
        return None
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ValueError(f"bounds must be a pair (low, high), got {bounds!r}")
    low, high = (torch.as_tensor(b, dtype=reference.dtype, device=reference.device) for b in bounds)
    if not bool((low < high).all()):
        raise ValueError(f"bounds must satisfy low < high, got {bounds!r}")
    return low, high


class _FrozenFlowLogProb:
    """``log q`` of a flow whose parameters are frozen (only gradients in ``x`` are built), with
    the last evaluation remembered: ``anneal`` evaluates the base (``q``) and the AIS target
    (``2 log p - log q``) on the same tensor one after the other."""

    def __init__(self, flow):
        self.flow = flow
        self.parameters = list(flow.parameters())
        self.last: dict = {}

    def __call__(self, x: Tensor) -> Tensor:
        if self.last.get("x") is not x:
            self.last = dict(x=x, log_q=self.flow.log_prob(x))
        return self.last["log_q"]

    def __enter__(self):
        self.flags = [p.requires_grad for p in self.parameters]
        self.training = self.flow.training
        for p in self.parameters:
            p.requires_grad_(False)
        self.flow.eval()
        return self

    def __exit__(self, *exc):
        for p, flag in zip(self.parameters, self.flags):
            p.requires_grad_(flag)
        self.flow.train(self.training)
        self.last = {}


def _ais_target(target_fn, log_q_fn, box):
    """The FAB AIS target ``2 log p - log q`` (``-inf`` outside ``box`` when given)."""

    def ais_target(y: Tensor) -> Tensor:
        value = 2.0 * target_fn(y) - log_q_fn(y)
        if box is None:
            return value
        inside = ((y >= box[0]) & (y <= box[1])).flatten(1).all(1)
        return torch.where(inside, value, -math.inf)

    return ais_target


def _absolute_log_weights(out: AnnealResult, num_samples: int) -> Tensor:
    """anneal's weights are relative (renormalised at each stage); with one group its log Z
    restores the absolute AIS weights: ``log w = log w_rel - logsumexp(log w_rel) + log Z +
    log N``."""
    relative = out.log_weights.double()
    log_w = relative - torch.logsumexp(relative, 0) + out.log_z_groups[0]
    return log_w + math.log(num_samples)


@dataclass(frozen=True, eq=False)
class AISResult(FieldMapping):
    """One :func:`fab_ais` run. A read-only :class:`~collections.abc.Mapping` of its fields too,
    so ``result["samples"]``, ``"log_q" in result`` and ``result.keys()`` work as for the dict it
    replaces (not a ``dict``: ``pandas.DataFrame(result)`` is not a table of it).

    Attributes:
        samples: ``(N, *event)`` annealed particles (detached).
        log_weights: ``(N,)`` float64 absolute AIS log weights towards ``p²/q``.
        log_q: ``(N,)`` the flow's log-density at ``samples``.
        proposal_log_weights: ``(N,)`` ``log p - log q`` of the initial flow draws.
        acceptance: mean MCMC acceptance over the stages.
    """

    samples: Tensor
    log_weights: Tensor
    log_q: Tensor
    proposal_log_weights: Tensor
    acceptance: float


def _ais_kernel(kernel, step_size: float, kernel_options: dict | None):
    """The kernel factory of :func:`fab_ais`'s moves (HMC with 5 leapfrog steps by default)."""
    if kernel_options is not None and not isinstance(kernel_options, dict):
        raise TypeError(f"kernel_options must be a dict, got {type(kernel_options).__name__}")
    defaults = dict(step_size=step_size, num_leapfrog=5)
    return kernel_factory(kernel, defaults=defaults, options=kernel_options, stacklevel=4)


def fab_ais(
    flow,
    target,
    num_samples: int,
    *,
    num_temperatures: int = 3,
    kernel=HMC,
    mcmc_steps: int = 1,
    step_size: float = 0.1,
    kernel_options: dict | None = None,
    bounds: tuple | None = None,
    generator: torch.Generator | None = None,
) -> AISResult:
    """One FAB AIS run: ``num_samples`` particles from the flow ``q``, annealed to ``p²/q``.

    The path is ``log π_s = (1 - s) log q + s (2 log p - log q)``, its positions ``s`` evenly
    spaced over ``num_temperatures`` stages, with ``mcmc_steps`` ``kernel`` moves per stage
    (:func:`~normflows_sci.samplers.anneal`; HMC defaults to 5 leapfrog steps). The flow is
    held fixed (no parameter gradients). Log weights are absolute, so that ``logsumexp(log w) -
    log N`` estimates ``log ∫ p²/q`` and weights of different runs are comparable (as the
    replay buffer needs).

    Args:
        flow: the proposal Flow.
        target: the unnormalised target (Energy, Flow or log-density callable).
        num_samples: particles.
        num_temperatures, mcmc_steps, step_size, kernel_options: the annealing.
        kernel: the moves as a value: a kernel class (``HMC``, the default, ``MALA``,
            ``RandomWalkMH``) or a ``functools.partial`` of one with its hyperparameters; the
            names ``"hmc"``, ``"mala"``, ``"rwmh"`` are deprecated aliases.
        bounds: ``(low, high)``: points outside the box get zero density under the AIS path.
        generator: seeds the flow draws and the moves.

    Returns:
        :class:`AISResult` (annealed samples and their absolute log weights, and diagnostics).

    Example:
        >>> from normflows_sci.flows import NSF
        >>> flow = NSF(2, transforms=1, hidden_features=(8,))  # the identity: q = N(0, I)
        >>> out = fab_ais(flow, lambda x: -0.5 * x.square().sum(-1), 64,
        ...               generator=torch.Generator().manual_seed(0))
        >>> out.samples.shape, out["log_weights"].shape
        (torch.Size([64, 2]), torch.Size([64]))

    References:
        Midgley et al. (2023), "Flow annealed importance sampling bootstrap", section 3.
    """
    for method in ("sample_and_log_prob", "log_prob", "parameters"):
        if not callable(getattr(flow, method, None)):
            raise TypeError(f"flow must be a Flow (needs {method}), got {type(flow).__name__}")
    target_fn = as_log_prob(target)
    num_samples = check_int("num_samples", num_samples)
    num_temperatures = check_int("num_temperatures", num_temperatures)
    mcmc_steps = check_int("mcmc_steps", mcmc_steps)
    make = _ais_kernel(kernel, step_size, kernel_options)
    schedule = torch.linspace(0.0, 1.0, num_temperatures + 1, dtype=torch.float64)
    with _FrozenFlowLogProb(flow) as log_q_fn:
        with torch.no_grad():
            x, log_q0 = flow.sample_and_log_prob(num_samples, generator=generator)
            log_p0 = check_log_prob(target_fn(x), target, num_samples, what="samples")
        ais_target = _ais_target(target_fn, log_q_fn, _check_bounds(bounds, x))
        out = anneal(
            x,
            log_q_fn,
            ais_target,
            schedule,
            kernel=make,
            mcmc_steps=mcmc_steps,
            generator=generator,
        )
        samples = out.samples.detach()
        with torch.no_grad():
            log_q = flow.log_prob(samples)
    return AISResult(
        samples=samples,
        log_weights=_absolute_log_weights(out, num_samples),
        log_q=log_q,
        proposal_log_weights=(log_p0 - log_q0).detach(),
        acceptance=float(out.acceptance.mean()),
    )


def _kish_fraction(log_w: Tensor) -> float:
    log_w = torch.where(torch.isnan(log_w), -math.inf, log_w.double())
    if not bool(torch.isfinite(log_w).any()):
        return 0.0
    ess = torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))
    return float(ess) / len(log_w)


def _buffer_sizes(replay_buffer, buffer_min_size, batch_size: int) -> tuple[int, int] | None:
    """``(capacity, min_size)`` of the replay buffer (None without one)."""
    if replay_buffer is False:
        return None
    capacity = 100 * batch_size if replay_buffer is True else replay_buffer
    capacity = check_int("replay_buffer", capacity)
    if capacity < batch_size:
        raise ValueError(
            f"replay_buffer capacity ({capacity}) must be at least batch_size ({batch_size})"
        )
    if buffer_min_size is None:
        buffer_min_size = min(10 * batch_size, capacity)
    buffer_min_size = check_int("buffer_min_size", buffer_min_size)
    if not batch_size <= buffer_min_size <= capacity:
        raise ValueError(
            f"buffer_min_size must be between batch_size ({batch_size}) and the capacity "
            f"({capacity}), got {buffer_min_size}"
        )
    return capacity, buffer_min_size


class FABLoss(TrainingLoss):
    """The FAB objective: AIS towards ``p²/q`` from the flow, with or without the replay buffer.

    Without the buffer every step runs AIS (:func:`fab_ais`) and takes :func:`fab_loss`; with
    it, every ``buffer_updates`` steps an AIS run feeds the buffer (filled to
    ``buffer_min_size`` before the first step) and every step draws a prioritised batch
    (:func:`fab_buffer_loss`, then :meth:`PrioritizedReplayBuffer.adjust`). The MCMC step size
    adapts from run to run towards the kernel's target acceptance. One generator, seeded by the
    scaffold, drives the flow draws, the moves and the buffer draws.

    Args:
        target: an Energy, or anything with ``log_prob``, or a log-density callable.
        batch_size: AIS particles per run, and the buffer's draw size (at least 2).
        ais_options: the annealing, as keywords of :func:`fab_ais`: ``num_temperatures`` (AIS
            stages ``K``, ``K - 1`` intermediate distributions; 3), ``mcmc_steps`` (moves per
            stage; 1), ``kernel`` (the moves as a value: ``HMC``, the default, ``MALA``,
            ``RandomWalkMH`` or a ``functools.partial`` of one; the names ``"hmc"``,
            ``"mala"``, ``"rwmh"`` are deprecated aliases), ``kernel_options`` (extra kernel
            arguments; HMC takes 5 leapfrog steps unless told otherwise) and ``bounds``.
            ``bounds=(low, high)`` (numbers or ``(*event)`` tensors): AIS treats points outside
            the box as having zero density, so they are never moved to nor stored. ``p²/q`` is
            not normalisable when the flow's tails are lighter than ``p²`` (affine coupling
            flows can have arbitrarily light tails far from the data), and AIS then drifts to
            huge coordinates; bounds prevent it, as FAB's ``point_is_valid_fn`` does. Flows
            with standard normal tails (NSF with a standard normal base: identity outside the
            spline bound) are safe for targets whose tails decay faster than ``exp(-|x|²/4)``.
        step_size: initial MCMC step size.
        replay_buffer: ``True`` (capacity ``100 * batch_size``), a capacity, or ``False``.
        buffer_updates: optimiser steps per AIS run with the buffer.
        buffer_min_size: samples gathered (by AIS runs before training) before the first
            update; default ``min(10 * batch_size, capacity)``.
        weight_adjust_clip: bound of the stale-weight correction in the buffer loss
            (:func:`fab_buffer_loss`).

    History columns (equal-length lists): ``step``, ``loss``, ``ess_fraction`` (Kish ESS of the
    flow's importance weights on the latest AIS run's initial draws), ``log_z`` and
    ``log_z_stderr`` (the flow's importance-sampling estimate on those draws), ``pareto_k``
    (Pareto k-hat of those weights, :func:`~normflows_sci.samplers.psis.pareto_khat`: the numbers
    before it are trustworthy only when it is below
    :func:`~normflows_sci.samplers.psis.khat_threshold` of ``batch_size``; NaN below 21 draws; no
    warning during training), ``ais_ess_fraction`` (of the AIS weights towards ``p²/q``),
    ``acceptance`` (mean MCMC acceptance of that run), ``step_size``, ``buffer_size``,
    ``target_evaluations`` (cumulative rows passed to the target's log-density, gradient
    evaluations and the diagnostics included), and the scaffold's ``learning_rate`` and ``time``.

    Example:
        >>> from normflows_sci.flows import NSF
        >>> from normflows_sci.training import TrainingOptions, train
        >>> flow = NSF(2, transforms=1, hidden_features=(8,), coupling=True)
        >>> loss = FABLoss(lambda x: -0.5 * (x**2).sum(-1), batch_size=16, replay_buffer=False)
        >>> history = train(flow, loss, TrainingOptions(max_steps=2, seed=0, progress=False))
        >>> history["step"], history["buffer_size"]
        ([1, 2], [0, 0])
    """

    history_keys = (
        "step loss ess_fraction log_z log_z_stderr pareto_k ais_ess_fraction acceptance "
        "step_size buffer_size target_evaluations".split()
    )
    description = "fit_fab"

    def __init__(
        self,
        target,
        *,
        batch_size: int = 128,
        ais_options: dict | None = None,
        step_size: float = 0.1,
        replay_buffer: bool | int = True,
        buffer_updates: int = 4,
        buffer_min_size: int | None = None,
        weight_adjust_clip: float | None = 10.0,
    ):
        self.target, self.target_fn = target, as_log_prob(target)
        self.batch_size = check_int("batch_size", batch_size)
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2, got {self.batch_size}")
        self.buffer_updates = check_int("buffer_updates", buffer_updates)
        self.step_size = check_positive("step_size", step_size)
        self.clip = check_positive("weight_adjust_clip", weight_adjust_clip, optional=True)
        self.ais = self._ais_options(ais_options)
        self.target_accept = self.ais["kernel"].target_accept
        self.sizes = _buffer_sizes(replay_buffer, buffer_min_size, self.batch_size)

    @staticmethod
    def _ais_options(ais_options: dict | None) -> dict:
        """The AIS keywords checked here, before any work is done; the kernel as a value."""
        ais = dict(num_temperatures=3, kernel=HMC, mcmc_steps=1, kernel_options=None, bounds=None)
        unknown = set(ais_options or {}) - set(ais)
        if unknown:
            raise ValueError(f"ais_options takes {sorted(ais)}, got {sorted(unknown)}")
        ais.update(ais_options or {})
        check_int("num_temperatures", ais["num_temperatures"])
        check_int("mcmc_steps", ais["mcmc_steps"])
        options = ais.pop("kernel_options")
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"kernel_options must be a dict, got {type(options).__name__}")
        ais["kernel"] = kernel_factory(ais["kernel"], options=options, stacklevel=5)
        return ais

    def check(self, flow) -> None:
        for method in ("sample_and_log_prob", "log_prob", "parameters"):
            if not callable(getattr(flow, method, None)):
                raise TypeError(f"flow must be a Flow (needs {method}), got {type(flow).__name__}")

    def start(self, flow, seed: int, rank: int, world: int) -> None:
        reference = next(flow.parameters())
        _check_bounds(self.ais["bounds"], reference)
        self.flow = flow
        self.generator = torch.Generator(device=reference.device).manual_seed(seed)
        self.buffer = None if self.sizes is None else PrioritizedReplayBuffer(self.sizes[0])
        self.evaluations, self.steps = 0, 0
        self.diagnostics = dict.fromkeys(
            ("ess_fraction", "log_z", "log_z_stderr", "pareto_k", "ais_ess_fraction", "acceptance"),
            math.nan,
        )

        def counted_target(x: Tensor) -> Tensor:
            self.evaluations += x.shape[0]
            return self.target_fn(x)

        counted_target.__wrapped__ = self.target  # errors name the user's target
        self.counted_target = counted_target

    def _run_ais(self, flow) -> tuple[Tensor, Tensor, Tensor]:
        out = fab_ais(
            flow,
            self.counted_target,
            self.batch_size,
            step_size=self.step_size,
            generator=self.generator,
            **self.ais,
        )
        proposal = out.proposal_log_weights
        # Every weight zero: no estimate, and k-hat +inf (as unreliable as it gets).
        stats = dict(ess_fraction=0.0, log_z=math.nan, log_z_stderr=math.nan, pareto_k=math.inf)
        if bool(torch.isfinite(proposal).any()):
            full = importance_weights(proposal, torch.zeros_like(proposal))
            stats = {key: full[key] for key in ("ess_fraction", "log_z", "log_z_stderr")}
            # A training log: k-hat without a warning (NaN below 21 draws).
            stats["pareto_k"] = tail_khat(proposal)[0] if len(proposal) >= 2 else math.nan
        self.diagnostics.update(
            stats,
            ais_ess_fraction=_kish_fraction(out.log_weights),
            acceptance=out.acceptance,
        )
        self.step_size *= math.exp(out.acceptance - self.target_accept)
        return out.samples, out.log_weights, out.log_q

    def prepare(self, flow, out_of_time) -> None:
        """Fill the buffer to ``buffer_min_size`` (or, out of time, to one batch)."""
        if self.buffer is None:
            return
        runs = 0
        while len(self.buffer) < self.sizes[1]:
            self.buffer.add(*self._run_ais(flow))
            runs += 1
            if len(self.buffer) == 0 and runs >= 100:
                raise FloatingPointError(
                    "100 AIS runs gave no finite weight: check the target, the flow and bounds"
                )
            if out_of_time() and len(self.buffer) >= self.batch_size:
                break

    def next_batch(self):
        self.steps += 1
        if self.buffer is None:
            samples, log_w, _ = self._run_ais(self.flow)
            return samples, log_w, None
        if (self.steps - 1) % self.buffer_updates == 0:
            self.buffer.add(*self._run_ais(self.flow))
        samples, _, log_q_old, index = self.buffer.sample(self.batch_size, generator=self.generator)
        return samples, log_q_old, index

    def __call__(self, flow, batch) -> Tensor:
        samples, log_w_or_q, index = batch
        if index is None:
            return fab_loss(flow, samples, log_w_or_q)
        loss, self.log_q = fab_buffer_loss(flow, samples, log_w_or_q, weight_adjust_clip=self.clip)
        return loss

    def nonfinite_message(self, step: int) -> str:
        return (
            f"non-finite FAB loss at step {step}: AIS reached points where the flow's "
            "log-density is not finite, which happens when p²/q is not normalisable (flow "
            "tails lighter than the target's squared); pass bounds=(low, high), use a flow "
            "with Gaussian tails (NSF), or lower learning_rate"
        )

    def after_step(self, flow, batch, loss: Tensor) -> None:
        if batch[2] is not None:
            self.buffer.adjust(batch[2], self.log_q)
        self.last_loss = float(loss)

    def end_epoch(self, flow, epoch: int, step: int) -> dict:
        return dict(
            step=step,
            loss=self.last_loss,
            **self.diagnostics,
            step_size=self.step_size,
            buffer_size=0 if self.buffer is None else len(self.buffer),
            target_evaluations=self.evaluations,
        )


def fit_fab(
    flow,
    target,
    *,
    steps: int = 1000,
    batch_size: int = 128,
    kernel=HMC,
    step_size: float = 0.1,
    replay_buffer: bool | int = True,
    **settings,
) -> TrainingHistory:
    """Train ``flow`` towards the unnormalised ``target`` by FAB (no target samples needed):
    :func:`train` on :class:`FABLoss`.

    Each AIS run (:func:`fab_ais`) draws ``batch_size`` particles from the flow and anneals them
    through ``num_temperatures`` stages from ``q`` to ``p²/q``. Without the buffer every
    optimiser step uses a fresh AIS run and :func:`fab_loss`; with it, every AIS run feeds the
    buffer and is followed by ``buffer_updates`` optimiser steps on prioritised draws
    (:func:`fab_buffer_loss`, then :meth:`PrioritizedReplayBuffer.adjust`). The MCMC step size
    adapts from run to run towards the kernel's target acceptance (0.65 for HMC).

    Args:
        flow: the Flow to train (modified in place).
        target: an Energy, or anything with ``log_prob``, or a log-density callable.
        steps: optimiser steps.
        batch_size, kernel, step_size, replay_buffer: see :class:`FABLoss`.
        **settings: the rest of the FAB settings of :class:`FABLoss`: ``num_temperatures``
            (3), ``mcmc_steps`` (1), ``kernel_options``, ``bounds``, ``buffer_updates`` (4),
            ``buffer_min_size``, ``weight_adjust_clip`` (10); and the :class:`TrainingOptions`
            fields ``learning_rate`` (1e-3), ``weight_decay`` (0), ``schedule`` (``"cosine"``
            over ``steps``, or ``"constant"``), ``clip_grad`` (10), ``max_time``, ``seed``
            (seeds the flow draws, MCMC moves and buffer draws), ``progress`` and
            ``log_every`` (10: record the history every this many steps).

    Returns:
        :class:`~normflows_sci.training.TrainingHistory`: the columns of :class:`FABLoss`.

    Evaluate the trained flow with
    :func:`~normflows_sci.samplers.importance_sample` ``(flow, target, n)``: its result carries
    the k-hat of its weights and warns (RuntimeWarning) when they are unreliable.

    Example:
        >>> from normflows_sci.flows import NSF
        >>> flow = NSF(2, transforms=2, hidden_features=(16,), coupling=True)
        >>> target = lambda x: -0.5 * ((x - 1.0) ** 2).sum(-1)
        >>> history = fit_fab(flow, target, steps=8, batch_size=32, seed=0, progress=False,
        ...                   log_every=4)
        >>> history["step"]
        [4, 8]

    References:
        Midgley, Stimper, Simm, Schölkopf, Hernández-Lobato (2023), "Flow annealed importance
        sampling bootstrap", ICLR.
    """
    groups = route_keywords(
        "fit_fab",
        settings,
        ais=dict(num_temperatures=3, mcmc_steps=1, kernel_options=None, bounds=None),
        buffer=dict(buffer_updates=4, buffer_min_size=None, weight_adjust_clip=10.0),
        options=STEP_TRAINING_DEFAULTS,
    )
    loss = FABLoss(
        target,
        batch_size=batch_size,
        ais_options=dict(groups["ais"], kernel=kernel),
        step_size=step_size,
        replay_buffer=replay_buffer,
        **groups["buffer"],
    )
    options = TrainingOptions(max_steps=check_int("steps", steps), **groups["options"])
    return train(flow, loss, options)
