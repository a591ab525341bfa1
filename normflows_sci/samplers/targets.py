"""Turning what users pass as a target (an Energy, a Flow, a callable) into a log-density."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["as_log_prob", "compile_target"]


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


def compile_target(target, **options) -> Callable[[Tensor], Tensor]:
    """The log-density of ``target`` compiled with :func:`torch.compile`, to pass to any kernel.

    Kernels call the target once or twice per step (MALA and HMC through autograd); compiling it
    fuses the many small elementwise operations of an energy into few kernels. Flows used as
    proposals (:class:`IndependentMH`, :class:`AdaptiveFlowMCMC`, ...) are compiled with
    :meth:`Flow.compile <normflows_sci.flows.Flow.compile>`. The chains are the same as with the
    eager target up to floating-point reassociation; the first step compiles.

    Args:
        target: as for :func:`as_log_prob`.
        **options: passed to :func:`torch.compile`.

    Example:
        >>> from normflows_sci.energies import DoubleWell
        >>> from normflows_sci.samplers import MALA
        >>> kernel = MALA(compile_target(DoubleWell(), backend="eager"), step_size=0.1)
        >>> kernel.log_prob_fn(torch.zeros(3, 2)).shape
        torch.Size([3])
    """
    return torch.compile(as_log_prob(target), **options)
