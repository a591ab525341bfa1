"""Categorical columns of a table for :class:`~normflows_sci.estimator.DensityEstimator`.

A mixed table (labels such as a species or an island next to numbers) has the exact joint
density

    p(row) = P(categories | categorical context) * p(numbers | categories, context),

a probability for the label columns times a density (or lattice probability) for the numeric
ones. The first factor is a smoothed contingency table: the training counts ``n`` of every
combination of levels plus ``alpha``, normalised over the modelled (non-context) categorical
columns,

    P(c | g) = (n[c, g] + alpha) / (n[g] + alpha * L),

with ``L`` the number of level combinations of the modelled columns and ``g`` the combination of
the categorical context columns (none: a single group). ``alpha`` maximises the closed-form
leave-one-out likelihood of the training rows over :data:`ALPHA_GRID`, so combinations that are
structurally empty (a species never seen on an island) get little mass and unseen but plausible
ones are not ruled out. The table is used up to :data:`MAX_LEVEL_COMBINATIONS` combinations.
Above, the factor is autoregressive, a product of softmax conditionals over the columns (context
columns first, then the modelled ones in table order),

    P(c_1, ..., c_K | g) = prod_k softmax(W_k [1, dummies(g, c_1, ..., c_{k-1})])[c_k],

each a multinomial logistic regression on the dummy coding of the columns before it, fitted by
L-BFGS to the posterior mode under a standard normal prior on the weights (``alpha`` then holds
that prior's precision, 1). It is exactly normalised whatever the weights; it captures the
dependence of a column on each earlier column (not higher-order interactions). At most
:data:`MAX_SOFTMAX_WEIGHTS` weights are accepted (a column of thousands of labels before others
is refused). The second factor is the table flow of the numeric columns, conditioned on the
categories through their dummy coding (one column per level but the first, ``"column=level"``).

Levels are data (JSON strings, integers, finite floats or booleans), stored with their counts
(or the softmax weights) in a model file's config and validated by :func:`categorical_from_config` before anything is built.

``categorical="auto"`` also takes the numeric columns that are recorded as a few levels rather
than measured on a continuum (:func:`level_columns`): not integer-valued (integers keep their
lattice), at most :data:`MAX_AUTO_LEVELS` distinct values and at least
:data:`MIN_ROWS_PER_LEVEL` rows per value on average, such as a log co-insurance rate taking
five values. A density has an unbounded likelihood on such values (a spike on each level
scores without limit); as levels their probabilities are exact and ``sample`` returns exactly
those values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import Tensor

from normflows_sci._tabular import as_table

__all__ = [
    "ALPHA_GRID",
    "KINDS",
    "MAX_AUTO_LEVELS",
    "MAX_LEVEL_COMBINATIONS",
    "MIN_ROWS_PER_LEVEL",
    "MAX_SOFTMAX_WEIGHTS",
    "CategoricalSpec",
    "auto_levels",
    "categorical_from_config",
    "choose_alpha",
    "column_names",
    "declared_categorical",
    "first_unseen",
    "level_columns",
    "read_columns",
    "split_mixed",
]

# ``categorical="auto"`` takes a numeric, not integer-valued column with at most this many
# distinct values and at least MIN_ROWS_PER_LEVEL rows per value on average as levels.
MAX_AUTO_LEVELS = 16
MIN_ROWS_PER_LEVEL = 5
# Most level combinations of all categorical columns a contingency table holds (one count each);
# above, the categories get the autoregressive softmax factor.
MAX_LEVEL_COMBINATIONS = 2**16
# Most weights of the autoregressive factor (JSON numbers in a model file's config).
MAX_SOFTMAX_WEIGHTS = 200_000
# Precision of the standard normal prior on the softmax weights (the factor's ``alpha``).
SOFTMAX_PRIOR_PRECISION = 1.0
# The additive smoothing values the leave-one-out likelihood chooses from.
ALPHA_GRID = np.logspace(-4.0, 2.0, 61)
# How a column's levels come back: pandas categorical, text, or numbers/booleans.
KINDS = ("category", "string", "integer", "float", "boolean")
# The pandas dtypes a DataFrame's categorical column is given back in (samples).
_DTYPE = re.compile(r"(object|str|string|category|bool|u?int(8|16|32|64)|float(32|64))?")


def _is_frame(X) -> bool:
    return hasattr(X, "columns") and hasattr(X, "to_numpy")


def _non_numeric(column) -> bool:
    """Whether a pandas column holds labels (object, string or categorical dtype)."""
    import pandas as pd

    dtype = column.dtype
    return (
        isinstance(dtype, pd.CategoricalDtype)
        or pd.api.types.is_object_dtype(dtype)
        or pd.api.types.is_string_dtype(dtype)
    )


def declared_categorical(X, names: list[str], categorical, context=(), numeric=()) -> list[str]:
    """The categorical columns of a training table, in table order.

    Args:
        X: the table (DataFrame or array).
        names: its column names.
        categorical: ``"auto"`` (the DataFrame columns of object, string or categorical dtype,
            and the numeric columns of :func:`level_columns`), None (none), or a list of column
            names or positions.
        context: the user's context columns (names). ``"auto"`` takes no context column as
            levels, and none at all when a numeric context column stays (modelled levels cannot
            depend on it) or when no numeric column would be left.
        numeric: columns the user gave numeric roles (bounds, ``discrete``): never levels.

    Raises:
        ValueError: an unknown column or position, or a malformed ``categorical``.
    """
    if categorical is None:
        return []
    if isinstance(categorical, str):
        if categorical != "auto":
            raise ValueError(
                f"categorical must be 'auto', None or a list of columns, got {categorical!r}"
            )
        labels = []
        if _is_frame(X):
            labels = [name for name, (_, col) in zip(names, X.items()) if _non_numeric(col)]
        levels = auto_levels(X, names, labels, context, numeric)
        return [name for name in names if name in set(labels) | set(levels)]
    chosen = set(column_names(categorical, names, "categorical"))
    return [name for name in names if name in chosen]


def auto_levels(X, names: list[str], labels=(), context=(), numeric=()) -> list[str]:
    """The numeric columns ``categorical="auto"`` takes as levels (:func:`level_columns`), given
    the table's label columns: none when a numeric ``context`` column stays (modelled levels
    cannot depend on it) or when no numeric column would be left; never a context column or one
    with a ``numeric`` role (bounds, ``discrete``)."""
    if any(c in set(context) for c in names if c not in labels):
        return []
    roles = set(context) | set(numeric)
    candidates = [c for c in names if c not in labels and c not in roles]
    levels = level_columns(X, names, candidates)
    return [] if len(levels) == len(names) - len(labels) else levels


def level_columns(X, names: list[str], candidates: Sequence[str]) -> list[str]:
    """The columns among ``candidates`` (numeric columns of ``X``) recorded as a few levels.

    A column qualifies when its values are not all integers (an integer column keeps its
    lattice, see ``discrete``), it has at most :data:`MAX_AUTO_LEVELS` distinct values and at
    least :data:`MIN_ROWS_PER_LEVEL` rows per distinct value on average.

    Example:
        >>> rates = np.array([0.0, 3.26, 3.93, 4.56] * 10)
        >>> table = np.stack([rates, np.arange(40.0) / 7], axis=1)
        >>> level_columns(table, ["lncoins", "x"], ["lncoins", "x"])
        ['lncoins']
    """
    found = []
    for name in candidates:
        values = np.asarray(_column(X, names, name))
        if values.dtype.kind not in "uif" or not len(values):
            continue
        values = values.astype(np.float64)
        if not np.isfinite(values).all() or np.all(values == np.round(values)):
            continue
        if len(np.unique(values[:4096])) > MAX_AUTO_LEVELS:
            continue  # most columns: decided on a prefix, without sorting the whole column
        distinct = len(np.unique(values))
        if distinct <= MAX_AUTO_LEVELS and len(values) >= MIN_ROWS_PER_LEVEL * distinct:
            found.append(name)
    return found


def column_names(keys, names: list[str], what: str) -> list[str]:
    """Names of the columns given by name or position in ``keys`` (a list, or None for none).

    Raises:
        ValueError: an unknown name or an out-of-range position, naming ``what``.
    """
    out = []
    for item in keys or []:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not 0 <= item < len(names):
                raise ValueError(
                    f"{what} column index {item} is out of range for {len(names)} columns"
                )
            out.append(names[int(item)])
        elif str(item) in names:
            out.append(str(item))
        else:
            raise ValueError(f"{what} column {item!r} not found; columns are {names}")
    return out


def _python_level(value, column: str):
    """A level as a JSON scalar (str, int, finite float, bool); TypeError otherwise."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (str, bool, int)) or (isinstance(value, float) and math.isfinite(value)):
        return value
    raise TypeError(
        f"categorical column {column!r} has the level {value!r} of type {type(value).__name__}: "
        "levels must be strings, integers, finite floats or booleans"
    )


def _dtype_name(column, name: str) -> str:
    """The pandas dtype name of a DataFrame column ("" for an array column); ``TypeError`` for
    a dtype samples could not be given back in."""
    if not hasattr(column, "dtype") or not hasattr(column, "isna"):
        return ""
    dtype = str(column.dtype)
    if not _DTYPE.fullmatch(dtype):
        raise TypeError(
            f"categorical column {name!r} has the dtype {dtype}: label columns must be text "
            "(object, str, string), pandas categoricals, booleans or plain numbers"
        )
    return dtype


def _levels_of(column, name: str) -> tuple[tuple, str, bool]:
    """``(levels, kind, ordered)`` of a training column (pandas Series or numpy array)."""
    _check_missing(column, name)
    dtype = getattr(column, "dtype", None)
    if type(dtype).__name__ == "CategoricalDtype":
        levels = tuple(_python_level(v, name) for v in dtype.categories)
        return levels, "category", bool(dtype.ordered)
    values = np.asarray(column)
    if values.dtype.kind == "b":
        kind = "boolean"
    elif values.dtype.kind in "iu":
        kind = "integer"
    elif values.dtype.kind == "f":
        kind = "float"
    else:
        import pandas as pd

        inferred = pd.api.types.infer_dtype(values, skipna=False)
        if inferred != "string":
            raise TypeError(
                f"categorical column {name!r} holds {inferred!r} values: a label column must "
                "hold strings only (or be numeric, or a pandas categorical)"
            )
        kind = "string"
    unique = np.unique(values) if kind != "string" else sorted(set(values.tolist()))
    return tuple(_python_level(v, name) for v in unique), kind, False


@dataclass(frozen=True)
class CategoricalSpec:
    """The categorical part of a fitted table model (stored in model files as JSON).

    Attributes:
        columns: every column of the user's table, in order.
        categorical: the categorical columns, in table order.
        levels: per categorical column, its levels (the first is the dummy coding's reference).
        kinds: per categorical column, one of :data:`KINDS` (how samples come back).
        ordered: per categorical column, whether a pandas categorical was ordered.
        context: per categorical column, whether it is conditioned on (not modelled).
        counts: for the ``"table"`` factor, the training counts of every level combination,
            flattened in C order over ``levels`` (``prod(len(levels))`` entries); else empty.
        alpha: the additive smoothing of the counts, or the prior precision of the softmax
            weights (see the module docstring).
        frame: whether the training table was a DataFrame.
        dtypes: per categorical column, the pandas dtype of the training column (samples come
            back in it; empty for an array).
        factor: ``"table"`` or ``"autoregressive"`` (see the module docstring).
        weights: for the ``"autoregressive"`` factor, the softmax weights of each modelled
            column in chain order, each ``(levels, 1 + dummies before it)`` flattened in C order;
            else empty.
    """

    columns: tuple[str, ...]
    categorical: tuple[str, ...]
    levels: tuple[tuple, ...]
    kinds: tuple[str, ...]
    ordered: tuple[bool, ...]
    context: tuple[bool, ...]
    counts: tuple[int, ...]
    alpha: float
    frame: bool
    dtypes: tuple[str, ...] = ()
    factor: str = "table"
    weights: tuple[float, ...] = ()

    # ------------------------------------------------------------------------- structure
    @classmethod
    def from_table(cls, X, names: list[str], categorical: list[str], context) -> CategoricalSpec:
        """Levels and kinds of the categorical columns of a training table (no counts yet).

        ``context`` holds the user's context columns (names); a categorical column among them is
        conditioned on. Numeric context columns cannot go with modelled categorical columns: the
        table would have to depend on continuous values.

        Raises:
            ValueError: numeric context with modelled categorical columns, no numeric column
                left, too many level combinations, a missing value in a categorical column.
            TypeError: levels that are not strings, integers, finite floats or booleans.
        """
        context = set(context)
        numeric = [c for c in names if c not in categorical]
        if not numeric:
            raise ValueError(
                "every column is categorical: the model needs at least one numeric column"
            )
        modelled = [c for c in categorical if c not in context]
        numeric_context = [c for c in numeric if c in context]
        if modelled and numeric_context:
            raise ValueError(
                f"the categorical columns {modelled} would need a model of their probability "
                f"given the numeric context columns {numeric_context}, which a table cannot "
                "hold: put those categorical columns in context too, or leave the numeric ones "
                "out of context"
            )
        found = [_levels_of(_column(X, names, c), c) for c in categorical]
        spec = cls(
            columns=tuple(names),
            categorical=tuple(categorical),
            levels=tuple(f[0] for f in found),
            kinds=tuple(f[1] for f in found),
            ordered=tuple(f[2] for f in found),
            context=tuple(c in context for c in categorical),
            counts=(),
            alpha=1.0,
            frame=_is_frame(X),
            dtypes=tuple(_dtype_name(_column(X, names, c), c) for c in categorical),
        )
        spec = replace(spec, factor=spec.check_size("X"))
        dummies = spec.dummy_columns()
        clash = sorted(set(dummies) & set(names)) or sorted(
            {d for d in dummies if dummies.count(d) > 1}
        )
        if clash:
            raise ValueError(
                f"the dummy columns of the categorical levels, named 'column=level', would clash "
                f"with other columns ({clash}): rename the columns or levels"
            )
        return spec

    def check_size(self, where: str) -> str:
        """The factor the levels call for: ``"table"`` up to :data:`MAX_LEVEL_COMBINATIONS`
        combinations (counted without multiplying beyond the limit), else ``"autoregressive"``;
        ``ValueError`` when that needs more than :data:`MAX_SOFTMAX_WEIGHTS` weights."""
        total = 1
        for levels in self.levels:
            total *= len(levels)
            if total > MAX_LEVEL_COMBINATIONS:
                break
        else:
            return "table"
        count = sum(rows * cols for _, _, rows, cols, _ in self._softmax_layout())
        if count > MAX_SOFTMAX_WEIGHTS:
            sizes = {c: len(v) for c, v in zip(self.categorical, self.levels)}
            raise ValueError(
                f"{where}: the categorical columns {sizes} have more than "
                f"{MAX_LEVEL_COMBINATIONS} level combinations, and their autoregressive factor "
                f"would need {count} weights, more than {MAX_SOFTMAX_WEIGHTS}: use fewer or "
                "coarser categorical columns (or put the one with most levels last)"
            )
        return "autoregressive"

    def _chain(self) -> list[int]:
        """The categorical columns in the autoregressive order: context first, then modelled."""
        order = range(len(self.categorical))
        return [j for j in order if self.context[j]] + [j for j in order if not self.context[j]]

    def _softmax_layout(self) -> list[tuple[int, list[int], int, int, int]]:
        """``(column, columns before it, levels, 1 + dummies before it, offset in weights)`` of
        each modelled column's softmax block, in chain order."""
        layout, before, offset = [], [], 0
        for j in self._chain():
            if not self.context[j]:
                rows = len(self.levels[j])
                cols = 1 + sum(len(self.levels[i]) - 1 for i in before)
                layout.append((j, list(before), rows, cols, offset))
                offset += rows * cols
            before.append(j)
        return layout

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(levels) for levels in self.levels)

    @property
    def numeric_columns(self) -> list[str]:
        return [c for c in self.columns if c not in self.categorical]

    def dummy_columns(self) -> list[str]:
        """Names of the dummy (one-hot, first level dropped) columns, ``"column=level"``."""
        return [
            f"{column}={level}"
            for column, levels in zip(self.categorical, self.levels)
            for level in levels[1:]
        ]

    def inner_columns(self) -> list[str]:
        """The columns of the numeric table the flow sees: numeric columns, then the dummies."""
        return self.numeric_columns + self.dummy_columns()

    def inner_context(self, context: Sequence[str]) -> list[str]:
        """The flow's context columns: the numeric context columns, then every dummy."""
        return [c for c in self.numeric_columns if c in set(context)] + self.dummy_columns()

    def context_columns(self, inner_context: Sequence[str]) -> list[str]:
        """The user's context columns, in table order, given the flow's context columns."""
        given = set(inner_context) | {c for c, ctx in zip(self.categorical, self.context) if ctx}
        return [c for c in self.columns if c in given]

    def target_columns(self, inner_context: Sequence[str]) -> list[str]:
        """The modelled columns (categorical and numeric), in table order."""
        given = set(self.context_columns(inner_context))
        return [c for c in self.columns if c not in given]

    # ------------------------------------------------------------------------- codes
    def codes(self, X, names: list[str]) -> np.ndarray:
        """``(n, k)`` int64 level codes of the categorical columns of ``X`` (-1: unseen level).

        Raises:
            ValueError: missing values in a categorical column.
            TypeError: label levels given in a numeric array.
        """
        out = []
        for j, column in enumerate(self.categorical):
            values = _column(X, names, column)
            out.append(_encode(values, self.levels[j], self.kinds[j], column))
        return np.stack(out, axis=1).astype(np.int64)

    def context_codes(self, X, names: list[str]) -> np.ndarray:
        """``(m, k)`` codes of the categorical context columns of ``X`` (the context rows of a
        conditional sample; -1 in the modelled columns).

        Raises:
            ValueError: a level not seen in training (the model has no conditional density
                given it), naming the row and column.
        """
        out = np.full((len(X), len(self.categorical)), -1, dtype=np.int64)
        for j, column in enumerate(self.categorical):
            if not self.context[j]:
                continue
            values = _column(X, names, column)
            out[:, j] = _encode(values, self.levels[j], self.kinds[j], column)
            unseen = np.flatnonzero(out[:, j] < 0)
            if unseen.size:
                level = np.asarray(values, dtype=object)[unseen[0]]
                raise ValueError(
                    f"row {unseen[0]} of context: column {column!r} holds the level {level!r}, "
                    "not seen in training (the model has no conditional density given it)"
                )
        return out

    def dummies(self, codes: np.ndarray) -> np.ndarray:
        """``(n, sum(levels - 1))`` float64 dummy coding of ``codes`` (unseen levels: zeros)."""
        blocks = []
        for j, levels in enumerate(self.levels):
            blocks.append(codes[:, j, None] == np.arange(1, len(levels))[None, :])
        if not blocks:
            return np.zeros((len(codes), 0))
        return np.concatenate(blocks, axis=1).astype(np.float64)

    def codes_from_dummies(self, dummies: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`dummies` for seen levels: ``(n, k)`` int64 codes."""
        out, start = [], 0
        for levels in self.levels:
            width = len(levels) - 1
            block = dummies[:, start : start + width] > 0.5
            start += width
            if not width:
                out.append(np.zeros(len(dummies), dtype=np.int64))
                continue
            out.append(np.where(block.any(axis=1), block.argmax(axis=1) + 1, 0))
        return np.stack(out, axis=1).astype(np.int64)

    def fitted(self, codes: np.ndarray) -> CategoricalSpec:
        """This spec with its factor fitted to the training ``codes`` ``(n, k)``: the counts and
        the smoothing chosen on them, or the softmax weights."""
        if self.factor == "autoregressive":
            weights = _fit_softmax(self, torch.as_tensor(codes, dtype=torch.long))
            return replace(self, weights=weights, alpha=SOFTMAX_PRIOR_PRECISION)
        flat = np.ravel_multi_index(tuple(codes.T), self.shape)
        counts = np.bincount(flat, minlength=math.prod(self.shape))
        alpha = choose_alpha(counts.reshape(self.shape), self._target_axes())
        return replace(self, counts=tuple(int(c) for c in counts), alpha=alpha)

    def _target_axes(self) -> tuple[int, ...]:
        return tuple(j for j, ctx in enumerate(self.context) if not ctx)

    def log_table(self) -> np.ndarray:
        """``log P(modelled levels | context levels)`` for every combination, shaped like the
        levels (normalised over the modelled axes)."""
        table = np.asarray(self.counts, dtype=np.float64).reshape(self.shape) + self.alpha
        axes = self._target_axes()
        return np.log(table) - np.log(table.sum(axis=axes, keepdims=True))

    def log_prob(self, codes: np.ndarray) -> np.ndarray:
        """``(n,)`` log-probabilities of the modelled levels given the context levels; ``-inf``
        where a modelled column holds an unseen level (code -1)."""
        axes = self._target_axes()
        if not axes:
            return np.zeros(len(codes))
        safe = np.where(codes < 0, 0, codes)
        if self.factor == "autoregressive":
            with torch.no_grad():
                log_p = _softmax_log_prob(self, torch.as_tensor(safe)).numpy()
        else:
            log_p = self.log_table()[tuple(safe.T)]
        return np.where((codes[:, list(axes)] < 0).any(axis=1), -np.inf, log_p)

    def sample(self, context_codes: np.ndarray, generator: torch.Generator) -> np.ndarray:
        """``(m, k)`` codes: the given context levels of each of the ``m`` rows of
        ``context_codes`` (``(m, k)``, -1 in the modelled columns) and modelled levels drawn
        from the factor given them (from the table, rows sharing context levels together; from
        the softmax conditionals, column by column in chain order)."""
        axes = list(self._target_axes())
        out = context_codes.copy()
        if not axes:
            return out
        if self.factor == "autoregressive":
            return _softmax_sample(self, out, generator)
        probs = np.exp(self.log_table())
        given = [j for j in range(len(self.levels)) if j not in axes]
        if given:
            groups, which = np.unique(context_codes[:, given], axis=0, return_inverse=True)
            which = which.reshape(-1)
        else:
            groups, which = np.zeros((1, 0), dtype=np.int64), np.zeros(len(out), dtype=np.int64)
        for g, group in enumerate(groups):  # one draw per distinct context, not per row
            rows = np.flatnonzero(which == g)
            index = [slice(None)] * len(self.levels)
            for j, level in zip(given, group):
                index[j] = int(level)
            table = torch.as_tensor(probs[tuple(index)].reshape(-1), device=generator.device)
            flat = torch.multinomial(table, len(rows), replacement=True, generator=generator)
            picked = np.unravel_index(flat.cpu().numpy(), [self.shape[j] for j in axes])
            for j, levels in zip(axes, picked):
                out[rows, j] = levels
        return out

    def decode(self, codes: np.ndarray, column: str):
        """The values of ``column`` for ``(n, k)`` codes, typed as in training: a pandas
        Categorical (same categories and order), an object array of strings, or numbers."""
        j = self.categorical.index(column)
        levels = self.levels[j]
        kind = self.kinds[j]
        if kind == "category":
            import pandas as pd

            return pd.Categorical.from_codes(
                codes[:, j], categories=list(levels), ordered=self.ordered[j]
            )
        dtype = {"string": object, "integer": np.int64, "float": np.float64, "boolean": bool}
        return np.asarray(levels, dtype=dtype[kind])[codes[:, j]]

    # ------------------------------------------------------------------------- files
    def to_dict(self) -> dict:
        """The JSON form (lists for the per-column fields)."""
        out = asdict(self)
        out["levels"] = [list(levels) for levels in self.levels]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def info(self) -> dict:
        """``{column: number of levels}`` of the categorical columns."""
        return {c: len(levels) for c, levels in zip(self.categorical, self.levels)}

    def numeric_levels(self) -> dict[str, list]:
        """``{column: levels}`` of the categorical columns holding numbers (declared, or taken
        by :func:`level_columns`), in table order."""
        return {
            c: list(levels)
            for c, levels, kind in zip(self.categorical, self.levels, self.kinds)
            if kind in ("integer", "float")
        }


def read_columns(X, what: str, columns: Sequence[str] | None = None) -> tuple:
    """``(table, names, was_dataframe)``: a DataFrame as it is (its labels intact), anything
    else as the float64 array of :func:`~normflows_sci._tabular.as_table`; ``columns`` names
    an array's columns."""
    if _is_frame(X):
        return X, [str(c) for c in X.columns], True
    values, names, _ = as_table(X, what)
    if columns is not None:
        if len(columns) != values.shape[1]:
            raise ValueError(f"columns must name {values.shape[1]} columns, got {len(columns)}")
        names = [str(c) for c in columns]
    return values, names, False


def split_mixed(X, what: str, spec: CategoricalSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(numeric (n, d) float64, codes (n, k) int64)`` of a table with the columns of ``spec``
    (a DataFrame by name, an array by count); codes are -1 for unseen levels.

    Raises:
        ValueError: other columns, no rows, missing or infinite values.
        TypeError: non-numeric values in a numeric column.
    """
    columns = list(spec.columns)
    table, names, is_frame = read_columns(X, what)
    if not is_frame:
        names = columns if table.shape[1] == len(columns) else names
    if names != columns:
        raise ValueError(f"{what} must have the columns {columns}, got {names}")
    if not len(table):
        raise ValueError(f"{what} has no rows")
    positions = [columns.index(c) for c in spec.numeric_columns]
    if is_frame:
        numeric = as_table(table.iloc[:, positions], what)[0]
    else:
        numeric = table[:, positions]
    return numeric, spec.codes(table, names)


def _softmax_logits(weights: Tensor, codes: Tensor, before: list[int], levels) -> Tensor:
    """``(n, levels)`` logits ``W [1, dummies of the columns before]`` of one softmax block
    ``weights`` ``(levels, 1 + dummies)``, by gathering the weight columns of the rows' levels
    (no one-hot matrix)."""
    logits = weights[:, 0].expand(len(codes), -1)
    start = 1
    for i in before:
        code = codes[:, i]
        picked = weights[:, start + (code - 1).clamp(min=0)].T  # (n, levels)
        logits = logits + torch.where((code > 0)[:, None], picked, torch.zeros_like(picked))
        start += len(levels[i]) - 1
    return logits


def _softmax_blocks(spec: CategoricalSpec, weights: Tensor):
    """``(column, columns before, weights (levels, 1 + dummies))`` in chain order."""
    for j, before, rows, cols, offset in spec._softmax_layout():
        yield j, before, weights[offset : offset + rows * cols].reshape(rows, cols)


def _softmax_log_prob(spec: CategoricalSpec, codes: Tensor) -> Tensor:
    """``(n,)`` float64 log-probabilities of the modelled levels under the softmax factor."""
    weights = torch.as_tensor(spec.weights, dtype=torch.float64)
    total = torch.zeros(len(codes), dtype=torch.float64)
    for j, before, block in _softmax_blocks(spec, weights):
        logits = _softmax_logits(block, codes, before, spec.levels)
        total = total + logits.log_softmax(dim=1).gather(1, codes[:, j, None])[:, 0]
    return total


def _softmax_sample(spec: CategoricalSpec, codes: np.ndarray, generator) -> np.ndarray:
    """Modelled levels drawn column by column in chain order, given the rows' context levels."""
    out = torch.as_tensor(codes, dtype=torch.long).clamp(min=0)
    weights = torch.as_tensor(spec.weights, dtype=torch.float64)
    for j, before, block in _softmax_blocks(spec, weights):
        probs = _softmax_logits(block, out, before, spec.levels).softmax(dim=1)
        probs = probs.to(generator.device)
        out[:, j] = torch.multinomial(probs, 1, generator=generator)[:, 0].cpu()
    return out.numpy()


def _fit_softmax(spec: CategoricalSpec, codes: Tensor) -> tuple[float, ...]:
    """Posterior-mode softmax weights (standard normal prior) of every modelled column given
    the columns before it, by full-batch L-BFGS in float64; deterministic."""
    blocks = [
        _fit_block(codes, j, before, (rows, cols), spec.levels)
        for j, before, rows, cols, _ in spec._softmax_layout()
    ]
    return tuple(torch.cat(blocks).tolist())


def _fit_block(codes: Tensor, j: int, before: list[int], shape: tuple, levels) -> Tensor:
    """The flattened weights ``shape`` of column ``j``'s softmax on the columns ``before``."""
    block = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [block], max_iter=200, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def loss():
        optimizer.zero_grad()
        logits = _softmax_logits(block, codes, before, levels)
        value = torch.nn.functional.cross_entropy(logits, codes[:, j], reduction="sum")
        value = value + 0.5 * SOFTMAX_PRIOR_PRECISION * block.square().sum()
        value.backward()
        return value

    optimizer.step(loss)
    return block.detach().reshape(-1)


def first_unseen(X, spec: CategoricalSpec, codes: np.ndarray) -> tuple[int, str] | None:
    """``(row, reason)`` of the first level of ``X`` not seen in training (codes -1), or None."""
    unseen = np.argwhere(codes < 0)
    if not len(unseen):
        return None
    row, col = (int(i) for i in unseen[0])
    column = spec.categorical[col]
    value = np.asarray(_column(X, list(spec.columns), column), dtype=object)[row]
    return row, f"column {column!r} holds the level {value!r}, not seen in training"


def _column(X, names: list[str], column: str):
    """A column of a DataFrame (by name) or array (by position in ``names``)."""
    if _is_frame(X):
        return X[column] if column in X.columns else X.iloc[:, names.index(column)]
    return np.asarray(X)[:, names.index(column)]


def _check_missing(values, column: str) -> None:
    """``ValueError`` counting the missing values (None, NaN) of a categorical column."""
    if hasattr(values, "isna"):
        missing = values.isna().to_numpy()
    else:
        array = np.asarray(values)
        missing = np.isnan(array) if array.dtype.kind == "f" else np.zeros(len(array), bool)
    if missing.any():
        raise ValueError(
            f"categorical column {column!r} has {int(missing.sum())} missing values (first at row "
            f"{int(np.flatnonzero(missing)[0])}): impute or drop them first"
        )


def _encode(values, levels: tuple, kind: str, column: str) -> np.ndarray:
    """Codes ``(n,)`` of a column's values in ``levels`` (-1 for an unseen value)."""
    _check_missing(values, column)
    if kind in ("category", "string"):
        import pandas as pd

        index = pd.Index(list(levels), dtype=object)
        return index.get_indexer(pd.Index(np.asarray(values, dtype=object), dtype=object))
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"categorical column {column!r} must hold numbers (its levels are {kind}s), got "
            f"values of dtype {array.dtype}"
        )
    reference = np.asarray(levels, dtype=np.float64)
    order = np.argsort(reference)
    array = array.astype(np.float64)
    position = np.clip(np.searchsorted(reference[order], array), 0, len(levels) - 1)
    found = reference[order][position] == array
    return np.where(found, order[position], -1)


def choose_alpha(counts: np.ndarray, axes: tuple[int, ...]) -> float:
    """The additive smoothing of :data:`ALPHA_GRID` with the highest leave-one-out
    log-likelihood of the rows behind ``counts`` (normalised over ``axes``).

    Leaving out one row of a cell with ``n`` rows in a group of ``N`` gives it the probability
    ``(n - 1 + alpha) / (N - 1 + alpha * L)``, so the whole criterion is a sum over cells.

    Example:
        >>> counts = np.array([50, 50, 0, 0])  # two levels never seen: little mass for them
        >>> choose_alpha(counts, (0,)) < 0.01
        True
    """
    if not axes:
        return 1.0
    size = math.prod(counts.shape[a] for a in axes)
    group = counts.sum(axis=axes, keepdims=True)
    n = counts[None]
    alpha = ALPHA_GRID.reshape(-1, *([1] * counts.ndim))
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = n * (np.log(n - 1 + alpha) - np.log(group[None] - 1 + alpha * size))
    loo = np.where(n > 0, terms, 0.0).reshape(len(ALPHA_GRID), -1).sum(axis=1)
    return float(ALPHA_GRID[int(np.argmax(loo))])


# ------------------------------------------------------------------------------- model files


def _fail(where: str, expected: str, value) -> ValueError:
    text = repr(value)
    text = text if len(text) <= 80 else text[:77] + "..."
    return ValueError(f"{where} must be {expected}, got {text}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_level(value) -> bool:
    return isinstance(value, (str, bool, int)) or (
        isinstance(value, float) and math.isfinite(value)
    )


def _check_lists(value: dict, where: str, size: int) -> None:
    """The per-categorical-column fields: one entry each, of the right kind."""
    checks = {
        "kinds": (lambda v: v in KINDS, f"one of {list(KINDS)}"),
        "ordered": (lambda v: isinstance(v, bool), "true or false"),
        "context": (lambda v: isinstance(v, bool), "true or false"),
        "levels": (
            lambda v: isinstance(v, list) and v and all(map(_is_level, v)),
            "a non-empty list of strings, integers, finite floats or booleans",
        ),
        "dtypes": (
            lambda v: isinstance(v, str) and _DTYPE.fullmatch(v) is not None,
            "a pandas dtype name of a label column, or empty",
        ),
    }
    for key, (check, expected) in checks.items():
        items = value[key]
        if not isinstance(items, list) or len(items) != size:
            raise _fail(f"{where}[{key!r}]", f"a list of {size} entries", items)
        for i, item in enumerate(items):
            if not check(item):
                raise _fail(f"{where}[{key!r}][{i}]", expected, item)
    fits = {
        "category": lambda v: True,
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
    }
    for column, levels, kind in zip(value["categorical"], value["levels"], value["kinds"]):
        if len({(type(v), v) for v in levels}) != len(levels):
            raise ValueError(f"{where}['levels'] of {column!r} has duplicate levels")
        if not all(map(fits[kind], levels)):
            raise _fail(f"{where}['levels'] of {column!r}", f"levels of kind {kind!r}", levels)


def categorical_from_config(value, where: str, inner_columns: list, inner_context: list):
    """The :class:`CategoricalSpec` of a stored config field, checked before anything is built.

    Every field's type and size, the factor the levels call for (a table for at most
    :data:`MAX_LEVEL_COMBINATIONS` combinations, checked before the counts are read; else at
    most :data:`MAX_SOFTMAX_WEIGHTS` finite softmax weights), non-negative integer counts, a
    positive finite ``alpha``, and that the stored flow spec's columns and context are exactly
    the numeric columns and dummies this part implies.

    Raises:
        ValueError: naming ``where`` and the field at fault.
    """
    keys = [f for f in CategoricalSpec.__dataclass_fields__ if not f.startswith("_")]
    if not isinstance(value, dict):
        raise _fail(where, "a JSON object", value)
    missing = [k for k in keys if k not in value]
    if missing:
        raise ValueError(f"{where} lacks the field(s) {missing}")
    for key in ("columns", "categorical"):
        names = value[key]
        if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
            raise _fail(f"{where}[{key!r}]", "a list of strings", names)
        if len(set(names)) != len(names):
            raise ValueError(f"{where}[{key!r}] has duplicate names")
    if not value["categorical"] or not set(value["categorical"]) <= set(value["columns"]):
        raise ValueError(f"{where}['categorical'] must be a non-empty subset of 'columns'")
    _check_lists(value, where, len(value["categorical"]))
    alpha = value["alpha"]
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise _fail(f"{where}['alpha']", "a positive number", alpha)
    if not (math.isfinite(alpha) and alpha > 0):
        raise _fail(f"{where}['alpha']", "a positive number", alpha)
    if not isinstance(value["frame"], bool):
        raise _fail(f"{where}['frame']", "true or false", value["frame"])
    spec = CategoricalSpec(
        columns=tuple(value["columns"]),
        categorical=tuple(value["categorical"]),
        levels=tuple(tuple(v) for v in value["levels"]),
        kinds=tuple(value["kinds"]),
        ordered=tuple(value["ordered"]),
        context=tuple(value["context"]),
        counts=(),
        alpha=float(alpha),
        frame=value["frame"],
        dtypes=tuple(value["dtypes"]),
    )
    factor = spec.check_size(where)
    if value["factor"] != factor:
        raise _fail(f"{where}['factor']", f"{factor!r} for these levels", value["factor"])
    spec = replace(spec, factor=factor)
    counts, weights = _stored_numbers(spec, value, where)
    _check_flow_columns(spec, where, list(inner_columns), list(inner_context))
    return replace(spec, counts=counts, weights=weights)


def _stored_numbers(spec: CategoricalSpec, value: dict, where: str) -> tuple[tuple, tuple]:
    """The ``counts`` and ``weights`` fields, checked against the factor and the levels."""
    table = spec.factor == "table"
    size = math.prod(spec.shape) if table else 0
    counts = value["counts"]
    if not isinstance(counts, list) or len(counts) != size:
        raise _fail(f"{where}['counts']", f"a list of {size} counts", counts)
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        raise _fail(f"{where}['counts']", "a list of non-negative integers", counts)
    size = 0 if table else sum(r * c for _, _, r, c, _ in spec._softmax_layout())
    weights = value["weights"]
    if not isinstance(weights, list) or len(weights) != size:
        raise _fail(f"{where}['weights']", f"a list of {size} weights", weights)
    finite = (_is_number(w) and math.isfinite(w) for w in weights)
    if not all(finite):
        raise _fail(f"{where}['weights']", "a list of finite numbers", weights)
    return tuple(counts), tuple(float(w) for w in weights)


def _check_flow_columns(spec: CategoricalSpec, where: str, columns: list, context: list) -> None:
    """The stored flow's columns and context must be the numeric columns and dummies ``spec``
    implies (``ValueError`` naming ``where``)."""
    if spec.inner_columns() != columns:
        raise ValueError(
            f"{where} implies the flow columns {spec.inner_columns()}, but the spec has {columns}"
        )
    numeric_context = {c for c in spec.numeric_columns if c in set(context)}
    if spec.inner_context(numeric_context) != context:
        raise ValueError(
            f"{where} implies the flow context {spec.inner_context(numeric_context)}, but the "
            f"spec has {context}"
        )
