"""Speed benchmark: normflows_sci against nflows, zuko and normflows on CPU.

Run from the repository root::

    python benchmarks/bench_flows.py                  # full run (a few minutes on 2 cores)
    python benchmarks/bench_flows.py --quick          # smoke run (under a minute)
    python benchmarks/bench_flows.py --features 16 --batch 1024 --repeats 15 --threads 2

Everything runs in one process. Every package builds the same architecture for each case:

* ``AR RQ-spline``: 5 masked-autoregressive rational-quadratic spline layers, MADE
  conditioner with hidden layers (128, 128), 8 bins, linear tails at +-5, standard normal
  base, feature order reversed between layers.
* ``Coupling RQ-spline``: the same with coupling layers (half/half split, alternating
  halves) and a plain MLP conditioner with hidden layers (128, 128).
* ``MAF affine``: 5 masked-autoregressive affine layers, same MADE sizes.
* ``Coupling affine`` (RealNVP): 5 affine coupling layers with the half/half masks and plain
  MLP conditioner (128, 128) of ``Coupling RQ-spline``; each package keeps its own scale
  parameterisation (ours: tanh-clamped log scale, nflows: sigmoid, zuko: soft-clipped log
  scale, normflows: exp).

The ``floor`` row runs only the conditioner networks of ``normflows_sci`` (5 MADEs or
5 MLPs) with no flow arithmetic. Its training step is forward + mean-squared-output loss +
backward + Adam; its sampling is the network evaluations no sampler can avoid: for
autoregressive cases ``features`` sequential passes through each MADE, for coupling one pass
through each MLP.

Columns:

* ``params``: number of trainable parameters (masked-out MADE weights included, as every
  package stores full weight matrices).
* ``train ms``: median wall time of one training step: ``log_prob`` on a batch, mean negative
  log-likelihood, backward, ``Adam.step``.
* ``sample ms``: median wall time to draw ``batch`` samples under ``torch.no_grad()``.
* ``ours/x train``, ``ours/x sample``: normflows_sci time divided by that row's time
  (below 1 means normflows_sci is faster).

Repeats are interleaved across packages (one timed call per package per round) so that
drifts in machine load affect every package alike; the reported value is the median.
A package that lacks a variant or fails is reported as ``n/a`` with the exception type.
The script ends with a verdict against the performance targets of normflows_sci.

Run it on an otherwise idle machine: when another process takes a core away, multi-threaded
torch ops wait for the descheduled thread and times inflate many-fold. The script prints the
load average and warns when it shows competition.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _common import OtherLoad, versions, warn_if_busy
from torch import Tensor, nn

# Benchmark the checkout this script lives in, even when normflows_sci is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HIDDEN = (128, 128)
TRANSFORMS = 5
BINS = 8
TAIL_BOUND = 5.0
SPLINE_PARAMS = 3 * BINS - 1  # K widths, K heights, K - 1 interior derivatives
AFFINE_PARAMS = 2

CASES = {
    "ar_spline": "AR RQ-spline",
    "coupling_spline": "Coupling RQ-spline",
    "maf_affine": "MAF affine",
    "coupling_affine": "Coupling affine",
}
COUPLING = frozenset({"coupling_spline", "coupling_affine"})  # the others are autoregressive
AFFINE = frozenset({"maf_affine", "coupling_affine"})  # the others are RQ-spline
OURS = "normflows_sci"
FLOOR = "floor"
PACKAGES = (OURS, "nflows", "zuko", "normflows", FLOOR)
METRICS = ("train", "sample")
TARGETS = (("zuko", 0.6), (FLOOR, 1.5))  # ours / peer must not exceed these


@dataclass
class Bench:
    """A ready-to-time model: a loss for the training step and a sampler."""

    module: nn.Module
    loss: Callable[[Tensor], Tensor]
    sample: Callable[[int], Tensor]
    note: str = ""
    optimizer: torch.optim.Optimizer | None = None

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)


@dataclass
class Result:
    """Timings of one package in one case; ``error`` is set when the model could not be built
    and ``failed`` maps a metric to its failure when that metric could not be timed."""

    params: int | None = None
    times: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRICS})
    error: str | None = None
    failed: dict[str, str] = field(default_factory=dict)
    note: str = ""

    def median(self, metric: str) -> float | None:
        if self.error is not None or metric in self.failed or not self.times[metric]:
            return None
        return statistics.median(self.times[metric]) * 1e3


def nll(log_prob: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    return lambda x: -log_prob(x).mean()


def halves(features: int, layer: int) -> Tensor:
    """Boolean mask, True on the half that is *transformed* by coupling layer ``layer``."""
    second = torch.arange(features) >= features // 2
    return second if layer % 2 == 0 else ~second


class PlainMLP(nn.Module):
    """Dense ReLU MLP used as the coupling conditioner for nflows and normflows.

    Accepts and ignores a ``context`` argument, as their coupling layers pass one. The
    ``hidden_features`` attribute makes both packages apply the same softmax-input scaling
    they use with their own default (residual) conditioner.
    """

    def __init__(self, in_features: int, out_features: int, hidden=HIDDEN) -> None:
        super().__init__()
        sizes = (in_features, *hidden)
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], out_features))
        self.net = nn.Sequential(*layers)
        self.hidden_features = hidden[0]

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(x)


# ---------------------------------------------------------------------------- ours


def build_ours(case: str, features: int) -> Bench:
    from normflows_sci.distributions import StandardNormal
    from normflows_sci.flows import MAF, NSF, Flow
    from normflows_sci.transforms import AffineCouplingTransform, CompositeTransform

    if case == "coupling_affine":
        # RealNVP(features, hidden_features=HIDDEN) builds exactly these layers, but with
        # even/odd masks; build them directly to use the peers' half/half masks.
        layers = [
            AffineCouplingTransform(halves(features, i), hidden_features=HIDDEN)
            for i in range(TRANSFORMS)
        ]
        flow = Flow(CompositeTransform(layers), StandardNormal(features))
    elif case == "maf_affine":
        flow = MAF(features, context_features=0, transforms=TRANSFORMS, hidden_features=HIDDEN)
    else:
        flow = NSF(
            features,
            context_features=0,
            transforms=TRANSFORMS,
            bins=BINS,
            hidden_features=HIDDEN,
            coupling=case == "coupling_spline",
            tail_bound=TAIL_BOUND,
        )
    return Bench(flow, nll(flow.log_prob), flow.sample)


class Floor(nn.Module):
    """The conditioner networks of normflows_sci without any flow arithmetic."""

    def __init__(self, case: str, features: int) -> None:
        super().__init__()
        from normflows_sci.nn import MADE, MLP

        self.features = features
        self.half = features // 2
        self.coupling = case in COUPLING
        per_feature = AFFINE_PARAMS if case in AFFINE else SPLINE_PARAMS
        if self.coupling:
            nets = [
                MLP(self.half, (features - self.half) * per_feature, hidden_features=HIDDEN)
                for _ in range(TRANSFORMS)
            ]
        else:
            nets = [
                MADE(features, per_feature, hidden_features=HIDDEN, context_features=0)
                for _ in range(TRANSFORMS)
            ]
        self.nets = nn.ModuleList(nets)

    def loss(self, x: Tensor) -> Tensor:
        inputs = x[:, : self.half] if self.coupling else x
        return sum(net(inputs).square().mean() for net in self.nets)

    def sample(self, num_samples: int) -> Tensor:
        z = torch.randn(num_samples, self.features)
        for net in self.nets:
            if self.coupling:
                net(z[:, : self.half])
            else:
                for _ in range(self.features):
                    net(z)
        return z


def build_floor(case: str, features: int) -> Bench:
    floor = Floor(case, features)
    kind = "MLPs" if floor.coupling else "MADEs"
    return Bench(floor, floor.loss, floor.sample, f"normflows_sci {kind} only")


# ---------------------------------------------------------------------------- nflows


def build_nflows(case: str, features: int) -> Bench:
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms import (
        AffineCouplingTransform,
        CompositeTransform,
        MaskedAffineAutoregressiveTransform,
        MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
        PiecewiseRationalQuadraticCouplingTransform,
        ReversePermutation,
    )

    # Non-residual MADE: initial layer + (num_blocks) feed-forward blocks = hidden (128, 128).
    made_kwargs = dict(
        hidden_features=HIDDEN[0], num_blocks=len(HIDDEN) - 1, use_residual_blocks=False
    )
    layers = []
    for i in range(TRANSFORMS):
        if case == "ar_spline":
            layer = MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                features, num_bins=BINS, tails="linear", tail_bound=TAIL_BOUND, **made_kwargs
            )
        elif case == "maf_affine":
            layer = MaskedAffineAutoregressiveTransform(features, **made_kwargs)
        elif case == "coupling_affine":
            layer = AffineCouplingTransform(
                mask=halves(features, i).int(), transform_net_create_fn=PlainMLP
            )
        else:
            layer = PiecewiseRationalQuadraticCouplingTransform(
                mask=halves(features, i).int(),
                transform_net_create_fn=PlainMLP,
                num_bins=BINS,
                tails="linear",
                tail_bound=TAIL_BOUND,
            )
        layers.append(layer)
        if case not in COUPLING and i < TRANSFORMS - 1:
            layers.append(ReversePermutation(features))
    flow = Flow(CompositeTransform(layers), StandardNormal([features]))
    note = "conditioner: PlainMLP" if case in COUPLING else ""
    return Bench(flow, nll(flow.log_prob), flow.sample, note)


# ---------------------------------------------------------------------------- zuko


def build_zuko(case: str, features: int) -> Bench:
    import zuko

    if case == "ar_spline":
        flow = zuko.flows.NSF(features, transforms=TRANSFORMS, bins=BINS, hidden_features=HIDDEN)
        note = "orders alternate; spline bound fixed at 5"
    elif case == "maf_affine":
        flow = zuko.flows.MAF(features, transforms=TRANSFORMS, hidden_features=HIDDEN)
        note = "orders alternate"
    else:
        from zuko.flows.coupling import GeneralCouplingTransform
        from zuko.transforms import MonotonicAffineTransform, MonotonicRQSTransform

        if case == "coupling_affine":
            univariate, shapes = MonotonicAffineTransform, [(), ()]
            note = "GeneralCouplingTransform + MonotonicAffineTransform"
        else:
            univariate, shapes = MonotonicRQSTransform, [(BINS,), (BINS,), (BINS - 1,)]
            note = "GeneralCouplingTransform + MonotonicRQSTransform"
        transforms = [
            GeneralCouplingTransform(
                features,
                mask=~halves(features, i),  # zuko's mask marks the *constant* half
                univariate=univariate,
                shapes=shapes,
                hidden_features=HIDDEN,
            )
            for i in range(TRANSFORMS)
        ]
        base = zuko.flows.UnconditionalDistribution(
            zuko.distributions.DiagNormal,
            torch.zeros(features),
            torch.ones(features),
            buffer=True,
        )
        flow = zuko.flows.Flow(transforms, base)

    def log_prob(x: Tensor) -> Tensor:
        return flow().log_prob(x)

    def sample(n: int) -> Tensor:
        return flow().sample((n,))

    return Bench(flow, nll(log_prob), sample, note)


# ---------------------------------------------------------------------------- normflows


def build_normflows(case: str, features: int) -> Bench:
    import normflows as nf
    from normflows.flows.neural_spline.autoregressive import (
        MaskedPiecewiseRationalQuadraticAutoregressive,
    )
    from normflows.flows.neural_spline.coupling import PiecewiseRationalQuadraticCoupling

    blocks = len(HIDDEN) - 1
    layers: list[nn.Module] = []
    for i in range(TRANSFORMS):
        if case == "coupling_affine":
            # "channel" keeps the first chunk of z.chunk(2) and transforms the second, like
            # halves(features, 0); "channel_inv" swaps the roles, like halves(features, 1).
            # (For odd features chunk() puts the extra feature in the first chunk, halves() in
            # the second: the split sizes then differ by one.)
            first, second = (features + 1) // 2, features // 2
            constant, moving = (first, second) if i % 2 == 0 else (second, first)
            layer = nf.flows.AffineCouplingBlock(
                PlainMLP(constant, 2 * moving),
                scale_map="exp",
                split_mode="channel" if i % 2 == 0 else "channel_inv",
            )
        elif case == "ar_spline":
            # The public wrapper hard-codes residual MADE blocks; swap in normflows' own
            # non-residual MADE spline transform so the conditioner matches (128, 128).
            layer = nf.flows.AutoregressiveRationalQuadraticSpline(
                features, blocks, HIDDEN[0], num_bins=BINS, tail_bound=TAIL_BOUND
            )
            layer.mprqat = MaskedPiecewiseRationalQuadraticAutoregressive(
                features=features,
                hidden_features=HIDDEN[0],
                num_bins=BINS,
                tails="linear",
                tail_bound=TAIL_BOUND,
                num_blocks=blocks,
                use_residual_blocks=False,
            )
        elif case == "maf_affine":
            # normflows flows map base -> data, so the raw MADE transform is an IAF (density
            # needs `features` passes); Reverse gives the MAF direction like the other rows.
            layer = nf.flows.Reverse(
                nf.flows.MaskedAffineAutoregressive(
                    features, HIDDEN[0], num_blocks=blocks, use_residual_blocks=False
                )
            )
        else:
            # The public wrapper uses a ResidualNet conditioner, alternating odd/even masks and
            # an extra unconditional spline on the identity half; swap in normflows' own
            # coupling transform with the plain MLP and half/half masks instead.
            layer = nf.flows.CoupledRationalQuadraticSpline(
                features, blocks, HIDDEN[0], num_bins=BINS, tail_bound=TAIL_BOUND
            )
            layer.prqct = PiecewiseRationalQuadraticCoupling(
                mask=halves(features, i).int(),
                transform_net_create_fn=PlainMLP,
                num_bins=BINS,
                tails="linear",
                tail_bound=TAIL_BOUND,
                apply_unconditional_transform=False,
            )
        layers.append(layer)
        if case not in COUPLING and i < TRANSFORMS - 1:
            permute = nf.flows.Permute(features, mode="shuffle")
            reverse = torch.arange(features - 1, -1, -1)
            permute.perm.copy_(reverse)
            permute.inv_perm.copy_(reverse)
            layers.append(permute)
    base = nf.distributions.DiagGaussian(features, trainable=False)
    flow = nf.NormalizingFlow(q0=base, flows=layers)
    notes = {
        "ar_spline": "non-residual MADE; no activation after 1st layer",
        "maf_affine": "non-residual MADE; no activation after 1st layer",
        "coupling_spline": "conditioner: PlainMLP",
        "coupling_affine": "AffineCouplingBlock (channel split); conditioner: PlainMLP",
    }
    # normflows' sample() also returns log q; keep only the samples.
    return Bench(flow, nll(flow.log_prob), lambda n: flow.sample(n)[0], notes[case])


BUILDERS = {
    OURS: build_ours,
    "nflows": build_nflows,
    "zuko": build_zuko,
    "normflows": build_normflows,
    FLOOR: build_floor,
}


# ---------------------------------------------------------------------------- timing


def describe(exc: BaseException) -> str:
    return f"n/a ({type(exc).__name__})"


def first_line(exc: BaseException, width: int = 70) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:width] if lines else ""


def check(bench: Bench, name: str, x: Tensor, features: int, api_notes: list[str]) -> None:
    """Validate shapes and finiteness once so that a broken model is not timed."""
    loss = bench.loss(x)
    if loss.dim() != 0 or not loss.requires_grad or not torch.isfinite(loss):
        raise ValueError(f"{name}: training loss is not a finite differentiable scalar")
    if name not in (OURS, FLOOR):
        return
    if name == OURS:
        log_prob = bench.module.log_prob(x)
        if tuple(log_prob.shape) != (x.shape[0],):
            api_notes.append(f"log_prob(x) returned shape {tuple(log_prob.shape)}")
    with torch.no_grad():
        samples = bench.sample(x.shape[0])
    if not isinstance(samples, Tensor) or tuple(samples.shape) != (x.shape[0], features):
        got = tuple(samples.shape) if isinstance(samples, Tensor) else type(samples).__name__
        raise ValueError(f"{name}: sample(n) returned {got}")
    if name == OURS and not torch.isfinite(samples).all():
        api_notes.append("sample(n) returned non-finite values")


def train_step(bench: Bench, x: Tensor) -> float:
    start = time.perf_counter()
    bench.optimizer.zero_grad(set_to_none=True)
    loss = bench.loss(x)
    loss.backward()
    bench.optimizer.step()
    return time.perf_counter() - start


def sample_step(bench: Bench, n: int) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        bench.sample(n)
    return time.perf_counter() - start


def build_benches(
    case: str,
    features: int,
    x: Tensor,
    api_notes: list[str],
    packages: tuple[str, ...] = PACKAGES,
    verbose: bool = False,
) -> tuple[dict[str, Bench], dict[str, Result]]:
    """Build, equip with Adam and check every package's model for one case.

    ``x`` is the batch the check runs on (any size: benchmarks with large batches pass a
    slice). Returns the ready benches, and a ``Result`` per package holding its parameter count
    and note, or the error that kept it from being built (a failing package must not stop
    the run). Each model is built after ``torch.manual_seed(0)`` so runs are reproducible.
    """
    results: dict[str, Result] = {}
    benches: dict[str, Bench] = {}
    for name in packages:
        torch.manual_seed(0)
        try:
            bench = BUILDERS[name](case, features)
            bench.optimizer = torch.optim.Adam(bench.module.parameters(), lr=1e-3)
            check(bench, name, x, features, api_notes)
        except Exception as exc:
            results[name] = Result(error=describe(exc), note=first_line(exc))
            if verbose:
                traceback.print_exc()
            continue
        results[name] = Result(params=bench.params, note=bench.note)
        benches[name] = bench
    return benches, results


def run_case(case: str, args: argparse.Namespace, api_notes: list[str]) -> dict[str, Result]:
    features, batch = args.features, args.batch
    x = torch.randn(batch, features, generator=torch.Generator().manual_seed(1))
    benches, results = build_benches(case, features, x, api_notes, verbose=args.verbose)

    def timed(metric: str, step: Callable[[Bench], float]) -> None:
        active = dict(benches)
        for round_ in range(args.warmup + args.repeats):
            for name, bench in list(active.items()):
                try:
                    elapsed = step(bench)
                except Exception as exc:
                    results[name].failed[metric] = f"{metric} {describe(exc)}: {first_line(exc)}"
                    del active[name]
                    continue
                if round_ >= args.warmup:
                    results[name].times[metric].append(elapsed)

    timed("train", lambda b: train_step(b, x))
    timed("sample", lambda b: sample_step(b, batch))
    return results


# ---------------------------------------------------------------------------- reporting


def fmt_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def ratio(ours: float | None, other: float | None) -> float | None:
    if ours is None or other is None or other <= 0:
        return None
    return ours / other


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def print_case(title: str, results: dict[str, Result]) -> None:
    ours = results[OURS]
    header = (
        f"{'package':<14}{'params':>9}{'train ms':>10}{'sample ms':>11}"
        f"{'ours/x train':>14}{'ours/x sample':>15}  notes"
    )
    print(f"\n== {title} ==")
    print(header)
    print("-" * len(header))
    for name in PACKAGES:
        res = results[name]
        if res.error is not None:
            print(f"{name:<14}{res.error:>9}  {res.note}")
            continue
        train, sample = res.median("train"), res.median("sample")
        r_train = None if name == OURS else ratio(ours.median("train"), train)
        r_sample = None if name == OURS else ratio(ours.median("sample"), sample)
        note = "; ".join([res.note, *res.failed.values()]).strip("; ")
        print(
            f"{name:<14}{res.params:>9,}{fmt_ms(train):>10}{fmt_ms(sample):>11}"
            f"{'-' if name == OURS else fmt_ratio(r_train):>14}"
            f"{'-' if name == OURS else fmt_ratio(r_sample):>15}  {note}"
        )


def verdict(all_results: dict[str, dict[str, Result]]) -> None:
    """Targets: train and sample <= 0.6x zuko and <= 1.5x the floor; coupling sampling
    no slower than nflows."""
    print("\n== Verdict against targets ==")
    passed = total = 0
    for case, results in all_results.items():
        targets = [(metric, peer, limit) for peer, limit in TARGETS for metric in METRICS]
        if case == "coupling_spline":
            targets.append(("sample", "nflows", 1.0))
        for metric, peer, limit in targets:
            value = ratio(results[OURS].median(metric), results[peer].median(metric))
            status = "n/a " if value is None else "PASS" if value <= limit else "FAIL"
            passed += status == "PASS"
            total += 1
            label = f"{CASES[case]}: {metric} <= {limit:g}x {peer}"
            print(f"  [{status}] {label:<44} actual {fmt_ratio(value)}")
    print(f"  {passed}/{total} targets met")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 15)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds (default 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="few repeats, for a smoke run")
    parser.add_argument(
        "--cases", nargs="+", choices=sorted(CASES), default=list(CASES), help="cases to run"
    )
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    args = parser.parse_args()
    if args.repeats is None:
        args.repeats = 3 if args.quick else 15
    if args.warmup is None:
        args.warmup = 1 if args.quick else 3
    if args.features < 2 or args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("need features >= 2, batch >= 1, repeats >= 1, warmup >= 0")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    peers = versions("torch", "nflows", "zuko", "normflows")
    print(
        f"normflows_sci flow benchmark | features={args.features} batch={args.batch} "
        f"threads={torch.get_num_threads()} warmup={args.warmup} repeats={args.repeats}"
    )
    print(
        f"{TRANSFORMS} transforms, hidden {HIDDEN}, {BINS} bins, tail bound {TAIL_BOUND:g}, "
        f"Adam lr 1e-3 | {peers}"
    )
    print("times are medians in ms; ours/x < 1 means normflows_sci is faster than x")

    api_notes: list[str] = []
    all_results: dict[str, dict[str, Result]] = {}
    start = time.perf_counter()
    busiest = 0.0
    for case in args.cases:
        monitor = OtherLoad()
        all_results[case] = run_case(case, args, api_notes)
        print_case(CASES[case], all_results[case])
        others = monitor.cores()
        if others is not None:
            busiest = max(busiest, others)
            print(f"(other processes used {others:.2f} CPU cores on average during this case)")
    verdict(all_results)
    for note in dict.fromkeys(api_notes):
        print(f"  normflows_sci API note: {note}")
    elapsed = time.perf_counter() - start
    print(f"\ntotal benchmark time {elapsed:.0f} s")
    warn_if_busy(busiest)


if __name__ == "__main__":
    main()
