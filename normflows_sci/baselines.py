"""Classical density baselines for tabular data: a Gaussian and a Gaussian mixture fitted by EM.

They share :class:`~normflows_sci.DensityEstimator`'s interface (``fit`` / ``score_samples`` /
``score`` / ``sample``; numpy in, numpy out, log-densities per row in nats), so a flow's held-out
log-likelihood can be put next to theirs on the same rows. Both run in float64 numpy/scipy.

Example:
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(500, 2))
    >>> gauss = GaussianBaseline().fit(X)
    >>> gauss.score_samples(X[:3]).shape
    (3,)
    >>> gmm = GaussianMixtureBaseline(2, random_state=0).fit(X)
    >>> gmm.sample(4, random_state=0).shape
    (4, 2)
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Sequence

import numpy as np
from scipy.linalg import solve_triangular

from normflows_sci.checks import check_int
from normflows_sci.quadrature import combine_cell_estimates, unit_cell_rule, warn_imprecise_cells

__all__ = [
    "GaussianBaseline",
    "GaussianMixtureBaseline",
    "gaussian_held_out_score",
    "baseline_scores",
    "lattice_cells",
    "level_cells",
    "level_cell_log_prob",
    "level_edges",
    "describe_cells",
]

_LOG_2PI = math.log(2.0 * math.pi)
# Covariance ridge, relative to the mean per-feature variance of the training data.
_REG = 1e-6
_COVARIANCES = ("full", "diag")


def _check_data(name: str, X, *, features: int | None = None, min_rows: int = 1) -> np.ndarray:
    """Return ``X`` as a finite float64 array of shape ``(rows, features)``.

    Raises:
        TypeError: ``X`` is not numeric.
        ValueError: wrong number of dimensions or features, too few rows, or NaN/inf entries.
    """
    try:
        array = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name} must be a numeric array of shape (rows, features): {error}"
        ) from None
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D with shape (rows, features), got shape {array.shape}")
    if features is not None and array.shape[1] != features:
        raise ValueError(
            f"{name} must have {features} features (columns) as in fit, got {array.shape[1]}"
        )
    if array.shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} rows, got {array.shape[0]}")
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.flatnonzero(~finite.all(axis=1))
        raise ValueError(
            f"{name} contains NaN or inf values (in {bad.size} of {array.shape[0]} rows, "
            f"first at row {bad[0]})"
        )
    return array


def _check_num_samples(num_samples) -> int:
    if isinstance(num_samples, bool) or not float(num_samples).is_integer() or num_samples < 0:
        raise ValueError(f"num_samples must be a non-negative integer, got {num_samples!r}")
    return int(num_samples)


def _robust_cholesky(covariance: np.ndarray, ridge: float) -> np.ndarray:
    """Lower Cholesky factor of ``covariance + ridge * I``, raising the ridge until it succeeds."""
    eye = np.eye(covariance.shape[0])
    ridge = max(ridge, np.finfo(np.float64).tiny)
    for _ in range(30):
        try:
            return np.linalg.cholesky(covariance + ridge * eye)
        except np.linalg.LinAlgError:
            ridge *= 10.0
    raise np.linalg.LinAlgError("covariance is not positive definite even after regularisation")


def _logsumexp_rows(values: np.ndarray) -> np.ndarray:
    """``log(sum(exp(values), axis=1))`` for ``(rows, k)`` finite values; returns ``(rows,)``."""
    peak = values.max(axis=1)
    return peak + np.log(np.exp(values - peak[:, None]).sum(axis=1))


def _gaussian_log_prob(X: np.ndarray, mean: np.ndarray, cholesky: np.ndarray) -> np.ndarray:
    """``log N(x | mean, L L^T)`` for each row of ``X: (rows, features)``; returns ``(rows,)``."""
    whitened = solve_triangular(cholesky, (X - mean).T, lower=True, check_finite=False)
    log_det = 2.0 * np.log(np.diag(cholesky)).sum()
    return -0.5 * (np.einsum("ij,ij->j", whitened, whitened) + X.shape[1] * _LOG_2PI + log_det)


def _cell_log_prob(
    log_density, left: np.ndarray, width: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``log P = log integral over the cells [left, left + width) of p`` in the ``mask``
    columns, and its standard error, by the shared rule of
    :func:`~normflows_sci.quadrature.unit_cell_rule`.

    Args:
        log_density: maps ``(rows, features)`` to ``(rows,)`` continuous log-densities.
        left: ``(rows, features)``: the cells' lower edges in the ``mask`` columns, the values
            elsewhere.
        width: ``(rows, features)`` cell widths (used in the ``mask`` columns).
        mask: ``(features,)`` boolean.

    Returns:
        ``(log_p, stderr)``, both ``(rows,)``: log-probability for the cell columns and
        log-density for the rest; the standard error of ``log_p`` (0 for an exact rule).
    """
    if not mask.any():
        log_p = log_density(left)
        return log_p, np.zeros_like(log_p)
    nodes, log_w = unit_cell_rule(int(mask.sum()))
    log_width = np.log(width[:, mask]).sum(axis=1)
    # One running log-sum per replicate: memory O(replicates * rows), not O(nodes * rows).
    per_replicate = np.full((log_w.shape[0], left.shape[0]), -np.inf)
    shifted = left.copy()
    for r, (replicate, weights) in enumerate(zip(nodes, log_w)):
        for node, weight in zip(replicate, weights):
            shifted[:, mask] = left[:, mask] + node * width[:, mask]
            term = weight + log_width + log_density(shifted)
            per_replicate[r] = np.logaddexp(per_replicate[r], term)
    return combine_cell_estimates(per_replicate[:, None, :])


def level_edges(levels) -> np.ndarray:
    """Edges ``(K + 1,)`` of the cells of a column of ``K`` numeric levels, ascending.

    The cells split at the midpoints between consecutive levels; the first and last levels
    are the centres of their cells (a single level gets the unit cell around it). A baseline
    scores a value of a level column as its probability of the value's cell, the measure a
    :class:`~normflows_sci.DensityEstimator` gives a column it models as levels.

    Example:
        >>> level_edges([0.0, 1.0, 4.0]).tolist()
        [-0.5, 0.5, 2.5, 5.5]

    Raises:
        ValueError: no levels, repeated or non-finite levels.
    """
    values = np.asarray(levels, dtype=np.float64).reshape(-1)
    ordered = np.unique(values)
    if not len(values) or len(ordered) != len(values) or not np.isfinite(values).all():
        raise ValueError(f"levels must be distinct finite numbers, got {list(values)!r}")
    if len(ordered) == 1:
        return ordered[0] + np.array([-0.5, 0.5])
    middle = 0.5 * (ordered[1:] + ordered[:-1])
    first, last = 2 * ordered[0] - middle[0], 2 * ordered[-1] - middle[-1]
    return np.concatenate([[first], middle, [last]])


def _place_levels(name: str, X: np.ndarray, levels: dict, left: np.ndarray, width: np.ndarray):
    """Write the cells of :func:`level_edges` of the level columns ``{index: sorted levels}``
    of ``X`` into ``left`` and ``width`` (``ValueError`` for a value that is not a level)."""
    for j, values in levels.items():
        values = np.asarray(values, dtype=np.float64)
        edges = level_edges(values)
        code = np.clip(np.searchsorted(values, X[:, j]), 0, len(values) - 1)
        bad = np.flatnonzero(values[code] != X[:, j])
        if bad.size:
            raise ValueError(
                f"{name} column {j} holds {float(X[bad[0], j])!r} (row {bad[0]}), not one "
                f"of its levels {values.tolist()}"
            )
        left[:, j], width[:, j] = edges[code], np.diff(edges)[code]


def level_cell_log_prob(log_density, X, levels: dict) -> tuple[np.ndarray, np.ndarray]:
    """Score the rows of ``X`` under any model's continuous ``log_density`` as the baselines
    score them: each level column as the probability of its level's cell
    (:func:`level_edges`), by the quadrature shared with the estimator; the other columns as
    densities. For models fitted outside this module (a flow of another package) compared
    with a :class:`~normflows_sci.DensityEstimator` that models those columns as levels.

    Args:
        log_density: maps ``(rows, features)`` float64 to ``(rows,)`` log-densities.
        X: ``(rows, features)`` rows, the level columns holding levels.
        levels: ``{column index: levels}`` (see :func:`level_cells`).

    Returns:
        ``(log_p, stderr)``, both ``(rows,)`` (the standard error is 0 for up to three cell
        columns: exact rules).

    Raises:
        ValueError: a value of a level column that is not one of its levels.
    """
    X = _check_data("X", X, min_rows=0)
    left, width = X.copy(), np.zeros_like(X)
    ordered = {int(j): np.unique(np.asarray(v, dtype=np.float64)) for j, v in levels.items()}
    _place_levels("X", X, ordered, left, width)
    mask = np.zeros(X.shape[1], dtype=bool)
    mask[list(ordered)] = True
    return _cell_log_prob(log_density, left, width, mask)


class _Baseline(abc.ABC):
    """Cell columns (integer lattices, numeric levels), ``score``/``score_samples``/``sample``
    and the fitted check.

    Subclasses implement ``_log_density(X)`` (continuous, ``(rows, features)`` -> ``(rows,)``)
    and ``_draw(num_samples, rng)``.
    """

    def __init__(self, *, discrete=None, step=None, levels=None):
        self.discrete = discrete
        self.step = step
        self.levels = levels

    def _level_columns(self, features: int, mask: np.ndarray) -> dict[int, np.ndarray]:
        """``levels`` as ``{column index: sorted levels}``, checked (``ValueError``)."""
        if self.levels is None:
            return {}
        if not isinstance(self.levels, dict):
            raise ValueError(f"levels must be a dict {{column index: levels}}, got {self.levels!r}")
        out = {}
        for key, levels in self.levels.items():
            if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
                raise ValueError(f"levels keys must be column indices, got {key!r}")
            if not -features <= key < features:
                raise ValueError(f"levels column index {key} is out of range for {features}")
            if mask[key]:
                raise ValueError(f"column {key} cannot be both discrete and a level column")
            level_edges(levels)  # distinct finite numbers
            out[int(key) % features] = np.unique(np.asarray(levels, dtype=np.float64))
        return out

    def _row_cells(self, name: str, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(left, width)`` ``(rows, features)`` of the rows' cells: ``[v, v + step)`` in the
        discrete columns, the level's cell of :func:`level_edges` in the level columns, the
        values (width 0) elsewhere; ``ValueError`` for a value that is not a level."""
        left, width = X.copy(), np.zeros_like(X)
        mask = self.discrete_mask_
        width[:, mask] = self.step_[mask]
        _place_levels(name, X, getattr(self, "levels_", {}), left, width)
        return left, width

    def _set_cells(self, X: np.ndarray, mask: np.ndarray, step: np.ndarray) -> None:
        """Store the cell layout of the training rows ``X`` (checked) on the model."""
        self.discrete_mask_, self.step_ = mask, step
        self.levels_ = self._level_columns(X.shape[1], mask)
        self.cell_mask_ = mask.copy()
        self.cell_mask_[list(self.levels_)] = True

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_features_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet: call fit(X) first")

    def _discrete_mask(self, X: np.ndarray) -> np.ndarray:
        """``discrete`` as a ``(features,)`` boolean mask; checks those columns hold integers."""
        features = X.shape[1]
        mask = np.zeros(features, dtype=bool)
        if self.discrete is not None and len(self.discrete):
            chosen = np.asarray(self.discrete)
            if chosen.dtype == bool:
                if chosen.shape != (features,):
                    raise ValueError(
                        f"discrete as a boolean mask must have shape ({features},), "
                        f"got {chosen.shape}"
                    )
                mask = chosen.copy()
            else:
                if chosen.ndim != 1 or not np.issubdtype(chosen.dtype, np.integer):
                    raise ValueError(
                        f"discrete must be a sequence of column indices or a boolean mask, "
                        f"got {self.discrete!r}"
                    )
                if chosen.size and (chosen.min() < -features or chosen.max() >= features):
                    raise ValueError(
                        f"discrete column indices must be in [0, {features}), got {chosen.tolist()}"
                    )
                mask[chosen] = True
        self._check_integers("X", X, mask)
        return mask

    def _cells(self, X: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cell widths and lattice origins ``(features,)`` of the ``mask`` columns (1 and the
        column's minimum by default; 0 elsewhere) from ``step`` and the training rows ``X``."""
        step = np.zeros(X.shape[1])
        count = int(mask.sum())
        widths = np.ones(count) if self.step is None else np.asarray(self.step, dtype=np.float64)
        if widths.ndim == 0:
            widths = np.full(count, float(widths))
        if widths.shape != (count,) or not (np.isfinite(widths) & (widths > 0)).all():
            raise ValueError(
                f"step must be a positive number or one per discrete column ({count}), "
                f"got {self.step!r}"
            )
        step[mask] = widths
        origin = np.where(mask, X.min(axis=0), 0.0)
        return step, origin

    @staticmethod
    def _check_integers(name: str, X: np.ndarray, mask: np.ndarray) -> None:
        values = X[:, mask]
        bad = np.flatnonzero((values != np.round(values)).any(axis=0))
        if bad.size:
            columns = np.flatnonzero(mask)[bad].tolist()
            raise ValueError(f"{name} has non-integer values in discrete columns {columns}")

    @abc.abstractmethod
    def _log_density(self, X: np.ndarray) -> np.ndarray:
        """Continuous log-density, ``(rows, features) -> (rows,)``."""

    @abc.abstractmethod
    def _draw(self, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        """``(num_samples, features)`` draws of the continuous model."""

    def score_samples(self, X) -> np.ndarray:
        """Log-density of each row (log-probability of the cell ``[v, v + step)`` of the value
        ``v`` for discrete columns, of the level's cell of :func:`level_edges` for level
        columns).

        Cells are integrated by the rule shared with :class:`~normflows_sci.DensityEstimator`
        (:func:`~normflows_sci.quadrature.unit_cell_rule`): exact quadrature for up to three
        discrete columns, randomised quasi-Monte Carlo above, whose standard error per row is
        stored in ``last_score_error_`` (nats; 0 for exact rules), with a warning when it exceeds
        ``QMC_STDERR_TOLERANCE``.

        Args:
            X: ``(rows, features)``.

        Returns:
            ``(rows,)`` float64, in nats.
        """
        self._check_fitted()
        X = _check_data("X", X, features=self.n_features_, min_rows=0)
        self._check_integers("X", X, self.discrete_mask_)
        left, width = self._row_cells("X", X)
        log_p, self.last_score_error_ = _cell_log_prob(
            self._log_density, left, width, getattr(self, "cell_mask_", self.discrete_mask_)
        )
        warn_imprecise_cells(self.last_score_error_, stacklevel=3)
        return log_p

    def score(self, X) -> float:
        """Mean log-density of the rows of ``X`` in nats (higher is better).

        Args:
            X: ``(rows, features)``.

        Returns:
            ``float``: the mean of :meth:`score_samples`.
        """
        return float(np.mean(self.score_samples(X)))

    def sample(self, num_samples: int, *, random_state=None) -> np.ndarray:
        """Draw ``num_samples`` rows (discrete columns rounded down onto their lattice, level
        columns onto the level whose cell holds the draw, the end levels taking the tails).

        Args:
            num_samples: number of rows.
            random_state: seed or ``numpy.random.Generator``; the same seed gives the same rows.

        Returns:
            ``(num_samples, features)`` float64.
        """
        self._check_fitted()
        num_samples = _check_num_samples(num_samples)
        draws = self._draw(num_samples, np.random.default_rng(random_state))
        mask, step, origin = self.discrete_mask_, self.step_, self.origin_
        draws[:, mask] = origin[mask] + step[mask] * np.floor(
            (draws[:, mask] - origin[mask]) / step[mask]
        )
        for j, levels in getattr(self, "levels_", {}).items():
            inner = level_edges(levels)[1:-1]
            draws[:, j] = levels[np.searchsorted(inner, draws[:, j], side="right")]
        return draws


class GaussianBaseline(_Baseline):
    """A single multivariate normal with the maximum-likelihood mean and full covariance.

    A ridge of ``1e-6`` times the mean per-feature variance is added to the covariance (raised
    further only if it is still singular), so constant or collinear columns give a finite density.
    Integer-valued columns named in ``discrete`` are modelled as dequantised (``k + step * u``
    with ``u ~ U[0, 1)``: the fit uses the exact moments of the dequantised data) and scored as
    the probability of their cell ``[k, k + step)``, the same convention as
    :class:`~normflows_sci.DensityEstimator`, whose detected lattice spacing (``spec_.step``) is
    the ``step`` to compare with it on the same cells.

    Args:
        discrete: column indices (or a boolean mask) of integer-valued columns.
        step: cell width of the discrete columns: one number, or one per discrete column in
            column order (default 1).
        levels: ``{column index: levels}`` of numeric columns holding a few levels (what
            :func:`level_cells` reads off an estimator): fitted as uniform over each level's
            cell of :func:`level_edges` and scored as the probability of that cell.

    Attributes:
        ``mean_``: ``(features,)``.
        ``covariance_``: ``(features, features)``, regularised.
        ``n_features_``: number of columns seen in :meth:`fit`.
        ``discrete_mask_``: ``(features,)`` boolean.
        ``step_``, ``origin_``: ``(features,)`` cell widths and lattice origins (0 for
            continuous columns).
        ``levels_``: ``{column index: sorted levels}`` of the level columns.

    Example:
        >>> import numpy as np
        >>> X = np.random.default_rng(1).normal(size=(2000, 3))
        >>> round(GaussianBaseline().fit(X).score(X), 1)
        -4.3
    """

    def __init__(self, *, discrete=None, step=None, levels=None):
        super().__init__(discrete=discrete, step=step, levels=levels)

    def fit(self, X, X_val=None) -> GaussianBaseline:
        """Fit the mean and covariance of ``X``.

        Args:
            X: ``(rows, features)`` training data, at least one row.
            X_val: unused; accepted so every estimator of the package is called alike.

        Returns:
            ``self``.
        """
        X = _check_data("X", X)
        mask = self._discrete_mask(X)
        step, self.origin_ = self._cells(X, mask)
        self._set_cells(X, mask, step)
        left, width = self._row_cells("X", X)
        # Uniform noise over each row's cell, independent of everything: the cell centres'
        # moments, plus the noise variance width^2 / 12 on the diagonal.
        centres = left + 0.5 * width
        mean = centres.mean(axis=0)
        centred = centres - mean
        covariance = centred.T @ centred / X.shape[0]
        covariance[np.diag_indices_from(covariance)] += (width**2).mean(axis=0) / 12.0
        scale = float(np.trace(covariance)) / X.shape[1]
        ridge = _REG * (scale if scale > 0 else 1.0)
        self.cholesky_ = _robust_cholesky(covariance, ridge)
        self.covariance_ = self.cholesky_ @ self.cholesky_.T
        self.mean_ = mean
        self.n_features_ = X.shape[1]
        return self

    def _log_density(self, X: np.ndarray) -> np.ndarray:
        return _gaussian_log_prob(X, self.mean_, self.cholesky_)

    def _draw(self, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        noise = rng.standard_normal((num_samples, self.n_features_))
        return self.mean_ + noise @ self.cholesky_.T


class GaussianMixtureBaseline(_Baseline):
    """A Gaussian mixture fitted by expectation-maximisation, optionally choosing its size.

    Means are seeded by k-means++ and refined by a few Lloyd iterations; the E-step works with
    log-space responsibilities (``logsumexp``), and each covariance gets a ridge of ``1e-6`` times
    the mean per-feature variance of the data so components never collapse onto a point. With
    ``components=None`` every count in ``candidates`` is fitted on a training split and the one
    with the best validation log-likelihood is refitted on all of ``X`` (or, when ``X_val`` is
    passed to :meth:`fit`, chosen on ``X_val`` and fitted on ``X``).

    Args:
        components: number of mixture components, or ``None`` to choose it among ``candidates``.
        candidates: component counts tried when ``components`` is ``None``; counts larger than the
            training rows are skipped.
        covariance: ``"full"`` or ``"diag"``.
        max_iter: EM iterations at most.
        tol: stop when the mean log-likelihood per row improves by less than this.
        n_init: independent initialisations; the one with the best training likelihood is kept.
        validation_fraction: share of ``X`` held out to choose ``components`` when no ``X_val``.
        discrete: column indices (or a boolean mask) of integer-valued columns: fitted on
            dequantised values ``k + step * u``, ``u ~ U[0, 1)``, and scored as the probability
            of the cell ``[k, k + step)`` (as :class:`~normflows_sci.DensityEstimator` does).
        step: cell width of the discrete columns: one number, or one per discrete column in
            column order (default 1).
        levels: ``{column index: levels}`` of numeric level columns, fitted uniform over each
            level's cell of :func:`level_edges` and scored as the probability of that cell.
        random_state: seed or ``numpy.random.Generator`` for the initialisation and the split.

    Attributes:
        ``components_``: the number of components used.
        ``weights_``: ``(components_,)``.
        ``means_``: ``(components_, features)``.
        ``covariances_``: ``(components_, features, features)`` (diagonal matrices for
            ``"diag"``).
        ``validation_scores_``: dict component count -> validation mean log-likelihood (only
            when the count was chosen).
        ``converged_``: whether EM met ``tol`` before ``max_iter``.
        ``n_iter_``: EM iterations run.
        ``discrete_mask_``: ``(features,)`` boolean.
        ``step_``, ``origin_``: ``(features,)`` cell widths and lattice origins (0 for
            continuous columns).
        ``levels_``: ``{column index: sorted levels}`` of the level columns.

    References:
        Dempster, Laird & Rubin, "Maximum likelihood from incomplete data via the EM algorithm",
        1977. Arthur & Vassilvitskii, "k-means++: the advantages of careful seeding", 2007.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> X = np.concatenate([rng.normal(-3, 1, (500, 1)), rng.normal(3, 1, (500, 1))])
        >>> gmm = GaussianMixtureBaseline(random_state=0, candidates=(1, 2)).fit(X)
        >>> gmm.components_
        2
    """

    def __init__(
        self,
        components: int | None = None,
        *,
        candidates=(1, 2, 4, 8, 16),
        covariance: str = "full",
        max_iter: int = 200,
        tol: float = 1e-6,
        n_init: int = 1,
        validation_fraction: float = 0.2,
        discrete=None,
        step=None,
        levels=None,
        random_state=None,
    ):
        super().__init__(discrete=discrete, step=step, levels=levels)
        components = check_int("components", components, optional=True)
        candidates = tuple(candidates)
        if not candidates or any(isinstance(k, bool) or int(k) != k or k < 1 for k in candidates):
            raise ValueError(
                f"candidates must be a non-empty sequence of positive integers, got {candidates!r}"
            )
        if covariance not in _COVARIANCES:
            raise ValueError(f"covariance must be one of {_COVARIANCES}, got {covariance!r}")
        max_iter = check_int("max_iter", max_iter)
        if not isinstance(tol, (int, float)) or not tol >= 0:
            raise ValueError(f"tol must be non-negative, got {tol!r}")
        n_init = check_int("n_init", n_init)
        if not 0 < validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
        self.components = None if components is None else int(components)
        self.candidates = tuple(sorted({int(k) for k in candidates}))
        self.covariance = covariance
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.n_init = int(n_init)
        self.validation_fraction = float(validation_fraction)
        self.random_state = random_state

    # ------------------------------------------------------------------ fitting

    def fit(self, X, X_val=None) -> GaussianMixtureBaseline:
        """Fit the mixture to ``X``.

        Args:
            X: ``(rows, features)`` training data, at least ``components`` rows.
            X_val: optional ``(rows_val, features)`` rows used only to choose the component count
                when ``components`` is ``None``.

        Returns:
            ``self``.
        """
        X = _check_data("X", X)
        mask = self._discrete_mask(X)
        step, origin = self._cells(X, mask)
        self._set_cells(X, mask, step)
        rng = np.random.default_rng(self.random_state)
        if self.components is not None and self.components > X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows, fewer than components={self.components}")
        if self.components is None:
            if X_val is not None:
                X_val = _check_data("X_val", X_val, features=X.shape[1])
                self._check_integers("X_val", X_val, mask)
                X_train = X
            else:
                if X.shape[0] < 2:
                    raise ValueError(
                        "X must have at least 2 rows to choose components on a validation split"
                    )
                order = rng.permutation(X.shape[0])
                n_val = min(max(1, round(self.validation_fraction * X.shape[0])), X.shape[0] - 1)
                X_val, X_train = X[order[:n_val]], X[order[n_val:]]
        # Cell columns are fitted dequantised (uniform over each row's cell: k + step * u for
        # integers) and scored per cell.
        left, width = self._row_cells("X", X)
        X = left + rng.random(X.shape) * width
        # Work in coordinates centred on the data mean: exact moments, no cancellation.
        offset = X.mean(axis=0)
        X = X - offset
        scale = float(X.var(axis=0).mean())
        self._ridge = _REG * (scale if scale > 0 else 1.0)
        self.validation_scores_: dict[int, float] = {}
        if self.components is not None:
            count = self.components
        else:
            left, width = self._row_cells("X", X_train)
            X_train = left + rng.random(X_train.shape) * width - offset
            count = self._choose_count(X_train, self._row_cells("X_val", X_val), offset, rng)
        params, self.converged_, self.n_iter_ = self._fit_count(X, count, rng)
        self.weights_, self._means, self._choleskys = params
        self._offset = offset
        self.means_ = self._means + offset
        self.covariances_ = self._choleskys @ np.swapaxes(self._choleskys, 1, 2)
        self.components_ = count
        self.origin_ = origin
        self.n_features_ = X.shape[1]
        return self

    def _choose_count(self, X_train, val_cells, offset, rng: np.random.Generator) -> int:
        """The candidate count whose fit to the centred, dequantised ``X_train`` scores best on
        the validation rows (per cell; ``val_cells = (left, width)`` of :meth:`_row_cells`);
        each candidate's score goes to ``validation_scores_``."""
        for k in self.candidates:
            if k > X_train.shape[0]:
                continue
            params = self._fit_count(X_train, k, rng)[0]

            def log_density(Z, params=params):
                return self._log_prob(Z - offset, params)

            scores = _cell_log_prob(log_density, *val_cells, self.cell_mask_)[0]
            self.validation_scores_[k] = float(np.mean(scores))
        return max(self.validation_scores_, key=self.validation_scores_.get)

    def _fit_count(self, X: np.ndarray, count: int, rng: np.random.Generator):
        """Best of ``n_init`` EM runs with ``count`` components: ``(params, converged, n_iter)``."""
        best = None
        for _ in range(self.n_init):
            params, log_likelihood, converged, n_iter = self._em(X, count, rng)
            if best is None or log_likelihood > best[1]:
                best = (params, log_likelihood, converged, n_iter)
        return best[0], best[2], best[3]

    def _em(self, X: np.ndarray, count: int, rng: np.random.Generator):
        labels = _kmeans_labels(X, count, rng)
        responsibilities = np.zeros((X.shape[0], count))
        responsibilities[np.arange(X.shape[0]), labels] = 1.0
        params = self._m_step(X, responsibilities)
        previous = -np.inf
        converged = False
        n_iter = 0
        for n_iter in range(1, self.max_iter + 1):  # noqa: B007 - n_iter is reported
            joint = self._joint_log_prob(X, params)
            log_norm = _logsumexp_rows(joint)
            mean_log_likelihood = float(log_norm.mean())
            responsibilities = np.exp(joint - log_norm[:, None])
            params = self._m_step(X, responsibilities)
            if abs(mean_log_likelihood - previous) < self.tol:
                converged = True
                break
            previous = mean_log_likelihood
        final = float(np.mean(self._log_prob(X, params)))
        return params, final, converged, n_iter

    def _m_step(self, X: np.ndarray, responsibilities: np.ndarray):
        # X is centred on the data mean (see fit), so raw second moments lose no precision.
        # Tiny floor keeps empty components finite; their weight then goes to ~0.
        counts = responsibilities.sum(axis=0) + 10 * np.finfo(np.float64).eps
        weights = counts / counts.sum()
        per_component = np.ascontiguousarray(responsibilities.T)  # (components, rows)
        means = per_component @ X / counts[:, None]
        features = X.shape[1]
        choleskys = np.empty((len(counts), features, features))
        if self.covariance == "diag":
            variances = per_component @ (X * X) / counts[:, None] - means**2
            for j in range(len(counts)):
                choleskys[j] = _robust_cholesky(np.diag(np.maximum(variances[j], 0.0)), self._ridge)
            return weights, means, choleskys
        X_t = np.ascontiguousarray(X.T)
        for j in range(len(counts)):
            second = (X_t * per_component[j]) @ X / counts[j]
            cov = second - np.outer(means[j], means[j])
            choleskys[j] = _robust_cholesky(0.5 * (cov + cov.T), self._ridge)
        return weights, means, choleskys

    def _joint_log_prob(self, X: np.ndarray, params) -> np.ndarray:
        """``log w_j + log N(x | mu_j, Sigma_j)``: ``(rows, components)``."""
        weights, means, choleskys = params
        # One batched whitening for all components: z = L^-1 (x - mu) = L^-1 x - L^-1 mu.
        inverse = np.linalg.inv(choleskys)  # (components, features, features), lower triangular
        shift = np.einsum("kij,kj->ki", inverse, means)
        log_det = 2.0 * np.log(np.diagonal(choleskys, axis1=1, axis2=2)).sum(axis=1)
        constant = np.log(weights) - 0.5 * (X.shape[1] * _LOG_2PI + log_det)
        stacked = inverse.reshape(-1, X.shape[1])  # (components * features, features)
        out = np.empty((X.shape[0], len(weights)))
        # Rows in chunks bound the (rows, components, features) intermediate to ~32 MB.
        chunk = max(1, 4_000_000 // max(1, stacked.shape[0]))
        for start in range(0, X.shape[0], chunk):
            whitened = (X[start : start + chunk] @ stacked.T).reshape(-1, *shift.shape) - shift
            out[start : start + chunk] = constant - 0.5 * np.einsum(
                "nkj,nkj->nk", whitened, whitened
            )
        return out

    def _log_prob(self, X: np.ndarray, params) -> np.ndarray:
        return _logsumexp_rows(self._joint_log_prob(X, params))

    # ------------------------------------------------------------------ inference

    def _log_density(self, X: np.ndarray) -> np.ndarray:
        return self._log_prob(X - self._offset, (self.weights_, self._means, self._choleskys))

    def _draw(self, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        which = rng.choice(self.components_, size=num_samples, p=self.weights_)
        noise = rng.standard_normal((num_samples, self.n_features_))
        return self.means_[which] + np.einsum("nij,nj->ni", self._choleskys[which], noise)

    def predict_proba(self, X) -> np.ndarray:
        """Posterior component probabilities (responsibilities) of each row.

        Cell columns (discrete, levels) are evaluated at the centre of their cell.

        Args:
            X: ``(rows, features)``.

        Returns:
            ``(rows, components_)``; each row sums to 1.
        """
        self._check_fitted()
        X = _check_data("X", X, features=self.n_features_, min_rows=0)
        left, width = self._row_cells("X", X)
        X = left + 0.5 * width - self._offset
        joint = self._joint_log_prob(X, (self.weights_, self._means, self._choleskys))
        return np.exp(joint - _logsumexp_rows(joint)[:, None])


def _kmeans_labels(
    X: np.ndarray, count: int, rng: np.random.Generator, iterations: int = 10
) -> np.ndarray:
    """k-means++ seeding then a few Lloyd iterations; returns a label per row ``(rows,)``."""
    rows = X.shape[0]
    if count == 1:
        return np.zeros(rows, dtype=np.int64)
    centres = np.empty((count, X.shape[1]))
    centres[0] = X[rng.integers(rows)]
    closest = ((X - centres[0]) ** 2).sum(axis=1)
    for j in range(1, count):
        total = closest.sum()
        # All remaining points coincide with a centre: any choice is as good.
        index = rng.choice(rows, p=closest / total) if total > 0 else rng.integers(rows)
        centres[j] = X[index]
        closest = np.minimum(closest, ((X - centres[j]) ** 2).sum(axis=1))
    labels = np.zeros(rows, dtype=np.int64)
    for iteration in range(iterations):
        distances = (
            (X * X).sum(axis=1)[:, None] - 2.0 * X @ centres.T + (centres * centres).sum(axis=1)
        )
        new_labels = distances.argmin(axis=1)
        if iteration > 0 and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        for j in range(count):
            members = labels == j
            if members.any():
                centres[j] = X[members].mean(axis=0)
    return labels


# ------------------------------------------------------------------------------------- scoring


def gaussian_held_out_score(
    train: np.ndarray,
    held_out: np.ndarray,
    *,
    discrete: Sequence[int] = (),
    step: float | Sequence[float] | None = None,
    context: Sequence[int] = (),
    levels: dict | None = None,
) -> float:
    """Mean held-out log-likelihood (nats per row) of a full-covariance Gaussian fitted to
    ``train``, on the footing of a :class:`~normflows_sci.DensityEstimator`: the ``discrete``
    columns are scored per cell ``[v, v + step)`` (pass the estimator's detected spacing, so
    both score the same cells), and with ``context`` columns the score is the conditional
    ``log p(others | context) = log p(all) - log p(context)`` (exact for a joint Gaussian), like
    a conditional flow's.

    Args:
        train: ``(n, d)`` training rows.
        held_out: ``(m, d)`` rows to score.
        discrete: indices of integer-valued columns.
        step: their cell widths (one number, or one per discrete column in column order;
            default 1).
        context: indices of the columns conditioned on.
        levels: ``{column index: levels}`` of numeric level columns (see :func:`level_cells`).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(4000, 1))
        >>> table = np.hstack([x, x + 0.1 * rng.normal(size=(4000, 1))])
        >>> joint = gaussian_held_out_score(table[:3000], table[3000:])
        >>> given_x = gaussian_held_out_score(table[:3000], table[3000:], context=[0])
        >>> round(joint - given_x, 1)  # the marginal log-density of x
        -1.4
    """
    joint = GaussianBaseline(discrete=list(discrete), step=step, levels=levels).fit(train)
    scores = joint.score_samples(held_out)
    context = list(context)
    if context:
        marginal = GaussianBaseline().fit(train[:, context])
        scores = scores - marginal.score_samples(held_out[:, context])
    return float(np.mean(scores))


def baseline_scores(
    train: np.ndarray,
    test: np.ndarray,
    *,
    discrete: Sequence[int] = (),
    step: float | Sequence[float] | None = None,
    random_state: int | None = None,
    levels: dict | None = None,
) -> list[tuple[str, float, float]]:
    """Fit the Gaussian and the Gaussian mixture (size chosen by validation) to ``train`` and
    score them on ``test``.

    Args:
        train: ``(n, d)`` training rows.
        test: ``(m, d)`` rows to score.
        discrete: indices of integer-valued columns, scored per cell ``[v, v + step)``.
        step: their cell widths (one number, or one per discrete column in column order;
            default 1). To compare with a :class:`~normflows_sci.DensityEstimator`, pass the
            lattice spacing it detected (its ``spec_.step``): scores of different cells differ
            by the log of the ratio of their widths (``log 5`` nats per row for winds in 5-knot
            steps).
        random_state: seed of the mixture's fit.
        levels: ``{column index: levels}`` of numeric level columns, scored per level cell
            (pass :func:`level_cells` of the estimator compared with).

    Returns:
        ``[(label, mean log-likelihood in nats per row, fit seconds), ...]``, Gaussian first.
    """
    results = []
    started = time.perf_counter()
    gauss = GaussianBaseline(discrete=list(discrete), step=step, levels=levels).fit(train)
    results.append(("Gaussian (full covariance)", gauss.score(test), time.perf_counter() - started))
    started = time.perf_counter()
    mixture = GaussianMixtureBaseline(
        discrete=list(discrete), step=step, levels=levels, random_state=random_state
    )
    mixture.fit(train)
    label = f"Gaussian mixture ({mixture.components_} components)"
    results.append((label, mixture.score(test), time.perf_counter() - started))
    return results


def lattice_cells(estimator, columns: Sequence[str]) -> tuple[list[int], list[float]]:
    """The cells a fitted :class:`~normflows_sci.DensityEstimator` scores its integer columns on,
    as the ``discrete`` and ``step`` arguments of the baselines: positions in ``columns``
    (ascending) and the lattice spacing the estimator detected for each (5 for winds in 5-knot
    steps). Baselines given these score the same cells as the estimator, so their held-out
    log-likelihoods compare with its own.

    Args:
        estimator: a fitted ``DensityEstimator`` (its ``spec_`` is read).
        columns: the names of the columns of the table the baselines see.

    Raises:
        ValueError: an integer column of the estimator is not among ``columns``.
    """
    spec = estimator.spec_
    columns = list(columns)
    cells = []
    for name, discrete, step in zip(spec.target_columns, spec.discrete, spec.step):
        if not discrete:
            continue
        if name not in columns:
            raise ValueError(f"columns must include the estimator's integer column {name!r}")
        cells.append((columns.index(name), float(step)))
    cells.sort()
    return [j for j, _ in cells], [step for _, step in cells]


def level_cells(estimator, columns: Sequence[str]) -> dict[int, list]:
    """The numeric columns a fitted :class:`~normflows_sci.DensityEstimator` models as levels
    (declared ``categorical``, or taken by ``categorical="auto"``), as the ``levels`` argument
    of the baselines: ``{position in columns: levels}``. A baseline given these scores each
    value as the probability of its level's cell (:func:`level_edges`), the measure of the
    estimator's probability of the level.

    Args:
        estimator: a fitted ``DensityEstimator``.
        columns: the names of the columns of the table the baselines see.

    Raises:
        ValueError: a level column of the estimator is not among ``columns``, or it has label
            (text) columns, which a baseline of numbers cannot model.
    """
    categories = getattr(estimator, "categories_", None)
    if categories is None:
        return {}
    numeric = categories.numeric_levels()
    labels = [c for c in categories.categorical if c not in numeric]
    if labels:
        raise ValueError(
            f"the estimator models the label columns {labels}: a numeric baseline has no "
            "probability for them"
        )
    columns = list(columns)
    missing = [c for c in numeric if c not in columns]
    if missing:
        raise ValueError(f"columns must include the estimator's level columns {missing}")
    return {columns.index(c): levels for c, levels in numeric.items()}


def describe_cells(
    columns: Sequence[str],
    discrete: Sequence[int],
    step: Sequence[float],
    levels: dict | None = None,
) -> str:
    """A phrase naming the cells of a comparison, for printed output.

    Example:
        >>> describe_cells(["lat", "wind"], [1], [5.0])
        'integer columns as log-probabilities of the cells wind [v, v+5)'
        >>> describe_cells(["rate", "x"], [], [], {0: [0.0, 3.3, 3.9]})
        'level columns as log-probabilities of their level cells rate (3)'
    """
    parts = []
    if len(discrete):
        cells = ", ".join(f"{columns[j]} [v, v+{s:g})" for j, s in zip(discrete, step))
        parts.append(f"integer columns as log-probabilities of the cells {cells}")
    if levels:
        named = ", ".join(f"{columns[j]} ({len(v)})" for j, v in sorted(levels.items()))
        parts.append(f"level columns as log-probabilities of their level cells {named}")
    return "; ".join(parts) or "continuous columns only (log-densities)"
