"""DensityEstimator: "here is my table, give me its density", scikit-learn style.

Preprocessing is part of the model, as transforms with exact Jacobians computed in float64 (the
flow network itself runs in float32), so every score is a log-density in the ORIGINAL units of
the data, whatever their scale (1e-12 or 1e300, or far from the origin):

    data --(bounded columns: logit / softplus)--> R^d --(standardise)--> float32 flow --> base

Integer columns are dequantised (uniform noise in training; the probability of each integer is
integrated by quadrature when scoring), heavy-tailed columns get Student-t base marginals with
tail indices estimated from the data, and ``context`` columns make the model conditional,
``p(targets | context)``.

Categorical columns (text labels, pandas categoricals, numeric columns recorded as a few
non-integer levels, or numeric columns declared ``categorical``) enter the joint density exactly:
``P(categories)`` from a smoothed contingency table times the flow of the numeric columns
conditioned on the categories' dummy coding (``normflows_sci._categorical``). A continuous column
with a point mass (at least ``ATOM_SHARE`` of the rows on one value) is fitted with a warning
naming it: a density has no finite likelihood there. ``score(X, return_stderr=True)`` and ``compare(other, X)``
give held-out log-likelihoods with their standard errors.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, replace
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from normflows_sci._categorical import (
    CategoricalSpec,
    column_names,
    declared_categorical,
    first_unseen,
    read_columns,
    split_mixed,
)
from normflows_sci._modelfile import (
    build_with_weights,
    check_atoms,
    check_categorical,
    check_config,
    check_sizes,
    check_split_block,
    fit_fingerprint,
    member_tensors,
    stored_params,
)
from normflows_sci._selection import (
    CV_FOLDS,
    CV_MAX_ROWS,
    ENSEMBLE_MAX_ROWS,
    ENSEMBLE_MEMBERS,
    EXTEND_MIN_ROWS,
    MAX_ENSEMBLE,
    Budget,
    BudgetSpent,
    Candidate,
    FoldsTooSlow,
    GaussianMixtureBase,
    block_permutation,
    block_rows,
    candidates_for,
    check_selection,
    cv_folds,
    cv_mixture_components,
    cv_record,
    fit_mixture_base,
    fold_score,
    is_serial,
    select,
    serial_block,
    used_up,
)
from normflows_sci._tabular import FLOWS as TABLE_FLOWS
from normflows_sci._tabular import (
    HEAVY_TAIL_THRESHOLD,  # noqa: F401 - the heavy_tails="auto" rule, importable from here
    MIN_ROWS_FOR_TAILS,  # noqa: F401
    ContextStandardizer,
    NetworkSize,
    Standardize,
    TableFlow,
    TableSpec,
    as_table,
    build_table_flow,
    check_flow_range,
    column_layout,
    hill_tail_index,
    plan_table,
    point_masses,
)
from normflows_sci._version import __version__
from normflows_sci.checks import check_int
from normflows_sci.flows import Flow, FlowMixture
from normflows_sci.io import load_model, save_model
from normflows_sci.quadrature import combine_cell_estimates, unit_cell_rule, warn_imprecise_cells
from normflows_sci.training import fit_flow

__all__ = [
    "DensityEstimator",
    "FLOWS",
    "ScoreEstimate",
    "TableSpec",
    "held_out_split",
    "hill_tail_index",
    "validation_split",
]

#: The flow families ``DensityEstimator(flow=...)`` accepts, by name (the one registry; the CLI
#: reads its choices from it).
FLOWS = TABLE_FLOWS
# Names of earlier versions (pickled estimators refer to the model's classes by them).
_TableFlow, _Standardize, _Standardizer = TableFlow, Standardize, ContextStandardizer
# Fewest training rows a density can be fitted to (a spread needs two).
MIN_ROWS = 2
# Fewest rows from which ``fit`` holds out a validation share (see :func:`validation_split`).
MIN_ROWS_FOR_VALIDATION = 20
# Rows pushed through the flow at once by ``sample`` (bounds the memory of large draws).
SAMPLE_CHUNK_ROWS = 65536
# Total seconds of a fit given neither ``max_epochs`` nor ``max_time`` (the whole selection).
DEFAULT_MAX_TIME = 100.0
# The time limit (seconds) of a run whose share of the budget is spent: one optimiser step.
_SPENT = 1e-9


def validation_split(
    rows: int, fraction: float, seed: int, block: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(train, validation)`` of the seeded split :meth:`DensityEstimator.fit` makes.

    The rows are permuted by ``numpy.random.default_rng(seed)`` in blocks of ``block``
    consecutive rows (:func:`~normflows_sci._selection.block_permutation`; ``fit`` takes blocks
    when the rows are serial, see :func:`~normflows_sci._selection.serial_block`); the first
    ``max(1, round(fraction * rows))`` of the permutation are held out, unless ``fraction`` is 0
    or there are fewer than ``MIN_ROWS_FOR_VALIDATION`` (20) rows: then none are, and ``train``
    is the whole permutation.

    Example:
        >>> train, held_out = validation_split(50, 0.1, seed=0)
        >>> len(train), len(held_out), sorted([*train, *held_out]) == list(range(50))
        (45, 5, True)
    """
    order = block_permutation(rows, seed, block)
    if fraction <= 0 or rows < MIN_ROWS_FOR_VALIDATION:
        return order, order[:0]
    cut = max(1, round(fraction * rows))
    return order[cut:], order[:cut]


def held_out_split(X, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Row indices ``(train, held_out, block)`` of a seeded split of the table ``X`` (array or
    DataFrame) for scoring a model on rows it did not see: :func:`validation_split` in blocks of
    ``block`` consecutive rows when the rows are serial (near-copies of their neighbours, such as
    a storm's six-hourly fixes or a panel's years: a held-out row's copies in training would
    reward memorising), else row by row (``block`` 1). The numeric columns decide
    (:func:`~normflows_sci._selection.serial_block`); ``fit`` splits its validation rows the
    same way.

    Example:
        >>> t = np.linspace(0.0, 20.0, 2000)
        >>> train, test, block = held_out_split(np.stack([np.sin(t), t], axis=1), 0.2, seed=0)
        >>> len(train), len(test), block
        (1600, 400, 20)
    """
    if hasattr(X, "select_dtypes"):
        numeric = X.select_dtypes("number").to_numpy(dtype=np.float64)
    else:
        values = np.asarray(X)
        keep = [j for j in range(values.shape[1]) if not isinstance(values[0, j], str)]
        numeric = values[:, keep].astype(np.float64)
    block = serial_block(numeric, round(fraction * len(numeric)))
    return (*validation_split(len(numeric), fraction, seed, block), block)


class ScoreEstimate(NamedTuple):
    """A mean log-likelihood (nats per row) and its standard error over the rows.

    Returned by :meth:`DensityEstimator.score` with ``return_stderr=True`` and by
    :meth:`DensityEstimator.compare` (there ``mean`` is the paired difference of two models).
    ``stderr`` is ``sd / sqrt(rows)`` (sample standard deviation of the per-row values) combined
    in quadrature with the quadrature error of the integer cells, if any; it is NaN with fewer
    than two rows or when a row's value is not finite. Unpacks as ``mean, stderr, rows``.
    """

    mean: float
    stderr: float
    rows: int

    def __str__(self) -> str:
        return f"{self.mean:.4f} +- {self.stderr:.4f} nats/row ({self.rows} rows)"

    @classmethod
    def of_rows(cls, values: np.ndarray, row_errors: np.ndarray) -> ScoreEstimate:
        """The mean of per-row ``values`` (n,) and its standard error, with the per-row errors
        ``row_errors`` (n,) (independent, of the values themselves) added in quadrature."""
        rows = len(values)
        mean = float(np.mean(values))
        if rows < 2 or not np.isfinite(values).all():
            return cls(mean, math.nan, rows)
        spread = float(np.var(values, ddof=1)) / rows
        quadrature = float(np.sum(np.square(row_errors))) / rows**2
        return cls(mean, math.sqrt(spread + quadrature), rows)


def _support_violations(spec: TableSpec, targets: np.ndarray) -> tuple[np.ndarray, tuple | None]:
    """Rows ``(n,)`` with a target value outside the model's support (below or above a declared
    bound, or off an integer column's lattice), and ``(row, reason)`` of the first one."""
    low = np.array([-np.inf if v is None else v for v in spec.lower], dtype=np.float64)
    high = np.array([np.inf if v is None else v for v in spec.upper], dtype=np.float64)
    discrete = np.asarray(spec.discrete, dtype=bool)
    step = np.where(discrete, np.asarray(spec.step, dtype=np.float64), 1.0)
    origin = np.asarray(spec.origin, dtype=np.float64)
    below, above = targets < low, targets > high
    off = discrete & (np.mod(targets - origin, step) != 0)
    bad = below | above | off
    rows = bad.any(axis=1)
    if not rows.any():
        return rows, None
    row = int(np.flatnonzero(rows)[0])
    col = int(np.flatnonzero(bad[row])[0])
    value = f"column {spec.target_columns[col]!r} holds {targets[row, col]:.6g}"
    if below[row, col]:
        reason = f"{value}, below its lower bound {low[col]:g}"
    elif above[row, col]:
        reason = f"{value}, above its upper bound {high[col]:g}"
    else:
        reason = f"{value}, off its lattice {origin[col]:g} + {step[col]:g} k"
    return rows, (row, reason)


def _positions(names: list[str], chosen: list[str]) -> list[int]:
    return [names.index(c) for c in chosen]


def _cell_kind(cell) -> str:
    """A phrase for a cell of ``DensityEstimator._cells``."""
    if isinstance(cell, tuple):
        if cell[0] == "labels":
            return "the probability of its labels"
        return f"the log-probability of its {len(cell[1])} levels (cells split at midpoints)"
    if not cell:
        return "a density"
    return f"the log-probability of its cells [v, v + {cell:g})"


def _check_trained(model: Flow, history: dict, *, validated: bool) -> None:
    """Refuse a fitted model with non-finite weights or a non-finite loss."""
    bad = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise ValueError(
            f"training diverged: {len(bad)} weight tensors of the flow hold NaN or inf "
            f"(first {bad[0]!r}); try a smaller learning_rate or clip_grad"
        )
    losses = history["val_loss"] if validated else history["train_loss"][-1:]
    if losses and not any(math.isfinite(v) for v in losses):
        kind = "held-out" if validated else "training"
        raise ValueError(
            f"training failed: the {kind} negative log-likelihood is not finite ({losses[-1]}); "
            "try a smaller learning_rate or clip_grad"
        )


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized()


def _preprocessed(model: Flow, targets: np.ndarray) -> np.ndarray:
    """The target rows ``(n, d)`` after the model's float64 preprocessing (bounds, then
    standardisation): the flow network's inputs, where the mixture base is fitted."""
    *bounds, standardize = list(model.transform)[:-1]
    with torch.no_grad():
        points = torch.as_tensor(targets, dtype=torch.float64, device=standardize.shift.device)
        for step in bounds:
            points = step(points)[0]
        return standardize.standardize(points).cpu().numpy()


def _stored_selection(config: dict, path, spec: TableSpec) -> list[dict] | None:
    """The ``selection`` records of a model file (None in files without them); ``ValueError``
    naming the file when they are malformed or their chosen size is not the stored model's."""
    if "selection" not in config:
        return None
    where = f"{path}: config field selection"
    records = check_selection(config["selection"], where)
    chosen = next(r for r in records if r["status"] == "chosen")
    size = (chosen["transforms"], tuple(chosen["hidden_features"]))
    if size != (spec.transforms, tuple(spec.hidden_features)):
        raise ValueError(
            f"{where} marks the size {size} chosen, but spec describes "
            f"{(spec.transforms, tuple(spec.hidden_features))}"
        )
    return records


def _warn_atoms(atoms: dict, *, stacklevel: int) -> None:
    """One warning per continuous column with a point mass (see :func:`point_masses`), naming
    the value and its share and what to do; ``stacklevel`` as ``warnings.warn`` takes it in
    the caller."""
    for column, (value, share) in atoms.items():
        warnings.warn(
            f"column {column!r} has a point mass: {share:.1%} of the training rows are exactly "
            f"{value:g}. A density has no finite likelihood on a point mass (it grows without "
            "bound as the model narrows onto the value), so training and scores there measure "
            "that narrowing, not the fit. Declare the column categorical (categorical=[...]) "
            "if it takes a few values, discrete if it holds integers, or model the atom apart "
            "(an indicator of the value, and the column where it differs)",
            stacklevel=stacklevel + 1,
        )


class DensityEstimator:
    """Fit a normalizing flow to a table and get exact log-densities in the original units.

    Args:
        flow: ``"nsf"`` (autoregressive neural spline flow, default), ``"maf"``, ``"realnvp"`` or
            ``"tarflow"`` (Transformer autoregressive flow: ``transforms`` blocks of
            ``len(hidden_features)`` layers, width ``max(hidden_features)``, spline maps) or
            ``"cnf"`` (continuous flow with exact divergence, trained by maximum likelihood
            through the ODE solver: exact but slow; ``transforms`` and ``bins`` are unused).
        transforms: number of flow layers. Default (with ``hidden_features`` also None): chosen
            by ``fit`` on the validation rows among three sizes around the row-count rule
            (5 layers of (128, 128) from 5000 training rows, 5 of (64, 64) from 1000, 3 of
            (32, 32) below) and, for an unconditional table of continuous columns under 5000
            training rows, the smallest flow on a Gaussian-mixture base fitted by EM, all
            trained within ``max_time`` (``normflows_sci._selection``);
            ``info()["selection"]`` lists the candidates' validation scores and the choice.
            Setting ``transforms`` or ``hidden_features`` fixes the size (no selection); the
            other one then follows the rule.
        hidden_features: conditioner hidden widths (see ``transforms``).
        bins: spline bins (NSF).
        bounds: ``{column: (low, high)}`` with ``None`` for an open side; ``"auto"`` (default):
            columns within [0, 1] get both bounds, a non-negative column piled near 0 or
            right-skewed (log-normal, gamma, counts) is bounded at 0; None: no bounds. Bounds the
            training rows lie strictly inside are exact: samples never cross them.
        discrete: integer-valued columns to dequantise: a list, ``"auto"`` (every integer-valued
            column) or None. Each one's lattice spacing is detected (e.g. 5 for values in steps of
            5); its score is the log-probability of the value, its samples lie on the lattice.
        categorical: label columns: ``"auto"`` (the DataFrame columns of object, string or
            pandas categorical dtype, and the numeric non-context columns recorded as a few
            levels: not integer-valued, at most 16 distinct values and at least 5 rows per value
            on average, e.g. a rate taking five values), None (none: every column must be
            numeric) or a list of columns (names or positions; numeric columns become labels
            too). A numeric column taken as levels is scored as the probability of its value
            and sampled on exactly its values (``info()["level_columns"]``). Their levels are
            those of the training table (all declared categories of a pandas categorical); the
            score of a row is ``log P(levels) + log p(numeric columns | levels)``. A categorical
            column in ``context`` is conditioned on; modelled categorical columns cannot go with
            numeric context columns. ``P(levels)`` is a smoothed contingency table up to 65536
            level combinations, above a product of softmax conditionals (autoregressive).
        heavy_tails: ``"auto"`` (Student-t base marginals where the Hill tail indices of BOTH
            sides are below 4, with at least 1000 training rows: a column heavy on one side only,
            such as a log-normal, keeps a Gaussian base), True (every column) or False.
        context: columns to condition on; the model is then ``p(other columns | context)``.
        batch_size: minibatch size (default: 256, smaller for small tables).
        learning_rate, weight_decay, clip_grad, schedule: optimiser settings (see ``fit_flow``).
        max_epochs: epoch budget of each candidate's training (default 200 when neither
            budget is given).
        max_time: wall-clock budget in seconds of the WHOLE fit, selection included: each
            candidate gets an equal share of what is left when it starts. Default: None, or
            ``DEFAULT_MAX_TIME`` (100 s) when ``max_epochs`` is not given either. With
            ``max_time`` alone (no ``max_epochs``) the cosine schedule, which needs a known
            length, becomes the plateau schedule.
        patience: epochs without validation improvement before stopping.
        validation_fraction: share of rows held out for early stopping when ``X_val`` is not given.
        random_state: seed for the split, the initialisation, training and sampling.
        ensemble: members of an equal-weight mixture of flows (an exact density) trained from
            different seeds: ``"auto"`` (default): ``ENSEMBLE_MEMBERS`` (3) for a table under
            ``ENSEMBLE_MAX_ROWS`` (500) rows whose network size is selected, else 1; or a
            number from 1 to ``MAX_ENSEMBLE`` (32). Members after the first repeat the chosen
            candidate's training with seeds ``random_state + k`` within the same ``max_time``
            (``info()["ensemble_members"]`` counts those trained). Not with ``checkpoint`` nor
            under torch.distributed.
        verbose: progress bar and a summary line.
        device: torch device to train on (default CPU).

    After fitting, ``flow_`` is the model (float64 preprocessing, float32 flow network; for an
    ensemble a :class:`~normflows_sci.flows.FlowMixture` of such flows, all of the same spec),
    ``spec_`` its frozen :class:`TableSpec` (columns, bounds, lattices, tails, network size: what
    a model file stores), ``history_`` (of the first member) and ``fit_time_`` the training
    record, and
    ``selection_`` the candidates ``fit`` tried (name, size, best validation NLL, epochs,
    status: ``"chosen"``, ``"trained"``, ``"failed"`` or skipped when the budget was spent), and
    ``last_score_error_`` the ``(n,)`` standard errors (nats) of the last :meth:`score_samples`
    call (non-zero only for more than three integer columns). With categorical columns,
    ``categories_`` is their ``CategoricalSpec`` (levels,
    counts, smoothing; None for a numeric table) and ``spec_`` describes the flow's table: the
    numeric columns followed by the dummy columns ``"column=level"``, all of those in context.
    ``columns_``, ``target_columns_`` and ``context_columns_`` name the user's columns.

    The constructor takes every setting as its own keyword argument, stored unchanged under the
    same name (the scikit-learn convention that ``get_params``, ``clone`` and grid searches rely
    on); the network and training settings are grouped where they are used.

    A continuous target column whose most frequent value holds at least 5 % of the training rows
    (``ATOM_SHARE``: exact zeros of an amount, a censoring limit) has a point mass, on which a
    density has no finite likelihood: ``fit`` warns once per such column (naming the value and
    its share) and ``info()["atoms"]`` records them. The model still fits a density there; a
    column of a few values should be declared ``categorical``, an integer one ``discrete``.

    Degenerate tables are refused rather than fitted wrongly: fewer than two rows, or a constant
    continuous column (a point mass has no density), are errors naming the count or the column.
    A constant integer column declared discrete is allowed: its one level gets a probability
    close to 1.

    Example:
        >>> import numpy as np
        >>> X = np.random.default_rng(0).normal(size=(500, 2))
        >>> est = DensityEstimator(max_epochs=2, verbose=False, random_state=0).fit(X)
        >>> est.score_samples(X[:3]).shape
        (3,)
    """

    def __init__(
        self,
        flow: str = "nsf",
        *,
        transforms: int | None = None,
        hidden_features: int | Sequence[int] | None = None,
        bins: int = 8,
        bounds: dict | str | None = "auto",
        discrete: Sequence | str | None = None,
        categorical: Sequence | str | None = "auto",
        heavy_tails: str | bool = "auto",
        context: Sequence | None = None,
        batch_size: int | None = None,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        clip_grad: float | None = 5.0,
        schedule: str = "cosine",
        max_epochs: int | None = None,
        max_time: float | None = None,
        patience: int = 20,
        validation_fraction: float = 0.1,
        random_state: int | None = None,
        ensemble: int | str = "auto",
        verbose: bool = True,
        device: str | torch.device | None = None,
    ):
        if flow not in FLOWS:
            raise ValueError(f"flow must be one of {sorted(FLOWS)}, got {flow!r}")
        if isinstance(categorical, str) and categorical != "auto":
            raise ValueError(
                f"categorical must be 'auto', None or a list of columns, got {categorical!r}"
            )
        if heavy_tails not in ("auto", True, False):
            raise ValueError(f"heavy_tails must be 'auto', True or False, got {heavy_tails!r}")
        if not 0.0 <= validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
        if not (isinstance(ensemble, str) and ensemble == "auto") and not (
            isinstance(ensemble, int) and not isinstance(ensemble, bool)
            and 1 <= ensemble <= MAX_ENSEMBLE
        ):  # fmt: skip
            raise ValueError(
                f"ensemble must be 'auto' or an integer from 1 to {MAX_ENSEMBLE}, got {ensemble!r}"
            )
        self.flow = flow
        self.transforms = transforms
        self.hidden_features = hidden_features
        self.bins = bins
        self.bounds = bounds
        self.discrete = discrete
        self.categorical = categorical
        self.heavy_tails = heavy_tails
        self.context = context
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.clip_grad = clip_grad
        self.schedule = schedule
        self.max_epochs = max_epochs
        self.max_time = max_time
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.ensemble = ensemble
        self.verbose = verbose
        self.device = device

    # ----------------------------------------------------------------------------- structure
    def _network_size(self, candidate: Candidate) -> NetworkSize:
        """The flow family and size of one selection candidate."""
        return NetworkSize(
            flow=self.flow,
            transforms=candidate.transforms,
            hidden_features=tuple(candidate.hidden_features),
            bins=self.bins,
        )

    def _build(self, spec: TableSpec) -> Flow:
        """The full model (preprocessing + flow) of a spec, at identity standardisation, on the
        Gaussian-mixture base of the chosen selection candidate if it had one."""
        model = build_table_flow(spec)
        chosen = [r for r in getattr(self, "selection_", None) or () if r["status"] == "chosen"]
        if chosen and chosen[0]["components"] is not None:
            model.base = GaussianMixtureBase(len(spec.target_columns), chosen[0]["components"])
        return model

    # ----------------------------------------------------------------------------- fitting
    def fit(
        self,
        X,
        X_val=None,
        *,
        columns: Sequence[str] | None = None,
        checkpoint: str | os.PathLike | None = None,
        resume: bool = False,
    ):
        """Fit the model to the rows of ``X`` (numpy array or pandas DataFrame).

        At the default size (``transforms`` and ``hidden_features`` None) three network sizes
        are trained within the one ``max_time`` budget and the best on the validation rows is
        kept (``selection_``; see ``transforms``). A checkpointed run, or one under
        ``torch.distributed``, trains one size. Without ``X_val``, tables under ``CV_MAX_ROWS``
        rows rank the sizes by K-fold cross-validation over all rows and refit the chosen one on
        all of them (one split instead when the budget cuts the first fold short; see
        ``normflows_sci._selection``). Under ``ENSEMBLE_MAX_ROWS`` rows the model is then an
        ensemble of the chosen size trained from ``ENSEMBLE_MEMBERS`` seeds (see ``ensemble``).

        Args:
            X: ``(n, d)`` training table (numbers, and labels in categorical columns).
            X_val: optional validation table for early stopping (default: a random
                ``validation_fraction`` of ``X``, see :func:`validation_split`).
            columns: names for the columns of a numpy ``X`` (a DataFrame brings its own).
            checkpoint: file for the training state after every epoch (resumable).
            resume: continue a run from ``checkpoint``.

        Returns:
            self.

        Raises:
            ValueError: fewer than ``MIN_ROWS`` (2) rows; a constant continuous target column (or
                identical rows); a value that lies beyond float32's range once standardised
                (named by column, in ``X`` or ``X_val``); a fit whose weights or held-out (or,
                without validation rows, final training) loss are not finite.
        """
        values, names, is_frame, roles, categories = self._training_table(X, columns)
        layout = column_layout(values, names, **roles)
        atoms = point_masses(layout, values)
        seed = self._seed()
        budget = Budget(self._total_time())
        serial = X_val is None and is_serial(values)  # once: for the split and the folds
        block = block_rows(round(self.validation_fraction * len(values))) if serial else 1
        train, val = self._validation_rows(values, names, X_val, seed, categories, block)
        candidates = self._candidates(
            len(train),
            # Under torch.distributed the ranks' clocks could pick different candidates.
            select=val is not None and checkpoint is None and not _distributed(),
            mixture=not layout.context_columns and not any(layout.discrete),
        )
        given = len(train) + (0 if val is None else len(val))  # rows: training plus validation
        members = self._ensemble_size(len(candidates), given, checkpoint)
        # A few dozen validation rows rank the candidates by noise: cross-validate on all rows
        # (a validation table of the user's is theirs to choose: it is kept).
        cross = X_val is None and len(candidates) > 1 and given < CV_MAX_ROWS
        rows = values if cross else train  # all rows in table order: folds keep serial blocks
        if categories is not None:  # the categories' factor is fitted to the training rows only
            dummies = rows[:, len(categories.numeric_columns) :]
            categories = categories.fitted(categories.codes_from_dummies(dummies))
        network = self._network_size(candidates[0])
        held_out = None if cross else val
        spec, statistics = plan_table(
            layout, rows, held_out, network=network, heavy_tails=self.heavy_tails, frame=is_frame
        )
        _warn_atoms(atoms, stacklevel=2)  # after plan_table's checks: a refused table only errs
        fingerprint = fit_fingerprint(self.get_params(), values, names, val)
        run = dict(checkpoint=checkpoint, resume=resume, fingerprint=fingerprint)
        fold_block = block_rows(len(rows) // CV_FOLDS) if serial else 1
        folds = cv_folds(len(rows), seed, block=fold_block) if cross else None
        problem = (spec, statistics, train, val, seed, run)
        model, spec, history, records, crossed = self._select_and_train(
            candidates, problem, budget, members, (rows, folds)
        )
        block = fold_block if crossed else block
        self.flow_, self.spec_, self.history_ = model, spec, history
        self.categories_ = categories
        self.atoms_ = atoms
        self.split_block_ = block
        self.selection_ = records
        self.fit_time_ = budget.clock() - budget.start
        self._report()
        return self

    def _select_and_train(
        self, candidates, problem: tuple, budget: Budget, members: int, folds: tuple
    ) -> tuple:
        """The selection (by cross-validation over ``folds = (rows, folds)`` unless its folds
        are None or too slow, else on the validation split of ``problem``), then the other
        ``members - 1`` members of the ensemble.

        Returns:
            ``(model, spec, history, records, cross_validated)``.
        """
        rows, splits = folds
        fitted, crossed = None, False
        if splits is not None:
            pooled = (*problem[:2], rows, None, *problem[4:])
            try:
                fitted = self._select_by_folds(candidates, pooled, splits, budget, members)
                problem, crossed = pooled, True
            except FoldsTooSlow:
                pass  # the budget cannot train every fold: one split (same preprocessing)
        if fitted is None:
            fitted = self._select_on_split(candidates, problem, budget, members - 1)
        (model, spec), history, records = fitted
        if members > 1:  # refitted on all rows: the members repeat the refit's epochs
            epochs = len(history["epoch"]) if crossed else None
            model = self._train_members(model, records, problem, budget, (members, epochs))
        return model, spec, history, records, crossed

    def _select_on_split(
        self, candidates, problem: tuple, budget: Budget, reserve: int = 0
    ) -> tuple:
        """``select`` ranking the candidates on the validation rows of ``problem``; a size that
        needs the whole budget gets it from ``EXTEND_MIN_ROWS`` training rows; ``reserve`` runs
        (ensemble members) follow within the same budget."""
        return select(
            candidates,
            lambda size, share: self._fit_candidate(size, share, problem),
            budget,
            extend=None
            if len(problem[2]) < EXTEND_MIN_ROWS
            else partial(self._train_more, problem=problem),
            reserve=reserve,
        )

    def _select_by_folds(
        self, candidates, problem: tuple, folds: list, budget: Budget, members: int = 1
    ) -> tuple:
        """``select`` ranking the candidates by K-fold cross-validation over all the rows of
        ``problem`` (its validation rows None), then the chosen one refitted on all rows for the
        median of its folds' best epochs. Every fold, the refit and the ``members - 1`` ensemble
        members trained after it take an equal share of what is left of ``budget``; a later
        candidate that runs out of time is skipped, the first trains every fold (one step each
        when nothing is left). The mixture candidate's component count
        is chosen on the same folds.

        Returns:
            ``((model, spec), refit history, records)`` (records with ``folds``).

        Raises:
            FoldsTooSlow: the first fold trained until its share ran out.
        """
        spec, statistics, rows, _, seed, run = problem
        with torch.random.fork_rng(devices=[]):  # only its preprocessing is used
            model = build_table_flow(spec, statistics)
        # The held-out rows are rows of X: range errors must name X, not a validation table.
        check_flow_range(model, spec, rows, "X")
        # every fold of every candidate, then the refit and the other ensemble members
        runs = len(candidates) * len(folds) + members

        def cross_validate(candidate: Candidate, _share):
            index = candidates.index(candidate)
            components = None
            if candidate.name == "mixture":
                latent = _preprocessed(model, spec.targets(rows))
                components = cv_mixture_components(latent, folds, seed)
            scores = []
            for j, (train, held_out) in enumerate(folds):
                share = budget.share(runs - index * len(folds) - j)
                if index and share is not None and share <= 0:
                    raise BudgetSpent  # ranking it on fewer folds would not be comparable
                fold = (spec, statistics, rows[train], rows[held_out], seed, run)
                history = self._fit_candidate(candidate, share, fold, components)[1]
                scores.append(fold_score(history, len(held_out)))
                if not (index or j) and used_up(history, share):
                    raise FoldsTooSlow  # every fold would be cut short by the clock
            return (candidate, components), dict(cv_record(scores), components=components)

        (candidate, components), history, records = select(
            candidates, cross_validate, budget, folds=len(folds)
        )
        result, refit = self._fit_candidate(
            candidate, budget.share(members), problem, components, epochs=len(history["epoch"])
        )
        refit.pop("components", None)
        return result, refit, records

    def _fit_candidate(
        self,
        candidate: Candidate,
        max_time: float | None,
        problem: tuple,
        components: int | None = None,
        epochs: int | None = None,
    ):
        """``((model, spec), history)`` of one selection candidate trained for at most
        ``max_time`` seconds (and ``epochs`` epochs, if given); ``problem`` is
        ``(spec, statistics, train, val, seed, run)``; ``components``: the mixture base's count
        (None: chosen on the validation rows)."""
        spec, statistics, train, val, seed, run = problem
        sized = replace(spec, **asdict(self._network_size(candidate)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_table_flow(sized, statistics)
        check_flow_range(model, sized, train, "X")
        if val is not None:
            check_flow_range(model, sized, val, "X_val")
        if candidate.name == "mixture":  # the flow starts at the identity: at the EM mixture
            latent = [
                None if rows is None else _preprocessed(model, sized.targets(rows))
                for rows in (train, val)
            ]
            model.base = fit_mixture_base(*latent, seed, components)
        history = self._train(
            model, sized, (train, val), seed, dict(run, max_time=max_time, epochs=epochs)
        )
        _check_trained(model, history, validated=val is not None)
        if candidate.name == "mixture":
            history["components"] = len(model.base.log_weights)
        return (model, sized), history

    def _ensemble_size(self, candidates: int, rows: int, checkpoint) -> int:
        """The ensemble's size for a fit of ``rows`` rows (training plus validation) choosing
        among ``candidates`` sizes (see ``ensemble``)."""
        if self.ensemble == "auto":
            return ENSEMBLE_MEMBERS if candidates > 1 and rows < ENSEMBLE_MAX_ROWS else 1
        if self.ensemble > 1 and (checkpoint is not None or _distributed()):
            raise ValueError(
                f"ensemble={self.ensemble} cannot be combined with checkpoint or "
                f"torch.distributed (a resumable or distributed run trains one model): "
                f"use ensemble=1"
            )
        return self.ensemble

    def _train_members(
        self, first: TableFlow, records: list, problem: tuple, budget: Budget, plan: tuple
    ) -> TableFlow | FlowMixture:
        """The equal-weight :class:`FlowMixture` of ``first`` and up to ``members - 1`` more
        runs of the chosen candidate (``plan = (members, epochs)``; ``problem`` as in
        :meth:`_fit_candidate`, seeds ``seed + k``), each with an equal share of what is left
        of ``budget``. A member the budget has no time left for is not trained (warned when the
        user asked for that many), a member whose training fails is left out (warned)."""
        members, epochs = plan
        record = next(r for r in records if r["status"] == "chosen")
        candidate = Candidate(
            record["name"], record["transforms"], tuple(record["hidden_features"])
        )
        spec, statistics, train, val, seed, run = problem
        flows, spent = [first], False
        for k in range(1, members):
            share = budget.share(members - k)
            spent = share is not None and share <= 0
            if spent:
                break
            try:
                member = self._fit_candidate(
                    candidate,
                    share,
                    (spec, statistics, train, val, seed + k, run),
                    record["components"],
                    epochs,
                )
            except ValueError as error:
                warnings.warn(f"ensemble member {k} left out: {error}", stacklevel=4)
                continue
            flows.append(member[0][0])
        if spent and self.ensemble != "auto":
            warnings.warn(
                f"ensemble={members}: {len(flows)} member(s) trained within max_time="
                f"{self.max_time} s; the model is their mixture (raise max_time for more)",
                stacklevel=4,
            )
        return flows[0] if len(flows) == 1 else FlowMixture(flows)

    def _train_more(self, result: tuple, history: dict, max_time: float, problem: tuple) -> dict:
        """Train the chosen candidate ``result = (model, spec)`` for up to ``max_time`` more
        seconds (from its best epoch); its history continued (epochs and times run on)."""
        model, spec = result
        _, _, train, val, seed, run = problem
        before = {k: v.clone() for k, v in model.state_dict().items()}
        more = self._train(model, spec, (train, val), seed, dict(run, max_time=max_time))
        _check_trained(model, more, validated=val is not None)
        if not min(more["val_loss"], default=math.inf) < min(history["val_loss"]):
            model.load_state_dict(before)  # the restart found nothing better: keep the best
        last_epoch = history["epoch"][-1] if history["epoch"] else 0
        last_time = history["time"][-1] if history["time"] else 0.0
        for key in history:
            shift = last_epoch if key == "epoch" else last_time if key == "time" else 0
            history[key] = list(history[key]) + [v + shift for v in more[key]]
        return history

    def _total_time(self) -> float | None:
        """The wall-clock budget of the whole fit: ``max_time``, or ``DEFAULT_MAX_TIME`` when
        neither budget is given."""
        if self.max_time is None and self.max_epochs is None:
            return DEFAULT_MAX_TIME
        return self.max_time

    def _candidates(self, rows: int, *, select: bool, mixture: bool) -> list[Candidate]:
        """The network sizes ``fit`` tries (see ``normflows_sci._selection``); ``mixture``: the
        table allows the mixture-base candidate (no context, no integer columns)."""
        hidden = self.hidden_features
        if isinstance(hidden, int):
            hidden = (hidden,)
        return candidates_for(
            rows,
            flow=self.flow,
            transforms=self.transforms,
            hidden_features=hidden,
            select=select,
            mixture=mixture,
        )

    def _training_table(self, X, columns) -> tuple:
        """``(values, names, was_dataframe, roles, categories)`` of the training table.

        ``values`` ``(n, d)`` float64 is the numeric table the flow is fitted to and ``roles`` the
        ``context``/``discrete``/``bounds`` of :func:`column_layout` for it. Without categorical
        columns these are the table and the constructor's arguments, and ``categories`` is None;
        with them, ``values`` holds the numeric columns then the dummy coding of the categories
        (all in the flow's context), the roles name columns (positions refer to the user's
        table), and ``categories`` is their :class:`CategoricalSpec` (counts not yet set).
        """
        if columns is not None and hasattr(X, "columns") and hasattr(X, "to_numpy"):
            raise ValueError("columns is only for numpy input: a DataFrame brings its own names")
        table, names, is_frame = read_columns(X, "X", columns)
        context = column_names(self.context, names, "context")
        categorical = declared_categorical(
            table, names, self.categorical, context, self._numeric_role_columns(names)
        )
        roles = dict(context=self.context, discrete=self.discrete, bounds=self.bounds)
        categories = None
        if not categorical:
            values = as_table(table, "X")[0] if is_frame else table
        else:
            categories = CategoricalSpec.from_table(table, names, categorical, context)
            numeric, codes = split_mixed(table, "X", categories)
            values = np.hstack([numeric, categories.dummies(codes)])
            roles = self._numeric_roles(names, categorical, context, categories)
            names = categories.inner_columns()
        if len(values) < MIN_ROWS:
            raise ValueError(
                f"X has {len(values)} row: fitting a density needs at least {MIN_ROWS} rows"
            )
        return values, names, is_frame, roles, categories

    def _numeric_role_columns(self, names: list[str]) -> list[str]:
        """The columns named in ``bounds`` (a dict) or ``discrete`` (a list): numeric by the
        user's word, so ``categorical="auto"`` leaves them numeric (unknown names are left to
        the layout's own error)."""
        keys = list(self.bounds) if isinstance(self.bounds, dict) else []
        if self.discrete not in (None, "auto"):
            keys += list(self.discrete)
        found = []
        for key in keys:
            if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
                found += [names[int(key)]] if 0 <= key < len(names) else []
            elif str(key) in names:
                found.append(str(key))
        return found

    def _numeric_roles(self, names, categorical, context, categories: CategoricalSpec) -> dict:
        """``context``/``discrete``/``bounds`` by name for the flow's table of a mixed table
        (``ValueError`` for a categorical column declared discrete or bounded)."""
        discrete, bounds = self.discrete, self.bounds
        if discrete not in (None, "auto"):
            discrete = column_names(discrete, names, "discrete")
        if isinstance(bounds, dict):
            bounds = {column_names([k], names, "bounds")[0]: v for k, v in bounds.items()}
        for what, chosen in (("discrete", discrete), ("bounds", bounds)):
            clash = [c for c in categorical if isinstance(chosen, (list, dict)) and c in chosen]
            if clash:
                raise ValueError(
                    f"{what} names the categorical columns {clash}: only numeric columns can be "
                    f"{'integer lattices' if what == 'discrete' else 'bounded'}"
                )
        return dict(context=categories.inner_context(context), discrete=discrete, bounds=bounds)

    def _validation_rows(self, values, names, X_val, seed: int, categories=None, block=1):
        """``(training rows, validation rows or None)``: ``X_val`` when given, else the held-out
        share of :func:`validation_split` (None when it holds out nothing)."""
        if X_val is not None:
            if categories is None:
                return values, as_table(X_val, "X_val", names)[0]
            numeric, codes = split_mixed(X_val, "X_val", categories)
            unseen = np.argwhere(codes < 0)
            if len(unseen):
                row, col = unseen[0]
                raise ValueError(
                    f"X_val has levels not in X ({int((codes < 0).any(axis=1).sum())} rows; "
                    f"first: row {row}, column {categories.categorical[col]!r}): validation rows "
                    "must use the levels of the training table"
                )
            return values, np.hstack([numeric, categories.dummies(codes)])
        train, held_out = validation_split(len(values), self.validation_fraction, seed, block)
        if not len(held_out):
            return values, None
        return values[train], values[held_out]

    def _train(self, model: Flow, spec: TableSpec, rows: tuple, seed: int, run: dict) -> dict:
        """Train ``model`` on ``rows = (train, validation or None)`` by maximum likelihood
        (dequantising the integer columns); ``run`` holds fit_flow's checkpoint options and this
        run's ``max_time`` (its share of the selection's budget)."""
        train, val = rows
        run = dict(run)
        epochs = run.pop("epochs", None)  # the refit after cross-validation: its folds' epochs
        if run.get("max_time") is not None and run["max_time"] <= 0:
            # The budget is spent but this run owes a model (the first candidate, the refit):
            # training checks the clock after every step, so it takes exactly one.
            run["max_time"] = _SPENT
        device = torch.device(self.device) if self.device is not None else torch.device("cpu")
        model.to(device)

        def tensor(array):
            # float64: the preprocessing inside the model casts to float32 after standardising.
            return (
                None
                if array is None
                else torch.as_tensor(array, dtype=torch.float64, device=device)
            )

        noise_scale = tensor(spec.step)

        def dequantize(batch: Tensor, generator: torch.Generator) -> Tensor:
            noise = torch.rand(batch.shape, generator=generator, device=batch.device)
            return batch + noise * noise_scale

        conditional = bool(spec.context_columns)
        max_epochs = self.max_epochs
        if max_epochs is None and self.max_time is None:
            max_epochs = 200  # per candidate; DEFAULT_MAX_TIME bounds the whole fit
        if epochs is not None:
            max_epochs = epochs
        return fit_flow(
            model,
            tensor(spec.targets(train)),
            context=tensor(spec.context(train)) if conditional else None,
            val_data=None if val is None else tensor(spec.targets(val)),
            val_context=tensor(spec.context(val)) if conditional and val is not None else None,
            batch_size=self.batch_size or int(np.clip(len(train) // 20, 32, 256)),
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            max_epochs=max_epochs,
            patience=self.patience if val is not None else None,
            schedule=self.schedule,
            clip_grad=self.clip_grad,
            seed=seed,
            transform_batch=dequantize if any(spec.discrete) else None,
            progress=self.verbose,
            **run,
        )

    def _report(self) -> None:
        """The summary line of a verbose fit."""
        history = self.history_
        if not (self.verbose and history["epoch"]):
            return
        best = self.info()["best_validation_nll"]  # cross-validated: the chosen record's
        best = math.nan if best is None else best
        members = len(self._members_)
        print(
            f"fitted {self.spec_.flow} in {self.fit_time_:.1f} s, {history['epoch'][-1]} epochs; "
            f"validation NLL {best:.4f} nats/row"
            + (f" (first of an ensemble of {members} seeds)" if members > 1 else "")
        )

    def _seed(self) -> int:
        seed = self.random_state
        dist = torch.distributed
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
            if dist.is_available() and dist.is_initialized():
                shared = torch.tensor([seed])
                dist.broadcast(shared, src=0)
                seed = int(shared)
        return int(seed)

    # ----------------------------------------------------------------------------- using
    def _check_fitted(self):
        if not hasattr(self, "flow_"):
            raise RuntimeError("this DensityEstimator is not fitted yet: call fit(X) first")

    @property
    def _categories(self) -> CategoricalSpec | None:
        # Estimators pickled by earlier versions have no categorical part.
        return getattr(self, "categories_", None)

    @property
    def columns_(self) -> list[str]:
        """The columns of the training table, in order."""
        self._check_fitted()
        categories = self._categories
        return list(self.spec_.columns if categories is None else categories.columns)

    @property
    def target_columns_(self) -> list[str]:
        """The modelled columns (categorical and numeric), in table order."""
        self._check_fitted()
        categories = self._categories
        if categories is None:
            return list(self.spec_.target_columns)
        return categories.target_columns(self.spec_.context_columns)

    @property
    def context_columns_(self) -> list[str]:
        """The columns the model is conditional on, in table order."""
        self._check_fitted()
        categories = self._categories
        if categories is None:
            return list(self.spec_.context_columns)
        return categories.context_columns(self.spec_.context_columns)

    @property
    def _members_(self) -> list[TableFlow]:
        """The flows of the model: one, or the members of an ensemble (all with the same
        preprocessing)."""
        model = self.flow_
        return list(model.members) if isinstance(model, FlowMixture) else [model]

    def _device(self) -> torch.device:
        return next(iter(self.flow_.buffers())).device

    def _cell_rule(self) -> tuple[np.ndarray, np.ndarray]:
        """Nodes ``(R, m, k)`` and log-weights ``(R, m)`` over the cells of the ``k`` integer
        columns (``(1, 1, 0)`` and ``(1, 1)`` without any): ``P(v)`` is the integral of the
        dequantised density over ``[v, v + step)``."""
        discrete = np.asarray(self.spec_.discrete, dtype=bool)
        if not discrete.any():
            return np.zeros((1, 1, 0)), np.zeros((1, 1))
        step = np.asarray(self.spec_.step)[discrete]
        nodes, log_w = unit_cell_rule(int(discrete.sum()))
        return nodes * step, log_w + np.log(step).sum()

    def _log_prob_at(self, targets: np.ndarray, context: np.ndarray, nodes: np.ndarray):
        """Model log-densities ``(P, rows)`` at ``targets`` shifted by each of the ``P`` nodes
        (flattened from ``nodes``) in the integer columns; all in float64."""
        device = self._device()
        discrete = torch.as_tensor(self.spec_.discrete, dtype=torch.bool, device=device)
        count = nodes.shape[0] * nodes.shape[1]
        offsets = torch.as_tensor(nodes.reshape(count, nodes.shape[2]), device=device)
        rows = torch.as_tensor(targets, dtype=torch.float64, device=device)
        shifted = rows[None].repeat(len(offsets), 1, 1)
        shifted[..., discrete] += offsets[:, None, :]
        ctx = None
        if context.shape[1]:
            # Row i of every node block carries the context of row i.
            ctx = torch.as_tensor(context, dtype=torch.float64, device=device)
            ctx = ctx.repeat(len(offsets), 1)
        with torch.no_grad():
            log_p = self.flow_.log_prob(shifted.reshape(-1, rows.shape[-1]), ctx)
        return log_p.reshape(len(offsets), -1).double().cpu().numpy()

    def score_samples(self, X, *, batch_size: int = 8192, strict: bool = False) -> np.ndarray:
        """Log-density of each row in the original units (log-probability for integer and
        categorical columns, log-density for the rest; conditional on the context columns if
        any): ``log P(categories) + log p(numbers | categories)`` for a mixed table.

        The probability of a row's integer cell is the integral of the dequantised density over
        it (:mod:`normflows_sci.quadrature`): exact Gauss-Legendre quadrature for up to
        ``EXACT_MAX_DIMS`` (3) integer columns; above, randomised quasi-Monte Carlo (scrambled
        Sobol points from a fixed seed: the same scores on every call) at a cost per row that does
        not grow with the number of integer columns. ``last_score_error_`` then holds the
        estimated standard error of each row's log-probability in nats (0 for exact rules and
        continuous columns), and a warning names the rows whose error exceeds
        ``QMC_STDERR_TOLERANCE`` (0.05 nats). Rows so far from the data that the float32 network
        overflows score ``-inf`` (a NaN score comes with a warning).

        Rows outside the model's support, where its probability is zero, score ``-inf``, with a
        warning counting them: a value below or above a column's declared bound, an integer off
        its column's lattice (``origin + step * k``), or a level of a categorical column not seen
        in training. With ``strict=True`` they raise instead.

        Args:
            X: ``(n, columns)`` rows with the columns of the training table.
            batch_size: density evaluations per pass through the flow (bounds the memory).
            strict: raise on rows outside the support instead of scoring them ``-inf``.

        Returns:
            ``(n,)`` float64, in nats.

        Raises:
            ValueError: wrong columns, non-integers in discrete columns, values that lie beyond
                float32's range once standardised, a level of a categorical context column not
                seen in training, or (``strict=True``) a row outside the support, naming the
                first such row and column.
        """
        return self._score_rows(X, batch_size=batch_size, strict=strict, stacklevel=3)

    def _scoring_table(self, X) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple | None]:
        """``(values, log_p, unseen, first)``: the flow's numeric table of ``X``
        ``(n, columns)``, the log-probabilities of its categories ``(n,)`` (0 without), the rows
        with a categorical level not seen in training ``(n,)`` and ``(row, reason)`` of the
        first of them (None if there is none)."""
        categories = self._categories
        if categories is None:
            values = as_table(X, "X", list(self.spec_.columns))[0]
            return values, np.zeros(len(values)), np.zeros(len(values), dtype=bool), None
        numeric, codes = split_mixed(X, "X", categories)
        given = np.asarray(categories.context, dtype=bool)
        first = first_unseen(X, categories, np.where(given, codes, 0))
        if first is not None:
            raise ValueError(
                f"row {first[0]} of X: {first[1]} (a context column: the model has no "
                "conditional density given it)"
            )
        values = np.hstack([numeric, categories.dummies(codes)])
        unseen = (codes < 0).any(axis=1)
        return values, categories.log_prob(codes), unseen, first_unseen(X, categories, codes)

    def _outside_support(self, targets, unseen, *, strict: bool, stacklevel: int) -> np.ndarray:
        """Rows outside the model's support ``(n,)``: ``unseen`` = ``(rows (n,), first)`` of
        :meth:`_scoring_table` plus those of :func:`_support_violations`. Warns with their count
        (or, ``strict``, raises naming the first row and column)."""
        outside, first = _support_violations(self.spec_, targets)
        rows, level = unseen
        firsts = [f for f in (first, level) if f is not None]
        if not firsts:
            return outside
        outside = outside | rows
        first = min(firsts)
        row, reason = first
        if strict:
            raise ValueError(f"row {row} of X lies outside the model's support: {reason}")
        warnings.warn(
            f"{int(outside.sum())} of {len(outside)} rows of X lie outside the model's support "
            f"and score -inf (first: row {row}: {reason}); pass strict=True to raise instead",
            stacklevel=stacklevel + 1,
        )
        return outside

    def _score_rows(self, X, *, batch_size: int, strict: bool, stacklevel: int) -> np.ndarray:
        """:meth:`score_samples`; ``stacklevel`` of its warnings counts from this frame."""
        self._check_fitted()
        spec = self.spec_
        values, log_categories, *unseen = self._scoring_table(X)
        targets = spec.targets(values)
        discrete = np.asarray(spec.discrete, dtype=bool)
        if discrete.any() and not np.all(targets[:, discrete] == np.round(targets[:, discrete])):
            raise ValueError("discrete columns of X must hold integers")
        outside = self._outside_support(targets, unseen, strict=strict, stacklevel=stacklevel)
        inside = np.flatnonzero(~outside)
        if inside.size:
            # Outside rows are replaced by an inside one for the range check, so that the row
            # numbers in its message stay those of X.
            checked = values.copy()
            checked[outside] = values[inside[0]]
            check_flow_range(self._members_[0], spec, checked, "X")
        nodes, log_w = self._cell_rule()
        rows_per_pass = max(1, batch_size // log_w.size)
        out, error = np.full(len(values), -np.inf), np.zeros(len(values))
        context = spec.context(values)
        self.flow_.eval()
        for start in range(0, inside.size, rows_per_pass):
            part = inside[start : start + rows_per_pass]
            log_p = self._log_prob_at(targets[part], context[part], nodes)
            terms = log_p.reshape(*log_w.shape, -1) + log_w[..., None]
            out[part], error[part] = combine_cell_estimates(terms)
        self.last_score_error_ = error
        warn_imprecise_cells(error, stacklevel=stacklevel)
        failed = np.flatnonzero(np.isnan(out))
        if failed.size:
            warnings.warn(
                f"{failed.size} of {len(out)} rows of X score NaN (first: row {failed[0]}): the "
                "flow network's float32 arithmetic overflowed on values far outside the training "
                "data",
                stacklevel=stacklevel,
            )
        return out + log_categories

    def score(self, X, *, return_stderr: bool = False, strict: bool = False):
        """Mean log-likelihood per row, in nats (higher is better).

        Args:
            X: rows with the columns of the training table.
            return_stderr: also give the standard error of the mean over the rows.
            strict: as in :meth:`score_samples`.

        Returns:
            ``float`` (the mean of :meth:`score_samples`, the scikit-learn contract), or with
            ``return_stderr=True`` a :class:`ScoreEstimate` ``(mean, stderr, rows)``.
        """
        scores = self._score_rows(X, batch_size=8192, strict=strict, stacklevel=3)
        if not return_stderr:
            return float(np.mean(scores))
        return ScoreEstimate.of_rows(scores, self.last_score_error_)

    def compare(self, other, X, *, strict: bool = False) -> ScoreEstimate:
        """The paired difference of log-likelihoods ``self - other`` on the rows of ``X``.

        ``mean`` is in nats per row (positive: this model is better) and ``stderr`` its
        standard error from the spread of the per-row differences (paired, so the variation
        between rows that both models share cancels). A difference of more than two or three
        standard errors is a difference of the models, not of the rows.

        Both models must score the same cells: a continuous column as a density, an integer
        column as the log-probability of its lattice cells of the same width, a categorical
        column as a probability. This is checked for another :class:`DensityEstimator` and for
        the baselines of :mod:`normflows_sci.baselines` (``ValueError`` naming the first column
        that differs); for any other object with ``score_samples`` it cannot be, and a warning
        says so when the table has integer columns.

        Args:
            other: a fitted :class:`DensityEstimator`, or any object whose ``score_samples(X)``
                returns ``(n,)`` log-likelihoods.
            X: ``(n, columns)`` held-out rows.
            strict: as in :meth:`score_samples`, for this model.

        Returns:
            :class:`ScoreEstimate` ``(mean, stderr, rows)`` of the differences. Rows that one
            model scores ``-inf`` make the difference infinite (a warning counts them).

        Raises:
            TypeError: ``other`` has no ``score_samples``.
            ValueError: the models score different cells, or ``other`` returns another shape.
        """
        self._check_fitted()
        if not callable(getattr(other, "score_samples", None)):
            raise TypeError(
                f"other must be a fitted model with score_samples, got {type(other).__name__}"
            )
        self._check_same_cells(other)
        mine = self._score_rows(X, batch_size=8192, strict=strict, stacklevel=3)
        my_error = self.last_score_error_
        theirs = np.asarray(other.score_samples(X), dtype=np.float64)
        if theirs.shape != mine.shape:
            raise ValueError(
                f"other.score_samples(X) returned shape {theirs.shape}, expected {mine.shape}"
            )
        their_error = np.asarray(getattr(other, "last_score_error_", np.zeros(1)), dtype=float)
        if their_error.shape != mine.shape:
            their_error = np.zeros_like(mine)
        with np.errstate(invalid="ignore"):
            difference = mine - theirs
        bad = ~np.isfinite(difference)
        if bad.any():
            warnings.warn(
                f"{int(bad.sum())} of {len(bad)} rows of X have a non-finite score under one of "
                f"the models (first: row {int(np.flatnonzero(bad)[0])}): the difference is not "
                "a finite number",
                stacklevel=2,
            )
        return ScoreEstimate.of_rows(difference, np.hypot(my_error, their_error))

    def _cells(self) -> dict:
        """How each modelled column is scored: ``{column: cell}`` with a cell width (0:
        continuous, a density; a width: a value ``v`` of an integer column is scored as the
        probability of ``[v, v + width)``), ``("levels", levels)`` for a numeric column modelled
        as levels, ``("labels",)`` for a label column."""
        spec = self.spec_
        cells = {
            c: step if discrete else 0.0
            for c, step, discrete in zip(spec.target_columns, spec.step, spec.discrete)
        }
        categories = self._categories
        if categories is not None:
            numeric = categories.numeric_levels()
            for column, context in zip(categories.categorical, categories.context):
                if not context:
                    kind = ("levels", tuple(numeric[column])) if column in numeric else ("labels",)
                    cells[column] = kind
        return {c: cells[c] for c in self.target_columns_}

    def _their_cells(self, other) -> dict | None:
        """:meth:`_cells` of a :class:`DensityEstimator` or a baseline (``discrete_mask_``,
        ``step_`` and ``levels_``) with this model's columns, None for another kind of model;
        ``ValueError`` when ``other`` models another table."""
        mine = self._cells()
        if isinstance(other, DensityEstimator):
            other._check_fitted()
            theirs = other._cells()
            same = (other.columns_, other.context_columns_) == (
                self.columns_,
                self.context_columns_,
            )
            if same and set(theirs) == set(mine):
                return theirs
        elif hasattr(other, "discrete_mask_"):
            mask = np.asarray(other.discrete_mask_, dtype=bool)
            step = np.asarray(getattr(other, "step_", np.ones(mask.shape)), dtype=np.float64)
            levels = getattr(other, "levels_", {})
            if mask.shape == (len(self.columns_),) == (len(mine),):
                return {
                    c: ("levels", tuple(levels[j].tolist()))
                    if j in levels
                    else float(step[j])
                    if mask[j]
                    else 0.0
                    for j, c in enumerate(self.columns_)
                }
        else:
            return None
        raise ValueError(
            f"other does not model the same table as this model ({self.target_columns_} given "
            f"{self.context_columns_}): the scores are not comparable"
        )

    def _check_same_cells(self, other) -> None:
        """Refuse (``ValueError``) an ``other`` that scores another table or other cells; warn
        when the cells of an unknown kind of model cannot be checked."""
        mine = self._cells()
        theirs = self._their_cells(other)
        if theirs is None:
            cells = {c: w for c, w in mine.items() if w}
            if cells:
                what = "integer" if all(isinstance(w, float) for w in cells.values()) else "cell"
                warnings.warn(
                    f"cannot check how {type(other).__name__} scores the {what} columns "
                    f"{list(cells)}: "
                    "the difference is only meaningful if it scores them as log-probabilities "
                    f"of the same cells ({', '.join(map(_cell_kind, cells.values()))})",
                    stacklevel=3,
                )
            return
        for column, cell in mine.items():
            if theirs[column] != cell:
                raise ValueError(
                    f"column {column!r} is scored as {_cell_kind(cell)} by this model but as "
                    f"{_cell_kind(theirs[column])} by other: a density and a probability, or "
                    "probabilities of different cells, differ by the log of the cell widths, so "
                    "the difference would be meaningless"
                )

    def _onto_support(self, samples: np.ndarray) -> np.ndarray:
        """Integer columns onto their lattice; every column into its declared bounds.

        The model's support reaches a hair beyond each bound (the margin that keeps points on a
        bound finite), so a draw can land in it: it is moved onto the bound (for an integer
        column, onto the nearest lattice point within the bounds).
        """
        spec = self.spec_
        discrete = np.asarray(spec.discrete, dtype=bool)
        step = np.asarray(spec.step)[discrete]
        origin = np.asarray(spec.origin)[discrete]
        samples[:, discrete] = origin + step * np.floor((samples[:, discrete] - origin) / step)
        low = np.array([-np.inf if v is None else v for v in spec.lower], dtype=np.float64)
        high = np.array([np.inf if v is None else v for v in spec.upper], dtype=np.float64)
        with np.errstate(invalid="ignore"):  # inf - origin on open sides stays inf
            low[discrete] = origin + step * np.ceil((low[discrete] - origin) / step)
            high[discrete] = origin + step * np.floor((high[discrete] - origin) / step)
        return np.clip(samples, low, high)

    def sample(self, n: int | None = None, *, random_state=None, context=None):
        """Draw rows from the model.

        Args:
            n: number of rows (unconditional models).
            random_state: seed (default: the estimator's ``random_state``).
            context: for conditional models, ``(m, c)`` context rows (array or DataFrame with the
                context columns); one sample is drawn per row.

        Returns:
            ``(n, d)`` rows of the target columns: a float64 array, or a DataFrame if fitted on
            one, whose categorical columns hold levels seen in training with the type they had
            (pandas categoricals with the same categories, strings, numbers or booleans). The
            rows go through the flow ``SAMPLE_CHUNK_ROWS`` at a time; the result does not depend
            on the chunk size.
        """
        self._check_fitted()
        spec, categories = self.spec_, self._categories
        seed = random_state if random_state is not None else self.random_state
        generator = torch.Generator(self._device())
        generator.manual_seed(int(seed) if seed is not None else torch.seed() % 2**62)
        if self.context_columns_:
            if context is None:
                raise ValueError(
                    f"context is required: the model is conditional on {self.context_columns_}"
                )
            numeric, codes = self._sample_context(context)
        else:
            if context is not None:
                raise ValueError("context given, but the model has no context columns")
            n = check_int("n", n)
            numeric = np.zeros((n, 0))
            codes = None if categories is None else np.full((n, len(categories.levels)), -1)
        if categories is not None:
            codes = categories.sample(codes, generator)
            numeric = np.hstack([numeric, categories.dummies(codes)])
        draws = self._draw(len(numeric), numeric if spec.context_columns else None, generator)
        return self._sample_table(self._onto_support(draws), codes)

    def _sample_context(self, context) -> tuple[np.ndarray, np.ndarray | None]:
        """``(numeric context (m, c) float64, categorical codes (m, k) or None)`` of the context
        rows given to :meth:`sample` (codes -1 in the modelled categorical columns)."""
        categories = self._categories
        columns = self.context_columns_
        if categories is None:
            return as_table(context, "context", columns)[0], None
        table, names, _ = read_columns(context, "context")
        names = columns if len(names) == len(columns) and not hasattr(context, "columns") else names
        if names != columns:
            raise ValueError(f"context must have the columns {columns}, got {names}")
        numeric = [c for c in columns if c not in categories.categorical]
        picked = (
            table[numeric] if hasattr(table, "columns") else table[:, _positions(names, numeric)]
        )
        values = as_table(picked, "context", numeric)[0] if numeric else np.zeros((len(table), 0))
        return values, categories.context_codes(table, names)

    def _draw(self, rows: int, context: np.ndarray | None, generator) -> np.ndarray:
        """``(rows, targets)`` float64 draws of the flow (one per context row, if any)."""
        # The latent draws are made at once (so chunking does not change them) and pushed through
        # the flow SAMPLE_CHUNK_ROWS rows at a time: memory bounded by the chunk, not by n.
        chunk = SAMPLE_CHUNK_ROWS
        with torch.no_grad():
            if context is None:
                draws = self.flow_.sample(rows, generator=generator, chunk_size=chunk)
            else:
                ctx = torch.as_tensor(context, dtype=torch.float64, device=self._device())
                draws = self.flow_.sample(1, ctx, generator=generator, chunk_size=chunk)[0]
        return draws.double().cpu().numpy()

    def _sample_table(self, numeric: np.ndarray, codes: np.ndarray | None):
        """The drawn target columns in table order, as an array or a DataFrame."""
        spec, categories = self.spec_, self._categories
        if categories is None:
            if not spec.frame:
                return numeric
            import pandas as pd

            return pd.DataFrame(numeric, columns=list(spec.target_columns))
        columns = self.target_columns_
        data = {
            c: categories.decode(codes, c)
            if c in categories.categorical
            else numeric[:, spec.target_columns.index(c)]
            for c in columns
        }
        if categories.frame:
            import pandas as pd

            dtypes = dict(zip(categories.categorical, categories.dtypes))
            kept = {c: dtypes[c] for c in columns if dtypes.get(c, "category") != "category"}
            return pd.DataFrame(data, columns=columns).astype(kept)
        return np.column_stack([np.asarray(data[c], dtype=np.float64) for c in columns])

    # ----------------------------------------------------------------------------- files
    _PARAMS = (
        "flow", "transforms", "hidden_features", "bins", "bounds", "discrete", "categorical",
        "heavy_tails",
        "context", "batch_size", "learning_rate", "weight_decay", "clip_grad", "schedule",
        "max_epochs", "max_time", "patience", "validation_fraction", "random_state", "ensemble",
    )  # fmt: skip

    def get_params(self) -> dict:
        """Constructor arguments (scikit-learn convention)."""
        params = {name: getattr(self, name) for name in self._PARAMS}
        if isinstance(params["hidden_features"], tuple):
            params["hidden_features"] = list(params["hidden_features"])
        return params

    def save(self, path: str | os.PathLike):
        """Write the fitted model to ``path`` (JSON config + weights, atomically); refuses
        (``ValueError``) weights with NaN or infinite entries.

        The categorical part of a mixed table (columns, levels, kinds, counts, smoothing) is
        stored as JSON data in the config field ``categorical``. The ``categorical`` argument is
        written only when it is not its default (``stored_params``),
        so files of numeric tables stay readable by earlier versions.
        """
        self._check_fitted()
        config = {
            "kind": "DensityEstimator",
            "params": stored_params(self.get_params()),
            "spec": self.spec_.to_dict(),
            "history": {k: [float(v) for v in vs] for k, vs in self.history_.items()},
            "fit_time": self.fit_time_,
        }
        if self._categories is not None:
            config["categorical"] = self._categories.to_dict()
        if getattr(self, "atoms_", None):
            config["atoms"] = {c: list(pair) for c, pair in self.atoms_.items()}
        if getattr(self, "split_block_", 1) > 1:
            config["split_block"] = self.split_block_
        if getattr(self, "selection_", None) is not None:
            config["selection"] = self.selection_
        if len(self._members_) > 1:
            config["members"] = len(self._members_)
        return save_model(path, config, self.flow_.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> DensityEstimator:
        """Read a model written by :meth:`save`.

        Nothing is built before the file is checked: member sizes, every config field (the
        categorical part too: levels, counts, and that they imply the stored flow's columns),
        and that the config agrees with the stored tensors (column counts, layers, sizes); then
        every tensor name and shape is compared with the built model before any weight is
        copied.

        Raises:
            FileNotFoundError: no such file.
            ValueError: a damaged, foreign, oversized or inconsistent file, or non-finite
                weights; the message names the file and the field or tensor at fault.
        """
        config, tensors = load_model(path)
        params, spec, history, fit_time = check_config(
            config, path, flows=FLOWS, params=cls._PARAMS
        )
        parts, log_weights = member_tensors(config, tensors, path, limit=MAX_ENSEMBLE)
        for part in parts:
            check_sizes(spec, part, path)
        categories = check_categorical(config, path, spec)
        atoms = check_atoms(config, path, spec)
        block = check_split_block(config, path)
        spec = TableSpec.from_dict(spec)
        try:
            estimator = cls(**params, verbose=False)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: config field params is invalid: {error}") from error
        estimator.spec_ = spec
        estimator.categories_ = categories
        estimator.atoms_ = atoms
        estimator.split_block_ = block
        estimator.selection_ = _stored_selection(config, path, spec)  # before the base is built
        flows = [build_with_weights(estimator._build, spec, part, path) for part in parts]
        estimator.flow_ = (
            flows[0] if len(flows) == 1 else FlowMixture(flows, log_weights.exp()).eval()
        )
        estimator.history_ = history
        estimator.fit_time_ = fit_time
        return estimator

    def info(self) -> dict:
        """A JSON-serialisable summary of the fitted model (``categorical_columns``: the number
        of levels of each categorical column; ``level_columns``: the levels of the numeric
        ones; ``atoms``: ``{column: {"value", "share"}}`` of the continuous columns with a point
        mass; ``ensemble_members``: flows in the model's equal-weight mixture, 1 without an
        ensemble (``parameters`` counts all of them, ``epochs`` and ``best_validation_nll`` are
        the first's); ``split_block_rows``: rows per block of the validation split or cross-validation
        folds, above 1 when the rows were found serial, see
        :func:`~normflows_sci._selection.serial_block`)."""
        self._check_fitted()
        spec = self.spec_
        targets = spec.target_columns
        history = self.history_
        val = [v for v in history["val_loss"] if not math.isnan(v)]
        records = getattr(self, "selection_", None) or ()
        chosen = [r for r in records if r["status"] == "chosen" and r.get("folds")]
        if not val and chosen and chosen[0]["validation_nll"] is not None:
            val = [chosen[0]["validation_nll"]]  # refitted on all rows: its cross-validated NLL
        categories = self._categories
        return {
            "package_version": __version__,
            "flow": spec.flow,
            "columns": self.columns_,
            "target_columns": self.target_columns_,
            "context_columns": self.context_columns_,
            "categorical_columns": {} if categories is None else categories.info(),
            "level_columns": {} if categories is None else categories.numeric_levels(),
            "atoms": {
                c: {"value": value, "share": share}
                for c, (value, share) in (getattr(self, "atoms_", None) or {}).items()
            },
            "split_block_rows": getattr(self, "split_block_", 1),
            "discrete_columns": [c for c, d in zip(targets, spec.discrete) if d],
            "bounds": {
                c: [lo, hi]
                for c, lo, hi in zip(targets, spec.lower, spec.upper)
                if lo is not None or hi is not None
            },
            "heavy_tailed_columns": {
                c: df for c, df in zip(targets, spec.tail_df) if df is not None
            },
            "parameters": int(sum(p.numel() for p in self.flow_.parameters())),
            "ensemble_members": len(self._members_),
            "epochs": int(history["epoch"][-1]) if history["epoch"] else 0,
            "best_validation_nll": float(min(val)) if val else None,
            "fit_time_seconds": float(self.fit_time_),
            "selection": getattr(self, "selection_", None),
        }
