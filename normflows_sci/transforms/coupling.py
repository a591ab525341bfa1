"""Coupling layers: features under a mask stay fixed and condition an elementwise map of the rest.

References:
    Dinh, Sohl-Dickstein, Bengio (2017), "Density estimation using Real NVP";
    Durkan et al. (2019), "Neural Spline Flows".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from normflows_sci.checks import check_context, check_features
from normflows_sci.nn import MLP
from normflows_sci.transforms.base import Transform
from normflows_sci.transforms.elementwise import (
    ElementwiseMap,
    SplitMap,
    circular_counterpart,
    make_map,
    map_alias,
    pop_map_options,
    renamed_map_argument,
)

__all__ = [
    "CouplingTransform",
    "AffineCouplingTransform",
    "SplineCouplingTransform",
    "alternating_mask",
]


def alternating_mask(features: int, *, even: bool = True) -> Tensor:
    """Boolean mask ``(features,)``, True on even (or odd) positions: the features transformed.

    Example:
        >>> alternating_mask(5).tolist()
        [True, False, True, False, True]
        >>> alternating_mask(5, even=False).tolist()
        [False, True, False, True, False]
    """
    mask = torch.arange(features) % 2 == 0
    return mask if even else ~mask


def _circular_flags(circular, features: int) -> Tensor:
    if circular is None:
        return torch.zeros(features, dtype=torch.bool)
    flags = torch.as_tensor(circular).bool()
    if flags.shape != (features,):
        raise ValueError(
            f"circular must have one boolean per feature ({features},), got {tuple(flags.shape)}"
        )
    return flags


class CouplingTransform(Transform):
    """A coupling layer with any mask and any elementwise map.

    Args:
        mask: ``(features,)`` boolean or 0/1; True (1) marks the features that are transformed, the
            others pass through unchanged and (with the context) feed the conditioner.
        map: the :class:`ElementwiseMap` applied to the transformed features (``elementwise=``,
            its former name, still works with a ``DeprecationWarning``).
        context_features: width of the context (0 for none).
        hidden_features: hidden widths of the default MLP conditioner.
        conditioner: optional factory ``(in_features, out_features) -> nn.Module`` replacing the MLP.
        activation, dropout: options of the default MLP.
        circular: optional ``(features,)`` booleans marking angle features; the conditioner sees
            ``(cos, sin)`` of those (so its output is periodic in them). The elementwise map must
            treat transformed angles as circle variables (see ``SplineCouplingTransform``).

    The conditioner's output layer starts at zero, so the layer starts as the identity.

    References:
        Dinh, Sohl-Dickstein, Bengio (2017), "Density estimation using Real NVP".

    Example:
        A random linear conditioner (instead of the zero-initialised MLP) makes the map visible:

        >>> from normflows_sci.transforms import AffineMap
        >>> t = CouplingTransform(alternating_mask(4), AffineMap(),
        ...                       conditioner=lambda i, o: torch.nn.Linear(i, o))
        >>> x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
        >>> z, logabsdet = t(x)
        >>> torch.equal(z[:, 1::2], x[:, 1::2]), torch.allclose(z[:, ::2], x[:, ::2])
        (True, False)
        >>> torch.allclose(t.inverse(z)[0], x, atol=1e-5)
        True
    """

    def __init__(
        self,
        mask: Sequence[bool] | Tensor,
        map: ElementwiseMap | None = None,
        *,
        elementwise: ElementwiseMap | None = None,
        context_features: int = 0,
        hidden_features: int | Sequence[int] = (128, 128),
        conditioner: Callable[[int, int], nn.Module] | None = None,
        activation: Callable[[], nn.Module] = nn.ReLU,
        dropout: float = 0.0,
        circular: Sequence[bool] | Tensor | None = None,
    ):
        super().__init__()
        mask = torch.as_tensor(mask)
        if mask.ndim != 1:
            raise ValueError(f"mask must be 1-D (features,), got shape {tuple(mask.shape)}")
        mask = mask.bool()
        transformed = torch.nonzero(mask).flatten()
        identity = torch.nonzero(~mask).flatten()
        if len(transformed) == 0:
            raise ValueError("mask must mark at least one feature to transform (all False given)")
        self.features = len(mask)
        self.context_features = context_features
        self.map = renamed_map_argument(map, elementwise, type(self).__name__)
        self.register_buffer("identity_idx", identity)
        self.register_buffer("transform_idx", transformed)
        # Outputs are assembled as cat([identity, transformed]) and then put back in place.
        self.register_buffer("restore_idx", torch.argsort(torch.cat([identity, transformed])))
        self._find_halves()
        # The index buffers are saved with the model: keep the fast path in step with them.
        self.register_load_state_dict_post_hook(lambda module, keys: module._find_halves())
        circular = _circular_flags(circular, len(mask))
        # Positions (among the identity features) of the angles the conditioner sees as (cos, sin).
        self.register_buffer("angle_idx", torch.nonzero(circular[identity]).flatten())
        self.register_buffer("plain_idx", torch.nonzero(~circular[identity]).flatten())
        in_features = len(identity) + len(self.angle_idx) + context_features
        out_features = len(transformed) * self.map.num_params
        if in_features == 0:
            raise ValueError(
                "a coupling layer needs at least one untransformed feature or a context "
                "(mask marks every feature and context_features=0)"
            )
        if conditioner is None:
            self.conditioner = MLP(
                in_features, out_features, hidden_features, activation=activation, dropout=dropout
            )
            nn.init.zeros_(self.conditioner.output.weight)
            nn.init.zeros_(self.conditioner.output.bias)
        else:
            self.conditioner = conditioner(in_features, out_features)

    elementwise = map_alias

    def _find_halves(self) -> None:
        """``(identity_first, sizes)`` when the two feature sets are contiguous blocks: then the
        layer splits and concatenates views instead of gathering and scattering columns."""
        identity, moving = self.identity_idx.tolist(), self.transform_idx.tolist()
        blocks = [identity, moving] if identity and identity[0] == 0 else [moving, identity]
        contiguous = blocks[0] + blocks[1] == list(range(self.features))
        self._halves = (blocks[0] is identity, [len(b) for b in blocks]) if contiguous else None

    def _couple(self, inputs: Tensor, context: Tensor | None, inverse: bool):
        check_features(inputs, self.features)
        if self._halves is not None:
            identity_first, sizes = self._halves
            first, second = inputs.split(sizes, dim=-1)
            fixed, moving = (first, second) if identity_first else (second, first)
        else:
            fixed = inputs.index_select(-1, self.identity_idx)
            moving = inputs.index_select(-1, self.transform_idx)
        cond = fixed
        if len(self.angle_idx):
            angles = fixed.index_select(-1, self.angle_idx)
            plain = fixed.index_select(-1, self.plain_idx)
            cond = torch.cat([plain, angles.cos(), angles.sin()], dim=-1)
        if self.context_features:
            check_context(context, self.context_features)
            cond = torch.cat([cond, context], dim=-1)
        moved, logabsdet = self._move(moving, cond, inverse)
        if self._halves is None:
            outputs = torch.cat([fixed, moved], dim=-1).index_select(-1, self.restore_idx)
        else:
            outputs = torch.cat([fixed, moved] if self._halves[0] else [moved, fixed], dim=-1)
        return outputs, logabsdet

    def _move(self, moving: Tensor, cond: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """The transformed features and the summed log-determinant."""
        # Parameters in the data's dtype: under torch.autocast the conditioner runs in lower
        # precision while the elementwise map and its log-determinant stay in full precision.
        map_, num_params = self.map, self.map.num_params
        if map_.param_major and type(self.conditioner) is MLP and moving.dim() == 2:
            # The package's own network emits the parameters in the layout the map computes
            # in (element (n, d) in column d * batch + n): no copy transposes them.
            raw = self.conditioner.param_major(cond, num_params).to(moving.dtype)
            step = map_.inverse_param_major if inverse else map_.forward_param_major
            moved, logabsdet = step(moving.t(), raw)
            return moved.t(), logabsdet.sum(0)
        params = self.conditioner(cond).to(moving.dtype)
        params = params.reshape(*moving.shape, num_params)
        moved, logabsdet = (map_.inverse if inverse else map_.forward)(moving, params)
        return moved, logabsdet.sum(-1)

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(inputs, context, inverse=False)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(inputs, context, inverse=True)


class AffineCouplingTransform(CouplingTransform):
    """Affine coupling (RealNVP): ``y = x * exp(s(x_id)) + t(x_id)`` on the masked features.

    Args:
        map: the elementwise map (default :class:`AffineMap`); ``max_log_scale`` (3) is the
            shorthand that builds the affine map instead.
        **kwargs: options of the parent layer.

    Example:
        >>> t = AffineCouplingTransform(alternating_mask(4), hidden_features=(16,))
        >>> z, logabsdet = t(torch.randn(8, 4))
        >>> z.shape, logabsdet.shape
        (torch.Size([8, 4]), torch.Size([8]))
    """

    def __init__(
        self,
        mask,
        map: ElementwiseMap | None = None,
        *,
        max_log_scale: float | None = None,
        **kwargs,
    ):
        map = make_map(map, default="affine", max_log_scale=max_log_scale)
        super().__init__(mask, map, **kwargs)


class SplineCouplingTransform(CouplingTransform):
    """Rational-quadratic spline coupling (NSF-C) with linear tails outside ``[-tail_bound, tail_bound]``.

    With ``circular`` flags, angle features (read modulo ``2 pi``, returned in ``[-pi, pi)``) get
    the map's circular counterpart (:meth:`RQSplineMap.circular`) and feed the conditioner as
    ``(cos, sin)``.

    Args:
        mask: as for :class:`CouplingTransform`.
        map: the :class:`RQSplineMap` (default ``RQSplineMap()``).
        **kwargs: the spline shorthands ``bins``, ``tail_bound``, ``min_bin_width``,
            ``min_bin_height``, ``min_derivative`` (building the map when ``map`` is None; see
            :func:`make_map`), then :class:`CouplingTransform` options.

    Example:
        >>> t = SplineCouplingTransform(alternating_mask(4), bins=4, hidden_features=(16,))
        >>> t(torch.randn(8, 4))[0].shape
        torch.Size([8, 4])
    """

    def __init__(self, mask, map: ElementwiseMap | None = None, **kwargs):
        spline = make_map(map, **pop_map_options(kwargs))
        circular = kwargs.get("circular")
        if circular is not None:
            moving = _circular_flags(circular, len(mask))[torch.as_tensor(mask).bool()]
            if moving.any():
                spline = SplitMap(moving, circular_counterpart(spline), spline)
        super().__init__(mask, spline, **kwargs)
