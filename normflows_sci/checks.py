"""Input validation shared by the public entry points: clear errors, never a silent NaN."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_tensor", "check_batch", "check_features", "check_context", "check_num_samples"]


def check_tensor(name: str, value, event_shape: tuple[int, ...]) -> Tensor:
    """Check ``value`` is a finite tensor of shape ``(batch, *event_shape)``; return it.

    Raises:
        TypeError: not a tensor.
        ValueError: wrong shape, or NaN/inf entries.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    expected = tuple(event_shape)
    if value.ndim != 1 + len(expected) or tuple(value.shape[1:]) != expected:
        shape = ", ".join(["batch", *map(str, expected)])
        raise ValueError(f"{name} must have shape ({shape}), got {tuple(value.shape)}")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).flatten(1).any(1).sum())
        raise ValueError(f"{name} contains NaN or inf values (in {bad} of {len(value)} rows)")
    return value


def check_features(inputs: Tensor, features: int) -> None:
    """Check the last dimension of ``inputs`` is ``features`` (cheap: shape only)."""
    if inputs.shape[-1] != features:
        raise ValueError(f"inputs must have {features} features, got shape {tuple(inputs.shape)}")


def check_context(context: Tensor | None, context_features: int) -> None:
    """Check a layer built for a context receives one."""
    if context_features and context is None:
        raise ValueError(
            f"context is required: layer built with context_features={context_features}"
        )


def check_num_samples(num_samples) -> int:
    """Check ``num_samples`` is a non-negative integer; return it as ``int``."""
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 0:
        raise ValueError(f"num_samples must be a non-negative integer, got {num_samples!r}")
    return int(num_samples)


def check_batch(name: str, value: Tensor, batch: int) -> None:
    """Check the leading dimension of ``value`` equals ``batch``."""
    if value.shape[0] != batch:
        raise ValueError(f"{name} must have {batch} rows to match the inputs, got {value.shape[0]}")
