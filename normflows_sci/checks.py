"""Input validation shared by the public entry points: clear errors, never a silent NaN.

The shape, dtype and context checks compare metadata only (no device synchronisation); only
:func:`check_tensor`'s finiteness test reads the values.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = [
    "check_shape",
    "check_tensor",
    "check_finite",
    "check_dtype",
    "check_batch",
    "check_features",
    "check_context",
    "check_context_width",
    "check_num_samples",
    "check_int",
    "check_positive",
    "guard_override",
]


def check_shape(name: str, value, event_shape: tuple[int, ...]) -> Tensor:
    """Check ``value`` is a tensor of shape ``(batch, *event_shape)``; return it (metadata only).

    Raises:
        TypeError: not a tensor.
        ValueError: wrong number of dimensions or wrong event shape.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    expected = tuple(event_shape)
    if value.ndim != 1 + len(expected) or tuple(value.shape[1:]) != expected:
        shape = ", ".join(["batch", *map(str, expected)])
        raise ValueError(f"{name} must have shape ({shape}), got {tuple(value.shape)}")
    return value


def check_tensor(name: str, value, event_shape: tuple[int, ...]) -> Tensor:
    """Check ``value`` is a finite tensor of shape ``(batch, *event_shape)``; return it.

    The finiteness test is one reduction (a device synchronisation on GPUs).

    Raises:
        TypeError: not a tensor.
        ValueError: wrong shape, or NaN/inf entries.
    """
    check_shape(name, value, event_shape)
    check_finite(name, value)
    return value


def check_finite(name: str, value: Tensor) -> None:
    """Raise a ValueError counting the rows of ``value: (batch, ...)`` with NaN or inf entries
    (one reduction: a device synchronisation on GPUs)."""
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).flatten(1).any(1).sum())
        raise ValueError(f"{name} contains NaN or inf values (in {bad} of {len(value)} rows)")


def check_dtype(
    name: str,
    value: Tensor,
    dtype: torch.dtype,
    device: torch.device | None = None,
    *,
    owner: str = "flow",
) -> None:
    """Check ``value`` is floating point with the ``dtype`` (and ``device``) of ``owner``'s
    parameters, naming the way to convert either side.

    Raises:
        TypeError: integer/boolean tensor, or a floating dtype other than ``dtype``.
        ValueError: a device other than ``device``.
    """
    if not value.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor ({dtype}), got dtype {value.dtype}"
        )
    if value.dtype != dtype:
        method = {torch.float64: "double", torch.float32: "float", torch.float16: "half"}
        hint = f"{owner}.{method[value.dtype]}()" if value.dtype in method else f"{owner}.to(...)"
        raise TypeError(
            f"{name} has dtype {value.dtype} but the {owner}'s parameters are {dtype}: call "
            f"{hint} (or {owner}.to({value.dtype})) to convert the {owner}, or cast the "
            f"{name} with .to({dtype})"
        )
    if device is not None and value.device != device:
        raise ValueError(
            f"{name} is on device {value.device} but the {owner}'s parameters are on {device}: "
            f"move one of them with .to(device)"
        )


def check_features(inputs: Tensor, features: int) -> None:
    """Check the last dimension of ``inputs`` is ``features`` (cheap: shape only)."""
    if inputs.shape[-1] != features:
        raise ValueError(f"inputs must have {features} features, got shape {tuple(inputs.shape)}")


def check_context(context: Tensor | None, context_features: int, *, flatten: bool = False) -> None:
    """Check a layer built for a context of ``context_features`` receives one of that width.

    Layers built without a context (``context_features=0``) ignore any context, so a stack of
    conditional and unconditional layers can pass one context to all of them.

    Args:
        context: ``(batch, context_features)``, or with ``flatten`` ``(batch, ...)`` whose
            trailing dimensions hold ``context_features`` numbers.
        context_features: width the layer was built with.
        flatten: the layer flattens the trailing dimensions itself.
    """
    if not context_features:
        return
    if context is None:
        raise ValueError(
            f"context is required: layer built with context_features={context_features}"
        )
    if flatten:
        width = math.prod(context.shape[1:]) if context.ndim >= 2 else None
    else:
        width = context.shape[1] if context.ndim == 2 else None
    if width != context_features:
        layout = "(batch, ...)" if flatten else f"(batch, {context_features})"
        raise ValueError(
            f"context must have shape {layout} with {context_features} features (layer built "
            f"with context_features={context_features}), got {tuple(context.shape)}"
        )


def check_context_width(context: Tensor, context_features: int, *, owner: str = "flow") -> None:
    """Check ``context: (batch, ...)`` holds ``context_features`` numbers per row (shape only)."""
    if context.ndim < 2:
        raise ValueError(
            f"context must be a tensor of shape (batch, {context_features}), "
            f"got {tuple(context.shape)}"
        )
    width = math.prod(context.shape[1:])
    if width != context_features:
        raise ValueError(
            f"context has {width} features (shape {tuple(context.shape)}) but the {owner} "
            f"expects {context_features}"
        )


def check_int(name: str, value, *, minimum: int = 1, optional: bool = False) -> int | None:
    """``value`` as an ``int`` if it is an integer (not a bool) ``>= minimum``, else a
    ``ValueError`` naming ``name``; with ``optional=True`` ``None`` passes through.

    Example:
        >>> check_int("num_steps", 10.0, minimum=0)
        10
        >>> check_int("bins", 1, minimum=2)
        Traceback (most recent call last):
            ...
        ValueError: bins must be an integer >= 2, got 1
    """
    if optional and value is None:
        return None
    try:
        valid = not isinstance(value, bool) and int(value) == value >= minimum
    except (TypeError, ValueError, OverflowError):  # strings, None, NaN, inf
        valid = False
    if not valid:
        expected = {0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}"
        )
        raise ValueError(
            f"{name} must be {expected}{' or None' if optional else ''}, got {value!r}"
        )
    return int(value)


def check_positive(
    name: str, value, *, allow_zero: bool = False, optional: bool = False
) -> float | None:
    """``value`` as a ``float`` if it is a positive (with ``allow_zero``, non-negative) finite
    real number (not a bool or a string), else a ``ValueError`` naming ``name``; with
    ``optional=True`` ``None`` passes through.

    Example:
        >>> check_positive("step_size", 1)
        1.0
        >>> check_positive("clip_grad", None, optional=True) is None
        True
        >>> check_positive("learning_rate", float("nan"))
        Traceback (most recent call last):
            ...
        ValueError: learning_rate must be a positive finite number, got nan
    """
    if optional and value is None:
        return None
    try:
        number = math.nan if isinstance(value, (bool, str, bytes)) else float(value)
    except (TypeError, ValueError, RuntimeError):  # None, containers, multi-element tensors
        number = math.nan
    if not (math.isfinite(number) and (number > 0 or (allow_zero and number == 0))):
        expected = "non-negative" if allow_zero else "positive"
        raise ValueError(
            f"{name} must be a {expected} finite number{' or None' if optional else ''}, "
            f"got {value!r}"
        )
    return number


def check_num_samples(num_samples) -> int:
    """Check ``num_samples`` is a non-negative integer; return it as ``int``."""
    return check_int("num_samples", num_samples, minimum=0)


def check_batch(name: str, value: Tensor, batch: int) -> None:
    """Check the leading dimension of ``value`` equals ``batch``."""
    if value.shape[0] != batch:
        raise ValueError(f"{name} must have {batch} rows to match the inputs, got {value.shape[0]}")


def guard_override(cls: type, public: str, private: str, check: str) -> None:
    """Keep the input check of ``public`` when a subclass overrides it instead of ``private``.

    Call from ``__init_subclass__`` of a base class whose ``public`` method checks its input and
    then calls ``private`` (the documented extension point). If ``cls`` defines ``public`` itself,
    it is wrapped to run ``getattr(self, check)(inputs)`` first, and its body also serves as
    ``private`` when no class above implements that (a concrete inherited ``private`` is kept,
    so ``super().public`` calls in the body reach it instead of recursing).
    """
    own = cls.__dict__.get(public)
    if own is None or getattr(own, "_checks_inputs", False):
        return

    @functools.wraps(own)
    def checked(self, inputs, *args, **kwargs):
        getattr(self, check)(inputs)
        return own(self, inputs, *args, **kwargs)

    checked._checks_inputs = True
    setattr(cls, public, checked)
    if getattr(getattr(cls, private), "__isabstractmethod__", False):
        setattr(cls, private, own)
