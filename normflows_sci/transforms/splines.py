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

import functools
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

    Example:
        >>> offset = identity_derivative_offset(1e-3)
        >>> round(1e-3 + math.log1p(math.exp(offset)), 10)
        1.0
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


@functools.lru_cache(maxsize=256)
def _constant(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A small constant tensor, made once per (values, dtype, device) instead of once per call.

    Created outside inference mode, so that a first call under ``torch.inference_mode()`` does
    not cache a tensor that autograd later refuses to save. Never modified in place.
    """
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=dtype, device=device)


def _upper_ones(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(n, n)`` upper-triangular ones: ``v @ U`` is the cumulative sum of ``v``'s last axis."""
    return _constant(tuple(tuple(float(j >= i) for j in range(n)) for i in range(n)), dtype, device)


def _arange(start: int, stop: int, like: Tensor) -> Tensor:
    return _constant(tuple(float(k) for k in range(start, stop)), like.dtype, like.device)


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
        # c_1 .. c_K, (..., 2, K). A product with an upper-triangular matrix of ones instead of
        # cumsum: same sums, and on a last dimension of ~8 both directions are one BLAS call
        # (cumsum's backward flips, sums and flips back).
        # Under torch.autocast the product would run in lower precision: use cumsum there.
        exp = shifted.exp()
        if torch.is_autocast_enabled(exp.device.type):
            self.cumulative = torch.cumsum(exp, dim=-1)
        else:
            self.cumulative = exp @ _upper_ones(num_bins, exp.dtype, exp.device)
        dtype, device = shifted.dtype, shifted.device
        beta = tuple(m / (1.0 - num_bins * m) for m in (min_bin_width, min_bin_height))
        self.beta_total = _constant(beta, dtype, device) * self.cumulative[..., -1]
        self.total = self.cumulative[..., -1] + num_bins * self.beta_total  # U, (..., 2)
        self.low = _constant((float(x_range[0]), float(y_range[0])), dtype, device)
        span = (float(x_range[1] - x_range[0]), float(y_range[1] - y_range[0]))
        self.span = _constant(span, dtype, device)

    def all_knots(self) -> Tensor:
        """Every knot, ``(..., 2, K + 1)``; row 0 holds x, row 1 holds y."""
        k = _arange(0, self.num_bins + 1, self.total)
        padded = F.pad(self.cumulative, (1, 0))
        units = padded + k * self.beta_total[..., None]
        return self.low[:, None] + self.span[:, None] * units / self.total[..., None]

    def locate(self, inputs: Tensor, row: int) -> Tensor:
        """Bin index ``(..., 1)`` in ``[0, K - 1]`` of ``inputs`` along knot row 0 (x) or 1 (y)."""
        scaled = (inputs - self.low[row]) * (self.total[..., row] / self.span[row])
        k = _arange(1, self.num_bins, scaled)
        # Interior knots u_k = c_k + k beta C, k = 1 .. K - 1. The count of those at or below the
        # input is the bin: cheaper than searchsorted on a tiny last dimension, and no copy.
        threshold = torch.addcmul(
            self.cumulative[..., row, :-1], self.beta_total[..., row, None], k
        )
        below = scaled[..., None] >= threshold
        return below.sum(dim=-1, keepdim=True)

    def corners(self, bin_idx: Tensor) -> tuple[Tensor, Tensor]:
        """Left and right knots of the bin, each ``(..., 2)`` as (x, y)."""
        both = torch.cat([bin_idx - 1, bin_idx], dim=-1).clamp_min(0)
        gathered = self.cumulative.gather(-1, both[..., None, :].expand(*both.shape[:-1], 2, 2))
        first = bin_idx == 0
        left_c = torch.where(first, 0.0, gathered[..., 0])
        right_c = gathered[..., 1]
        index = bin_idx.to(self.total.dtype)
        scale = self.span / self.total
        left = self.low + (left_c + index * self.beta_total) * scale
        right = self.low + (right_c + (index + 1.0) * self.beta_total) * scale
        return left, right


def _spline(
    inputs: Tensor,
    unnormalized_bins: Tensor,
    unnormalized_derivatives: Tensor,
    *,
    inverse: bool,
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    min_bin_width: float,
    min_bin_height: float,
    min_derivative: float,
    boundary_derivative: float | None,
) -> tuple[Tensor, Tensor]:
    """The spline on clamped inputs.

    Args:
        inputs: ``(...)``, already inside the range of the direction evaluated.
        unnormalized_bins: ``(..., 2, K)``, widths then heights.
        unnormalized_derivatives: ``(..., K + 1)`` raw knot derivatives, or ``(..., K - 1)``
            interior ones when ``boundary_derivative`` gives both end derivatives.
    """
    geometry = _Geometry(unnormalized_bins, x_range, y_range, min_bin_width, min_bin_height)
    num_bins = geometry.num_bins
    bin_idx = geometry.locate(inputs, 1 if inverse else 0)
    left, right = geometry.corners(bin_idx)
    x_k, y_k = left.unbind(-1)
    x_k1, y_k1 = right.unbind(-1)
    if boundary_derivative is None:
        pair = torch.cat([bin_idx, bin_idx + 1], dim=-1)
        d_k, d_k1 = (min_derivative + F.softplus(unnormalized_derivatives.gather(-1, pair))).unbind(
            -1
        )
    else:
        # Interior knot j is raw entry j - 1; the two end knots take the boundary value.
        pair = torch.cat([bin_idx - 1, bin_idx], dim=-1).clamp(0, num_bins - 2)
        d_pair = min_derivative + F.softplus(unnormalized_derivatives.gather(-1, pair))
        idx = bin_idx[..., 0]
        d_k = torch.where(idx == 0, boundary_derivative, d_pair[..., 0])
        d_k1 = torch.where(idx == num_bins - 1, boundary_derivative, d_pair[..., 1])

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


def _bounded_bins(widths, heights, derivatives, min_bin_width, min_bin_height) -> Tensor:
    """Validate the arguments of a bounded spline (derivatives at all K + 1 knots); stack bins."""
    unnormalized_bins = _stack_bins(widths, heights)
    num_bins = unnormalized_bins.shape[-1]
    _check_derivatives(derivatives, num_bins + 1, "bins + 1")
    _check_bins(num_bins, min_bin_width, min_bin_height)
    return unnormalized_bins


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

    Example:
        >>> knots_x, knots_y, derivatives = spline_knots(
        ...     torch.zeros(4), torch.tensor([1.0, 2.0, 3.0, 4.0]).log(), torch.zeros(5),
        ...     left=0.0, right=1.0, bottom=0.0, top=1.0)
        >>> [round(v, 2) for v in knots_x.tolist()]  # equal raw widths: equal bins
        [0.0, 0.25, 0.5, 0.75, 1.0]
        >>> [round(v, 2) for v in knots_y.tolist()]  # heights in proportion 1 : 2 : 3 : 4
        [0.0, 0.1, 0.3, 0.6, 1.0]
        >>> round(derivatives[0].item(), 4)  # min_derivative + softplus(0)
        0.6941
    """
    unnormalized_bins = _bounded_bins(
        unnormalized_widths,
        unnormalized_heights,
        unnormalized_derivatives,
        min_bin_width,
        min_bin_height,
    )
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

    Example:
        >>> generator = torch.Generator().manual_seed(0)
        >>> widths = torch.randn(5, 4, generator=generator)
        >>> heights = torch.randn(5, 4, generator=generator)
        >>> derivatives = torch.randn(5, 5, generator=generator)
        >>> x = torch.linspace(-0.9, 0.9, 5)
        >>> y, logabsdet = rational_quadratic_spline(x, widths, heights, derivatives)
        >>> x_back, inverse_logabsdet = rational_quadratic_spline(
        ...     y, widths, heights, derivatives, inverse=True)
        >>> torch.allclose(x_back, x, atol=1e-5)
        True
        >>> torch.allclose(inverse_logabsdet, -logabsdet, atol=1e-4)
        True
    """
    unnormalized_bins = _bounded_bins(
        unnormalized_widths,
        unnormalized_heights,
        unnormalized_derivatives,
        min_bin_width,
        min_bin_height,
    )
    inputs = inputs.clamp(bottom, top) if inverse else inputs.clamp(left, right)
    return _spline(
        inputs,
        unnormalized_bins,
        unnormalized_derivatives,
        inverse=inverse,
        x_range=(left, right),
        y_range=(bottom, top),
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
        boundary_derivative=None,
    )


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

    Example:
        >>> params = torch.zeros(3, 3 * 4 - 1)  # 4 bins, all raw parameters zero
        >>> x = torch.tensor([-10.0, 0.3, 10.0])
        >>> y, logabsdet = rq_spline_from_params(
        ...     x, params, tail_bound=3.0, derivative_offset=identity_derivative_offset())
        >>> torch.allclose(y, x, atol=1e-6), torch.allclose(logabsdet, torch.zeros(3), atol=1e-5)
        (True, True)
    """
    if params.shape[-1] % 3 != 2:
        raise ValueError(f"params must have 3 * bins - 1 entries, got {params.shape[-1]}")
    if not tail_bound > 0:
        raise ValueError(f"tail_bound must be positive, got {tail_bound}")
    num_bins = (params.shape[-1] + 1) // 3
    _check_bins(num_bins, min_bin_width, min_bin_height)
    bound = (-tail_bound, tail_bound)
    # split (not two slices): its backward writes one concatenated gradient instead of
    # zero-filling a full-size gradient per slice.
    raw_bins, raw_derivatives = params.split([2 * num_bins, num_bins - 1], dim=-1)
    if derivative_offset:
        raw_derivatives = raw_derivatives + derivative_offset
    inside = (inputs >= -tail_bound) & (inputs <= tail_bound)
    # The spline sees clamped inputs, so far-away points can never produce NaN (not even in the
    # discarded branch of torch.where, whose gradient would otherwise be 0 * NaN). Boundary
    # derivatives of exactly 1 join the spline smoothly to the identity tails.
    outputs, logabsdet = _spline(
        inputs.clamp(-tail_bound, tail_bound),
        raw_bins.unflatten(-1, (2, num_bins)),
        raw_derivatives,
        inverse=inverse,
        x_range=bound,
        y_range=bound,
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
        boundary_derivative=1.0,
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

    Example:
        >>> generator = torch.Generator().manual_seed(0)
        >>> widths = torch.randn(4, 8, generator=generator)
        >>> heights = torch.randn(4, 8, generator=generator)
        >>> derivatives = torch.randn(4, 7, generator=generator)  # interior knots only
        >>> x = torch.tensor([-100.0, -1.0, 0.5, 2.0])
        >>> y, logabsdet = unconstrained_rational_quadratic_spline(
        ...     x, widths, heights, derivatives, tail_bound=3.0)
        >>> y[0].item(), logabsdet[0].item()  # far outside [-B, B]: the identity
        (-100.0, 0.0)
        >>> x_back, _ = unconstrained_rational_quadratic_spline(
        ...     y, widths, heights, derivatives, tail_bound=3.0, inverse=True)
        >>> torch.allclose(x_back, x, atol=1e-5)
        True
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
