"""A ready-made Boltzmann-generator flow over internal coordinates."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from normflows_sci.flows.base import Flow
from normflows_sci.flows.factories import NSF
from normflows_sci.transforms import (
    CircularShift,
    CompositeTransform,
    ElementwiseAffine,
    ElementwiseMap,
    InternalCoordinates,
    make_map,
)

__all__ = ["internal_coordinate_flow"]


def internal_coordinate_flow(
    z_matrix,
    data: Tensor,
    *,
    transforms: int = 8,
    map: ElementwiseMap | None = None,
    bins: int | None = None,
    hidden_features: int | Sequence[int] = (256, 256),
    tail_bound: float | None = None,
    concentrated: float | None = 0.95,
    seed: int | None = 0,
) -> Flow:
    """Coupling spline flow on internal coordinates, returning Cartesian samples.

    ``x`` (Cartesian, rigid motion removed) -> bonds, angles, torsions -> concentrated torsions
    centred on their circular mean -> bonds, angles and concentrated torsions standardised with
    the mean and standard deviation of ``data`` -> coupling layers with circular splines on the
    other torsions and interval splines on the rest -> a base that is uniform on those torsions
    and standard normal on the rest. ``log_prob`` is the density over the
    ``3N - 6`` internal degrees of freedom expressed through Cartesian inputs (see
    :class:`InternalCoordinates`), which is what importance weights of rigid-motion-invariant
    energies need.

    Args:
        z_matrix: the Z-matrix (see :class:`InternalCoordinates`), or an ``InternalCoordinates``.
        data: ``(n, 3N)`` Cartesian samples (n >= 2) used only for the standardisation, e.g. a
            short MD run or perturbed minimised structures.
        transforms, map, hidden_features, seed: as for :func:`~normflows_sci.flows.NSF`
            (coupling layers with seeded random masks; the map defaults to an ``RQSplineMap``).
        bins, tail_bound: shorthands building the ``RQSplineMap`` (default 8 bins, bound 5).
        concentrated: torsions whose mean resultant length ``|mean(exp(i t))|`` in ``data`` is at
            least this (a single narrow peak: amide planes, hydrogens fixed relative to a sibling)
            are rotated to their circular mean by :class:`~normflows_sci.transforms.CircularShift`
            and modelled as real coordinates, which a spline fits far more easily than a narrow
            peak on the circle. The flow then puts the mass beyond ``+-pi`` from the mean (many
            standard deviations out) on the same configurations as the mass inside, so its
            density there is undercounted by a negligible amount. ``None``: every torsion stays
            circular. Multimodal torsions (backbone, methyl rotors) stay circular with the
            default 0.95.

    Example:
        A four-atom chain (one torsion): ``3N - 6 = 6`` internal degrees of freedom.

        >>> z_matrix = [[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, 0, -1], [3, 2, 1, 0]]
        >>> generator = torch.Generator().manual_seed(0)
        >>> chain = torch.tensor([0.0, 0, 0, 1, 0, 0, 1, 1, 0, 1, 1, 1])
        >>> data = chain + 0.05 * torch.randn(64, 12, generator=generator)
        >>> flow = internal_coordinate_flow(z_matrix, data, transforms=2, bins=4,
        ...                                 hidden_features=(16,))
        >>> flow.sample(5, generator=generator).shape  # Cartesian samples
        torch.Size([5, 12])
        >>> moved = data[:3] + torch.tensor([1.0, 2.0, 3.0]).repeat(4)  # translate every atom
        >>> torch.allclose(flow.log_prob(moved), flow.log_prob(data[:3]), atol=1e-4)
        True
    """
    coordinates = (
        z_matrix if isinstance(z_matrix, InternalCoordinates) else InternalCoordinates(z_matrix)
    )
    preprocess, circular = _standardized_internal(coordinates, data, concentrated)
    return NSF(
        coordinates.features_out,
        coupling=True,
        circular=circular,
        transforms=transforms,
        map=make_map(map, bins=bins, tail_bound=tail_bound),
        hidden_features=hidden_features,
        permutation="random",
        seed=seed,
        preprocess=preprocess,
    )


def _standardized_internal(coordinates: InternalCoordinates, data: Tensor, concentrated):
    """``(preprocess, circular)``: Cartesian -> internal coordinates -> concentrated torsions
    shifted to their circular mean -> every non-circular feature standardised on ``data``;
    ``circular: (features_out,)`` marks the torsions that stay on the circle."""
    if not isinstance(data, Tensor) or data.ndim != 2 or data.shape[1] != coordinates.features_in:
        shape = getattr(data, "shape", type(data).__name__)
        raise ValueError(f"data must have shape (n, {coordinates.features_in}), got {shape}")
    if len(data) < 2:
        raise ValueError(f"data needs at least 2 configurations for the scales, got {len(data)}")
    if concentrated is not None and not 0.0 < concentrated <= 1.0:
        raise ValueError(f"concentrated must be in (0, 1] or None, got {concentrated}")
    circular = coordinates.circular_mask.cpu()
    with torch.no_grad():
        internal, _ = coordinates(data.to(torch.float64), None)
        resultant = torch.polar(torch.ones_like(internal), internal).mean(0)
        centre = circular & (resultant.abs() >= (concentrated or math.inf))
        shift = CircularShift(
            coordinates.features_out, shift=torch.where(centre, resultant.angle(), 0.0)
        )
        internal, _ = shift(internal)
        circular = circular & ~centre
    mean, std = internal.mean(0), internal.std(0).clamp_min(1e-6)
    mean, std = torch.where(circular, 0.0, mean), torch.where(circular, 1.0, std)
    standardize = ElementwiseAffine(
        coordinates.features_out,
        shift=(-mean / std).float(),
        scale=(1.0 / std).float(),
        learnable=False,
    )
    preprocess = CompositeTransform([coordinates, shift, standardize])
    preprocess.features_in = coordinates.features_in
    return preprocess, circular
