"""Checks of DensityEstimator model files before anything is built from them, and the identity
of a DensityEstimator training run for checkpoints.

A model file's config says how to rebuild the flow (a "spec": columns, flow family, widths,
layers); its weights say what the trained tensors are. A hostile or damaged config could ask for
a network of 10^9 hidden units or 10^7 layers, so loading checks, in this order:

1. :func:`check_config`: every field's type and range, and that the column lists agree with each
   other (``ValueError`` naming the file and the field);
2. :func:`check_sizes`: that the stored tensors are at least as many and as large as the spec
   implies (a lower bound on the parameters of each flow family), and that the column counts match
   the stored standardisation and context statistics -- all without building anything, so a
   model is only built when its size is within a small factor of what the file holds;
3. :func:`check_categorical`: the categorical part of a mixed table's model (levels, kinds,
   counts, smoothing) is JSON data, checked field by field and against the spec's columns (the
   numeric columns then the dummies the levels imply);
4. :func:`build_with_weights`: build, then compare every tensor name and shape with the file
   before copying a single weight.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Sequence

import numpy as np
import torch

from normflows_sci._categorical import CategoricalSpec, categorical_from_config
from normflows_sci._tabular import spec_keys
from normflows_sci.io import data_fingerprint

__all__ = [
    "check_config",
    "check_sizes",
    "check_categorical",
    "check_atoms",
    "check_split_block",
    "member_tensors",
    "parameter_floor",
    "build_with_weights",
    "fit_fingerprint",
    "stored_params",
]

# The fields of a stored spec: those of TableSpec (format version 1).
_SPEC_KEYS = spec_keys()
_HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "learning_rate", "time")
# Constructor arguments that only limit the training budget: a resumed run may change them.
_BUDGET_PARAMS = ("max_epochs", "max_time", "patience")
# Constructor arguments added after format version 1, with their defaults: left out of files and
# checkpoint fingerprints at their default, so files and checkpoints of earlier versions (and
# earlier versions reading new files of numeric tables) still match.
_LATER_PARAMS = {"categorical": "auto", "ensemble": "auto"}


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _fail(where: str, expected: str, value) -> ValueError:
    return ValueError(f"{where} must be {expected}, got {_show(value)}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(value, where: str) -> int:
    if not _is_int(value) or value < 1:
        raise _fail(where, "a positive integer", value)
    return value


def _strings(value, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(where, "a list of strings", value)
    if len(set(value)) != len(value):
        raise ValueError(f"{where} has duplicate names: {_show(value)}")
    return value


def _per_column(spec: dict, key: str, where: str, features: int, check, expected: str) -> list:
    value = spec[key]
    if not isinstance(value, list) or len(value) != features:
        raise _fail(f"{where}[{key!r}]", f"a list of {features} entries (one per target)", value)
    for item in value:
        if not check(item):
            raise _fail(f"{where}[{key!r}]", f"a list of {expected}", value)
    return value


def _check_columns(spec: dict, where: str) -> int:
    """Column lists: context and targets split ``columns``, targets in table order."""
    columns = _strings(spec["columns"], f"{where}['columns']")
    context = _strings(spec["context_columns"], f"{where}['context_columns']")
    targets = _strings(spec["target_columns"], f"{where}['target_columns']")
    if not targets:
        raise ValueError(f"{where}['target_columns'] is empty: a model needs a target column")
    known, conditions = set(columns), set(context)  # sets: lists of 10^5 names stay cheap
    foreign = [c for c in context + targets if c not in known]
    if foreign or conditions & set(targets) or len(context) + len(targets) != len(columns):
        raise ValueError(
            f"{where}: 'context_columns' {_show(context)} and 'target_columns' {_show(targets)} "
            f"must split 'columns' {_show(columns)}"
        )
    if targets != [c for c in columns if c not in conditions]:
        raise ValueError(f"{where}['target_columns'] must follow the order of 'columns'")
    return len(targets)


def _check_spec(spec, where: str, flows: Collection[str]) -> dict:
    if not isinstance(spec, dict):
        raise _fail(where, "a JSON object", spec)
    missing = [k for k in _SPEC_KEYS if k not in spec]
    if missing:
        raise ValueError(f"{where} lacks the field(s) {missing}")
    features = _check_columns(spec, where)

    def finite(v):
        return _is_number(v) and math.isfinite(v)

    def bound(v):
        return v is None or finite(v)

    discrete = _per_column(
        spec, "discrete", where, features, lambda v: isinstance(v, bool), "bools"
    )
    step = _per_column(spec, "step", where, features, lambda v: finite(v) and v >= 0, "steps >= 0")
    if any(d and s <= 0 for d, s in zip(discrete, step)):
        raise ValueError(f"{where}['step'] must be positive for discrete columns, got {step}")
    _per_column(spec, "origin", where, features, finite, "finite numbers")
    for low_key, high_key in (("lower", "upper"), ("lower_effective", "upper_effective")):
        lows = _per_column(spec, low_key, where, features, bound, "finite numbers or null")
        highs = _per_column(spec, high_key, where, features, bound, "finite numbers or null")
        if any(lo is not None and hi is not None and lo >= hi for lo, hi in zip(lows, highs)):
            raise ValueError(f"{where}: {low_key!r} must be below {high_key!r} in every column")
    _per_column(
        spec, "tail_df", where, features, lambda v: v is None or (finite(v) and v > 0),
        "positive numbers or null",
    )  # fmt: skip
    if not isinstance(spec["flow"], str) or spec["flow"] not in flows:
        raise _fail(f"{where}['flow']", f"one of {sorted(flows)}", spec["flow"])
    _positive_int(spec["transforms"], f"{where}['transforms']")
    _positive_int(spec["bins"], f"{where}['bins']")
    hidden = spec["hidden_features"]
    if not isinstance(hidden, list) or not hidden or not all(_is_int(h) and h > 0 for h in hidden):
        raise _fail(f"{where}['hidden_features']", "a non-empty list of positive integers", hidden)
    if not isinstance(spec["frame"], bool):
        raise _fail(f"{where}['frame']", "true or false", spec["frame"])
    return spec


def _column_keys(value) -> bool:
    """A list of column names or positions."""
    return isinstance(value, list) and all(isinstance(v, str) or _is_int(v) for v in value)


def _pair(value) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(v is None or _is_number(v) for v in value)
    )


# The constructor arguments and what each may hold in a file (the constructor checks the rest).
_PARAM_TYPES: dict[str, tuple[str, Callable]] = {
    "flow": ("a string", lambda v: isinstance(v, str)),
    "transforms": ("a positive integer or null", lambda v: v is None or (_is_int(v) and v > 0)),
    "hidden_features": (
        "a positive integer, a list of them, or null",
        lambda v: (
            v is None
            or (_is_int(v) and v > 0)
            or (isinstance(v, list) and all(_is_int(h) and h > 0 for h in v))
        ),
    ),
    "bins": ("a positive integer", lambda v: _is_int(v) and v > 0),
    "bounds": (
        '"auto", an object {column: [low, high]} or null',
        lambda v: v is None or v == "auto" or (isinstance(v, dict) and all(map(_pair, v.values()))),
    ),
    "discrete": (
        '"auto", a list of columns or null',
        lambda v: v in (None, "auto") or _column_keys(v),
    ),
    "categorical": (
        '"auto", a list of columns or null',
        lambda v: v in (None, "auto") or _column_keys(v),
    ),
    "heavy_tails": ('"auto", true or false', lambda v: v == "auto" or isinstance(v, bool)),
    "context": ("a list of columns or null", lambda v: v is None or _column_keys(v)),
    "batch_size": ("a positive integer or null", lambda v: v is None or (_is_int(v) and v > 0)),
    "learning_rate": ("a number", _is_number),
    "weight_decay": ("a number", _is_number),
    "clip_grad": ("a number or null", lambda v: v is None or _is_number(v)),
    "schedule": ("a string", lambda v: isinstance(v, str)),
    "max_epochs": ("a positive integer or null", lambda v: v is None or (_is_int(v) and v > 0)),
    "max_time": ("a number or null", lambda v: v is None or _is_number(v)),
    "patience": ("an integer or null", lambda v: v is None or _is_int(v)),
    "validation_fraction": ("a number", _is_number),
    "random_state": ("an integer or null", lambda v: v is None or _is_int(v)),
    "ensemble": ('"auto" or a positive integer', lambda v: v == "auto" or (_is_int(v) and v > 0)),
}


def _check_params(params, where: str, names: Sequence[str]) -> dict:
    if not isinstance(params, dict):
        raise _fail(where, "a JSON object", params)
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {unknown}")
    for name, value in params.items():
        expected, check = _PARAM_TYPES.get(name, ("anything", lambda v: True))
        if not check(value):
            raise _fail(f"{where}[{name!r}]", expected, value)
    params = dict(params)
    if isinstance(params.get("bounds"), dict):
        params["bounds"] = {k: tuple(v) for k, v in params["bounds"].items()}
    return params


def _check_history(history, where: str) -> dict:
    if not isinstance(history, dict):
        raise _fail(where, "a JSON object", history)
    missing = [k for k in _HISTORY_KEYS if k not in history]
    if missing:
        raise ValueError(f"{where} lacks the field(s) {missing}")
    lengths = set()
    for key, values in history.items():
        if not isinstance(values, list) or not all(_is_number(v) for v in values):
            raise _fail(f"{where}[{key!r}]", "a list of numbers", values)
        lengths.add(len(values))
    if len(lengths) > 1:
        raise ValueError(f"{where}: the lists must have equal lengths, got {sorted(lengths)}")
    return history


def check_config(config: dict, path, *, flows: Collection[str], params: Sequence[str]):
    """Validate the fields of a DensityEstimator config read by :func:`normflows_sci.io.load_model`.

    Args:
        config: the parsed config.json (an object; format header already checked).
        path: the file, for messages.
        flows: the accepted flow names.
        params: the constructor arguments a file may set.

    Returns:
        ``(params, spec, history, fit_time)``: ``params`` ready for the constructor (bounds as
        tuples), the rest as stored (``fit_time`` NaN when absent).

    Raises:
        ValueError: a missing field or one of the wrong type or range, naming the file and the
            field (e.g. ``model.nfs: config field spec['hidden_features'] must be ...``).
    """
    where = f"{path}: config field"
    if config.get("kind") != "DensityEstimator":
        raise ValueError(f"{path} holds a {config.get('kind')!r}, not a DensityEstimator")
    missing = [k for k in ("params", "spec", "history") if k not in config]
    if missing:
        raise ValueError(f"{path}: config.json lacks the field(s) {missing}")
    spec = _check_spec(config["spec"], f"{where} spec", flows)
    checked = _check_params(config["params"], f"{where} params", params)
    if checked.get("flow", spec["flow"]) != spec["flow"]:
        raise ValueError(
            f"{where} params['flow'] ({checked['flow']!r}) differs from spec['flow'] "
            f"({spec['flow']!r})"
        )
    history = _check_history(config["history"], f"{where} history")
    fit_time = config.get("fit_time", math.nan)
    if not _is_number(fit_time):
        raise _fail(f"{where} fit_time", "a number", fit_time)
    return checked, spec, history, float(fit_time)


def check_categorical(config: dict, path, spec: dict) -> CategoricalSpec | None:
    """The categorical part of a checked config (None for a numeric table's model).

    Args:
        config: the config, its ``spec`` already checked by :func:`check_config`.
        path: the file, for messages.
        spec: the checked spec.

    Raises:
        ValueError: a malformed field, or levels that do not imply the spec's columns (naming
            the file and the field).
    """
    if "categorical" not in config:
        return None
    return categorical_from_config(
        config["categorical"],
        f"{path}: config field categorical",
        spec["columns"],
        spec["context_columns"],
    )


def check_atoms(config: dict, path, spec: dict) -> dict[str, tuple[float, float]]:
    """The point masses of a checked config's optional field ``atoms`` (``{column: [value,
    share]}`` of continuous target columns; ``{}`` when absent, as in earlier files).

    Raises:
        ValueError: not an object, an unknown or non-target column, a non-finite value or a
            share outside (0, 1], naming the file and the field.
    """
    atoms = config.get("atoms", {})
    where = f"{path}: config field atoms"
    if not isinstance(atoms, dict):
        raise _fail(where, "an object {column: [value, share]}", atoms)
    out = {}
    for column, pair in atoms.items():
        if column not in spec["target_columns"]:
            raise ValueError(f"{where} names {column!r}, not a target column of the spec")
        ok = isinstance(pair, list) and len(pair) == 2 and all(map(_is_number, pair))
        if not (ok and math.isfinite(pair[0]) and 0.0 < pair[1] <= 1.0):
            raise _fail(f"{where}[{column!r}]", "[finite value, share in (0, 1]]", pair)
        out[column] = (float(pair[0]), float(pair[1]))
    return out


def check_split_block(config: dict, path) -> int:
    """Rows per block of the fit's split, the optional field ``split_block`` (1 when absent, as in
    earlier files).

    Raises:
        ValueError: not a positive integer, naming the file and the field.
    """
    block = config.get("split_block", 1)
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise _fail(f"{path}: config field split_block", "a positive integer", block)
    return block


def member_tensors(
    config: dict, tensors: dict[str, torch.Tensor], path, *, limit: int
) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor | None]:
    """The stored tensors of each flow of the model, and an ensemble's log-weights.

    The optional config field ``members`` (1 when absent, as in earlier files) counts the flows
    of an ensemble (a ``FlowMixture``), whose tensors are ``members.<k>.<name>`` for ``k`` below
    it, plus ``log_weights`` ``(members,)``: finite log-weights whose weights sum to 1.

    Returns:
        ``(parts, log_weights)``: one ``{name: tensor}`` per flow (names without the prefix),
        and the log-weights (None for one flow).

    Raises:
        ValueError: ``members`` not an integer from 1 to ``limit``, bad log-weights, or a tensor
            that belongs to no flow (naming the file and the field or tensor).
    """
    members = config.get("members", 1)
    if isinstance(members, bool) or not isinstance(members, int) or not 1 <= members <= limit:
        raise _fail(f"{path}: config field members", f"an integer from 1 to {limit}", members)
    if members == 1:
        if "log_weights" in tensors:
            raise ValueError(
                f"{path}: member weights.pt holds an ensemble's tensors (log_weights), but "
                f"config field members is {members}"
            )
        return [tensors], None
    log_weights = tensors.get("log_weights")
    if (
        log_weights is None
        or tuple(log_weights.shape) != (members,)
        or not bool(torch.isfinite(log_weights).all())
        or abs(float(torch.logsumexp(log_weights.double(), 0))) > 1e-6
    ):
        raise ValueError(
            f"{path}: member weights.pt must hold a tensor 'log_weights' of {members} finite "
            f"log-weights whose weights sum to 1 (config field members is {members})"
        )
    parts: list[dict[str, torch.Tensor]] = [{} for _ in range(members)]
    for name, tensor in tensors.items():
        match = re.fullmatch(r"members\.(\d+)\.(.+)", name)
        if name != "log_weights" and (match is None or int(match[1]) >= members):
            raise ValueError(
                f"{path}: member weights.pt holds the tensor {name!r}, which belongs to no flow "
                f"of a {members}-member ensemble (config field members)"
            )
        if match is not None:
            parts[int(match[1])][match[2]] = tensor
    return parts, log_weights


# ------------------------------------------------------------------------------------ sizes


def _mlp(inputs: int, hidden: Sequence[int], outputs: int) -> int:
    """Weights of a fully connected network (biases left out: this is a lower bound)."""
    inner = sum(a * b for a, b in zip(hidden, hidden[1:]))
    return inputs * hidden[0] + inner + hidden[-1] * outputs


def parameter_floor(spec: dict) -> int:
    """A lower bound on the number of tensor entries the flow a spec describes holds.

    Counts only the weight matrices of each family's conditioner networks, so a correct file
    always stores at least this many entries, while the built model holds at most a few times
    as many (masks, biases, small buffers); a file storing fewer cannot match its spec.

    Example:
        >>> spec = {"flow": "maf", "target_columns": ["a", "b"], "context_columns": [],
        ...         "transforms": 2, "hidden_features": [8], "bins": 8}
        >>> parameter_floor(spec)  # 2 layers x (2 x 8 in, 8 x 4 out)
        96
    """
    features, context = len(spec["target_columns"]), len(spec["context_columns"])
    layers, hidden, bins = spec["transforms"], list(spec["hidden_features"]), spec["bins"]
    flow = spec["flow"]
    if flow == "nsf":  # MADE emitting 3 bins - 1 spline parameters per feature
        return layers * (_mlp(features, hidden, features * (3 * bins - 1)) + context * hidden[0])
    if flow == "maf":  # MADE emitting a shift and a scale per feature
        return layers * (_mlp(features, hidden, 2 * features) + context * hidden[0])
    if flow == "realnvp":  # couplings: at least half the features in, half transformed
        half = features // 2
        return layers * _mlp(half + context, hidden, 2 * half)
    if flow == "tarflow":  # blocks of len(hidden) Transformer layers of width max(hidden)
        width = max(hidden)
        per_block = len(hidden) * 12 * width**2 + (features + context + 3 * bins - 1) * width
        return layers * per_block
    if flow == "cnf":  # one velocity network of (state, time, context); layers/bins unused
        return _mlp(features + 1 + context, hidden, features)
    return 0


def _standardisation_features(tensors: dict) -> list[tuple[str, int]]:
    """``(name, features)`` of the stored standardisation steps of the model (the affine layer
    the estimator puts before the flow: ``transform._transforms.<i>.shift``)."""
    pattern = re.compile(r"transform\._transforms\.\d+\.shift")
    return [(k, t.shape[0]) for k, t in tensors.items() if pattern.fullmatch(k) and t.ndim == 1]


def check_sizes(spec: dict, tensors: dict[str, torch.Tensor], path) -> None:
    """Check, without building anything, that the stored tensors can be those of ``spec``.

    The column counts must equal the stored standardisation width and context statistics, the
    number of layers may not exceed the number of stored tensors, and the stored entries must
    reach :func:`parameter_floor`. A model that passes is at most a small multiple of the file
    in size, so building it is safe; the exact comparison comes after (:func:`build_with_weights`).

    Raises:
        ValueError: naming the file, the config field and the stored tensor that disagree.
    """
    features, context = len(spec["target_columns"]), len(spec["context_columns"])
    where = f"{path}: config field spec"
    for name, stored in _standardisation_features(tensors)[:1]:
        if stored != features:
            raise ValueError(
                f"{where}['target_columns'] lists {features} columns, but the weights "
                f"standardise {stored} ({name!r} has shape ({stored},))"
            )
    mean = tensors.get("embedding.mean")
    stored_context = (0,) if mean is None else tuple(mean.shape)
    if stored_context != (context,):
        raise ValueError(
            f"{where}['context_columns'] lists {context} columns, but the weights hold context "
            f"statistics of shape {stored_context} ('embedding.mean')"
        )
    count = len(tensors)
    layers = len(spec["hidden_features"]) * (1 if spec["flow"] == "cnf" else spec["transforms"])
    if layers > count or spec["transforms"] > count:
        raise ValueError(
            f"{where}: {spec['transforms']} transforms of {len(spec['hidden_features'])} hidden "
            f"layers cannot be stored in {count} tensors"
        )
    entries = sum(t.numel() for t in tensors.values())
    floor = parameter_floor(spec)
    if floor > entries:
        raise ValueError(
            f"{where}: a {spec['flow']} flow with transforms={spec['transforms']}, "
            f"hidden_features={_show(spec['hidden_features'])}, bins={spec['bins']} and "
            f"{features} target columns has at least {floor} weights, but the file stores "
            f"{entries} tensor entries: the config does not match the weights"
        )


def build_with_weights(
    build: Callable[[dict], torch.nn.Module], spec: dict, tensors: dict[str, torch.Tensor], path
) -> torch.nn.Module:
    """Build the model of a checked spec, compare its tensors' names and shapes with the stored
    ones, then copy the weights in. The build does not touch the global random state.

    Raises:
        ValueError: the spec cannot be built, or a tensor is missing, extra or of another shape
            (naming the file and the tensor).
    """
    try:
        with torch.random.fork_rng(devices=[]):
            model = build(spec)
    except (ValueError, TypeError, RuntimeError) as error:
        raise ValueError(f"{path}: config field spec describes no valid model: {error}") from error
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected]
    if missing or extra:
        raise ValueError(
            f"{path}: member weights.pt does not match its config: missing tensors "
            f"{_show(missing)}, unexpected tensors {_show(extra)}"
        )
    for name, tensor in expected.items():
        if tensors[name].shape != tensor.shape:
            raise ValueError(
                f"{path}: member weights.pt tensor {name!r} has shape "
                f"{tuple(tensors[name].shape)}, but the config implies {tuple(tensor.shape)}"
            )
    model.load_state_dict(tensors)
    return model.eval()


# ------------------------------------------------------------------------------------ checkpoints


def fit_fingerprint(params: dict, values: np.ndarray, names: Sequence[str], val_values) -> dict:
    """What identifies a DensityEstimator training run, for ``fit_flow(fingerprint=...)``.

    The raw table (before any preprocessing: a rescaled table changes the standardisation the
    checkpoint holds), its column names, the validation table and the constructor arguments
    except the budget ones (``max_epochs``, ``max_time``, ``patience``: a resumed run may extend
    them).

    Example:
        >>> table = np.arange(6.0).reshape(3, 2)
        >>> a = fit_fingerprint({"flow": "nsf"}, table, ["x", "y"], None)
        >>> a == fit_fingerprint({"flow": "nsf"}, 10 * table, ["x", "y"], None)
        False
    """
    return {
        "table": data_fingerprint(np.asarray(values)),
        "columns": list(names),
        "validation_table": None if val_values is None else data_fingerprint(val_values),
        "params": {k: v for k, v in stored_params(params).items() if k not in _BUDGET_PARAMS},
    }


def stored_params(params: dict) -> dict:
    """The constructor arguments a model file or checkpoint records: all but those added after
    format version 1 that are at their default.

    Example:
        >>> stored_params({"flow": "nsf", "categorical": "auto"})
        {'flow': 'nsf'}
    """
    return {k: v for k, v in params.items() if _LATER_PARAMS.get(k, object()) != v}
