"""Parametrised elementwise bijections shared by coupling and autoregressive layers.

A map is a value: it holds its hyperparameters (a spline's bins, bound and minimums, an affine
map's scale bound) and is passed to the layers and factories that use it (``map=``), which never
re-declare its options. The conditioner supplies ``num_params`` raw values per transformed feature.
``forward(x, params)`` / ``inverse(y, params)`` take ``x: (...)`` and ``params: (...,
num_params)`` and return ``(outputs, logabsdet)`` elementwise (not summed). Zero raw parameters
give the identity, so a zero-initialised conditioner starts at the identity.

A map also says which parameter layout it computes in (:attr:`ElementwiseMap.param_major`):
layers whose conditioner can emit that layout directly hand it to
:meth:`ElementwiseMap.forward_param_major` / :meth:`ElementwiseMap.inverse_param_major` without
asking what kind of map it is.
"""

from __future__ import annotations

import abc
import functools
import inspect
import math
import warnings

import torch
from torch import Tensor

from normflows_sci.checks import check_int
from normflows_sci.transforms.splines import (
    DEFAULT_MIN_BIN_HEIGHT,
    DEFAULT_MIN_BIN_WIDTH,
    DEFAULT_MIN_DERIVATIVE,
    identity_derivative_offset,
    rational_quadratic_spline,
    rq_spline_from_params,
    rq_spline_param_major,
)

__all__ = [
    "ElementwiseMap",
    "AffineMap",
    "RQSplineMap",
    "CircularSplineMap",
    "SplitMap",
    "circular_counterpart",
    "make_map",
    "map_alias",
    "pop_map_options",
    "renamed_map_argument",
    "wrap_angle",
]


class ElementwiseMap(abc.ABC):
    """Interface: ``num_params``, ``forward(x, params)``, ``inverse(y, params)``.

    Attributes:
        num_params: raw parameters per transformed element.
        param_major: True when the map computes with its parameters laid out ``(num_params,
            elements)``; layers whose conditioner can emit that layout then call
            :meth:`forward_param_major` / :meth:`inverse_param_major` and skip a transposing copy.
    """

    num_params: int
    param_major: bool = False

    @abc.abstractmethod
    def forward(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(outputs, elementwise logabsdet)``."""

    @abc.abstractmethod
    def inverse(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(outputs, elementwise logabsdet)`` of the inverse map."""

    def forward_param_major(self, inputs: Tensor, raw: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward` with parameter-major parameters ``raw: (num_params, inputs.numel())``
        (column ``i`` for flat input ``i``). Maps with ``param_major = True`` compute in this
        layout; the default transposes once and calls :meth:`forward`."""
        return self.forward(inputs, raw.t().reshape(*inputs.shape, self.num_params))

    def inverse_param_major(self, inputs: Tensor, raw: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`inverse` with parameter-major parameters (see :meth:`forward_param_major`)."""
        return self.inverse(inputs, raw.t().reshape(*inputs.shape, self.num_params))


@functools.lru_cache(maxsize=16)
def _saturation(dtype: torch.dtype) -> float:
    """The sigmoid argument beyond which ``1 - sigmoid`` falls below the dtype's epsilon (15.9
    in float32, 36.0 in float64): clamping there changes ``sigmoid`` by at most one rounding."""
    return -math.log(torch.finfo(dtype).eps)


class AffineMap(ElementwiseMap):
    """``y = x * exp(s) + t`` with ``s = bound * tanh(raw / bound)`` soft-clamped for stability.

    The clamp is evaluated as ``2 bound sigmoid(2 raw / bound) - bound`` (the same function;
    torch's CPU ``tanh`` takes about three times as long as ``sigmoid``), with ``2 raw / bound``
    clamped where ``|s|`` is within a rounding of ``bound`` (``-log(eps)`` of the dtype): the
    gradient is exactly 0 there instead of NaN when the sigmoid saturates under a huge upstream
    gradient.

    Args:
        max_log_scale: ``bound``; ``|s|`` never exceeds it, which keeps training from blowing up.
    """

    num_params = 2

    def __init__(self, max_log_scale: float = 3.0):
        if not max_log_scale > 0:
            raise ValueError(f"max_log_scale must be positive, got {max_log_scale}")
        self.max_log_scale = float(max_log_scale)

    def _map(self, inputs: Tensor, shift: Tensor, raw: Tensor, inverse: bool):
        bound = self.max_log_scale
        if torch.is_grad_enabled() and any(t.requires_grad for t in (inputs, shift, raw)):
            limit = _saturation(raw.dtype)
            # Clamped where the sigmoid still differs from 1: a saturated sigmoid's backward is
            # upstream * 1 * (1 - 1), NaN for an overflowing upstream gradient (float32 inputs
            # ~1e15); beyond the clamp the gradient is exactly 0.
            log_scale = torch.sigmoid((raw * (2.0 / bound)).clamp_(-limit, limit))
            log_scale = log_scale * (2.0 * bound) - bound
            if inverse:
                log_scale = -log_scale
                return (inputs - shift) * log_scale.exp(), log_scale
            return inputs * log_scale.exp() + shift, log_scale
        # No gradient (sampling, evaluation): the same arithmetic, with the intermediate
        # results overwritten in place, so fewer batch-sized temporaries are alive at once (no
        # clamp: it only guards the backward pass, and values differ by at most one rounding).
        log_scale = (raw * (2.0 / bound)).sigmoid_()
        log_scale = log_scale.mul_(2.0 * bound).sub_(bound)
        if inverse:
            log_scale = log_scale.neg_()
            return (inputs - shift).mul_(log_scale.exp()), log_scale
        return (inputs * log_scale.exp()).add_(shift), log_scale

    def forward(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._map(inputs, *params.unbind(-1), inverse=False)

    def inverse(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._map(inputs, *params.unbind(-1), inverse=True)


class RQSplineMap(ElementwiseMap):
    """Rational-quadratic spline on ``[-tail_bound, tail_bound]`` with identity tails.

    Raw parameters per feature: ``bins`` widths, ``bins`` heights, ``bins - 1`` interior derivatives.
    This class is the one place the spline options are declared: layers and factories take an
    ``RQSplineMap`` (``map=``), and their ``bins=``/``tail_bound=``/... shorthands build one.

    Args:
        bins: number of bins ``K`` (at least 2).
        tail_bound: the spline acts on ``[-tail_bound, tail_bound]``, identity outside.
        min_bin_width, min_bin_height, min_derivative: regularity bounds (``min * bins < 1``).

    References:
        Durkan et al. (2019), "Neural Spline Flows".

    Example:
        >>> spline = RQSplineMap(bins=4, tail_bound=3.0)
        >>> spline.num_params, spline.circular().num_params  # its circular counterpart
        (11, 13)
    """

    param_major = True

    def __init__(
        self,
        bins: int = 8,
        tail_bound: float = 5.0,
        *,
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    ):
        self.bins = check_int("bins", bins, minimum=2)
        if not tail_bound > 0:
            raise ValueError(f"tail_bound must be positive, got {tail_bound}")
        self.tail_bound = float(tail_bound)
        self.num_params = 3 * self.bins - 1
        self.min_bin_width, self.min_bin_height = min_bin_width, min_bin_height
        self.min_derivative = min_derivative
        self.options = dict(
            tail_bound=self.tail_bound,
            min_bin_width=min_bin_width,
            min_bin_height=min_bin_height,
            min_derivative=min_derivative,
        )
        self._offset = identity_derivative_offset(min_derivative)

    def __repr__(self) -> str:
        return (
            f"RQSplineMap(bins={self.bins}, tail_bound={self.tail_bound}, "
            f"min_bin_width={self.min_bin_width}, min_bin_height={self.min_bin_height}, "
            f"min_derivative={self.min_derivative})"
        )

    def circular(self) -> CircularSplineMap:
        """The circular spline with the same bins and minimums (for angle features)."""
        return CircularSplineMap(
            self.bins,
            min_bin_width=self.min_bin_width,
            min_bin_height=self.min_bin_height,
            min_derivative=self.min_derivative,
        )

    def _call(self, inputs: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        return rq_spline_from_params(
            inputs, params, inverse=inverse, derivative_offset=self._offset, **self.options
        )

    def _call_param_major(self, inputs: Tensor, raw: Tensor, inverse: bool):
        return rq_spline_param_major(
            inputs, raw, inverse=inverse, derivative_offset=self._offset, **self.options
        )

    def forward(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._call(inputs, params, inverse=False)

    def inverse(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._call(inputs, params, inverse=True)

    def forward_param_major(self, inputs: Tensor, raw: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward` in the layout the spline computes in (no transposing copy)."""
        return self._call_param_major(inputs, raw, inverse=False)

    def inverse_param_major(self, inputs: Tensor, raw: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`inverse` in the layout the spline computes in (no transposing copy)."""
        return self._call_param_major(inputs, raw, inverse=True)


def wrap_angle(angles: Tensor) -> Tensor:
    """Angles mapped to ``[-pi, pi)``.

    >>> wrap_angle(torch.tensor([3.5, -3.5, 3.141592653589793], dtype=torch.float64)).tolist()
    [-2.7831853071795862, 2.7831853071795862, -3.141592653589793]
    """
    return torch.remainder(angles + math.pi, 2 * math.pi) - math.pi


class CircularSplineMap(ElementwiseMap):
    """Diffeomorphism of the circle: a rational-quadratic spline on ``[-pi, pi)`` followed by a
    rotation, for angles (torsions, directions in the plane).

    The spline's end derivatives are equal (one shared raw value), so it is smooth across
    ``-pi == pi``; the rotation lets the fixed point move. Inputs are read modulo ``2 pi`` and
    outputs lie in ``[-pi, pi)``. Raw parameters per feature: ``bins`` widths, ``bins`` heights,
    ``bins`` knot derivatives (the last knot reuses the first) and one rotation angle.

    References:
        Rezende, Papamakarios, Racanière et al. (2020), "Normalizing Flows on Tori and Spheres".
    """

    def __init__(
        self,
        bins: int = 8,
        *,
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    ):
        self.bins = check_int("bins", bins, minimum=2)
        self.num_params = 3 * self.bins + 1
        self.options = dict(
            left=-math.pi,
            right=math.pi,
            bottom=-math.pi,
            top=math.pi,
            min_bin_width=min_bin_width,
            min_bin_height=min_bin_height,
            min_derivative=min_derivative,
        )
        self._offset = identity_derivative_offset(min_derivative)

    def _spline(self, inputs: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        k = self.bins
        derivatives = params[..., 2 * k : 3 * k] + self._offset
        derivatives = torch.cat([derivatives, derivatives[..., :1]], dim=-1)
        return rational_quadratic_spline(
            inputs,
            params[..., :k],
            params[..., k : 2 * k],
            derivatives,
            inverse=inverse,
            **self.options,
        )

    def forward(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        outputs, logabsdet = self._spline(wrap_angle(inputs), params, inverse=False)
        return wrap_angle(outputs + params[..., -1]), logabsdet

    def inverse(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._spline(wrap_angle(inputs - params[..., -1]), params, inverse=True)


class SplitMap(ElementwiseMap):
    """Two maps side by side: ``on_true`` for the features where ``flags`` is True, ``on_false``
    for the rest (e.g. circular splines on angles and interval splines on lengths).

    Each map reads the first ``num_params`` of the ``max`` raw parameters its features receive.

    Args:
        flags: ``(features,)`` booleans over the features this map receives.
    """

    def __init__(self, flags, on_true: ElementwiseMap, on_false: ElementwiseMap):
        flags = torch.as_tensor(flags, dtype=torch.bool)
        if flags.ndim != 1:
            raise ValueError(f"flags must be 1-D (features,), got shape {tuple(flags.shape)}")
        self.on_true, self.on_false = on_true, on_false
        self.num_params = max(on_true.num_params, on_false.num_params)
        self.true_idx = torch.nonzero(flags).flatten()
        self.false_idx = torch.nonzero(~flags).flatten()
        self.restore_idx = torch.argsort(torch.cat([self.true_idx, self.false_idx]))

    def _apply(self, inputs: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        device = inputs.device
        outputs, logabsdets = [], []
        for idx, elementwise in ((self.true_idx, self.on_true), (self.false_idx, self.on_false)):
            idx = idx.to(device)
            step = elementwise.inverse if inverse else elementwise.forward
            part_params = params.index_select(-2, idx)[..., : elementwise.num_params]
            out, lad = step(inputs.index_select(-1, idx), part_params)
            outputs.append(out)
            logabsdets.append(lad)
        restore = self.restore_idx.to(device)
        return (
            torch.cat(outputs, -1).index_select(-1, restore),
            torch.cat(logabsdets, -1).index_select(-1, restore),
        )

    def forward(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._apply(inputs, params, inverse=False)

    def inverse(self, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._apply(inputs, params, inverse=True)


_MAP_KINDS = {"affine": AffineMap, "spline": RQSplineMap, "circular": CircularSplineMap}


def make_map(map=None, *, default: str = "spline", name: str = "map", **options) -> ElementwiseMap:
    """The elementwise map a layer or factory uses: ``map`` itself, or one built from shorthands.

    Args:
        map: an :class:`ElementwiseMap` (returned as is; no shorthand may be given with it),
            ``"affine"`` (:class:`AffineMap`), ``"spline"`` (:class:`RQSplineMap`),
            ``"circular"`` (:class:`CircularSplineMap`) or None (``default``).
        default: the kind built when ``map`` is None.
        name: the argument's name in error messages.
        **options: keyword arguments of the chosen class (``bins``, ``tail_bound``,
            ``min_bin_width``, ``min_bin_height``, ``min_derivative`` for a spline,
            ``max_log_scale`` for an affine map). Options of the other kind are ignored, so
            factories can forward every shorthand they accept.

    Raises:
        ValueError: ``map`` is a string naming no kind.
        TypeError: ``map`` is neither a map nor a string, or shorthands came with a map object
            (they would be silently ignored).

    Example:
        >>> make_map(bins=4, tail_bound=3.0)
        RQSplineMap(bins=4, tail_bound=3.0, min_bin_width=0.001, min_bin_height=0.001, min_derivative=0.001)
        >>> type(make_map("affine", max_log_scale=2.0)).__name__
        'AffineMap'
    """
    if isinstance(map, ElementwiseMap):
        given = {k: v for k, v in options.items() if v is not None}
        if given:
            raise TypeError(
                f"give the map's options to the map itself, not next to map=: got {sorted(given)} "
                f"with map={map!r}"
            )
        return map
    kind = default if map is None else map
    if not (isinstance(kind, str) and kind in _MAP_KINDS):
        error = ValueError if isinstance(kind, str) else TypeError
        kinds = ", ".join(repr(k) for k in _MAP_KINDS)
        raise error(f"{name} must be an ElementwiseMap, None or one of {kinds}, got {map!r}")
    cls = _MAP_KINDS[kind]
    accepted = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in options.items() if k in accepted and v is not None})


def pop_map_options(kwargs: dict, kind: str = "spline") -> dict:
    """Remove the keyword arguments of the ``kind`` map class (see :func:`make_map`) from
    ``kwargs`` and return them: how layers and factories take the map shorthands without
    re-declaring them (the names are those of the class's own signature).

    Example:
        >>> options = {"bins": 4, "hidden_features": (8,)}
        >>> pop_map_options(options), options
        ({'bins': 4}, {'hidden_features': (8,)})
    """
    accepted = inspect.signature(_MAP_KINDS[kind]).parameters
    return {name: kwargs.pop(name) for name in list(kwargs) if name in accepted}


def renamed_map_argument(map, elementwise, owner: str):
    """The map given as ``map`` or under its deprecated keyword ``elementwise``.

    Raises:
        TypeError: both or neither were given.
    """
    if elementwise is not None:
        warnings.warn(
            f"{owner}(elementwise=...) is deprecated; pass map=... instead",
            DeprecationWarning,
            stacklevel=3,
        )
        if map is not None:
            raise TypeError(f"{owner} got both map and elementwise (its deprecated name)")
        map = elementwise
    if not isinstance(map, ElementwiseMap):
        raise TypeError(f"{owner} needs map=, an ElementwiseMap, got {map!r}")
    return map


def _layer_map(layer) -> ElementwiseMap:
    return layer.map


def _set_layer_map(layer, value: ElementwiseMap) -> None:
    layer.map = value


map_alias = property(
    _layer_map,
    _set_layer_map,
    doc="A layer's ``map`` under its former attribute name (``layer.elementwise``).",
)


def circular_counterpart(map: ElementwiseMap) -> ElementwiseMap:
    """The circle map that goes with ``map`` on angle features (``map.circular()``, e.g. the
    :class:`CircularSplineMap` of an :class:`RQSplineMap`, same bins and minimums).

    Raises:
        TypeError: ``map`` has no circular counterpart (e.g. an :class:`AffineMap`).
    """
    make = getattr(map, "circular", None)
    if make is None:
        raise TypeError(
            f"circular features need a map with a circular counterpart (e.g. RQSplineMap), "
            f"got {map!r}"
        )
    return make()
