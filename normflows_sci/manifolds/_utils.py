"""Shared pieces of the manifold layers: zero-initialised conditioners, interval splines and
rotation matrices from unconstrained parameters."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from normflows_sci.nn import MLP
from normflows_sci.transforms.splines import (
    DEFAULT_MIN_BIN_HEIGHT,
    DEFAULT_MIN_BIN_WIDTH,
    DEFAULT_MIN_DERIVATIVE,
    identity_derivative_offset,
    rational_quadratic_spline,
)

__all__ = [
    "zero_mlp",
    "IntervalSpline",
    "skew_to_rotation",
    "num_rotation_params",
    "safe_sqrt_one_minus_square",
]


def zero_mlp(in_features: int, out_features: int, hidden_features: int | Sequence[int]) -> MLP:
    """An MLP whose output layer starts at zero, so the layer it conditions starts as the identity."""
    net = MLP(in_features, out_features, hidden_features)
    nn.init.zeros_(net.output.weight)
    nn.init.zeros_(net.output.bias)
    return net


def safe_sqrt_one_minus_square(h: Tensor) -> Tensor:
    """``sqrt(1 - h^2)`` with the radicand kept above the smallest normal number, so the
    gradient stays finite at the poles ``h = +-1``."""
    tiny = torch.finfo(h.dtype).tiny
    return ((1.0 - h) * (1.0 + h)).clamp_min(tiny).sqrt()


class IntervalSpline:
    """Monotone rational-quadratic spline of ``[-1, 1]`` onto itself, or an odd one.

    Raw parameters per call: ``K`` widths, ``K`` heights and ``K + 1`` knot derivatives (the end
    derivatives are learned: no tails), ``3K + 1`` in all; zeros give the identity.

    With ``odd=True`` the map is ``G(h) = sign(h) S(|h|)`` for a spline ``S`` of ``[0, 1]``:
    ``G(-h) = -G(h)``, which makes radial maps of the sphere commute with ``x -> -x``. ``G`` is
    continuously differentiable at 0 because ``S(0) = 0``.
    """

    def __init__(
        self,
        bins: int = 8,
        *,
        odd: bool = False,
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    ):
        if isinstance(bins, bool) or int(bins) != bins or bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
        self.bins = int(bins)
        self.odd = bool(odd)
        self.num_params = 3 * self.bins + 1
        low = 0.0 if odd else -1.0
        self.options = dict(
            left=low,
            right=1.0,
            bottom=low,
            top=1.0,
            min_bin_width=min_bin_width,
            min_bin_height=min_bin_height,
            min_derivative=min_derivative,
        )
        self._offset = identity_derivative_offset(min_derivative)

    def __call__(self, h: Tensor, params: Tensor, *, inverse: bool = False):
        """``(outputs, log-derivative)`` of the map (or its inverse) at ``h: (...)``."""
        k = self.bins
        widths, heights = params[..., :k], params[..., k : 2 * k]
        derivatives = params[..., 2 * k :] + self._offset
        if not self.odd:
            return rational_quadratic_spline(
                h, widths, heights, derivatives, inverse=inverse, **self.options
            )
        sign = torch.where(h < 0, -1.0, 1.0).to(h.dtype)
        out, logabsdet = rational_quadratic_spline(
            h.abs(), widths, heights, derivatives, inverse=inverse, **self.options
        )
        return sign * out, logabsdet


def num_rotation_params(n: int) -> int:
    """Number of free parameters of ``SO(n)``: ``n (n - 1) / 2``."""
    return n * (n - 1) // 2


def skew_to_rotation(params: Tensor, n: int) -> Tensor:
    """Rotation matrices ``exp(A)``, ``A`` skew-symmetric with ``params`` above the diagonal.

    Closed forms for ``n = 2`` (angle), ``n = 3`` (Rodrigues, with a series near the identity) and
    ``n = 4`` (``q -> exp(a) q exp(b)`` with pure quaternions ``a``, ``b``: a smooth double cover
    ``S^3 x S^3 -> SO(4)``, the same 6 parameters), ``torch.linalg.matrix_exp`` otherwise. Zero
    parameters give the identity.

    Args:
        params: ``(..., n (n - 1) / 2)``.

    Returns:
        ``(..., n, n)`` orthogonal matrices with determinant 1.
    """
    if params.shape[-1] != num_rotation_params(n):
        raise ValueError(
            f"params must have n (n - 1) / 2 = {num_rotation_params(n)} entries for SO({n}), "
            f"got {params.shape[-1]}"
        )
    if n == 1:
        return torch.ones(*params.shape[:-1], 1, 1, dtype=params.dtype, device=params.device)
    if n == 2:
        c, s = params[..., 0].cos(), params[..., 0].sin()
        return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    if n == 3:
        a, b, c = params.unbind(-1)
        zero = torch.zeros_like(a)
        # Axis-angle vector (c, -b, a) in the usual cross-product matrix convention.
        skew = torch.stack(
            [
                torch.stack([zero, a, b], -1),
                torch.stack([-a, zero, c], -1),
                torch.stack([-b, -c, zero], -1),
            ],
            -2,
        )
        theta2 = params.square().sum(-1)
        small = theta2 < 1e-6
        safe2 = torch.where(small, torch.ones_like(theta2), theta2)
        theta = safe2.sqrt()
        first = torch.where(small, 1.0 - theta2 / 6.0, theta.sin() / theta)
        second = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - theta.cos()) / safe2)
        eye = torch.eye(3, dtype=params.dtype, device=params.device)
        return eye + first[..., None, None] * skew + second[..., None, None] * (skew @ skew)
    if n == 4:
        return _so4_from_quaternions(params)
    upper = _fill_upper(params, n)
    return torch.linalg.matrix_exp(upper - upper.transpose(-1, -2))


def _fill_upper(params: Tensor, n: int) -> Tensor:
    """``(..., n, n)`` with ``params`` above the diagonal (row-major), zeros elsewhere."""
    rows, cols = torch.triu_indices(n, n, offset=1)
    flat_index = (rows * n + cols).to(params.device)
    flat = params.new_zeros(*params.shape[:-1], n * n)
    flat = flat.index_add(-1, flat_index, params)
    return flat.unflatten(-1, (n, n))


def _quaternion_exp(v: Tensor) -> Tensor:
    """``exp`` of pure quaternions ``v: (..., 3)``: ``(cos|v|, sin|v| v / |v|)``."""
    theta2 = v.square().sum(-1, keepdim=True)
    small = theta2 < 1e-6
    safe = torch.where(small, torch.ones_like(theta2), theta2).sqrt()
    sinc = torch.where(small, 1.0 - theta2 / 6.0, safe.sin() / safe)
    cos = torch.where(small, 1.0 - theta2 / 2.0 + theta2.square() / 24.0, safe.cos())
    return torch.cat([cos, sinc * v], dim=-1)


def _so4_from_quaternions(params: Tensor) -> Tensor:
    """``(..., 4, 4)`` matrix of ``q -> a q b`` with ``a = exp(params[:3])``, ``b = exp(params[3:])``."""
    aw, ax, ay, az = _quaternion_exp(params[..., :3]).unbind(-1)
    bw, bx, by, bz = _quaternion_exp(params[..., 3:]).unbind(-1)
    left = torch.stack(
        [
            torch.stack([aw, -ax, -ay, -az], -1),
            torch.stack([ax, aw, -az, ay], -1),
            torch.stack([ay, az, aw, -ax], -1),
            torch.stack([az, -ay, ax, aw], -1),
        ],
        -2,
    )
    right = torch.stack(
        [
            torch.stack([bw, -bx, -by, -bz], -1),
            torch.stack([bx, bw, bz, -by], -1),
            torch.stack([by, -bz, bw, bx], -1),
            torch.stack([bz, by, -bx, bw], -1),
        ],
        -2,
    )
    return left @ right
