"""Ready-made flows: NSF, MAF and RealNVP, each returning a :class:`Flow`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from normflows_sci.distributions import Distribution, NormalWithAngles, StandardNormal
from normflows_sci.flows.base import Flow
from normflows_sci.transforms import (
    AffineMap,
    CircularSplineMap,
    CompositeTransform,
    CouplingTransform,
    ElementwiseMap,
    LULinear,
    MaskedAutoregressiveTransform,
    RandomPermutation,
    RQSplineMap,
    SplitMap,
    Transform,
    alternating_mask,
)

__all__ = ["NSF", "MAF", "RealNVP"]

_PERMUTATIONS = ("alternate", "random")
# Arguments every factory forwards unchanged to _build.
_SHARED = (
    "transforms",
    "hidden_features",
    "permutation",
    "lu_linear",
    "base",
    "embedding",
    "activation",
    "dropout",
    "seed",
)


def _build(
    features: int,
    context_features: int,
    elementwise: ElementwiseMap,
    *,
    coupling: bool,
    transforms: int,
    hidden_features,
    permutation: str,
    lu_linear: bool,
    base: Distribution | None,
    embedding: nn.Module | None,
    activation,
    dropout: float,
    seed: int | None,
    circular=None,
    circle_map: ElementwiseMap | None = None,
    preprocess: Transform | None = None,
) -> Flow:
    """``[preprocess]`` then ``transforms`` steps of [random permutation] [LU linear]
    (coupling | autoregressive) layer."""
    if int(features) != features or features < 1:
        raise ValueError(f"features must be a positive integer, got {features!r}")
    if int(transforms) != transforms or transforms < 1:
        raise ValueError(f"transforms must be a positive integer, got {transforms!r}")
    if permutation not in _PERMUTATIONS:
        raise ValueError(f"permutation must be one of {_PERMUTATIONS}, got {permutation!r}")
    net = dict(
        context_features=context_features,
        hidden_features=hidden_features,
        activation=activation,
        dropout=dropout,
    )
    if circular is not None:
        circular = _check_circular(circular, features, coupling, lu_linear)
        net["circular"] = circular
    steps: list[Transform] = [] if preprocess is None else [preprocess]
    for i in range(transforms):
        if permutation == "random" and features > 1 and circular is None:
            steps.append(RandomPermutation(features, seed=None if seed is None else seed + i))
        if lu_linear:
            steps.append(LULinear(features))
        if coupling:
            if circular is None:
                mask = _mask(features, i, permutation)
                layer_map = elementwise
            else:
                # Angles keep their positions (no permutation layers), so masks vary instead.
                mask = _angle_mask(features, i, permutation, seed)
                layer_map = SplitMap(circular[mask], circle_map, elementwise)
            steps.append(CouplingTransform(mask, layer_map, **net))
        else:
            order = _order(features, i, permutation)
            steps.append(MaskedAutoregressiveTransform(features, elementwise, order=order, **net))
    if base is None:
        base = StandardNormal(features) if circular is None else NormalWithAngles(circular)
    elif base.event_shape.numel() != features:
        raise ValueError(
            f"base must have {features} features, got event_shape {tuple(base.event_shape)}"
        )
    event_shape = None
    if preprocess is not None:
        event_shape = getattr(preprocess, "features_in", features)
    return Flow(CompositeTransform(steps), base, embedding=embedding, event_shape=event_shape)


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
        features: data dimension ``D``.
        context_features: width of the context the transforms see (the embedding's output width
            when ``embedding`` is given); 0 for unconditional flows.
        transforms: number of layers.
        hidden_features: hidden widths of each conditioner.
        permutation: ``"alternate"`` (reverse the order / swap the mask between layers) or
            ``"random"`` (a seeded random permutation before each layer).
        lu_linear: put an LU-decomposed linear layer before each layer (as in the NSF paper).
        base: base distribution (default standard normal), e.g. ``StudentT`` for heavy tails.
        embedding: network applied to the context first.
        activation, dropout: conditioner options.
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
    transforms: int = 5,
    bins: int = 8,
    hidden_features: int | Sequence[int] = (128, 128),
    coupling: bool = False,
    tail_bound: float = 5.0,
    permutation: str = "alternate",
    lu_linear: bool = False,
    base: Distribution | None = None,
    embedding: nn.Module | None = None,
    activation: Callable[[], nn.Module] = nn.ReLU,
    dropout: float = 0.0,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
    seed: int | None = None,
    circular: Sequence[bool] | None = None,
    preprocess: Transform | None = None,
) -> Flow:
    """Neural spline flow: rational-quadratic spline layers, autoregressive (default) or coupling.

    Args:
        bins: spline bins per feature.
        coupling: coupling layers (one pass both ways) instead of autoregressive (one pass to
            evaluate, ``features`` passes to sample).
        tail_bound: splines act on ``[-tail_bound, tail_bound]``, identity outside.
        min_bin_width, min_bin_height, min_derivative: spline regularity bounds.
        circular: ``(features,)`` booleans marking angles (values in ``[-pi, pi)``): those get
            circular splines, feed conditioners as ``(cos, sin)`` and a uniform base (see
            ``NormalWithAngles``). Needs ``coupling=True``; features keep their positions and the
            masks alternate (``permutation="alternate"``) or are seeded random halves.
        preprocess: a transform applied to the data first (e.g. internal coordinates); its output
            has ``features`` entries and the flow's ``event_shape`` becomes its ``features_in``.

    References:
        Durkan, Bekasov, Murray, Papamakarios (2019), "Neural Spline Flows".

    Example:
        >>> flow = NSF(3, transforms=2, hidden_features=(32,))
        >>> flow.log_prob(torch.randn(4, 3)).shape
        torch.Size([4])
    """
    spline = RQSplineMap(
        bins,
        tail_bound,
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
    )
    options = {k: v for k, v in locals().items() if k in _SHARED}
    circle = CircularSplineMap(
        bins,
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
    )
    return _build(
        features,
        context_features,
        spline,
        coupling=coupling,
        circular=circular,
        circle_map=circle,
        preprocess=preprocess,
        **options,
    )


@_common_doc
def MAF(
    features: int,
    context_features: int = 0,
    *,
    transforms: int = 5,
    hidden_features: int | Sequence[int] = (128, 128),
    max_log_scale: float = 3.0,
    permutation: str = "alternate",
    lu_linear: bool = False,
    base: Distribution | None = None,
    embedding: nn.Module | None = None,
    activation: Callable[[], nn.Module] = nn.ReLU,
    dropout: float = 0.0,
    seed: int | None = None,
) -> Flow:
    """Masked autoregressive flow: affine autoregressive layers with MADE conditioners.

    Args:
        max_log_scale: bound of each layer's log-scale (soft-clamped by tanh).

    References:
        Papamakarios, Pavlakou, Murray (2017), "Masked Autoregressive Flow for Density Estimation".

    Example:
        >>> flow = MAF(3, transforms=2, hidden_features=(32,))
        >>> flow.sample(4).shape
        torch.Size([4, 3])
    """

    options = {k: v for k, v in locals().items() if k in _SHARED}
    return _build(features, context_features, AffineMap(max_log_scale), coupling=False, **options)


@_common_doc
def RealNVP(
    features: int,
    context_features: int = 0,
    *,
    transforms: int = 5,
    hidden_features: int | Sequence[int] = (128, 128),
    max_log_scale: float = 3.0,
    permutation: str = "alternate",
    lu_linear: bool = False,
    base: Distribution | None = None,
    embedding: nn.Module | None = None,
    activation: Callable[[], nn.Module] = nn.ReLU,
    dropout: float = 0.0,
    seed: int | None = None,
) -> Flow:
    """RealNVP: affine coupling layers whose masks alternate between the two halves of the features.

    Args:
        max_log_scale: bound of each layer's log-scale (soft-clamped by tanh).

    References:
        Dinh, Sohl-Dickstein, Bengio (2017), "Density estimation using Real NVP".

    Example:
        >>> flow = RealNVP(2, transforms=2, hidden_features=(16,))
        >>> flow.sample(4).shape
        torch.Size([4, 2])
    """

    options = {k: v for k, v in locals().items() if k in _SHARED}
    return _build(features, context_features, AffineMap(max_log_scale), coupling=True, **options)
