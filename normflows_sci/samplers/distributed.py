"""Many chains across processes: :func:`run_distributed` shards chains over a ``torch.distributed``
process group, runs :func:`~normflows_sci.samplers.run` on every rank with its own random stream,
and gathers the traces.

Each rank is an ordinary single-process :func:`run` on its share of the chains; the only
communication is (1) one exchange of the inputs before sampling, so that inconsistent calls fail on
every rank with the same clear error instead of hanging, (2) for kernels that learn during warm-up
(:class:`~normflows_sci.samplers.AdaptiveFlowMCMC`), the flow's starting parameters are broadcast
from rank 0 and its gradients are averaged over all chains of all ranks before every optimizer
step, so every rank trains the same flow on the same (global) data, and (3) the gather at the end.
The collectives are the device-agnostic ones (``all_gather``, ``all_reduce``, ``broadcast``,
``all_gather_object``), so the same code runs on gloo/CPU and nccl/GPU.

Chains are independent, so spreading them over processes changes nothing statistically; the
one place where chains interact is a kernel that learns from all of them during warm-up. For
:class:`~normflows_sci.samplers.AdaptiveFlowMCMC` (any kernel exposing a ``torch.optim``
optimizer attribute) the flow starts from rank 0's parameters and, before every optimizer
step, its gradients are replaced by the chain-weighted average over ranks
``sum_r (n_r / N) g_r``, i.e. the gradient of the maximum-likelihood loss over all ``N``
chains (Gabrié et al. 2022 train on all walkers); every rank therefore keeps the same flow,
which is checked at the end (a ``RuntimeWarning`` reports any divergence). The ``flow`` of
other flow kernels (IndependentMH, NeuTraHMC) is broadcast from rank 0 so that all ranks use
one proposal. Per-chain step sizes adapt per chain as in :func:`run`; HMC's shared mass
matrix is estimated per rank (pooled over that rank's chains).

Random streams: rank ``r`` seeds its generator with child ``r`` of
``numpy.random.SeedSequence(seed)`` (with one process: ``seed`` itself, as :func:`run`).
``seed=None`` draws one seed on rank 0 and shares it. A ``generator`` is used as given and
must be seeded differently on each rank (checked).

References:
    Gabrié, Rotskoff, Vanden-Eijnden (2022), "Adaptive Monte Carlo augmented with
    normalizing flows", PNAS 119 (the flow is trained on all walkers during warm-up).
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from normflows_sci._distributed import rank_and_world
from normflows_sci.checks import check_int
from normflows_sci.samplers.kernels import Kernel
from normflows_sci.samplers.run import Trace, read_resume, run

__all__ = ["run_distributed"]

_RANK_PLACEHOLDER = "{rank}"


def _rank_seed(seed: int, rank: int) -> int:
    """Rank ``rank``'s seed: child ``rank`` of ``numpy.random.SeedSequence(seed)`` (independent
    streams; the same for a given ``(seed, rank)`` whatever the world size)."""
    state = np.random.SeedSequence(seed, spawn_key=(rank,)).generate_state(1, np.uint64)
    return int(state[0]) >> 1  # below 2**63: a valid torch seed


def _digest(tensors: Iterable[Tensor]) -> str:
    """SHA-256 of the tensors' shapes, dtypes and bytes: equal only for bitwise-equal tensors."""
    sha = hashlib.sha256()
    for tensor in tensors:
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        sha.update(f"{tuple(tensor.shape)}{tensor.dtype};".encode())
        sha.update(tensor.view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def _module_tensors(module: nn.Module) -> list[Tensor]:
    return [*module.parameters(), *module.buffers()]


def _learners(kernel) -> tuple[list[nn.Module], list[torch.optim.Optimizer]]:
    """The flows (``flow`` attributes) and optimizers of ``kernel`` and its sub-kernels
    (``local``, ``inner``, ...), each once."""
    flows: list[nn.Module] = []
    optimizers: list[torch.optim.Optimizer] = []
    seen: set[int] = set()

    def visit(obj) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        for name, value in vars(obj).items():
            if id(value) in seen:
                continue
            if isinstance(value, torch.optim.Optimizer):
                seen.add(id(value))
                optimizers.append(value)
            elif name == "flow" and isinstance(value, nn.Module):
                seen.add(id(value))
                flows.append(value)
            elif isinstance(value, Kernel):
                visit(value)

    visit(kernel)
    return flows, optimizers


def _comm_device(like: torch.device) -> torch.device:
    """Where tensors must live for the default group's backend (gloo: CPU, nccl: the current
    CUDA device; a multi-device backend takes tensors where they are)."""
    backend = str(torch.distributed.get_backend()).lower()
    if backend == "gloo":
        return torch.device("cpu")
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return like


def _flat_collective(tensors: Sequence[Tensor], collective) -> None:
    """Apply ``collective`` (in place) to ``tensors`` packed into one flat buffer per dtype, and
    copy the result back: one call per dtype instead of one per tensor."""
    groups: dict[torch.dtype, list[Tensor]] = {}
    for tensor in tensors:
        groups.setdefault(tensor.dtype, []).append(tensor)
    for dtype, group in groups.items():
        device = _comm_device(group[0].device)
        wire = torch.uint8 if dtype == torch.bool else dtype  # gloo has no bool reductions
        flat = torch.cat([t.detach().reshape(-1).to(device=device, dtype=wire) for t in group])
        collective(flat)
        offset = 0
        for tensor in group:
            count = tensor.numel()
            chunk = flat[offset : offset + count].reshape(tensor.shape)
            with torch.no_grad():
                tensor.copy_(chunk.to(device=tensor.device, dtype=dtype))
            offset += count


def _broadcast_learners(flows: list[nn.Module], optimizers: list[torch.optim.Optimizer]) -> None:
    """Rank 0's flow parameters and buffers (and every optimizer's parameters) on every rank."""
    tensors: dict[int, Tensor] = {}
    for flow in flows:
        for tensor in _module_tensors(flow):
            tensors[id(tensor)] = tensor
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            for tensor in group["params"]:
                tensors[id(tensor)] = tensor
    if tensors:
        _flat_collective(list(tensors.values()), lambda flat: torch.distributed.broadcast(flat, 0))


@contextmanager
def _averaged_gradients(optimizers: list[torch.optim.Optimizer], weight: float):
    """While active, every ``optimizer.step()`` first replaces each gradient by the
    chain-weighted average over ranks, ``sum_r (n_r / N) g_r``: with a per-rank loss that is a mean
    over the rank's ``n_r`` chains, this is the gradient of the mean over all ``N`` chains, as if
    one process held every chain. Missing gradients count as zero (as in ``fit_flow``)."""

    def hook(optimizer, args, kwargs):
        params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]

        def reduce(flat: Tensor) -> None:
            flat.mul_(weight)
            torch.distributed.all_reduce(flat)

        _flat_collective(grads, reduce)

    handles = [optimizer.register_step_pre_hook(hook) for optimizer in optimizers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _gather_chains(tensor: Tensor, dim: int, counts: Sequence[int]) -> Tensor:
    """Concatenate every rank's ``tensor`` along ``dim`` (rank order); the ranks' sizes along
    ``dim`` are ``counts`` and may differ (padded for the tensor ``all_gather``)."""
    world = len(counts)
    largest = max(counts)
    shape = list(tensor.shape)
    shape[dim] = sum(counts)
    padded_shape = list(tensor.shape)
    padded_shape[dim] = largest
    if math.prod(padded_shape) == 0:  # e.g. no kept samples: the same on every rank
        return tensor.new_empty(shape)
    device = _comm_device(tensor.device)
    padded = tensor.new_zeros(padded_shape, device=device)
    padded.narrow(dim, 0, tensor.shape[dim]).copy_(tensor)
    parts = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    gathered = torch.cat([part.narrow(dim, 0, n) for part, n in zip(parts, counts)], dim)
    return gathered.to(tensor.device)


def _gather_rates(rates: dict[str, Tensor], counts: Sequence[int]) -> dict[str, Tensor]:
    return {kind: _gather_chains(rates[kind], 0, counts) for kind in sorted(rates)}


def _checkpoint_path(checkpoint, rank: int, world: int):
    if checkpoint is None:
        return None
    path = os.fspath(checkpoint)
    if world > 1 and _RANK_PLACEHOLDER not in path:
        raise ValueError(
            f"checkpoint must contain '{_RANK_PLACEHOLDER}' when sampling on {world} processes "
            f"(one file per rank, e.g. 'chains-{_RANK_PLACEHOLDER}.pt'), got {path!r}"
        )
    return path.replace(_RANK_PLACEHOLDER, str(rank))


def _local_extras(rank: int, counts: Sequence[int], seeds: Sequence[int | None]) -> dict:
    start = sum(counts[:rank])
    return dict(
        rank=rank,
        world_size=len(counts),
        chains_per_rank=tuple(counts),
        chain_slice=(start, start + counts[rank]),
        seeds=tuple(seeds),
    )


def _prepare(kernel, x0, split: bool, rank: int, world: int, seed, generator):
    """Everything a rank can check on its own, and the facts other ranks must agree with.

    Returns ``(state, facts)``; ``state`` is the rank's initial kernel state."""
    facts: dict = {"kernel": type(kernel).__qualname__}
    seed = check_int("seed", seed, minimum=0, optional=True)
    if isinstance(x0, Tensor):
        if split:
            if x0.ndim < 1 or x0.shape[0] < world:
                raise ValueError(
                    f"x0 (the global batch, split=True) has {x0.shape[0] if x0.ndim else 0} "
                    f"chains but there are {world} processes: every rank needs at least one chain"
                )
            facts["x0"] = (tuple(x0.shape), str(x0.dtype), _digest([x0]))
            local = torch.tensor_split(x0, world)[rank]
        else:
            local = x0
        state = kernel.init(local)
    else:
        state = x0  # a kernel state (e.g. trace.state): always this rank's own chains
    position = kernel.position(state)
    facts["event"] = (tuple(position.shape[1:]), str(position.dtype))
    facts["chains"] = int(position.shape[0])
    target = getattr(kernel, "target", None)
    if isinstance(target, nn.Module):
        facts["target"] = _digest(_module_tensors(target))
    if generator is not None:
        facts["generator"] = _digest([generator.get_state()])
    elif seed is None and rank == 0:
        facts["seed"] = torch.seed() % 2**62  # one draw, shared, then split by rank
    return state, facts


def _check_resumable(path, kernel, state, generator, num_steps, num_warmup, thin) -> None:
    """The rank's checkpoint, read and validated as :func:`run` will (``ValueError`` naming the
    file): done before the exchange, so that a bad file on one rank fails every rank instead of
    leaving the others waiting in a collective."""
    if generator is None:
        generator = torch.Generator(device=kernel.position(state).device)
    options = dict(num_warmup=num_warmup, thin=thin)
    read_resume(path, kernel, state, generator, options, num_steps + num_warmup)


def _agree(gathered: list[dict]) -> None:
    """Raise the same ValueError on every rank if the ranks were called inconsistently."""
    failures = [(r, f["error"]) for r, f in enumerate(gathered) if "error" in f]
    if failures:
        detail = "; ".join(f"rank {r}: {kind}: {message}" for r, (kind, message) in failures)
        raise ValueError(f"run_distributed inputs were rejected ({detail})")
    same = "must be the same on every rank"
    explanations = {
        "kernel": f"the kernel's type {same}",
        "num_steps": same,
        "num_warmup": same,
        "thin": same,
        "split": same,
        "resume": same,
        "resuming": "with resume=True the checkpoint file must exist on every rank or on none",
        "x0": "with split=True every rank must pass the same global batch x0 (pass split=False "
        "if each rank passes its own shard)",
        "event": f"the chains' event shape and dtype {same}",
        "target": f"the target's parameters {same}",
    }
    for key, why in explanations.items():
        values = [f.get(key) for f in gathered]
        if any(v != values[0] for v in values[1:]):
            # x0 and target are compared by digest: say what differs instead of printing it.
            if key == "x0":
                shapes = [None if v is None else v[:2] for v in values]
                shown = f"(shape, dtype) per rank: {shapes}; the values differ"
            elif key == "target":
                shown = "the values differ"
            else:
                shown = f"per rank: {values}"
            raise ValueError(f"{key} differs across ranks ({why}); {shown}")
    generators = [f.get("generator") for f in gathered]
    if any(g is not None for g in generators):
        if any(g is None for g in generators):
            raise ValueError("pass generator on every rank or on none")
        if len(set(generators)) < len(generators):
            raise ValueError(
                "generator has the same state on two or more ranks, so their chains would use "
                "the same random numbers: seed each rank's generator differently, or pass seed= "
                "and let run_distributed derive one stream per rank"
            )


def run_distributed(
    kernel,
    x0,
    num_steps: int,
    *,
    num_warmup: int = 0,
    thin: int = 1,
    split: bool = True,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    resume: bool = False,
    trace_device: torch.device | str | None = None,
) -> Trace:
    """Run :func:`~normflows_sci.samplers.run` with the chains spread over the processes of the
    default ``torch.distributed`` process group, and gather one :class:`Trace` on every rank.

    Call it on every rank with the same arguments (e.g. under ``torchrun``). Each rank runs its
    own contiguous block of chains with its own random stream; the returned trace holds all
    chains, concatenated in rank order, identically on every rank. Without an initialised process
    group (or with one process) it *is* :func:`run` with the same arguments.

    Learning kernels and random streams: see the module documentation
    (:mod:`normflows_sci.samplers.distributed`); a ``generator`` must be seeded differently on
    each rank (checked).

    Args:
        kernel: an MCMC kernel (``init``/``step``/``adapt``), built identically on every rank.
        x0: with ``split=True`` (default) the *global* batch ``(chains, *event)``, the same on
            every rank; rank ``r`` takes block ``r`` of ``torch.tensor_split(x0, world_size)``
            (sizes differ by at most one), so the gathered chains are in ``x0``'s order. With
            ``split=False`` this rank's own shard (shards may differ in size). A kernel state
            (``trace.state`` of an earlier call) is always this rank's own chains.
        num_steps, num_warmup, thin: as for :func:`run` (the same on every rank).
        split: whether ``x0`` is the global batch (True) or this rank's shard (False).
        seed, generator: randomness, see above.
        progress: progress bar on rank 0.
        checkpoint: per-rank checkpoint file; with more than one process it must contain
            ``{rank}`` (replaced by the rank). ``checkpoint_every``, ``resume``,
            ``trace_device``: as for :func:`run`.

    Returns:
        A :class:`Trace` over all ``N`` chains, the same on every rank (``seconds`` are the
        slowest rank's); ``state`` is this rank's final state (its chains are
        ``extras["chain_slice"]``; pass it back as ``x0`` to continue). ``extras``: ``rank``,
        ``world_size``, ``chains_per_rank``, ``chain_slice``, ``seeds`` (None with a generator).

    Raises:
        ValueError: on every rank, when any rank rejects its inputs (that rank raises its
            original exception) or the ranks disagree (``num_steps``/``num_warmup``/``thin``,
            kernel type, event shape or dtype, a ``split`` ``x0`` that differs, target
            parameters, duplicate generator states, a checkpoint on some ranks only).

    Example (one process: the same as :func:`run`):
        >>> from normflows_sci.distributions import StandardNormal
        >>> from normflows_sci.samplers import MALA
        >>> kernel = MALA(StandardNormal(2))
        >>> trace = run_distributed(kernel, torch.zeros(8, 2), 20, num_warmup=10, seed=0)
        >>> trace.samples.shape, trace.extras["world_size"], trace.extras["chain_slice"]
        (torch.Size([20, 8, 2]), 1, (0, 8))
        >>> plain = run(kernel, torch.zeros(8, 2), 20, num_warmup=10, seed=0)
        >>> torch.equal(trace.samples, plain.samples)
        True
    """
    rank, world = rank_and_world()
    options = dict(num_warmup=num_warmup, thin=thin, checkpoint_every=checkpoint_every)
    options.update(progress=progress and rank == 0, resume=resume, trace_device=trace_device)
    call = _Call(x0, split, seed, generator, checkpoint, resume)
    if world == 1:
        return _run_single(kernel, call, num_steps, options)
    numbers = (num_steps, num_warmup, thin, checkpoint_every)
    state, path, gathered = _exchange_inputs(kernel, call, numbers, rank, world)
    counts, seeds = [f["chains"] for f in gathered], _rank_seeds(call, gathered)
    flows, optimizers, state = _share_learners(kernel, call, rank, world, state)
    with _averaged_gradients(optimizers, counts[rank] / sum(counts)):
        trace = run(kernel, state, num_steps, seed=seeds[rank], generator=generator, checkpoint=path, **options)  # fmt: skip
    return _gather_trace(trace, flows, rank, counts, seeds)


def _rank_seeds(call: _Call, gathered: list[dict]) -> list[int | None]:
    """Every rank's seed (None for all when a generator was given): children of the given seed,
    or of the one rank 0 drew."""
    if call.generator is not None:
        return [None] * len(gathered)
    base = call.seed if call.seed is not None else gathered[0]["seed"]
    return [_rank_seed(base, r) for r in range(len(gathered))]


def _run_single(kernel, call: _Call, num_steps: int, options: dict) -> Trace:
    """One process: :func:`run` itself, with the extras of a one-rank run."""
    path = _checkpoint_path(call.checkpoint, 0, 1)
    generator = call.generator
    trace = run(kernel, call.x0, num_steps, seed=call.seed, generator=generator, checkpoint=path, **options)  # fmt: skip
    chains = int(kernel.position(trace.state).shape[0])
    seeds = [None if generator is not None else call.seed]
    trace.extras.update(_local_extras(0, [chains], seeds))
    return trace


class _Call(NamedTuple):
    """The arguments of a :func:`run_distributed` call that the collective steps need."""

    x0: object
    split: bool
    seed: int | None
    generator: torch.Generator | None
    checkpoint: object
    resume: bool


def _exchange_inputs(kernel, call: _Call, numbers: tuple, rank: int, world: int):
    """Step 1: every rank checks its inputs; the outcome is exchanged before any other
    collective, so a bad call fails on all ranks with one message instead of leaving the others
    waiting. Returns ``(state, checkpoint path, every rank's facts)``."""
    state, facts, path = None, {}, None
    try:
        minimums = (("num_steps", 0), ("num_warmup", 0), ("thin", 1), ("checkpoint_every", 1))
        numbers = tuple(
            check_int(name, value, minimum=minimum)
            for (name, minimum), value in zip(minimums, numbers)
        )
        path = _checkpoint_path(call.checkpoint, rank, world)
        state, facts = _prepare(kernel, call.x0, call.split, rank, world, call.seed, call.generator)
        facts.update(zip(("num_steps", "num_warmup", "thin"), numbers))
        facts.update(split=bool(call.split), resume=bool(call.resume))
        facts["resuming"] = bool(call.resume and path is not None and os.path.exists(path))
        if facts["resuming"]:
            _check_resumable(path, kernel, state, call.generator, *numbers[:3])
    except Exception as error:  # reported on every rank by _agree
        facts = {"error": (type(error).__name__, str(error))}
        local_error = error
    else:
        local_error = None
    gathered: list = [None] * world
    torch.distributed.all_gather_object(gathered, facts)
    try:
        _agree(gathered)
    except ValueError as error:
        if local_error is not None:
            raise local_error from error
        raise
    return state, path, gathered


def _share_learners(kernel, call: _Call, rank: int, world: int, state):
    """Step 2, for learning kernels: one flow for all ranks (rank 0's parameters, and those of
    every optimizer), trained on every rank's chains. Returns ``(flows, optimizers, state)``."""
    flows, optimizers = _learners(kernel)
    if flows or optimizers:
        _broadcast_learners(flows, optimizers)
        if isinstance(call.x0, Tensor):
            # init may have set data-dependent parameters (ActNorm) from the local shard and
            # cached flow densities; start again from the broadcast flow.
            local = torch.tensor_split(call.x0, world)[rank] if call.split else call.x0
            state = kernel.init(local)
    return flows, optimizers, state


def _gather_trace(trace: Trace, flows, rank: int, counts: list, seeds: list) -> Trace:
    """Step 3: one trace with every chain, in rank order, on every rank (checking that the ranks
    finished alike and kept the same flow)."""
    world = len(counts)
    summary = dict(
        kept=int(trace.samples.shape[0]),
        acceptance=sorted(trace.acceptance),
        warmup_acceptance=sorted(trace.warmup_acceptance),
        seconds=(trace.seconds, trace.warmup_seconds),
        flows=[_digest(_module_tensors(flow)) for flow in flows],
    )
    summaries: list = [None] * world
    torch.distributed.all_gather_object(summaries, summary)
    for key in ("kept", "acceptance", "warmup_acceptance"):
        if any(s[key] != summaries[0][key] for s in summaries):
            raise RuntimeError(
                f"ranks finished with different {key}: {[s[key] for s in summaries]}"
            )
    if any(s["flows"] != summaries[0]["flows"] for s in summaries):
        warnings.warn(
            "the kernel's flow parameters differ across ranks after sampling (e.g. a "
            "non-deterministic operation or data-dependent state outside the optimizer); each "
            "rank's chains are still valid for the target, but ranks used different proposals",
            RuntimeWarning,
            stacklevel=3,
        )
    extras = {**trace.extras, **_local_extras(rank, counts, seeds)}
    extras["seconds_per_rank"] = tuple(s["seconds"][0] for s in summaries)
    return Trace(
        samples=_gather_chains(trace.samples, 1, counts),
        log_prob=_gather_chains(trace.log_prob, 1, counts),
        acceptance=_gather_rates(trace.acceptance, counts),
        warmup_acceptance=_gather_rates(trace.warmup_acceptance, counts),
        state=trace.state,
        seconds=max(s["seconds"][0] for s in summaries),
        warmup_seconds=max(s["seconds"][1] for s in summaries),
        thin=trace.thin,
        extras=extras,
    )
