"""The sampling loop: warm-up (adaptation), production, thinning, progress, checkpoints."""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from normflows_sci.io import atomic_write

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


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _save(path, payload: dict) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write(path, buffer.getvalue())


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
            the same result as an uninterrupted run.
        trace_device: where kept samples are stored (default: the chains' device).

    Returns:
        A :class:`Trace`.

    Example:
        >>> from normflows_sci.distributions import StandardNormal
        >>> from normflows_sci.samplers import MALA
        >>> trace = run(MALA(StandardNormal(2)), torch.zeros(8, 2), 20, num_warmup=10, seed=0)
        >>> trace.samples.shape, trace.acceptance["local"].shape
        (torch.Size([20, 8, 2]), torch.Size([8]))
    """
    num_steps = _positive_int("num_steps", num_steps, 0)
    num_warmup = _positive_int("num_warmup", num_warmup, 0)
    thin = _positive_int("thin", thin)
    checkpoint_every = _positive_int("checkpoint_every", checkpoint_every)
    state = kernel.init(x0) if isinstance(x0, Tensor) else x0
    device = kernel.position(state).device
    if generator is None:
        generator = torch.Generator(device=device)
        generator.manual_seed(torch.seed() % 2**62 if seed is None else seed)
    memory: dict = {}
    kept, kept_log_prob = [], []
    sums: dict[str, dict[str, Tensor]] = {"warmup": {}, "production": {}}
    seconds = {"warmup": 0.0, "production": 0.0}
    start_step = 0
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        saved = torch.load(checkpoint, weights_only=False, map_location=device)
        if saved["num_warmup"] != num_warmup or saved["thin"] != thin:
            raise ValueError(
                f"checkpoint {os.fspath(checkpoint)!r} was written with num_warmup="
                f"{saved['num_warmup']} and thin={saved['thin']}, not {num_warmup} and {thin}"
            )
        state, memory, kept, kept_log_prob = (
            saved["state"],
            saved["memory"],
            saved["kept"],
            saved["kept_log_prob"],
        )
        sums, seconds, start_step = saved["sums"], saved["seconds"], saved["step"]
        generator.set_state(saved["generator"])
        if "kernel" in saved:
            kernel.load_state_dict(saved["kernel"])
    total = num_warmup + num_steps
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start_step, desc="sampling", leave=False)
    clock = time.perf_counter()
    for step in range(start_step, total):
        phase = "warmup" if step < num_warmup else "production"
        state, info = kernel.step(state, generator)
        for kind, accepted in kernel.acceptance(info).items():
            previous = sums[phase].get(kind, 0.0)
            sums[phase][kind] = previous + accepted.to(torch.float64)
        if phase == "warmup":
            state = kernel.adapt(state, info, step, num_warmup, memory)
        elif (step - num_warmup + 1) % thin == 0:
            position = kernel.position(state)
            log_prob = kernel.position_log_prob(state)
            if trace_device is not None:
                position, log_prob = position.to(trace_device), log_prob.to(trace_device)
            kept.append(position.detach().clone())
            kept_log_prob.append(log_prob.detach().clone())
        now = time.perf_counter()
        seconds[phase] += now - clock
        clock = now
        if bar is not None:
            bar.update(1)
        if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == total):
            payload = dict(
                state=state,
                memory=memory,
                kept=kept,
                kept_log_prob=kept_log_prob,
                sums=sums,
                seconds=seconds,
                step=step + 1,
                generator=generator.get_state(),
                num_warmup=num_warmup,
                thin=thin,
            )
            if hasattr(kernel, "state_dict"):
                payload["kernel"] = kernel.state_dict()
            _save(checkpoint, payload)
            clock = time.perf_counter()
    if bar is not None:
        bar.close()
    position = kernel.position(state)
    chains = position.shape[0]
    if kept:
        samples, log_probs = torch.stack(kept), torch.stack(kept_log_prob)
    else:
        samples = position.new_empty((0, *position.shape))
        log_probs = position.new_empty((0, chains))

    def rates(phase: str, count: int) -> dict[str, Tensor]:
        return {k: (v / max(count, 1)).to(position.dtype) for k, v in sums[phase].items()}

    return Trace(
        samples=samples,
        log_prob=log_probs,
        acceptance=rates("production", num_steps),
        warmup_acceptance=rates("warmup", num_warmup),
        state=state,
        seconds=seconds["production"],
        warmup_seconds=seconds["warmup"],
        thin=thin,
    )
