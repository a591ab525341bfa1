"""Checkpoints of the training scaffold: writing them atomically, reading them safely, and the
run fingerprint (data, architecture, options, caller) a checkpoint must agree with to be resumed."""

from __future__ import annotations

import io
import json

import torch

from normflows_sci.io import MAX_WEIGHTS_BYTES, atomic_write, data_fingerprint, read_torch

__all__ = [
    "MAX_CHECKPOINT_BYTES",
    "save_checkpoint",
    "read_checkpoint",
    "restore_checkpoint",
    "caller_fingerprint",
    "run_fingerprint",
    "compare_runs",
]

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


def save_checkpoint(path, **state) -> None:
    """Write ``state`` (tensors and plain containers) to ``path`` atomically: a reader never
    sees a half-written checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getvalue())


# ------------------------------------------------------------------------ checkpoint identity


def caller_fingerprint(fingerprint: dict | None) -> dict | None:
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


def run_fingerprint(flow, tensors: dict, options: dict, caller: dict | None) -> dict:
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


def compare_runs(path, stored: dict, current: dict) -> None:
    """Raise ``ValueError`` naming ``path`` and every difference when the checkpoint's run
    fingerprint ``stored`` is not this run's ``current`` one."""
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


def read_checkpoint(path) -> dict:
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


def restore_checkpoint(path, state: dict, flow, optimizer, scheduler, generators: dict) -> None:
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
