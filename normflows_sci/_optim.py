"""The optimizer every training loop of the package uses."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adamw(
    parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0
) -> torch.optim.AdamW:
    """AdamW (``weight_decay=0`` is Adam), fused into one kernel per device and dtype where this
    torch build supports it.

    The fused update is the same as the default one (to rounding) with less per-step overhead,
    which matters for the small networks of flows (see the performance guide). Falls back to the
    default implementation where fusing is unsupported (e.g. torch older than 2.4 on CPU).

    Args:
        parameters: the parameters to optimize (any iterable; it is read once).
        lr: learning rate, > 0.
        weight_decay: decoupled weight decay, >= 0 (``0`` is Adam).

    Returns:
        A ``torch.optim.AdamW`` over ``parameters``.
    """
    parameters = list(parameters)
    try:
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
