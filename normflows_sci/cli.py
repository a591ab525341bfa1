"""Command line: fit a density to a table, score rows, draw samples, inspect models, run a demo.

Usage (``normflows-sci --help`` and ``normflows-sci COMMAND --help`` for every option)::

    normflows-sci fit data.csv -o model.nfs --bounds mass:0: --discrete count --plots plots/
    normflows-sci fit penguins.csv --categorical species,island,sex   # text columns: labels
    normflows-sci score model.nfs new_rows.csv -o log_density.csv
    normflows-sci sample model.nfs -n 1000 -o samples.csv
    normflows-sci info model.nfs
    normflows-sci demo

Also run as ``python -m normflows_sci``. Data files are CSV with a header row (``.csv``, ``.tsv``,
optionally gzip-compressed: ``.csv.gz``; a column with text is categorical), numpy ``.npy`` (a
2-D numeric array), or Parquet (``.parquet``, needs pyarrow). Every output file is written
atomically (a temporary file in the same folder, then a rename), so an interrupted run never
leaves a half-written file. Errors print
one line, ``normflows-sci: error: ...``, and exit with status 2 (set the environment variable
``NORMFLOWS_SCI_DEBUG=1`` for the full traceback instead).

Example:
    >>> main(["--version"])  # doctest: +ELLIPSIS
    normflows-sci ...
    0
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from normflows_sci import io as files
from normflows_sci._categorical import auto_levels
from normflows_sci._selection import ENSEMBLE_MAX_ROWS, ENSEMBLE_MEMBERS
from normflows_sci._version import __version__
from normflows_sci.baselines import (
    baseline_scores,
    describe_cells,
    gaussian_held_out_score,
    lattice_cells,
    level_cells,
)
from normflows_sci.estimator import FLOWS as FLOW_FAMILIES
from normflows_sci.estimator import (
    MIN_ROWS_FOR_VALIDATION,
    DensityEstimator,
    ScoreEstimate,
    held_out_split,
)
from normflows_sci.io import table_format

# read_table stays importable as a deprecated alias of normflows_sci.io.read_table.
__all__ = ["main", "CLIError"]

PROG = "normflows-sci"
FLOWS = tuple(FLOW_FAMILIES)  # DensityEstimator(flow=...)
# Share of the rows `fit` holds out for early stopping and the held-out summary.
VALIDATION_FRACTION = 0.1
# Share of the rows `demo` keeps aside as the test set.
TEST_FRACTION = 0.2
# The demo's flow budget, in epochs so the same seed gives the same numbers on any machine (a
# wall-clock budget would stop after a load-dependent number of epochs).
DEMO_MAX_EPOCHS = 30
# torch threads of the demo's training: its small network gains little from more, and a thread
# whose core other work takes stalls the rest (2 threads ran 18 times slower than 1 on 2 busy cores).
DEMO_THREADS = 1
# Rows of model samples drawn for the corner and marginal plots.
PLOT_SAMPLES = 5000
# A categorical column with more distinct levels than this share of its rows (of at least
# MIN_ROWS_FOR_VALIDATION) looks like an identifier or a date: most levels are seen once.
IDENTIFIER_SHARE = 0.5
# Most levels `info` lists per categorical column (the most frequent; the rest are counted).
INFO_LEVELS = 100
# The estimator's warning about rows outside the support: the CLI reports them in its summary.
_OUTSIDE_SUPPORT = re.compile(
    r"lie outside the model's support and score -inf \(first: row (\d+): (.*)\); pass strict"
)


class CLIError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


# ---------------------------------------------------------------------------------- reading data


def _read(path: str | os.PathLike, what: str = "DATA", text=None) -> tuple[np.ndarray, list | None]:
    """:func:`normflows_sci.io.read_table`, with a note on stderr for a CSV without a header."""
    values, names = files.read_table(path, what=what, text=text)
    if names is None and table_format(path) != (".npy", False):
        print(
            f"{PROG}: note: {path} has no header row; columns are named x0, x1, ...",
            file=sys.stderr,
        )
    return values, names


def read_table(path: str | os.PathLike, *, what: str = "DATA") -> tuple[np.ndarray, list | None]:
    """Deprecated: use :func:`normflows_sci.io.read_table` (which raises
    :class:`~normflows_sci.io.TableFileError`, a ``ValueError``); this one raises
    :class:`CLIError` with the same message, as before."""
    warnings.warn(
        "normflows_sci.cli.read_table is deprecated: use normflows_sci.io.read_table",
        DeprecationWarning,
        stacklevel=2,
    )
    try:
        return files.read_table(path, what=what)
    except files.TableFileError as error:
        raise CLIError(str(error)) from None


def _text_columns(values: np.ndarray, names: Sequence[str]) -> list[str]:
    """The columns :func:`normflows_sci.io.read_table` kept as text (labels)."""
    if values.dtype != object:
        return []
    return [name for j, name in enumerate(names) if isinstance(values[0, j], str)]


def _model_text_columns(est, columns: Sequence[str]) -> list[str]:
    """The model's categorical columns among ``columns`` whose levels are all strings: read as
    text, so a file whose cells in such a column all look like numbers still matches them."""
    categories = getattr(est, "categories_", None)
    if categories is None:
        return []
    return [
        c
        for c, levels in zip(categories.categorical, categories.levels)
        if c in columns and all(isinstance(level, str) for level in levels)
    ]


def _estimator_input(values: np.ndarray, names: Sequence[str]):
    """The table as the estimator takes it: the float array itself, or with text columns a
    pandas DataFrame (labels as strings, numbers as float64)."""
    text = _text_columns(values, names)
    if not text:
        return values
    try:
        import pandas as pd
    except ImportError:
        raise CLIError(
            f"the text columns {', '.join(text)} need pandas, which is not installed: "
            "pip install pandas (or code the labels as numbers and pass --categorical)"
        ) from None
    return pd.DataFrame(
        {
            n: values[:, j] if n in text else values[:, j].astype(np.float64)
            for j, n in enumerate(names)
        },
        columns=list(names),
    )


def _table_values(samples, columns: Sequence[str]) -> np.ndarray:
    """Rows drawn by the estimator as :func:`normflows_sci.io.write_table` takes them: float, or
    an object array when a column holds labels (written as text)."""
    if not hasattr(samples, "columns"):
        return np.asarray(samples, dtype=np.float64)
    import pandas as pd

    parts = []
    for name in columns:
        column = samples[name]
        numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
        parts.append(
            column.to_numpy(np.float64) if numeric else column.astype(str).to_numpy(object)
        )
    if all(part.dtype != object for part in parts):
        return np.column_stack(parts)
    table = np.empty((len(samples), len(parts)), dtype=object)
    for j, part in enumerate(parts):
        table[:, j] = part
    return table


# ---------------------------------------------------------------------------------- writing data


def _special_file(path: Path) -> bool:
    """An existing path that is not a regular file or folder: /dev/null, a named pipe, ..."""
    return path.exists() and not path.is_file() and not path.is_dir()


def _check_output(path: Path, option: str) -> None:
    if path.is_dir():
        raise CLIError(f"{option} {path} is a folder; give a file name")


def _write_table(values: np.ndarray, names: Sequence[str], output: str | None) -> Path | None:
    """CSV (or ``.npy`` by extension) to ``output`` atomically, or CSV to stdout."""
    if output is None or output == "-":
        return files.write_table(values, names, sys.stdout)
    _check_output(Path(output), "-o")
    return files.write_table(values, names, output)


# --------------------------------------------------------------------------------------- models


def _load_model(path: str):
    if not Path(path).exists():
        raise CLIError(f"MODEL file not found: {path}")
    return DensityEstimator.load(path)


def _default_names(count: int) -> list[str]:
    return [f"x{i}" for i in range(count)]


def _align(values: np.ndarray, names, expected: list[str], path: str) -> np.ndarray:
    """The columns of ``values`` in the model's order: by name when the file names them all,
    otherwise by position (same count required)."""
    if names is not None and set(expected) <= set(names):
        return values[:, [names.index(c) for c in expected]]
    shown = ", ".join(expected)
    if values.shape[1] != len(expected):
        raise CLIError(
            f"{path} has {values.shape[1]} columns, but the model expects {len(expected)} ({shown})"
        )
    if names is not None and expected != _default_names(len(expected)):
        missing = [c for c in expected if c not in names]
        raise CLIError(f"{path} lacks the model's columns {missing} (the model has: {shown})")
    return values


def _column_keys(tokens: Sequence[str], names: list[str], option: str) -> list:
    """Column names as given, or integer positions for tokens that are numbers, not names."""
    keys = []
    for token in tokens:
        if token in names:
            keys.append(token)
        elif token.isdigit() and int(token) < len(names):
            keys.append(int(token))
        else:
            raise CLIError(f"{option}: no column {token!r}; the columns are {', '.join(names)}")
    return keys


def _parse_bound(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise CLIError(f"--bounds: {text!r} is not a number") from None
    if math.isnan(value):
        raise CLIError("--bounds: a bound cannot be NaN")
    return None if math.isinf(value) else value


def _parse_bounds(items: Sequence[str] | None, names: list[str]):
    """DensityEstimator's ``bounds`` from ``--bounds``: ``"auto"`` when it is not given (a
    positive, right-skewed column is then bounded at 0, so no sample comes out negative), None
    for ``--bounds none``, else ``{column: (low, high)}``."""
    if not items or list(items) == ["auto"]:
        return "auto"
    if list(items) == ["none"]:
        return None
    bounds = {}
    for item in items:
        parts = item.rsplit(":", 2)
        if len(parts) != 3:
            raise CLIError(
                f"--bounds expects COL:LOW:HIGH with LOW or HIGH empty for an open side "
                f"(e.g. mass:0:), got {item!r}"
            )
        (key,) = _column_keys([parts[0]], names, "--bounds")
        low, high = _parse_bound(parts[1]), _parse_bound(parts[2])
        if low is None and high is None:
            continue
        if low is not None and high is not None and not low < high:
            raise CLIError(f"--bounds {item}: LOW must be below HIGH")
        bounds[key] = (low, high)
    return bounds or None


def _parse_discrete(items: Sequence[str] | None, names: list[str]):
    if not items:
        return None
    if list(items) == ["auto"]:
        return "auto"
    return _column_keys(items, names, "--discrete")


def _numeric_targets(est) -> list[str]:
    """The modelled columns that are not categorical (those the plots show)."""
    categories = getattr(est, "categories_", None)
    labels = () if categories is None else categories.categorical
    return [c for c in est.target_columns_ if c not in labels]


def _model_samples(est, data: np.ndarray, names: list[str], seed) -> tuple[np.ndarray, np.ndarray]:
    """``(data, model samples)`` of the numeric target columns for plots; conditional models
    sample at data contexts."""
    rng = np.random.default_rng(seed)
    rows = data[rng.permutation(len(data))[:PLOT_SAMPLES]]
    shown = _numeric_targets(est)
    if est.context_columns_:
        context = rows[:, [names.index(c) for c in est.context_columns_]]
        drawn = est.sample(
            context=_estimator_input(context, est.context_columns_), random_state=seed
        )
    else:
        drawn = est.sample(len(rows), random_state=seed)
    samples = _table_values(drawn, est.target_columns_)
    picked = samples[:, [est.target_columns_.index(c) for c in shown]].astype(np.float64)
    return data[:, [names.index(c) for c in shown]].astype(np.float64), picked


def _write_plots(folder: str, est, data: np.ndarray, names: list[str], title: str, seed) -> None:
    from normflows_sci import plotting

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CLIError(f"--plots: {folder} exists and is not a folder")
    targets, samples = _model_samples(est, data, names, seed)
    shown = _numeric_targets(est)
    written = [
        plotting.plot_training_curves(est.history_, folder / "training_curves.png", title=title)
    ]
    if shown:  # categorical columns have no density to draw
        written += [
            plotting.plot_corner(targets, samples, folder / "corner.png", columns=shown),
            plotting.plot_marginals(
                targets, folder / "marginals.png", samples=samples, columns=shown
            ),
        ]
    print(f"plots written: {', '.join(str(p) for p in written)}")


def _new_estimator(args, **options):
    return DensityEstimator(
        flow=args.flow,
        max_epochs=args.max_epochs,
        max_time=args.max_time,
        random_state=args.seed,
        verbose=not args.quiet,
        **options,
    )


# ------------------------------------------------------------------------------------- commands


def _parse_categorical(items, values: np.ndarray, names: list[str]) -> list[str]:
    """The categorical columns: the text columns of the file plus those ``--categorical``
    names (comma- or space-separated; numeric columns become labels too), in table order."""
    tokens = [
        token.strip()
        for item in items or []
        for token in ([item] if item in names else item.split(","))  # a name with a comma
    ]
    keys = _column_keys([t for t in tokens if t], names, "--categorical")
    chosen = {names[k] if isinstance(k, int) else k for k in keys} | set(
        _text_columns(values, names)
    )
    return [name for name in names if name in chosen]


def _with_auto_levels(
    values: np.ndarray, names: list[str], labels: list[str], options
) -> list[str]:
    """``labels`` plus the numeric columns the estimator's ``categorical="auto"`` takes as
    levels (few-valued, non-integer: :func:`~normflows_sci._categorical.auto_levels`), in table
    order; columns given ``--bounds``/``--discrete``/``--context`` roles stay numeric."""
    numeric = [j for j, name in enumerate(names) if name not in labels]
    subset = [names[j] for j in numeric]
    table = values[:, numeric].astype(np.float64)
    keys = list(options["bounds"]) if isinstance(options["bounds"], dict) else []
    if options["discrete"] not in (None, "auto"):
        keys += list(options["discrete"])
    key_names = {names[k] if isinstance(k, int) else k for k in keys}
    context = {names[k] if isinstance(k, int) else k for k in options["context"] or ()}
    levels = auto_levels(table, subset, (), sorted(context & set(subset)), sorted(key_names))
    return [name for name in names if name in set(labels) | set(levels)]


def _warn_identifiers(values: np.ndarray, names: list[str], categorical, path) -> None:
    """A note on stderr for each categorical column whose levels are mostly seen once (an
    identifier, a date, a free-text field): as labels, every new value scores -inf."""
    rows = len(values)
    if rows < MIN_ROWS_FOR_VALIDATION:
        return
    for column in categorical:
        levels = len(set(values[:, names.index(column)].tolist()))
        if levels > IDENTIFIER_SHARE * rows:
            print(
                f"{PROG}: warning: {path}: categorical column {column!r} has {levels} levels in "
                f"{rows} rows, most seen once (an identifier, a date or free text?): a value not "
                "seen in training scores -inf; drop the column or convert it to numbers",
                file=sys.stderr,
            )


def _split_rows(values: np.ndarray, names: list[str], categorical: list[str], seed):
    """``(training rows, held-out rows, moved, block)`` of ``fit``'s validation split
    (:func:`~normflows_sci.estimator.held_out_split`); held-out rows with a level of a
    categorical column absent from the training rows move to training (``moved`` of them): the
    model has no probability for a level it never saw."""
    train_rows, held_rows, block = held_out_split(values, VALIDATION_FRACTION, seed)
    seen = np.ones(len(held_rows), dtype=bool)
    for column in categorical:
        j = names.index(column)
        seen &= np.isin(values[held_rows, j], values[train_rows, j])
    train_rows = np.concatenate([train_rows, held_rows[~seen]])
    return train_rows, held_rows[seen], int((~seen).sum()), block


def _cmd_fit(args) -> int:
    values, file_names = _read(args.data, text="auto")
    names = file_names if file_names is not None else _default_names(values.shape[1])
    categorical = _parse_categorical(args.categorical, values, names)
    options = dict(
        bounds=_parse_bounds(args.bounds, names),
        discrete=_parse_discrete(args.discrete, names),
        context=_column_keys(args.context, names, "--context") if args.context else None,
        ensemble=args.ensemble or "auto",
    )
    if not args.categorical:  # the estimator's default, categorical="auto"
        categorical = _with_auto_levels(values, names, categorical, options)
    _warn_identifiers(values, names, categorical, args.data)
    options["categorical"] = categorical or None
    output = Path(args.output) if args.output else _default_model_path(Path(args.data))
    _check_output(output, "-o")
    if _special_file(output):
        raise CLIError(f"-o {output} is not a regular file: give a path for the model file")
    train_rows, held_rows, moved, block = _split_rows(values, names, categorical, args.seed)
    held_out, train = values[held_rows], values[train_rows]
    est = _new_estimator(args, **options)
    held_input = _estimator_input(held_out, names) if len(held_rows) else None
    table = _estimator_input(train, names)
    est.fit(table, X_val=held_input, columns=None if hasattr(table, "columns") else names)
    saved = est.save(output)
    info = est.info()
    print(
        f"fitted {args.flow} to {args.data}: {len(values)} rows x {len(names)} columns "
        f"({len(train)} for training, {len(held_out)} held out for validation and early stopping"
        + (
            f", in blocks of {block} consecutive rows: neighbouring rows are near-copies)"
            if block > 1
            else ")"
        )
    )
    if categorical:
        levels = ", ".join(f"{c} ({n} levels)" for c, n in info["categorical_columns"].items())
        print(f"  categorical columns: {levels}")
    if moved:
        print(
            f"  {moved} held-out row{'s' if moved > 1 else ''} with a level not among the "
            "training rows moved to training"
        )
    print(
        f"  {info.get('epochs', len(est.history_['epoch']))} epochs in "
        f"{float(info.get('fit_time_seconds', math.nan)):.1f} s, "
        f"{info.get('parameters', '?')} parameters; training stopped by {_stop_reason(est)}"
        + (
            f"; the model is an equal-weight ensemble of {info['ensemble_members']} such flows "
            f"(seeds {args.seed}..{args.seed + info['ensemble_members'] - 1})"
            if info["ensemble_members"] > 1
            else ""
        )
    )
    if len(held_out):
        _held_out_summary(est, train, held_out, held_input, names)
    else:
        print(f"  no held-out summary: fewer than {MIN_ROWS_FOR_VALIDATION} rows")
    print(f"model saved to {saved if saved is not None else output}")
    if args.plots:
        _write_plots(
            args.plots, est, values, names, f"{args.flow} on {Path(args.data).name}", args.seed
        )
    return 0


def _held_out_summary(est, train, held_out, held_input, names) -> None:
    """``fit``'s held-out lines: the flow's mean log-likelihood with its standard error, and a
    Gaussian fitted to the same rows and scored on the same cells (tables without text label
    columns: it has no part for them)."""
    flow = est.score(held_input, return_stderr=True)
    kind = "conditional " if est.context_columns_ else ""
    print(f"  held-out mean {kind}log-likelihood (nats per row, higher is better):")
    if _text_columns(train, names):
        print(f"    flow      {flow.mean:12.4f} +- {flow.stderr:.4f} (standard error)")
        print("  (no Gaussian comparison: it has no part for label columns)")
        return
    discrete, step = lattice_cells(est, names)
    levels = level_cells(est, names)
    gauss_score = gaussian_held_out_score(
        train,
        held_out,
        discrete=discrete,
        step=step,
        context=[names.index(c) for c in est.context_columns_],
        levels=levels,
    )
    if discrete or levels:
        print(f"  (both score {describe_cells(names, discrete, step, levels)})")
    print(f"    flow      {flow.mean:12.4f} +- {flow.stderr:.4f} (standard error)")
    print(f"    Gaussian  {gauss_score:12.4f}   (flow - Gaussian: {flow.mean - gauss_score:+.4f})")


def _default_model_path(data: Path) -> Path:
    name = data.name
    suffix, compressed = table_format(data)
    if compressed:
        name = name[: -len(".gz")]
    if suffix and name.lower().endswith(suffix):
        name = name[: -len(suffix)]
    return data.with_name(name + ".nfs")


def _cmd_score(args) -> int:
    est = _load_model(args.model)
    values, names = _read(args.data, text=_model_text_columns(est, est.columns_) or None)
    X = _estimator_input(_align(values, names, est.columns_, args.data), est.columns_)
    log_density, first = _log_densities(est, X, args.data, strict=args.strict)
    _write_table(log_density[:, None], ["log_density"], args.output)
    kind = "conditional " if est.context_columns_ else ""
    outside = np.isneginf(log_density)
    inside = ~outside
    count = int(inside.sum())
    rows = f"{count} row{'s' if count != 1 else ''}"
    rows += " inside the support" if outside.any() else ""
    if inside.any():
        mean, stderr, _ = ScoreEstimate.of_rows(log_density[inside], est.last_score_error_[inside])
        print(
            f"mean {kind}log-density: {mean:.6g} +- {stderr:.2g} nats per row ({rows})",
            file=sys.stderr,
        )
    if outside.any():
        row, reason = first if first is not None else (int(np.flatnonzero(outside)[0]), "")
        print(
            f"{int(outside.sum())} of {len(log_density)} rows lie outside the model's support "
            f"and score -inf (first: data row {row + 1}{': ' + reason if reason else ''}); "
            "--strict makes this an error",
            file=sys.stderr,
        )
    return 0


def _in_file(error: ValueError, name: str, path: str, repeats: int = 1) -> str:
    """The estimator's message with its rows of ``name`` (0-based, each row repeated
    ``repeats`` times) given as the file's data rows (1-based, as other errors count them)."""
    return re.sub(
        rf"\brow (\d+) of {name}\b",
        lambda m: f"{path}, data row {int(m.group(1)) // repeats + 1}",
        _message(error),
    )


def _log_densities(est, X, path: str, *, strict: bool) -> tuple[np.ndarray, tuple | None]:
    """``(log-densities (n,), (row, reason) of the first row outside the support or None)``.

    The estimator's warning about rows outside the support is replaced by ``score``'s summary
    line (other warnings pass); its errors name the file's data rows (1-based) instead of rows
    of ``X`` (0-based)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            log_density = est.score_samples(X, strict=strict)
        except ValueError as error:
            raise CLIError(_in_file(error, "X", path)) from None
    first = None
    for warning in caught:
        match = _OUTSIDE_SUPPORT.search(str(warning.message))
        if match:
            first = int(match.group(1)), match.group(2)
        else:
            warnings.showwarning(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return log_density, first


def _cmd_sample(args) -> int:
    est = _load_model(args.model)
    if est.context_columns_:
        if args.context is None:
            raise CLIError(
                f"the model is conditional on {', '.join(est.context_columns_)}: give "
                "--context FILE with those columns (one or more rows)"
            )
        text = _model_text_columns(est, est.context_columns_) or None
        values, names = _read(args.context, what="--context", text=text)
        context = _align(values, names, est.context_columns_, args.context)
        repeats = args.num_samples or 1
        context = np.repeat(context, repeats, axis=0)
        try:
            drawn = est.sample(
                context=_estimator_input(context, est.context_columns_), random_state=args.seed
            )
        except ValueError as error:
            raise CLIError(_in_file(error, "context", args.context, repeats)) from None
        samples = _table_values(drawn, est.target_columns_)
        # Rows in the model's column order, context included, as in the training table.
        kind = object if object in (samples.dtype, context.dtype) else np.float64
        table = np.empty((len(context), len(est.columns_)), dtype=kind)
        for j, name in enumerate(est.columns_):
            if name in est.context_columns_:
                table[:, j] = context[:, est.context_columns_.index(name)]
            else:
                table[:, j] = samples[:, est.target_columns_.index(name)]
        columns = est.columns_
    else:
        if args.context is not None:
            raise CLIError("--context given, but the model is not conditional")
        if args.num_samples is None:
            raise CLIError("sample: -n N (number of rows to draw) is required")
        drawn = est.sample(args.num_samples, random_state=args.seed)
        table = _table_values(drawn, est.target_columns_)
        columns = est.target_columns_
    _write_table(table, columns, args.output)
    if args.output not in (None, "-"):
        print(f"{len(table)} samples written to {args.output}", file=sys.stderr)
    return 0


def _json_safe(value):
    """Non-finite floats -> None, so the output is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def _level_counts(est) -> dict:
    """``{column: {level: training rows}}`` of the categorical columns, the most frequent
    :data:`INFO_LEVELS` levels of each (``{column: [levels]}`` when the model keeps no counts)."""
    categories = getattr(est, "categories_", None)
    if categories is None:
        return {}
    counts = np.asarray(categories.counts, dtype=np.int64)
    shape = categories.shape
    out = {}
    for j, (column, levels) in enumerate(zip(categories.categorical, categories.levels)):
        if counts.size != math.prod(shape):  # the autoregressive factor stores weights instead
            out[column] = [str(level) for level in levels[:INFO_LEVELS]]
            continue
        per_level = counts.reshape(shape).sum(axis=tuple(k for k in range(len(shape)) if k != j))
        order = np.argsort(-per_level, kind="stable")
        shown = {str(levels[i]): int(per_level[i]) for i in order[:INFO_LEVELS]}
        if len(levels) > INFO_LEVELS:
            shown[f"({len(levels) - INFO_LEVELS} other levels)"] = int(
                per_level[order[INFO_LEVELS:]].sum()
            )
        out[column] = shown
    return out


def _cmd_info(args) -> int:
    est = _load_model(args.model)
    info = est.info()
    levels = _level_counts(est)
    if levels:
        info["categorical_levels"] = levels
    print(json.dumps(_json_safe(info), indent=2))
    return 0


def _demo_comparison(est, train, test, names: list[str], seed) -> tuple[list[tuple], str]:
    """The demo's rows ``(label, held-out mean log-likelihood, fit seconds)``, flow first, and
    the cells they are all scored on.

    The baselines score every integer column on the cells of the lattice the flow detected
    (``est.spec_.step``), as the flow does: scoring them on unit cells instead would hand them a
    handicap of ``log(step)`` nats per row (``log 5`` for winds in 5-knot steps).
    """
    discrete, step = lattice_cells(est, names)
    epochs = len(est.history_["epoch"])
    flow = (f"normalizing flow ({est.spec_.flow}, {epochs} epochs)", est.score(test), est.fit_time_)
    baselines = baseline_scores(train, test, discrete=discrete, step=step, random_state=seed)
    cells = describe_cells(names, discrete, step)
    return [flow, *baselines], cells


def _stop_reason(est) -> str:
    """What ended the estimator's training: its epoch budget, early stopping or its time budget."""
    history = est.history_
    epochs, val = len(history["epoch"]), history["val_loss"]
    if est.max_epochs is not None and epochs >= est.max_epochs:
        return f"the epoch budget ({est.max_epochs} epoch{'s' if est.max_epochs > 1 else ''})"
    finite = [v for v in val if math.isfinite(v)]
    if finite and est.patience is not None:
        since_best = epochs - 1 - max(i for i, v in enumerate(val) if v == min(finite))
        if since_best >= est.patience:
            return f"early stopping (no validation improvement for {since_best} epochs)"
    if est.max_time is not None:
        return (
            f"the time budget ({est.max_time:g} s, after {epochs} epochs; the number of "
            "epochs, and so the scores, depend on the machine's speed and load)"
        )
    return f"the end of training after {epochs} epochs"


def _cmd_demo(args) -> int:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run_demo(args)
    finally:  # main() may run inside a longer process (tests, notebooks)
        torch.set_num_threads(previous)


def _run_demo(args) -> int:
    from normflows_sci.datasets import load_dataset

    dataset = load_dataset(args.dataset)
    values, names = np.asarray(dataset.data, dtype=np.float64), list(dataset.columns)
    rows = len(values)
    if args.split == "random":  # the seeded split DensityEstimator.fit makes (datasets: >= 20 rows)
        train_rows, test_rows, block = held_out_split(values, TEST_FRACTION, args.seed)
        test, train = values[test_rows], values[train_rows]
        how = f"random split, seed {args.seed}"
        if block > 1:
            how += f", in blocks of {block} consecutive rows: neighbouring rows are near-copies"
    else:
        held = max(1, round(TEST_FRACTION * rows))
        test, train = values[rows - held :], values[: rows - held]
        how = "the last rows held out"
    print(f"dataset {dataset.name}: {rows} rows x {len(names)} columns ({', '.join(names)})")
    print(f"train {len(train)} rows, test {len(test)} rows ({how})")
    est = _new_estimator(args, bounds=dict(dataset.bounds) or None, discrete=list(dataset.discrete))
    est.fit(train, columns=names)
    print(f"flow training stopped by {_stop_reason(est)}")
    results, cells = _demo_comparison(est, train, test, names, args.seed)
    print(f"every model scores {cells}")

    width = max(len(r[0]) for r in results)
    gaussian = results[1][1]
    print()
    print(
        f"{'model':<{width}}  {'held-out log-likelihood':>23}  {'vs Gaussian':>11}  {'fit time':>8}"
    )
    print(f"{'':<{width}}  {'(nats per row)':>23}  {'':>11}  {'(s)':>8}")
    for name, score, seconds in results:
        print(f"{name:<{width}}  {score:>23.4f}  {score - gaussian:>+11.4f}  {seconds:>8.1f}")
    best = max(results, key=lambda r: r[1])
    print(f"\nbest: {best[0]} (higher is better)")
    if args.plots:
        _write_plots(args.plots, est, test, names, f"{args.flow} on {dataset.name}", args.seed)
    return 0


# --------------------------------------------------------------------------------------- parser


def _int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= ``minimum``, described as ``what`` in errors."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a {what}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "positive integer")
_seed = _int_at_least(0, "non-negative integer")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _add_training_options(parser, *, max_epochs_default, seed_default: int) -> None:
    # The families DensityEstimator knows now (FLOWS is the list at import, kept for callers).
    parser.add_argument(
        "--flow", choices=tuple(FLOW_FAMILIES), default="nsf", help="flow family (default: nsf)"
    )
    parser.add_argument(
        "--max-epochs",
        type=_positive_int,
        metavar="N",
        default=max_epochs_default,
        help="epoch budget" + (f" (default: {max_epochs_default})" if max_epochs_default else ""),
    )
    parser.add_argument(
        "--max-time",
        type=_positive_float,
        metavar="SECONDS",
        help="wall-clock training budget (the epochs it allows depend on the machine's load, so "
        "the same seed may give different results)",
    )
    parser.add_argument(
        "--seed",
        type=_seed,
        default=seed_default,
        metavar="N",
        help=f"seed for the split, initialisation and training (default: {seed_default})",
    )
    parser.add_argument(
        "--plots", metavar="DIR", help="write training curves, corner and marginal PNGs here"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``normflows-sci`` (exposed for documentation tools)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Normalizing-flow density estimation for tables: exact log-densities in the "
        "original units, samples and saved models.",
        epilog=f"Run '{PROG} COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_fit(commands)
    _add_score(commands)
    _add_sample(commands)
    _add_info(commands)
    _add_demo(commands)
    return parser


def _add_fit(commands) -> None:
    """The ``fit`` command."""
    fit = commands.add_parser(
        "fit",
        help="fit a flow to a table and save the model",
        description="Fit a DensityEstimator to DATA (CSV with a header row, .npy or Parquet; "
        "CSV columns with text are categorical). "
        f"{VALIDATION_FRACTION:.0%} of the rows are held out for early stopping and the "
        "held-out summary, compared with a Gaussian fitted to the same rows.",
    )
    fit.add_argument("data", metavar="DATA", help="training table")
    fit.add_argument(
        "-o", "--output", metavar="MODEL", help="model file (default: DATA stem + .nfs)"
    )
    _add_training_options(fit, max_epochs_default=None, seed_default=0)
    fit.add_argument(
        "--bounds",
        nargs="+",
        action="extend",
        metavar="COL:LOW:HIGH",
        help="physical bounds of columns; leave LOW or HIGH empty for an open side (mass:0: "
        "or frac:0:1); default 'auto': columns within [0, 1], and non-negative columns that "
        "pile up near 0 or are right-skewed (log-normal, counts), are bounded; 'none' for no "
        "bounds",
    )
    fit.add_argument(
        "--discrete",
        nargs="+",
        action="extend",
        metavar="COL",
        help="integer-valued columns (dequantised); 'auto' for every integer-valued column",
    )
    fit.add_argument(
        "--context",
        nargs="+",
        action="extend",
        metavar="COL",
        help="columns to condition on: the model becomes p(other columns | these)",
    )
    fit.add_argument(
        "--categorical",
        nargs="+",
        action="extend",
        metavar="COL",
        help="label columns, modelled exactly by their level frequencies (species,island,sex "
        "or species island sex); columns with text are categorical anyway, and numeric columns "
        "named here become labels too. Without it, numeric columns of a few non-integer values "
        "are modelled as levels (as DensityEstimator's categorical='auto')",
    )
    fit.add_argument(
        "--ensemble",
        type=_positive_int,
        metavar="N",
        help="fit N flows from seeds SEED..SEED+N-1 and save their equal-weight mixture "
        f"(default: {ENSEMBLE_MEMBERS} for tables under {ENSEMBLE_MAX_ROWS} rows, where "
        "averaging pays, else 1)",
    )
    fit.set_defaults(handler=_cmd_fit)


def _add_score(commands) -> None:
    """The ``score`` command."""
    score = commands.add_parser(
        "score",
        help="log-density of each row of a table",
        description="Write the log-density of each row of DATA (nats, original units; "
        "log-probability for integer and categorical columns) as a CSV column 'log_density'. "
        "Columns are matched by name when DATA names them all, else by position. The mean and "
        "its standard error go to stderr; rows outside the model's support (a level not seen in "
        "training, a value beyond a bound) score -inf and are counted there.",
    )
    score.add_argument("model", metavar="MODEL")
    score.add_argument("data", metavar="DATA")
    score.add_argument(
        "-o", "--output", metavar="OUT", help="output CSV (.npy by extension); default stdout"
    )
    score.add_argument(
        "--strict",
        action="store_true",
        help="a row outside the model's support (a level not seen in training, a value beyond a "
        "bound or off an integer lattice) is an error (exit status 2) instead of -inf",
    )
    score.set_defaults(handler=_cmd_score)


def _add_sample(commands) -> None:
    """The ``sample`` command."""
    sample = commands.add_parser(
        "sample",
        help="draw rows from a model",
        description="Draw rows from MODEL: a CSV with the column names (or .npy by extension), "
        "or CSV on stdout. For a conditional model give --context rows; N rows are drawn for "
        "each (default 1), and the output includes the context columns.",
    )
    sample.add_argument("model", metavar="MODEL")
    sample.add_argument("-n", "--num-samples", type=_positive_int, metavar="N", help="rows to draw")
    sample.add_argument("-o", "--output", metavar="OUT", help="output file; default stdout")
    sample.add_argument("--seed", type=_seed, metavar="N", help="seed (default: fresh randomness)")
    sample.add_argument("--context", metavar="FILE", help="context rows for a conditional model")
    sample.set_defaults(handler=_cmd_sample)


def _add_info(commands) -> None:
    """The ``info`` command."""
    info = commands.add_parser("info", help="print a model summary as JSON")
    info.add_argument("model", metavar="MODEL")
    info.set_defaults(handler=_cmd_info)


def _add_demo(commands) -> None:
    """The ``demo`` command."""
    from normflows_sci.datasets import DEFAULT_DATASET, list_datasets

    demo = commands.add_parser(
        "demo",
        help="flow vs Gaussian vs Gaussian mixture on a shipped dataset",
        description="Fit a flow and two classical baselines to a dataset shipped with the package "
        f"({', '.join(list_datasets())}) and print their held-out log-likelihoods and fit times "
        f"({1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%} train/test split). Every model scores the "
        "integer columns on the same cells, the lattice the flow detected (e.g. winds in 5-knot "
        f"steps). The flow trains for a fixed number of epochs ({DEMO_MAX_EPOCHS} by default), "
        "so the same seed gives the same numbers; the output says what stopped its training.",
    )
    demo.add_argument(
        "--dataset",
        choices=list_datasets(),
        default=DEFAULT_DATASET,
        help=f"default: {DEFAULT_DATASET}",
    )
    demo.add_argument(
        "--split",
        choices=("random", "block"),
        default="random",
        help="random: seeded shuffle (default); block: the last rows are the test set",
    )
    _add_training_options(demo, max_epochs_default=DEMO_MAX_EPOCHS, seed_default=0)
    demo.add_argument(
        "--threads",
        type=_positive_int,
        default=DEMO_THREADS,
        metavar="N",
        help=f"torch threads for training and scoring (default: {DEMO_THREADS})",
    )
    demo.set_defaults(handler=_cmd_demo)


# ----------------------------------------------------------------------------------------- main


def _message(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.strerror}: {error.filename}"
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split())  # one line


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 usage or data errors).

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors
        return exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args)
    except (CLIError, ValueError, TypeError, OSError) as error:
        if os.environ.get("NORMFLOWS_SCI_DEBUG"):  # developers: the full traceback
            raise
        if isinstance(error, BrokenPipeError):  # e.g. `normflows-sci sample ... | head`
            _silence_stdout()
            return 0
        print(f"{PROG}: error: {_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the exit flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
