"""The preprocessing of a table for :class:`~normflows_sci.estimator.DensityEstimator`, decided
once from the training rows and frozen in a :class:`TableSpec`.

The spec is what a model file stores (``config["spec"]``, the same JSON keys as format version 1)
and all a model is rebuilt from: the column roles (targets, context), each target's kind
(continuous or an integer lattice with its step and origin), its declared and effective bounds,
heavy-tail degrees of freedom, and the network's size. The standardisation statistics travel in
the model's weights; :class:`TableStatistics` carries them from the data to the new model.

Every statistic is computed in float64 on the unbounded (``logit``/``softplus``) representation, so
data at any scale (1e-12, 1e300, far from the origin) keep their shape.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import Tensor, nn

from normflows_sci.distributions import StandardNormal, TailAdaptiveBase
from normflows_sci.flows import CNF, MAF, NSF, Flow, RealNVP, TarFlow
from normflows_sci.transforms import BoundaryTransform, CompositeTransform, ElementwiseAffine

__all__ = [
    "FLOWS",
    "ColumnLayout",
    "TableSpec",
    "TableStatistics",
    "NetworkSize",
    "Standardize",
    "ContextStandardizer",
    "TableFlow",
    "build_table_flow",
    "check_flow_range",
    "HEAVY_TAIL_THRESHOLD",
    "MIN_ROWS_FOR_TAILS",
    "BOUND_MARGIN",
    "AUTO_PILE_SPREAD",
    "AUTO_SKEWNESS",
    "AUTO_SKEW_SPREADS",
    "as_table",
    "robust_moments",
    "float64_bounds",
    "TableBounds",
    "hill_tail_index",
    "tail_indices",
    "positive_column",
    "column_layout",
    "plan_table",
    "ATOM_SHARE",
    "point_masses",
    "spec_keys",
]

# The flow families a table model can use, by the name DensityEstimator(flow=...) takes.
FLOWS = {"nsf": NSF, "maf": MAF, "realnvp": RealNVP, "tarflow": TarFlow, "cnf": CNF}
# Columns whose tail index falls below this on BOTH sides get a Student-t base marginal (the base
# is symmetric: one heavy tail, as in a log-normal column, would give the light side outliers).
HEAVY_TAIL_THRESHOLD = 4.0
# Below this many rows the tail index rests on too few points to act on it automatically.
MIN_ROWS_FOR_TAILS = 1000
# Bounds that the data touch are widened by this share of a column's spread, so points on a bound
# stay finite; bounds the data lie strictly inside are used exactly, so samples respect them.
BOUND_MARGIN = 1e-6
# bounds="auto" bounds a non-negative column at 0 when its minimum lies within AUTO_PILE_SPREAD
# standard deviations of 0 (values piled near 0), or within AUTO_SKEW_SPREADS of 0 when the column
# is right-skewed (sample skewness above AUTO_SKEWNESS): the shape of positive quantities.
AUTO_PILE_SPREAD = 0.1
AUTO_SKEWNESS = 0.5
AUTO_SKEW_SPREADS = 3.0
# A continuous target column whose most frequent value holds at least this share of the training
# rows has a point mass there (see point_masses).
ATOM_SHARE = 0.05
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


@dataclass(frozen=True)
class ColumnLayout:
    """Column roles and kinds decided from the training table (the first part of a spec).

    ``discrete``, ``step``, ``origin``, ``lower`` and ``upper`` hold one entry per target column:
    a discrete column's values lie on ``origin + step * k``; ``None`` bounds are open sides.
    """

    columns: tuple[str, ...]
    context_columns: tuple[str, ...]
    target_columns: tuple[str, ...]
    discrete: tuple[bool, ...]
    step: tuple[float, ...]
    origin: tuple[float, ...]
    lower: tuple[float | None, ...]
    upper: tuple[float | None, ...]

    def targets(self, values: np.ndarray) -> np.ndarray:
        """The target columns ``(n, targets)`` of ``(n, columns)`` rows."""
        return values[:, [self.columns.index(c) for c in self.target_columns]]

    def context(self, values: np.ndarray) -> np.ndarray:
        """The context columns ``(n, context)`` of ``(n, columns)`` rows (``(n, 0)`` without)."""
        return values[:, [self.columns.index(c) for c in self.context_columns]]

    def effective_bounds(self, targets: np.ndarray) -> tuple[list, list]:
        """Bounds of the (dequantised) variables; checks that ``targets`` respect the declared
        bounds (``ValueError`` naming the column).

        A bound the rows touch (a value on it, or an integer cell starting on it) is widened by a
        hair (``BOUND_MARGIN`` of the column's spread) so those points stay finite; a bound the
        rows lie strictly inside is kept exactly, so the model's samples respect it exactly (the
        float64 inverse map ``low + softplus(y)`` never goes below ``low``). An integer column's
        upper bound is that of its last cell, ``high + step``.
        """
        lower, upper = [], []
        for i, name in enumerate(self.target_columns):
            low, high, step = self.lower[i], self.upper[i], self.step[i]
            column = targets[:, i]
            if low is not None and column.min() < low:
                raise ValueError(f"column {name!r} has values below its lower bound {low}")
            if high is not None and column.max() > high:
                raise ValueError(f"column {name!r} has values above its upper bound {high}")
            # Relative to the column's own spread, however small (data at 1e-12 keep their shape).
            spread = float(robust_moments(torch.as_tensor(column[:, None]))[1][0])
            scale = max(spread, 1.0) if step else (spread if spread > 0 else 1.0)
            margin = BOUND_MARGIN * scale
            touch_low = low is not None and column.min() <= low
            touch_high = high is not None and not step and column.max() >= high
            lower.append(None if low is None else float(low) - (margin if touch_low else 0.0))
            upper.append(
                None if high is None else float(high) + step + (margin if touch_high else 0.0)
            )
        return lower, upper


@dataclass(frozen=True)
class TableSpec(ColumnLayout):
    """Everything a fitted table model is rebuilt from; stored in model files as JSON.

    Besides the :class:`ColumnLayout`: the effective bounds of the transform that maps the
    bounded columns to R (``None`` for open sides), the Student-t degrees of freedom of each
    target's base marginal (``None``: Gaussian), the flow family and size, and whether the
    training table was a DataFrame (samples come back as one).

    ``spec[key]`` (the dict of earlier versions) still reads a field, with a
    ``DeprecationWarning``; :meth:`to_dict` gives the stored JSON form.
    """

    lower_effective: tuple[float | None, ...]
    upper_effective: tuple[float | None, ...]
    tail_df: tuple[float | None, ...]
    flow: str
    transforms: int
    hidden_features: tuple[int, ...]
    bins: int
    frame: bool

    @classmethod
    def from_dict(cls, spec: dict) -> TableSpec:
        """The spec of a stored (already validated) dict; list fields become tuples."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in _pick(spec).items()})

    def to_dict(self) -> dict:
        """The JSON form (the keys of model format version 1; lists for the per-column fields)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def __getitem__(self, key: str):
        if key not in spec_keys():
            raise KeyError(key)
        warnings.warn(
            f"spec_[{key!r}] is deprecated (spec_ is a TableSpec now): use spec_.{key}",
            DeprecationWarning,
            stacklevel=2,
        )
        value = getattr(self, key)
        return list(value) if isinstance(value, tuple) else value

    @property
    def has_bounds(self) -> bool:
        """Whether any target column is bounded (the model then starts with a bounds transform)."""
        return any(v is not None for v in self.lower_effective + self.upper_effective)


def spec_keys() -> tuple[str, ...]:
    """The fields of :class:`TableSpec`: the keys of a stored spec."""
    return tuple(f.name for f in fields(TableSpec))


def _pick(spec: dict) -> dict:
    return {k: spec[k] for k in spec_keys()}


@dataclass(frozen=True, eq=False)
class TableStatistics:
    """Float64 standardisation of a table: the targets' ``mean``/``std`` ``(targets,)`` on their
    unbounded representation, and the context columns' ``context_mean``/``context_std``
    ``(context,)`` (a constant context column gets std 1)."""

    mean: Tensor
    std: Tensor
    context_mean: Tensor | None
    context_std: Tensor


@dataclass(frozen=True)
class NetworkSize:
    """The flow family and size chosen for a table (``hidden_features`` as a tuple)."""

    flow: str
    transforms: int
    hidden_features: tuple[int, ...]
    bins: int


# ---------------------------------------------------------------------------- reading values


def _frame_values(X, name: str) -> tuple[np.ndarray, list[str]]:
    try:
        values = X.to_numpy(dtype=np.float64, copy=True)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must hold numeric columns only: {error}") from error
    return values, [str(c) for c in X.columns]


def _array_values(X, name: str) -> np.ndarray:
    if isinstance(X, Tensor):
        X = X.detach().cpu().numpy()
    try:
        return np.array(X, dtype=np.float64)  # a private, writable copy
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a numeric array or DataFrame: {error}") from error


def _check_finite(values: np.ndarray, names: list[str], name: str) -> None:
    missing = np.isnan(values)
    if missing.any():
        bad = {names[j]: int(missing[:, j].sum()) for j in np.nonzero(missing.any(0))[0]}
        raise ValueError(
            f"{name} has missing values (NaN) in columns {bad}: impute or drop them first"
        )
    if not np.isfinite(values).all():
        bad = [names[j] for j in np.nonzero(~np.isfinite(values).all(0))[0]]
        raise ValueError(f"{name} has infinite values in columns {bad}")


def as_table(
    X, name: str, columns: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str], bool]:
    """``(values float64 (n, d), column names, was_dataframe)`` of an array, tensor or DataFrame.

    With ``columns`` the table must have exactly those columns (a DataFrame by name).

    Raises:
        TypeError: non-numeric values.
        ValueError: not 2-D, no rows, wrong columns, NaN or infinite values (naming ``name`` and
            the columns).
    """
    is_frame = hasattr(X, "columns") and hasattr(X, "to_numpy")
    if is_frame:
        values, names = _frame_values(X, name)
    else:
        values, names = _array_values(X, name), None
    if values.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, columns), got shape {values.shape}")
    if len(values) == 0:
        raise ValueError(f"{name} has no rows")
    if names is None:
        names = columns if columns is not None else [f"x{i}" for i in range(values.shape[1])]
    if columns is not None:
        if values.shape[1] != len(columns):
            raise ValueError(
                f"{name} must have {len(columns)} columns {columns}, got {values.shape[1]}"
            )
        if is_frame and names != columns:
            raise ValueError(f"{name} must have columns {columns}, got {names}")
    _check_finite(values, names, name)
    return values, list(names), is_frame


# ---------------------------------------------------------------------------- statistics


def robust_moments(points: Tensor) -> tuple[Tensor, Tensor]:
    """Column mean and (population) standard deviation of float64 ``(n, d)`` points, computed
    on values divided by each column's largest magnitude so squares of 1e300 do not overflow."""
    scale = points.abs().amax(0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    unit = points / scale
    return unit.mean(0) * scale, unit.std(0, correction=0) * scale


class TableBounds(BoundaryTransform):
    """The table model's :class:`BoundaryTransform`: a value ON a bound maps as the nearest float
    inside it.

    The model's bounds are the declared ones exactly where the training rows lie strictly inside
    (so samples respect them), and a point on such a bound has no finite image. A row there (a
    flux of exactly 0 that training never saw) then scores as that nearest inside point: finite,
    and as low as the model's density there, rather than an infinity that the float32 network
    cannot take. Interior points and the Jacobians are those of the parent; see :meth:`inverse`
    for draws that round onto a bound.
    """

    def _inside(self, values: Tensor) -> Tensor:
        """``values`` with those on (or past) a bound moved to the nearest float inside."""
        low = torch.where(self.both | self.lower_only, self.low.to(values.dtype), -math.inf)
        high = torch.where(self.both | self.upper_only, self.high.to(values.dtype), math.inf)
        return values.clamp(torch.nextafter(low, high), torch.nextafter(high, low))

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return super().forward(self._inside(inputs), context)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The parent's float64 map, whose values lie within the bounds by construction; a value
        that rounds onto a bound (a latent beyond about +-37, where the logistic saturates) is
        moved to the nearest float inside, with a warning counting them: the last resort."""
        outputs, logabsdet = super().inverse(inputs, context)
        inside = self._inside(outputs)
        moved = int(((inside != outputs) & ~outputs.isnan()).sum())
        if moved:
            warnings.warn(
                f"{moved} of {outputs.numel()} values mapped onto a bound of the model (the "
                "float64 bound map saturated far in a tail) and were moved to the nearest value "
                "inside",
                RuntimeWarning,
                stacklevel=2,
            )
        return inside, logabsdet


def float64_bounds(lower: Sequence, upper: Sequence) -> TableBounds:
    """A :class:`TableBounds` whose float64 buffers hold the bounds exactly (its constructor
    rounds them to the default dtype: a bound of 0.1 would move by 1.5e-9, past a tight margin)."""
    bounds = TableBounds(list(lower), list(upper)).double()
    stand_ins = {"low": (lower, 0.0), "high": (upper, 1.0)}  # open sides, as the constructor has
    with torch.no_grad():
        for name, (values, open_value) in stand_ins.items():
            exact = [float(v) if v is not None and math.isfinite(v) else open_value for v in values]
            getattr(bounds, name).copy_(torch.tensor(exact, dtype=torch.float64))
    return bounds


def hill_tail_index(values: np.ndarray, *, fraction: float = 0.02) -> float:
    """Hill estimate of the tail index of ``|values|`` from the top ``fraction`` of the sample.

    Small values mean heavy tails (a Student-t with ``nu`` degrees of freedom has index ``nu``);
    Gaussian samples give large values (about 6-8 at the default fraction for 10^4 points).

    With the ``k`` largest magnitudes ``m_1 >= ... >= m_k > m_{k+1}``, the estimate is
    ``1 / mean_i(log m_i - log m_{k+1})`` (``inf`` when it is undefined).

    References:
        Hill (1975), "A simple general approach to inference about the tail of a distribution",
        Annals of Statistics 3.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> heavy = hill_tail_index(rng.standard_t(2, size=10_000))
        >>> light = hill_tail_index(rng.normal(size=10_000))
        >>> 1.5 < heavy < 3.0 < light
        True
    """
    magnitudes = np.abs(np.asarray(values, dtype=np.float64))
    return _hill(magnitudes, max(10, int(fraction * len(magnitudes))))


def _hill(magnitudes: np.ndarray, k: int) -> float:
    """Hill estimate from the ``k`` largest of ``magnitudes`` >= 0 (``inf`` if undefined)."""
    magnitudes = np.sort(magnitudes)[::-1]
    if len(magnitudes) <= k + 1 or magnitudes[k] <= 0:
        return math.inf
    mean = (np.log(magnitudes[:k]) - np.log(magnitudes[k])).mean()
    return math.inf if mean <= 0 else float(1.0 / mean)


def _standardization(
    targets: np.ndarray, step: Sequence[float], boundary: BoundaryTransform | None
) -> tuple[Tensor, Tensor, np.ndarray]:
    """Mean and std (float64 ``(d,)``) of the unbounded, dequantised target columns, and the
    standardised cell midpoints ``(n, d)`` (for the tail indices).

    A discrete column's statistics are those of its dequantised variable ``k + step * u``: the two
    Gauss-Legendre nodes ``u = 1/2 -+ 1/sqrt(12)`` have the mean and variance of ``U[0, 1)``, so even
    a one-level column has the spread of its cell.
    """
    steps = torch.tensor(list(step), dtype=torch.float64)
    data = torch.as_tensor(targets, dtype=torch.float64)
    nodes = [0.5 - 0.5 / math.sqrt(3.0), 0.5 + 0.5 / math.sqrt(3.0), 0.5]
    with torch.no_grad():
        points = [data + node * steps for node in nodes]
        if boundary is not None:
            points = [boundary(p)[0] for p in points]
    mean, std = robust_moments(torch.cat(points[:2]))
    if not bool((torch.isfinite(mean) & torch.isfinite(std) & (std > 0)).all()):
        raise ValueError(
            "the bounds transform leaves some target columns without a finite, positive spread "
            f"(std {std.tolist()}): check the bounds against the data"
        )
    return mean, std, ((points[2] - mean) / std).numpy()


def tail_indices(values: np.ndarray, *, fraction: float = 0.02) -> tuple[float, float]:
    """Hill tail indices ``(lower, upper)`` of the two sides of a sample, about its median.

    Each side's index is :func:`hill_tail_index` of the distances from the median of the values
    on that side, from the top ``fraction`` of all ``n`` values (at least 10 points). A symmetric
    heavy tail (Student-t, Cauchy) gives small indices on both sides; a skewed light-tailed column
    (log-normal, a squared Gaussian) a small one only on its long side, which the pooled
    :func:`hill_tail_index` cannot tell apart.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> low, high = tail_indices(rng.lognormal(size=10_000))
        >>> bool(high < 4.0 < low)
        True
        >>> bool(max(tail_indices(rng.standard_t(2, size=10_000))) < 4.0)
        True
    """
    values = np.asarray(values, dtype=np.float64)
    deviations = values - np.median(values)
    k = max(10, int(fraction * len(values)))
    sides = (-deviations[deviations < 0], deviations[deviations > 0])
    return tuple(_hill(side, k) for side in sides)


def _tail_df(standardized: np.ndarray, heavy_tails: str | bool) -> list:
    """Student-t degrees of freedom per column (None for a Gaussian base marginal).

    The Student-t base is symmetric, so with ``"auto"`` a column gets one only when BOTH of its
    tails are heavy (:func:`tail_indices` below ``HEAVY_TAIL_THRESHOLD``), and its degrees of
    freedom are those of the lighter tail: a column heavy on one side only (log-normal, banana)
    keeps a Gaussian base rather than gain outliers on its light side.
    """
    tail_df = []
    for column in standardized.T:
        index = max(tail_indices(column))
        heavy = heavy_tails is True or (
            heavy_tails == "auto"
            and len(column) >= MIN_ROWS_FOR_TAILS
            and index < HEAVY_TAIL_THRESHOLD
        )
        tail_df.append(float(np.clip(index, 1.0, 30.0)) if heavy else None)
    return tail_df


# ---------------------------------------------------------------------------- column roles


def _resolve_columns(keys, names: list[str], what: str) -> list[int]:
    """Positions of columns given by name or index (``ValueError`` naming ``what``)."""
    indices = []
    for item in keys or []:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not 0 <= item < len(names):
                raise ValueError(f"{what} column index {item} is out of range for {len(names)}")
            indices.append(int(item))
        elif str(item) in names:
            indices.append(names.index(str(item)))
        else:
            raise ValueError(f"{what} column {item!r} not found; columns are {names}")
    return indices


def _discrete_columns(
    discrete, targets: np.ndarray, names: list[str], target_idx: list[int], context_idx: list[int]
) -> list[bool]:
    integral = np.all(targets == np.round(targets), axis=0)
    if discrete == "auto":
        return [bool(v) for v in integral]
    chosen = set(_resolve_columns(list(discrete or []), names, "discrete"))
    if chosen & set(context_idx):
        raise ValueError("discrete columns must not be context columns")
    flags = [j in chosen for j in target_idx]
    for j, is_discrete, is_integral in zip(target_idx, flags, integral):
        if is_discrete and not is_integral:
            raise ValueError(f"discrete column {names[j]!r} has non-integer values")
    return flags


def _declared_bounds(
    bounds, targets: np.ndarray, names: list[str], target_idx: list[int], discrete: list[bool]
) -> tuple[list, list]:
    lower, upper = [None] * len(target_idx), [None] * len(target_idx)
    if isinstance(bounds, dict):
        for key, pair in bounds.items():
            (j,) = _resolve_columns([key], names, "bounds")
            if j not in target_idx:
                raise ValueError(f"bounds given for context column {names[j]!r}")
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ValueError(f"bounds[{key!r}] must be (low, high), got {pair!r}")
            lower[target_idx.index(j)], upper[target_idx.index(j)] = pair
    elif bounds == "auto":
        for i, column in enumerate(targets.T):
            if column.min() >= 0 and column.max() <= 1 and not discrete[i]:
                lower[i], upper[i] = 0.0, 1.0
            elif positive_column(column):
                lower[i] = 0.0
    elif bounds is not None:
        raise ValueError(f"bounds must be a dict, 'auto' or None, got {bounds!r}")
    return lower, upper


def positive_column(column: np.ndarray) -> bool:
    """Whether ``bounds="auto"`` bounds a column at 0: all values are non-negative and either
    piled near 0 (the minimum within ``AUTO_PILE_SPREAD`` standard deviations of 0) or skewed to
    the right (sample skewness above ``AUTO_SKEWNESS``) with the minimum within
    ``AUTO_SKEW_SPREADS`` standard deviations of 0 (log-normal, gamma, counts).

    A symmetric column that merely happens to be positive, such as ``N(10, 1)`` (minimum about 6
    standard deviations above 0, skewness near 0), is left unbounded.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> positive_column(rng.lognormal(0.0, 0.5, 5000)), positive_column(rng.normal(10, 1, 5000))
        (True, False)
    """
    column = np.asarray(column, dtype=np.float64)
    low = float(column.min())
    if low < 0:
        return False
    mean, std = (float(v[0]) for v in robust_moments(torch.as_tensor(column[:, None])))
    if not std > 0:
        return False
    if low < AUTO_PILE_SPREAD * std:
        return True
    skewness = float(np.mean(((column - mean) / std) ** 3))
    return skewness > AUTO_SKEWNESS and low < AUTO_SKEW_SPREADS * std


def _lattices(targets: np.ndarray, discrete: list[bool]) -> tuple[list, list]:
    """Spacing (e.g. 5 for winds in 5-knot steps) and origin of each discrete column's lattice."""
    step, origin = [0.0] * len(discrete), [0.0] * len(discrete)
    for i, column in enumerate(targets.T):
        if discrete[i]:
            levels = np.unique(column).astype(np.int64)
            spacing = int(np.gcd.reduce(np.diff(levels))) if len(levels) > 1 else 1
            step[i], origin[i] = float(max(spacing, 1)), float(levels[0])
    return step, origin


def column_layout(
    values: np.ndarray, names: list[str], *, context=None, discrete=None, bounds=None
) -> ColumnLayout:
    """Decide column roles, discreteness, lattices and declared bounds from a table.

    Args:
        values: ``(n, d)`` float64 rows.
        names: the ``d`` column names.
        context, discrete, bounds: as :class:`~normflows_sci.estimator.DensityEstimator` takes
            them (names or positions; ``"auto"`` where allowed).

    Raises:
        ValueError: unknown columns, no target column left, non-integer values in a discrete
            column, malformed bounds.
    """
    context_idx = _resolve_columns(context, names, "context")
    target_idx = [j for j in range(len(names)) if j not in context_idx]
    if not target_idx:
        raise ValueError("every column is a context column: nothing left to model")
    targets = values[:, target_idx]
    flags = _discrete_columns(discrete, targets, names, target_idx, context_idx)
    lower, upper = _declared_bounds(bounds, targets, names, target_idx, flags)
    step, origin = _lattices(targets, flags)
    return ColumnLayout(
        columns=tuple(names),
        context_columns=tuple(names[j] for j in context_idx),
        target_columns=tuple(names[j] for j in target_idx),
        discrete=tuple(flags),
        step=tuple(step),
        origin=tuple(origin),
        lower=tuple(lower),
        upper=tuple(upper),
    )


def point_masses(layout: ColumnLayout, values: np.ndarray) -> dict[str, tuple[float, float]]:
    """``{column: (value, share of rows)}`` of the continuous target columns whose most frequent
    value holds at least :data:`ATOM_SHARE` of the rows ``values`` ``(n, columns)``.

    Such a value is an atom (a point mass: exact zeros of a zero-inflated amount, a censoring
    limit), which a density with respect to length cannot hold: the likelihood there grows
    without bound as the model narrows onto it, so neither training nor a comparison of scores
    measures the fit. Integer lattices (``discrete``) are exempt: they are scored as
    probabilities.

    Example:
        >>> x = np.random.default_rng(0).exponential(size=(100, 1))
        >>> x[:10] = 0.0  # 10 % exact zeros
        >>> layout = column_layout(x, ["amount"])
        >>> {c: (v, round(s, 2)) for c, (v, s) in point_masses(layout, x).items()}
        {'amount': (0.0, 0.1)}
    """
    found = {}
    targets = layout.targets(values)
    for name, column, discrete in zip(layout.target_columns, targets.T, layout.discrete):
        if discrete or not len(column):
            continue
        levels, counts = np.unique(column, return_counts=True)
        top = int(np.argmax(counts))
        share = float(counts[top]) / len(column)
        if counts[top] > 1 and share >= ATOM_SHARE:
            found[name] = (float(levels[top]), share)
    return found


def _check_spread(layout: ColumnLayout, targets: np.ndarray, context: np.ndarray) -> Tensor:
    """Refuse constant target columns; returns the context scales (1 for a constant one).

    A constant continuous column is a point mass, which has no density. A constant integer
    column declared discrete is fine: its dequantised variable spreads over its cell and its
    one level gets probability close to 1.
    """
    names = layout.target_columns
    flat = [
        name
        for name, column, discrete in zip(names, targets.T, layout.discrete)
        if not discrete and np.ptp(column) == 0
    ]
    if flat:
        values = ", ".join(f"{c} = {targets[0, names.index(c)]:.6g}" for c in flat)
        if len(flat) == len(names):
            raise ValueError(
                f"all {len(targets)} training rows are the same ({values}): a point mass, "
                "which has no density"
            )
        raise ValueError(
            f"columns {flat} are constant in the {len(targets)} training rows ({values}): a "
            "constant column is a point mass, which has no density; drop it, or declare it "
            "discrete if it is integer-valued"
        )
    if not context.shape[1]:
        return torch.ones(0, dtype=torch.float64)
    std = robust_moments(torch.as_tensor(context, dtype=torch.float64))[1]
    constant = [c for c, s in zip(layout.context_columns, std.tolist()) if s == 0]
    if constant:
        warnings.warn(
            f"context columns {constant} are constant in the {len(context)} training rows: "
            "the model cannot learn how the targets depend on them",
            stacklevel=4,  # the caller of fit: _check_spread < plan_table < fit < caller
        )
    return torch.where(std > 0, std, torch.ones_like(std))


def plan_table(
    layout: ColumnLayout,
    train: np.ndarray,
    validation: np.ndarray | None,
    *,
    network: NetworkSize,
    heavy_tails: str | bool,
    frame: bool,
) -> tuple[TableSpec, TableStatistics]:
    """The full spec and the standardisation of a table, from its training rows.

    Checks the training and validation rows against the declared bounds, refuses constant
    continuous target columns (warns about constant context columns), then computes the
    standardisation of the unbounded representation and the tail indices, all in float64.

    Args:
        layout: from :func:`column_layout`.
        train: ``(n, columns)`` training rows.
        validation: ``(m, columns)`` validation rows, or None.
        network: the flow family and size.
        heavy_tails: ``"auto"``, True or False (see the estimator).
        frame: whether the training table was a DataFrame.

    Raises:
        ValueError: values outside the bounds, constant continuous columns, or bounds that leave
            a column without a finite spread.
    """
    targets = layout.targets(train)
    # A bound that validation rows touch is widened too (their held-out loss stays finite).
    seen = targets if validation is None else np.vstack([targets, layout.targets(validation)])
    lower, upper = layout.effective_bounds(seen)
    context = layout.context(train)
    context_std = _check_spread(layout, targets, context)
    bounded = any(v is not None for v in lower + upper)
    boundary = float64_bounds(lower, upper) if bounded else None
    mean, std, standardized = _standardization(targets, layout.step, boundary)
    spec = TableSpec(
        **asdict(layout),
        lower_effective=tuple(lower),
        upper_effective=tuple(upper),
        tail_df=tuple(_tail_df(standardized, heavy_tails)),
        **asdict(network),
        frame=frame,
    )
    context_mean = robust_moments(torch.as_tensor(context))[0] if context.shape[1] else None
    return spec, TableStatistics(mean, std, context_mean, context_std)


# ---------------------------------------------------------------------------- the model


def _compute_dtype_buffer(module: nn.Module) -> None:
    """A non-persistent empty buffer that records the dtype the flow network computes in: it
    follows ``.to(...)``/``.double()`` with the network and is not part of saved weights."""
    module.register_buffer("compute", torch.zeros(0), persistent=False)


class ContextStandardizer(nn.Module):
    """Fixed ``(c - mean) / std`` for context columns (conditioning needs no Jacobian), computed
    in float64 and handed to the network in its own dtype."""

    def __init__(self, features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(features, dtype=torch.float64))
        self.register_buffer("std", torch.ones(features, dtype=torch.float64))
        _compute_dtype_buffer(self)

    def standardize(self, context: Tensor) -> Tensor:
        return (context.to(self.mean.dtype) - self.mean) / self.std

    def forward(self, context: Tensor) -> Tensor:
        return self.standardize(context).to(self.compute.dtype)


class Standardize(ElementwiseAffine):
    """The fixed standardisation of the target columns, in float64.

    Data come in float64 (or are promoted to it), so the shift and scale of data far from unit
    scale (``1e-12``, ``1e300``, a large offset) lose nothing; the standardised values go to the
    flow network in its dtype (float32), and the log-Jacobian stays float64. The inverse returns
    float64. Same weights (``shift``, ``log_scale``) as :class:`ElementwiseAffine`.
    """

    def __init__(self, features: int):
        super().__init__(features, learnable=False)
        self.shift = self.shift.double()
        self.log_scale = self.log_scale.double()
        _compute_dtype_buffer(self)

    def standardize(self, inputs: Tensor) -> Tensor:
        """The standardised values in float64 (before the cast to the network's dtype)."""
        return super().forward(inputs.to(self.shift.dtype))[0]

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        outputs, logabsdet = super().forward(inputs.to(self.shift.dtype), context)
        return outputs.to(self.compute.dtype), logabsdet

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return super().inverse(inputs.to(self.shift.dtype), context)


class TableFlow(Flow):
    """The table model: float64 preprocessing in front of a flow network in float32.

    Its inputs (and context) may be float64, which the preprocessing standardises before the cast
    to the network's dtype, as well as the network's own dtype.
    """

    extra_input_dtypes = (torch.float64,)


def _network_options(spec: TableSpec, base) -> dict:
    """The keyword arguments of the flow family's factory for a spec."""
    hidden = tuple(spec.hidden_features)
    if spec.flow == "tarflow":
        # transforms -> blocks; hidden widths -> Transformer width (largest), layers per block
        return dict(
            blocks=spec.transforms,
            width=max(hidden),
            layers_per_block=len(hidden),
            transform="spline",
            bins=spec.bins,
            base=base,
        )
    if spec.flow == "cnf":
        return dict(hidden_features=hidden, base=base)
    options = dict(transforms=spec.transforms, hidden_features=hidden, base=base)
    if spec.flow == "nsf":
        options["bins"] = spec.bins
    return options


def build_table_flow(spec: TableSpec, statistics: TableStatistics | None = None) -> TableFlow:
    """The full model (float64 bounds and standardisation + flow network) of a spec.

    Its weights are freshly initialised from the global torch random state; with ``statistics``
    the standardisation is set from them (a model to be trained), without it they stay at the
    identity (a model whose weights are loaded next).
    """
    features, context_features = len(spec.target_columns), len(spec.context_columns)
    # Preprocessing in float64 (exact Jacobians for data at any scale); the flow in float32.
    steps = [float64_bounds(spec.lower_effective, spec.upper_effective)] if spec.has_bounds else []
    steps.append(Standardize(features))
    heavy = list(spec.tail_df)
    has_tails = any(df is not None for df in heavy)
    base = TailAdaptiveBase(heavy) if has_tails else StandardNormal(features)
    core = FLOWS[spec.flow](features, context_features, **_network_options(spec, base))
    embedding = ContextStandardizer(context_features) if context_features else None
    model = TableFlow(CompositeTransform([*steps, core.transform]), core.base, embedding=embedding)
    if statistics is not None:
        with torch.no_grad():
            steps[-1].shift.copy_(-statistics.mean / statistics.std)
            steps[-1].log_scale.copy_(-statistics.std.log())
            if embedding is not None:
                embedding.mean.copy_(statistics.context_mean)
                embedding.std.copy_(statistics.context_std)
    return model


def check_flow_range(model: TableFlow, spec: ColumnLayout, values: np.ndarray, what: str) -> None:
    """Raise ``ValueError`` if a standardised target or context value of ``values`` (all
    columns, float64) lies beyond float32's range, in which the flow network computes; names the
    column, the row and ``what`` (e.g. ``"X_val"``)."""
    targets = spec.targets(values)
    *bounds, standardize = list(model.transform)[:-1]
    device = standardize.shift.device
    with torch.no_grad():
        points = torch.as_tensor(targets + 0.5 * np.asarray(spec.step), device=device)
        for step in bounds:
            points = step(points)[0]
        checks = [(standardize.standardize(points), spec.target_columns, targets)]
        if spec.context_columns:
            context = spec.context(values)
            scaled = model.embedding.standardize(torch.as_tensor(context, device=device))
            checks.append((scaled, spec.context_columns, context))
    for scaled, names, raw in checks:
        beyond = ~(scaled.abs() <= _FLOAT32_MAX)
        if bool(beyond.any()):
            row, col = (int(i) for i in torch.nonzero(beyond)[0])
            raise ValueError(
                f"column {names[col]!r} of {what} has the value {raw[row, col]:.6g} (row {row}), "
                f"{float(scaled[row, col]):.3g} in the model's standardised units: beyond "
                f"float32's range (about 3.4e38), in which the flow computes"
            )
