"""Batched MCMC kernels: random-walk Metropolis, MALA and HMC, many chains at once.

Contract (see the hybrid MCMC guide): kernels hold the target and hyperparameters, never chain state.
``state = kernel.init(x)`` with chains on the leading dimension; ``state, info = kernel.step(state,
generator)``. States and infos are NamedTuples of tensors; accept/reject is ``torch.where`` per
chain. Step sizes live in the state, one per chain, so that warm-up can adapt them chain by chain
(``kernel.adapt``, which hands the kernel's acceptance signal to its
:class:`~normflows_sci.samplers.StepSizeAdaptation`); :func:`normflows_sci.samplers.run` drives
warm-up and production.

Samplers that build kernels themselves (AIS, SMC, FAB, parallel tempering, the stochastic
normalizing flow's MCMC layers: one kernel per intermediate density) take the kernel as a value:
a kernel class (``MALA``) or a ``functools.partial`` of one carrying its hyperparameters
(``partial(HMC, num_leapfrog=5)``); :func:`kernel_factory` turns it into a callable
``target -> kernel``. The names ``"hmc"``, ``"mala"`` and ``"rwmh"`` are deprecated aliases,
mapped to the classes in :data:`KERNEL_NAMES` only.

A target is an Energy, a Flow, or any callable returning log-densities ``(chains,)``. Non-finite
target values count as zero density: a proposal there is always rejected.

Randomness and compilation: a step is ``transition(state, draw(state, generator))``. ``draw`` makes
every random draw of the step (a tuple of tensors, from ``generator``, or torch's global generator
when it is None, always in the same order, so a seed gives the same chains either way it is run);
``transition`` is pure tensor code: no random draws, no host synchronisation (no ``.item()``,
``float()`` or ``bool()`` of a tensor, no branch on tensor values), so it compiles with
``torch.compile(kernel.transition, fullgraph=True)`` and on a GPU a step never waits for the device.
``torch.compile(kernel.step, fullgraph=True)`` works too, with ``generator=None`` (dynamo cannot
take a ``torch.Generator`` argument; the compiled step then draws from the global generator, and
inductor's random numbers differ from eager ones unless
``torch._inductor.config.fallback_random`` is set). :meth:`Kernel.compiled_step` is the way to
compile with a generator: it draws eagerly from the generator and runs the compiled transition,
so its chains are those of ``step`` up to floating-point reassociation, and it falls back to the
eager transition for a target dynamo cannot compile. Since the draws depend on the chains' shapes
only (:attr:`Kernel.shape_only_draws`), the draws of several steps can be made at once
(:meth:`Kernel.draw_steps`, in the generator order of single steps) and their transitions run as
one function: :class:`StepBlock`, which :func:`~normflows_sci.samplers.run` uses in production.

``init`` validates once what the sampling relies on (then steps do no checking): the chains
(a floating tensor ``(chains, *event)`` with at least one chain, all finite), the step size (finite
and positive in the chains' dtype), the target's output (a floating tensor of shape
``(chains,)``: see :func:`~normflows_sci.samplers.targets.check_log_prob`) and the start
(not every chain at zero density: see :func:`~normflows_sci.samplers.targets.check_start`).
"""

from __future__ import annotations

import abc
import functools
import inspect
import operator
import types
import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from normflows_sci.checks import check_int, check_positive
from normflows_sci.samplers._mh import (
    StepInfo,
    check_chains,
    expand,
    finite,
    log_prob_and_grad,
    metropolis,
    select,
    sum_event,
    uniforms,
    value,
)
from normflows_sci.samplers.adaptation import DiagonalMassAdaptation, StepSizeAdaptation
from normflows_sci.samplers.targets import as_log_prob, check_log_prob, check_start

__all__ = [
    "Kernel",
    "MetropolisKernel",
    "StepInfo",
    "RWState",
    "MALAState",
    "HMCState",
    "RandomWalkMH",
    "MALA",
    "HMC",
    "log_prob_and_grad",
    "KERNEL_NAMES",
    "KernelFactory",
    "kernel_factory",
    "CompiledStep",
    "StepBlock",
]


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


class Kernel(abc.ABC):
    """Base of all kernels.

    Args:
        target: Energy, Flow or log-density callable.
        step_size: initial step size (per chain after ``init``).
        target_accept: mean acceptance probability that warm-up adapts the step size towards.

    Attributes:
        adaptation: the :class:`~normflows_sci.samplers.StepSizeAdaptation` that ``adapt`` feeds
            with :meth:`acceptance_signal` during warm-up.
        uses_gradient: whether the kernel's states carry ``∇ log p`` (``grad``).
        checks_start: whether ``init`` refuses a start where every chain has zero density; off
            for a kernel run inside another one (tempering, NeuTra) that checks its user-facing
            target itself.
        shape_only_draws: whether :meth:`draw` reads only the state's shapes, dtypes and devices
            (never its values), so that the draws of several steps can be made from the state
            before the first of them (:class:`StepBlock`) in the generator order of single
            steps. A kernel whose draws depend on the chains' values sets it False.
    """

    target_accept: float = 0.5
    uses_gradient: bool = False
    checks_start: bool = True
    shape_only_draws: bool = True

    def __init__(self, target, *, step_size: float = 0.1, target_accept: float | None = None):
        self.target = target
        self.log_prob_fn = as_log_prob(target)
        self.step_size = check_positive("step_size", step_size)
        if target_accept is not None:
            if not 0 < target_accept < 1:
                raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}")
            self.target_accept = float(target_accept)
        self.adaptation = StepSizeAdaptation(self.target_accept)

    @abc.abstractmethod
    def init(self, x: Tensor):
        """The state of chains starting at ``x: (chains, *event)``."""

    def step(self, state, generator: torch.Generator | None = None):
        """One transition of every chain: ``(state, info)``, i.e.
        ``transition(state, draw(state, generator))``."""
        return self.transition(state, self.draw(state, generator))

    @abc.abstractmethod
    def draw(self, state, generator: torch.Generator | None = None) -> tuple:
        """Every random draw of one :meth:`step` from the chains at ``state``: a tuple of tensors
        (nested tuples for a kernel made of others), from ``generator`` (torch's global
        generator when None). Unless :attr:`shape_only_draws` is False, the draws depend on the
        state's shapes, dtypes and devices only."""

    def draw_steps(self, state, generator: torch.Generator | None, steps: int) -> tuple:
        """The draws of ``steps`` consecutive steps from the chains at ``state`` (see
        :attr:`shape_only_draws`), stacked: :meth:`draw`'s structure with a leading dimension of
        ``steps`` on every tensor, the generator read as by ``steps`` calls of :meth:`draw`."""
        draws = [self.draw(state, generator) for _ in range(steps)]
        return _map_draws(lambda *step: torch.stack(step), *draws)

    @abc.abstractmethod
    def transition(self, state, noise: tuple):
        """One step given the draws of :meth:`draw`: ``(state, info)``. No random draws and no
        host synchronisation: compiles with ``torch.compile(..., fullgraph=True)``."""

    def compiled_step(self, **options) -> CompiledStep:
        """:meth:`step` with the transition compiled (``options`` for :func:`torch.compile`; the
        randomness is drawn eagerly, so ``generator`` is supported); see :class:`CompiledStep`."""
        return CompiledStep(self, **options)

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

    def acceptance_signal(self, info) -> Tensor:
        """The per-chain quantity step-size adaptation drives towards ``target_accept``."""
        return info.accept_prob

    def adapt(self, state, info, iteration: int, num_warmup: int, memory: dict):
        """Warm-up update after step ``iteration`` (0-based) of ``num_warmup``: one step of
        :attr:`adaptation` on each chain's step size (its schedule restarts at
        ``memory["restart"]``). ``memory`` persists across calls (and checkpoints)."""
        adaptation = self.adaptation
        current = adaptation.init(state.step_size, iteration - memory.get("restart", 0))
        adapted = adaptation.update(current, self.acceptance_signal(info))
        return state._replace(step_size=adapted.step_size)

    def initial_step_size(self, x: Tensor) -> Tensor:
        """``step_size`` for every chain of ``x``, ``(chains,)`` in ``x``'s dtype and device;
        ``ValueError`` if it is not a positive finite number in that dtype."""
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
        output is checked (shape ``(chains,)``, floating) and, unless ``checks_start`` is off,
        so is the start (not every chain at zero density)."""
        x = check_chains(x)
        if gradient:
            log_prob, grad = log_prob_and_grad(self.log_prob_fn, x, target=self.target)
        else:
            with torch.no_grad():
                log_prob = finite(check_log_prob(self.log_prob_fn(x), self.target, x.shape[0]))
            grad = None
        if self.checks_start:
            check_start(log_prob, self.target)
        return x, log_prob, grad


class MetropolisKernel(Kernel):
    """A kernel whose step is one Metropolis-Hastings move: :meth:`propose` then accept/reject.

    Subclasses define :meth:`state_at` and :meth:`propose`; the stochastic normalizing flow's
    MCMC layers and the annealing samplers use both directly (with known densities, or
    differentiably), so the move is written once.
    """

    def init(self, x: Tensor):
        x, log_prob, grad = self._start(x, gradient=self.uses_gradient)
        return self.state_at(x, log_prob, grad, self.initial_step_size(x))

    @abc.abstractmethod
    def state_at(self, x: Tensor, log_prob: Tensor, grad: Tensor | None, step_size: Tensor):
        """A state at ``x`` whose log-density (and gradient, if :attr:`uses_gradient`) are
        already known (no target evaluation)."""

    def propose(self, state, generator=None, *, differentiable: bool = False):
        """``(proposal, log_ratio)``: the proposed state and the Metropolis-Hastings log
        acceptance ratio ``(chains,)``. With ``differentiable`` the proposal keeps the graph to
        ``state.x`` (reparameterised: the target's gradients are taken with ``create_graph``)."""
        noise = self.proposal_noise(state, generator)
        return self.move(state, noise, differentiable=differentiable)

    def proposal_noise(self, state, generator=None) -> Tensor:
        """The standard normal draws ``(chains, *event)`` a proposal is built from."""
        x = state.x
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)

    @abc.abstractmethod
    def move(self, state, noise: Tensor, *, differentiable: bool = False):
        """:meth:`propose` with its standard normal draws ``noise`` given."""

    def draw(self, state, generator=None) -> tuple[Tensor, Tensor]:
        """``(noise, uniform)``: the proposal's normal draws, then the Metropolis test's."""
        noise = self.proposal_noise(state, generator)
        return noise, uniforms(state.x, generator)

    def draw_steps(self, state, generator, steps: int) -> tuple[Tensor, Tensor]:
        """:meth:`Kernel.draw_steps`, filling the stacked draws in place (one allocation per
        block, not per step) unless a subclass changes the draws."""
        cls = type(self)
        if cls.draw is not MetropolisKernel.draw or (
            cls.proposal_noise is not MetropolisKernel.proposal_noise
        ):
            return super().draw_steps(state, generator, steps)
        x = state.x
        noise, uniform = x.new_empty((steps, *x.shape)), x.new_empty((steps, x.shape[0]))
        for normal, unit in zip(noise, uniform):  # torch.randn and torch.rand, in draw's order
            normal.normal_(generator=generator)
            unit.uniform_(generator=generator)
        return noise, uniform

    def transition(self, state, noise: tuple[Tensor, Tensor]):
        proposal, log_ratio = self.move(state, noise[0])
        info = metropolis(log_ratio, noise[1])
        return select(info.accepted, proposal, state), info


class RandomWalkMH(MetropolisKernel):
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

    def state_at(self, x, log_prob, grad, step_size) -> RWState:
        return RWState(x, log_prob, step_size)

    def move(self, state: RWState, noise: Tensor, *, differentiable: bool = False):
        proposal = state.x + expand(state.step_size, state.x) * noise
        log_prob = value(self.log_prob_fn, proposal, differentiable=differentiable)
        return RWState(proposal, log_prob, state.step_size), log_prob - state.log_prob


class MALA(MetropolisKernel):
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
    uses_gradient = True

    def __init__(self, target, *, step_size: float = 0.01, target_accept: float | None = None):
        super().__init__(target, step_size=step_size, target_accept=target_accept)

    def state_at(self, x, log_prob, grad, step_size) -> MALAState:
        return MALAState(x, log_prob, grad, step_size)

    @staticmethod
    def _log_q(to: Tensor, frm: Tensor, grad: Tensor, h: Tensor) -> Tensor:
        diff = to - frm - expand(h, to) * grad
        return -sum_event(diff.square()) / (4 * h)

    def move(self, state: MALAState, noise: Tensor, *, differentiable: bool = False):
        x, h = state.x, state.step_size
        proposal = x + expand(h, x) * state.grad + expand((2 * h).sqrt(), x) * noise
        log_prob, grad = log_prob_and_grad(
            self.log_prob_fn, proposal, differentiable=differentiable
        )
        # The forward proposal density: proposal - x - h grad = sqrt(2h) noise exactly, so
        # log q(proposal | x) = -|noise|^2 / 2 (one reduction instead of five operations).
        forward = -0.5 * sum_event(noise.square())
        log_ratio = log_prob - state.log_prob + self._log_q(x, proposal, grad, h) - forward
        return MALAState(proposal, log_prob, grad, h), log_ratio


class HMC(MetropolisKernel):
    """Hamiltonian Monte Carlo with leapfrog integration and a diagonal mass matrix.

    Warm-up adapts each chain's step size towards ``target_accept`` (0.65) throughout; with
    ``adapt_mass`` the inverse mass is set three times, at 1/4, 1/2 and 7/8 of warm-up, to the
    variance of the positions pooled over all chains and the preceding window (doubling windows,
    as in Stan; one shared diagonal: :class:`~normflows_sci.samplers.DiagonalMassAdaptation`),
    and the step-size adaptation restarts after each.

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
    uses_gradient = True

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
        self.num_leapfrog = check_int("num_leapfrog", num_leapfrog)
        self.adapt_mass = adapt_mass
        self.mass_adaptation = DiagonalMassAdaptation()

    def state_at(self, x, log_prob, grad, step_size) -> HMCState:
        return HMCState(x, log_prob, grad, step_size, torch.ones_like(x[0]))

    def move(self, state: HMCState, noise: Tensor, *, differentiable: bool = False):
        x, step_size, inv_mass = state.x, state.step_size, state.inverse_mass
        eps = expand(step_size, x)
        momentum = noise / inv_mass.sqrt()
        kinetic0 = 0.5 * sum_event(momentum.square() * inv_mass)
        position, grad, log_prob = x, state.grad, state.log_prob
        # The kicks per chain, (chains,): a compiled region takes them without a view of its own
        # to build at every call.
        drift, half_step = eps * inv_mass, 0.5 * step_size
        momentum = momentum + expand(half_step, x) * grad
        if differentiable:
            for i in range(self.num_leapfrog):
                kick = step_size if i < self.num_leapfrog - 1 else half_step
                position, momentum, log_prob, grad = self._leapfrog(
                    position, momentum, drift, kick, differentiable=True
                )
        else:
            for _ in range(self.num_leapfrog - 1):
                position, momentum = self._compiled_drift_kick(position, momentum, drift, step_size)
            position, momentum, log_prob, grad = self._compiled_leapfrog(
                position, momentum, drift, half_step
            )
        kinetic1 = 0.5 * sum_event(momentum.square() * inv_mass)
        log_ratio = (log_prob - kinetic1) - (state.log_prob - kinetic0)
        return HMCState(position, log_prob, grad, state.step_size, inv_mass), log_ratio

    def _leapfrog(self, position, momentum, drift, kick, *, differentiable: bool = False):
        """One leapfrog step after the first half kick: drift the position, evaluate the
        target there, kick the momentum by ``kick * grad`` (``kick`` per chain, ``(chains,)``)."""
        position = position + drift * momentum
        log_prob, grad = log_prob_and_grad(
            self.log_prob_fn, position, differentiable=differentiable
        )
        return position, momentum + expand(kick, grad) * grad, log_prob, grad

    # Compiled once and reused for every leapfrog step of a compiled transition: inductor's
    # compile time grows faster than linearly with an unrolled trajectory (and its code for
    # fused leapfrog steps runs slower). Every output of a region is a buffer allocated per call,
    # so the steps before the last return only what the next one needs. Eager: the same steps.
    @torch.compiler.nested_compile_region
    def _compiled_drift_kick(self, position, momentum, drift, kick):
        return self._leapfrog(position, momentum, drift, kick)[:2]

    @torch.compiler.nested_compile_region
    def _compiled_leapfrog(self, position, momentum, drift, kick):
        return self._leapfrog(position, momentum, drift, kick)

    def adapt(self, state, info, iteration, num_warmup, memory):
        state = super().adapt(state, info, iteration, num_warmup, memory)
        if not self.adapt_mass:
            return state
        return self.mass_adaptation.update(state, iteration, num_warmup, memory)


# The deprecated kernel names and the one place they are mapped to the kernel classes.
KERNEL_NAMES: dict[str, type[Kernel]] = {"hmc": HMC, "mala": MALA, "rwmh": RandomWalkMH}


class KernelFactory:
    """A kernel class with its hyperparameters: ``factory(target)`` builds the kernel.

    Attributes:
        cls: the kernel class (a :class:`MetropolisKernel` subclass).
        options: keyword arguments given to every kernel built.
    """

    def __init__(self, cls: type[MetropolisKernel], options: dict):
        self.cls, self.options = cls, dict(options)

    def __call__(self, target) -> MetropolisKernel:
        return self.cls(target, **self.options)

    @property
    def uses_gradient(self) -> bool:
        return self.cls.uses_gradient

    @property
    def target_accept(self) -> float:
        return float(self.options.get("target_accept") or self.cls.target_accept)

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.cls.__name__}({options})"


def kernel_factory(
    kernel,
    *,
    argument: str = "kernel",
    defaults: dict | None = None,
    options: dict | None = None,
    stacklevel: int = 3,
) -> KernelFactory:
    """The kernel value a sampler was given (``argument`` names it in messages), as a factory.

    Args:
        kernel: a :class:`MetropolisKernel` subclass (``MALA``), a ``functools.partial`` of one
            with keyword hyperparameters (``partial(HMC, num_leapfrog=5)``), a
            :class:`KernelFactory`, or one of the deprecated names of :data:`KERNEL_NAMES`
            (``DeprecationWarning`` naming the class to pass instead).
        defaults: the sampler's own defaults (e.g. its ``step_size``), used for the keywords the
            class accepts unless the partial sets them.
        options: explicit keyword arguments (e.g. a sampler's ``kernel_options``); they win.
        stacklevel: of the deprecation warning (points at the sampler's caller).

    Raises:
        ValueError: an unknown name, or a hyperparameter the kernel refuses (one kernel is built
            to check them). TypeError: anything else that is not a kernel class.
    """
    if isinstance(kernel, str):
        if kernel not in KERNEL_NAMES:
            raise ValueError(
                f"{argument} must be a kernel class (e.g. MALA, or functools.partial(HMC, "
                f"num_leapfrog=5)); the deprecated names are {sorted(KERNEL_NAMES)}; got {kernel!r}"
            )
        cls = KERNEL_NAMES[kernel]
        warnings.warn(
            f"{argument}={kernel!r} is deprecated: pass the kernel class, {argument}="
            f"{cls.__name__} (or functools.partial({cls.__name__}, ...) with its hyperparameters)",
            DeprecationWarning,
            stacklevel=stacklevel,
        )
        kernel = cls
    if isinstance(kernel, KernelFactory):
        cls, keywords = kernel.cls, kernel.options
    elif isinstance(kernel, functools.partial) and not kernel.args:
        cls, keywords = kernel.func, kernel.keywords
    else:
        cls, keywords = kernel, {}
    if not (isinstance(cls, type) and issubclass(cls, MetropolisKernel)):
        raise TypeError(
            f"{argument} must be a kernel class such as MALA, RandomWalkMH or HMC, or a "
            f"functools.partial of one with keyword hyperparameters, got {kernel!r}"
        )
    accepted = inspect.signature(cls).parameters
    merged = {k: v for k, v in (defaults or {}).items() if k in accepted}
    merged.update(keywords)
    merged.update(options or {})
    factory = KernelFactory(cls, merged)
    factory(_no_target)  # checks the hyperparameters now, not at the first move
    return factory


def _no_target(x: Tensor) -> Tensor:
    """A stand-in target for checking a kernel's hyperparameters (never evaluated)."""
    raise AssertionError("a kernel built to check its hyperparameters evaluated its target")


# Inductor re-checks the shape and strides of its own buffers at every call of the compiled code;
# for small batches those checks are most of a step's time.
_INDUCTOR_OPTIONS = {"size_asserts": False, "alignment_asserts": False}


def _own_function(function):
    """``function`` with a copy of its code object: dynamo keeps compiled code and counts
    recompilations (at most ``torch._dynamo.config.recompile_limit``) per code object."""
    code = function.__code__.replace()  # a copy: its own cache
    return types.FunctionType(
        code, function.__globals__, function.__name__, None, function.__closure__
    )


def _own_code(kernel):
    """``kernel.transition`` through a function with a code object of its own, kept on the kernel
    (later runs of the same kernel reuse its compiled code). Every kernel of a class shares its
    ``transition``'s code object: past dynamo's recompile limit further kernels or chain counts
    would silently run eager."""
    cached = getattr(kernel, "_own_transition", None)
    if cached is not None:
        return cached
    method = kernel.transition

    def call(state, noise):
        return method(state, noise)

    own = _own_function(call)
    if hasattr(kernel, "__dict__"):
        kernel._own_transition = own
    return own


def _compile_options(options: dict) -> dict:
    """:func:`torch.compile` options of a compiled step or block: specialised to the chains'
    shapes unless told otherwise; with inductor and neither ``mode`` nor ``options`` given, no
    per-call checks of inductor's own buffers."""
    options = dict(options)
    options.setdefault("dynamic", False)  # a run keeps its shapes: specialised code
    if options.get("backend", "inductor") == "inductor" and "mode" not in options:
        options.setdefault("options", dict(_INDUCTOR_OPTIONS))
    return options


class CompiledStep:
    """A kernel's :meth:`~Kernel.step` with its transition compiled by :func:`torch.compile`
    (``fullgraph=True``): ``compiled(state, generator)`` draws the step's randomness eagerly
    from ``generator`` (:meth:`~Kernel.draw`) and runs the compiled :meth:`~Kernel.transition`,
    so it gives the chains of ``kernel.step`` with the same generator up to floating-point
    reassociation.

    The first call compiles (per input shape and dtype). If compiling or running the compiled
    transition fails (a target dynamo cannot trace, a missing C++ compiler, ...), that call and
    every later one run the eager transition with the same draws, so the chains are unchanged;
    :attr:`fallback` holds the error. A kernel that does not separate its draws (no
    :meth:`~Kernel.draw`) runs its eager step.

    Args:
        kernel: the kernel.
        **options: for :func:`torch.compile` (``backend``, ``mode``, ``dynamic``, ...). With
            inductor (the default backend) and neither ``mode`` nor ``options`` given, inductor
            skips its per-call checks of its own buffers' shapes; ``dynamic`` defaults to False
            (code specialised to the chains' shape, recompiled for another one).

    Example:
        >>> from normflows_sci.distributions import StandardNormal
        >>> kernel = MALA(StandardNormal(2), step_size=0.5)
        >>> state = kernel.init(torch.zeros(4, 2))
        >>> compiled = kernel.compiled_step(backend="eager")
        >>> a, _ = compiled(state, torch.Generator().manual_seed(0))
        >>> b, _ = kernel.step(state, torch.Generator().manual_seed(0))
        >>> torch.allclose(a.x, b.x), compiled.fallback is None
        (True, True)
    """

    def __init__(self, kernel: Kernel, **options):
        self.kernel = kernel
        self.separable = self.separates(kernel)
        self.options = _compile_options(options)
        self.transition = (
            torch.compile(_own_code(kernel), fullgraph=True, **self.options)
            if self.separable
            else None
        )
        self.fallback: Exception | None = None

    @staticmethod
    def separates(kernel) -> bool:
        """Whether ``kernel`` (any object with a ``step``; every :class:`Kernel` does) separates
        its draws from its transition (has :meth:`~Kernel.draw` and :meth:`~Kernel.transition`)."""
        return all(callable(getattr(kernel, name, None)) for name in ("draw", "transition"))

    def __call__(self, state, generator: torch.Generator | None = None):
        if not self.separable:
            return self.kernel.step(state, generator)
        noise = self.kernel.draw(state, generator)
        if self.fallback is None:
            try:
                return self.transition(state, noise)
            except Exception as error:  # any compiler failure: the eager transition
                self.fallback = error
        return self.kernel.transition(state, noise)


def _map_draws(function, *draws):
    """``function`` applied leafwise to one or more draws of the same :meth:`Kernel.draw`
    structure (tensors inside tuples and named tuples; ``None`` stays ``None``)."""
    first = draws[0]
    if first is None:
        return None
    if isinstance(first, Tensor):
        return function(*draws)
    parts = [_map_draws(function, *items) for items in zip(*draws)]
    return type(first)(*parts) if hasattr(type(first), "_fields") else type(first)(parts)


def _block_steps(kernel, length: int, stride: int | None, state, noise: tuple, totals: dict):
    """The body of a :class:`StepBlock`: ``length`` transitions from the stacked draws
    ``noise`` (:meth:`Kernel.draw_steps`)."""
    kept = []
    for i in range(length):
        state, info = kernel.transition(state, _map_draws(operator.itemgetter(i), noise))
        totals = dict(totals)
        for kind, accepted in kernel.acceptance(info).items():
            totals[kind] = totals[kind] + accepted.to(torch.float64)
        if stride is not None and (i + 1) % stride == 0:
            position, log_prob = kernel.position(state), kernel.position_log_prob(state)
            kept.append((position.detach().clone(), log_prob.detach().clone()))
    return state, totals, tuple(kept)


def _own_block(kernel, length: int, stride: int | None):
    """:func:`_block_steps` of ``kernel`` with ``length`` and ``stride`` fixed, through a code
    object of its own per kernel and configuration, kept on the kernel (see :func:`_own_code`)."""
    blocks = kernel.__dict__.setdefault("_own_blocks", {}) if hasattr(kernel, "__dict__") else {}
    if (length, stride) not in blocks:

        def call(state, noise, totals):
            return _block_steps(kernel, length, stride, state, noise, totals)

        blocks[length, stride] = _own_function(call)
    return blocks[length, stride]


class StepBlock:
    """``length`` consecutive steps of a kernel in one call (the production phase of
    :func:`~normflows_sci.samplers.run`): the draws of every step first
    (:meth:`~Kernel.draw_steps` on the block's first state, in the generator order of single
    steps, since the draws depend on the state's shapes only), then the transitions one after
    the other as one function, compiled by :func:`torch.compile` (``fullgraph=True``) or eager,
    summing each move kind's per-chain acceptance and keeping the position every ``stride``
    steps.

    An eager block gives the chains of ``length`` calls of ``kernel.step`` with the same
    generator bit for bit; a compiled one up to floating-point reassociation. As with
    :class:`CompiledStep`, a block whose compilation fails runs eagerly from then on (same
    draws, same chains) and :attr:`fallback` holds the error.

    Args:
        kernel: a kernel that :meth:`supports` blocks.
        length: steps per call.
        stride: keep the position and its log-density after every ``stride``-th step of the
            block (None: keep nothing).
        compile: None (eager), or :func:`torch.compile` options (defaults as in
            :class:`CompiledStep`).

    Calling ``block(state, generator, totals)`` returns ``(state, totals, kept)``: the state
    after the block; ``totals`` (a dict mapping every move kind of :meth:`~Kernel.acceptance`
    to per-chain float64 sums ``(chains,)``) with the block's decisions added step by step; and
    ``kept``, a tuple of ``(position, log_prob)`` pairs (detached copies), one per ``stride``
    steps.

    Example:
        >>> from normflows_sci.distributions import StandardNormal
        >>> kernel = MALA(StandardNormal(2), step_size=0.5)
        >>> state = kernel.init(torch.zeros(4, 2))
        >>> block = StepBlock(kernel, 3, stride=1)
        >>> after, totals, kept = block(state, torch.Generator().manual_seed(0),
        ...                             {"local": torch.zeros(4, dtype=torch.float64)})
        >>> generator, single = torch.Generator().manual_seed(0), state
        >>> for _ in range(3):
        ...     single, _ = kernel.step(single, generator)
        >>> torch.equal(after.x, single.x), torch.equal(kept[-1][0], single.x), len(kept)
        (True, True, 3)
    """

    def __init__(self, kernel, length: int, stride: int | None = None, compile: dict | None = None):
        if not self.supports(kernel):
            raise TypeError(
                f"kernel {type(kernel).__name__} cannot run in blocks: it must separate its "
                "draws (draw and transition), keep Kernel.step and have shape_only_draws"
            )
        self.kernel = kernel
        self.length = check_int("length", length)
        self.stride = None if stride is None else check_int("stride", stride)
        self.compiled = None
        if compile is not None:
            options = _compile_options(compile)
            self.compiled = torch.compile(
                _own_block(kernel, self.length, self.stride), fullgraph=True, **options
            )
        self.fallback: Exception | None = None

    @staticmethod
    def supports(kernel) -> bool:
        """Whether ``kernel`` can run in blocks: it separates its draws
        (:meth:`CompiledStep.separates`), its step is :meth:`Kernel.step` (a kernel overriding
        ``step`` runs step by step) and its draws depend on shapes only
        (:attr:`Kernel.shape_only_draws`)."""
        return (
            CompiledStep.separates(kernel)
            and getattr(type(kernel), "step", None) is Kernel.step
            and getattr(kernel, "shape_only_draws", False) is True
        )

    def __call__(self, state, generator: torch.Generator | None, totals: dict):
        kernel = self.kernel
        noise = kernel.draw_steps(state, generator, self.length)
        if self.compiled is not None and self.fallback is None:
            try:
                return self.compiled(state, noise, totals)
            except Exception as error:  # any compiler failure: the eager block
                self.fallback = error
        return _block_steps(kernel, self.length, self.stride, state, noise, totals)
