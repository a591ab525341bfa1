"""Step-size and mass-matrix adaptation, separate from the kernels (as in blackjax).

A kernel only exposes its acceptance signal (:meth:`~normflows_sci.samplers.Kernel.acceptance_signal`);
the adaptation objects here turn that signal into new step sizes. Their state is a NamedTuple of
tensors, advanced by ``update``; :func:`~normflows_sci.samplers.run` uses them during warm-up
(through ``kernel.adapt``) and :func:`~normflows_sci.samplers.anneal` (AIS, SMC, FAB) between the
moves of the population.

The updates are tensor code without host synchronisation (no ``.item()``/``float()`` of a tensor):
they compile with ``torch.compile(..., fullgraph=True)`` and never wait for a GPU. The schedule
position (``count``, the warm-up iteration) is a Python int, or for
:class:`StepSizeAdaptation` also a 0-d tensor, so that a compiled update is not recompiled for
every new count.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["AdaptationState", "StepSizeAdaptation", "DiagonalMassAdaptation"]


class AdaptationState(NamedTuple):
    """State of :class:`StepSizeAdaptation`.

    Attributes:
        step_size: the current step sizes, ``(chains,)``.
        count: number of updates since the adaptation (re)started (the step of the schedule):
            an int, or a 0-d tensor (then the update stays a single compiled graph).
    """

    step_size: Tensor
    count: int | Tensor


class StepSizeAdaptation:
    """Robbins-Monro adaptation of the log step size towards a target acceptance probability:
    ``log h <- log h + gain * (count + 1)^(-decay) * (a - target_accept)``.

    Args:
        target_accept: mean acceptance probability to reach, in ``(0, 1)``.
        pooled: adapt one step size for the whole population from the mean acceptance (the
            annealing samplers: a per-particle rule would make each move depend on the particle's
            own last move and break the invariance the weights rely on); otherwise every chain
            adapts its own step size from its own acceptance (``run``'s warm-up).
        gain, decay: the schedule (decay in ``(0.5, 1]`` for convergence).

    Example:
        >>> adaptation = StepSizeAdaptation(0.5)
        >>> state = adaptation.init(torch.full((3,), 0.1))
        >>> state = adaptation.update(state, torch.tensor([0.0, 0.5, 1.0]))
        >>> state.step_size.round(decimals=4), state.count  # 0.1 * e^-1, 0.1, 0.1 * e
        (tensor([0.0368, 0.1000, 0.2718]), 1)
    """

    def __init__(
        self, target_accept: float, *, pooled: bool = False, gain: float = 2.0, decay: float = 0.6
    ):
        if not 0 < target_accept < 1:
            raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}")
        self.target_accept = float(target_accept)
        self.pooled, self.gain, self.decay = bool(pooled), float(gain), float(decay)

    def init(self, step_size: Tensor, count: int | Tensor = 0) -> AdaptationState:
        """The adaptation state starting from ``step_size`` at schedule step ``count`` (an int,
        or a 0-d tensor kept as is)."""
        return AdaptationState(step_size, count if isinstance(count, Tensor) else int(count))

    def update(self, state: AdaptationState, accept_prob: Tensor) -> AdaptationState:
        """One Robbins-Monro step from this iteration's acceptance probabilities ``(chains,)``.
        Stays on the device (no synchronisation)."""
        rate = (state.count + 1.0) ** -self.decay
        if self.pooled:
            error = accept_prob.mean() - self.target_accept
            step_size = state.step_size * torch.exp(self.gain * rate * error)
        else:
            log_step = state.step_size.log() + rate * (accept_prob - self.target_accept) * self.gain
            step_size = log_step.exp()
        return AdaptationState(step_size, state.count + 1)


class DiagonalMassAdaptation:
    """The diagonal inverse mass matrix of HMC from the warm-up positions (doubling windows, as in
    Stan): set three times, at 1/4, 1/2 and 7/8 of warm-up, to the variance of the positions
    pooled over all chains and the preceding window (one shared diagonal). After each estimate the
    step sizes are rescaled to keep the typical displacement and the step-size adaptation
    restarts (``memory["restart"]``).

    The running sums live in ``memory`` (the plain dict :func:`~normflows_sci.samplers.run`
    carries through warm-up and checkpoints).
    """

    def update(self, state, iteration: int, num_warmup: int, memory: dict):
        """``state`` (an HMC state) after warm-up step ``iteration`` of ``num_warmup``."""
        if iteration < num_warmup // 8:
            return state
        # Doubling windows (as in Stan): each estimate starts from the previous one's geometry.
        ends = (num_warmup // 4, num_warmup // 2, (7 * num_warmup) // 8)
        if iteration > ends[-1]:
            return state
        x = state.x.flatten(1).to(torch.float64)
        memory["count"] = memory.get("count", 0) + x.shape[0]
        memory["sum"] = memory.get("sum", 0.0) + x.sum(0)
        memory["squares"] = memory.get("squares", 0.0) + x.square().sum(0)
        if iteration not in ends or memory["count"] < 2:
            return state
        count = memory.pop("count")
        mean = memory.pop("sum") / count
        var = ((memory.pop("squares") - count * mean.square()) / (count - 1)).clamp_min(1e-10)
        memory["restart"] = iteration + 1
        new = var.to(state.x.dtype).reshape(state.x.shape[1:])
        # Keep the typical displacement eps * sqrt(inverse mass) when the scales change.
        factor = (state.inverse_mass / new).sqrt().mean()  # stays a tensor: no device sync
        return state._replace(inverse_mass=new, step_size=state.step_size * factor)
