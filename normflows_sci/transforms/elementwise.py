"""Parametrised elementwise bijections shared by coupling and autoregressive layers.

A map holds its hyperparameters only; the conditioner supplies ``num_params`` raw values per
transformed feature. ``forward(x, params)`` / ``inverse(y, params)`` take ``x: (...)`` and
``params: (..., num_params)`` and return ``(outputs, logabsdet)`` elementwise (not summed).
Zero raw parameters give the identity, so a zero-initialised conditioner starts at the identity.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from normflows_sci.transforms.splines import (
    DEFAULT_MIN_BIN_HEIGHT,
    DEFAULT_MIN_BIN_WIDTH,
    DEFAULT_MIN_DERIVATIVE,
    identity_derivative_offset,
    rq_spline_from_params,
)

__all__ = ["ElementwiseMap", "AffineMap", "RQSplineMap"]


class ElementwiseMap(abc.ABC):
    """Interface: ``num_params``, ``forward(x, params)``, ``inverse(y, params)``."""

    num_params: int

    @abc.abstractmethod
    def forward(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(outputs, elementwise logabsdet)``."""

    @abc.abstractmethod
    def inverse(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(outputs, elementwise logabsdet)`` of the inverse map."""


class AffineMap(ElementwiseMap):
    """``y = x * exp(s) + t`` with ``s = bound * tanh(raw / bound)`` soft-clamped for stability.

    Args:
        max_log_scale: ``bound``; ``|s|`` never exceeds it, which keeps training from blowing up.
    """

    num_params = 2

    def __init__(self, max_log_scale: float = 3.0):
        if not max_log_scale > 0:
            raise ValueError(f"max_log_scale must be positive, got {max_log_scale}")
        self.max_log_scale = float(max_log_scale)

    def _shift_log_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = params.unbind(-1)
        return shift, self.max_log_scale * torch.tanh(raw / self.max_log_scale)

    def forward(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_log_scale(params)
        return inputs * log_scale.exp() + shift, log_scale

    def inverse(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_log_scale(params)
        return (inputs - shift) * (-log_scale).exp(), -log_scale


class RQSplineMap(ElementwiseMap):
    """Rational-quadratic spline on ``[-tail_bound, tail_bound]`` with identity tails.

    Raw parameters per feature: ``bins`` widths, ``bins`` heights, ``bins - 1`` interior derivatives.

    References:
        Durkan et al. (2019), "Neural Spline Flows".
    """

    def __init__(
        self,
        bins: int = 8,
        tail_bound: float = 5.0,
        *,
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    ):
        if int(bins) != bins or bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
        if not tail_bound > 0:
            raise ValueError(f"tail_bound must be positive, got {tail_bound}")
        self.bins = int(bins)
        self.tail_bound = float(tail_bound)
        self.num_params = 3 * self.bins - 1
        self.options = dict(
            tail_bound=self.tail_bound,
            min_bin_width=min_bin_width,
            min_bin_height=min_bin_height,
            min_derivative=min_derivative,
        )
        self._offset = identity_derivative_offset(min_derivative)

    def _call(self, inputs: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        return rq_spline_from_params(
            inputs, params, inverse=inverse, derivative_offset=self._offset, **self.options
        )

    def forward(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._call(inputs, params, inverse=False)

    def inverse(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._call(inputs, params, inverse=True)
