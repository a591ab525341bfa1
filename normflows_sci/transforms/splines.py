"""Rational-quadratic splines as pure functions.

Every spline layer of the package (coupling, autoregressive, and the circular variants on tori)
calls these functions; none of them keeps a copy of the arithmetic.

The parametrisation follows Durkan et al. (2019) and nflows, so raw parameters are interchangeable:
``K`` unnormalised widths and heights (softmax, then ``min + (1 - K min) softmax``) and derivatives
``min_derivative + softplus(raw)`` at the knots.

The implementation computes parameter-major: the raw parameters of ``M`` inputs are laid out
``(3K - 1, M)``, so every reduction over the bins (softmax, the bin search, the sums of bin sizes
left of each input) runs along the first axis with contiguous rows, several times faster on CPU
than over a last axis of ~8 entries. Bins are found by comparison, the bin's knots come from
masked sums instead of a cumulative sum of every knot, and the derivatives are gathered before
their softplus. Spline layers whose conditioner is the package's own MLP or MADE receive this
layout straight from the network's last matrix product (:func:`rq_spline_param_major`); the
other entry points transpose once. Everything is plain autograd, so higher derivatives are exact.

The public family: :func:`rational_quadratic_spline` (on an interval, the circular splines'
engine) and :func:`unconstrained_rational_quadratic_spline` (identity tails) take nflows'
arguments; :func:`rq_spline_param_major` is the same tailed spline in the layout it computes in
and :func:`rq_spline_from_params` its entry with packed ``(..., 3K - 1)`` parameters. Layers do
not call these with spline options of their own: they hold an
:class:`~normflows_sci.transforms.RQSplineMap` (or its
:class:`~normflows_sci.transforms.CircularSplineMap`), where the options are declared.

References:
    Durkan, Bekasov, Murray, Papamakarios (2019), "Neural Spline Flows".
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

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
    "rq_spline_param_major",
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


def _check_heights(unnormalized_widths: Tensor, unnormalized_heights: Tensor) -> int:
    """The number of bins, after checking that widths and heights agree on it."""
    num_bins = unnormalized_widths.shape[-1]
    if unnormalized_heights.shape[-1] != num_bins:
        raise ValueError(
            f"unnormalized_heights must have {num_bins} bins like unnormalized_widths, "
            f"got {unnormalized_heights.shape[-1]}"
        )
    return num_bins


_is_compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling


def _constant(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A small constant tensor, made once per (values, dtype, device) instead of once per call;
    under ``torch.compile`` a constant of the traced graph (no Python-side cache to trace)."""
    if _is_compiling():
        return torch.tensor(values, dtype=dtype, device=device)
    return _cached_constant(values, dtype, device)


@functools.lru_cache(maxsize=256)
def _cached_constant(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Created outside inference mode, so that a first call under ``torch.inference_mode()`` does
    not cache a tensor that autograd later refuses to save. Never modified in place."""
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=dtype, device=device)


@dataclass(frozen=True)
class _Layout:
    """Everything about a spline call that is not a tensor.

    Bins are found along row ``row`` (0: x for the forward map, 1: y for the inverse). Knot
    derivative ``j`` of bin ``idx``'s left knot is raw derivative ``idx + shift``: ``shift`` is 0
    when all ``K + 1`` knot derivatives are given and -1 when only the ``K - 1`` interior ones
    are, in which case the end knots take ``boundary``.
    """

    num_bins: int
    row: int
    low: tuple[float, float]
    span: tuple[float, float]
    min_bin: tuple[float, float]
    min_derivative: float
    derivative_offset: float
    shift: int
    boundary: float | None

    def constants(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(low, scale, beta)`` as ``(2, 1)`` columns (x, y) of ``like``'s dtype and device.

        With softmax probabilities ``p``, knot ``k`` sits at ``low + scale (c_k + k beta)``,
        ``c_k = p_0 + ... + p_{k-1}``: that is ``min + (1 - K min) p`` per bin, normalised.
        """
        k = self.num_bins
        beta = tuple(m / (1.0 - k * m) for m in self.min_bin)
        scale = tuple(s / (1.0 + k * b) for s, b in zip(self.span, beta))
        columns = tuple((v,) for v in (*self.low, *scale, *beta))
        table = _constant(columns, like.dtype, like.device)
        return table[0:2], table[2:4], table[4:6]


def _lookup(raw: Tensor, position: Tensor, layout: _Layout):
    """Left knots, bin sizes and end derivatives of the bin holding each ``position``.

    Args:
        raw: ``(2K + n, M)`` parameter-major raw parameters: ``K`` widths, ``K`` heights, ``n``
            knot derivatives, one column per element.
        position: ``(M,)`` inputs on the axis of ``layout.row``, inside its range.

    Returns:
        ``(left, size, derivatives)``, ``(2, M)`` each: rows (x, y) for the first two and (left,
        right) knot for the third. Differentiable (the bin index itself is piecewise constant).
    """
    k = layout.num_bins
    num_elements = position.shape[0]
    bins, raw_derivatives = raw.split([2 * k, raw.shape[0] - 2 * k])
    # Parameter-major: the reductions over bins run along the first axis, with every element's
    # bins in one contiguous row. That is several times faster than reducing a last axis of ~8.
    probs = torch.softmax(bins.view(2, k, num_elements), dim=1)
    low, scale, beta = layout.constants(probs)
    numbers = _constant(tuple((j,) for j in range(k)), torch.int64, probs.device)  # (K, 1)
    row = layout.row
    with torch.no_grad():
        units = (position - low[row]) / scale[row]
        interior = torch.cumsum(probs[row, :-1].detach(), dim=0) + numbers[1:] * beta[row]
        # Interior knots at or below: the bin, (M,). A uint8 count is several times faster.
        small = torch.uint8 if k <= 256 else torch.int64
        index = (units >= interior).sum(dim=0, dtype=small).long()
    before = (numbers < index).to(probs.dtype)  # (K, M): bins left of the element's bin
    below = (probs * before).sum(dim=1)  # (2, M): p_0 + ... + p_{idx - 1}
    at = probs.gather(1, index.expand(2, 1, num_elements)).squeeze(1)  # (2, M): p_idx
    left = low + scale * torch.addcmul(below, index.to(probs.dtype), beta)
    size = scale * (at + beta)

    count = raw_derivatives.shape[0]
    first = index + layout.shift
    pair = torch.stack([first, first + 1])
    valid = (pair >= 0) & (pair < count)
    pair = pair.clamp(0, count - 1)
    chosen = raw_derivatives.gather(0, pair)
    if layout.derivative_offset:
        chosen = chosen + layout.derivative_offset
    derivatives = layout.min_derivative + F.softplus(chosen)
    if layout.boundary is not None:
        derivatives = torch.where(valid, derivatives, layout.boundary)
    return left, size, derivatives


def _param_major(parts: dict[str, Tensor], shape: torch.Size) -> Tensor:
    """Raw parameter blocks ``(..., n_i)`` (by argument name) broadcast to the inputs' ``shape``
    and stacked parameter-major, ``(sum n_i, prod(shape))``."""
    for name, part in parts.items():
        if part.dim() == 0 or torch.broadcast_shapes(part.shape[:-1], shape) != shape:
            raise ValueError(
                f"{name} must have shape (..., n) with ... broadcastable to the inputs' shape "
                f"{tuple(shape)}, got {tuple(part.shape)}"
            )
    parts = list(parts.values())
    num_elements = math.prod(shape)
    columns = [p.expand(*shape, p.shape[-1]).reshape(num_elements, p.shape[-1]) for p in parts]
    if len(columns) == 1:
        return columns[0].t().contiguous()
    return torch.cat([column.t() for column in columns], dim=0)


def _spline(
    inputs: Tensor,
    raw: Tensor,
    *,
    inverse: bool,
    num_bins: int,
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    min_bin_width: float,
    min_bin_height: float,
    min_derivative: float,
    derivative_offset: float = 0.0,
    boundary_derivative: float | None,
) -> tuple[Tensor, Tensor]:
    """The spline on clamped inputs.

    Args:
        inputs: ``(...)``, already inside the range of the direction evaluated.
        raw: ``(2K + n, M)`` parameter-major raw parameters (see :func:`_param_major`), ``M`` the
            number of inputs: ``K`` widths, ``K`` heights, then ``K + 1`` raw knot derivatives,
            or ``K - 1`` interior ones when ``boundary_derivative`` gives both end derivatives.
    """
    layout = _Layout(
        num_bins=num_bins,
        row=1 if inverse else 0,
        low=(float(x_range[0]), float(y_range[0])),
        span=(float(x_range[1] - x_range[0]), float(y_range[1] - y_range[0])),
        min_bin=(min_bin_width, min_bin_height),
        min_derivative=min_derivative,
        derivative_offset=derivative_offset,
        shift=0 if boundary_derivative is None else -1,
        boundary=boundary_derivative,
    )
    flat = inputs.reshape(-1)
    left, size, derivatives = _lookup(raw, flat.detach(), layout)
    x_k, y_k = left.unbind(0)
    width, height = size.unbind(0)
    d_k, d_k1 = derivatives.unbind(0)
    slope = height / width
    curvature = d_k + d_k1 - 2.0 * slope

    if inverse:
        dy = flat - y_k
        a = dy * curvature + height * (slope - d_k)
        b = height * d_k - dy * curvature
        c = -slope * dy
        # Both floors act only when a and b cancel to 0, for knot derivatives so large (~1e28,
        # from a conditioner fed 1e30) that float rounding loses the O(1) terms (realistic
        # discriminants are above 1e-10): xi is then clamped to the bin edge with a zero
        # gradient, where sqrt'(0) and 2c / 0 would have made it 0 * inf = NaN.
        discriminant = (b.square() - 4.0 * a * c).clamp_min(1e-30)
        xi = (2.0 * c / (-b - discriminant.sqrt()).clamp(max=-1e-15)).clamp(0.0, 1.0)
    else:
        xi = (flat - x_k) / width

    one_minus_xi = 1.0 - xi
    xi_term = xi * one_minus_xi
    denominator = slope + curvature * xi_term
    derivative_numerator = slope.square() * (
        d_k1 * xi.square() + 2.0 * slope * xi_term + d_k * one_minus_xi.square()
    )
    logabsdet = torch.log(derivative_numerator) - 2.0 * torch.log(denominator)
    if inverse:
        outputs, logabsdet = torch.addcmul(x_k, xi, width), -logabsdet
    else:
        outputs = y_k + height * (slope * xi.square() + d_k * xi_term) / denominator
    return outputs.view(inputs.shape), logabsdet.view(inputs.shape)


def _check_bounded(widths, heights, derivatives, min_bin_width, min_bin_height) -> int:
    """Validate the arguments of a bounded spline (derivatives at all K + 1 knots); bins."""
    num_bins = _check_heights(widths, heights)
    _check_derivatives(derivatives, num_bins + 1, "bins + 1")
    _check_bins(num_bins, min_bin_width, min_bin_height)
    return num_bins


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
    num_bins = _check_bounded(
        unnormalized_widths,
        unnormalized_heights,
        unnormalized_derivatives,
        min_bin_width,
        min_bin_height,
    )
    knots = []
    for raw, low, high, minimum in (
        (unnormalized_widths, left, right, min_bin_width),
        (unnormalized_heights, bottom, top, min_bin_height),
    ):
        sizes = minimum + (1.0 - num_bins * minimum) * torch.softmax(raw, dim=-1)
        knots.append(low + (high - low) * F.pad(torch.cumsum(sizes, dim=-1), (1, 0)))
    derivatives = min_derivative + F.softplus(unnormalized_derivatives)
    return knots[0], knots[1], derivatives


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
    **minimums: float,
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
        **minimums: ``min_bin_width``, ``min_bin_height``, ``min_derivative`` (default
            ``1e-3`` each), the keywords of nflows' function of the same name.

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
    min_bin_width, min_bin_height, min_derivative = _minimums(minimums)
    num_bins = _check_bounded(
        unnormalized_widths,
        unnormalized_heights,
        unnormalized_derivatives,
        min_bin_width,
        min_bin_height,
    )
    raw = _param_major(
        {
            "unnormalized_widths": unnormalized_widths,
            "unnormalized_heights": unnormalized_heights,
            "unnormalized_derivatives": unnormalized_derivatives,
        },
        inputs.shape,
    )
    inputs = inputs.clamp(bottom, top) if inverse else inputs.clamp(left, right)
    return _spline(
        inputs,
        raw,
        inverse=inverse,
        num_bins=num_bins,
        x_range=(left, right),
        y_range=(bottom, top),
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
        boundary_derivative=None,
    )


def _minimums(minimums: dict) -> tuple[float, float, float]:
    """``(min_bin_width, min_bin_height, min_derivative)`` from keyword arguments; any other
    name is a ``TypeError``."""
    names = ("min_bin_width", "min_bin_height", "min_derivative")
    unknown = sorted(set(minimums) - set(names))
    if unknown:
        raise TypeError(f"unexpected keyword arguments {unknown}; the minimums are {names}")
    defaults = (DEFAULT_MIN_BIN_WIDTH, DEFAULT_MIN_BIN_HEIGHT, DEFAULT_MIN_DERIVATIVE)
    return tuple(minimums.get(name, default) for name, default in zip(names, defaults))


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
    return rq_spline_param_major(
        inputs,
        _param_major({"params": params}, inputs.shape),
        inverse=inverse,
        tail_bound=tail_bound,
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
        derivative_offset=derivative_offset,
    )


def rq_spline_param_major(
    inputs: Tensor,
    raw: Tensor,
    *,
    inverse: bool = False,
    tail_bound: float = 1.0,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    derivative_offset: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """:func:`rq_spline_from_params` with the parameters already parameter-major.

    Args:
        inputs: ``(...)``.
        raw: ``(3K - 1, inputs.numel())``: column ``i`` holds the raw parameters of flat input
            ``i`` (``K`` widths, ``K`` heights, ``K - 1`` interior derivatives). Conditioners that
            can emit this layout directly (:meth:`normflows_sci.nn.MLP.param_major`) skip a
            transposing copy of every parameter.

    Returns:
        ``(outputs, logabsdet)`` shaped like ``inputs``.

    Example:
        >>> params = torch.randn(6, 3 * 4 - 1, generator=torch.Generator().manual_seed(0))
        >>> x = torch.linspace(-2.0, 2.0, 6)
        >>> y, logabsdet = rq_spline_param_major(x, params.t().contiguous(), tail_bound=3.0)
        >>> torch.allclose(y, rq_spline_from_params(x, params, tail_bound=3.0)[0])
        True
    """
    if raw.dim() != 2 or raw.shape[0] % 3 != 2 or raw.shape[1] != inputs.numel():
        raise ValueError(
            f"raw must have shape (3 * bins - 1, {inputs.numel()}) for inputs of shape "
            f"{tuple(inputs.shape)}, got {tuple(raw.shape)}"
        )
    if not tail_bound > 0:
        raise ValueError(f"tail_bound must be positive, got {tail_bound}")
    num_bins = (raw.shape[0] + 1) // 3
    _check_bins(num_bins, min_bin_width, min_bin_height)
    bound = (-tail_bound, tail_bound)
    inside = (inputs >= -tail_bound) & (inputs <= tail_bound)
    # The spline sees clamped inputs, so far-away points can never produce NaN (not even in the
    # discarded branch of torch.where, whose gradient would otherwise be 0 * NaN). Boundary
    # derivatives of exactly 1 join the spline smoothly to the identity tails.
    outputs, logabsdet = _spline(
        inputs.clamp(-tail_bound, tail_bound),
        raw,
        inverse=inverse,
        num_bins=num_bins,
        x_range=bound,
        y_range=bound,
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
        derivative_offset=derivative_offset,
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
    num_bins = _check_heights(unnormalized_widths, unnormalized_heights)
    _check_derivatives(unnormalized_derivatives, num_bins - 1, "bins - 1")
    raw = _param_major(
        {
            "unnormalized_widths": unnormalized_widths,
            "unnormalized_heights": unnormalized_heights,
            "unnormalized_derivatives": unnormalized_derivatives,
        },
        inputs.shape,
    )
    return rq_spline_param_major(
        inputs,
        raw,
        inverse=inverse,
        tail_bound=tail_bound,
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
    )
