"""Rational-quadratic splines as pure functions.

Every spline layer of the package (coupling, autoregressive, and the circular variants on tori)
calls these functions; none of them keeps a copy of the arithmetic.

The parametrisation follows Durkan et al. (2019) and nflows, so raw parameters are interchangeable:
``K`` unnormalised widths and heights (softmax, then ``min + (1 - K min) softmax``) and derivatives
``min_derivative + softplus(raw)`` at the knots.

The implementation is written for few, cheap tensor operations (the spline runs on tensors with a
tiny last dimension, where reductions such as ``softmax`` and ``searchsorted`` are slow): widths and
heights share one exp-cumsum pass, bins are found by comparison, and nothing is written in place.

References:
    Durkan, Bekasov, Murray, Papamakarios (2019), "Neural Spline Flows".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEFAULT_MIN_BIN_WIDTH",
    "DEFAULT_MIN_BIN_HEIGHT",
    "DEFAULT_MIN_DERIVATIVE",
    "identity_derivative_offset",
    "spline_knots",
    "rational_quadratic_spline",
    "unconstrained_rational_quadratic_spline",
    "rq_spline_from_params",
]

DEFAULT_MIN_BIN_WIDTH = 1e-3
DEFAULT_MIN_BIN_HEIGHT = 1e-3
DEFAULT_MIN_DERIVATIVE = 1e-3


def identity_derivative_offset(min_derivative: float = DEFAULT_MIN_DERIVATIVE) -> float:
    """The raw derivative value that gives a knot derivative of exactly 1.

    ``min_derivative + softplus(offset) == 1``. Layers add it to their conditioner output so that a
    zero-initialised conditioner gives the identity map.
    """
    return math.log(math.expm1(1.0 - min_derivative))


def _check_bins(num_bins: int, min_bin_width: float, min_bin_height: float) -> None:
    for name, value in (("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height)):
        if value * num_bins > 1.0:
            raise ValueError(
                f"{name}={value} is too large for {num_bins} bins (need {name} * bins <= 1)"
            )


def _knots(
    unnormalized_bins: Tensor,
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    min_bin_width: float,
    min_bin_height: float,
) -> Tensor:
    """Knots ``(..., 2, K + 1)`` (row 0: x, row 1: y) from ``(..., 2, K)`` unnormalised sizes."""
    num_bins = unnormalized_bins.shape[-1]
    # Softmax is shift-invariant, so a detached max keeps exp() finite without changing gradients.
    shifted = unnormalized_bins - unnormalized_bins.detach().amax(dim=-1, keepdim=True)
    cumulative = F.pad(torch.cumsum(shifted.exp(), dim=-1), (1, 0))
    fraction = cumulative / cumulative[..., -1:]  # exactly 0 and 1 at the ends
    # knot_k = low + span * (min * k + (1 - K min) * fraction_k), for x and y at once.
    k = torch.arange(num_bins + 1, dtype=fraction.dtype, device=fraction.device)
    low = fraction.new_tensor([[x_range[0]], [y_range[0]]])
    span = fraction.new_tensor([[x_range[1] - x_range[0]], [y_range[1] - y_range[0]]])
    minimum = fraction.new_tensor([[min_bin_width], [min_bin_height]])
    offset = low + span * minimum * k
    scale = span * (1.0 - num_bins * minimum)
    return torch.addcmul(offset, fraction, scale)


def spline_knots(
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    unnormalized_derivatives: Tensor,
    *,
    left: float = -1.0,
    right: float = 1.0,
    bottom: float = -1.0,
    top: float = 1.0,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> tuple[Tensor, Tensor, Tensor]:
    """Knots of a monotone rational-quadratic spline.

    Args:
        unnormalized_widths: ``(..., K)``.
        unnormalized_heights: ``(..., K)``.
        unnormalized_derivatives: ``(..., K + 1)``, one per knot including both ends.

    Returns:
        ``(knots_x, knots_y, derivatives)``, each ``(..., K + 1)``, with ``knots_x`` running from
        ``left`` to ``right`` and ``knots_y`` from ``bottom`` to ``top``.
    """
    unnormalized_bins = _stack_bins(unnormalized_widths, unnormalized_heights)
    _check_derivatives(unnormalized_derivatives, unnormalized_widths.shape[-1] + 1, "bins + 1")
    _check_bins(unnormalized_widths.shape[-1], min_bin_width, min_bin_height)
    knots = _knots(unnormalized_bins, (left, right), (bottom, top), min_bin_width, min_bin_height)
    derivatives = min_derivative + F.softplus(unnormalized_derivatives)
    return knots[..., 0, :], knots[..., 1, :], derivatives


def _stack_bins(unnormalized_widths: Tensor, unnormalized_heights: Tensor) -> Tensor:
    if unnormalized_heights.shape[-1] != unnormalized_widths.shape[-1]:
        raise ValueError(
            f"unnormalized_heights must have {unnormalized_widths.shape[-1]} bins like "
            f"unnormalized_widths, got {unnormalized_heights.shape[-1]}"
        )
    return torch.stack(torch.broadcast_tensors(unnormalized_widths, unnormalized_heights), dim=-2)


def _check_derivatives(unnormalized_derivatives: Tensor, expected: int, what: str) -> None:
    if unnormalized_derivatives.shape[-1] != expected:
        raise ValueError(
            f"unnormalized_derivatives must have {what} = {expected} entries, "
            f"got {unnormalized_derivatives.shape[-1]}"
        )


def _evaluate(
    inputs: Tensor,
    knots: Tensor,
    derivatives: Tensor,
    inverse: bool,
) -> tuple[Tensor, Tensor]:
    """The spline given knots ``(..., 2, K + 1)`` and positive knot derivatives ``(..., K + 1)``.

    Inputs must already lie inside the knot range of the direction evaluated.
    """
    searched = knots[..., 1 if inverse else 0, 1:-1]
    # Bin index in [0, K - 1]: count of interior knots at or below the input (cheaper than
    # searchsorted on the tiny last dimension, and needs no contiguous copy).
    bin_idx = (inputs[..., None] >= searched).sum(dim=-1, keepdim=True)
    both = torch.cat([bin_idx, bin_idx + 1], dim=-1)
    corners = knots.gather(-1, both[..., None, :].expand(*knots.shape[:-1], 2))
    x_k, x_k1, y_k, y_k1 = corners.flatten(-2).unbind(-1)
    d_k, d_k1 = derivatives.gather(-1, both).unbind(-1)
    width = x_k1 - x_k
    height = y_k1 - y_k
    slope = height / width
    curvature = d_k + d_k1 - 2.0 * slope

    if inverse:
        dy = inputs - y_k
        a = dy * curvature + height * (slope - d_k)
        b = height * d_k - dy * curvature
        c = -slope * dy
        discriminant = (b.square() - 4.0 * a * c).clamp_min(0.0)
        xi = (2.0 * c / (-b - discriminant.sqrt())).clamp(0.0, 1.0)
    else:
        xi = (inputs - x_k) / width

    one_minus_xi = 1.0 - xi
    xi_term = xi * one_minus_xi
    denominator = slope + curvature * xi_term
    derivative_numerator = slope.square() * (
        d_k1 * xi.square() + 2.0 * slope * xi_term + d_k * one_minus_xi.square()
    )
    logabsdet = torch.log(derivative_numerator) - 2.0 * torch.log(denominator)
    if inverse:
        return torch.addcmul(x_k, xi, width), -logabsdet
    outputs = y_k + height * (slope * xi.square() + d_k * xi_term) / denominator
    return outputs, logabsdet


def rational_quadratic_spline(
    inputs: Tensor,
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    unnormalized_derivatives: Tensor,
    *,
    inverse: bool = False,
    left: float = -1.0,
    right: float = 1.0,
    bottom: float = -1.0,
    top: float = 1.0,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> tuple[Tensor, Tensor]:
    """Monotone rational-quadratic spline on ``[left, right] -> [bottom, top]``, elementwise.

    Inputs outside the interval are clamped onto it (callers handle tails). The circular spline
    uses this same function with equal end derivatives.

    Args:
        inputs: ``(...)``.
        unnormalized_widths: ``(..., K)``.
        unnormalized_heights: ``(..., K)``.
        unnormalized_derivatives: ``(..., K + 1)``.
        inverse: evaluate the inverse map instead (stable quadratic root).

    Returns:
        ``(outputs, logabsdet)``, both shaped like ``inputs``; ``logabsdet`` is the elementwise
        log-derivative of the direction evaluated.
    """
    unnormalized_bins = _stack_bins(unnormalized_widths, unnormalized_heights)
    num_bins = unnormalized_bins.shape[-1]
    _check_derivatives(unnormalized_derivatives, num_bins + 1, "bins + 1")
    _check_bins(num_bins, min_bin_width, min_bin_height)
    knots = _knots(unnormalized_bins, (left, right), (bottom, top), min_bin_width, min_bin_height)
    derivatives = min_derivative + F.softplus(unnormalized_derivatives)
    inputs = inputs.clamp(bottom, top) if inverse else inputs.clamp(left, right)
    return _evaluate(inputs, knots, derivatives, inverse)


def rq_spline_from_params(
    inputs: Tensor,
    params: Tensor,
    *,
    inverse: bool = False,
    tail_bound: float = 1.0,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    derivative_offset: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Spline with identity tails from packed parameters, as conditioners emit them.

    Args:
        inputs: ``(...)``.
        params: ``(..., 3K - 1)``: ``K`` widths, ``K`` heights, ``K - 1`` interior derivatives.
        derivative_offset: added to the raw derivatives (layers pass
            :func:`identity_derivative_offset` so that zero parameters are the identity).

    Returns:
        ``(outputs, logabsdet)`` shaped like ``inputs``; see
        :func:`unconstrained_rational_quadratic_spline`.
    """
    if params.shape[-1] % 3 != 2:
        raise ValueError(f"params must have 3 * bins - 1 entries, got {params.shape[-1]}")
    if not tail_bound > 0:
        raise ValueError(f"tail_bound must be positive, got {tail_bound}")
    num_bins = (params.shape[-1] + 1) // 3
    _check_bins(num_bins, min_bin_width, min_bin_height)
    bound = (-tail_bound, tail_bound)
    unnormalized_bins = params[..., : 2 * num_bins].unflatten(-1, (2, num_bins))
    knots = _knots(unnormalized_bins, bound, bound, min_bin_width, min_bin_height)
    interior = min_derivative + F.softplus(params[..., 2 * num_bins :] + derivative_offset)
    # Boundary derivatives of exactly 1 join the spline smoothly to the identity tails.
    derivatives = F.pad(interior, (1, 1), value=1.0)
    inside = (inputs >= -tail_bound) & (inputs <= tail_bound)
    # The spline sees clamped inputs, so far-away points can never produce NaN (not even in the
    # discarded branch of torch.where, whose gradient would otherwise be 0 * NaN).
    outputs, logabsdet = _evaluate(
        inputs.clamp(-tail_bound, tail_bound), knots, derivatives, inverse
    )
    return torch.where(inside, outputs, inputs), torch.where(inside, logabsdet, 0.0)


def unconstrained_rational_quadratic_spline(
    inputs: Tensor,
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    unnormalized_derivatives: Tensor,
    *,
    inverse: bool = False,
    tail_bound: float = 1.0,
    tails: str = "linear",
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> tuple[Tensor, Tensor]:
    """Rational-quadratic spline on ``[-B, B]`` with identity (linear) tails outside.

    The boundary derivatives are fixed to 1 so the map is continuously differentiable at ``+-B``.
    Inputs far outside the bound (even huge values) pass through unchanged with finite gradients.

    Args:
        inputs: ``(...)``.
        unnormalized_widths: ``(..., K)``.
        unnormalized_heights: ``(..., K)``.
        unnormalized_derivatives: ``(..., K - 1)``, the interior knots only.
        inverse: evaluate the inverse map.
        tail_bound: ``B``.
        tails: only ``"linear"`` is supported.

    Returns:
        ``(outputs, logabsdet)`` shaped like ``inputs``.
    """
    if tails != "linear":
        raise ValueError(f"tails must be 'linear', got {tails!r}")
    unnormalized_bins = _stack_bins(unnormalized_widths, unnormalized_heights)
    num_bins = unnormalized_bins.shape[-1]
    _check_derivatives(unnormalized_derivatives, num_bins - 1, "bins - 1")
    params = torch.cat([unnormalized_bins.flatten(-2), unnormalized_derivatives], dim=-1)
    return rq_spline_from_params(
        inputs,
        params,
        inverse=inverse,
        tail_bound=tail_bound,
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
    )
