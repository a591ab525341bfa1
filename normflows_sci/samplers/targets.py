"""Turning what users pass as a target (an Energy, a Flow, a callable) into a log-density."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

__all__ = ["as_log_prob"]


def as_log_prob(target) -> Callable[[Tensor], Tensor]:
    """The unnormalised log-density ``x -> (batch,)`` of ``target``.

    Accepts anything with a ``log_prob(x)`` method (an ``Energy``, a ``Flow``, a torch distribution
    with batch-shaped output) or a plain callable returning log-densities.

    >>> from normflows_sci.energies import DoubleWell
    >>> as_log_prob(DoubleWell())(torch.zeros(3, 2)).shape
    torch.Size([3])
    """
    log_prob = getattr(target, "log_prob", None)
    if callable(log_prob):
        return log_prob
    if callable(target):
        return target
    raise TypeError(
        "target must be an Energy, a Flow, or a callable returning log-densities of shape (batch,); "
        f"got {type(target).__name__}"
    )
