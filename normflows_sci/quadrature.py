"""Integration over integer cells, shared by every model that scores integer columns.

A model of integer columns is a density ``p`` of the dequantised variables ``k + u``; the
probability of the cell of ``k`` is ``P(k) = integral over u in [0, 1)^m of p(k + u) du`` for ``m``
integer columns. :func:`unit_cell_rule` gives the nodes and weights to compute it with, and
:func:`combine_cell_estimates` turns the weighted log-densities into ``log P(k)`` and its error:

* up to :data:`EXACT_MAX_DIMS` integer columns, a tensor-product Gauss-Legendre rule
  (:func:`unit_cube_rule`, 64 nodes or so): deterministic and, for the smooth densities of flows
  and Gaussian mixtures, accurate well below the statistical error of a fitted model; its error
  is not estimated (reported as 0);
* above that, randomised quasi-Monte Carlo: :data:`QMC_REPLICATES` independently scrambled Sobol
  sets of :data:`QMC_POINTS` points each, from a fixed seed (the same rule every call, so scores are
  reproducible). The cost per row is ``QMC_REPLICATES * QMC_POINTS`` density evaluations whatever
  the number of columns (a tensor-product rule needs at least ``2^m``), and the spread of the
  replicates estimates the standard error of ``log P(k)``.

Example:
    >>> nodes, log_w = unit_cell_rule(2)
    >>> nodes.shape, log_w.shape  # one exact rule
    ((1, 64, 2), (1, 64))
    >>> nodes, log_w = unit_cell_rule(40)
    >>> nodes.shape  # QMC_REPLICATES scrambles of QMC_POINTS points, whatever the dimension
    (8, 32, 40)
    >>> log_p, stderr = combine_cell_estimates(log_w[:, :, None])  # p = 1 on the cell
    >>> float(np.abs(log_p).max()), float(stderr.max())
    (0.0, 0.0)
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.special import logsumexp
from scipy.stats import qmc

__all__ = [
    "EXACT_MAX_DIMS",
    "QMC_POINTS",
    "QMC_REPLICATES",
    "QMC_STDERR_TOLERANCE",
    "combine_cell_estimates",
    "unit_cell_rule",
    "unit_cube_rule",
    "warn_imprecise_cells",
]

# Integer columns up to which the exact tensor-product rule is used (at most 64 nodes or so).
EXACT_MAX_DIMS = 3
# Sobol points per scramble (a power of two keeps the Sobol set balanced) and scrambles per rule.
QMC_POINTS = 32
QMC_REPLICATES = 8
# Standard error (nats) of a row's log-probability above which scoring warns.
QMC_STDERR_TOLERANCE = 0.05
# A tensor-product rule larger than this is refused rather than allocated.
_MAX_TENSOR_NODES = 2**16


def unit_cube_rule(dims: int, *, per_dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Tensor-product Gauss-Legendre nodes ``(m, dims)`` on ``[0, 1]^dims`` and their log-weights.

    By default about 64 nodes in all (16 per dimension for one dimension, at least 2 per
    dimension): the rule :func:`unit_cell_rule` uses for up to :data:`EXACT_MAX_DIMS` dimensions.
    Its size grows as ``per_dim ** dims``: rules of more than 65536 nodes are refused.

    Args:
        dims: number of dimensions (at least 1).
        per_dim: nodes per dimension (default: as above).

    Raises:
        ValueError: ``dims`` or ``per_dim`` below 1, or ``per_dim ** dims`` above 65536.

    Example:
        >>> nodes, log_w = unit_cube_rule(1)
        >>> nodes.shape, round(float(np.exp(log_w).sum()), 12)
        ((16, 1), 1.0)
    """
    if int(dims) != dims or dims < 1:
        raise ValueError(f"dims must be a positive integer, got {dims!r}")
    if per_dim is None:
        per_dim = max(2, min(16, round(64 ** (1.0 / dims))))
    if int(per_dim) != per_dim or per_dim < 1:
        raise ValueError(f"per_dim must be a positive integer, got {per_dim!r}")
    if per_dim**dims > _MAX_TENSOR_NODES:
        raise ValueError(
            f"a tensor-product rule with {per_dim} nodes in each of {dims} dimensions has "
            f"{per_dim}^{dims} nodes (more than {_MAX_TENSOR_NODES}): use unit_cell_rule"
        )
    nodes, weights = np.polynomial.legendre.leggauss(int(per_dim))
    nodes, log_weights = 0.5 * (nodes + 1.0), np.log(0.5 * weights)
    grid = np.stack(np.meshgrid(*([nodes] * dims), indexing="ij"), -1).reshape(-1, dims)
    log_w = np.stack(np.meshgrid(*([log_weights] * dims), indexing="ij"), -1).sum(-1)
    return grid, log_w.reshape(-1)


def _scrambled_sobol(dims: int, points: int, rng: np.random.Generator) -> np.ndarray:
    try:
        engine = qmc.Sobol(dims, scramble=True, rng=rng)
    except TypeError:  # scipy before 1.15 names the generator ``seed``
        engine = qmc.Sobol(dims, scramble=True, seed=rng)
    return engine.random_base2(int(math.log2(points)))


def unit_cell_rule(
    dims: int, *, points: int | None = None, replicates: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``(R, m, dims)`` in ``[0, 1)^dims`` and log-weights ``(R, m)`` for cell integrals.

    Each of the ``R`` replicates is a rule on its own (its weights sum to 1); the cell integral
    is estimated by each replicate and the ``R`` estimates are combined by
    :func:`combine_cell_estimates`. Up to :data:`EXACT_MAX_DIMS` dimensions: ``R = 1``, the
    Gauss-Legendre rule of :func:`unit_cube_rule`. Above: ``R = replicates`` independently
    scrambled Sobol sets of ``points`` points each (equal weights), drawn from ``seed``, so the
    same call always returns the same rule.

    Args:
        dims: number of integer columns (at least 1).
        points: Sobol points per replicate, a power of two (default: :data:`QMC_POINTS` at the
            time of the call, so setting the module constant raises every model's precision).
        replicates: independent scrambles, at least 2 (default: :data:`QMC_REPLICATES`).
        seed: seed of the scrambles.

    Raises:
        ValueError: ``points`` not a power of two, or ``replicates`` below 2.
    """
    if dims <= EXACT_MAX_DIMS:
        nodes, log_w = unit_cube_rule(dims)
        return nodes[None], log_w[None]
    points = QMC_POINTS if points is None else points
    replicates = QMC_REPLICATES if replicates is None else replicates
    if int(points) != points or points < 1 or int(points) & (int(points) - 1):
        raise ValueError(f"points must be a power of two, got {points!r}")
    if int(replicates) != replicates or replicates < 2:
        raise ValueError(f"replicates must be an integer of at least 2, got {replicates!r}")
    streams = np.random.SeedSequence(seed).spawn(int(replicates))
    nodes = np.stack(
        [_scrambled_sobol(dims, int(points), np.random.default_rng(s)) for s in streams]
    )
    return nodes, np.full(nodes.shape[:2], -math.log(points))


def combine_cell_estimates(log_terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``log P`` per row and its standard error from weighted log-densities at the nodes.

    Each replicate ``r`` estimates ``P_r = sum_j w_rj p(x + u_rj)``; the estimate is their mean
    and its standard error ``std_r(P_r) / sqrt(R)``, carried to the log scale as a relative error
    (the delta method: ``se(log P) = se(P) / P``). One replicate (an exact rule) has error 0.

    Args:
        log_terms: ``(R, m, n)``: ``log w_rj + log p(x_i + u_rj)`` for ``n`` rows.

    Returns:
        ``(log_p, stderr)``, both ``(n,)`` float64.
    """
    log_terms = np.asarray(log_terms, dtype=np.float64)
    per_replicate = logsumexp(log_terms, axis=1)  # (R, n)
    replicates = per_replicate.shape[0]
    log_p = logsumexp(per_replicate, axis=0) - math.log(replicates)
    if replicates == 1:
        return log_p, np.zeros_like(log_p)
    finite = np.isfinite(log_p)
    # Ratios P_r / P have mean 1: their spread is the relative error, free of under/overflow.
    with np.errstate(invalid="ignore"):
        ratios = np.exp(per_replicate - np.where(finite, log_p, 0.0))
    stderr = ratios.std(axis=0, ddof=1) / math.sqrt(replicates)
    stderr = np.where(finite, stderr, np.where(np.isnan(log_p), np.nan, 0.0))
    return log_p, stderr


def warn_imprecise_cells(
    stderr: np.ndarray, *, tolerance: float | None = None, stacklevel: int = 3
) -> None:
    """Warn when some rows' log-probabilities have a standard error above ``tolerance`` nats.

    Args:
        stderr: ``(n,)`` standard errors from :func:`combine_cell_estimates`.
        tolerance: threshold in nats (default: the module's :data:`QMC_STDERR_TOLERANCE` at the
            time of the call, so setting it changes every model's threshold).
        stacklevel: passed to :func:`warnings.warn` (point it at the user's call).
    """
    if tolerance is None:
        tolerance = QMC_STDERR_TOLERANCE
    stderr = np.asarray(stderr, dtype=np.float64)
    imprecise = stderr > tolerance
    if imprecise.any():
        warnings.warn(
            f"the probabilities of the integer cells of {int(imprecise.sum())} of {stderr.size} "
            f"rows are estimated by randomised quasi-Monte Carlo with a standard error above "
            f"{tolerance} nats (largest {float(stderr[imprecise].max()):.3g}); the errors per "
            f"row are in last_score_error_",
            stacklevel=stacklevel,
        )
