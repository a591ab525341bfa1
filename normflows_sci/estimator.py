"""DensityEstimator: "here is my table, give me its density", scikit-learn style.

Preprocessing is part of the model, as transforms with exact Jacobians computed in float64 (the
flow network itself runs in float32), so every score is a log-density in the ORIGINAL units of
the data, whatever their scale (1e-12 or 1e300, or far from the origin):

    data --(bounded columns: logit / softplus)--> R^d --(standardise)--> float32 flow --> base

Integer columns are dequantised (uniform noise in training; the probability of each integer is
integrated by quadrature when scoring), heavy-tailed columns get Student-t base marginals with
tail indices estimated from the data, and ``context`` columns make the model conditional,
``p(targets | context)``.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from normflows_sci._modelfile import build_with_weights, check_config, check_sizes, fit_fingerprint
from normflows_sci.distributions import StandardNormal, TailAdaptiveBase
from normflows_sci.flows import CNF, MAF, NSF, Flow, RealNVP, TarFlow
from normflows_sci.io import load_model, save_model
from normflows_sci.quadrature import combine_cell_estimates, unit_cell_rule, warn_imprecise_cells
from normflows_sci.training import fit_flow
from normflows_sci.transforms import BoundaryTransform, CompositeTransform, ElementwiseAffine

__all__ = ["DensityEstimator", "hill_tail_index"]

_FLOWS = {"nsf": NSF, "maf": MAF, "realnvp": RealNVP, "tarflow": TarFlow, "cnf": CNF}
# Columns whose estimated tail index falls below this get a Student-t base marginal.
HEAVY_TAIL_THRESHOLD = 4.0
# Below this many rows the tail index rests on too few points to act on it automatically.
MIN_ROWS_FOR_TAILS = 1000
_BOUND_MARGIN = 1e-6
# Fewest training rows a density can be fitted to (a spread needs two).
MIN_ROWS = 2
# Rows pushed through the flow at once by ``sample`` (bounds the memory of large draws).
SAMPLE_CHUNK_ROWS = 65536
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _default_hidden(rows: int) -> tuple[int, int]:
    """Conditioner widths scaled to the table: small tables overfit wide networks in a few epochs
    (measured on 100-400-row tables, where (128, 128) lost to a 2-4 component Gaussian mixture)."""
    if rows >= 5000:
        return (128, 128)
    if rows >= 1000:
        return (64, 64)
    return (32, 32)


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
    magnitudes = np.sort(np.abs(np.asarray(values, dtype=np.float64)))[::-1]
    k = max(10, int(fraction * len(magnitudes)))
    if len(magnitudes) <= k + 1 or magnitudes[k] <= 0:
        return math.inf
    logs = np.log(magnitudes[:k]) - np.log(magnitudes[k])
    mean = logs.mean()
    return math.inf if mean <= 0 else float(1.0 / mean)


def _compute_dtype_buffer(module: nn.Module) -> None:
    """A non-persistent empty buffer that records the dtype the flow network computes in: it
    follows ``.to(...)``/``.double()`` with the network and is not part of saved weights."""
    module.register_buffer("compute", torch.zeros(0), persistent=False)


class _Standardizer(nn.Module):
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


class _Standardize(ElementwiseAffine):
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


def _float64_bounds(lower: list, upper: list) -> BoundaryTransform:
    """A :class:`BoundaryTransform` whose float64 buffers hold the bounds exactly (its constructor
    rounds them to the default dtype: a bound of 0.1 would move by 1.5e-9, past a tight margin)."""
    bounds = BoundaryTransform(lower, upper).double()
    stand_ins = {"low": (lower, 0.0), "high": (upper, 1.0)}  # open sides, as the constructor has
    with torch.no_grad():
        for name, (values, open_value) in stand_ins.items():
            exact = [float(v) if v is not None and math.isfinite(v) else open_value for v in values]
            getattr(bounds, name).copy_(torch.tensor(exact, dtype=torch.float64))
    return bounds


class _TableFlow(Flow):
    """The estimator's model: float64 preprocessing in front of a flow network in float32.

    Its inputs (and context) may be float64, which the preprocessing standardises before the cast
    to the network's dtype, as well as the network's own dtype.
    """

    def _check_dtype(self, name: str, value: Tensor) -> None:
        if value.dtype == torch.float64:
            return
        check = getattr(super(), "_check_dtype", None)
        if check is not None:
            check(name, value)


def _robust_moments(points: Tensor) -> tuple[Tensor, Tensor]:
    """Column mean and (population) standard deviation of float64 ``(n, d)`` points, computed
    on values divided by each column's largest magnitude so squares of 1e300 do not overflow."""
    scale = points.abs().amax(0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    unit = points / scale
    return unit.mean(0) * scale, unit.std(0, correction=0) * scale


def _to_array(X, name: str, columns: list[str] | None = None) -> tuple[np.ndarray, list[str], bool]:
    """``(values float64 (n, d), column names, was_dataframe)`` with clear errors."""
    is_frame = hasattr(X, "columns") and hasattr(X, "to_numpy")
    if is_frame:
        names = [str(c) for c in X.columns]
        try:
            values = X.to_numpy(dtype=np.float64, copy=True)
        except (TypeError, ValueError) as error:
            raise TypeError(f"{name} must hold numeric columns only: {error}") from error
    else:
        if isinstance(X, Tensor):
            X = X.detach().cpu().numpy()
        try:
            values = np.array(X, dtype=np.float64)  # a private, writable copy
        except (TypeError, ValueError) as error:
            raise TypeError(f"{name} must be a numeric array or DataFrame: {error}") from error
        names = None
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
    missing = np.isnan(values)
    if missing.any():
        bad = {names[j]: int(missing[:, j].sum()) for j in np.nonzero(missing.any(0))[0]}
        raise ValueError(
            f"{name} has missing values (NaN) in columns {bad}: impute or drop them first"
        )
    if not np.isfinite(values).all():
        bad = [names[j] for j in np.nonzero(~np.isfinite(values).all(0))[0]]
        raise ValueError(f"{name} has infinite values in columns {bad}")
    return values, list(names), is_frame


def _standardization(
    targets: np.ndarray, step: list, boundary: BoundaryTransform | None
) -> tuple[Tensor, Tensor, np.ndarray]:
    """Mean and std (float64 ``(d,)``) of the unbounded, dequantised target columns, and the
    standardised cell midpoints ``(n, d)`` (for the tail indices).

    A discrete column's statistics are those of its dequantised variable ``k + step * u``: the two
    Gauss-Legendre nodes ``u = 1/2 -+ 1/sqrt(12)`` have the mean and variance of ``U[0, 1)``, so even
    a one-level column has the spread of its cell.
    """
    steps = torch.tensor(step, dtype=torch.float64)
    data = torch.as_tensor(targets, dtype=torch.float64)
    nodes = [0.5 - 0.5 / math.sqrt(3.0), 0.5 + 0.5 / math.sqrt(3.0), 0.5]
    with torch.no_grad():
        points = [data + node * steps for node in nodes]
        if boundary is not None:
            points = [boundary(p)[0] for p in points]
    mean, std = _robust_moments(torch.cat(points[:2]))
    if not bool((torch.isfinite(mean) & torch.isfinite(std) & (std > 0)).all()):
        raise ValueError(
            "the bounds transform leaves some target columns without a finite, positive spread "
            f"(std {std.tolist()}): check the bounds against the data"
        )
    return mean, std, ((points[2] - mean) / std).numpy()


def _check_flow_range(model: Flow, spec: dict, values: np.ndarray, what: str) -> None:
    """Raise if a standardised target or context value of ``values`` (all columns, float64) lies
    beyond float32's range, in which the flow network computes; names the column."""
    columns = spec["columns"]
    targets = values[:, [columns.index(c) for c in spec["target_columns"]]]
    *bounds, standardize = list(model.transform)[:-1]
    device = standardize.shift.device
    with torch.no_grad():
        points = torch.as_tensor(targets + 0.5 * np.asarray(spec["step"]), device=device)
        for step in bounds:
            points = step(points)[0]
        checks = [(standardize.standardize(points), spec["target_columns"], targets)]
        if spec["context_columns"]:
            context = values[:, [columns.index(c) for c in spec["context_columns"]]]
            scaled = model.embedding.standardize(torch.as_tensor(context, device=device))
            checks.append((scaled, spec["context_columns"], context))
    for scaled, names, raw in checks:
        beyond = ~(scaled.abs() <= _FLOAT32_MAX)
        if bool(beyond.any()):
            row, col = (int(i) for i in torch.nonzero(beyond)[0])
            raise ValueError(
                f"column {names[col]!r} of {what} has the value {raw[row, col]:.6g} (row {row}), "
                f"{float(scaled[row, col]):.3g} in the model's standardised units: beyond "
                f"float32's range (about 3.4e38), in which the flow computes"
            )


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


class DensityEstimator:
    """Fit a normalizing flow to a table and get exact log-densities in the original units.

    Args:
        flow: ``"nsf"`` (autoregressive neural spline flow, default), ``"maf"``, ``"realnvp"`` or
            ``"tarflow"`` (Transformer autoregressive flow: ``transforms`` blocks of
            ``len(hidden_features)`` layers, width ``max(hidden_features)``, spline maps) or
            ``"cnf"`` (continuous flow with exact divergence, trained by maximum likelihood
            through the ODE solver: exact but slow; ``transforms`` and ``bins`` are unused).
        transforms: number of flow layers (default 5; 3 below 1000 training rows).
        hidden_features: conditioner hidden widths (default (128, 128) from 5000 training rows,
            (64, 64) from 1000, (32, 32) below).
        bins: spline bins (NSF).
        bounds: ``{column: (low, high)}`` with ``None`` for an open side, ``"auto"`` (columns within
            [0, 1] or non-negative and piled near 0 are bounded) or None (no bounds).
        discrete: integer-valued columns to dequantise: a list, ``"auto"`` (every integer-valued
            column) or None. Each one's lattice spacing is detected (e.g. 5 for values in steps of
            5); its score is the log-probability of the value, its samples lie on the lattice.
        heavy_tails: ``"auto"`` (Student-t base marginals where the Hill tail index is below 4,
            with at least 1000 training rows), True (every column) or False.
        context: columns to condition on; the model is then ``p(other columns | context)``.
        batch_size: minibatch size (default: 256, smaller for small tables).
        learning_rate, weight_decay, clip_grad, schedule: optimiser settings (see ``fit_flow``).
        max_epochs: epoch budget (default 200 when neither budget is given).
        max_time: wall-clock budget in seconds. With ``max_time`` alone (no ``max_epochs``) the
            cosine schedule, which needs a known length, becomes the plateau schedule.
        patience: epochs without validation improvement before stopping.
        validation_fraction: share of rows held out for early stopping when ``X_val`` is not given.
        random_state: seed for the split, the initialisation, training and sampling.
        verbose: progress bar and a summary line.
        device: torch device to train on (default CPU).

    Attributes:
        ``flow_``: the fitted model (float64 preprocessing, float32 flow network); ``spec_``,
        ``history_``, ``fit_time_``; ``last_score_error_``: ``(n,)`` standard errors (nats) of the
        last :meth:`score_samples` call (non-zero only for more than three integer columns).

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
        bounds: dict | str | None = None,
        discrete: Sequence | str | None = None,
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
        verbose: bool = True,
        device: str | torch.device | None = None,
    ):
        if flow not in _FLOWS:
            raise ValueError(f"flow must be one of {sorted(_FLOWS)}, got {flow!r}")
        if heavy_tails not in ("auto", True, False):
            raise ValueError(f"heavy_tails must be 'auto', True or False, got {heavy_tails!r}")
        if not 0.0 <= validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
        self.flow = flow
        self.transforms = transforms
        self.hidden_features = hidden_features
        self.bins = bins
        self.bounds = bounds
        self.discrete = discrete
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
        self.verbose = verbose
        self.device = device

    # ----------------------------------------------------------------------------- structure
    def _resolve_columns(self, spec, names: list[str], what: str) -> list[int]:
        indices = []
        for item in spec or []:
            if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
                if not 0 <= item < len(names):
                    raise ValueError(f"{what} column index {item} is out of range for {len(names)}")
                indices.append(int(item))
            elif str(item) in names:
                indices.append(names.index(str(item)))
            else:
                raise ValueError(f"{what} column {item!r} not found; columns are {names}")
        return indices

    def _spec_from_data(self, values: np.ndarray, names: list[str]) -> dict:
        """Decide columns, bounds, discreteness and tails from the training data."""
        context_idx = self._resolve_columns(self.context, names, "context")
        target_idx = [j for j in range(len(names)) if j not in context_idx]
        if not target_idx:
            raise ValueError("every column is a context column: nothing left to model")
        targets = values[:, target_idx]
        target_names = [names[j] for j in target_idx]
        integral = np.all(targets == np.round(targets), axis=0)
        if self.discrete == "auto":
            discrete = [bool(v) for v in integral]
        else:
            chosen = set(
                self._resolve_columns([c for c in (self.discrete or [])], names, "discrete")
            )
            if chosen & set(context_idx):
                raise ValueError("discrete columns must not be context columns")
            discrete = [j in chosen for j in target_idx]
            for name, is_discrete, is_integral in zip(target_names, discrete, integral):
                if is_discrete and not is_integral:
                    raise ValueError(f"discrete column {name!r} has non-integer values")
        lower, upper = [None] * len(target_idx), [None] * len(target_idx)
        if isinstance(self.bounds, dict):
            for key, pair in self.bounds.items():
                (j,) = self._resolve_columns([key], names, "bounds")
                if j not in target_idx:
                    raise ValueError(f"bounds given for context column {names[j]!r}")
                if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                    raise ValueError(f"bounds[{key!r}] must be (low, high), got {pair!r}")
                lower[target_idx.index(j)], upper[target_idx.index(j)] = pair
        elif self.bounds == "auto":
            for i, column in enumerate(targets.T):
                low, high, spread = column.min(), column.max(), column.std() + 1e-12
                if low >= 0 and high <= 1 and not discrete[i]:
                    lower[i], upper[i] = 0.0, 1.0
                elif low >= 0 and low < 0.1 * spread:
                    lower[i] = 0.0
        elif self.bounds is not None:
            raise ValueError(f"bounds must be a dict, 'auto' or None, got {self.bounds!r}")
        # Lattice of each discrete column: spacing (e.g. 5 for winds in 5-knot steps) and origin.
        step, origin = [0.0] * len(target_idx), [0.0] * len(target_idx)
        for i, column in enumerate(targets.T):
            if discrete[i]:
                levels = np.unique(column).astype(np.int64)
                spacing = int(np.gcd.reduce(np.diff(levels))) if len(levels) > 1 else 1
                step[i], origin[i] = float(max(spacing, 1)), float(levels[0])
        return {
            "columns": names,
            "context_columns": [names[j] for j in context_idx],
            "target_columns": target_names,
            "discrete": discrete,
            "step": step,
            "origin": origin,
            "lower": lower,
            "upper": upper,
        }

    def _effective_bounds(self, spec: dict, targets: np.ndarray) -> tuple[list, list]:
        """Bounds of the (dequantised) variables, widened by a hair so points on a bound are
        finite; checks the data respect the declared bounds."""
        lower, upper = [], []
        for i, name in enumerate(spec["target_columns"]):
            low, high, step = spec["lower"][i], spec["upper"][i], spec["step"][i]
            column = targets[:, i]
            if low is not None and column.min() < low:
                raise ValueError(f"column {name!r} has values below its lower bound {low}")
            if high is not None and column.max() > high:
                raise ValueError(f"column {name!r} has values above its upper bound {high}")
            # Relative to the column's own spread, however small (data at 1e-12 keep their shape).
            spread = float(_robust_moments(torch.as_tensor(column[:, None]))[1][0])
            scale = max(spread, 1.0) if step else (spread if spread > 0 else 1.0)
            margin = _BOUND_MARGIN * scale
            lower.append(None if low is None else float(low) - margin)
            upper.append(None if high is None else float(high) + step + margin)
        return lower, upper

    def _check_spread(self, spec: dict, targets: np.ndarray, context: np.ndarray) -> Tensor:
        """Refuse constant target columns; returns the context scales (1 for a constant one).

        A constant continuous column is a point mass, which has no density. A constant integer
        column declared discrete is fine: its dequantised variable spreads over its cell and its
        one level gets probability close to 1.
        """
        flat = [
            name
            for name, column, discrete in zip(spec["target_columns"], targets.T, spec["discrete"])
            if not discrete and np.ptp(column) == 0
        ]
        if flat:
            names = spec["target_columns"]
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
        std = _robust_moments(torch.as_tensor(context, dtype=torch.float64))[1]
        constant = [c for c, s in zip(spec["context_columns"], std.tolist()) if s == 0]
        if constant:
            warnings.warn(
                f"context columns {constant} are constant in the {len(context)} training rows: "
                "the model cannot learn how the targets depend on them",
                stacklevel=3,
            )
        return torch.where(std > 0, std, torch.ones_like(std))

    def _tail_df(self, standardized: np.ndarray) -> list:
        """Student-t degrees of freedom per column (None for a Gaussian base marginal)."""
        tail_df = []
        for column in standardized.T:
            index = hill_tail_index(column)
            heavy = self.heavy_tails is True or (
                self.heavy_tails == "auto"
                and len(column) >= MIN_ROWS_FOR_TAILS
                and index < HEAVY_TAIL_THRESHOLD
            )
            tail_df.append(float(np.clip(index, 1.0, 30.0)) if heavy else None)
        return tail_df

    def _build(self, spec: dict) -> Flow:
        """The full model (preprocessing + flow) from a spec; parameters from init or a file."""
        features = len(spec["target_columns"])
        context_features = len(spec["context_columns"])
        steps = []
        # Preprocessing in float64 (exact Jacobians for data at any scale); the flow in float32.
        if any(v is not None for v in spec["lower_effective"] + spec["upper_effective"]):
            steps.append(_float64_bounds(spec["lower_effective"], spec["upper_effective"]))
        steps.append(_Standardize(features))
        heavy = spec["tail_df"]
        base = (
            TailAdaptiveBase(heavy)
            if any(df is not None for df in heavy)
            else StandardNormal(features)
        )
        hidden = tuple(spec["hidden_features"])
        if spec["flow"] == "tarflow":
            # transforms -> blocks; hidden widths -> Transformer width (largest), layers per block
            options = dict(
                blocks=spec["transforms"],
                width=max(hidden),
                layers_per_block=len(hidden),
                transform="spline",
                bins=spec["bins"],
                base=base,
            )
        elif spec["flow"] == "cnf":
            options = dict(hidden_features=hidden, base=base)
        else:
            options = dict(transforms=spec["transforms"], hidden_features=hidden, base=base)
            if spec["flow"] == "nsf":
                options["bins"] = spec["bins"]
        core = _FLOWS[spec["flow"]](features, context_features, **options)
        embedding = _Standardizer(context_features) if context_features else None
        transform = CompositeTransform([*steps, core.transform])
        model = _TableFlow(transform, core.base, embedding=embedding)
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

        Args:
            X: ``(n, d)`` training table.
            X_val: optional validation table for early stopping (default: a random
                ``validation_fraction`` of ``X``).
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
        values, names, is_frame = _to_array(X, "X")
        if columns is not None:
            if is_frame:
                raise ValueError(
                    "columns is only for numpy input: a DataFrame brings its own names"
                )
            if len(columns) != values.shape[1]:
                raise ValueError(f"columns must name {values.shape[1]} columns, got {len(columns)}")
            names = [str(c) for c in columns]
        if len(values) < MIN_ROWS:
            raise ValueError(
                f"X has {len(values)} row: fitting a density needs at least {MIN_ROWS} rows"
            )
        spec = self._spec_from_data(values, names)
        seed = self._seed()
        rng = np.random.default_rng(seed)
        if X_val is not None:
            val_values, _, _ = _to_array(X_val, "X_val", names)
            train_values = values
        elif self.validation_fraction > 0 and len(values) >= 20:
            order = rng.permutation(len(values))
            cut = max(1, round(self.validation_fraction * len(values)))
            val_values, train_values = values[order[:cut]], values[order[cut:]]
        else:
            val_values, train_values = None, values
        target_idx = [names.index(c) for c in spec["target_columns"]]
        context_idx = [names.index(c) for c in spec["context_columns"]]
        targets = train_values[:, target_idx]
        lower, upper = self._effective_bounds(spec, targets)
        if val_values is not None:
            self._effective_bounds(spec, val_values[:, target_idx])
        spec.update(
            flow=self.flow,
            transforms=self.transforms or (5 if len(train_values) >= 1000 else 3),
            hidden_features=list(
                (self.hidden_features,)
                if isinstance(self.hidden_features, int)
                else (self.hidden_features or _default_hidden(len(train_values)))
            ),
            bins=self.bins,
            lower_effective=lower,
            upper_effective=upper,
            frame=is_frame,
        )
        context_std = self._check_spread(spec, targets, train_values[:, context_idx])
        # Standardisation statistics and tail indices of the unbounded representation, in float64.
        boundary = (
            _float64_bounds(lower, upper) if any(v is not None for v in lower + upper) else None
        )
        mean, std, standardized = _standardization(targets, spec["step"], boundary)
        spec["tail_df"] = self._tail_df(standardized)

        device = torch.device(self.device) if self.device is not None else torch.device("cpu")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self._build(spec)
        transform = model.transform[1] if boundary is not None else model.transform[0]
        with torch.no_grad():
            transform.shift.copy_(-mean / std)
            transform.log_scale.copy_(-std.log())
            if model.embedding is not None:
                ctx = torch.as_tensor(train_values[:, context_idx])
                model.embedding.mean.copy_(_robust_moments(ctx)[0])
                model.embedding.std.copy_(context_std)
        _check_flow_range(model, spec, train_values, "X")
        if val_values is not None:
            _check_flow_range(model, spec, val_values, "X_val")
        model = model.to(device)

        def tensor(array):
            # float64: the preprocessing inside the model casts to float32 after standardising.
            return torch.as_tensor(array, dtype=torch.float64, device=device)

        noise_scale = tensor(spec["step"])

        def dequantize(batch: Tensor, generator: torch.Generator) -> Tensor:
            noise = torch.rand(batch.shape, generator=generator, device=batch.device)
            return batch + noise * noise_scale

        batch_size = self.batch_size or int(np.clip(len(train_values) // 20, 32, 256))
        max_epochs = self.max_epochs
        if max_epochs is None and self.max_time is None:
            max_epochs = 200
        started = time.perf_counter()
        history = fit_flow(
            model,
            tensor(targets),
            context=tensor(train_values[:, context_idx]) if context_idx else None,
            val_data=None if val_values is None else tensor(val_values[:, target_idx]),
            val_context=(
                tensor(val_values[:, context_idx])
                if context_idx and val_values is not None
                else None
            ),
            batch_size=batch_size,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            max_epochs=max_epochs,
            max_time=self.max_time,
            patience=self.patience if val_values is not None else None,
            schedule=self.schedule,
            clip_grad=self.clip_grad,
            seed=seed,
            transform_batch=dequantize if any(spec["discrete"]) else None,
            progress=self.verbose,
            checkpoint=checkpoint,
            resume=resume,
            fingerprint=fit_fingerprint(self.get_params(), values, names, val_values),
        )
        _check_trained(model, history, validated=val_values is not None)
        self.flow_ = model
        self.spec_ = spec
        self.history_ = history
        self.fit_time_ = time.perf_counter() - started
        if self.verbose and history["epoch"]:
            best = np.nanmin(history["val_loss"]) if val_values is not None else math.nan
            print(
                f"fitted {spec['flow']} in {self.fit_time_:.1f} s, {history['epoch'][-1]} epochs; "
                f"validation NLL {best:.4f} nats/row"
            )
        return self

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
    def columns_(self) -> list[str]:
        self._check_fitted()
        return list(self.spec_["columns"])

    @property
    def target_columns_(self) -> list[str]:
        self._check_fitted()
        return list(self.spec_["target_columns"])

    @property
    def context_columns_(self) -> list[str]:
        self._check_fitted()
        return list(self.spec_["context_columns"])

    def _device(self) -> torch.device:
        return next(iter(self.flow_.buffers())).device

    def _cell_rule(self) -> tuple[np.ndarray, np.ndarray]:
        """Nodes ``(R, m, k)`` and log-weights ``(R, m)`` over the cells of the ``k`` integer
        columns (``(1, 1, 0)`` and ``(1, 1)`` without any): ``P(v)`` is the integral of the
        dequantised density over ``[v, v + step)``."""
        discrete = np.asarray(self.spec_["discrete"], dtype=bool)
        if not discrete.any():
            return np.zeros((1, 1, 0)), np.zeros((1, 1))
        step = np.asarray(self.spec_["step"])[discrete]
        nodes, log_w = unit_cell_rule(int(discrete.sum()))
        return nodes * step, log_w + np.log(step).sum()

    def _log_prob_at(self, targets: np.ndarray, context: np.ndarray, nodes: np.ndarray):
        """Model log-densities ``(P, rows)`` at ``targets`` shifted by each of the ``P`` nodes
        (flattened from ``nodes``) in the integer columns; all in float64."""
        device = self._device()
        discrete = torch.as_tensor(self.spec_["discrete"], dtype=torch.bool, device=device)
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

    def score_samples(self, X, *, batch_size: int = 8192) -> np.ndarray:
        """Log-density of each row in the original units (log-probability for integer columns,
        log-density for the rest; conditional on the context columns if any).

        The probability of a row's integer cell is the integral of the dequantised density over
        it (:mod:`normflows_sci.quadrature`): exact Gauss-Legendre quadrature for up to
        ``EXACT_MAX_DIMS`` (3) integer columns; above, randomised quasi-Monte Carlo (scrambled
        Sobol points from a fixed seed: the same scores on every call) at a cost per row that does
        not grow with the number of integer columns. ``last_score_error_`` then holds the
        estimated standard error of each row's log-probability in nats (0 for exact rules and
        continuous columns), and a warning names the rows whose error exceeds
        ``QMC_STDERR_TOLERANCE`` (0.05 nats). Rows so far from the data that the float32 network
        overflows score ``-inf`` (a NaN score comes with a warning).

        Args:
            X: ``(n, columns)`` rows with the columns of the training table.
            batch_size: density evaluations per pass through the flow (bounds the memory).

        Returns:
            ``(n,)`` float64, in nats.

        Raises:
            ValueError: wrong columns, values outside the bounds, non-integers in discrete
                columns, or values that lie beyond float32's range once standardised.
        """
        self._check_fitted()
        spec = self.spec_
        values, _, _ = _to_array(X, "X", spec["columns"])
        targets = values[:, [spec["columns"].index(c) for c in spec["target_columns"]]]
        context = values[:, [spec["columns"].index(c) for c in spec["context_columns"]]]
        self._effective_bounds(spec, targets)
        discrete = np.asarray(spec["discrete"], dtype=bool)
        if discrete.any() and not np.all(targets[:, discrete] == np.round(targets[:, discrete])):
            raise ValueError("discrete columns of X must hold integers")
        _check_flow_range(self.flow_, spec, values, "X")
        nodes, log_w = self._cell_rule()
        rows_per_pass = max(1, batch_size // log_w.size)
        out, error = np.empty(len(values)), np.empty(len(values))
        self.flow_.eval()
        for start in range(0, len(values), rows_per_pass):
            part = slice(start, start + rows_per_pass)
            log_p = self._log_prob_at(targets[part], context[part], nodes)
            terms = log_p.reshape(*log_w.shape, -1) + log_w[..., None]
            out[part], error[part] = combine_cell_estimates(terms)
        self.last_score_error_ = error
        warn_imprecise_cells(error, stacklevel=3)
        failed = np.flatnonzero(np.isnan(out))
        if failed.size:
            warnings.warn(
                f"{failed.size} of {len(out)} rows of X score NaN (first: row {failed[0]}): the "
                "flow network's float32 arithmetic overflowed on values far outside the training "
                "data",
                stacklevel=2,
            )
        return out

    def score(self, X) -> float:
        """Mean log-density per row (higher is better)."""
        return float(np.mean(self.score_samples(X)))

    def _onto_support(self, samples: np.ndarray) -> np.ndarray:
        """Integer columns onto their lattice; every column into its declared bounds.

        The model's support reaches a hair beyond each bound (the margin that keeps points on a
        bound finite), so a draw can land in it: it is moved onto the bound (for an integer
        column, onto the nearest lattice point within the bounds).
        """
        spec = self.spec_
        discrete = np.asarray(spec["discrete"], dtype=bool)
        step = np.asarray(spec["step"])[discrete]
        origin = np.asarray(spec["origin"])[discrete]
        samples[:, discrete] = origin + step * np.floor((samples[:, discrete] - origin) / step)
        low = np.array([-np.inf if v is None else v for v in spec["lower"]], dtype=np.float64)
        high = np.array([np.inf if v is None else v for v in spec["upper"]], dtype=np.float64)
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
            ``(n, d)`` float64 array of the target columns (a DataFrame if fitted on one). The
            rows go through the flow ``SAMPLE_CHUNK_ROWS`` at a time; the result does not depend
            on the chunk size.
        """
        self._check_fitted()
        spec = self.spec_
        device = self._device()
        seed = random_state if random_state is not None else self.random_state
        generator = torch.Generator(device)
        generator.manual_seed(int(seed) if seed is not None else torch.seed() % 2**62)
        # The latent draws are made at once (so chunking does not change them) and pushed through
        # the flow SAMPLE_CHUNK_ROWS rows at a time: memory bounded by the chunk, not by n.
        chunk = SAMPLE_CHUNK_ROWS
        if spec["context_columns"]:
            if context is None:
                raise ValueError(
                    f"context is required: the model is conditional on {spec['context_columns']}"
                )
            ctx_values, _, _ = _to_array(context, "context", spec["context_columns"])
            ctx = torch.as_tensor(ctx_values, dtype=torch.float64, device=device)
            with torch.no_grad():
                draws = self.flow_.sample(1, ctx, generator=generator, chunk_size=chunk)[0]
        else:
            if context is not None:
                raise ValueError("context given, but the model has no context columns")
            if n is None or int(n) != n or n < 1:
                raise ValueError(f"n must be a positive integer, got {n!r}")
            with torch.no_grad():
                draws = self.flow_.sample(int(n), generator=generator, chunk_size=chunk)
        samples = self._onto_support(draws.double().cpu().numpy())
        if spec["frame"]:
            import pandas as pd

            return pd.DataFrame(samples, columns=spec["target_columns"])
        return samples

    # ----------------------------------------------------------------------------- files
    _PARAMS = (
        "flow", "transforms", "hidden_features", "bins", "bounds", "discrete", "heavy_tails",
        "context", "batch_size", "learning_rate", "weight_decay", "clip_grad", "schedule",
        "max_epochs", "max_time", "patience", "validation_fraction", "random_state",
    )  # fmt: skip

    def get_params(self) -> dict:
        """Constructor arguments (scikit-learn convention)."""
        params = {name: getattr(self, name) for name in self._PARAMS}
        if isinstance(params["hidden_features"], tuple):
            params["hidden_features"] = list(params["hidden_features"])
        return params

    def save(self, path: str | os.PathLike):
        """Write the fitted model to ``path`` (JSON config + weights, atomically); refuses
        (``ValueError``) weights with NaN or infinite entries."""
        self._check_fitted()
        config = {
            "kind": "DensityEstimator",
            "params": self.get_params(),
            "spec": self.spec_,
            "history": {k: [float(v) for v in vs] for k, vs in self.history_.items()},
            "fit_time": self.fit_time_,
        }
        return save_model(path, config, self.flow_.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> DensityEstimator:
        """Read a model written by :meth:`save`.

        Nothing is built before the file is checked: member sizes, every config field, and that
        the config agrees with the stored tensors (column counts, layers, sizes); then every
        tensor name and shape is compared with the built model before any weight is copied.

        Raises:
            FileNotFoundError: no such file.
            ValueError: a damaged, foreign, oversized or inconsistent file, or non-finite
                weights; the message names the file and the field or tensor at fault.
        """
        config, tensors = load_model(path)
        params, spec, history, fit_time = check_config(
            config, path, flows=_FLOWS, params=cls._PARAMS
        )
        check_sizes(spec, tensors, path)
        try:
            estimator = cls(**params, verbose=False)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: config field params is invalid: {error}") from error
        estimator.spec_ = spec
        estimator.flow_ = build_with_weights(estimator._build, spec, tensors, path)
        estimator.history_ = history
        estimator.fit_time_ = fit_time
        return estimator

    def info(self) -> dict:
        """A JSON-serialisable summary of the fitted model."""
        from normflows_sci import __version__

        self._check_fitted()
        spec = self.spec_
        history = self.history_
        val = [v for v in history["val_loss"] if not math.isnan(v)]
        return {
            "package_version": __version__,
            "flow": spec["flow"],
            "columns": spec["columns"],
            "target_columns": spec["target_columns"],
            "context_columns": spec["context_columns"],
            "discrete_columns": [c for c, d in zip(spec["target_columns"], spec["discrete"]) if d],
            "bounds": {
                c: [lo, hi]
                for c, lo, hi in zip(spec["target_columns"], spec["lower"], spec["upper"])
                if lo is not None or hi is not None
            },
            "heavy_tailed_columns": {
                c: df for c, df in zip(spec["target_columns"], spec["tail_df"]) if df is not None
            },
            "parameters": int(sum(p.numel() for p in self.flow_.parameters())),
            "epochs": int(history["epoch"][-1]) if history["epoch"] else 0,
            "best_validation_nll": float(min(val)) if val else None,
            "fit_time_seconds": float(self.fit_time_),
        }
