"""Ready-made flows: NSF, MAF and RealNVP, each returning a :class:`Flow`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
from torch import nn

from normflows_sci.checks import check_int
from normflows_sci.distributions import Distribution, NormalWithAngles, StandardNormal
from normflows_sci.flows.base import Flow
from normflows_sci.transforms import (
    CompositeTransform,
    CouplingTransform,
    ElementwiseMap,
    LULinear,
    MaskedAutoregressiveTransform,
    RandomPermutation,
    SplitMap,
    Transform,
    alternating_mask,
    circular_counterpart,
    make_map,
    pop_map_options,
)

__all__ = ["NSF", "MAF", "RealNVP"]

_PERMUTATIONS = ("alternate", "random")


@dataclass(frozen=True)
class _Stack:
    """The options every factory shares (documented in ``_COMMON_ARGS``), with their defaults."""

    transforms: int = 5
    hidden_features: int | Sequence[int] = (128, 128)
    permutation: str = "alternate"
    lu_linear: bool = False
    base: Distribution | None = None
    embedding: nn.Module | None = None
    activation: Callable[[], nn.Module] = nn.ReLU
    dropout: float = 0.0
    seed: int | None = None

    @classmethod
    def of(cls, owner: str, options: dict) -> _Stack:
        """The shared options among a factory's remaining keyword arguments; any other name is
        a ``TypeError`` (a misspelt option must not be silently ignored)."""
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"{owner}() got unexpected keyword arguments {unknown}")
        return cls(**options)

    def network(self, context_features: int) -> dict:
        """Keyword arguments of every layer's conditioner."""
        return dict(
            context_features=context_features,
            hidden_features=self.hidden_features,
            activation=self.activation,
            dropout=self.dropout,
        )


def _build(
    features: int,
    context_features: int,
    map: ElementwiseMap,
    stack: _Stack,
    *,
    coupling: bool,
    circular=None,
    preprocess: Transform | None = None,
) -> Flow:
    """``[preprocess]`` then ``stack.transforms`` steps of [random permutation] [LU linear]
    (coupling | autoregressive) layer, on the base."""
    features = check_int("features", features)
    check_int("transforms", stack.transforms)
    if stack.permutation not in _PERMUTATIONS:
        raise ValueError(f"permutation must be one of {_PERMUTATIONS}, got {stack.permutation!r}")
    net = stack.network(context_features)
    if circular is not None:
        circular = _check_circular(circular, features, coupling, stack.lu_linear)
        net["circular"] = circular
    steps: list[Transform] = [] if preprocess is None else [preprocess]
    for i in range(stack.transforms):
        steps += _step(features, i, map, stack, circular, net, coupling)
    event_shape = None
    if preprocess is not None:
        event_shape = getattr(preprocess, "features_in", features)
    base = _base(stack.base, features, circular)
    return Flow(CompositeTransform(steps), base, embedding=stack.embedding, event_shape=event_shape)


def _step(features, i, map, stack, circular, net, coupling) -> list[Transform]:
    """Layer ``i`` of the stack, after its optional permutation and LU linear layer."""
    steps: list[Transform] = []
    seed, permutation = stack.seed, stack.permutation
    if permutation == "random" and features > 1 and circular is None:
        steps.append(RandomPermutation(features, seed=None if seed is None else seed + i))
    if stack.lu_linear:
        steps.append(LULinear(features))
    if not coupling:
        order = _order(features, i, permutation)
        return [*steps, MaskedAutoregressiveTransform(features, map, order=order, **net)]
    if circular is None:
        mask, layer_map = _mask(features, i, permutation), map
    else:
        # Angles keep their positions (no permutation layers), so masks vary instead.
        mask = _angle_mask(features, i, permutation, seed)
        layer_map = SplitMap(circular[mask], circular_counterpart(map), map)
    return [*steps, CouplingTransform(mask, layer_map, **net)]


def _base(base: Distribution | None, features: int, circular) -> Distribution:
    if base is None:
        return StandardNormal(features) if circular is None else NormalWithAngles(circular)
    if base.event_shape.numel() != features:
        raise ValueError(
            f"base must have {features} features, got event_shape {tuple(base.event_shape)}"
        )
    return base


def _check_circular(circular, features: int, coupling: bool, lu_linear: bool) -> torch.Tensor:
    flags = torch.as_tensor(circular).bool()
    if flags.shape != (features,):
        raise ValueError(
            f"circular must have one boolean per feature ({features},), got {tuple(flags.shape)}"
        )
    if not coupling or lu_linear:
        raise ValueError(
            "circular features need coupling=True and lu_linear=False "
            "(autoregressive and linear layers would mix angles with lengths)"
        )
    return flags


def _angle_mask(features: int, i: int, permutation: str, seed: int | None) -> torch.Tensor:
    """Mask of coupling layer ``i`` when features keep their positions: alternating halves, or a
    seeded random half."""
    if permutation == "alternate":
        return alternating_mask(features, even=i % 2 == 0)
    generator = torch.Generator().manual_seed((0 if seed is None else seed) * 7919 + i)
    mask = torch.zeros(features, dtype=torch.bool)
    mask[torch.randperm(features, generator=generator)[: max(features // 2, 1)]] = True
    return mask


def _order(features: int, i: int, permutation: str) -> list[int] | None:
    """Generation order of autoregressive layer ``i``: alternating natural and reversed."""
    if permutation == "alternate" and i % 2 == 1:
        return list(range(features - 1, -1, -1))
    return None


def _mask(features: int, i: int, permutation: str):
    """Coupling mask of layer ``i``: the first ``ceil(D / 2)`` features, or (odd layers without
    random permutations) the rest. Contiguous halves let the layer split and concatenate views;
    the counts equal those of even/odd masks, so models saved with those still load (their
    index buffers come with the state dict)."""
    first = torch.arange(features) < (features + 1) // 2
    return first if permutation == "random" or i % 2 == 0 else ~first


_COMMON_ARGS = """
    Common args:
        transforms: number of layers (default 5).
        hidden_features: hidden widths of each conditioner (default ``(128, 128)``).
        permutation: ``"alternate"`` (default: reverse the order / swap the mask between layers)
            or ``"random"`` (a seeded random permutation before each layer).
        lu_linear: put an LU-decomposed linear layer before each layer (as in the NSF paper).
        base: base distribution (default standard normal), e.g. ``StudentT`` for heavy tails.
        embedding: network applied to the context first.
        activation, dropout: conditioner options (default ``nn.ReLU``, 0).
        seed: seed of the random permutations.

    References:"""


def _common_doc(fn):
    """Insert the arguments every factory shares before the References section."""
    fn.__doc__ = fn.__doc__.replace("\n    References:", _COMMON_ARGS, 1)
    return fn


@_common_doc
def NSF(
    features: int,
    context_features: int = 0,
    *,
    map: ElementwiseMap | None = None,
    coupling: bool = False,
    circular: Sequence[bool] | None = None,
    preprocess: Transform | None = None,
    **options,
) -> Flow:
    """Neural spline flow: rational-quadratic spline layers, autoregressive (default) or coupling.

    Args:
        features: data dimension ``D``.
        context_features: width of the context the transforms see (the embedding's output width
            when ``embedding`` is given); 0 for unconditional flows.
        map: the elementwise map of every layer, default
            :class:`~normflows_sci.transforms.RQSplineMap`. Instead of a map, its shorthands
            ``bins`` (8), ``tail_bound`` (5: splines act on ``[-tail_bound, tail_bound]``,
            identity outside), ``min_bin_width``, ``min_bin_height``, ``min_derivative`` (1e-3)
            may be given: they build it.
        coupling: coupling layers (one pass both ways) instead of autoregressive (one pass to
            evaluate, ``features`` passes to sample).
        circular: ``(features,)`` booleans marking angles (values in ``[-pi, pi)``): those get
            the map's circular splines (:meth:`~normflows_sci.transforms.RQSplineMap.circular`),
            feed conditioners as ``(cos, sin)`` and a uniform base (see ``NormalWithAngles``).
            Needs ``coupling=True``; features keep their positions and the masks alternate
            (``permutation="alternate"``) or are seeded random halves.
        preprocess: a transform applied to the data first (e.g. internal coordinates); its output
            has ``features`` entries and the flow's ``event_shape`` becomes its ``features_in``.

    References:
        Durkan, Bekasov, Murray, Papamakarios (2019), "Neural Spline Flows".

    Example:
        >>> flow = NSF(3, transforms=2, hidden_features=(32,))
        >>> flow.log_prob(torch.randn(4, 3)).shape
        torch.Size([4])
        >>> from normflows_sci.transforms import RQSplineMap
        >>> flow = NSF(3, map=RQSplineMap(bins=4, tail_bound=3.0), transforms=2, coupling=True)
    """
    map = make_map(map, **pop_map_options(options))
    if circular is not None:
        circular_counterpart(map)  # a clear error before any layer is built
    stack = _Stack.of("NSF", options)
    return _build(
        features,
        context_features,
        map,
        stack,
        coupling=coupling,
        circular=circular,
        preprocess=preprocess,
    )


@_common_doc
def MAF(
    features: int, context_features: int = 0, *, map: ElementwiseMap | None = None, **options
) -> Flow:
    """Masked autoregressive flow: affine autoregressive layers with MADE conditioners.

    Args:
        features: data dimension ``D``.
        context_features: width of the context (see :func:`NSF`); 0 for unconditional flows.
        map: the elementwise map of every layer, default
            :class:`~normflows_sci.transforms.AffineMap`; its shorthand ``max_log_scale`` (3: bound
            of each layer's log-scale, soft-clamped) builds it instead.

    References:
        Papamakarios, Pavlakou, Murray (2017), "Masked Autoregressive Flow for Density Estimation".

    Example:
        >>> flow = MAF(3, transforms=2, hidden_features=(32,))
        >>> flow.sample(4).shape
        torch.Size([4, 3])
    """
    map = make_map(map, default="affine", **pop_map_options(options, "affine"))
    return _build(features, context_features, map, _Stack.of("MAF", options), coupling=False)


@_common_doc
def RealNVP(
    features: int, context_features: int = 0, *, map: ElementwiseMap | None = None, **options
) -> Flow:
    """RealNVP: affine coupling layers whose masks alternate between the two halves of the features.

    Args:
        features: data dimension ``D``.
        context_features: width of the context (see :func:`NSF`); 0 for unconditional flows.
        map: the elementwise map of every layer, default
            :class:`~normflows_sci.transforms.AffineMap`; its shorthand ``max_log_scale`` (3: bound
            of each layer's log-scale, soft-clamped) builds it instead.

    References:
        Dinh, Sohl-Dickstein, Bengio (2017), "Density estimation using Real NVP".

    Example:
        >>> flow = RealNVP(2, transforms=2, hidden_features=(16,))
        >>> flow.sample(4).shape
        torch.Size([4, 2])
    """
    map = make_map(map, default="affine", **pop_map_options(options, "affine"))
    return _build(features, context_features, map, _Stack.of("RealNVP", options), coupling=True)
