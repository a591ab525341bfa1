"""Rational-quadratic splines as pure functions.

Every spline layer of the package (coupling, autoregressive, and the circular variants on tori) calls
these functions; none of them keeps a copy of the arithmetic.

The parametrisation follows Durkan et al. (2019) and nflows, so raw parameters are interchangeable:
``K`` unnormalised widths and heights (softmax, then ``min + (1 - K min) softmax``) and derivatives
``min_derivative + softplus(raw)`` at the knots.

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


def _normalised_knots(unnormalized: Tensor, low: float, high: float, min_bin: float) -> Tensor:
    """Knot positions ``(..., K + 1)`` from ``K`` unnormalised bin sizes, ends exactly at low/high."""
    num_bins = unnormalized.shape[-1]
    if min_bin * num_bins > 1.0:
        raise ValueError(
            f"minimum bin size {min_bin} is too large for {num_bins} bins (need min_bin * bins <= 1)"
        )
    sizes = min_bin + (1.0 - min_bin * num_bins) * torch.softmax(unnormalized, dim=-1)
    interior = low + (high - low) * torch.cumsum(sizes[..., :-1], dim=-1)
    # The end knots are written explicitly (not taken from a cumsum) so that they are exact.
    return F.pad(F.pad(interior, (1, 0), value=low), (0, 1), value=high)


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
    num_bins = unnormalized_widths.shape[-1]
    if unnormalized_heights.shape[-1] != num_bins:
        raise ValueError(
            f"unnormalized_heights must have {num_bins} bins like unnormalized_widths, "
            f"got {unnormalized_heights.shape[-1]}"
        )
    if unnormalized_derivatives.shape[-1] != num_bins + 1:
        raise ValueError(
            f"unnormalized_derivatives must have bins + 1 = {num_bins + 1} entries, "
            f"got {unnormalized_derivatives.shape[-1]}"
        )
    knots_x = _normalised_knots(unnormalized_widths, left, right, min_bin_width)
    knots_y = _normalised_knots(unnormalized_heights, bottom, top, min_bin_height)
    derivatives = min_derivative + F.softplus(unnormalized_derivatives)
    return knots_x, knots_y, derivatives


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

    Inputs outside the interval are clamped onto it (callers handle tails). The circular spline uses
    this same function with periodic end derivatives.

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
    knots_x, knots_y, derivatives = spline_knots(
        unnormalized_widths,
        unnormalized_heights,
        unnormalized_derivatives,
        left=left,
        right=right,
        bottom=bottom,
        top=top,
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
    )
    if inverse:
        inputs = inputs.clamp(bottom, top)
        searched = knots_y
    else:
        inputs = inputs.clamp(left, right)
        searched = knots_x
    # Bin index in [0, K - 1] from the interior knots only: no clamping of the index needed.
    bin_idx = torch.searchsorted(searched[..., 1:-1].contiguous(), inputs[..., None], right=True)
    # One gather for the six per-bin quantities: (x, y, d) at the bin's left and right knot.
    table = torch.stack([knots_x, knots_y, derivatives], dim=-2)
    index = torch.cat([bin_idx, bin_idx + 1], dim=-1).unsqueeze(-2).expand(*table.shape[:-1], 2)
    x_k, x_k1, y_k, y_k1, d_k, d_k1 = table.gather(-1, index).flatten(-2).unbind(-1)

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
        outputs = xi * width + x_k
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
        return outputs, -logabsdet
    outputs = y_k + height * (slope * xi.square() + d_k * xi_term) / denominator
    return outputs, logabsdet


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
    Inputs far outside the bound (even huge values) pass through unchanged with finite gradients:
    the spline branch sees clamped inputs and is discarded by ``torch.where``, never NaN.

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
    if not tail_bound > 0:
        raise ValueError(f"tail_bound must be positive, got {tail_bound}")
    num_bins = unnormalized_widths.shape[-1]
    if unnormalized_derivatives.shape[-1] != num_bins - 1:
        raise ValueError(
            f"unnormalized_derivatives must have bins - 1 = {num_bins - 1} interior entries, "
            f"got {unnormalized_derivatives.shape[-1]}"
        )
    boundary = identity_derivative_offset(min_derivative)
    derivatives = F.pad(unnormalized_derivatives, (1, 1), value=boundary)
    inside = (inputs >= -tail_bound) & (inputs <= tail_bound)
    outputs, logabsdet = rational_quadratic_spline(
        inputs,
        unnormalized_widths,
        unnormalized_heights,
        derivatives,
        inverse=inverse,
        left=-tail_bound,
        right=tail_bound,
        bottom=-tail_bound,
        top=tail_bound,
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
    )
    outputs = torch.where(inside, outputs, inputs)
    logabsdet = torch.where(inside, logabsdet, torch.zeros_like(logabsdet))
    return outputs, logabsdet
