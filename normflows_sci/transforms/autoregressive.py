"""Masked autoregressive layers: MAF (affine) and NSF (rational-quadratic spline).

The forward direction (density evaluation) is one conditioner pass; the inverse (sampling) is one
pass per feature, each computing only the parameters of the feature it generates.

References:
    Papamakarios, Pavlakou, Murray (2017), "Masked Autoregressive Flow for Density Estimation";
    Durkan et al. (2019), "Neural Spline Flows".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from normflows_sci.checks import check_context, check_features
from normflows_sci.nn import MADE
from normflows_sci.transforms.base import Transform
from normflows_sci.transforms.elementwise import (
    ElementwiseMap,
    make_map,
    map_alias,
    pop_map_options,
    renamed_map_argument,
)

__all__ = [
    "MaskedAutoregressiveTransform",
    "MaskedAffineAutoregressiveTransform",
    "MaskedSplineAutoregressiveTransform",
]


class MaskedAutoregressiveTransform(Transform):
    """Autoregressive elementwise map with a MADE conditioner.

    Args:
        features: number of features ``D``.
        map: the :class:`ElementwiseMap` applied to each feature given the earlier ones
            (``elementwise=``, its former name, still works with a ``DeprecationWarning``).
        context_features: width of the context (0 for none).
        hidden_features: MADE hidden widths.
        order: generation order, a permutation of ``range(features)`` (default: natural order).
        activation, dropout: MADE options.

    The MADE output layer starts at zero, so the layer starts as the identity.

    References:
        Papamakarios, Pavlakou, Murray (2017), "Masked Autoregressive Flow for Density
        Estimation"; Germain, Gregor, Murray, Larochelle (2015), "MADE".

    Example:
        >>> from normflows_sci.transforms import AffineMap
        >>> t = MaskedAutoregressiveTransform(3, AffineMap(), hidden_features=(16,))
        >>> generator = torch.Generator().manual_seed(0)
        >>> with torch.no_grad():  # random output weights instead of the identity start
        ...     _ = t.made.output.weight.normal_(0.0, 0.5, generator=generator)
        >>> x = torch.randn(4, 3, generator=generator)
        >>> z, logabsdet = t(x)
        >>> x_later = x.clone()
        >>> x_later[:, 2] += 1.0  # changing the last feature leaves the earlier outputs alone
        >>> torch.allclose(t(x_later)[0][:, :2], z[:, :2])
        True
        >>> torch.allclose(t.inverse(z)[0], x, atol=1e-5)
        True
    """

    def __init__(
        self,
        features: int,
        map: ElementwiseMap | None = None,
        *,
        elementwise: ElementwiseMap | None = None,
        context_features: int = 0,
        hidden_features: int | Sequence[int] = (128, 128),
        order: Sequence[int] | None = None,
        activation: Callable[[], nn.Module] = nn.ReLU,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.features = features
        self.context_features = context_features
        self.map = renamed_map_argument(map, elementwise, type(self).__name__)
        self.made = MADE(
            features,
            self.map.num_params,
            hidden_features,
            context_features=context_features,
            order=order,
            activation=activation,
            dropout=dropout,
        )
        nn.init.zeros_(self.made.output.weight)
        nn.init.zeros_(self.made.output.bias)
        self.register_buffer("generation_order", torch.argsort(self.made.in_degrees))

    elementwise = map_alias

    def _check(self, inputs: Tensor, context: Tensor | None) -> None:
        check_features(inputs, self.features)
        check_context(context, self.context_features)

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(inputs, context)
        # .to: under torch.autocast the MADE runs in lower precision, the map in the data's.
        map_ = self.map
        if map_.param_major and inputs.dim() == 2:
            # Parameters straight in the layout the map computes in (element (n, d) in
            # column d * batch + n): no copy transposes them.
            raw = self.made.param_major(inputs, context).to(inputs.dtype)
            outputs, logabsdet = map_.forward_param_major(inputs.t(), raw)
            return outputs.t(), logabsdet.sum(0)
        params = self.made(inputs, context).to(inputs.dtype)
        outputs, logabsdet = map_.forward(inputs, params)
        return outputs, logabsdet.sum(-1)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(inputs, context)
        state = self.made.sequential(torch.zeros_like(inputs), context)
        values, logabsdet = [None] * self.features, 0.0
        map_ = self.map
        param_major = map_.param_major
        for feature in self.generation_order.tolist():
            if param_major:
                raw = state.feature(feature, param_major=True).to(inputs.dtype)
                step = map_.inverse_param_major(inputs[:, feature], raw)
            else:
                params = state.feature(feature).to(inputs.dtype)
                step = map_.inverse(inputs[:, feature], params)
            value, feature_logabsdet = step
            state.set(feature, value)
            values[feature] = value
            logabsdet = logabsdet + feature_logabsdet
        # One stack at the end: no per-feature writes (autograd and torch.compile friendly).
        return torch.stack(values, dim=-1), logabsdet


class MaskedAffineAutoregressiveTransform(MaskedAutoregressiveTransform):
    """MAF layer: ``z_i = x_i * exp(s_i(x_<i)) + t_i(x_<i)``.

    Args:
        map: the elementwise map (default :class:`AffineMap`); ``max_log_scale`` (3) is the
            shorthand that builds the affine map instead.
        **kwargs: options of the parent layer.

    Example:
        >>> t = MaskedAffineAutoregressiveTransform(3, hidden_features=(16,))
        >>> t.inverse(torch.randn(4, 3))[0].shape
        torch.Size([4, 3])
    """

    def __init__(
        self,
        features: int,
        map: ElementwiseMap | None = None,
        *,
        max_log_scale: float | None = None,
        **kwargs,
    ):
        map = make_map(map, default="affine", max_log_scale=max_log_scale)
        super().__init__(features, map, **kwargs)


class MaskedSplineAutoregressiveTransform(MaskedAutoregressiveTransform):
    """NSF autoregressive layer: a rational-quadratic spline per feature given the earlier ones.

    Args:
        features: number of features ``D``.
        map: the :class:`RQSplineMap` (default ``RQSplineMap()``).
        **kwargs: the spline shorthands ``bins``, ``tail_bound``, ``min_bin_width``,
            ``min_bin_height``, ``min_derivative`` (building the map when ``map`` is None; see
            :func:`make_map`), then :class:`MaskedAutoregressiveTransform` options.

    Example:
        >>> t = MaskedSplineAutoregressiveTransform(3, bins=4, hidden_features=(16,))
        >>> t(torch.randn(4, 3))[1].shape
        torch.Size([4])
    """

    def __init__(self, features: int, map: ElementwiseMap | None = None, **kwargs):
        super().__init__(features, make_map(map, **pop_map_options(kwargs)), **kwargs)
