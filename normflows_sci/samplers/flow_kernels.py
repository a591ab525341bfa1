"""Flow-assisted kernels: independent Metropolis-Hastings with a flow proposal, NeuTra HMC and the
adaptive flow-augmented sampler (parallel tempering, not a flow kernel, is in
:mod:`normflows_sci.samplers.tempering`).

References:
    Gabrié, Rotskoff, Vanden-Eijnden (2022), "Adaptive Monte Carlo augmented with normalizing
    flows", PNAS 119.
    Hoffman, Sountsov, Dillon, Langmore, Tran, Vasudevan (2019), "NeuTra-lizing bad geometry in
    Hamiltonian Monte Carlo using neural transport".
    Grenioux, Durmus, Moulines, Gabrié (2023), "On sampling with approximate transport maps".
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from normflows_sci._optim import adamw
from normflows_sci.checks import check_int, check_positive
from normflows_sci.flows.base import Flow
from normflows_sci.samplers._mh import (
    check_chains,
    finite,
    metropolis,
    relocate,
    select,
    uniforms,
)
from normflows_sci.samplers.kernels import HMC, MALA, CompiledStep, Kernel
from normflows_sci.samplers.targets import check_log_prob, check_start

# Old import path of the tempering kernel (it is not a flow kernel and now has its own module).
from normflows_sci.samplers.tempering import ParallelTempering, PTInfo, PTState  # noqa: F401

__all__ = [
    "IMHState",
    "IndependentMH",
    "NeuTraHMC",
    "HybridState",
    "HybridInfo",
    "AdaptiveFlowMCMC",
]


def _check_flow(flow) -> None:
    for method in ("sample_and_log_prob", "log_prob"):
        if not callable(getattr(flow, method, None)):
            raise TypeError(f"flow must be a Flow (needs {method}), got {type(flow).__name__}")


def _uses_flow_method(flow, name: str) -> bool:
    """Whether ``flow.<name>`` is :class:`~normflows_sci.flows.Flow`'s own method (not overridden
    by a subclass or replaced on the instance), so that its private steps can be called apart."""
    return (
        isinstance(flow, Flow)
        and name not in vars(flow)
        and getattr(type(flow), name) is getattr(Flow, name)
    )


def _flow_draw(flow, num: int, generator):
    """The random part of ``flow.sample_and_log_prob(num, generator=generator)``: the latent
    draws of a :class:`~normflows_sci.flows.Flow` (mapped by :func:`_flow_proposal`, so that the
    flow's transform runs in the compiled transition), or, for another object with that method,
    its samples and log-densities (eager)."""
    if _uses_flow_method(flow, "sample_and_log_prob"):
        return flow._draw(num, None, generator)[0]
    with torch.no_grad():
        return tuple(flow.sample_and_log_prob(num, generator=generator))


def _flow_proposal(flow, latent) -> tuple[Tensor, Tensor]:
    """``(x, log_q)`` of the flow's samples from the draws of :func:`_flow_draw` (no graph)."""
    if isinstance(latent, tuple):
        return latent
    with torch.no_grad():
        x, log_q = flow._samples_and_log_prob(latent, None)
        return x.reshape(len(latent), *flow.event_shape), log_q.reshape(len(latent))


def _flow_log_prob(flow, x: Tensor, *, graph: bool = False) -> Tensor:
    """``flow.log_prob(x)`` at chain positions, which are finite by construction: a
    :class:`~normflows_sci.flows.Flow`'s input checks are skipped (they would read the tensor
    back to the host in every step). Without a graph unless ``graph`` (flow training)."""
    with torch.set_grad_enabled(graph):
        if _uses_flow_method(flow, "log_prob") and not flow.context_features:
            return flow._log_prob(x, None)
        return flow.log_prob(x)


class IMHState(NamedTuple):
    x: Tensor
    log_prob: Tensor
    log_q: Tensor


class IndependentMH(Kernel):
    """Independent Metropolis-Hastings: propose ``x' ~ q`` from a flow, accept with probability
    ``min(1, p(x') q(x) / (p(x) q(x')))``. An exact flow accepts every move.

    Example:
        >>> from normflows_sci.flows import NSF
        >>> flow = NSF(2, transforms=1, hidden_features=(8,))
        >>> kernel = IndependentMH(flow, flow)  # the flow as its own target: always accepted
        >>> state = kernel.init(torch.zeros(5, 2))
        >>> state, info = kernel.step(state, torch.Generator().manual_seed(0))
        >>> bool(info.accepted.all())
        True
    """

    kind = "global"

    def __init__(self, target, flow):
        super().__init__(target)
        _check_flow(flow)
        self.flow = flow

    def init(self, x: Tensor) -> IMHState:
        x, log_prob, _ = self._start(x)
        with torch.no_grad():
            return IMHState(x, log_prob, self.flow.log_prob(x))

    def propose(self, num: int, generator) -> IMHState:
        """``num`` proposals from the flow with their target and flow log-densities."""
        return self._proposal(_flow_draw(self.flow, num, generator))

    def _proposal(self, latent) -> IMHState:
        x, log_q = _flow_proposal(self.flow, latent)
        with torch.no_grad():
            return IMHState(x, finite(self.log_prob_fn(x)), log_q)

    def draw(self, state: IMHState, generator=None) -> tuple:
        """``(latent, uniform)``: the flow's latent draws, then the Metropolis test's."""
        latent = _flow_draw(self.flow, state.x.shape[0], generator)
        return latent, uniforms(state.x, generator)

    def transition(self, state: IMHState, noise: tuple):
        proposal = self._proposal(noise[0])
        log_ratio = (proposal.log_prob - proposal.log_q) - (state.log_prob - state.log_q)
        info = metropolis(log_ratio, noise[1])
        return select(info.accepted, proposal, state), info

    def adapt(self, state, info, iteration, num_warmup, memory):
        return state


class NeuTraHMC(HMC):
    """HMC in the flow's latent space on ``p(T^{-1}(z)) |det dT^{-1}/dz|``, mapped back by the flow.

    The state holds latent positions; traces record ``x = T^{-1}(z)``. A good flow turns the
    target into a near-standard normal, where HMC mixes fast. Arguments as for :class:`HMC`.

    Example:
        >>> from normflows_sci.distributions import StandardNormal
        >>> from normflows_sci.flows import Flow
        >>> from normflows_sci.samplers import run
        >>> from normflows_sci.transforms import ElementwiseAffine
        >>> scales = torch.tensor([100.0, 0.01])  # scales 10^4 apart
        >>> target = lambda x: -0.5 * (x / scales).square().sum(-1)
        >>> whitening = Flow(ElementwiseAffine(2, scale=1 / scales, learnable=False),
        ...                  StandardNormal(2))
        >>> options = dict(step_size=0.5, num_leapfrog=4)
        >>> neutra = run(NeuTraHMC(target, whitening, **options), torch.zeros(128, 2), 20, seed=0)
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:  # plain HMC is stuck, and says so
        ...     warnings.simplefilter("always")
        ...     plain = run(HMC(target, **options), torch.zeros(128, 2), 20, seed=0)
        >>> neutra.acceptance["local"].mean().item() > 0.9 > plain.acceptance["local"].mean().item()
        True
        >>> "accepted no 'local' move" in str(caught[0].message)
        True
    """

    # The latent log-density adds log|det| to the target's, which would broadcast a wrongly
    # shaped target output: init checks the target itself, in data space.
    checks_start = False

    def __init__(self, target, flow, **hmc_options):
        _check_flow(flow)
        self.flow = flow
        super().__init__(target, **hmc_options)
        self.data_log_prob_fn = self.log_prob_fn
        self.log_prob_fn = self._latent_log_prob

    def _latent_log_prob(self, z: Tensor) -> Tensor:
        x, logabsdet = self.flow.transform.inverse(z)
        return self.data_log_prob_fn(x.reshape(len(z), *self.flow.event_shape)) + logabsdet

    def init(self, x: Tensor):
        x = check_chains(x)
        with torch.no_grad():
            log_prob = check_log_prob(self.data_log_prob_fn(x), self.target, x.shape[0])
            check_start(log_prob, self.target)
            z, _ = self.flow.transform(x)
        return super().init(z)

    def position(self, state) -> Tensor:
        with torch.no_grad():
            x, _ = self.flow.transform.inverse(state.x)
        return x.reshape(len(x), *self.flow.event_shape)

    def position_log_prob(self, state) -> Tensor:
        with torch.no_grad():
            return finite(self.data_log_prob_fn(self.position(state)))


class HybridState(NamedTuple):
    """State of :class:`AdaptiveFlowMCMC`: the local kernel's state and the flow's log-density
    ``log_q`` ``(chains,)`` at the chains. After a warm-up update of the flow with
    ``local_steps >= 1``, ``log_q`` is NaN (not known): the next step evaluates the flow at the
    chains after its local moves, so evaluating it at the updated flow would be wasted work."""

    local: tuple
    log_q: Tensor


class HybridInfo(NamedTuple):
    local_accepted: Tensor
    global_accepted: Tensor
    local_info: tuple


class AdaptiveFlowMCMC(Kernel):
    """Local MCMC steps interleaved with flow-proposed independent MH moves (Gabrié et al. 2022).

    Each step makes ``local_steps`` moves of ``local_kernel`` (MALA by default), then one
    independent MH move proposed by the flow. During warm-up the local step sizes adapt and the
    flow is trained by maximum likelihood on the walkers' current positions (``train_steps``
    Adam steps per iteration); production freezes both, so the output is a valid Markov chain.
    A step evaluates the target ``local_steps + 1`` times per chain: the flow proposals are
    evaluated once, with the gradient when the local kernel needs it, and that evaluation serves
    both the acceptance test and the local kernel's state after an accepted move.

    Args:
        target: Energy, Flow or log-density callable.
        flow: the proposal (trained in place during warm-up).
        local_kernel: a kernel on the same target (default ``MALA(target)``).
        local_steps: local moves per step.
        learning_rate, train_steps: flow training during warm-up (``train_steps=0``: no training).

    Example:
        Two modes 8 standard deviations apart; every chain starts in the left one, where local
        moves alone would keep it. A fixed, wide Gaussian proposal (``train_steps=0``) moves
        chains between the modes:

        >>> from normflows_sci.distributions import StandardNormal
        >>> from normflows_sci.flows import Flow
        >>> from normflows_sci.samplers import run
        >>> from normflows_sci.transforms import ElementwiseAffine
        >>> modes = torch.tensor([[-4.0, 0.0], [4.0, 0.0]])
        >>> def target(x):
        ...     return torch.logsumexp(-0.5 * ((x[:, None] - modes) ** 2).sum(-1), dim=1)
        >>> wide = Flow(ElementwiseAffine(2, scale=torch.tensor([0.2, 1.0]), learnable=False),
        ...             StandardNormal(2))
        >>> kernel = AdaptiveFlowMCMC(target, wide, train_steps=0)
        >>> trace = run(kernel, modes[0].repeat(256, 1), 30, seed=0)
        >>> right = (trace.samples[-1, :, 0] > 0).float().mean().item()
        >>> 0.35 < right < 0.65  # about half the chains end in the right mode
        True
    """

    def __init__(
        self,
        target,
        flow,
        *,
        local_kernel: Kernel | None = None,
        local_steps: int = 1,
        learning_rate: float = 1e-3,
        train_steps: int = 1,
    ):
        super().__init__(target)
        _check_flow(flow)
        local_steps = check_int("local_steps", local_steps, minimum=0)
        train_steps = check_int("train_steps", train_steps, minimum=0)
        self.flow = flow
        self.local = MALA(target) if local_kernel is None else local_kernel
        self.local_steps = int(local_steps)
        self.train_steps = int(train_steps)
        self.learning_rate = check_positive("learning_rate", learning_rate)
        self.optimizer = adamw(flow.parameters(), learning_rate) if self.train_steps else None

    def init(self, x: Tensor) -> HybridState:
        local = self.local.init(x)
        with torch.no_grad():
            return HybridState(local, self.flow.log_prob(local.x))

    def position(self, state):
        return self.local.position(state.local)

    def position_log_prob(self, state):
        return self.local.position_log_prob(state.local)

    def step(self, state: HybridState, generator=None):
        if not CompiledStep.separates(self.local):  # a local kernel drawing inside its step
            return self._transition(state, None, None, generator)
        return self.transition(state, self.draw(state, generator))

    def draw(self, state: HybridState, generator=None) -> tuple:
        """``(local draws, flow latent, uniform)``: the draws of each local step (they depend on
        the chains' shapes only), the flow's latent draws and the flow move's uniforms."""
        x = state.local.x
        local = tuple(self.local.draw(state.local, generator) for _ in range(self.local_steps))
        latent = _flow_draw(self.flow, x.shape[0], generator)
        return local, latent, uniforms(x, generator)

    def transition(self, state: HybridState, noise: tuple):
        return self._transition(state, *noise)

    def _transition(self, state: HybridState, local_noise, latent, uniform, generator=None):
        """The step from given draws, or (``local_noise`` None) drawing from ``generator``."""
        local = state.local
        x = local.x
        accepted_local = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        info = None
        for i in range(self.local_steps):
            if local_noise is None:
                local, info = self.local.step(local, generator)
            else:
                local, info = self.local.transition(local, local_noise[i])
            accepted_local = accepted_local + info.accepted.to(x.dtype)
        if latent is None:
            latent = _flow_draw(self.flow, x.shape[0], generator)
            uniform = uniforms(x, generator)
        log_q = _flow_log_prob(self.flow, local.x) if self.local_steps else state.log_q
        proposed, proposed_log_q = _flow_proposal(self.flow, latent)
        # The local kernel's state at the proposals: one target evaluation (with the gradient
        # when the local kernel needs one), each chain's step size and mass kept.
        moved = relocate(self.local, local, proposed)
        log_ratio = (moved.log_prob - proposed_log_q) - (local.log_prob - log_q)
        move = metropolis(log_ratio, uniform)
        local = select(move.accepted, moved, local)
        log_q = torch.where(move.accepted, proposed_log_q, log_q)
        rate = accepted_local / max(self.local_steps, 1)
        return HybridState(local, log_q), HybridInfo(rate, move.accepted, info)

    def acceptance(self, info: HybridInfo) -> dict[str, Tensor]:
        out = {"global": info.global_accepted}
        if self.local_steps:
            out["local"] = info.local_accepted
        return out

    def adapt(self, state, info, iteration, num_warmup, memory):
        local = state.local
        if self.local_steps:
            local = self.local.adapt(local, info.local_info, iteration, num_warmup, memory)
        if not self.train_steps:
            return state._replace(local=local)
        data = self.local.position(local).detach()
        for _ in range(self.train_steps):
            self.optimizer.zero_grad(set_to_none=True)
            loss = -_flow_log_prob(self.flow, data, graph=True).mean()
            loss.backward()
            self.optimizer.step()
        if self.local_steps:  # the next step evaluates the flow after its local moves
            return HybridState(local, torch.full_like(state.log_q, math.nan))
        return HybridState(local, _flow_log_prob(self.flow, local.x))

    def state_dict(self) -> dict:
        out = {"flow": self.flow.state_dict()}
        if self.optimizer is not None:
            out["optimizer"] = self.optimizer.state_dict()
        return out

    def load_state_dict(self, state: dict) -> None:
        self.flow.load_state_dict(state["flow"])
        if self.optimizer is not None and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
