"""Quadrature on the unit cube, shared by every model that scores integer cells."""

from __future__ import annotations

import numpy as np

__all__ = ["unit_cube_rule"]


def unit_cube_rule(dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Tensor-product Gauss-Legendre nodes ``(m, dims)`` on ``[0, 1]^dims`` and their log-weights.

    About 64 nodes in all (16 per dimension for one dimension, at least 2 per dimension), so the
    DensityEstimator and the baselines compute the probabilities of integer cells alike.

    Example:
        >>> nodes, log_w = unit_cube_rule(1)
        >>> nodes.shape, round(float(np.exp(log_w).sum()), 12)
        ((16, 1), 1.0)
    """
    per_dim = max(2, min(16, round(64 ** (1.0 / dims))))
    nodes, weights = np.polynomial.legendre.leggauss(per_dim)
    nodes, log_weights = 0.5 * (nodes + 1.0), np.log(0.5 * weights)
    grid = np.stack(np.meshgrid(*([nodes] * dims), indexing="ij"), -1).reshape(-1, dims)
    log_w = np.stack(np.meshgrid(*([log_weights] * dims), indexing="ij"), -1).sum(-1)
    return grid, log_w.reshape(-1)
