"""Diagnostic figures for density models: training curves, corner plots and 1-D marginals.

Figures are built on :class:`matplotlib.figure.Figure` directly (the Agg renderer, no pyplot), so
nothing here changes the interactive backend or global pyplot state, and it works headless. Every
function writes its file atomically (a temporary file in the same folder, then a rename), so an
interrupted run never leaves a half-written image, and returns the path. Pass ``ax``/``fig`` to
draw into your own figure; with ``path=None`` nothing is written and ``None`` is returned.

Example:
    >>> import numpy as np, tempfile, os
    >>> rng = np.random.default_rng(0)
    >>> data, samples = rng.normal(size=(500, 3)), rng.normal(size=(500, 3))
    >>> folder = tempfile.mkdtemp()
    >>> path = plot_corner(data, samples, os.path.join(folder, "corner.png"), columns=["a", "b", "c"])
    >>> open(path, "rb").read(8) == b"\\x89PNG\\r\\n\\x1a\\n"
    True
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from normflows_sci.checks import check_int
from normflows_sci.io import atomic_write

__all__ = ["plot_training_curves", "plot_corner", "plot_marginals", "plot_ramachandran"]

DATA_COLOR = "#1f77b4"
MODEL_COLOR = "#d62728"
LR_COLOR = "#7f7f7f"
_DPI = 120
# Shares of the probability mass enclosed by the contours: the 1-sigma and 2-sigma regions of a
# 2-D Gaussian (the convention of corner plots).
_CONTOUR_MASS = (1 - math.exp(-0.5), 1 - math.exp(-2.0))
_FORMATS = ("png", "pdf", "svg")


# ------------------------------------------------------------------------------------ helpers


def _save(fig: Figure, path) -> Path | None:
    """Render ``fig`` and write it to ``path`` atomically; ``None`` path writes nothing."""
    if path is None:
        return None
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    fmt = suffix if suffix in _FORMATS else "png"
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=_DPI)
    if path.exists() and not path.is_file() and not path.is_dir():
        # A device or pipe (/dev/null, a FIFO): renaming over it would replace the device.
        with open(path, "wb") as handle:
            handle.write(buffer.getvalue())
        return path
    return atomic_write(path, buffer.getvalue())


def _check_path(path, *, allow_none: bool) -> None:
    if path is None:
        if not allow_none:
            raise ValueError(
                "path is None: give a file path, or pass ax/fig to draw without saving"
            )
        return
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix and suffix not in _FORMATS:
        raise ValueError(f"path must end in one of .png, .pdf or .svg (or none), got {str(path)!r}")


def _table(name: str, values, *, features: int | None = None) -> tuple[np.ndarray, list | None]:
    """``(float64 (rows, columns) array, column names or None)`` from an array or DataFrame."""
    names = [str(c) for c in values.columns] if hasattr(values, "columns") else None
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name} must be a numeric array of shape (rows, columns): {error}"
        ) from None
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (rows, columns), got shape {array.shape}")
    if len(array) == 0:
        raise ValueError(f"{name} has no rows")
    if features is not None and array.shape[1] != features:
        raise ValueError(f"{name} must have {features} columns to match data, got {array.shape[1]}")
    return array, names


def _column_names(columns, default: list | None, features: int) -> list[str]:
    if columns is None:
        return default if default is not None else [f"x{i}" for i in range(features)]
    if isinstance(columns, str) or not isinstance(columns, Sequence):
        raise TypeError(f"columns must be a sequence of names, got {type(columns).__name__}")
    if len(columns) != features:
        raise ValueError(
            f"columns must name all {features} columns of data, got {len(columns)} names"
        )
    return [str(c) for c in columns]


def _finite_rows(array: np.ndarray) -> np.ndarray:
    return array[np.isfinite(array).all(axis=1)]


def _subsample(array: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    if len(array) <= max_points:
        return array
    index = np.random.default_rng(seed).choice(len(array), size=max_points, replace=False)
    return array[np.sort(index)]


def _limits(column: np.ndarray) -> tuple[float, float]:
    """Axis range showing the bulk of ``column``: its 0.1-99.9% quantiles plus 5% padding."""
    finite = column[np.isfinite(column)]
    if finite.size == 0:
        return -1.0, 1.0
    low, high = np.quantile(finite, [0.001, 0.999])
    if not high > low:
        low, high = float(finite.min()), float(finite.max())
    if not high > low:  # a constant column
        return low - 0.5, high + 0.5
    pad = 0.05 * (high - low)
    return float(low - pad), float(high + pad)


def _edges(column: np.ndarray, low: float, high: float, bins: int) -> np.ndarray:
    """About ``bins`` histogram edges over ``[low, high]``; integer-valued columns get bins that
    are whole multiples of their step, centred on the values, so no bin is empty by aliasing."""
    finite = column[np.isfinite(column)]
    values = np.unique(finite)
    if values.size < 2 or np.abs(values).max() > 2**52 or not np.all(values == np.round(values)):
        return np.linspace(low, high, bins + 1)
    step = float(np.gcd.reduce(np.diff(values).astype(np.int64)))
    width = step * max(1, math.ceil((high - low) / (bins * step)))
    first = values[0] - 0.5 * step
    start = first - width * math.ceil((first - low) / width)
    return np.arange(start, high + width, width)


def _style_ticks(ax: Axes, *, x: bool = True, y: bool = True) -> None:
    if x:
        ax.xaxis.set_major_locator(MaxNLocator(4, prune="both"))
    if y:
        ax.yaxis.set_major_locator(MaxNLocator(4, prune="both"))
    ax.tick_params(labelsize=8)


# ------------------------------------------------------------------------------ training curves


def plot_training_curves(history, path, *, title: str | None = None, ax: Axes | None = None):
    """Training and validation negative log-likelihood per epoch, learning rate on a twin axis.

    The epoch with the best validation loss is marked. When the first epochs' losses are far above
    the rest, the y-axis is cut so the end of training stays readable.

    Args:
        history: a mapping of equal-length lists (the
            :class:`~normflows_sci.training.TrainingHistory` of ``fit_flow``, or a dict) with
            ``"train_loss"`` and optionally ``"epoch"``, ``"val_loss"`` (NaN/None entries are
            skipped) and ``"learning_rate"``; or a fitted estimator with a ``history_`` attribute.
        path: output file (``.png``; ``.pdf``/``.svg`` also work), or ``None`` with ``ax``.
        title: figure title.
        ax: draw into this axes instead of a new figure.

    Returns:
        The path written (``pathlib.Path``), or ``None`` when ``path`` is ``None``.

    Raises:
        ValueError: ``history`` has no ``train_loss``, no epochs, or lists of different lengths.
    """
    _check_path(path, allow_none=ax is not None)
    epochs, train, val, rate = _history_columns(history)
    own_figure = ax is None
    fig = Figure(figsize=(6.4, 4.4), layout="constrained") if own_figure else ax.figure
    ax = fig.add_subplot() if ax is None else ax
    handles = _plot_losses(ax, epochs, train, val)
    _fit_loss_axis(ax, train, val)
    ax.set_xlabel("epoch")
    ax.set_ylabel("negative log-likelihood (nats per row)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if rate is not None:
        handles += _plot_learning_rate(ax, epochs, rate)
    if own_figure:  # below the axes: no curve can hide under it
        fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    else:
        ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.85)
    if title:
        ax.set_title(title)
    return _save(fig.figure, path)  # the root figure when ax lives in a subfigure


_HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "learning_rate", "time")


def _history_columns(history) -> tuple[np.ndarray, ...]:
    """Checked ``(epochs, train, val, learning_rate)`` float arrays of a training history.

    A column that is absent or all NaN/None is ``None``; missing epoch numbers count from 1.
    """
    if hasattr(history, "history_"):
        history = history.history_
    if not isinstance(history, Mapping):
        raise TypeError(
            f"history must be a dict (or mapping) of lists, got {type(history).__name__}"
        )
    if "train_loss" not in history:
        raise ValueError(f"history must have a 'train_loss' list, got keys {sorted(history)}")
    lengths = {k: len(v) for k, v in history.items() if k in _HISTORY_KEYS}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"history lists must have equal lengths, got {lengths}")
    epochs_count = lengths["train_loss"]
    if epochs_count == 0:
        raise ValueError("history has no epochs: nothing to plot")

    def series(key):
        values = history.get(key)
        if values is None:
            return None
        array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        return array if np.isfinite(array).any() else None

    epochs = series("epoch")
    epochs = np.arange(1, epochs_count + 1) if epochs is None else epochs
    return epochs, series("train_loss"), series("val_loss"), series("learning_rate")


def _plot_losses(ax: Axes, epochs: np.ndarray, train, val) -> list:
    """Train and validation curves, the best validation epoch starred; the legend handles."""
    marker = "o" if len(epochs) <= 30 else None
    handles = []
    if train is not None:
        handles += ax.plot(epochs, train, color=DATA_COLOR, marker=marker, ms=3, label="train")
    if val is not None:
        handles += ax.plot(epochs, val, color=MODEL_COLOR, marker=marker, ms=3, label="validation")
        best = int(np.nanargmin(val))
        handles += ax.plot(
            epochs[best],
            val[best],
            ls="none",
            marker="*",
            ms=11,
            color=MODEL_COLOR,
            markeredgecolor="black",
            markeredgewidth=0.6,
            label=f"best validation: {val[best]:.4g} (epoch {epochs[best]:g})",
        )
    return handles


def _fit_loss_axis(ax: Axes, train, val) -> None:
    """Y-range over the finite losses, cut above when the first epochs dwarf the rest."""
    losses = np.concatenate([s for s in (train, val) if s is not None])
    losses = losses[np.isfinite(losses)]
    if not losses.size:
        return
    low, high = float(losses.min()), float(losses.max())
    # A first epoch far above the rest would flatten the interesting part of the curves.
    typical = float(np.quantile(losses, 0.9))
    if high - low > 4 * (typical - low) > 0:
        high = typical + 0.5 * (typical - low)
    pad = 0.05 * (high - low) if high > low else 0.5
    ax.set_ylim(low - pad, high + pad)


def _plot_learning_rate(ax: Axes, epochs: np.ndarray, rate: np.ndarray) -> list:
    """The learning rate on a twin y-axis starting at 0; its legend handles."""
    twin = ax.twinx()
    handles = twin.plot(epochs, rate, color=LR_COLOR, ls="--", lw=1.2, label="learning rate")
    twin.set_ylabel("learning rate", color=LR_COLOR)
    twin.tick_params(axis="y", colors=LR_COLOR)
    # Scale by hand: matplotlib's offset text ("1e-3") would sit on top of the title.
    peak = float(np.nanmax(np.abs(rate)))
    exponent = math.floor(math.log10(peak)) if peak > 0 else 0
    exponent = exponent if exponent < -1 or exponent > 2 else 0
    if exponent:
        twin.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 10**exponent:g}"))
        twin.set_ylabel(f"learning rate (x 1e{exponent})", color=LR_COLOR)
    twin.set_ylim(bottom=0)
    return handles


# --------------------------------------------------------------------------------------- corner


def _mass_levels(density: np.ndarray) -> list[float] | None:
    """Density thresholds enclosing the ``_CONTOUR_MASS`` shares of ``density``; increasing."""
    flat = np.sort(density.ravel())[::-1]
    total = flat.sum()
    if total <= 0:
        return None
    cumulative = np.cumsum(flat) / total
    levels = sorted(
        {float(flat[min(np.searchsorted(cumulative, m), flat.size - 1)]) for m in _CONTOUR_MASS}
    )
    levels = [v for v in levels if v > 0]
    return levels or None


def _contour(ax: Axes, x, y, edges: tuple[np.ndarray, np.ndarray], color: str) -> None:
    from scipy.ndimage import gaussian_filter

    if len(x) < 10:
        return
    hist, x_edges, y_edges = np.histogram2d(x, y, bins=edges)
    hist = gaussian_filter(hist, sigma=1.0)
    levels = _mass_levels(hist)
    if levels is None:
        return
    centres_x = 0.5 * (x_edges[1:] + x_edges[:-1])
    centres_y = 0.5 * (y_edges[1:] + y_edges[:-1])
    if len(centres_x) < 2 or len(centres_y) < 2:
        return
    ax.contour(centres_x, centres_y, hist.T, levels=levels, colors=color, linewidths=1.1)


def plot_corner(
    data,
    samples,
    path,
    *,
    columns: Sequence[str] | None = None,
    max_points: int = 5000,
    bins: int = 40,
    labels: tuple[str, str] = ("data", "model"),
    fig: Figure | None = None,
):
    """Corner plot comparing data with model samples, pair by pair.

    Diagonal: 1-D histograms (data filled, model as a step line, both ``density=True``). Below the
    diagonal: scatter of both sets in two colours with contours holding 39% and 86% of the mass
    (1 and 2 sigma of a 2-D Gaussian). Axis ranges follow the data (0.1-99.9% quantiles), so a few
    far-out model samples do not squash the view.

    Args:
        data: ``(rows, columns)`` array or DataFrame.
        samples: ``(rows_model, columns)`` model samples, the same columns as ``data``.
        path: output file (``.png``), or ``None`` with ``fig``.
        columns: column names (default: the DataFrame's columns, else ``x0, x1, ...``).
        max_points: at most this many rows of each set are drawn (a seeded random subset).
        bins: histogram bins per axis.
        labels: legend names of ``data`` and ``samples``.
        fig: draw into this (empty) figure instead of a new one.

    Returns:
        The path written, or ``None`` when ``path`` is ``None``.

    Raises:
        ValueError: ``samples`` or ``columns`` do not match the columns of ``data``; bad ``bins``
            or ``max_points``.
    """
    _check_path(path, allow_none=fig is not None)
    data, default_names = _table("data", data)
    samples, _ = _table("samples", samples, features=data.shape[1])
    features = data.shape[1]
    names = _column_names(columns, default_names, features)
    bins = check_int("bins", bins, minimum=2)
    max_points = check_int("max_points", max_points)
    data = _subsample(_finite_rows(data), max_points, seed=0)
    samples = _subsample(_finite_rows(samples), max_points, seed=1)
    limits = [_limits(data[:, j]) for j in range(features)]
    # Integer columns get bins aligned with their values, in 1-D and 2-D alike.
    edges = [_edges(data[:, j], *limits[j], bins) for j in range(features)]

    panel = float(np.clip(11.0 / features, 1.6, 2.6))
    size = max(panel * features, 4.0)
    if fig is None:
        fig = Figure(figsize=(size, size))
    axes = fig.subplots(features, features, squeeze=False)
    for i in range(features):
        for j in range(features):
            ax = axes[i, j]
            if j > i:
                ax.set_visible(False)
                continue
            if i == j:
                _corner_histograms(ax, data[:, j], samples[:, j], edges[j])
            else:
                _corner_pair(ax, data[:, [j, i]], samples[:, [j, i]], (edges[j], edges[i]))
                ax.set_ylim(limits[i])
            ax.set_xlim(limits[j])
            _label_corner_panel(ax, i, j, names)
    handles = [
        Patch(color=DATA_COLOR, alpha=0.6, label=f"{labels[0]} ({len(data)} rows)"),
        Line2D([], [], color=MODEL_COLOR, lw=1.6, label=f"{labels[1]} ({len(samples)} samples)"),
    ]
    _finish_corner(fig, axes, handles, names[0], size)
    return _save(fig, path)


def _corner_histograms(ax: Axes, data_column, sample_column, edges: np.ndarray) -> None:
    """Diagonal panel: the data histogram filled, the model's as a step line, both densities."""
    ax.hist(data_column, bins=edges, density=True, color=DATA_COLOR, alpha=0.45)
    ax.hist(
        sample_column,
        bins=edges,
        density=True,
        histtype="step",
        color=MODEL_COLOR,
        linewidth=1.4,
    )
    ax.set_yticks([])


def _corner_pair(ax: Axes, data_xy, samples_xy, edges: tuple[np.ndarray, np.ndarray]) -> None:
    """Off-diagonal panel: both ``(rows, 2)`` sets scattered (x, y) with their mass contours."""
    scatter = dict(s=1.5, alpha=0.2, linewidths=0, rasterized=True)
    ax.scatter(data_xy[:, 0], data_xy[:, 1], color=DATA_COLOR, **scatter)
    ax.scatter(samples_xy[:, 0], samples_xy[:, 1], color=MODEL_COLOR, **scatter)
    _contour(ax, data_xy[:, 0], data_xy[:, 1], edges, DATA_COLOR)
    _contour(ax, samples_xy[:, 0], samples_xy[:, 1], edges, MODEL_COLOR)


def _label_corner_panel(ax: Axes, i: int, j: int, names: list[str]) -> None:
    """Ticks and labels of panel (row ``i``, column ``j``): names only on the outer edges."""
    _style_ticks(ax, y=i != j)
    if i == len(names) - 1:
        ax.set_xlabel(names[j], fontsize=9)
        for label in ax.get_xticklabels():
            label.set_rotation(45)
            label.set_horizontalalignment("right")
    else:
        ax.tick_params(labelbottom=False)
    if j == 0 and i > 0:
        ax.set_ylabel(names[i], fontsize=9)
    elif i != j:
        ax.tick_params(labelleft=False)


def _finish_corner(fig: Figure, axes: np.ndarray, handles: list, first_name: str, size: float):
    """Legend and margins: inside the single panel of one column, else in the empty corner."""
    if len(axes) == 1:
        axes[0, 0].legend(handles=handles, fontsize=8, loc="upper right")
        axes[0, 0].set_xlabel(first_name, fontsize=9)
        fig.subplots_adjust(left=0.08, right=0.96, top=0.95, bottom=0.16)
        return
    fig.legend(
        handles=handles,
        loc="upper right",
        fontsize=10,
        frameon=False,
        bbox_to_anchor=(0.97, 0.97),
    )
    margin = 0.55 / size  # inches of label room, as a fraction of the figure
    fig.subplots_adjust(
        left=max(0.1, 2 * margin),
        bottom=max(0.1, 2 * margin),
        right=0.98,
        top=0.98,
        wspace=0.06,
        hspace=0.06,
    )


# ------------------------------------------------------------------------------------ marginals


def _kde_curve(values: np.ndarray, grid: np.ndarray) -> np.ndarray | None:
    """Gaussian KDE (Scott's bandwidth) of ``values`` on ``grid``; ``None`` if degenerate."""
    from scipy.stats import gaussian_kde

    values = values[np.isfinite(values)]
    if values.size < 2 or np.ptp(values) == 0:
        return None
    values = _subsample(values[:, None], 20000, seed=2)[:, 0]
    try:
        return gaussian_kde(values)(grid)
    except np.linalg.LinAlgError:
        return None


def plot_marginals(
    data,
    path,
    *,
    samples=None,
    log_density: Callable | Sequence[Callable] | None = None,
    columns: Sequence[str] | None = None,
    bins: int = 50,
    fig: Figure | None = None,
):
    """One panel per column: the data histogram against the model's 1-D marginal density.

    The model marginal is a Gaussian KDE of ``samples``, the exact curve(s) given by
    ``log_density``, or both.

    Args:
        data: ``(rows, columns)`` array or DataFrame (a 1-D array is one column).
        path: output file (``.png``), or ``None`` with ``fig``.
        samples: optional ``(rows_model, columns)`` model samples.
        log_density: optional marginal log-densities: a sequence with one callable per column,
            each mapping ``grid: (m,)`` to ``(m,)`` log-densities of that column (a single
            callable when there is one column).
        columns: column names (default: the DataFrame's columns, else ``x0, x1, ...``).
        bins: histogram bins.
        fig: draw into this (empty) figure instead of a new one.

    Returns:
        The path written, or ``None`` when ``path`` is ``None``.

    Raises:
        ValueError: ``samples``, ``log_density`` or ``columns`` do not match the columns of
            ``data``; a ``log_density`` curve has the wrong shape; bad ``bins``.
    """
    _check_path(path, allow_none=fig is not None)
    data, default_names = _table("data", data)
    features = data.shape[1]
    if samples is not None:
        samples, _ = _table("samples", samples, features=features)
    names = _column_names(columns, default_names, features)
    bins = check_int("bins", bins, minimum=2)
    log_density = _check_log_densities(log_density, features)

    ncols = min(features, 4)
    nrows = math.ceil(features / ncols)
    own_figure = fig is None
    if own_figure:
        fig = Figure(figsize=(3.3 * ncols, 2.7 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    handles = {}
    for j in range(features):
        model = (
            None if samples is None else samples[:, j],
            None if log_density is None else log_density[j],
        )
        handles.update(_marginal_panel(axes[j], data[:, j], model, bins, j))
        axes[j].set_title(names[j], fontsize=10)
    for ax in axes[features:]:
        ax.set_visible(False)
    axes[0].set_ylabel("density", fontsize=9)
    # "outside" placement needs the constrained layout of the figures made here.
    outside = fig.get_layout_engine() is not None and own_figure
    fig.legend(
        handles=list(handles.values()),
        loc="outside lower center" if outside else "lower center",
        ncols=len(handles),
        fontsize=9,
        frameon=False,
    )
    return _save(fig, path)


def _marginal_panel(ax: Axes, column: np.ndarray, model: tuple, bins: int, index: int) -> dict:
    """Panel of column ``index``: its histogram against the model's ``(samples or None,
    log_density or None)`` marginal; the legend handles by kind."""
    sample_column, log_density = model
    low, high = _limits(column)
    grid = np.linspace(low, high, 400)
    handles = {"data": _marginal_histogram(ax, column, _edges(column, low, high, bins))}
    if sample_column is not None:
        curve = _kde_curve(sample_column, grid)
        if curve is not None:
            (handles["kde"],) = ax.plot(
                grid, curve, color=MODEL_COLOR, lw=1.6, label="model (KDE of samples)"
            )
    if log_density is not None:
        handles["exact"] = _plot_exact_marginal(ax, log_density, grid, index)
    ax.set_xlim(low, high)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.tick_params(labelsize=8)
    ax.set_yticks([])
    return handles


def _check_log_densities(log_density, features: int) -> list | None:
    """``log_density`` as a list of one callable per column (``None`` stays ``None``)."""
    if log_density is None:
        return None
    if callable(log_density):
        log_density = [log_density]
    if not isinstance(log_density, Sequence) or not all(map(callable, log_density)):
        raise TypeError("log_density must be a callable or a sequence of callables")
    if len(log_density) != features:
        raise ValueError(
            f"log_density must hold one callable per column ({features}), got {len(log_density)}"
        )
    return list(log_density)


def _marginal_histogram(ax: Axes, column: np.ndarray, edges: np.ndarray):
    """The filled density histogram of the finite values of ``column``; its legend handle."""
    return ax.hist(
        column[np.isfinite(column)],
        bins=edges,
        density=True,
        color=DATA_COLOR,
        alpha=0.45,
        label="data",
    )[2][0]


def _plot_exact_marginal(ax: Axes, log_density: Callable, grid: np.ndarray, index: int):
    """The exact marginal ``exp(log_density(grid))`` dashed; its legend handle.

    Raises:
        ValueError: ``log_density`` does not map the ``(m,)`` grid to ``(m,)`` values.
    """
    values = np.asarray(log_density(grid), dtype=np.float64)
    if values.shape != grid.shape:
        raise ValueError(
            f"log_density[{index}] must return shape {grid.shape} for a grid of "
            f"{grid.size} points, got {values.shape}"
        )
    (line,) = ax.plot(
        grid, np.exp(values), color="black", lw=1.2, ls="--", label="model (marginal density)"
    )
    return line


def plot_ramachandran(
    panels: Mapping[str, tuple],
    path,
    *,
    bins: int = 60,
    max_free_energy: float = 8.0,
    fig: Figure | None = None,
):
    """Free-energy surfaces ``-log p(phi, psi)`` (kT, minimum at 0), one panel per ensemble.

    Args:
        panels: ``{title: (phi, psi)}`` or ``{title: (phi, psi, weights)}`` with angles in radians
            (arrays or tensors of equal length) and optional importance weights.
        path: output file (``.png``), or ``None`` with ``fig``.
        bins: histogram bins per angle over ``[-pi, pi)``.
        max_free_energy: colour scale cap in kT; emptier bins are left blank.
        fig: draw into this (empty) figure instead of a new one.

    Returns:
        The path written, or ``None`` when ``path`` is ``None``.
    """
    _check_path(path, allow_none=fig is not None)
    bins = check_int("bins", bins, minimum=2)
    if not isinstance(panels, Mapping) or not panels:
        raise ValueError("panels must be a non-empty mapping {title: (phi, psi[, weights])}")
    own_figure = fig is None
    if own_figure:
        fig = Figure(figsize=(3.6 * len(panels) + 0.8, 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    edges = np.linspace(-math.pi, math.pi, bins + 1)
    image = None
    for ax, (title, entry) in zip(axes, panels.items()):
        if len(entry) not in (2, 3):
            raise ValueError(f"panel {title!r} must be (phi, psi) or (phi, psi, weights)")
        phi, psi = (np.asarray(v, dtype=float).ravel() for v in entry[:2])
        weights = None if len(entry) == 2 else np.asarray(entry[2], dtype=float).ravel()
        if len(phi) != len(psi) or (weights is not None and len(weights) != len(phi)):
            raise ValueError(f"panel {title!r}: phi, psi and weights must have equal lengths")
        counts, _, _ = np.histogram2d(phi, psi, bins=[edges, edges], weights=weights)
        with np.errstate(divide="ignore"):
            free = -np.log(counts / counts.sum())
        free -= free[np.isfinite(free)].min()
        free[free > max_free_energy] = np.nan
        image = ax.pcolormesh(edges, edges, free.T, cmap="viridis", vmin=0, vmax=max_free_energy)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(r"$\phi$ (rad)")
        ax.set_aspect("equal")
    axes[0].set_ylabel(r"$\psi$ (rad)")
    fig.colorbar(image, ax=list(axes), label="free energy (kT)", shrink=0.9)
    return _save(fig, path) if own_figure else None
