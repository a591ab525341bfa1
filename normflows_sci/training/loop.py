"""Maximum-likelihood training loop: validation split, early stopping, schedules, clipping,
checkpoint/resume, progress bar, and data parallelism across processes (torch.distributed)."""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from normflows_sci._optim import adamw
from normflows_sci.io import MAX_WEIGHTS_BYTES, atomic_write, data_fingerprint, read_torch

__all__ = ["fit_flow", "SCHEDULES", "MAX_CHECKPOINT_BYTES"]

SCHEDULES = ("cosine", "plateau", "constant")
# Largest checkpoint file read on resume (weights, two Adam moments and the best weights).
MAX_CHECKPOINT_BYTES = 4 * MAX_WEIGHTS_BYTES
# What a checkpoint holds, and the types it must have to be resumed from.
_CHECKPOINT_TYPES = {
    "flow": dict,
    "optimizer": dict,
    "scheduler": (dict, type(None)),
    "shuffle_rng": torch.Tensor,
    "noise_rng": torch.Tensor,
    "history": dict,
    "best_val": float,
    "best_state": (dict, type(None)),
    "bad_epochs": int,
    "epoch": int,
    "elapsed": float,
    "seed": int,
    "fingerprint": dict,
}


def _distributed() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _mean_loss(flow, data: Tensor, context: Tensor | None, batch_size: int, transform_batch, gen):
    """Mean negative log-likelihood over ``data`` in evaluation mode, without gradients."""
    was_training = flow.training
    flow.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = data[start : start + batch_size]
            if transform_batch is not None:
                batch = transform_batch(batch, gen)
            ctx = None if context is None else context[start : start + batch_size]
            total += float(-flow.log_prob(batch, ctx).sum())
    flow.train(was_training)
    return total / len(data)


def fit_flow(
    flow,
    data: Tensor,
    *,
    context: Tensor | None = None,
    val_data: Tensor | None = None,
    val_context: Tensor | None = None,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    max_epochs: int | None = 100,
    max_time: float | None = None,
    patience: int | None = 10,
    schedule: str = "cosine",
    clip_grad: float | None = 5.0,
    seed: int | None = None,
    transform_batch: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    fingerprint: dict | None = None,
) -> dict[str, list]:
    """Train ``flow`` by maximum likelihood (forward KL) on ``data``.

    Early stopping watches the validation loss (when ``val_data`` is given) and restores the best
    parameters at the end. Under ``torch.distributed`` (e.g. launched by ``torchrun``) every
    process holds the same model, takes its share of each global batch and averages gradients, so
    ``batch_size`` is the global batch and results match single-process training up to noise.

    Args:
        flow: anything with ``log_prob(x, context)`` and parameters (a :class:`Flow`).
        data: ``(n, ...)`` training points; ``context``: ``(n, c)`` matching conditions.
        val_data, val_context: validation set for early stopping and the plateau schedule.
        batch_size: global minibatch size.
        learning_rate, weight_decay: Adam(W) settings.
        max_epochs: epoch budget (None: only ``max_time`` limits; needs a non-cosine schedule or
            a time limit).
        max_time: wall-clock budget in seconds, checked after every step.
        patience: epochs without validation improvement before stopping (None: never).
        schedule: ``"cosine"`` (per step, over ``max_epochs``), ``"plateau"`` (halve the rate when
            validation stalls) or ``"constant"``.
        clip_grad: maximum gradient norm (None: no clipping).
        seed: seeds shuffling and ``transform_batch`` noise (reproducible runs).
        transform_batch: applied to every batch before ``log_prob`` (e.g. dequantisation noise),
            called as ``transform_batch(batch, generator)``.
        progress: show a tqdm progress bar (rank 0 only).
        checkpoint: file to save the full training state to after every epoch (atomically).
            It records a fingerprint of the run: the data (``data``, ``context``, ``val_data``,
            ``val_context``: dtype, shape and SHA-256 of the contents), the architecture (every
            tensor name, dtype and shape of ``flow.state_dict()``), the options that shape the
            run (``batch_size``, ``learning_rate``, ``weight_decay``, ``schedule``, ``clip_grad``,
            ``seed``, ``max_epochs`` under the cosine schedule, whether ``transform_batch`` is
            given) and ``fingerprint``.
        resume: continue from ``checkpoint`` if it exists: the same run, step for step. A
            checkpoint of another run (other data, architecture, options or ``fingerprint``)
            or a damaged one raises ``ValueError`` naming the file and what differs; budgets
            (``max_time``, ``patience``, ``max_epochs`` outside the cosine schedule) may change.
            Without ``seed``, the checkpoint's seed is used.
        fingerprint: JSON-serialisable dict identifying the run beyond the tensors ``fit_flow``
            sees (e.g. the raw table before a caller's preprocessing, and the caller's
            settings); compared on resume.

    Returns:
        History: equal-length lists ``epoch``, ``train_loss``, ``val_loss`` (NaN without a
        validation set), ``learning_rate``, ``time`` (seconds since the start of the run). With
        ``transform_batch`` noise (dequantisation) the losses are of the noisy data: an upper
        bound on the negative log-probability, not equal to it.

    Example:
        >>> from normflows_sci.flows import RealNVP
        >>> data = 1.0 + 0.5 * torch.randn(512, 2, generator=torch.Generator().manual_seed(0))
        >>> flow = RealNVP(2, transforms=2, hidden_features=(16,))
        >>> history = fit_flow(flow, data[:384], val_data=data[384:], max_epochs=4,
        ...                    batch_size=128, learning_rate=1e-2, seed=0, progress=False)
        >>> history["epoch"]
        [1, 2, 3, 4]
        >>> history["val_loss"][-1] < history["val_loss"][0]
        True
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if max_epochs is None and max_time is None:
        raise ValueError("give max_epochs or max_time (or both): training needs a budget")
    if schedule == "cosine" and max_epochs is None:
        schedule = "plateau"
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(data) == 0:
        raise ValueError("data is empty")
    caller = _caller_fingerprint(fingerprint)
    state = None
    if resume and checkpoint is not None and os.path.exists(checkpoint):
        state = _read_checkpoint(checkpoint)
        if seed is None:
            seed = state["seed"]
    rank, world = _distributed()
    if world > 1:
        # Same starting point and the same seed everywhere.
        for tensor in [*flow.parameters(), *flow.buffers()]:
            torch.distributed.broadcast(tensor.data, src=0)
        seed_t = torch.tensor([seed if seed is not None else torch.seed() % 2**62])
        torch.distributed.broadcast(seed_t, src=0)
        seed = int(seed_t)
    if seed is None:
        seed = torch.seed() % 2**62
    shuffle_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(data.device).manual_seed(seed + 1 + rank)
    val_gen = torch.Generator(data.device)

    clock = time.perf_counter()  # the budget includes setting up (the first optimizer is slow)
    parameters = [p for p in flow.parameters() if p.requires_grad]
    optimizer = adamw(parameters, learning_rate, weight_decay)
    steps_per_epoch = math.ceil(len(data) / batch_size)
    if schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max_epochs * steps_per_epoch
        )
    elif schedule == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=max(2, (patience or 10) // 3)
        )
    else:
        scheduler = None

    history: dict[str, list] = {
        k: [] for k in ("epoch", "train_loss", "val_loss", "learning_rate", "time")
    }
    best_val, best_state, bad_epochs, start_epoch, elapsed = math.inf, None, 0, 0, 0.0
    run = None
    if checkpoint is not None:
        options = dict(
            batch_size=int(batch_size),
            learning_rate=float(learning_rate),
            weight_decay=float(weight_decay),
            schedule=schedule,
            clip_grad=None if clip_grad is None else float(clip_grad),
            seed=int(seed),
            max_epochs=max_epochs if schedule == "cosine" else None,
            transform_batch=transform_batch is not None,
        )
        tensors = dict(data=data, context=context, val_data=val_data, val_context=val_context)
        run = _run_fingerprint(flow, tensors, options, caller)
    if state is not None:
        _compare_runs(checkpoint, state["fingerprint"], run)
        generators = {"shuffle_rng": shuffle_gen, "noise_rng": noise_gen}
        _restore(checkpoint, state, flow, optimizer, scheduler, generators)
        history, best_val, best_state = state["history"], state["best_val"], state["best_state"]
        bad_epochs, start_epoch, elapsed = state["bad_epochs"], state["epoch"], state["elapsed"]

    started = clock - elapsed
    total = max_epochs if max_epochs is not None else None
    bar = tqdm(
        total=total,
        initial=start_epoch,
        disable=not progress or rank != 0,
        desc="training",
        unit="epoch",
    )
    epoch, out_of_time = start_epoch, False
    flow.train()
    while (max_epochs is None or epoch < max_epochs) and not out_of_time:
        order = torch.randperm(len(data), generator=shuffle_gen).to(data.device)
        running, count = 0.0, 0
        for step in range(steps_per_epoch):
            index = order[step * batch_size : (step + 1) * batch_size][rank::world]
            if len(index) == 0:
                continue
            batch = data[index]
            if transform_batch is not None:
                batch = transform_batch(batch, noise_gen)
            ctx = None if context is None else context[index]
            loss = -flow.log_prob(batch, ctx).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                for p in parameters:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
            if clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(parameters, clip_grad)
            optimizer.step()
            if schedule == "cosine":
                scheduler.step()
            running = running + loss.detach() * len(index)  # on device: no sync per step
            count += len(index)
            if max_time is not None and time.perf_counter() - started > max_time:
                out_of_time = True
                break
        epoch += 1
        train_loss = float(running) / max(count, 1)
        val_loss = math.nan
        if val_data is not None:
            val_gen.manual_seed(seed + 12345)  # the same dequantisation noise every epoch
            val_loss = _mean_loss(
                flow, val_data, val_context, 4 * batch_size, transform_batch, val_gen
            )
            if schedule == "plateau":
                scheduler.step(val_loss)
            if val_loss < best_val - 1e-4:
                best_val, bad_epochs = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in flow.state_dict().items()}
            else:
                bad_epochs += 1
        elif schedule == "plateau":
            scheduler.step(train_loss)
        history["epoch"].append(epoch)
        history["train_loss"].append(train_loss)
        history["val_loss"].append(val_loss)
        history["learning_rate"].append(optimizer.param_groups[0]["lr"])
        history["time"].append(time.perf_counter() - started)
        bar.update(1)
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
        if checkpoint is not None and rank == 0:
            _save_checkpoint(
                checkpoint,
                flow=flow.state_dict(),
                optimizer=optimizer.state_dict(),
                scheduler=None if scheduler is None else scheduler.state_dict(),
                shuffle_rng=shuffle_gen.get_state(),
                noise_rng=noise_gen.get_state(),
                history=history,
                best_val=best_val,
                best_state=best_state,
                bad_epochs=bad_epochs,
                epoch=epoch,
                elapsed=time.perf_counter() - started,
                seed=seed,
                fingerprint=run,
            )
        if patience is not None and bad_epochs >= patience:
            break
    bar.close()
    if best_state is not None:
        flow.load_state_dict(best_state)
    flow.eval()
    return history


def _save_checkpoint(path, **state) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getvalue())


# ------------------------------------------------------------------------ checkpoint identity


def _caller_fingerprint(fingerprint: dict | None) -> dict | None:
    """The caller's fingerprint as ``{key: canonical JSON text}`` (plain types a checkpoint read
    with ``weights_only=True`` can hold, compared key by key)."""
    if fingerprint is None:
        return None
    if not isinstance(fingerprint, dict) or not all(isinstance(k, str) for k in fingerprint):
        raise TypeError(f"fingerprint must be a dict with string keys, got {fingerprint!r:.80}")
    try:
        return {k: json.dumps(v, sort_keys=True, default=str) for k, v in fingerprint.items()}
    except (TypeError, ValueError) as error:
        raise TypeError(f"fingerprint must be JSON-serialisable: {error}") from error


def _run_fingerprint(flow, tensors: dict, options: dict, caller: dict | None) -> dict:
    """What a checkpoint must agree with to be resumed: data, architecture, options, caller."""
    return {
        "data": {k: None if t is None else data_fingerprint(t) for k, t in tensors.items()},
        "architecture": {
            k: f"{str(t.dtype).replace('torch.', '')} {tuple(t.shape)}"
            for k, t in flow.state_dict().items()
        },
        "options": options,
        "caller": caller,
    }


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _changed_entries(old, new) -> str:
    """``old -> new`` for two fingerprint values; for JSON objects, only the differing fields."""
    try:
        old_value, new_value = json.loads(old), json.loads(new)
    except (TypeError, ValueError):
        old_value = new_value = None
    if isinstance(old_value, dict) and isinstance(new_value, dict):
        fields = sorted(
            k for k in set(old_value) | set(new_value) if old_value.get(k) != new_value.get(k)
        )
        return ", ".join(
            f"{k} {_short(repr(old_value.get(k)))} in the checkpoint, "
            f"{_short(repr(new_value.get(k)))} now"
            for k in fields
        )
    return f"{_short(old)} in the checkpoint, {_short(new)} now"


def _differences(stored: dict, current: dict) -> list[str]:
    """Human-readable differences between a checkpoint's fingerprint and this run's."""
    found = []
    for section, label in (("data", "data"), ("options", "option"), ("caller", "fingerprint")):
        old, new = stored.get(section) or {}, current.get(section) or {}
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                change = _changed_entries(old.get(key), new.get(key))
                found.append(f"{label} {key!r}: {change}")
    old, new = stored.get("architecture") or {}, current.get("architecture") or {}
    if old != new:
        changed = [k for k in new if k in old and old[k] != new[k]]
        detail = (
            f"tensor {changed[0]!r} is {old[changed[0]]} in the checkpoint, {new[changed[0]]} now"
            if changed
            else f"{len(set(old) - set(new))} tensors only in the checkpoint, "
            f"{len(set(new) - set(old))} only in this flow"
        )
        found.append(f"architecture: {detail}")
    return found


def _compare_runs(path, stored: dict, current: dict) -> None:
    differences = _differences(stored, current)
    if differences:
        seed = (stored.get("options") or {}).get("seed")
        hint = (
            f"; the checkpoint's seed is {seed}: pass it (random_state for DensityEstimator)"
            if seed != (current.get("options") or {}).get("seed")
            else ""
        )
        raise ValueError(
            f"checkpoint {path} is not from this run, refusing to resume from it: "
            + "; ".join(differences)
            + hint
            + ". Resume with the same data, flow and options, or start afresh (resume=False or "
            "another checkpoint file)"
        )


def _read_checkpoint(path) -> dict:
    """A checkpoint read safely (tensors and plain containers only) with its structure checked."""
    name = f"checkpoint {path}"
    state = read_torch(path, name=name, max_bytes=MAX_CHECKPOINT_BYTES)
    if not isinstance(state, dict):
        raise ValueError(f"{name} is damaged or not a fit_flow checkpoint: it holds no dict")
    if "flow" in state and "fingerprint" not in state:
        raise ValueError(
            f"{name} has no fingerprint of its data and configuration (written by an older "
            "version), so it cannot be checked against this run: delete it, or pass resume=False"
        )
    missing = [k for k in _CHECKPOINT_TYPES if k not in state]
    if missing:
        raise ValueError(f"{name} is damaged or not a fit_flow checkpoint: it lacks {missing}")
    for key, kind in _CHECKPOINT_TYPES.items():
        value = state[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{name} is damaged: {key!r} holds a {type(value).__name__}")
    history = state["history"]
    if not all(isinstance(history.get(k), list) for k in ("epoch", "train_loss", "val_loss")):
        raise ValueError(f"{name} is damaged: its history lacks the loss lists")
    return state


def _restore(path, state: dict, flow, optimizer, scheduler, generators: dict) -> None:
    """Load a checked checkpoint's states into the run's objects."""
    try:
        flow.load_state_dict(state["flow"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        for key, generator in generators.items():
            generator.set_state(state[key])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:
        raise ValueError(f"checkpoint {path} is damaged: {error}") from error
