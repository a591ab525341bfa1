"""The sampling loop: warm-up (adaptation), production, thinning, progress, checkpoints."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from normflows_sci.checks import check_int
from normflows_sci.samplers._checkpoint import load_checkpoint, save_checkpoint
from normflows_sci.samplers.kernels import CompiledStep, StepBlock

__all__ = ["Trace", "run"]


@dataclass
class Trace:
    """The output of :func:`run`.

    Attributes:
        samples: ``(kept, chains, *event)`` positions after each kept production step.
        log_prob: ``(kept, chains)`` target log-densities at those positions.
        acceptance: per-chain production acceptance rates by move kind (``"local"`` for
            RWMH/MALA/HMC/NeuTra, ``"global"`` for flow proposals, ``"swap"`` for tempering),
            each ``(chains,)``.
        warmup_acceptance: the same over warm-up.
        state: the final kernel state (continue with ``run(kernel, trace.state, ...)``).
        seconds: wall time of the production phase; ``warmup_seconds`` of warm-up.
    """

    samples: Tensor
    log_prob: Tensor
    acceptance: dict[str, Tensor]
    warmup_acceptance: dict[str, Tensor]
    state: object
    seconds: float
    warmup_seconds: float
    thin: int
    extras: dict = field(default_factory=dict)

    @property
    def acceptance_rate(self) -> float:
        """Mean production acceptance over chains and move kinds (one number for a quick look)."""
        rates = [float(v.mean()) for v in self.acceptance.values()]
        return sum(rates) / len(rates) if rates else float("nan")


class _Plan(NamedTuple):
    """The validated schedule of a :func:`run`."""

    num_steps: int
    num_warmup: int
    thin: int
    checkpoint: str | os.PathLike | None
    checkpoint_every: int
    trace_device: torch.device | str | None
    compile: bool | str | dict = "auto"

    @property
    def total(self) -> int:
        return self.num_warmup + self.num_steps

    @property
    def options(self) -> dict:
        """What a checkpoint must have been written with to be resumed."""
        return dict(num_warmup=self.num_warmup, thin=self.thin)


_STUCK_MIN_STEPS = 20
_STUCK_FRACTION = 0.1
_STUCK_ADVICE = {
    "local": "a smaller step size or a longer warm-up (num_warmup)",
    "global": "a better proposal flow (train it longer, or on samples covering the target)",
    "swap": "closer temperatures (more rungs on the ladder)",
}


# "auto" compiles the step when the eager steps' pace projects the rest of the run to take longer
# than this: compiling a step takes seconds (up to about twenty on a busy CPU), and the compiled
# step is typically several times faster than the eager one.
_COMPILE_PAYS_SECONDS = 60.0
_PACE_STEPS = 5  # eager steps timed (after the first) to project the run's length
# Production steps per block (StepBlock): a block pays the per-call costs of a step (Python,
# dynamo's guards, the compiled code's wrapper) once; more steps per block compile for longer.
_BLOCK_STEPS = 16


def _check_compile(compile) -> bool | str | dict:
    if compile is True or compile is False or compile == "auto" or isinstance(compile, dict):
        return compile
    raise ValueError(
        f"compile must be True, False, 'auto' or a dict of torch.compile options, got {compile!r}"
    )


class _Stepper:
    """The step function of a run: ``kernel.step``, or its :class:`CompiledStep` (same draws,
    same chains up to floating-point reassociation). ``compile="auto"`` starts eagerly and
    switches to the compiled step when ``_PACE_STEPS`` eager steps project the remaining steps
    to take over ``_COMPILE_PAYS_SECONDS``; the compiled step's pace is then timed the same way
    (after its first, compiling call) and the eager step comes back if it was faster (e.g. a
    cheap target on many chains, where the eager operations are already large). On an
    accelerator the device is synchronised at the start and end of each timing (four times per
    run, not per step), so the pace is the device's.

    Production then runs in blocks of steps (:meth:`block`, where the kernel :meth:`supports
    <StepBlock.supports>` them) in the mode the steps settled on. A compiled block is a second
    compilation, as long as the step's again or longer: ``compile=True`` (or options) always
    makes it; ``"auto"`` when the compiled step's pace projects the remaining steps to take over
    ``_COMPILE_PAYS_SECONDS`` (the rule that compiled the step), and otherwise goes on with the
    compiled step alone. Eager blocks compile nothing."""

    def __init__(self, kernel, compile, steps: int):
        self.kernel, self.remaining = kernel, steps
        self.step = kernel.step
        if compile is True or isinstance(compile, dict):
            self.step = CompiledStep(kernel, **(compile if isinstance(compile, dict) else {}))
        self.pacing = compile == "auto" and CompiledStep.separates(kernel)
        self.count, self.clock, self.eager_pace = 0, 0.0, None
        self.blocks: dict[tuple, StepBlock] = {}
        self.supports_blocks = StepBlock.supports(kernel)
        self.compiles_blocks = compile is True or isinstance(compile, dict)

    def __call__(self, state, generator):
        if not self.pacing:
            return self.step(state, generator)
        self.count += 1
        # Steps 2 to 6 time the eager step, 8 to 12 the compiled one (7 compiles).
        if self.count in (2, _PACE_STEPS + 3):
            _synchronize(state)
            self.clock = time.perf_counter()
        elif self.count in (_PACE_STEPS + 2, 2 * _PACE_STEPS + 3):
            _synchronize(state)
            pace = (time.perf_counter() - self.clock) / _PACE_STEPS
            if self.eager_pace is None:
                self.eager_pace = pace
                if pace * (self.remaining - self.count) > _COMPILE_PAYS_SECONDS:
                    self.step = CompiledStep(self.kernel)
                else:
                    self.pacing = False
            else:
                self.pacing = False
                if pace >= self.eager_pace:
                    self.step = self.kernel.step
                else:
                    remaining = self.remaining - self.count
                    self.compiles_blocks = pace * remaining > _COMPILE_PAYS_SECONDS
        return self.step(state, generator)

    @property
    def in_blocks(self) -> bool:
        """Whether production runs in blocks from now on (never while pacing)."""
        if self.pacing or not self.supports_blocks:
            return False
        step = self.step
        compiled = isinstance(step, CompiledStep) and step.separable and step.fallback is None
        return self.compiles_blocks or not compiled

    def block(self, length: int, stride: int | None) -> StepBlock:
        """The :class:`StepBlock` of ``length`` steps keeping every ``stride``-th, run like the
        steps (only when :attr:`in_blocks`): compiled with the step's options when the run
        compiles its step (unless that step fell back to eager), eager otherwise."""
        compiled = self.step if isinstance(self.step, CompiledStep) else None
        options = None if compiled is None or compiled.fallback else compiled.options
        key = (length, stride, options is None)
        if key not in self.blocks:
            self.blocks[key] = StepBlock(self.kernel, length, stride, compile=options)
        return self.blocks[key]


def _synchronize(state) -> None:
    """Wait for the accelerator holding the chains of ``state`` (nothing on a CPU)."""
    device = _state_device(state)
    if device is not None and device.type != "cpu" and hasattr(torch, "accelerator"):
        torch.accelerator.synchronize(device)


def _state_device(state) -> torch.device | None:
    """The device of the first tensor of a (nested) kernel state, None without one."""
    for item in state if isinstance(state, tuple) else (state,):
        found = item.device if isinstance(item, Tensor) else None
        if found is None and isinstance(item, tuple):
            found = _state_device(item)
        if found is not None:
            return found
    return None


def _warn_stuck(rates: dict[str, Tensor], num_steps: int) -> None:
    """Warn about move kinds that at least ``_STUCK_FRACTION`` of the chains (at least one) never
    accepted over a production of at least ``_STUCK_MIN_STEPS`` steps."""
    if num_steps < _STUCK_MIN_STEPS:
        return
    for kind, rate in rates.items():
        stuck, chains = int((rate == 0).sum()), rate.numel()
        if stuck and stuck >= _STUCK_FRACTION * chains:
            advice = _STUCK_ADVICE.get(kind, "a smaller step size or a longer warm-up")
            warnings.warn(
                f"{stuck} of {chains} chains accepted no {kind!r} move in {num_steps} production "
                f"steps: those chains did not move by such moves, and their samples do not "
                f"represent the target; try {advice}",
                RuntimeWarning,
                stacklevel=3,
            )


def _step_sizes(state):
    """Every ``step_size`` tensor of a kernel state (NamedTuples, nested)."""
    if isinstance(state, tuple) and hasattr(type(state), "_fields"):
        for name, value in zip(state._fields, state):
            if name == "step_size" and isinstance(value, Tensor):
                yield value
            else:
                yield from _step_sizes(value)


def _check_adapted(state) -> None:
    """After warm-up: every adapted step size must be finite and not underflowed (below the
    smallest normal number of its dtype, where chains no longer move)."""
    for step_size in _step_sizes(state):
        tiny = torch.finfo(step_size.dtype).tiny
        bad = ~(torch.isfinite(step_size) & (step_size >= tiny))
        count = int(bad.sum())
        if count:
            values = ", ".join(f"{v:.3g}" for v in sorted(set(step_size[bad].tolist()))[:3])
            raise ValueError(
                f"warm-up drove the step size of {count} of {step_size.numel()} chains to "
                f"{values}: a step size that underflows (below {tiny:.3g} in "
                f"{step_size.dtype}) means every proposal was rejected (chains stuck outside "
                "the target's support, or a degenerate target), inf or nan that every proposal "
                "was accepted (a flat, improper target); check the target and the starting "
                "points, or start from another step size"
            )


def _save(path, kernel, state, step: int, generator, record: dict, options: dict) -> None:
    # Kept samples are stored stacked: one tensor each, however long the run.
    position, kept, kept_log_prob = kernel.position(state), record["kept"], record["kept_log_prob"]
    stacked = dict(
        kept=torch.stack(kept) if kept else position.new_empty((0, *position.shape)),
        kept_log_prob=torch.stack(kept_log_prob)
        if kept
        else position.new_empty((0, len(position))),
    )
    payload = dict(state=state, step=step, generator=generator.get_state(), **options)
    payload.update({**record, **stacked})
    if hasattr(kernel, "state_dict"):
        payload["kernel"] = kernel.state_dict()
    save_checkpoint(path, payload)


def _check_record(saved: dict, fail, position: Tensor, expected: int) -> None:
    """The progress entries of a checkpoint: ``expected`` kept samples shaped like ``position``,
    per-chain acceptance sums, timings and the adaptation memory."""
    chains = position.shape[0]
    for name, shape in (("kept", position.shape), ("kept_log_prob", (chains,))):
        values = saved.get(name)
        if not isinstance(values, Tensor) or values.shape != (expected, *shape):
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            fail(
                f"{name} must be a tensor of shape {(expected, *shape)} at step {saved['step']} "
                f"({expected} kept samples), got {got}"
            )
    phases = {"warmup", "production"}
    sums, seconds = saved.get("sums"), saved.get("seconds")
    if not isinstance(sums, dict) or set(sums) != phases:
        fail(f"sums must be a dict with keys {sorted(phases)}")
    for phase, counts in sums.items():
        if not isinstance(counts, dict) or any(
            not isinstance(v, Tensor) or v.shape != (chains,) for v in counts.values()
        ):
            fail(f"sums[{phase!r}] must map move kinds to tensors of shape ({chains},)")
    if not isinstance(seconds, dict) or set(seconds) != phases:
        fail(f"seconds must be a dict with keys {sorted(phases)}")
    if any(not isinstance(v, float) for v in seconds.values()):
        fail("seconds must hold numbers")
    if not isinstance(saved.get("memory"), dict):
        fail("memory must be a dict")


def read_resume(path, kernel, state, generator, options: dict, total: int) -> tuple:
    """``(saved, fail)``: the checkpoint at ``path`` read and validated for a run that starts
    from ``state`` with ``options`` (``num_warmup``, ``thin``), ``total`` steps and
    ``generator``; nothing is restored yet. Every problem is a ``ValueError`` naming the file."""
    device = kernel.position(state).device
    saved, fail = load_checkpoint(path, state, device=device)
    if any(saved.get(key) != value for key, value in options.items()):
        written = ", ".join(f"{k}={saved.get(k)!r}" for k in options)
        wanted = ", ".join(f"{k}={v!r}" for k, v in options.items())
        fail(f"it was written with {written}, not {wanted}")
    step = saved.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= total:
        fail(f"step is {step!r}, expected an integer in [0, {total}] (num_warmup + num_steps)")
    position = kernel.position(saved["state"])
    _check_record(saved, fail, position, max(step - options["num_warmup"], 0) // options["thin"])
    random_state, current = saved.get("generator"), generator.get_state()
    if not isinstance(random_state, Tensor) or random_state.shape != current.shape:
        fail(f"generator must be a tensor of shape {tuple(current.shape)} (this generator's)")
    return saved, fail


def _resume(path, kernel, state, generator, options: dict, total: int, trace_device) -> tuple:
    """``(state, record, step)`` saved at ``path`` (see :func:`read_resume`), with the
    generator and the kernel's parameters restored."""
    saved, fail = read_resume(path, kernel, state, generator, options, total)
    generator.set_state(saved["generator"].to(device="cpu", dtype=torch.uint8))
    if "kernel" in saved:
        try:
            kernel.load_state_dict(saved["kernel"])
        except (RuntimeError, KeyError, ValueError, TypeError) as error:
            fail(f"the kernel's saved parameters do not fit this kernel: {error}")
    record = {key: saved[key] for key in ("memory", "sums", "seconds")}
    for key in ("kept", "kept_log_prob"):
        values = saved[key] if trace_device is None else saved[key].to(trace_device)
        record[key] = list(values.unbind(0))
    return saved["state"], record, saved["step"]


def run(
    kernel,
    x0,
    num_steps: int,
    *,
    num_warmup: int = 0,
    thin: int = 1,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    resume: bool = False,
    trace_device: torch.device | str | None = None,
    compile: bool | str | dict = "auto",
):
    """Run ``kernel`` for ``num_warmup`` adaptation steps, then ``num_steps`` production steps.

    Args:
        kernel: an MCMC kernel (``init``/``step``/``adapt``).
        x0: initial positions ``(chains, *event)``, or a kernel state (e.g. ``trace.state``) to
            continue from.
        num_steps: production steps; every ``thin``-th is kept.
        num_warmup: warm-up steps: the kernel adapts (step sizes, mass matrix, flow training)
            and nothing is kept. Production uses the frozen kernel, so it is a valid Markov chain.
        thin: keep every ``thin``-th production step.
        seed, generator: randomness (a generator on the chains' device wins over ``seed``).
        progress: tqdm progress bar.
        checkpoint: file for the full sampler state (atomic writes every ``checkpoint_every``
            steps and at the end); with ``resume=True`` an existing checkpoint is continued, giving
            the same result as an uninterrupted run. The file holds plain data only (tensors,
            numbers, containers; kernel states by class name) and is read with
            ``weights_only=True``, so resuming a crafted file cannot run code; a file that is
            damaged, foreign, of an older format, or written by another kernel, number of chains,
            event shape, dtype, ``num_warmup`` or ``thin`` is refused.
        trace_device: where kept samples are stored (default: the chains' device).
        compile: ``"auto"`` (default): eager, switching to the compiled step
            (:meth:`~normflows_sci.samplers.Kernel.compiled_step`: same draws, same chains up to
            floating-point reassociation) when the first steps project the run past a minute,
            and back if it is slower; machine-dependent, so pass ``True``/``False`` (or a dict
            of :func:`torch.compile` options) for runs that must repeat bit for bit. Production
            runs in blocks of steps (:class:`~normflows_sci.samplers.kernels.StepBlock`, compiled
            as the step is) where the kernel allows it: the same draws and chains as single
            steps, with fewer per-step costs.

    Returns:
        A :class:`Trace`.

    Raises:
        ValueError: bad arguments, a checkpoint that does not fit (naming the file and the
            mismatch), or a warm-up that drove a step size out of range: infinite or NaN (every
            move accepted: a flat, improper target) or underflowed below the dtype's smallest
            normal number (every move rejected), checked once when warm-up ends.

    Warns:
        RuntimeWarning: chains that never moved: with at least 20 production steps, when at
            least 10% of the chains accepted no move of some kind (local, global, swap); the
            warning names the kind, the count and a remedy. Their samples repeat one point.

    Example:
        >>> from normflows_sci.distributions import StandardNormal
        >>> from normflows_sci.samplers import MALA
        >>> trace = run(MALA(StandardNormal(2)), torch.zeros(8, 2), 20, num_warmup=10, seed=0)
        >>> trace.samples.shape, trace.acceptance["local"].shape
        (torch.Size([20, 8, 2]), torch.Size([8]))
    """
    plan = _Plan(
        num_steps=check_int("num_steps", num_steps, minimum=0),
        num_warmup=check_int("num_warmup", num_warmup, minimum=0),
        thin=check_int("thin", thin),
        checkpoint=checkpoint,
        checkpoint_every=check_int("checkpoint_every", checkpoint_every),
        trace_device=trace_device,
        compile=_check_compile(compile),
    )
    state = kernel.init(x0) if isinstance(x0, Tensor) else x0
    if generator is None:
        generator = torch.Generator(device=kernel.position(state).device)
        generator.manual_seed(torch.seed() % 2**62 if seed is None else seed)
    record, start_step = _new_record(), 0
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        state, record, start_step = _resume(
            checkpoint, kernel, state, generator, plan.options, plan.total, trace_device
        )
    state = _sample(kernel, state, generator, record, plan, start_step, progress)
    return _trace(kernel, state, record, plan)


def _new_record() -> dict:
    """The progress of a run (what a checkpoint saves besides the state): the adaptation memory,
    kept samples, per-chain acceptance sums and timings by phase."""
    return dict(
        memory={},
        kept=[],
        kept_log_prob=[],
        sums={"warmup": {}, "production": {}},
        seconds={"warmup": 0.0, "production": 0.0},
    )


def _sample(kernel, state, generator, record: dict, plan: _Plan, start_step: int, progress: bool):
    """Steps ``start_step`` to ``plan.total`` of the run: warm-up (adapting, step by step), then
    production (keeping every ``thin``-th position; in blocks of steps where :func:`_block`
    allows), with checkpoints. Returns the final state."""
    seconds, total = record["seconds"], plan.total
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start_step, desc="sampling", leave=False)
    stepper = _Stepper(kernel, plan.compile, total - start_step)
    clock, step = time.perf_counter(), start_step
    while step < total:
        phase = "warmup" if step < plan.num_warmup else "production"
        block = _block(plan, step, record["sums"], stepper)
        if block is None:
            state = _single_step(kernel, stepper, state, generator, record, plan, step)
            length = 1
        else:
            state = _block_run(kernel, stepper, state, generator, record, plan, step, *block)
            length = block[0]
        step += length
        now = time.perf_counter()
        seconds[phase] += now - clock
        clock = now
        if bar is not None:
            bar.update(length)
        if plan.checkpoint is not None and (step % plan.checkpoint_every == 0 or step == total):
            _save(plan.checkpoint, kernel, state, step, generator, record, plan.options)
            clock = time.perf_counter()
    if bar is not None:
        bar.close()
    return state


def _single_step(kernel, stepper, state, generator, record: dict, plan: _Plan, step: int):
    """Step ``step`` of the run on its own: acceptance sums, warm-up adaptation (and the check
    of the adapted step sizes after the last) or keeping the production sample."""
    num_warmup, phase = plan.num_warmup, "warmup" if step < plan.num_warmup else "production"
    sums = record["sums"][phase]
    state, info = stepper(state, generator)
    for kind, accepted in kernel.acceptance(info).items():
        sums[kind] = sums.get(kind, 0.0) + accepted.to(torch.float64)
    if phase == "warmup":
        state = kernel.adapt(state, info, step, num_warmup, record["memory"])
        if step + 1 == num_warmup:
            _check_adapted(state)
    elif (step - num_warmup + 1) % plan.thin == 0:
        _keep(kernel, state, record, plan.trace_device)
    return state


def _block(plan: _Plan, step: int, sums: dict, stepper) -> tuple[int, int | None] | None:
    """``(length, stride)`` of the :class:`StepBlock` that runs production from ``step``, or
    None for a single step: during warm-up (adaptation is per step), while ``"auto"`` paces the
    steps, before the move kinds' acceptance sums exist (the first production step), and where
    a block of the run's one length would cross a checkpoint or the run's end. One length per
    run (one compilation): ``thin`` up to ``_BLOCK_STEPS`` gives blocks of whole thinning
    periods (``stride = thin``), starting on a period; a longer ``thin`` blocks of
    ``_BLOCK_STEPS`` steps that end at or before its next kept step (``stride`` None)."""
    production, thin = step - plan.num_warmup, plan.thin
    if production < 0 or not sums["production"] or not stepper.in_blocks:
        return None
    if thin <= _BLOCK_STEPS:
        length, stride = thin * (_BLOCK_STEPS // thin), thin
        fits = production % thin == 0
    else:
        length, stride = _BLOCK_STEPS, None
        fits = thin - production % thin >= length
    limit = plan.total - step
    if plan.checkpoint is not None:
        limit = min(limit, plan.checkpoint_every - step % plan.checkpoint_every)
    return (length, stride) if fits and length <= limit and length > 1 else None


def _block_run(kernel, stepper, state, generator, record, plan: _Plan, step, length, stride):
    """Production steps ``step`` to ``step + length`` as one :class:`StepBlock`: the same
    acceptance sums and kept samples as single steps."""
    sums = record["sums"]["production"]
    state, totals, kept = stepper.block(length, stride)(state, generator, sums)
    sums.update(totals)
    for position, log_prob in kept:
        if plan.trace_device is not None:
            position, log_prob = position.to(plan.trace_device), log_prob.to(plan.trace_device)
        record["kept"].append(position)
        record["kept_log_prob"].append(log_prob)
    if stride is None and (step + length - plan.num_warmup) % plan.thin == 0:
        _keep(kernel, state, record, plan.trace_device)
    return state


def _keep(kernel, state, record: dict, trace_device) -> None:
    """Append the state's position and log-density to the kept samples (on ``trace_device``)."""
    position = kernel.position(state)
    log_prob = kernel.position_log_prob(state)
    if trace_device is not None:
        position, log_prob = position.to(trace_device), log_prob.to(trace_device)
    record["kept"].append(position.detach().clone())
    record["kept_log_prob"].append(log_prob.detach().clone())


def _trace(kernel, state, record: dict, plan: _Plan) -> Trace:
    """The :class:`Trace` of a finished run (warning about chains that never moved)."""
    position = kernel.position(state)
    chains = position.shape[0]
    kept, sums = record["kept"], record["sums"]
    if kept:
        samples, log_probs = torch.stack(kept), torch.stack(record["kept_log_prob"])
    else:
        samples = position.new_empty((0, *position.shape))
        log_probs = position.new_empty((0, chains))

    def rates(phase: str, count: int) -> dict[str, Tensor]:
        return {k: (v / max(count, 1)).to(position.dtype) for k, v in sums[phase].items()}

    _warn_stuck(sums["production"], plan.num_steps)
    return Trace(
        samples=samples,
        log_prob=log_probs,
        acceptance=rates("production", plan.num_steps),
        warmup_acceptance=rates("warmup", plan.num_warmup),
        state=state,
        seconds=record["seconds"]["production"],
        warmup_seconds=record["seconds"]["warmup"],
        thin=plan.thin,
    )
