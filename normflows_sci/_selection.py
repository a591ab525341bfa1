"""Model selection inside :meth:`DensityEstimator.fit`: a few flow sizes, one total time budget.

At its defaults the estimator does not bet on one network size. Small tables (a few hundred
rows) overfit a network that suits ten thousand rows within a few epochs, and a network sized
for small tables underfits large ones; the held-out score of real tables moved by tenths of a
nat per row between neighbouring sizes. So ``fit`` trains the neighbours of the size its
row-count rule picks (one step smaller, the rule's own, one step larger) on the same training
rows, each with early stopping on the same validation rows, and keeps the one with the best
validation log-likelihood (its best epoch). Every candidate is a plain flow of the user's
family, so the chosen one is stored by the usual model file (the spec records its size).

On a few hundred rows a Gaussian mixture fitted by EM beats any flow trained by stochastic
gradients, so unconditional tables of continuous columns under ``MIXTURE_MAX_ROWS`` training rows
get a fourth candidate: the smallest flow on a :class:`GaussianMixtureBase`, whose full-covariance
components are fitted by EM to the preprocessed training rows (their number chosen on the
validation rows) and then frozen. The flows start at the identity, so this candidate starts as
the validated mixture and training only moves it where the validation rows agree. Its record
carries ``components``, from which a model file rebuilds the base (weights stored as tensors).

``max_time`` bounds the WHOLE selection: each candidate gets an equal share of what is left
when it starts, so the shares never add up to more than the budget (each training run may
overrun its share by at most one optimiser step, as a single run may). A candidate that trains
until its share runs out, instead of stopping early, shows the budget is too small to try sizes:
the others are skipped and the rest of the budget trains that one further (from
``EXTEND_MIN_ROWS`` training rows; on smaller tables every candidate is tried: they are cheap,
and a share used up there more likely means a busy machine than a large table).

On small tables (under ``CV_MAX_ROWS`` rows) one validation split holds a few dozen rows, too
few to rank the candidates: held-out NLLs of the same size moved by tenths of a nat per row
between splits. There the training and validation rows are pooled and every candidate is
trained on each of ``CV_FOLDS`` folds (:func:`cv_folds`) with early stopping on the held-out
part; candidates are ranked by the row-weighted mean of the folds' best held-out NLLs
(:func:`cv_record`), the mixture base's component count is chosen on the same folds
(:func:`cv_mixture_components`), and the chosen candidate is trained again on all rows for the
median of its folds' best epoch counts (no rows left to stop on). Every fold and that refit take
an equal share of what is left of the same ``max_time``. A candidate whose folds cannot all be
trained in time is skipped (:class:`BudgetSpent`), except the first: a run whose share is spent
still takes one optimiser step, so a fit always returns a model. A first fold that trains until
its share runs out (instead of stopping early) shows the budget is too small for K times the
training: the fit then falls back to the one validation split (:class:`FoldsTooSlow`; the
preprocessing stays the one fitted to all rows). On small tables, folds cut short by the clock
chose worse than one split of fully trained candidates. Records of a cross-validated selection
carry ``folds``. A validation table given by the user (``X_val``) is respected: no
cross-validation.

On small tables (under ``ENSEMBLE_MAX_ROWS`` rows) the chosen candidate is then trained again
from ``ENSEMBLE_MEMBERS - 1`` other seeds (same rows, same size, same mixture components, same
stopping rule: early stopping on the validation rows, or the refit's epoch count after
cross-validation) and the model is their equal-weight mixture (:class:`~normflows_sci.flows.
FlowMixture`), an exact density. Averaging the densities removes part of each member's
overfitting, which dominates on small tables (the benchmark guide has the measurements; on
large tables the members' share of the budget costs more than the averaging gains). Members
take the last runs of the same ``max_time`` (:func:`select`'s ``reserve``); a member the budget
has no time left for is not trained.

Selection is skipped (one candidate, the rule's size) when the user fixed the size
(``transforms`` or ``hidden_features``), for the slow families (``tarflow``, ``cnf``), when there
are no validation rows to choose on, under torch.distributed (the ranks must agree on every step,
not on their clocks), and when training is checkpointed (a resumable run is one
model).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from normflows_sci.baselines import GaussianMixtureBaseline
from normflows_sci.distributions import Distribution

__all__ = [
    "Candidate",
    "Budget",
    "SIZE_LADDER",
    "SELECTABLE_FLOWS",
    "default_rung",
    "candidates_for",
    "select",
    "check_selection",
    "GaussianMixtureBase",
    "fit_mixture_base",
    "MIXTURE_MAX_ROWS",
    "EXTEND_MIN_ROWS",
    "CV_MAX_ROWS",
    "CV_FOLDS",
    "MAX_BLOCK_ROWS",
    "MIN_HELD_OUT_BLOCKS",
    "SERIAL_RATIO",
    "block_permutation",
    "block_rows",
    "is_serial",
    "cv_folds",
    "neighbour_ratio",
    "serial_block",
    "cv_mixture_components",
    "cv_record",
    "fold_score",
    "used_up",
    "BudgetSpent",
    "FoldsTooSlow",
    "ENSEMBLE_MEMBERS",
    "ENSEMBLE_MAX_ROWS",
    "MAX_ENSEMBLE",
]

#: Network sizes ``(transforms, hidden_features)`` from small to large; the row-count rule picks
#: one rung and selection tries it and its two neighbours.
SIZE_LADDER: tuple[tuple[int, tuple[int, ...]], ...] = (
    (2, (16,)),
    (3, (32, 32)),
    (5, (64, 64)),
    (5, (128, 128)),
)
#: Flow families whose sizes are selected (the others train too slowly to try several).
SELECTABLE_FLOWS = ("nsf", "maf", "realnvp")
#: Training rows below which the mixture-base candidate is tried (above, flows win and EM on
#: every component count gets slow).
MIXTURE_MAX_ROWS = 5000
# Component counts the mixture base chooses from (each kept only with 5 training rows per
# component), and the most a model file may hold.
MIXTURE_COMPONENTS = (1, 2, 4, 8, 16)
_ROWS_PER_COMPONENT = 5
#: Rows (training plus validation) below which the candidates are ranked by K-fold
#: cross-validation instead of one validation split (a few dozen validation rows rank them
#: by noise).
CV_MAX_ROWS = 500
#: Folds of that cross-validation.
CV_FOLDS = 5
#: Members of the default ensemble (``ensemble="auto"``) of a table under ``ENSEMBLE_MAX_ROWS``
#: rows whose network size is selected.
ENSEMBLE_MEMBERS = 3
#: Rows (training plus validation) below which ``ensemble="auto"`` trains an ensemble.
ENSEMBLE_MAX_ROWS = 500
#: The most members an ensemble (and a model file) may have.
MAX_ENSEMBLE = 32
# Rows this much closer to their neighbour than to a random row are serial (neighbour_ratio):
# the storms' fixes and randhie's person-years measure 0.08-0.11, shuffled tables about 1, tables
# sorted by class (iris, wine, penguins) 0.4-0.6.
SERIAL_RATIO = 0.3
MAX_BLOCK_ROWS = 100  # rows per block of a split of serial rows (serial_block)
MIN_HELD_OUT_BLOCKS = 20  # blocks a held-out part has at least
# Fields of one candidate's record in ``info()["selection"]`` and in model files; a
# cross-validated selection adds ``folds`` (its ``validation_nll`` is then the folds' mean).
_RECORD_FIELDS = (
    "name", "transforms", "hidden_features", "components", "validation_nll", "epochs", "status",
)  # fmt: skip
_CV_FIELD = "folds"
_STATUSES = (
    "chosen",
    "trained",
    "skipped: time budget spent",
    "failed",
    "skipped: budget went to a size that needed it",
)
#: Training rows from which a candidate that used up its share gets the rest of the budget.
EXTEND_MIN_ROWS = 1000
# A run whose last epoch ended after this share of its time was stopped by the clock.
USED_UP = 0.9


def default_rung(rows: int) -> int:
    """The rung of :data:`SIZE_LADDER` the row-count rule picks for ``rows`` training rows:
    (3, (32, 32)) below 1000 rows, (5, (64, 64)) below 5000, (5, (128, 128)) from 5000."""
    if rows >= 5000:
        return 3
    if rows >= 1000:
        return 2
    return 1


@dataclass(frozen=True)
class Candidate:
    """One network size tried by the selection (``name``: ``"default"``, ``"mixture"`` (the
    size on a Gaussian-mixture base), ``"smaller"`` or ``"larger"``; ``"fixed"`` when the user
    chose the size)."""

    name: str
    transforms: int
    hidden_features: tuple[int, ...]


def candidates_for(
    rows: int,
    *,
    flow: str,
    transforms: int | None,
    hidden_features: Sequence[int] | None,
    select: bool,
    mixture: bool = False,
) -> list[Candidate]:
    """The candidates for ``rows`` training rows: the rule's size first (it is trained even when
    the budget is tight), then, with ``mixture`` and under ``MIXTURE_MAX_ROWS`` rows, the
    smallest size on a Gaussian-mixture base, then the smaller and the larger neighbour. One
    candidate only when
    ``select`` is False, the user fixed ``transforms`` or ``hidden_features`` (the other one
    then follows the rule), or the family is not in :data:`SELECTABLE_FLOWS`.

    Example:
        >>> [c.name for c in candidates_for(300, flow="nsf", transforms=None,
        ...                                  hidden_features=None, select=True)]
        ['default', 'smaller', 'larger']
        >>> candidates_for(300, flow="nsf", transforms=4, hidden_features=None, select=True)
        [Candidate(name='fixed', transforms=4, hidden_features=(32, 32))]
    """
    rung = default_rung(rows)
    rule_transforms, rule_hidden = SIZE_LADDER[rung]
    fixed = transforms is not None or hidden_features is not None
    if fixed or not select or flow not in SELECTABLE_FLOWS:
        name = "fixed" if fixed else "default"
        size = (transforms or rule_transforms, tuple(hidden_features or rule_hidden))
        return [Candidate(name, *size)]
    chosen = [Candidate("default", rule_transforms, rule_hidden)]
    if mixture and rows < MIXTURE_MAX_ROWS:
        chosen.append(Candidate("mixture", *SIZE_LADDER[0]))
    if rung > 0:
        chosen.append(Candidate("smaller", *SIZE_LADDER[rung - 1]))
    if rung + 1 < len(SIZE_LADDER):
        chosen.append(Candidate("larger", *SIZE_LADDER[rung + 1]))
    return chosen


class Budget:
    """The total wall-clock budget of a selection, shared out between the candidates.

    Args:
        max_time: seconds for the whole selection, or None (no time limit).
        clock: the clock (seconds; default ``time.perf_counter``).
    """

    def __init__(self, max_time: float | None, clock: Callable[[], float] | None = None):
        self.max_time = max_time
        self.clock = clock or time.perf_counter
        self.start = self.clock()

    def share(self, left: int) -> float | None:
        """The seconds for the next of ``left`` candidates still to train: an equal share of
        what remains (None without a limit; 0 when nothing remains)."""
        if self.max_time is None:
            return None
        remaining = self.max_time - (self.clock() - self.start)
        return max(remaining, 0.0) / left


class BudgetSpent(Exception):
    """Raised by a candidate's ``train`` (see :func:`select`) when the budget ran out before it
    could finish (a cross-validated candidate with folds left): the candidate is skipped."""


class FoldsTooSlow(Exception):
    """Raised when the first cross-validation fold trained until its share of the budget ran
    out: the budget is too small to cross-validate, the fit uses one validation split."""


def _best_validation(history: dict) -> float:
    finite = [v for v in history.get("val_loss", []) if math.isfinite(v)]
    return min(finite) if finite else math.inf


def select(
    candidates: Sequence[Candidate],
    train: Callable,
    budget: Budget,
    extend: Callable | None = None,
    folds: int | None = None,
    reserve: int = 0,
) -> tuple:
    """Train the candidates in turn within ``budget`` and keep the best on validation.

    A candidate that trains until its share runs out (instead of stopping early) shows that the
    budget is too small for the table to try sizes: the remaining candidates are skipped and, with
    ``extend``, the rest of the budget trains the best one further.

    Args:
        candidates: from :func:`candidates_for` (the first is always trained).
        train: ``train(candidate, max_time) -> (result, history)``; ``max_time`` is the
            candidate's share (None: no limit). ``history["val_loss"]`` (nats per row) ranks
            them; ``history["components"]``, if present, goes to the record. A ``ValueError``
            marks the candidate failed; :class:`BudgetSpent` skips it (the first candidate
            must not raise it: a fit always returns a model).
        budget: the total budget.
        extend: ``extend(result, history, max_time) -> history``: more training of a result
            (its history continued), or None: then every candidate is tried whatever the
            earlier ones took (for small tables, where the sizes are cheap and the choice
            matters most).
        folds: the fold count when ``train`` cross-validates (its ``history`` from
            :func:`cv_record`): every record then carries ``folds``.
        reserve: runs of the same budget that follow the selection (ensemble members): the
            candidates' shares leave them their equal part.

    Returns:
        ``(result of the chosen candidate, its history, records)``: ``records`` lists every
        candidate (``name``, ``transforms``, ``hidden_features``, ``components``,
        ``validation_nll``, ``epochs``, ``status``) in the order tried.

    Raises:
        ValueError: every trained candidate failed (the first candidate's error).
    """
    records, best, first_error, ran_out = [], None, None, False
    for index, candidate in enumerate(candidates):
        share = budget.share(len(candidates) - index + reserve)
        record = _record(candidate, ran_out)
        if folds is not None:
            record[_CV_FIELD] = folds
        records.append(record)
        if ran_out or (index and share is not None and share <= 0):
            continue
        try:
            result, history = train(candidate, share)
        except BudgetSpent:
            continue  # its record still says "skipped: time budget spent"
        except ValueError as error:
            first_error = first_error or error
            record["status"] = "failed"
            continue
        record["components"] = history.pop("components", None)
        best = _ranked(best, result, history, record)
        ran_out = extend is not None and share is not None and used_up(history, share)
    if best is None:
        raise first_error
    remaining = budget.share(1 + reserve)
    skipped = any(r["status"] == _STATUSES[4] for r in records)
    if skipped and extend is not None and remaining:
        history = extend(best[1], best[2], remaining)
        best = _ranked(None, best[1], history, best[3])
    best[3]["status"] = "chosen"
    return best[1], best[2], records


def _record(candidate: Candidate, ran_out: bool) -> dict:
    status = "skipped: budget went to a size that needed it" if ran_out else _STATUSES[2]
    return dict(
        name=candidate.name,
        transforms=candidate.transforms,
        hidden_features=list(candidate.hidden_features),
        components=None,
        validation_nll=None,
        epochs=0,
        status=status,
    )


def _ranked(best: tuple | None, result, history: dict, record: dict) -> tuple:
    """``(score, result, history, record)`` of the better of ``best`` and this candidate, whose
    record gets its score and epochs."""
    score = _best_validation(history)
    record.update(status="trained", epochs=len(history["epoch"]))
    record["validation_nll"] = score if math.isfinite(score) else None
    return (score, result, history, record) if best is None or score < best[0] else best


def used_up(history: dict, share: float | None) -> bool:
    """Whether a run trained until its time ``share`` ran out (rather than stopping early; never
    without a share)."""
    if share is None:
        return False
    times = history.get("time") or [0.0]
    return share > 0 and times[-1] >= USED_UP * share


def check_selection(value, where: str) -> list[dict]:
    """Validate the ``selection`` records of a model file (JSON data only).

    Raises:
        ValueError: not a list of records with exactly the fields of :func:`select`'s, of the
            right types, exactly one of them chosen (naming ``where``).
    """
    if not isinstance(value, list) or not 1 <= len(value) <= len(SIZE_LADDER) + 1:
        raise ValueError(f"{where} must be a list of 1 to {len(SIZE_LADDER) + 1} records")
    for i, record in enumerate(value):
        fields = sorted(record) if isinstance(record, dict) else None
        if fields not in (sorted(_RECORD_FIELDS), sorted((*_RECORD_FIELDS, _CV_FIELD))):
            raise ValueError(
                f"{where}[{i}] must be an object with the fields {_RECORD_FIELDS} "
                f"(and {_CV_FIELD!r} when cross-validated)"
            )
        hidden, nll = record["hidden_features"], record["validation_nll"]
        ok = (
            isinstance(record["name"], str)
            and record["status"] in _STATUSES
            and _positive_int(record["transforms"])
            and isinstance(hidden, list)
            and len(hidden) > 0
            and all(_positive_int(h) for h in hidden)
            and (nll is None or (isinstance(nll, (int, float)) and math.isfinite(nll)))
            and (_positive_int(record["epochs"]) or record["epochs"] == 0)
            and _components_ok(record)
            and (record.get(_CV_FIELD) is None or _positive_int(record[_CV_FIELD]))
        )
        if not ok:
            raise ValueError(f"{where}[{i}] holds a field of the wrong type or range: {record}")
    if sum(r["status"] == "chosen" for r in value) != 1:
        raise ValueError(f"{where} must mark exactly one record 'chosen'")
    if len({_CV_FIELD in r for r in value}) != 1:
        raise ValueError(f"{where}: either every record or none has the field {_CV_FIELD!r}")
    return value


def _components_ok(record: dict) -> bool:
    """A trained mixture record names its component count (at most the largest one tried);
    every other record has none."""
    count = record["components"]
    if record["name"] != "mixture" or record["status"] not in ("chosen", "trained"):
        return count is None
    return _positive_int(count) and count <= max(MIXTURE_COMPONENTS)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class GaussianMixtureBase(Distribution):
    """A fixed mixture of full-covariance Gaussians: the base of the mixture candidate.

    Buffers (stored with the model's weights, not trained): ``log_weights`` ``(k,)``, ``means``
    ``(k, d)`` and ``scale_tril`` ``(k, d, d)`` (lower-triangular Cholesky factors, positive
    diagonal), so ``log_prob`` is ``logsumexp_j [log w_j + log N(z | mu_j, L_j L_j^T)]``.

    Example:
        >>> base = GaussianMixtureBase(2, components=3)
        >>> base.log_prob(torch.zeros(1, 2))  # three standard normals
        tensor([-1.8379])
    """

    def __init__(self, features: int, components: int):
        super().__init__(features)
        self.register_buffer("log_weights", torch.full((components,), -math.log(components)))
        self.register_buffer("means", torch.zeros(components, features))
        self.register_buffer("scale_tril", torch.eye(features).repeat(components, 1, 1))

    def _log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        features = self.event_shape[0]
        centred = (inputs[:, None, :] - self.means).unsqueeze(-1)  # (n, k, d, 1)
        whitened = torch.linalg.solve_triangular(self.scale_tril, centred, upper=False)
        log_det = torch.diagonal(self.scale_tril, dim1=-2, dim2=-1).log().sum(-1)
        joint = (
            -0.5 * whitened.squeeze(-1).square().sum(-1)
            - log_det
            - 0.5 * features * math.log(2.0 * math.pi)
            + self.log_weights
        )
        return torch.logsumexp(joint, dim=-1)

    def _sample(self, num_samples: int, generator) -> Tensor:
        which = torch.multinomial(
            self.log_weights.exp(), num_samples, replacement=True, generator=generator
        )
        noise = self._randn(num_samples, self.event_shape[0], 1, generator=generator)
        return self.means[which] + (self.scale_tril[which] @ noise).squeeze(-1)


def _mixture_counts(rows: int) -> list[int]:
    return [k for k in MIXTURE_COMPONENTS if k * _ROWS_PER_COMPONENT <= rows] or [1]


def fit_mixture_base(
    latent_train: np.ndarray,
    latent_val: np.ndarray | None,
    seed: int,
    components: int | None = None,
):
    """A :class:`GaussianMixtureBase` fitted by EM to ``latent_train`` ``(n, d)`` (float64,
    preprocessed rows) with ``components`` components, or (None) the best count of
    ``MIXTURE_COMPONENTS`` (with at least 5 rows each) on ``latent_val`` ``(m, d)``."""
    mixture = GaussianMixtureBaseline(
        components,
        candidates=_mixture_counts(len(latent_train)),
        covariance="full",
        max_iter=100,
        random_state=seed,
    ).fit(latent_train, None if components is not None else latent_val)
    base = GaussianMixtureBase(latent_train.shape[1], mixture.components_)
    with torch.no_grad():
        base.log_weights.copy_(torch.as_tensor(np.log(mixture.weights_)))
        base.means.copy_(torch.as_tensor(mixture.means_))
        base.scale_tril.copy_(torch.as_tensor(np.linalg.cholesky(mixture.covariances_)))
    return base


def neighbour_ratio(values: np.ndarray, seed: int = 0, pairs: int = 2000) -> float:
    """Median distance between consecutive rows over median distance between random pairs of
    rows (standardised columns; up to ``pairs`` of each, seeded): about 1 for rows in random
    order, near 0 for a series of near-copies (six-hourly fixes of a storm, a panel sorted by
    unit and year). NaN for fewer than three rows."""
    rows = len(values)
    if rows < 3:
        return math.nan
    x = np.asarray(values, dtype=np.float64)
    peak = np.abs(x).max(axis=0)
    x = x / np.where(peak > 0, peak, 1.0)  # first to order 1: no overflow in the spread
    spread = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    rng = np.random.default_rng(seed)
    first = rng.integers(0, rows - 1, size=min(rows - 1, pairs))
    a, b = rng.integers(0, rows, size=(2, len(first)))
    near = np.median(np.linalg.norm(x[first + 1] - x[first], axis=1))
    far = np.median(np.linalg.norm(x[a] - x[b], axis=1))
    return float(near / far) if far > 0 else math.nan


def serial_block(values: np.ndarray, held_out: int) -> int:
    """Rows per block of a split of ``values`` holding out about ``held_out`` rows: 1 (rows
    split singly) unless the rows are serial (:func:`neighbour_ratio` below ``SERIAL_RATIO``),
    where a split of single rows puts near-copies of every held-out row in training and rewards
    memorising (early stopping then never sees overfitting); then blocks of consecutive rows,
    ``held_out // MIN_HELD_OUT_BLOCKS`` of them up to ``MAX_BLOCK_ROWS``.

    Example:
        >>> t = np.linspace(0.0, 20.0, 2000)
        >>> serial_block(np.stack([np.sin(t), t], axis=1), held_out=200)  # a smooth series
        10
        >>> serial_block(np.random.default_rng(0).normal(size=(2000, 2)), held_out=200)
        1
    """
    return block_rows(held_out) if is_serial(values) else 1


def is_serial(values: np.ndarray) -> bool:
    """Whether the rows of ``values`` are serial: :func:`neighbour_ratio` below
    ``SERIAL_RATIO``."""
    return neighbour_ratio(values) < SERIAL_RATIO


def block_rows(held_out: int) -> int:
    """Rows per block of a split of serial rows holding out ``held_out`` rows:
    ``held_out // MIN_HELD_OUT_BLOCKS``, between 1 and ``MAX_BLOCK_ROWS``."""
    return max(1, min(MAX_BLOCK_ROWS, held_out // MIN_HELD_OUT_BLOCKS))


def block_permutation(rows: int, seed: int, block: int = 1) -> np.ndarray:
    """A seeded permutation of ``range(rows)`` keeping blocks of ``block`` consecutive rows
    together, the blocks in random order; ``block=1`` is ``default_rng(seed).permutation``.

    Example:
        >>> block_permutation(7, seed=0, block=3).tolist()
        [6, 0, 1, 2, 3, 4, 5]
    """
    rng = np.random.default_rng(seed)
    if block <= 1:
        return rng.permutation(rows)
    starts = rng.permutation(-(-rows // block)) * block
    order = (starts[:, None] + np.arange(block)).ravel()
    return order[order < rows]


def cv_folds(
    rows: int, seed: int, folds: int = CV_FOLDS, block: int = 1
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` pairs of row indices ``(training, held out)`` over ``rows`` rows: the seeded
    :func:`block_permutation` (blocks of ``block`` consecutive rows, see :func:`serial_block`)
    cut into ``folds`` near-equal parts, each held out once (same ``seed``, same folds).

    Example:
        >>> [(len(a), len(b)) for a, b in cv_folds(12, seed=0, folds=3)]
        [(8, 4), (8, 4), (8, 4)]
    """
    parts = np.array_split(block_permutation(rows, seed, block), folds)
    return [(np.concatenate(parts[:j] + parts[j + 1 :]), parts[j]) for j in range(folds)]


def cv_mixture_components(latent: np.ndarray, folds: Sequence, seed: int) -> int:
    """The component count of the mixture base with the best mean held-out log-likelihood over
    ``folds`` (from :func:`cv_folds`) of the preprocessed rows ``latent`` ``(n, d)``; counts are
    those :func:`fit_mixture_base` tries on the smallest fold's training rows."""
    counts = _mixture_counts(min(len(train) for train, _ in folds))
    total = dict.fromkeys(counts, 0.0)
    for train, held_out in folds:
        mixture = GaussianMixtureBaseline(
            candidates=counts, covariance="full", max_iter=100, random_state=seed
        ).fit(latent[train], latent[held_out])
        for k in counts:  # a count EM could not fit on a fold scores -inf there
            total[k] += mixture.validation_scores_.get(k, -math.inf) * len(held_out)
    return max(counts, key=lambda k: (total[k], -k))


def fold_score(history: dict, held_out: int) -> tuple[float, int, int]:
    """``(best held-out NLL, held_out, its epoch)`` of one cross-validation fold from its training
    ``history`` (``val_loss`` and ``epoch``), for :func:`cv_record` (ties: the earliest epoch).

    Raises:
        ValueError: the fold has no finite held-out loss (it trained no epoch, or diverged): the
            candidate then fails (:func:`select`) rather than ranking on fewer folds.

    Example:
        >>> fold_score({"epoch": [1, 2, 3], "val_loss": [2.0, 1.5, float("nan")]}, held_out=40)
        (1.5, 40, 2)
    """
    pairs = [(v, e) for v, e in zip(history["val_loss"], history["epoch"]) if math.isfinite(v)]
    if not pairs:
        raise ValueError(
            "cross-validation: a fold has no finite held-out loss (it trained no epoch or "
            "diverged); try a smaller learning_rate or clip_grad"
        )
    best, epoch = min(pairs)
    return float(best), held_out, int(epoch)


def cv_record(fold_scores: Sequence[tuple[float, int, int]]) -> dict:
    """The history :func:`select` ranks a cross-validated candidate by, from each fold's
    ``(best held-out NLL, held-out rows, best epoch)`` (:func:`fold_score`): ``val_loss`` the
    row-weighted mean NLL and ``epoch`` one entry per epoch of the median best epoch (the epochs
    the refit on all rows trains)."""
    nll = sum(score * rows for score, rows, _ in fold_scores) / sum(r for _, r, _ in fold_scores)
    epochs = max(1, int(np.median([epoch for *_, epoch in fold_scores])))
    return {"val_loss": [nll], "epoch": list(range(1, epochs + 1))}
