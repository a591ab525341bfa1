"""Metropolis-Hastings building blocks shared by every kernel of the package.

Internal module: the kernels (local, flow-assisted, tempering, annealing and the stochastic
normalizing flow's layers) import these helpers from here, so that accepting, selecting and
evaluating a move is written once.

Conventions: chains (or particles) are on the leading dimension; per-chain values are ``(chains,)``;
a non-finite target value counts as zero density (``-inf``), so a move there is always rejected.

Nothing here reads a tensor back to the host: under :func:`torch.compile` (``fullgraph=True``) a
step built from these helpers is one graph, and on a GPU it never waits for the device.
:func:`log_prob_and_grad` takes the gradient with :func:`torch.func.vjp` while being compiled
(dynamo does not trace ``torch.autograd.grad``), with ``torch.autograd.grad`` in eager mode.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from normflows_sci.samplers.targets import check_log_prob

__all__ = [
    "StepInfo",
    "finite",
    "log_prob_and_grad",
    "value",
    "expand",
    "sum_event",
    "accept",
    "metropolis",
    "uniforms",
    "select",
    "relocate",
    "check_chains",
]


class StepInfo(NamedTuple):
    """Per-chain outcome of one step: Metropolis acceptance probability and the decision."""

    accept_prob: Tensor
    accepted: Tensor


def finite(log_prob: Tensor) -> Tensor:
    """``log_prob`` with NaN and ``+inf`` mapped to ``-inf`` (zero density)."""
    return log_prob.nan_to_num(nan=-math.inf, posinf=-math.inf, neginf=-math.inf)


def log_prob_and_grad(
    log_prob_fn, x: Tensor, *, target=None, what: str = "chains", differentiable: bool = False
) -> tuple[Tensor, Tensor]:
    """``log p(x)`` and ``∇ log p(x)`` by autograd; NaN gradients become 0 (such points
    have zero density and are rejected), and so does the gradient of a log-density that does not
    depend on ``x`` (e.g. a uniform density written with ``torch.where``).

    Without ``differentiable`` both are detached. With it, both keep their graph (the gradient
    with ``create_graph``), so that a move built from them can be backpropagated through (the
    stochastic normalizing flow's layers); ``x`` must then be part of a graph or require grad.
    With ``target`` (the object named in errors), the output is first checked with
    :func:`~normflows_sci.samplers.targets.check_log_prob` (``what`` names the points).
    """
    if differentiable and x.requires_grad:
        log_prob = log_prob_fn(x)
        (grad,) = torch.autograd.grad(log_prob.sum(), x, create_graph=True, allow_unused=True)
    elif torch.compiler.is_compiling() and target is None:
        # Traced as part of a compiled step: the functional gradient, which dynamo supports.
        log_prob, pullback = torch.func.vjp(log_prob_fn, x.detach())
        (grad,) = pullback(torch.ones_like(log_prob))
        log_prob, grad = log_prob.detach(), grad.detach()
    else:
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            log_prob = log_prob_fn(leaf)
            if target is not None:
                check_log_prob(log_prob, target, x.shape[0], what=what)
            grad = None
            if log_prob.requires_grad:
                (grad,) = torch.autograd.grad(log_prob.sum(), leaf, allow_unused=True)
        log_prob = log_prob.detach()
    log_prob = finite(log_prob)
    if grad is None:
        return log_prob, torch.zeros_like(x)
    return log_prob, grad.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def value(log_prob_fn, x: Tensor, *, differentiable: bool = False) -> Tensor:
    """``log p(x)`` (non-finite values as ``-inf``), without graph unless ``differentiable``."""
    if differentiable:
        return finite(log_prob_fn(x))
    with torch.no_grad():
        return finite(log_prob_fn(x))


def expand(values: Tensor, x: Tensor) -> Tensor:
    """Per-chain values ``(chains,)`` broadcast against ``x: (chains, *event)``."""
    return values.reshape(-1, *([1] * (x.ndim - 1)))


def sum_event(values: Tensor) -> Tensor:
    """``(chains, *event) -> (chains,)``: the sum over the event dimensions."""
    return values.flatten(1).sum(1)


def uniforms(x: Tensor, generator) -> Tensor:
    """The uniform draws ``(chains,)`` of the Metropolis test of chains ``x: (chains, *event)``,
    in ``x``'s dtype and device."""
    return torch.rand(x.shape[:1], generator=generator, dtype=x.dtype, device=x.device)


def metropolis(log_ratio: Tensor, uniform: Tensor) -> StepInfo:
    """The Metropolis test of every chain at once with given uniform draws (a NaN ratio
    rejects): accepted where ``log u < log_ratio``."""
    log_ratio = log_ratio.nan_to_num(nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    return StepInfo(log_ratio.clamp(max=0.0).exp(), uniform.log() < log_ratio)


def accept(log_ratio: Tensor, generator) -> StepInfo:
    """The Metropolis test of every chain at once, its uniforms drawn from ``generator``."""
    uniform = torch.rand(
        log_ratio.shape, generator=generator, dtype=log_ratio.dtype, device=log_ratio.device
    )
    return metropolis(log_ratio, uniform)


def select(accepted: Tensor, new, old):
    """Per-chain choice between two states (NamedTuples of tensors with chains leading); a field
    that is ``None`` in ``old`` stays ``None``."""
    return type(old)(
        *(
            o
            if n is o or o is None
            else torch.where(expand(accepted, n) if n.ndim else accepted, n, o)
            for n, o in zip(new, old)
        )
    )


def relocate(kernel, state, x: Tensor):
    """``state`` of ``kernel`` moved to positions ``x``: the log-density (and its gradient, when the
    state carries one) evaluated there once; the per-chain settings (step size, mass) are kept.
    Non-finite positions get log-density ``-inf`` (a move there is rejected)."""
    if "grad" in state._fields:
        log_prob, grad = log_prob_and_grad(kernel.log_prob_fn, x)
        return state._replace(x=x, log_prob=log_prob, grad=grad)
    with torch.no_grad():
        return state._replace(x=x, log_prob=finite(kernel.log_prob_fn(x)))


def check_chains(x) -> Tensor:
    """The initial positions of a kernel's ``init``, validated (the one check of every kernel)."""
    if not isinstance(x, Tensor) or x.ndim < 2 or not x.is_floating_point():
        raise ValueError(
            "x0 (initial chain positions) must be a floating tensor of shape (chains, *event), "
            f"got {getattr(x, 'shape', type(x).__name__)}"
        )
    if x.shape[0] < 1:
        raise ValueError(
            f"x0 (initial chain positions) must have at least one chain, got shape {tuple(x.shape)}"
        )
    if not torch.isfinite(x).all():
        raise ValueError("x0 (initial chain positions) contains NaN or inf")
    return x.detach()
