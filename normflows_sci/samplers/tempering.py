"""Parallel tempering (replica exchange), batched over chains.

References:
    Swendsen, Wang (1986), "Replica Monte Carlo simulation of spin-glasses"; Geyer (1991),
    "Markov chain Monte Carlo maximum likelihood".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from normflows_sci.samplers._mh import check_chains, metropolis
from normflows_sci.samplers.kernels import MALA, Kernel, kernel_factory
from normflows_sci.samplers.targets import check_log_prob, check_start

__all__ = ["PTState", "PTInfo", "ParallelTempering"]


class PTState(NamedTuple):
    inner: tuple
    iteration: Tensor


class PTInfo(NamedTuple):
    local_accepted: Tensor
    swap_accepted: Tensor
    local_info: tuple


class ParallelTempering(Kernel):
    """Replica exchange over a ladder of inverse temperatures, batched: every chain carries one
    replica per temperature (targets ``p(x)^beta``); after each local move, neighbouring replicas
    of every chain try to swap (even or odd pairs, alternating). Traces record ``beta = 1``.
    Swaps cost no target evaluation: a replica takes its ``log p`` and gradient with it, rescaled
    to its new temperature (``log p_beta = beta log p``).

    Args:
        target: Energy, Flow or log-density callable.
        temperatures: increasing, starting at 1 (e.g. ``(1, 2, 4, 8)``).
        local: the local kernel, as a value: a kernel class (``MALA``, the default,
            ``RandomWalkMH``, ``HMC``) or a ``functools.partial`` of one with its hyperparameters
            (``partial(HMC, num_leapfrog=5)``); local steps at every temperature with step sizes
            adapted per replica during warm-up. The names ``"mala"``, ``"rwmh"`` and ``"hmc"``
            are deprecated aliases.
        step_size: initial local step size (unless the partial sets one).

    References:
        Swendsen, Wang (1986), "Replica Monte Carlo simulation of spin-glasses"; Geyer (1991),
        "Markov chain Monte Carlo maximum likelihood".

    Example:
        Two modes 8 standard deviations apart, every chain starting in the left one; the hot
        replicas cross the barrier and swaps bring their positions down to ``beta = 1``:

        >>> from normflows_sci.samplers import run
        >>> modes = torch.tensor([[-4.0, 0.0], [4.0, 0.0]])
        >>> def target(x):
        ...     return torch.logsumexp(-0.5 * ((x[:, None] - modes) ** 2).sum(-1), dim=1)
        >>> kernel = ParallelTempering(target, (1.0, 3.0, 9.0, 27.0), step_size=0.5)
        >>> trace = run(kernel, modes[0].repeat(256, 1), 50, num_warmup=50, seed=0)
        >>> sorted(trace.acceptance)
        ['local', 'swap']
        >>> right = (trace.samples[-1, :, 0] > 0).float().mean().item()
        >>> 0.35 < right < 0.65  # about half the chains end in the right mode
        True
    """

    kind = "local"

    def __init__(
        self,
        target,
        temperatures: Sequence[float] = (1.0, 2.0, 4.0, 8.0),
        *,
        local=MALA,
        step_size: float = 0.05,
    ):
        super().__init__(target, step_size=step_size)
        temps = torch.as_tensor(temperatures, dtype=torch.float64)
        if temps.ndim != 1 or len(temps) < 2 or temps[0] != 1 or not (temps.diff() > 0).all():
            raise ValueError(
                "temperatures must be an increasing sequence of at least 2 values starting at 1, "
                f"got {list(temperatures)}"
            )
        self.betas = 1.0 / temps
        make = kernel_factory(local, argument="local", defaults=dict(step_size=step_size))
        self.inner = make(self._tempered)
        # The tempered log-density scales the target's by per-replica betas, which would
        # broadcast a wrongly shaped target output: init checks the target itself.
        self.inner.checks_start = False

    @property
    def num_temperatures(self) -> int:
        return len(self.betas)

    def _row_betas(self, rows: int, like: Tensor) -> Tensor:
        return self.betas.to(like).repeat_interleave(rows // self.num_temperatures)

    def _tempered(self, x: Tensor) -> Tensor:
        return self.log_prob_fn(x) * self._row_betas(x.shape[0], x)

    def init(self, x: Tensor) -> PTState:
        x = check_chains(x)
        with torch.no_grad():
            check_start(check_log_prob(self.log_prob_fn(x), self.target, x.shape[0]), self.target)
        replicas = x.repeat(self.num_temperatures, *([1] * (x.ndim - 1)))
        return PTState(self.inner.init(replicas), torch.zeros((), dtype=torch.long))

    def _chains(self, state) -> int:
        return state.inner.x.shape[0] // self.num_temperatures

    def position(self, state) -> Tensor:
        return state.inner.x[: self._chains(state)]

    def position_log_prob(self, state) -> Tensor:
        return state.inner.log_prob[: self._chains(state)]  # beta = 1 rows

    def draw(self, state: PTState, generator=None) -> tuple:
        """The local kernel's draws, then one uniform per neighbouring pair and chain
        ``(temperatures - 1, chains)`` for the swap tests (only the pairs of this step's parity
        use theirs)."""
        inner = self.inner.draw(state.inner, generator)
        x = state.inner.x
        pairs = (self.num_temperatures - 1, self._chains(state))
        return inner, torch.rand(pairs, generator=generator, dtype=x.dtype, device=x.device)

    def transition(self, state: PTState, noise: tuple):
        """The local move at every temperature, then swaps of the even pairs (lower index
        ``0, 2, ...``) on even iterations and the odd pairs on odd ones; no host synchronisation
        (the parity is selected with tensor masks)."""
        inner, local_info = self.inner.transition(state.inner, noise[0])
        chains, temps = self._chains(state), self.num_temperatures
        betas = self.betas.to(inner.log_prob)
        log_p = inner.log_prob.reshape(temps, chains) / betas[:, None]
        lower = torch.arange(temps - 1, device=log_p.device)
        active = (lower % 2) == (state.iteration.to(log_p.device) % 2)  # this step's pairs
        log_ratio = (betas[:-1] - betas[1:])[:, None] * (log_p[1:] - log_p[:-1])
        decision = metropolis(log_ratio, noise[1]).accepted & active[:, None]  # (pairs, chains)
        # Active pairs are disjoint: a replica moves up one rung if its pair (as the lower one)
        # swapped, down one if the pair below it swapped.
        step = decision.long()
        shift = torch.nn.functional.pad(step, (0, 0, 0, 1)) - torch.nn.functional.pad(
            step, (0, 0, 1, 0)
        )
        order = torch.arange(temps, device=log_p.device)[:, None] + shift  # (temps, chains)

        # Swapped replicas carry their untempered log-density (and gradient) with them, so
        # no target evaluation is needed: log p_beta(x) = beta log p(x).
        def swap(values: Tensor, tempered: bool) -> Tensor:
            values = values.reshape(temps, chains, *values.shape[1:])
            scale = betas.reshape(temps, *([1] * (values.ndim - 1)))
            if tempered:
                values = values / scale
            index = order.reshape(temps, chains, *([1] * (values.ndim - 2)))
            values = values.gather(0, index.expand_as(values))
            return (values * scale if tempered else values).flatten(0, 1)

        moved = {"x": swap(inner.x, False), "log_prob": swap(inner.log_prob, True)}
        if "grad" in inner._fields:
            moved["grad"] = swap(inner.grad, True)
        inner = inner._replace(**moved)
        tried = active.to(log_p.dtype).sum().clamp(min=1.0)
        swap_accepted = decision.to(log_p.dtype).sum(0) / tried
        info = PTInfo(local_info.accepted[:chains], swap_accepted, local_info)
        return PTState(inner, state.iteration + 1), info

    def acceptance(self, info: PTInfo) -> dict[str, Tensor]:
        return {"local": info.local_accepted, "swap": info.swap_accepted}

    def adapt(self, state, info, iteration, num_warmup, memory):
        inner = self.inner.adapt(state.inner, info.local_info, iteration, num_warmup, memory)
        return state._replace(inner=inner)
