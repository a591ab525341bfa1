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
from typing import NamedTuple

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
    "fused_gradients",
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
    if num_bins < 2:
        raise ValueError(f"a spline needs at least 2 bins, got {num_bins}")
    for name, value in (("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height)):
        if value * num_bins >= 1.0:
            raise ValueError(
                f"{name}={value} is too large for {num_bins} bins (need {name} * bins < 1)"
            )


def _check_derivatives(unnormalized_derivatives: Tensor, expected: int, what: str) -> None:
    if unnormalized_derivatives.shape[-1] != expected:
        raise ValueError(
            f"unnormalized_derivatives must have {what} = {expected} entries, "
            f"got {unnormalized_derivatives.shape[-1]}"
        )


def _stack_bins(unnormalized_widths: Tensor, unnormalized_heights: Tensor) -> Tensor:
    if unnormalized_heights.shape[-1] != unnormalized_widths.shape[-1]:
        raise ValueError(
            f"unnormalized_heights must have {unnormalized_widths.shape[-1]} bins like "
            f"unnormalized_widths, got {unnormalized_heights.shape[-1]}"
        )
    return torch.stack(torch.broadcast_tensors(unnormalized_widths, unnormalized_heights), dim=-2)


class _Geometry:
    """Bin geometry in unnormalised units, computed once per call.

    With ``e = exp(raw - max)`` and ``c = cumsum(e)``, bin ``j`` has size proportional to
    ``e_j + beta C`` (``C = c_K``, ``beta = min / (1 - K min)``), which is
    ``min + (1 - K min) softmax(raw)_j`` after normalisation. Knot ``k`` therefore sits at
    ``u_k = c_k + k beta C`` out of ``U = C (1 + K beta)``: only the cumulative sums are tensors of
    bin size; everything else is per element.
    """

    def __init__(self, unnormalized_bins: Tensor, x_range, y_range, min_bin_width, min_bin_height):
        num_bins = unnormalized_bins.shape[-1]
        self.num_bins = num_bins
        # Softmax is shift-invariant: a detached max keeps exp() finite and leaves gradients exact.
        shifted = unnormalized_bins - unnormalized_bins.detach().amax(dim=-1, keepdim=True)
        self.cumulative = torch.cumsum(shifted.exp(), dim=-1)  # (..., 2, K): c_1 .. c_K
        new = self.cumulative.new_tensor
        minimum = new([min_bin_width, min_bin_height])
        self.beta_total = (minimum / (1.0 - num_bins * minimum)) * self.cumulative[..., -1]
        self.total = self.cumulative[..., -1] + num_bins * self.beta_total  # U, (..., 2)
        self.low = new([x_range[0], y_range[0]])
        self.span = new([x_range[1] - x_range[0], y_range[1] - y_range[0]])

    def all_knots(self) -> Tensor:
        """Every knot, ``(..., 2, K + 1)``; row 0 holds x, row 1 holds y."""
        k = torch.arange(self.num_bins + 1, dtype=self.total.dtype, device=self.total.device)
        padded = F.pad(self.cumulative, (1, 0))
        units = padded + k * self.beta_total[..., None]
        return self.low[:, None] + self.span[:, None] * units / self.total[..., None]

    def locate(self, inputs: Tensor, row: int) -> Tensor:
        """Bin index ``(..., 1)`` in ``[0, K - 1]`` of ``inputs`` along knot row 0 (x) or 1 (y)."""
        scaled = (inputs - self.low[row]) * (self.total[..., row] / self.span[row])
        k = torch.arange(1, self.num_bins, dtype=scaled.dtype, device=scaled.device)
        # Interior knots u_k = c_k + k beta C, k = 1 .. K - 1. The count of those at or below the
        # input is the bin: cheaper than searchsorted on a tiny last dimension, and no copy.
        threshold = torch.addcmul(
            self.cumulative[..., row, :-1], self.beta_total[..., row, None], k
        )
        below = scaled[..., None] >= threshold
        return below.sum(dim=-1, keepdim=True)

    def corners(self, bin_idx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The bin's left knot and size, each ``(..., 2)`` as (x, y), and, for the gradient, the
        softmax mass left of the bin and of the bin itself, each ``(..., 2)``."""
        both = torch.cat([bin_idx - 1, bin_idx], dim=-1).clamp_min(0)
        gathered = self.cumulative.gather(-1, both[..., None, :].expand(*both.shape[:-1], 2, 2))
        left_c = torch.where(bin_idx == 0, 0.0, gathered[..., 0])
        bin_c = gathered[..., 1] - left_c
        index = bin_idx.to(self.total.dtype)
        scale = self.span / self.total
        left = self.low + (left_c + index * self.beta_total) * scale
        size = (bin_c + self.beta_total) * scale
        inverse_c = 1.0 / self.cumulative[..., -1]
        return left, size, left_c * inverse_c, bin_c * inverse_c


class _Config(NamedTuple):
    inverse: bool
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    min_bin_width: float
    min_bin_height: float
    min_derivative: float
    # None: raw derivatives at all K + 1 knots. A float: raw derivatives at the K - 1 interior
    # knots, this value at both ends, and identity tails outside the range.
    boundary_derivative: float | None


def _evaluate(inputs: Tensor, unnormalized_bins: Tensor, raw_derivatives: Tensor, cfg: _Config):
    """The spline with torch ops (differentiable by autograd to any order).

    Args:
        inputs: ``(...)``.
        unnormalized_bins: ``(..., 2, K)``, widths then heights.
        raw_derivatives: ``(..., K + 1)``, or ``(..., K - 1)`` with a boundary derivative.

    Returns:
        ``(outputs, logabsdet, state)``; ``state`` holds what the fused backward needs.
    """
    low, high = cfg.y_range if cfg.inverse else cfg.x_range
    tails = cfg.boundary_derivative is not None
    inside = (inputs >= low) & (inputs <= high)
    # The spline sees clamped inputs, so far-away points never produce NaN (not even in the
    # discarded branch of torch.where, whose gradient would otherwise be 0 * NaN).
    clamped = inputs.clamp(low, high)
    geometry = _Geometry(
        unnormalized_bins, cfg.x_range, cfg.y_range, cfg.min_bin_width, cfg.min_bin_height
    )
    num_bins = geometry.num_bins
    bin_idx = geometry.locate(clamped, 1 if cfg.inverse else 0)
    left, size, mass_left, mass_bin = geometry.corners(bin_idx)
    x_k, y_k = left.unbind(-1)
    width, height = size.unbind(-1)
    if tails:
        # Interior knot j is raw entry j - 1; the two end knots take the boundary value.
        pair = torch.cat([bin_idx - 1, bin_idx], dim=-1).clamp(0, num_bins - 2)
        idx = bin_idx[..., 0]
        valid = torch.stack([idx > 0, idx < num_bins - 1], dim=-1)
    else:
        pair = torch.cat([bin_idx, bin_idx + 1], dim=-1)
        valid = None
    raw_pair = raw_derivatives.gather(-1, pair)
    d_pair = cfg.min_derivative + F.softplus(raw_pair)
    if tails:
        d_pair = torch.where(valid, d_pair, cfg.boundary_derivative)
    d_k, d_k1 = d_pair.unbind(-1)

    slope = height / width
    curvature = d_k + d_k1 - 2.0 * slope
    if cfg.inverse:
        dy = clamped - y_k
        a = dy * curvature + height * (slope - d_k)
        b = height * d_k - dy * curvature
        c = -slope * dy
        discriminant = (b.square() - 4.0 * a * c).clamp_min(0.0)
        xi = (2.0 * c / (-b - discriminant.sqrt())).clamp(0.0, 1.0)
    else:
        xi = (clamped - x_k) / width
    one_minus_xi = 1.0 - xi
    xi_term = xi * one_minus_xi
    denominator = slope + curvature * xi_term
    numerator = slope * xi.square() + d_k * xi_term
    derivative_numerator = slope.square() * (
        d_k1 * xi.square() + 2.0 * slope * xi_term + d_k * one_minus_xi.square()
    )
    logabsdet = torch.log(derivative_numerator) - 2.0 * torch.log(denominator)
    if cfg.inverse:
        outputs, logabsdet = torch.addcmul(x_k, xi, width), -logabsdet
    else:
        outputs = y_k + height * numerator / denominator
    if tails:
        outputs = torch.where(inside, outputs, inputs)
        logabsdet = torch.where(inside, logabsdet, 0.0)
    state = dict(
        inside=inside,
        bin_idx=bin_idx,
        probs=geometry.cumulative.diff(
            dim=-1, prepend=torch.zeros_like(geometry.cumulative[..., :1])
        )
        / geometry.cumulative[..., -1:],
        mass_left=mass_left,
        mass_bin=mass_bin,
        coef=geometry.span / (1.0 + num_bins * geometry.beta_total / geometry.cumulative[..., -1]),
        pair=pair,
        valid=valid,
        sig_pair=torch.sigmoid(raw_pair),
        xi=xi,
        width=width,
        height=height,
        slope=slope,
        d_k=d_k,
        d_k1=d_k1,
        denominator=denominator,
        numerator=numerator,
        derivative_numerator=derivative_numerator,
    )
    return outputs, logabsdet, state


def _local_gradients(st: dict, grad_outputs: Tensor, grad_logabsdet: Tensor, inverse: bool):
    """Per-element gradients with respect to the input, the bin's left knot and size (x, y) and
    its two knot derivatives, from the closed-form derivatives of the rational quadratic."""
    xi, width, height, slope = st["xi"], st["width"], st["height"], st["slope"]
    d_k, d_k1 = st["d_k"], st["d_k1"]
    den, num, dnum = st["denominator"], st["numerator"], st["derivative_numerator"]
    t = xi * (1.0 - xi)
    inv_den, inv_dnum = 1.0 / den, 1.0 / dnum
    curvature = d_k + d_k1 - 2.0 * slope
    slope_sq = slope.square()
    # Partial derivatives at fixed xi of y (the data->latent spline output) and of the
    # forward log-derivative ``lad``.
    y_xi = width * dnum * inv_den.square()  # dy/dxi = w dy/dx
    lad_xi = slope_sq * 2.0 * (d_k1 * xi + slope * (1.0 - 2.0 * xi) - d_k * (1.0 - xi)) * inv_dnum
    lad_xi = lad_xi - 2.0 * curvature * (1.0 - 2.0 * xi) * inv_den
    y_h_direct = num * inv_den
    y_s = height * (xi.square() * den - num * (1.0 - 2.0 * t)) * inv_den.square()
    lad_s = (2.0 * dnum / slope + 2.0 * slope_sq * t) * inv_dnum - 2.0 * (1.0 - 2.0 * t) * inv_den
    y_d0 = height * t * (den - num) * inv_den.square()
    y_d1 = -height * num * t * inv_den.square()
    lad_d0 = slope_sq * (1.0 - xi).square() * inv_dnum - 2.0 * t * inv_den
    lad_d1 = slope_sq * xi.square() * inv_dnum - 2.0 * t * inv_den
    inv_width = 1.0 / width
    if inverse:
        # x = x_k + xi w with xi solving y(xi) = input; logabsdet = -lad. Adjoint of the implicit
        # equation: lam = dL/dinput, and dL/dtheta = L_theta - lam * y_theta.
        g_x, g_lad = grad_outputs, grad_logabsdet
        lam = (g_x * width - g_lad * lad_xi) / y_xi
        l_s = -g_lad * lad_s - lam * y_s
        grad_input = lam
        grad_xk = g_x
        grad_yk = -lam
        grad_w = g_x * xi - l_s * slope * inv_width
        grad_h = -lam * y_h_direct + l_s * inv_width
        grad_d0 = -g_lad * lad_d0 - lam * y_d0
        grad_d1 = -g_lad * lad_d1 - lam * y_d1
    else:
        g_y, g_lad = grad_outputs, grad_logabsdet
        l_xi = g_y * y_xi + g_lad * lad_xi
        l_s = g_y * y_s + g_lad * lad_s
        grad_input = l_xi * inv_width
        grad_xk = -grad_input
        grad_yk = g_y
        grad_w = -(l_xi * xi + l_s * slope) * inv_width
        grad_h = g_y * y_h_direct + l_s * inv_width
        grad_d0 = g_y * y_d0 + g_lad * lad_d0
        grad_d1 = g_y * y_d1 + g_lad * lad_d1
    grad_left = torch.stack([grad_xk, grad_yk], dim=-1)
    grad_size = torch.stack([grad_w, grad_h], dim=-1)
    return grad_input, grad_left, grad_size, torch.stack([grad_d0, grad_d1], dim=-1)


class _FusedSpline(torch.autograd.Function):
    """The spline with a hand-written backward: a few per-element expressions and one pass over
    the bins, instead of autograd's chain of gathers, slices and broadcasts (about 3x fewer
    kernel launches per training step). First-order only; see :func:`fused_gradients`."""

    @staticmethod
    def forward(ctx, inputs, unnormalized_bins, raw_derivatives, cfg):
        outputs, logabsdet, state = _evaluate(inputs, unnormalized_bins, raw_derivatives, cfg)
        ctx.cfg = cfg
        ctx.state = state
        ctx.raw_shape = raw_derivatives.shape
        ctx.mark_non_differentiable()
        return outputs, logabsdet

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_outputs, grad_logabsdet):
        st, cfg = ctx.state, ctx.cfg
        tails = cfg.boundary_derivative is not None
        grad_input, grad_left, grad_size, grad_d = _local_gradients(
            st, grad_outputs, grad_logabsdet, cfg.inverse
        )
        inside = st["inside"]
        if tails:
            # Outside the bound the map is the identity: the parameters get nothing there.
            mask = inside.to(grad_input.dtype)
            grad_input = torch.where(inside, grad_input, grad_outputs)
        else:
            # Clamped inputs: the input gets nothing outside, the parameters still do.
            mask = torch.ones_like(grad_input)
            grad_input = torch.where(inside, grad_input, 0.0)
        # Through the knots: x_k = low + coef * (mass left of bin + k beta), w = coef * (p_k + beta)
        # with p = softmax(raw); dL/draw_j = p_j (a_j - sum_i a_i p_i).
        g_left = grad_left * (st["coef"] * mask[..., None])
        g_size = grad_size * (st["coef"] * mask[..., None])
        probs = st["probs"]
        k = torch.arange(probs.shape[-1], device=probs.device)[None, :]
        bin_idx = st["bin_idx"][..., None, :]  # (..., 1, 1)
        direct = torch.where(
            k < bin_idx, g_left[..., None], torch.where(k == bin_idx, g_size[..., None], 0.0)
        )
        total = g_left * st["mass_left"] + g_size * st["mass_bin"]
        grad_bins = probs * (direct - total[..., None])
        # Through the knot derivatives d = min + softplus(raw): only the bin's two knots.
        values = grad_d * st["sig_pair"] * mask[..., None]
        if tails:
            values = values * st["valid"]
        grad_raw = torch.zeros(ctx.raw_shape, dtype=values.dtype, device=values.device)
        grad_raw = grad_raw.scatter_add(-1, st["pair"], values)
        return grad_input, grad_bins, grad_raw, None


_FUSED = {"enabled": True}


class fused_gradients:
    """Switch the spline's hand-written backward on or off (on by default).

    The fused backward is first-order: code that differentiates twice through a spline flow
    (path-gradient estimators, training on forces through ``log_prob``) must turn it off, either
    for a block (``with fused_gradients(False): ...``) or globally
    (``fused_gradients(False).__enter__()``); a second derivative through it otherwise raises.
    """

    def __init__(self, enabled: bool):
        self.enabled = bool(enabled)
        self.previous = _FUSED["enabled"]

    def __enter__(self):
        self.previous = _FUSED["enabled"]
        _FUSED["enabled"] = self.enabled
        return self

    def __exit__(self, *exc):
        _FUSED["enabled"] = self.previous
        return False


def _spline(inputs: Tensor, unnormalized_bins: Tensor, raw_derivatives: Tensor, cfg: _Config):
    needs_grad = torch.is_grad_enabled() and (
        inputs.requires_grad or unnormalized_bins.requires_grad or raw_derivatives.requires_grad
    )
    if needs_grad and _FUSED["enabled"]:
        return _FusedSpline.apply(inputs, unnormalized_bins, raw_derivatives, cfg)
    outputs, logabsdet, _ = _evaluate(inputs, unnormalized_bins, raw_derivatives, cfg)
    return outputs, logabsdet


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
    """Knots of a monotone rational-quadratic spline (for inspection and plotting).

    Args:
        unnormalized_widths: ``(..., K)``.
        unnormalized_heights: ``(..., K)``.
        unnormalized_derivatives: ``(..., K + 1)``, one per knot including both ends.

    Returns:
        ``(knots_x, knots_y, derivatives)``, each ``(..., K + 1)``, with ``knots_x`` running from
        ``left`` to ``right`` and ``knots_y`` from ``bottom`` to ``top``.
    """
    unnormalized_bins = _stack_bins(unnormalized_widths, unnormalized_heights)
    num_bins = unnormalized_bins.shape[-1]
    _check_derivatives(unnormalized_derivatives, num_bins + 1, "bins + 1")
    _check_bins(num_bins, min_bin_width, min_bin_height)
    geometry = _Geometry(
        unnormalized_bins, (left, right), (bottom, top), min_bin_width, min_bin_height
    )
    knots = geometry.all_knots()
    derivatives = min_derivative + F.softplus(unnormalized_derivatives)
    return knots[..., 0, :], knots[..., 1, :], derivatives


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
    cfg = _Config(
        inverse,
        (left, right),
        (bottom, top),
        min_bin_width,
        min_bin_height,
        min_derivative,
        boundary_derivative=None,
    )
    return _spline(inputs, unnormalized_bins, unnormalized_derivatives, cfg)


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
    raw_derivatives = params[..., 2 * num_bins :]
    if derivative_offset:
        raw_derivatives = raw_derivatives + derivative_offset
    # Boundary derivatives of exactly 1 join the spline smoothly to the identity tails.
    cfg = _Config(
        inverse,
        bound,
        bound,
        min_bin_width,
        min_bin_height,
        min_derivative,
        boundary_derivative=1.0,
    )
    unnormalized_bins = params[..., : 2 * num_bins].unflatten(-1, (2, num_bins))
    return _spline(inputs, unnormalized_bins, raw_derivatives, cfg)


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
