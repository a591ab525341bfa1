"""Numerical helpers shared by the tests."""

from __future__ import annotations

import torch

from conftest import perturb

__all__ = ["grid_integral", "perturb"]


def grid_integral(density, *, bound: float, points: int, dtype=torch.float64) -> float:
    """Midpoint-rule integral of ``density: (n, 2) -> (n,)`` over ``[-bound, bound]^2``."""
    step = 2 * bound / points
    axis = -bound + step * (torch.arange(points, dtype=dtype) + 0.5)
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        values = torch.cat([density(chunk) for chunk in grid.split(65536)])
    return float(values.sum() * step * step)
