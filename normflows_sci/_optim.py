"""The optimizer every training loop of the package uses."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adamw(
    parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0
) -> torch.optim.AdamW:
    """AdamW (``weight_decay=0`` is Adam), fused into one kernel per device and dtype where this
    torch build supports it: the same update (to rounding) with a fraction of the per-step
    overhead, which matters for the small networks of flows (a 200k-parameter NSF: 1.7 ms ->
    0.3 ms per step on CPU). Falls back to the default implementation otherwise (e.g. torch
    older than 2.4 on CPU)."""
    parameters = list(parameters)
    try:
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
