"""The ``torch.distributed`` helpers that training and samplers share (a leaf module: it imports
nothing from the package, so neither subpackage has to import the other for them)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["rank_and_world", "broadcast_module", "broadcast_seed", "average_gradients"]


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the current process group; ``(0, 1)`` without an initialised
    one (or without ``torch.distributed``).

    >>> rank_and_world()
    (0, 1)
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers of ``module`` on every rank (in place)."""
    for tensor in [*module.parameters(), *module.buffers()]:
        torch.distributed.broadcast(tensor.data, src=0)


def broadcast_seed(seed: int | None) -> int:
    """Rank 0's ``seed`` on every rank; a fresh one (drawn on rank 0) when it is None."""
    seed_t = torch.tensor([seed if seed is not None else torch.seed() % 2**62])
    torch.distributed.broadcast(seed_t, src=0)
    return int(seed_t)


def average_gradients(parameters: Iterable[Tensor], world: int) -> None:
    """Replace every gradient by its mean over the ``world`` ranks (a missing gradient counts as
    zero, so that every rank takes part in the same collectives)."""
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)
        p.grad /= world
