"""Performance grid: normflows_sci against nflows, zuko and normflows over features x batch.

Run from the repository root, on an otherwise idle machine::

    python benchmarks/bench_perf.py                        # full grid (~45 min on 2 cores)
    python benchmarks/bench_perf.py --quick                # smoke run
    python benchmarks/bench_perf.py --cases ar_spline --features 64 --batches 4096
    python benchmarks/bench_perf.py --json perf.json       # also save every raw number

The models are those of ``bench_flows.py`` (imported from it, so both scripts always time the
same architectures): for each case every package builds 5 layers with (128, 128) conditioners,
and the ``floor`` row runs only normflows_sci's conditioner networks. For each case, number of
features and batch size the script records, per package:

* ``train``: wall time of one training step (``log_prob`` on the batch, mean NLL, backward,
  ``Adam.step``), median over ``--repeats`` calls after ``--warmup`` calls;
* ``sample``: wall time to draw ``batch`` samples under ``torch.no_grad()``, reported as
  samples per second;
* the peak memory of one more, untimed, call of each (see ``_common.PeakMemory``: the peak of
  the tensor memory the call allocates above what was live before it, from the allocation
  events of torch's profiler on CPU, ``max_memory_allocated`` on CUDA; not measured for calls
  slower than ``--max-seconds``).

Repeats are interleaved across packages so load drifts hit all alike. Long calls:

* the first call of every package is timed; when it takes more than ``--max-seconds`` it is
  recorded as the only measurement (marked ``*``) and not repeated;
* a first call longer than ``--max-seconds / --repeats`` counts as a timed call (no warm-up:
  the model already ran at the smaller batches, and warm-up effects vanish at that length),
  and only as many timed calls are made as fit in about ``--max-seconds``; this keeps the
  largest grid points from dominating the run time;
* before that first call, the package's measurements of the same case and metric at the next
  smaller batch (same features) and at the next smaller features (same batch) predict its
  time: linear in batch, and for autoregressive sampling (``features`` sequential passes) also
  linear in features. A prediction above 4 x ``--max-seconds`` skips the call ("skipped (est.
  N s)"); the same scaling of the measured peak memory skips calls predicted to need more
  than ``--max-memory-gb`` (default 70% of the memory available at start), which would
  otherwise get the process killed. Skipped predictions feed the next predictions.

Targets (printed as a verdict per configuration): training step at most 0.6x the fastest
peer's time and at most 1.3x the floor's; sampling at most 0.6x the fastest peer's time; peak
memory of training and of sampling at most the smallest peer's. Ratios are always
normflows_sci / other, so below 1 means normflows_sci is faster or smaller. A ratio marked
``~`` compares with a skipped peer's predicted time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from _common import OtherLoad, PeakMemory, pin_allocator, version, versions, warn_if_busy
from bench_flows import (
    BINS,
    CASES,
    COUPLING,
    FLOOR,
    HIDDEN,
    OURS,
    PACKAGES,
    TAIL_BOUND,
    TRANSFORMS,
    Bench,
    build_benches,
    describe,
    first_line,
    fmt_ms,
    fmt_ratio,
    ratio,
    sample_step,
    train_step,
)

PEERS = tuple(name for name in PACKAGES if name not in (OURS, FLOOR))
METRICS = ("train", "sample")
FEATURES = (4, 16, 64, 256)
BATCHES = (256, 4096, 65536)
QUICK_FEATURES = (4, 16)
QUICK_BATCHES = (256, 1024)
CHECK_ROWS = 64  # models are validated on this many rows, not on the full (maybe huge) batch
SKIP_FACTOR = 4.0  # skip a call predicted to take more than this times --max-seconds
PEER_LIMIT = 0.6  # ours / fastest peer, for training and sampling time
FLOOR_LIMIT = 1.3  # ours / floor, training time
MEMORY_LIMIT = 1.0  # ours / smallest peer, peak memory
MB = 1e6

Key = tuple[str, int, int, str, str]  # case, features, batch, package, metric


@dataclass
class Cell:
    """What was measured for one package, metric and grid point.

    ``times`` holds the timed calls in seconds; ``single`` marks a lone call that took longer
    than ``--max-seconds``; ``skipped`` says why no call was made ("est. N s" or "est. N GB",
    ``skipped_for`` "time" or "memory"), with the predicted ``est_seconds`` / ``est_bytes``;
    ``peak`` is the peak memory of one call in bytes.
    """

    times: list[float] = field(default_factory=list)
    single: bool = False
    skipped: str | None = None
    skipped_for: str | None = None
    est_seconds: float | None = None
    est_bytes: float | None = None
    peak: int | None = None
    peak_note: str = ""
    error: str | None = None

    @property
    def seconds(self) -> float | None:
        """Median measured time of one call, or None."""
        if self.error is not None or not self.times:
            return None
        return statistics.median(self.times)

    @property
    def time_or_estimate(self) -> tuple[float | None, bool]:
        """Measured seconds, else the prediction that skipped the call as too slow; and whether
        it is that prediction. (A call skipped for memory has no trustworthy time.)"""
        if self.seconds is not None:
            return self.seconds, False
        if self.skipped_for == "time" and self.est_seconds is not None:
            return self.est_seconds, True
        return None, False


def predict(
    history: dict[tuple[int, int], float], features: int, batch: int, per_feature: bool
) -> float | None:
    """Predict a quantity at (features, batch) from the nearest smaller grid points.

    The value at the largest smaller batch with the same features is scaled linearly in batch;
    the value at the largest smaller features with the same batch is scaled linearly in features
    when ``per_feature`` (else kept). Returns the larger prediction, or None without history.
    """
    estimates = []
    smaller_batches = [b for f, b in history if f == features and b < batch]
    if smaller_batches:
        b = max(smaller_batches)
        estimates.append(history[features, b] * batch / b)
    smaller_features = [f for f, b in history if b == batch and f < features]
    if smaller_features:
        f = max(smaller_features)
        estimates.append(history[f, batch] * (features / f if per_feature else 1.0))
    return max(estimates) if estimates else None


def predict_memory(
    history: dict[tuple[int, int], float], features: int, batch: int
) -> float | None:
    """Predict peak memory: linear in batch from the same features when measured there (the
    better model: activations scale with the batch), else linear in features."""
    same_features = {key: value for key, value in history.items() if key[0] == features}
    if same_features:
        return predict(same_features, features, batch, per_feature=False)
    return predict(history, features, batch, per_feature=True)


def progress(message: str, start: float) -> None:
    elapsed = time.perf_counter() - start
    print(f"[{elapsed // 60:3.0f}m{elapsed % 60:02.0f}s] {message}", file=sys.stderr, flush=True)


class Grid:
    """Runs the grid and keeps every cell, plus the history used to predict long calls."""

    def __init__(self, args: argparse.Namespace, memory: PeakMemory) -> None:
        self.args = args
        self.memory = memory
        self.cells: dict[Key, Cell] = {}
        self.build_errors: dict[tuple[str, int], dict[str, str]] = {}
        self.notes: dict[str, dict[str, str]] = {}  # case -> package -> note
        self.params: dict[tuple[str, int], dict[str, int]] = {}
        self.api_notes: list[str] = []
        self.time_history: dict[tuple[str, str, str], dict[tuple[int, int], float]] = {}
        self.memory_history: dict[tuple[str, str, str], dict[tuple[int, int], float]] = {}
        self.start = time.perf_counter()
        self.points = len(args.cases) * len(args.features) * len(args.batches)
        self.done = 0
        self.other_cores: dict[str, float | None] = {}  # CPU cores other processes used

    def run(self) -> None:
        for case in self.args.cases:
            monitor = OtherLoad()
            for features in self.args.features:
                self.run_features(case, features)
            self.other_cores[case] = monitor.cores()

    def run_features(self, case: str, features: int) -> None:
        """Build every package's model once for (case, features) and time it at each batch."""
        check_x = torch.randn(CHECK_ROWS, features, generator=torch.Generator().manual_seed(1))
        benches, results = build_benches(
            case, features, check_x, self.api_notes, self.args.packages, self.args.verbose
        )
        errors = {name: f"{res.error} {res.note}" for name, res in results.items() if res.error}
        self.build_errors[case, features] = errors
        self.params[case, features] = {name: bench.params for name, bench in benches.items()}
        for name, res in results.items():
            self.notes.setdefault(case, {})[name] = res.note
        for name, error in errors.items():
            progress(f"{case} F={features}: {name} not built: {error}", self.start)
        for batch in self.args.batches:
            self.done += 1
            progress(f"({self.done}/{self.points}) {case} F={features} B={batch}", self.start)
            self.run_point(case, features, batch, benches)

    def run_point(self, case: str, features: int, batch: int, benches: dict[str, Bench]) -> None:
        x = torch.randn(batch, features, generator=torch.Generator().manual_seed(1))
        self.run_metric(case, features, batch, "train", benches, lambda b: train_step(b, x))
        self.run_metric(case, features, batch, "sample", benches, lambda b: sample_step(b, batch))

    def run_metric(
        self,
        case: str,
        features: int,
        batch: int,
        metric: str,
        benches: dict[str, Bench],
        step: Callable[[Bench], float],
    ) -> None:
        """Probe, repeat (interleaved across packages) and measure memory for one metric."""
        label = f"{case} F={features} B={batch}"
        plans: dict[str, list[int]] = {}  # name -> [warm-up calls left, timed calls left]
        cells: dict[str, Cell] = {}
        for name, bench in benches.items():
            cell = cells[name] = self.cells[case, features, batch, name, metric] = Cell()
            if self.skip(cell, case, features, batch, name, metric):
                progress(f"{label} {name} {metric}: skipped ({cell.skipped})", self.start)
                continue
            try:
                first = step(bench)
            except Exception as exc:  # a failing package must not stop the run
                cell.error = f"{describe(exc)} {first_line(exc)}"
                progress(f"{label} {name} {metric}: {cell.error}", self.start)
                continue
            plan = self.plan(cell, first)
            more = sum(plan)
            if more:
                plans[name] = plan
            progress(
                f"{label} {name} {metric}: first call {first * 1e3:.1f} ms"
                + (" > --max-seconds, not repeated" if cell.single else f", {more} more"),
                self.start,
            )

        # Interleave the remaining calls: one per package per round, warm-up calls first.
        while plans:
            for name in list(plans):
                plan = plans[name]
                try:
                    elapsed = step(benches[name])
                except Exception as exc:
                    cells[name].error = f"{describe(exc)} {first_line(exc)}"
                    del plans[name]
                    continue
                if plan[0] > 0:
                    plan[0] -= 1
                else:
                    cells[name].times.append(elapsed)
                    plan[1] -= 1
                if sum(plan) == 0:
                    del plans[name]

        for name, bench in benches.items():
            cell = cells[name]
            if cell.skipped is not None or cell.error is not None:
                continue
            self.measure_memory(cell, bench, step)
            history = (case, name, metric)
            self.time_history.setdefault(history, {})[features, batch] = cell.seconds
            if cell.peak is not None:
                self.memory_history.setdefault(history, {})[features, batch] = cell.peak
            peak = "" if cell.peak is None else f", peak {cell.peak / MB:.1f} MB"
            calls = "1 call > --max-seconds" if cell.single else f"median of {len(cell.times)}"
            progress(
                f"{label} {name} {metric}: {cell.seconds * 1e3:.1f} ms ({calls}){peak}",
                self.start,
            )

    def plan(self, cell: Cell, first: float) -> list[int]:
        """Record the first call and return [warm-up calls, timed calls] still to make.

        A first call above --max-seconds is the only measurement. One above
        --max-seconds / --repeats is timed as it is (warm-up effects are negligible at that
        length, and the model already ran at the smaller batches), and the package gets only as
        many timed calls as fit in about --max-seconds. Otherwise the first call is the first
        warm-up call (or, with --warmup 0, the first timed call) and --repeats calls are timed.
        """
        args = self.args
        if first > args.max_seconds:
            cell.times, cell.single = [first], True
            return [0, 0]
        if first >= args.max_seconds / args.repeats:
            cell.times.append(first)
            timed = min(args.repeats, max(1, int(args.max_seconds // first)))
            return [0, timed - 1]
        if args.warmup == 0:
            cell.times.append(first)
            return [0, args.repeats - 1]
        return [args.warmup - 1, args.repeats]

    def skip(
        self, cell: Cell, case: str, features: int, batch: int, name: str, metric: str
    ) -> bool:
        """Decide from smaller grid points whether this call would be too slow or too big."""
        history = (case, name, metric)
        autoregressive_sampling = metric == "sample" and case not in COUPLING
        seconds = predict(
            self.time_history.get(history, {}), features, batch, autoregressive_sampling
        )
        peak = predict_memory(self.memory_history.get(history, {}), features, batch)
        if seconds is not None and seconds > SKIP_FACTOR * self.args.max_seconds:
            cell.skipped, cell.skipped_for = f"est. {seconds:.0f} s", "time"
        elif peak is not None and peak > self.args.max_memory_gb * 1e9:
            cell.skipped, cell.skipped_for = f"est. {peak / 1e9:.1f} GB", "memory"
        else:
            return False
        cell.est_seconds, cell.est_bytes = seconds, peak
        # Predictions feed later predictions, so larger points are skipped too.
        if seconds is not None:
            self.time_history.setdefault(history, {})[features, batch] = seconds
        if peak is not None:
            self.memory_history.setdefault(history, {})[features, batch] = peak
        return True

    def measure_memory(self, cell: Cell, bench: Bench, step: Callable[[Bench], float]) -> None:
        """One more, untimed, call under the peak-memory probe (skipped for slow calls). The
        floor is measured too: its peak is not compared, but predicts its memory at larger
        grid points, like any package's."""
        if not self.memory.available:
            cell.peak_note = self.memory.reason or "n/a"
            return
        if cell.single:
            cell.peak_note = "not measured: call slower than --max-seconds"
            return
        try:
            cell.peak = self.memory.measure(lambda: step(bench), device=self.args.device)
        except Exception as exc:
            cell.peak_note = f"memory call failed: {describe(exc)}"

    def cell(self, case: str, features: int, batch: int, name: str, metric: str) -> Cell:
        return self.cells.get((case, features, batch, name, metric), Cell())


# ---------------------------------------------------------------------------- comparison


@dataclass
class Point:
    """The numbers of one grid point that the tables and the verdict need."""

    ours_train: float | None
    peer_train: tuple[str, float, bool] | None  # name, seconds, estimated
    floor_train: float | None
    ours_sample: float | None
    peer_sample: tuple[str, float, bool] | None
    ours_train_mb: float | None
    peer_train_mb: float | None
    ours_sample_mb: float | None
    peer_sample_mb: float | None
    single: bool  # some number shown is one call above --max-seconds


def fastest_peer(grid: Grid, case: str, f: int, b: int, metric: str):
    """(name, seconds, estimated) of the fastest peer: measured peers first; a skipped peer's
    prediction only when no peer was measured."""
    measured, estimated = [], []
    for name in PEERS:
        value, is_estimate = grid.cell(case, f, b, name, metric).time_or_estimate
        if value is not None:
            (estimated if is_estimate else measured).append((value, name))
    pool = measured or estimated
    if not pool:
        return None
    value, name = min(pool)
    return name, value, not measured


def smallest_peer_mb(grid: Grid, case: str, f: int, b: int, metric: str) -> float | None:
    peaks = [grid.cell(case, f, b, name, metric).peak for name in PEERS]
    peaks = [peak / MB for peak in peaks if peak is not None]
    return min(peaks) if peaks else None


def point(grid: Grid, case: str, f: int, b: int) -> Point:
    def mb(name: str, metric: str) -> float | None:
        peak = grid.cell(case, f, b, name, metric).peak
        return None if peak is None else peak / MB

    shown = [OURS, FLOOR, *PEERS]
    single = any(grid.cell(case, f, b, n, m).single for n in shown for m in METRICS)
    return Point(
        ours_train=grid.cell(case, f, b, OURS, "train").seconds,
        peer_train=fastest_peer(grid, case, f, b, "train"),
        floor_train=grid.cell(case, f, b, FLOOR, "train").seconds,
        ours_sample=grid.cell(case, f, b, OURS, "sample").seconds,
        peer_sample=fastest_peer(grid, case, f, b, "sample"),
        ours_train_mb=mb(OURS, "train"),
        peer_train_mb=smallest_peer_mb(grid, case, f, b, "train"),
        ours_sample_mb=mb(OURS, "sample"),
        peer_sample_mb=smallest_peer_mb(grid, case, f, b, "sample"),
        single=single,
    )


def peer_ratio(ours: float | None, peer: tuple[str, float, bool] | None):
    """(ours / fastest peer, estimated?)."""
    if peer is None:
        return None, False
    return ratio(ours, peer[1]), peer[2]


TARGETS: dict[str, tuple[str, float]] = {
    "train_vs_peer": (f"train time <= {PEER_LIMIT:g}x fastest peer", PEER_LIMIT),
    "train_vs_floor": (f"train time <= {FLOOR_LIMIT:g}x floor", FLOOR_LIMIT),
    "sample_vs_peer": (f"sample time <= {PEER_LIMIT:g}x fastest peer", PEER_LIMIT),
    "train_mem_vs_peer": (f"train peak memory <= {MEMORY_LIMIT:g}x smallest peer", MEMORY_LIMIT),
    "sample_mem_vs_peer": (
        f"sample peak memory <= {MEMORY_LIMIT:g}x smallest peer",
        MEMORY_LIMIT,
    ),
}


def target_ratios(p: Point) -> dict[str, tuple[float | None, bool]]:
    """Each target's ratio (ours / reference) and whether it uses a predicted peer time."""
    return {
        "train_vs_peer": peer_ratio(p.ours_train, p.peer_train),
        "train_vs_floor": (ratio(p.ours_train, p.floor_train), False),
        "sample_vs_peer": peer_ratio(p.ours_sample, p.peer_sample),
        "train_mem_vs_peer": (ratio(p.ours_train_mb, p.peer_train_mb), False),
        "sample_mem_vs_peer": (ratio(p.ours_sample_mb, p.peer_sample_mb), False),
    }


# ---------------------------------------------------------------------------- reporting


def fmt_rate(samples_per_second: float | None) -> str:
    if samples_per_second is None:
        return "n/a"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if samples_per_second >= scale:
            return f"{samples_per_second / scale:.3g}{suffix}"
    return f"{samples_per_second:.3g}"


def fmt_mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def fmt_est_ratio(value: float | None, estimated: bool) -> str:
    return ("~" if estimated and value is not None else "") + fmt_ratio(value)


def show_time(cell: Cell) -> str:
    """A cell's time in ms, ``*`` for a lone long call, ``skip`` / ``n/a`` otherwise."""
    if cell.skipped is not None:
        return "skip"
    seconds = cell.seconds
    if seconds is None:
        return "n/a"
    return fmt_ms(seconds * 1e3) + ("*" if cell.single else "")


def show_rate(cell: Cell, batch: int) -> str:
    if cell.skipped is not None:
        return "skip"
    seconds = cell.seconds
    if seconds is None:
        return "n/a"
    return fmt_rate(batch / seconds) + ("*" if cell.single else "")


def peer_columns(grid: Grid, case: str, f: int, b: int, peer, metric: str) -> tuple[str, str]:
    """The fastest peer's time (train, ms) or rate (sample, samples/s), and its name."""
    if peer is None:
        return "n/a", ""
    name, seconds, estimated = peer
    if estimated:
        shown = fmt_ms(seconds * 1e3) if metric == "train" else fmt_rate(b / seconds)
        return f"~{shown}", f"({name})"
    cell = grid.cell(case, f, b, name, metric)
    return (show_time(cell) if metric == "train" else show_rate(cell, b)), f"({name})"


def print_case(grid: Grid, case: str) -> None:
    args = grid.args
    print(f"\n== {CASES[case]} ({case}) ==")
    header = (
        f"{'F':>4}{'batch':>7} |{'train ms':>10}{'peer ms':>10} {'(peer)':<11}{'ratio':>7}"
        f"{'floor ms':>10}{'/floor':>7} |{'ours/s':>9}{'peer/s':>9} {'(peer)':<11}{'ratio':>7}"
        f" |{'trainMB':>9}{'peerMB':>8}{'ratio':>7} |{'sampMB':>8}{'peerMB':>8}{'ratio':>7}"
    )
    print(header)
    print("-" * len(header))
    for f in args.features:
        for b in args.batches:
            p = point(grid, case, f, b)
            ours_train = grid.cell(case, f, b, OURS, "train")
            ours_sample = grid.cell(case, f, b, OURS, "sample")
            floor = grid.cell(case, f, b, FLOOR, "train")
            ratios = target_ratios(p)
            peer_train, peer_train_name = peer_columns(grid, case, f, b, p.peer_train, "train")
            peer_sample, peer_sample_name = peer_columns(grid, case, f, b, p.peer_sample, "sample")
            print(
                f"{f:>4}{b:>7} |{show_time(ours_train):>10}{peer_train:>10} "
                f"{peer_train_name:<11}{fmt_est_ratio(*ratios['train_vs_peer']):>7}"
                f"{show_time(floor):>10}{fmt_ratio(ratios['train_vs_floor'][0]):>7} |"
                f"{show_rate(ours_sample, b):>9}{peer_sample:>9} {peer_sample_name:<11}"
                f"{fmt_est_ratio(*ratios['sample_vs_peer']):>7} |"
                f"{fmt_mb(p.ours_train_mb):>9}{fmt_mb(p.peer_train_mb):>8}"
                f"{fmt_ratio(ratios['train_mem_vs_peer'][0]):>7} |"
                f"{fmt_mb(p.ours_sample_mb):>8}{fmt_mb(p.peer_sample_mb):>8}"
                f"{fmt_ratio(ratios['sample_mem_vs_peer'][0]):>7}"
            )
    footnotes = []
    for f in args.features:
        errors = grid.build_errors.get((case, f), {})
        for name, error in errors.items():
            footnotes.append(f"F={f}: {name} not built: {error}")
        for b in args.batches:
            for name in args.packages:
                for metric in METRICS:
                    cell = grid.cell(case, f, b, name, metric)
                    where = f"F={f} B={b} {name} {metric}"
                    if cell.skipped is not None:
                        footnotes.append(f"{where}: skipped ({cell.skipped})")
                    elif cell.error is not None:
                        footnotes.append(f"{where}: {cell.error}")
    notes = [f"{name}: {note}" for name, note in grid.notes.get(case, {}).items() if note]
    if notes:
        print("notes: " + " | ".join(notes))
    for line in footnotes:
        print(f"  {line}")


def verdict(grid: Grid) -> dict[str, dict[str, int]]:
    """Print PASS/FAIL per target over all grid points; return the counts."""
    args = grid.args
    print("\n== Verdict against targets (ratios are normflows_sci / reference) ==")
    counts: dict[str, dict[str, int]] = {}
    for target, (label, limit) in TARGETS.items():
        tally = {"PASS": 0, "FAIL": 0, "n/a": 0, "estimated": 0}
        failures = []
        for case in args.cases:
            for f in args.features:
                for b in args.batches:
                    value, estimated = target_ratios(point(grid, case, f, b))[target]
                    if value is None:
                        tally["n/a"] += 1
                        continue
                    status = "PASS" if value <= limit else "FAIL"
                    tally[status] += 1
                    tally["estimated"] += estimated
                    if status == "FAIL":
                        failures.append(f"{case} F={f} B={b} {fmt_est_ratio(value, estimated)}")
        counts[target] = tally
        extra = f" ({tally['estimated']} vs predicted peer times)" if tally["estimated"] else ""
        print(
            f"  {label:<44} PASS {tally['PASS']:>3}  FAIL {tally['FAIL']:>3}  "
            f"n/a {tally['n/a']:>3}{extra}"
        )
        for failure in failures:
            print(f"      FAIL {failure}")
    return counts


def markdown(grid: Grid) -> None:
    """A README-ready table: one row per case x features x batch, ratios only."""
    args = grid.args
    print("\n== Markdown (ratios normflows_sci / reference; below 1 is better) ==\n")
    print(
        "| case | features | batch | train vs fastest peer | train vs floor "
        "| sample vs fastest peer | train memory vs peers | sample memory vs peers |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for case in args.cases:
        for f in args.features:
            for b in args.batches:
                p = point(grid, case, f, b)
                ratios = target_ratios(p)
                cols = []
                for target, (_, limit) in TARGETS.items():
                    value, estimated = ratios[target]
                    text = fmt_est_ratio(value, estimated)
                    if value is not None and value > limit:
                        text = f"**{text}**"
                    cols.append(text)
                print(f"| {CASES[case]} | {f} | {b} | " + " | ".join(cols) + " |")
    print(
        "\nBold: target missed. `~`: compared with a peer's predicted time (the peer was "
        "skipped as too slow)."
    )


def save_json(grid: Grid, path: Path, counts, meta: dict) -> None:
    rows = []
    for (case, f, b, name, metric), cell in grid.cells.items():
        row = {"case": case, "features": f, "batch": b, "package": name, "metric": metric}
        row.update(asdict(cell))
        row["params"] = grid.params.get((case, f), {}).get(name)
        rows.append(row)
    data = {
        "meta": meta,
        "build_errors": {f"{c}/{f}": e for (c, f), e in grid.build_errors.items() if e},
        "api_notes": list(dict.fromkeys(grid.api_notes)),
        "verdict": counts,
        "cells": rows,
    }
    path.write_text(json.dumps(data, indent=1))
    print(f"\nraw numbers saved to {path}")


# ---------------------------------------------------------------------------- main


def memory_available_gb() -> float | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except (OSError, ValueError, IndexError):
        pass
    return None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--features", nargs="+", type=int, default=None, help="default 4 16 64 256")
    parser.add_argument(
        "--batches", nargs="+", type=int, default=None, help="default 256 4096 65536"
    )
    parser.add_argument(
        "--packages",
        nargs="+",
        choices=PACKAGES,
        default=list(PACKAGES),
        help=f"packages to run ({OURS} always runs)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first (default 1)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=30.0,
        help="a first call slower than this is not repeated; calls predicted to take 4x "
        "longer are skipped (default 30)",
    )
    parser.add_argument(
        "--max-memory-gb",
        type=float,
        default=None,
        help="skip calls predicted to need more memory (default 70%% of MemAvailable)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also save raw numbers here")
    parser.add_argument(
        "--quick", action="store_true", help="features 4 16, batches 256 1024, 2 repeats"
    )
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    args = parser.parse_args()
    if args.features is None:
        args.features = QUICK_FEATURES if args.quick else FEATURES
    if args.batches is None:
        args.batches = QUICK_BATCHES if args.quick else BATCHES
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if min(args.features) < 2:
        parser.error(f"--features must all be >= 2, got {args.features}")
    if min(args.batches) < 1:
        parser.error(f"--batches must all be >= 1, got {args.batches}")
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("need --repeats >= 1, --warmup >= 0, --threads >= 1")
    if not args.max_seconds > 0:
        parser.error(f"--max-seconds must be positive, got {args.max_seconds}")
    if args.max_memory_gb is None:
        available = memory_available_gb()
        args.max_memory_gb = 1e6 if available is None else 0.7 * available  # 1e6: no limit
    elif not args.max_memory_gb > 0:
        parser.error(f"--max-memory-gb must be positive, got {args.max_memory_gb}")
    # Ascending order, so that smaller grid points come first and predict the larger ones.
    args.features = sorted(set(args.features))
    args.batches = sorted(set(args.batches))
    args.packages = tuple(n for n in PACKAGES if n == OURS or n in args.packages)
    args.device = None  # CPU; PeakMemory switches to the CUDA counters for a cuda device
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    pin_allocator()  # before any timing: one glibc allocator policy for every timed call
    memory = PeakMemory()
    peers = versions("torch", "nflows", "zuko", "normflows")
    print(
        f"normflows_sci performance grid | cases {' '.join(args.cases)} | features "
        f"{args.features} x batches {args.batches} | threads={torch.get_num_threads()} "
        f"warmup={args.warmup} repeats={args.repeats} max-seconds={args.max_seconds:g} "
        f"max-memory={args.max_memory_gb:.1f} GB"
    )
    print(
        f"{TRANSFORMS} transforms, hidden {HIDDEN}, {BINS} bins, tail bound {TAIL_BOUND:g}, "
        f"Adam lr 1e-3 | {peers}"
    )
    print(
        "peak memory: "
        + (
            "peak tensor memory of one extra call (profiler allocation events)"
            if memory.available
            else "n/a"
        )
        + ("" if memory.available else f" ({memory.reason})")
    )
    print(
        "train: ms per step (median); sample: samples/s; ratio = normflows_sci / other "
        "(below 1: normflows_sci faster or smaller); * = one call above --max-seconds"
    )

    grid = Grid(args, memory)
    grid.run()
    for case in args.cases:
        print_case(grid, case)
        others = grid.other_cores[case]
        if others is not None:
            print(f"(other processes used {others:.2f} CPU cores on average during this case)")
    loads = [cores for cores in grid.other_cores.values() if cores is not None]
    busiest = max(loads) if loads else None
    counts = verdict(grid)
    markdown(grid)
    for note in dict.fromkeys(grid.api_notes):
        print(f"  normflows_sci API note: {note}")
    elapsed = time.perf_counter() - grid.start
    print(f"\ntotal benchmark time {elapsed:.0f} s")
    if args.json is not None:
        meta = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "versions": {p: version(p) for p in ("torch", "nflows", "zuko", "normflows")},
            "threads": torch.get_num_threads(),
            "other_cores": grid.other_cores,
            "seconds": elapsed,
            "peak_memory": "n/a: " + memory.reason
            if memory.reason
            else "peak tensor memory (profiler allocation events)",
        }
        save_json(grid, args.json, counts, meta)
    warn_if_busy(busiest)


if __name__ == "__main__":
    main()
