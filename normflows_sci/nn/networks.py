"""Conditioner networks: a plain MLP and MADE (masked autoencoder for distribution estimation)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normflows_sci.checks import check_int

__all__ = ["MLP", "MADE", "MADESequence", "MaskedLinear", "bounded_inputs"]


def _hidden_sizes(hidden_features: int | Sequence[int]) -> tuple[int, ...]:
    sizes = (hidden_features,) if isinstance(hidden_features, int) else tuple(hidden_features)
    if any(int(h) != h or h < 1 for h in sizes):
        raise ValueError(f"hidden_features must be positive integers, got {hidden_features!r}")
    return tuple(int(h) for h in sizes)


def _activation(factory: Callable[[], nn.Module]) -> nn.Module:
    """``factory()``, with a plain ReLU switched to run in place.

    The networks here apply activations only to fresh layer outputs that nothing else reads (and
    ReLU's backward needs only its result), so in place is exact and saves allocating and filling
    one tensor per hidden layer: 7-20% of a CPU training step of a coupling or MAF flow.
    """
    module = factory()
    if type(module) is nn.ReLU:
        module.inplace = True
    return module


def _param_major_output(
    weight: Tensor, bias: Tensor, hidden: Tensor, params_per_feature: int
) -> Tensor:
    """``F.linear(hidden, weight, bias)`` read as ``(batch, D, P)`` and laid out parameter-major,
    ``(P, D * batch)`` (column ``d * batch + n`` is element ``(n, d)``), computed directly in that
    layout: the weight's rows are permuted (a small copy) and multiply the transposed hidden
    activations, so the large output is never transposed."""
    out_features, width = weight.shape
    features = out_features // params_per_feature
    weight = weight.view(features, params_per_feature, width).transpose(0, 1)
    bias = bias.view(features, params_per_feature).t().reshape(out_features, 1)
    out = torch.addmm(bias, weight.reshape(out_features, width), hidden.t())
    return out.view(params_per_feature, features * hidden.shape[0])


def bounded_inputs(values: Tensor, bound: float | None = None) -> Tensor:
    """``values`` clamped to ``±bound``, by default ``±2**32`` (about ``4.3e9``; ``±2**256`` in
    float64), far beyond the scale of any data a network is trained on.

    Networks that read unbounded inputs through smooth or normalised layers clamp them first:
    layer normalisation squares its inputs (the float32 statistics of embedded tokens of ``1e30``
    overflow, ``inf / inf = NaN``), and a smooth ODE field evaluated at ``1e30`` is numerically
    noise. Beyond the bound such a network is constant in each input, with zero gradient there;
    a conditioner may be any function of its inputs, so flow layers stay exact bijections.
    Non-floating tensors pass through; bounds beyond the dtype's range (float16) are capped at
    its largest number.

    Args:
        values: the network's inputs.
        bound: the clamp (default: the fourth root of the dtype's largest number, rounded to a
            power of two, with float32's for the lower precisions).

    Example:
        >>> bounded_inputs(torch.tensor([1.0, -1e30])).tolist()
        [1.0, -4294967296.0]
        >>> bounded_inputs(torch.tensor([math.inf], dtype=torch.float16)).tolist()  # its range
        [65504.0]
    """
    if not values.is_floating_point():
        return values
    limit = _INPUT_BOUNDS.get((values.dtype, bound))
    if limit is None:
        largest = torch.finfo(values.dtype).max
        if bound is None:
            # The fourth root of the largest number (float32's for the lower precisions).
            fourth_root = max(largest, torch.finfo(torch.float32).max)
            bound = 2.0 ** (math.ceil(math.log2(fourth_root)) // 4)
        limit = _INPUT_BOUNDS[(values.dtype, bound)] = min(float(bound), largest)
    return F.hardtanh(values, -limit, limit)  # a clamp with a one-kernel backward


_INPUT_BOUNDS: dict[tuple[torch.dtype, float | None], float] = {}


class MLP(nn.Module):
    """Fully connected network from ``in_features`` through the ``hidden_features`` widths to
    ``out_features``.

    Args:
        in_features: input width.
        out_features: output width.
        hidden_features: widths of the hidden layers.
        activation: module class applied after each hidden layer.
        dropout: dropout probability after each hidden activation.

    Example:
        >>> net = MLP(3, 2, hidden_features=(8, 8))
        >>> net(torch.zeros(5, 3)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int | Sequence[int] = (128, 128),
        *,
        activation: Callable[[], nn.Module] = nn.ReLU,
        dropout: float = 0.0,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in _hidden_sizes(hidden_features):
            layers += [nn.Linear(width, size), _activation(activation)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        self.hidden = nn.Sequential(*layers)
        self.output = nn.Linear(width, out_features)

    def forward(self, inputs: Tensor) -> Tensor:
        """``inputs: (batch, in_features) -> (batch, out_features)``."""
        return self.output(self.hidden(inputs))

    def param_major(self, inputs: Tensor, params_per_feature: int) -> Tensor:
        """The output for ``inputs: (batch, in_features)``, read as ``(batch, D, P)`` with ``P =
        params_per_feature``, laid out ``(P, D * batch)``: column ``d * batch + n`` holds the
        parameters of element ``(n, d)``, the layout the splines compute in.

        Example:
            >>> net = MLP(3, 2 * 4, hidden_features=(8,))
            >>> x = torch.randn(5, 3)
            >>> expected = net(x).view(5, 2, 4).permute(2, 1, 0).reshape(4, 10)
            >>> torch.allclose(net.param_major(x, 4), expected, atol=1e-6)
            True
        """
        hidden = self.hidden(inputs)
        return _param_major_output(self.output.weight, self.output.bias, hidden, params_per_feature)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask ``(out_features, in_features)``."""

    def __init__(self, mask: Tensor, bias: bool = True):
        super().__init__(mask.shape[1], mask.shape[0], bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, inputs: Tensor) -> Tensor:
        return F.linear(inputs, self.weight * self.mask, self.bias)


def made_degrees(features: int, order: Sequence[int] | None) -> Tensor:
    """MADE input degrees: feature ``order[k]`` gets degree ``k + 1`` (natural order if None)."""
    if order is None:
        order = range(features)
    order = torch.as_tensor(list(order), dtype=torch.long)
    if sorted(order.tolist()) != list(range(features)):
        raise ValueError(f"order must be a permutation of range({features}), got {order.tolist()}")
    in_degrees = torch.empty(features, dtype=torch.long)
    in_degrees[order] = torch.arange(1, features + 1)
    return in_degrees


def masked_layers(
    in_degrees: Tensor,
    input_degrees: Tensor,
    hidden_features: int | Sequence[int],
    params_per_feature: int,
) -> tuple[nn.ModuleList, MaskedLinear]:
    """MADE's masked hidden layers and output layer.

    ``in_degrees``: degree of each of the ``D`` features; ``input_degrees``: degree of each network
    input (the same, or e.g. repeated when a feature enters as several inputs). The outputs of
    feature ``i`` (``params_per_feature`` of them) see only inputs of lower degree.
    """
    sizes = _hidden_sizes(hidden_features)
    if not sizes:
        raise ValueError("hidden_features must name at least one hidden layer for MADE")
    features = len(in_degrees)
    layers, degrees = [], input_degrees
    for size in sizes:
        hidden_degrees = torch.arange(size) % max(1, features - 1) + min(1, features - 1)
        layers.append(MaskedLinear(hidden_degrees[:, None] >= degrees[None, :]))
        degrees = hidden_degrees
    out_degrees = in_degrees.repeat_interleave(params_per_feature)
    return nn.ModuleList(layers), MaskedLinear(out_degrees[:, None] > degrees[None, :])


# MADE reads its inputs clamped to +-2**16 (bounded_inputs), in every dtype. A masked-out
# weight's gradient is computed as the product of the upstream gradient and a layer input, then
# multiplied by the mask's 0. Far outside the data (|x| ~ 1e10 in float32) that product
# overflows while the true gradient is still representable, and inf * 0 = NaN; conditioner
# inputs also compound the growth through the stacked layers of a flow. Clamped at 2**16, the
# layer inputs are bounded, a deeper layer's conditioner is constant beyond the bound (gradients
# stop compounding through it), and the masked products stay finite while the gradients they
# multiply are below about max / 2**16 (5e33 in float32). (Selecting instead of multiplying by
# the mask keeps them finite everywhere, but costs several times this clamp in every training
# step.) One bound for every dtype keeps a model's density independent of its dtype.
_MADE_INPUT_BOUND = 2.0**16


class MADE(nn.Module):
    """Masked autoregressive network: the outputs of feature ``i`` see only features before it.

    "Before" is with respect to ``order`` (default ``0, 1, ..., features - 1``). Context, if any,
    enters the first hidden layer unmasked. The network reads its inputs clamped to ``±2**16``
    (in every dtype) and its context clamped by :func:`bounded_inputs`: far outside the data
    (``1e10``-``1e14`` in float32) the gradients of masked-out weights were NaN (an overflowing
    product times the mask's 0) where the true gradients fit; with bounded layer inputs they
    stay finite. A conditioner may be any function of its inputs, so flow layers stay exact
    bijections; data of larger scale should be standardised.

    Args:
        features: number of input features ``D``.
        params_per_feature: outputs per feature ``P``.
        hidden_features: widths of the hidden layers.
        context_features: width of the context (0 for none).
        order: a permutation of ``range(features)``; feature ``order[k]`` is the ``k``-th generated.
        activation: module class for the hidden activations.
        dropout: dropout probability after each hidden activation.

    Shapes:
        ``forward(inputs: (batch, D), context: (batch, C) | None) -> (batch, D, P)``.

    References:
        Germain, Gregor, Murray, Larochelle (2015), "MADE: Masked Autoencoder for Distribution
        Estimation".

    Example:
        >>> made = MADE(4, 2, hidden_features=(16,))
        >>> made(torch.zeros(3, 4)).shape
        torch.Size([3, 4, 2])
    """

    def __init__(
        self,
        features: int,
        params_per_feature: int,
        hidden_features: int | Sequence[int] = (128, 128),
        *,
        context_features: int = 0,
        order: Sequence[int] | None = None,
        activation: Callable[[], nn.Module] = nn.ReLU,
        dropout: float = 0.0,
    ):
        super().__init__()
        check_int("features", features)
        self.features = features
        self.params_per_feature = params_per_feature
        self.register_buffer("in_degrees", made_degrees(features, order))
        self.layers, self.output = masked_layers(
            self.in_degrees, self.in_degrees, hidden_features, params_per_feature
        )
        self.context_layer = (
            nn.Linear(context_features, self.layers[0].out_features)
            if context_features > 0
            else None
        )
        self.context_features = context_features
        self.activation = _activation(activation)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def _first_preactivation(self, inputs: Tensor, context: Tensor | None) -> Tensor:
        first = self.layers[0](bounded_inputs(inputs, _MADE_INPUT_BOUND))
        if self.context_layer is not None:
            if context is None:
                raise ValueError(
                    f"context is required: this network was built with "
                    f"context_features={self.context_features}"
                )
            first = first + self.context_layer(bounded_inputs(context))
        return first

    def _hidden_from(self, first: Tensor, *, keep_first: bool = False) -> Tensor:
        """Hidden output from the first pre-activation; ``keep_first`` leaves ``first`` intact
        (the activation may run in place)."""
        hidden = (
            first.clone() if keep_first and getattr(self.activation, "inplace", False) else first
        )
        for i, layer in enumerate(self.layers):
            if i > 0:
                hidden = layer(hidden)
            hidden = self.activation(hidden)
            if self.dropout is not None:
                hidden = self.dropout(hidden)
        return hidden

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        out = self.output(self._hidden_from(self._first_preactivation(inputs, context)))
        return out.reshape(*inputs.shape[:-1], self.features, self.params_per_feature)

    def param_major(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """:meth:`forward` for ``inputs: (batch, D)`` laid out ``(P, D * batch)``, column
        ``d * batch + n`` for element ``(n, d)`` (see :meth:`MLP.param_major`)."""
        hidden = self._hidden_from(self._first_preactivation(inputs, context))
        weight = self.output.weight * self.output.mask
        return _param_major_output(weight, self.output.bias, hidden, self.params_per_feature)

    def _feature_output(self, hidden: Tensor, feature: int, param_major: bool = False) -> Tensor:
        rows = slice(feature * self.params_per_feature, (feature + 1) * self.params_per_feature)
        weight = self.output.weight[rows] * self.output.mask[rows]
        if param_major:  # (P, batch)
            return torch.addmm(self.output.bias[rows, None], weight, hidden.t())
        return F.linear(hidden, weight, self.output.bias[rows])

    def forward_feature(
        self, inputs: Tensor, feature: int, context: Tensor | None = None
    ) -> Tensor:
        """Only the outputs of one feature: ``(batch, P)``; cheaper than ``forward(...)[:, feature]``."""
        hidden = self._hidden_from(self._first_preactivation(inputs, context))
        return self._feature_output(hidden, feature)

    def sequential(self, inputs: Tensor, context: Tensor | None = None) -> MADESequence:
        """Evaluate feature by feature in generation order, for autoregressive sampling.

        ``inputs`` holds the values known so far (typically zeros). The first layer is linear, so
        its pre-activation is kept and updated by one column when a feature's value is set
        (``O(batch x hidden)`` instead of a ``(batch x D) @ (D x hidden)`` product per feature);
        only the deeper layers and the generated feature's output rows run per step.

        Example:
            >>> made = MADE(3, 2, hidden_features=(8,))
            >>> x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
            >>> state = made.sequential(torch.zeros(4, 3))
            >>> for feature in range(3):
            ...     out = state.feature(feature)
            ...     state.set(feature, x[:, feature])
            >>> torch.allclose(out, made(x)[:, 2], atol=1e-6)
            True
        """
        return MADESequence(self, self._first_preactivation(inputs, context))


class MADESequence:
    """State of :meth:`MADE.sequential`: the first layer's pre-activation at the known values."""

    def __init__(self, made: MADE, first: Tensor):
        self.made = made
        self.first = first
        first_layer = made.layers[0]
        self._columns = (first_layer.weight * first_layer.mask).t()  # (D, hidden), masked

    def feature(self, feature: int, param_major: bool = False) -> Tensor:
        """Outputs ``(batch, P)`` of ``feature`` given the values set so far; ``(P, batch)``
        with ``param_major``."""
        hidden = self.made._hidden_from(self.first, keep_first=True)
        return self.made._feature_output(hidden, feature, param_major)

    def set(self, feature: int, value: Tensor) -> None:
        """Record ``value: (batch,)`` for ``feature`` (its previous value must have been 0)."""
        column = self._columns[feature].to(self.first.dtype)
        value = bounded_inputs(value, _MADE_INPUT_BOUND)  # as the forward pass reads it
        self.first = torch.addcmul(self.first, value[:, None].to(self.first.dtype), column)
