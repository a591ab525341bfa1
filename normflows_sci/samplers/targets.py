"""Turning what users pass as a target (an Energy, a Flow, a callable) into a log-density, and
checking what it returns where a sampler starts."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["as_log_prob", "check_log_prob", "check_start", "compile_target", "describe_target"]


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

    This compiles the target alone; :func:`~normflows_sci.samplers.run` compiles the whole step
    (proposal, gradient, accept/reject: ``compile=True``, or automatically for long runs), and
    :meth:`Kernel.compiled_step <normflows_sci.samplers.Kernel.compiled_step>` gives that step
    for a loop of one's own.

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


def describe_target(target) -> str:
    """A short name for ``target`` in messages: the class of an object with ``log_prob``,
    ``Class.method`` for a bound method, the name of a function (following ``__wrapped__``),
    else its ``repr``.

    >>> from normflows_sci.energies import DoubleWell
    >>> describe_target(DoubleWell()), describe_target(DoubleWell().log_prob)
    ('DoubleWell', 'DoubleWell.log_prob')
    """
    for _ in range(8):  # bounded: a proxy may return itself for any attribute
        wrapped = getattr(target, "__wrapped__", None)
        if wrapped is None or wrapped is target:
            break
        target = wrapped
    if callable(getattr(target, "log_prob", None)):
        return type(target).__name__
    owner, name = getattr(target, "__self__", None), getattr(target, "__name__", None)
    if owner is not None and isinstance(name, str) and not isinstance(owner, type(torch)):
        return f"{type(owner).__name__}.{name}"  # a bound method: the instance's class
    if isinstance(name, str):
        return name
    text = repr(target)
    return text if len(text) <= 80 else text[:77] + "..."


def check_log_prob(values, target, num: int, *, what: str = "chains") -> Tensor:
    """``values``, a target's log-densities at ``num`` points, checked to be a floating tensor of
    shape ``(num,)``.

    Samplers call this once, on the first evaluation of an algorithm (a kernel's ``init``, the
    first batch of importance sampling, the start of annealing): a target returning one number
    for the batch (shape ``()`` or ``(1,)``) or one per coordinate (``(num, dim)``) would
    otherwise be broadcast against per-chain quantities and give wrong samples without an error.

    Args:
        values: what the target returned.
        target: the target (named in the error).
        num: the number of points it was evaluated at.
        what: what the points are called in the message (``"chains"``, ``"samples"``, ...).

    Returns:
        ``values`` unchanged.

    Raises:
        TypeError: ``values`` is not a floating-point tensor.
        ValueError: its shape is not ``(num,)``.

    >>> check_log_prob(torch.zeros(3), "target", 3).shape
    torch.Size([3])
    >>> check_log_prob(torch.zeros(1), lambda x: x, 3)
    Traceback (most recent call last):
    ...
    ValueError: target <lambda> must return log-densities of shape (chains,) = (3,), got shape (1,)
    """
    if not isinstance(values, Tensor) or not values.is_floating_point():
        got = f"dtype {values.dtype}" if isinstance(values, Tensor) else type(values).__name__
        raise TypeError(
            f"target {describe_target(target)} must return a floating-point tensor of "
            f"log-densities, got {got}"
        )
    if values.shape != (num,):
        raise ValueError(
            f"target {describe_target(target)} must return log-densities of shape ({what},) = "
            f"({num},), got shape {tuple(values.shape)}"
        )
    return values


def check_start(log_prob: Tensor, target) -> None:
    """Chains must not all start where ``target`` has zero density.

    A chain whose log-density is ``-inf`` (or NaN, or ``+inf``: counted as zero density by the
    kernels) has no gradient to follow and accepts any finite proposal; if every chain is there,
    a random-walk start rarely finds the support and gradient kernels cannot, so this is an
    error. Some chains there is a warning: they move into the support once a proposal is
    accepted, and the samples they produce before are not from the target.

    Args:
        log_prob: ``(chains,)`` log-densities at the starting positions.
        target: the target (named in the message).

    Raises:
        ValueError: every chain starts at zero density.
    """
    outside = ~torch.isfinite(log_prob)
    count, chains = int(outside.sum()), log_prob.shape[0]
    if not count:
        return
    where = (
        f"where target {describe_target(target)} has zero density (log-density -inf, or NaN/+inf)"
    )
    if count == chains:
        raise ValueError(
            f"all {chains} chains start {where}: start them inside the target's support"
        )
    warnings.warn(
        f"{count} of {chains} chains start {where}; they stay there until a move is accepted, so "
        "discard their early samples (or start them inside the support)",
        RuntimeWarning,
        stacklevel=4,
    )
