"""Batched MCMC kernels: random-walk Metropolis, MALA and HMC, many chains at once.

Contract (DESIGN.md): kernels hold the target and hyperparameters, never chain state.
``state = kernel.init(x)`` with chains on the leading dimension; ``state, info = kernel.step(state,
generator)``. States and infos are NamedTuples of tensors; accept/reject is ``torch.where`` per
chain. Step sizes live in the state, one per chain, so that warm-up can adapt them chain by chain
(``kernel.adapt``); :func:`normflows_sci.samplers.run` drives warm-up and production.

A target is an Energy, a Flow, or any callable returning log-densities ``(chains,)``. Non-finite
target values count as zero density: a proposal there is always rejected.

``init`` validates once what the sampling relies on (then steps do no checking): the chains
(a floating tensor ``(chains, *event)`` with at least one chain, all finite), the step size (finite
and positive in the chains' dtype), the target's output (a floating tensor of shape
``(chains,)``: see :func:`~normflows_sci.samplers.targets.check_log_prob`) and the start
(not every chain at zero density: see :func:`~normflows_sci.samplers.targets.check_start`).
"""

from __future__ import annotations

import abc
import math
from typing import NamedTuple

import torch
from torch import Tensor

from normflows_sci.samplers.targets import as_log_prob, check_log_prob, check_start

__all__ = [
    "Kernel",
    "StepInfo",
    "RWState",
    "MALAState",
    "HMCState",
    "RandomWalkMH",
    "MALA",
    "HMC",
    "log_prob_and_grad",
]


class StepInfo(NamedTuple):
    """Per-chain outcome of one step: Metropolis acceptance probability and the decision."""

    accept_prob: Tensor
    accepted: Tensor


class RWState(NamedTuple):
    x: Tensor
    log_prob: Tensor
    step_size: Tensor


class MALAState(NamedTuple):
    x: Tensor
    log_prob: Tensor
    grad: Tensor
    step_size: Tensor


class HMCState(NamedTuple):
    x: Tensor
    log_prob: Tensor
    grad: Tensor
    step_size: Tensor
    inverse_mass: Tensor


def _finite(log_prob: Tensor) -> Tensor:
    return torch.where(torch.isnan(log_prob) | (log_prob == math.inf), -math.inf, log_prob)


def log_prob_and_grad(
    log_prob_fn, x: Tensor, *, target=None, what: str = "chains"
) -> tuple[Tensor, Tensor]:
    """``log p(x)`` and ``∇ log p(x)`` by autograd, detached; NaN gradients become 0 (such points
    have zero density and are rejected), and so does the gradient of a log-density that does not
    depend on ``x`` (e.g. a uniform density written with ``torch.where``). With ``target`` (the
    object named in errors), the output is first checked with
    :func:`~normflows_sci.samplers.targets.check_log_prob` (done once, by ``init``; ``what``
    names the points in its message)."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        log_prob = log_prob_fn(leaf)
        if target is not None:
            check_log_prob(log_prob, target, x.shape[0], what=what)
        grad = None
        if log_prob.requires_grad:
            (grad,) = torch.autograd.grad(log_prob.sum(), leaf, allow_unused=True)
    log_prob = _finite(log_prob.detach())
    if grad is None:
        return log_prob, torch.zeros_like(leaf)
    grad = torch.where(torch.isfinite(grad), grad, torch.zeros_like(grad))
    return log_prob, grad


def _expand(values: Tensor, x: Tensor) -> Tensor:
    """Per-chain values ``(chains,)`` broadcast against ``x: (chains, *event)``."""
    return values.reshape(-1, *([1] * (x.ndim - 1)))


def _accept(log_ratio: Tensor, generator) -> StepInfo:
    log_ratio = torch.where(torch.isnan(log_ratio), -math.inf, log_ratio)
    uniform = torch.rand(
        log_ratio.shape, generator=generator, dtype=log_ratio.dtype, device=log_ratio.device
    )
    accepted = uniform.log() < log_ratio
    return StepInfo(log_ratio.clamp(max=0.0).exp(), accepted)


def _select(accepted: Tensor, new, old):
    """Per-chain choice between two states (NamedTuples of tensors with chains leading)."""
    return type(old)(
        *(
            torch.where(_expand(accepted, n) if n.ndim else accepted, n, o) if n is not o else o
            for n, o in zip(new, old)
        )
    )


def _relocate(kernel, state, x: Tensor):
    """``state`` of ``kernel`` moved to positions ``x``: the log-density (and its gradient, when the
    state carries one) evaluated there once; the per-chain settings (step size, mass) are kept.
    Non-finite positions get log-density ``-inf`` (a move there is rejected)."""
    if "grad" in state._fields:
        log_prob, grad = log_prob_and_grad(kernel.log_prob_fn, x)
        return state._replace(x=x, log_prob=log_prob, grad=grad)
    with torch.no_grad():
        return state._replace(x=x, log_prob=_finite(kernel.log_prob_fn(x)))


def _check_chains(x) -> Tensor:
    """The initial positions of a kernel's ``init``, validated (the one check of every kernel)."""
    if not isinstance(x, Tensor) or x.ndim < 2 or not x.is_floating_point():
        raise ValueError(
            "x0 (initial chain positions) must be a floating tensor of shape (chains, *event), "
            f"got {getattr(x, 'shape', type(x).__name__)}"
        )
    if x.shape[0] < 1:
        raise ValueError(
            f"x0 (initial chain positions) must have at least one chain, got shape {tuple(x.shape)}"
        )
    if not torch.isfinite(x).all():
        raise ValueError("x0 (initial chain positions) contains NaN or inf")
    return x.detach()


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not (
        isinstance(value, (int, float)) and math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


class Kernel(abc.ABC):
    """Base of all kernels.

    Args:
        target: Energy, Flow or log-density callable.
        step_size: initial step size (per chain after ``init``).
        target_accept: mean acceptance probability that warm-up adapts the step size towards.
    """

    target_accept: float = 0.5
    # Whether ``_start`` checks that not every chain starts at zero density. Off for a kernel run
    # inside another one (tempering, NeuTra) that checks its user-facing target itself.
    _checks_start: bool = True

    def __init__(self, target, *, step_size: float = 0.1, target_accept: float | None = None):
        self.target = target
        self.log_prob_fn = as_log_prob(target)
        self.step_size = _check_positive("step_size", step_size)
        if target_accept is not None:
            if not 0 < target_accept < 1:
                raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}")
            self.target_accept = float(target_accept)

    @abc.abstractmethod
    def init(self, x: Tensor):
        """The state of chains starting at ``x: (chains, *event)``."""

    @abc.abstractmethod
    def step(self, state, generator: torch.Generator | None = None):
        """One transition of every chain: ``(state, info)``."""

    kind: str = "local"

    def position(self, state) -> Tensor:
        """The sample a trace records for this state."""
        return state.x

    def position_log_prob(self, state) -> Tensor:
        """The target log-density at :meth:`position`."""
        return state.log_prob

    def acceptance(self, info) -> dict[str, Tensor]:
        """Per-chain accept decisions of one step by move kind (``run`` averages them)."""
        return {self.kind: info.accepted}

    def adapt(self, state, info, iteration: int, num_warmup: int, memory: dict):
        """Warm-up update after step ``iteration`` (0-based) of ``num_warmup``: Robbins-Monro on
        each chain's log step size towards ``target_accept``. ``memory`` persists across calls."""
        rate = (iteration - memory.get("restart", 0) + 1.0) ** -0.6
        accept = self._accept_signal(info)
        log_step = state.step_size.log() + rate * (accept - self.target_accept) * 2.0
        return state._replace(step_size=log_step.exp())

    def _accept_signal(self, info) -> Tensor:
        return info.accept_prob

    def _initial_step(self, x: Tensor) -> Tensor:
        info = torch.finfo(x.dtype)
        if not info.tiny <= self.step_size <= info.max:
            raise ValueError(
                f"step_size={self.step_size!r} is not a positive finite number in the chains' "
                f"dtype {x.dtype} (range [{info.tiny:.3g}, {info.max:.3g}])"
            )
        return torch.full((x.shape[0],), self.step_size, dtype=x.dtype, device=x.device)

    def _start(self, x: Tensor, *, gradient: bool = False):
        """The checks and target evaluation every ``init`` starts with: ``(x, log_prob, grad)``
        at the validated positions ``x`` (``grad`` is None without ``gradient``). The target's
        output is checked (shape ``(chains,)``, floating) and, unless ``_checks_start`` is off,
        so is the start (not every chain at zero density)."""
        x = _check_chains(x)
        if gradient:
            log_prob, grad = log_prob_and_grad(self.log_prob_fn, x, target=self.target)
        else:
            with torch.no_grad():
                log_prob = _finite(check_log_prob(self.log_prob_fn(x), self.target, x.shape[0]))
            grad = None
        if self._checks_start:
            check_start(log_prob, self.target)
        return x, log_prob, grad


class RandomWalkMH(Kernel):
    """Gaussian random-walk Metropolis: ``x' = x + h * xi``; warm-up targets 0.234 acceptance.

    Example:
        >>> from normflows_sci.distributions import StandardNormal
        >>> kernel = RandomWalkMH(StandardNormal(2), step_size=0.5)
        >>> state = kernel.init(torch.zeros(4, 2))
        >>> state, info = kernel.step(state, torch.Generator().manual_seed(0))
        >>> state.x.shape, info.accepted.shape
        (torch.Size([4, 2]), torch.Size([4]))
    """

    target_accept = 0.234

    def init(self, x: Tensor) -> RWState:
        x, log_prob, _ = self._start(x)
        return RWState(x, log_prob, self._initial_step(x))

    def step(self, state: RWState, generator=None):
        noise = torch.randn(
            state.x.shape, generator=generator, dtype=state.x.dtype, device=state.x.device
        )
        proposal = state.x + _expand(state.step_size, state.x) * noise
        with torch.no_grad():
            log_prob = _finite(self.log_prob_fn(proposal))
        info = _accept(log_prob - state.log_prob, generator)
        return _select(info.accepted, RWState(proposal, log_prob, state.step_size), state), info


class MALA(Kernel):
    """Metropolis-adjusted Langevin: ``x' = x + h ∇log p(x) + sqrt(2h) xi``, MH-corrected;
    warm-up targets 0.574 acceptance (Roberts & Rosenthal 1998).

    Example:
        >>> from normflows_sci.distributions import StandardNormal
        >>> kernel = MALA(StandardNormal(2), step_size=0.5)
        >>> state = kernel.init(torch.zeros(512, 2))  # 512 chains, all at the origin
        >>> generator = torch.Generator().manual_seed(0)
        >>> for _ in range(100):
        ...     state, info = kernel.step(state, generator)
        >>> abs(state.x.var().item() - 1.0) < 0.2  # the chains have spread out to N(0, I)
        True
    """

    target_accept = 0.574

    def __init__(self, target, *, step_size: float = 0.01, target_accept: float | None = None):
        super().__init__(target, step_size=step_size, target_accept=target_accept)

    def init(self, x: Tensor) -> MALAState:
        x, log_prob, grad = self._start(x, gradient=True)
        return MALAState(x, log_prob, grad, self._initial_step(x))

    @staticmethod
    def _log_q(to: Tensor, frm: Tensor, grad: Tensor, h: Tensor) -> Tensor:
        diff = to - frm - _expand(h, to) * grad
        return -diff.square().flatten(1).sum(1) / (4 * h)

    def step(self, state: MALAState, generator=None):
        x, h = state.x, state.step_size
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        proposal = x + _expand(h, x) * state.grad + _expand((2 * h).sqrt(), x) * noise
        log_prob, grad = log_prob_and_grad(self.log_prob_fn, proposal)
        log_ratio = (
            log_prob
            - state.log_prob
            + self._log_q(x, proposal, grad, h)
            - self._log_q(proposal, x, state.grad, h)
        )
        info = _accept(log_ratio, generator)
        return _select(info.accepted, MALAState(proposal, log_prob, grad, h), state), info


class HMC(Kernel):
    """Hamiltonian Monte Carlo with leapfrog integration and a diagonal mass matrix.

    Warm-up adapts each chain's step size towards ``target_accept`` (0.65) throughout; with
    ``adapt_mass`` the inverse mass is set three times, at 1/4, 1/2 and 7/8 of warm-up, to the
    variance of the positions pooled over all chains and the preceding window (doubling windows,
    as in Stan; one shared diagonal), and the step-size adaptation restarts after each.

    Args:
        num_leapfrog: leapfrog steps per proposal.
        adapt_mass: estimate the diagonal mass matrix during warm-up.

    References:
        Duane, Kennedy, Pendleton, Roweth (1987), "Hybrid Monte Carlo"; Neal (2011), "MCMC using
        Hamiltonian dynamics".

    Example:
        >>> from normflows_sci.samplers import run
        >>> scales = torch.tensor([10.0, 0.1])  # badly scaled: the mass matrix adapts to it
        >>> target = lambda x: -0.5 * (x / scales).square().sum(-1)
        >>> trace = run(HMC(target, num_leapfrog=5), torch.zeros(256, 2), 20, num_warmup=80,
        ...             seed=0)
        >>> trace.samples.shape  # (kept steps, chains, *event)
        torch.Size([20, 256, 2])
        >>> ratio = trace.samples.std((0, 1)) / scales
        >>> bool(((ratio > 0.8) & (ratio < 1.2)).all())
        True
    """

    target_accept = 0.65

    def __init__(
        self,
        target,
        *,
        step_size: float = 0.1,
        num_leapfrog: int = 10,
        target_accept: float | None = None,
        adapt_mass: bool = True,
    ):
        super().__init__(target, step_size=step_size, target_accept=target_accept)
        if int(num_leapfrog) != num_leapfrog or num_leapfrog < 1:
            raise ValueError(f"num_leapfrog must be a positive integer, got {num_leapfrog!r}")
        self.num_leapfrog = int(num_leapfrog)
        self.adapt_mass = adapt_mass

    def init(self, x: Tensor) -> HMCState:
        x, log_prob, grad = self._start(x, gradient=True)
        return HMCState(x, log_prob, grad, self._initial_step(x), torch.ones_like(x[0]))

    def step(self, state: HMCState, generator=None):
        x, eps, inv_mass = state.x, _expand(state.step_size, state.x), state.inverse_mass
        momentum = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        momentum = momentum / inv_mass.sqrt()
        kinetic0 = 0.5 * (momentum.square() * inv_mass).flatten(1).sum(1)
        position, grad, log_prob = x, state.grad, state.log_prob
        momentum = momentum + 0.5 * eps * grad
        for i in range(self.num_leapfrog):
            position = position + eps * inv_mass * momentum
            log_prob, grad = log_prob_and_grad(self.log_prob_fn, position)
            scale = 1.0 if i < self.num_leapfrog - 1 else 0.5
            momentum = momentum + scale * eps * grad
        kinetic1 = 0.5 * (momentum.square() * inv_mass).flatten(1).sum(1)
        log_ratio = (log_prob - kinetic1) - (state.log_prob - kinetic0)
        info = _accept(log_ratio, generator)
        proposal = HMCState(position, log_prob, grad, state.step_size, inv_mass)
        return _select(info.accepted, proposal, state), info

    def adapt(self, state, info, iteration, num_warmup, memory):
        state = super().adapt(state, info, iteration, num_warmup, memory)
        if not self.adapt_mass or iteration < num_warmup // 8:
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
        factor = float((state.inverse_mass / new).sqrt().mean())
        return state._replace(inverse_mass=new, step_size=state.step_size * factor)
