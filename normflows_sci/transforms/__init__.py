"""Invertible transforms with the nflows calling convention.

``z, logabsdet = t(x, context)`` maps data to latent; ``t.inverse(z, context)`` maps back.
"""

from normflows_sci.transforms.autoregressive import (
    MaskedAffineAutoregressiveTransform,
    MaskedAutoregressiveTransform,
    MaskedSplineAutoregressiveTransform,
)
from normflows_sci.transforms.base import (
    CompositeTransform,
    InverseNotAvailable,
    InverseTransform,
    Transform,
)
from normflows_sci.transforms.bounds import BoundaryTransform
from normflows_sci.transforms.coupling import (
    AffineCouplingTransform,
    CouplingTransform,
    SplineCouplingTransform,
    alternating_mask,
)
from normflows_sci.transforms.elementwise import (
    AffineMap,
    CircularSplineMap,
    ElementwiseMap,
    RQSplineMap,
    SplitMap,
    circular_counterpart,
    make_map,
    map_alias,
    pop_map_options,
    renamed_map_argument,
    wrap_angle,
)
from normflows_sci.transforms.internal import InternalCoordinates
from normflows_sci.transforms.linear import (
    LULinear,
    Permutation,
    RandomPermutation,
    ReversePermutation,
)
from normflows_sci.transforms.normalization import ActNorm, CircularShift, ElementwiseAffine
from normflows_sci.transforms.tarflow import (
    INVERSION_METHODS,
    BlockInverseInfo,
    InverseInfo,
    TarFlowBlock,
    TarFlowTransform,
    block_map,
)

__all__ = [
    "Transform",
    "CompositeTransform",
    "InverseTransform",
    "InverseNotAvailable",
    "Permutation",
    "ReversePermutation",
    "RandomPermutation",
    "LULinear",
    "ElementwiseAffine",
    "ActNorm",
    "CircularShift",
    "BoundaryTransform",
    "InternalCoordinates",
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
    "CouplingTransform",
    "AffineCouplingTransform",
    "SplineCouplingTransform",
    "alternating_mask",
    "MaskedAutoregressiveTransform",
    "MaskedAffineAutoregressiveTransform",
    "MaskedSplineAutoregressiveTransform",
    "TarFlowBlock",
    "TarFlowTransform",
    "BlockInverseInfo",
    "InverseInfo",
    "INVERSION_METHODS",
    "block_map",
]
