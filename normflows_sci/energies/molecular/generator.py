"""A ready-made Boltzmann-generator flow over internal coordinates."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from normflows_sci.energies.molecular.internal import InternalCoordinates
from normflows_sci.flows import NSF, Flow
from normflows_sci.transforms import CompositeTransform, ElementwiseAffine

__all__ = ["internal_coordinate_flow"]


def internal_coordinate_flow(
    z_matrix,
    data: Tensor,
    *,
    transforms: int = 8,
    bins: int = 8,
    hidden_features: int | Sequence[int] = (256, 256),
    tail_bound: float = 5.0,
    seed: int | None = 0,
) -> Flow:
    """Coupling spline flow on internal coordinates, returning Cartesian samples.

    ``x`` (Cartesian, rigid motion removed) -> bonds, angles, torsions -> bonds and angles
    standardised with the mean and standard deviation of ``data`` -> coupling layers with
    circular splines on the torsions and interval splines on the rest -> a base that is standard
    normal on bonds/angles and uniform on torsions. ``log_prob`` is the density over the
    ``3N - 6`` internal degrees of freedom expressed through Cartesian inputs (see
    :class:`InternalCoordinates`), which is what importance weights of rigid-motion-invariant
    energies need.

    Args:
        z_matrix: the Z-matrix (see :class:`InternalCoordinates`), or an ``InternalCoordinates``.
        data: ``(n, 3N)`` Cartesian samples (n >= 2) used only for the standardisation, e.g. a
            short MD run or perturbed minimised structures.
        transforms, bins, hidden_features, tail_bound, seed: as for :func:`~normflows_sci.flows.NSF`
            (coupling layers with seeded random masks).

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
    if not isinstance(data, Tensor) or data.ndim != 2 or data.shape[1] != coordinates.features_in:
        shape = getattr(data, "shape", type(data).__name__)
        raise ValueError(f"data must have shape (n, {coordinates.features_in}), got {shape}")
    if len(data) < 2:
        raise ValueError(f"data needs at least 2 configurations for the scales, got {len(data)}")
    circular = coordinates.circular_mask.cpu()
    with torch.no_grad():
        internal, _ = coordinates(data.to(torch.float64), None)
    mean, std = internal.mean(0), internal.std(0).clamp_min(1e-6)
    mean, std = torch.where(circular, 0.0, mean), torch.where(circular, 1.0, std)
    standardize = ElementwiseAffine(
        coordinates.features_out,
        shift=(-mean / std).float(),
        scale=(1.0 / std).float(),
        learnable=False,
    )
    preprocess = CompositeTransform([coordinates, standardize])
    preprocess.features_in = coordinates.features_in
    return NSF(
        coordinates.features_out,
        coupling=True,
        circular=circular,
        transforms=transforms,
        bins=bins,
        hidden_features=hidden_features,
        tail_bound=tail_bound,
        permutation="random",
        seed=seed,
        preprocess=preprocess,
    )
