"""Sampler checkpoints of :func:`~normflows_sci.samplers.run`: plain data on disk, read without
unpickling code.

A checkpoint is ``torch.save`` of a dict holding only tensors, numbers, strings, ``None``, lists,
tuples and dicts, read back with :func:`normflows_sci.io.read_torch` (``weights_only=True`` plus
the package's archive checks): a crafted file cannot run code when it is resumed. Kernel states (NamedTuples such as ``MALAState``) are stored as
``{"__state__": class name, "fields": {name: value}}`` and rebuilt only from an allow-list: the
package's own state classes and the NamedTuple types of the resuming kernel's fresh state. The
rebuilt state must then have the fresh state's structure (classes, fields, tensor shapes and
dtypes), so a checkpoint of another kernel, another number of chains or another event shape is
refused. Every problem is a ``ValueError`` naming the file and what is wrong.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict

import torch
from torch import Tensor

from normflows_sci.io import atomic_write, read_torch

__all__ = ["FORMAT", "load_checkpoint", "save_checkpoint"]

FORMAT = "normflows_sci.samplers.run/2"
_STATE = "__state__"
_PLAIN = (bool, int, float, str, type(None))
# read_torch bounds what a file may allocate; a checkpoint holds every kept sample, so its size
# is bounded only by what the run itself kept in memory.
_MAX_BYTES = 2**50


def _is_state(value) -> bool:
    return isinstance(value, tuple) and hasattr(type(value), "_fields")


def _encode(value, where: str):
    """``value`` in plain form (NamedTuples become tagged dicts); anything else is a TypeError."""
    if isinstance(value, Tensor):
        value = value.detach()
        # A view (a slice of the replicas, an expanded tensor) would save its whole storage.
        if value.untyped_storage().nbytes() != value.numel() * value.element_size():
            value = value.clone(memory_format=torch.contiguous_format)
        return value
    if _is_state(value):
        fields = {k: _encode(v, f"{where}.{k}") for k, v in zip(value._fields, value)}
        return {_STATE: type(value).__name__, "fields": fields}
    if isinstance(value, dict):
        out = OrderedDict() if isinstance(value, OrderedDict) else {}
        for key, item in value.items():
            if not isinstance(key, _PLAIN):
                raise TypeError(f"cannot checkpoint {where}: key {key!r} is not a plain value")
            out[key] = _encode(item, f"{where}[{key!r}]")
        metadata = getattr(value, "_metadata", None)  # a module state_dict's versions
        if isinstance(out, OrderedDict) and metadata is not None:
            out._metadata = _encode(metadata, f"{where}._metadata")
        return out
    if isinstance(value, (list, tuple)):
        items = [_encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, _PLAIN):
        return value
    raise TypeError(
        f"cannot checkpoint {where}: a {type(value).__name__} is not a tensor, number, string, "
        "list, tuple, dict or kernel state"
    )


def _decode(value, allowed: dict[str, type], where: str, fail, device=None):
    """Inverse of :func:`_encode`, tensors moved to ``device``; a state class outside
    ``allowed`` is a format error."""

    def inner(item, at: str):
        return _decode(item, allowed, at, fail, device)

    if isinstance(value, Tensor):
        return value if device is None else value.to(device)
    if isinstance(value, dict) and _STATE in value:
        name, fields = value.get(_STATE), value.get("fields")
        cls = allowed.get(name) if isinstance(name, str) else None
        if cls is None or not isinstance(fields, dict):
            fail(f"{where} is a state of unknown type {name!r} (known: {sorted(allowed)})")
        if set(fields) != set(cls._fields):
            fail(f"{where} ({name}) has fields {sorted(fields)}, expected {list(cls._fields)}")
        return cls(**{k: inner(fields[k], f"{where}.{k}") for k in cls._fields})
    if isinstance(value, dict):
        out = type(value)((k, inner(v, f"{where}[{k!r}]")) for k, v in value.items())
        if hasattr(value, "_metadata"):
            out._metadata = value._metadata
        return out
    if isinstance(value, (list, tuple)):
        items = [inner(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    return value


def _state_types(state, found: dict[str, type]) -> dict[str, type]:
    """The NamedTuple classes in ``state`` (nested), by name."""
    if _is_state(state):
        found.setdefault(type(state).__name__, type(state))
        for item in state:
            _state_types(item, found)
    return found


def _package_states() -> dict[str, type]:
    from normflows_sci.samplers import flow_kernels, kernels

    classes = (
        kernels.RWState,
        kernels.MALAState,
        kernels.HMCState,
        flow_kernels.IMHState,
        flow_kernels.HybridState,
        flow_kernels.PTState,
    )
    return {cls.__name__: cls for cls in classes}


def _match(saved, fresh, where: str, fail) -> None:
    """``saved`` (from the file) must have the structure of ``fresh`` (this run's state)."""
    if _is_state(fresh):
        if type(saved) is not type(fresh):
            fail(
                f"{where} is a {type(saved).__name__}, but this kernel's is a "
                f"{type(fresh).__name__} (the checkpoint was written by another kernel)"
            )
        for name, a, b in zip(fresh._fields, saved, fresh):
            _match(a, b, f"{where}.{name}", fail)
    elif isinstance(fresh, Tensor):
        if not isinstance(saved, Tensor):
            fail(f"{where} is a {type(saved).__name__}, expected a tensor")
        if saved.shape != fresh.shape or saved.dtype != fresh.dtype:
            fail(
                f"{where} has shape {tuple(saved.shape)} and dtype {saved.dtype}, but this run's "
                f"has shape {tuple(fresh.shape)} and dtype {fresh.dtype} (another number of "
                "chains, event shape or dtype)"
            )
    elif type(saved) is not type(fresh):
        fail(f"{where} is a {type(saved).__name__}, expected a {type(fresh).__name__}")


def save_checkpoint(path, payload: dict) -> None:
    """Write ``payload`` (kernel states, tensors and plain values) to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **_encode(payload, "checkpoint")}, buffer)
    atomic_write(path, buffer.getvalue())


def load_checkpoint(path, fresh_state, *, device=None) -> tuple[dict, object]:
    """The payload saved at ``path`` with its ``state`` rebuilt like ``fresh_state`` and its
    tensors on ``device`` (default: the CPU).

    Returns ``(payload, fail)``: ``fail(message)`` raises the ``ValueError`` naming the file, for
    the caller's own checks of the other entries.

    Raises:
        ValueError: the file is not a checkpoint of this format (damaged, foreign, an older
            format, or holding objects other than plain data), or its state does not match
            ``fresh_state``.
    """
    name = os.fspath(path)

    def fail(message: str):
        raise ValueError(f"checkpoint {name!r}: {message}")

    raw = read_torch(name, name=f"checkpoint {name!r}", max_bytes=_MAX_BYTES)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        fail(f"format is {found!r}, expected {FORMAT!r} (written by another program or version)")
    allowed = {**_package_states(), **_state_types(fresh_state, {})}
    payload = _decode(raw, allowed, "checkpoint", fail, device)
    if "state" not in payload:
        fail("it has no 'state' entry")
    _match(payload["state"], fresh_state, "state", fail)
    return payload, fail
