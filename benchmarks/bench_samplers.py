"""Sampler benchmark: mode weights, ESS per second and acceptance of MALA, HMC and flow samplers on
multimodal targets, and chain throughput at 1k-100k chains.

Run from the repository root::

    python benchmarks/bench_samplers.py             # full run (about 10 min on 2 cores)
    python benchmarks/bench_samplers.py --quick     # smoke run (about 1.5 min)
    python benchmarks/bench_samplers.py --problems mixture-50d --chains 1024 --threads 2
    python benchmarks/bench_samplers.py --throughput  # MALA/HMC chain-steps/s vs blackjax (~5 min)
    python benchmarks/bench_samplers.py --slcp        # SLCP time to C2ST <= 0.52 vs flowMC (~15 min, C2ST most of it)

Targets (all with exactly known mode weights):

* ``mixture-<d>d``: two unit-variance Gaussians in ``d`` = 2, 10, 50 dimensions with weights
  0.25 / 0.75, their means ``--separation`` (default 10) apart along the diagonal of the first two
  coordinates, so the density at the midpoint is ``exp(-separation^2 / 8)`` (12.5 kT) below the
  modes in every dimension. Modes are the two half-spaces of the bisecting hyperplane, whose exact
  weights are ``w_k Phi(s/2) + w_j Phi(-s/2)``.
* ``manywell-<d>``: ``ManyWell(d)`` (``d / 2`` independent double wells, each pair in its right well
  with probability 0.844; barriers of 8.1 kT from the left well, 9.9 kT from the right). For ``d = 8`` the error is over all 16 modes; for
  ``d = 32`` (65536 modes) over the 16 per-pair well probabilities.

Every method starts from the same ``x0``: chains spread evenly over the modes (round robin for the
mixtures, each pair in a random well for the many-well), distributed within each mode as the
target. So the mode weights are wrong at the start and only moves between modes can fix them.

Methods and budget. Every method gets the same number of target evaluations per chain (one
evaluation = log-density and, for gradient methods, its gradient): ``--warmup`` for adaptation and
flow training, then ``--production`` for the kept chain.

* ``MALA``: ``MALA`` (step size adapted towards 0.574 acceptance in the first half of warm-up, then
  frozen; the second half of its warm-up is the training data of the two-stage flow methods).
  1 evaluation per step.
* ``HMC``: ``HMC`` with ``--leapfrog`` steps (step size and diagonal mass adapted in warm-up):
  ``L`` evaluations per step.
* ``IMH-flow``: ``IndependentMH`` with a flow trained by maximum likelihood on the positions of
  MALA's warm-up chains (two-stage: its warm-up is MALA's warm-up plus the training), started from
  where MALA's warm-up ended. 1 evaluation per step.
* ``NeuTra``: ``NeuTraHMC`` with the same pre-trained flow; it spends the first quarter of its
  production budget adapting step size and mass (discarded), the rest is kept. ``L`` per step.
* ``hybrid``: ``AdaptiveFlowMCMC`` (one MALA step + one flow proposal per step, 2 evaluations),
  training its own flow on the walkers during its warm-up; the flow is frozen in production.

Flows are the same everywhere: a coupling neural spline flow (4 layers, 64x64 hidden units, 8 bins,
tail bound covering the target), trained with Adam at ``--learning-rate``, one step per hybrid
warm-up step on a batch of ``--chains`` points; the pre-trained flow gets the same number of steps
with the same batch size (minibatches of MALA's warm-up positions) through ``fit_boltzmann``.

Columns: ``w_heavy`` the estimated weight of the heaviest mode (many-well: of pair 0's right well),
``err`` the largest absolute mode-weight error, ``acc loc/glob`` local and flow-move acceptance,
``sw/ch`` mode switches per chain in production, ``tau`` the pooled integrated autocorrelation
time of the heaviest-mode indicator in target evaluations (a value near twice the run length
means the chains never switch), ``+-se`` the standard error of ``w_heavy`` from that indicator's
ESS (it cannot see modes the chains never left), ``minESS`` the smallest effective sample size
over coordinates (split, pooled: chains disagreeing lower it), ``ESS/s`` that divided by
production wall time, ``ESS/s all`` divided by warm-up + production time (the full cost of a
fresh run, flow training included), ``R-hat`` the largest split R-hat, ``warm s`` the wall time
of warm-up including flow training (for the two-stage methods: MALA's warm-up + training +
NeuTra's adaptation), ``prod s`` production time. Ratios are ``method / MALA``. Ends with chain throughput (chain-steps per second and target
evaluations per second) of MALA and the frozen hybrid on the 10-D mixture.

Kernel throughput (``--throughput``, nothing else runs): chain-steps per second of ``MALA`` and
``HMC`` (``--kernel-leapfrog`` 10 leapfrog steps, fixed step size, identity mass, no adaptation) at
``--kernel-chains`` (64, 1024, 16384) chains on a 10-D standard Gaussian and the 10-D Rosenbrock
density ``log p = -sum_i [100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2] / 20``, float32, side by side with
blackjax on JAX's CPU backend (benchmark-only dependency: ``pip install blackjax``; the columns are
left empty without it). Ours: ``run`` (production only, one kept sample, acceptance summed per
step, as ``run`` always does; after the first production step in blocks of 8 steps: the draws of
8 steps, then their transitions in one call), eager (``compile=False``; ``run``'s default,
``compile="auto"``, stays eager for runs this short) and compiled (``compile=True``: eager draws,
inductor-compiled transitions and blocks; ``compile s`` is its first run of ``--kernel-steps``
steps, compilations included, excluded from the rates, as blackjax's ``jit s``). blackjax: its kernel ``vmap``-ed over chains, ``lax.fori_loop`` over the steps
(one jitted call, acceptance summed in the loop). Every configuration is warmed up (compilation
excluded), then ours and blackjax alternate ``--kernel-repeats`` times over ``--kernel-steps``
steps and the best time of each is kept; ``/bj`` columns are ours / blackjax (above 1: ours is
faster). Both use ``--threads`` threads (JAX through ``XLA_FLAGS``). ``acc`` is the mean acceptance
of each, which must agree (same algorithm, step size and target).

SLCP time to accuracy (``--slcp``, nothing else runs): the SLCP posterior of sbibm (task
``slcp``, observation 1; model, files, licences and C2ST in ``benchmarks/slcp.py``), sampled in
its 5 parameters (log-density ``-inf`` outside the prior's box) from ``--slcp-chains`` prior draws.
Ours: ``run(AdaptiveFlowMCMC(target, flow))`` with the kernel's defaults (one MALA step and one
flow proposal per step, one Adam step at learning rate 1e-3 per warm-up step),
``--slcp-warmup`` warm-up steps, then ``--slcp-production`` production steps in
``--slcp-segments`` calls of ``run`` (a checkpoint after each); one row per flow of
``--slcp-flows``: ``default`` is ``NSF(5)`` at its defaults (autoregressive, 5 layers of 128x128),
``small`` a coupling NSF of flowMC's size (4 layers, 32x32, 8 bins, tail bound 3). flowMC
(``pip install flowmc``; JAX): its ``RQSpline_MALA_Bundle`` (RQSpline 4 layers 32x32, 8 bins;
MALA) with ``--flowmc-training-loops`` training and ``--flowmc-production-loops`` production
loops of ``--flowmc-local-steps`` MALA and ``--flowmc-global-steps`` flow steps, the flow trained
``--flowmc-epochs`` epochs per loop, same chains and start; it runs in a subprocess of
``--flowmc-python`` (default: this interpreter; e.g. a venv with flowMC) with ``--threads``
threads (JIT compilation included in its time), checkpoints after each production loop. C2ST
(sbibm's definition, scikit-learn) of ``--c2st-samples`` draws (subsampled from the production
samples known at a checkpoint) against as many reference samples, at the last checkpoint and, if
it reaches ``--c2st-threshold``, by bisection over the checkpoints for the earliest that does
(C2ST taken to fall as samples accumulate). Columns: ``evals/ch`` target evaluations
per chain, ``warm s`` warm-up (flowMC: its training loops, with compilation), ``total s`` the
whole run, ``t(<=0.52) s`` the time of that checkpoint, ``C2ST@t`` the C2ST
there, ``C2ST end`` at the end, ``acc loc/glob`` production acceptance, ``/fMC`` ratios of times
against flowMC's. Before the table: the likelihood check (log-posterior of the reference samples
against prior draws) and every method's posterior mean against the reference's.

Timings need an otherwise idle machine; the script reports how much CPU other processes used.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import slcp
import torch
from _common import BUSY_LIMIT, OtherLoad, version

# Benchmark the checkout this script lives in, even when normflows_sci is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from normflows_sci.energies import Energy, ManyWell
from normflows_sci.flows import NSF
from normflows_sci.samplers import (
    HMC,
    MALA,
    AdaptiveFlowMCMC,
    IndependentMH,
    NeuTraHMC,
    count_mode_switches,
    effective_sample_size,
    integrated_autocorrelation_time,
    mode_weight_error,
    run,
    split_rhat,
)
from normflows_sci.training import fit_boltzmann

METHODS = ("MALA", "HMC", "IMH-flow", "NeuTra", "hybrid")


# ------------------------------------------------------------------------------------- targets


def _phi(z: float) -> float:
    """Standard normal CDF."""
    return 0.5 * math.erfc(-z / math.sqrt(2))


class TwoGaussians(Energy):
    """``u(x) = -log [w_0 N(x; -m, I) + w_1 N(x; m, I)]``, ``m`` along the diagonal of the first two
    coordinates, ``|2 m| = separation``; ``dim >= 2``. Normalised (``log_z = 0``)."""

    log_z = 0.0

    def __init__(self, dim: int, separation: float, weights=(0.25, 0.75)):
        super().__init__(dim, validate_args=False)
        direction = torch.zeros(dim, dtype=torch.float64)
        direction[:2] = 1 / math.sqrt(2)
        self.register_buffer("direction", direction)
        self.register_buffer("weights", torch.as_tensor(weights, dtype=torch.float64))
        self.half = separation / 2
        means = torch.stack([-self.half * direction, self.half * direction])
        self.register_buffer("means", means)

    def _energy(self, x):
        squared = (x[:, None, :] - self.means.to(x)).square().sum(-1)
        log_norm = 0.5 * self.dim * math.log(2 * math.pi)
        return -torch.logsumexp(self.weights.to(x).log() - 0.5 * squared - log_norm, dim=1)

    def mode_index(self, x):
        """0 / 1 for the half-space of the bisecting hyperplane, ``(...)`` long."""
        return (x @ self.direction.to(x) > 0).long()

    def exact_weights(self) -> list[float]:
        """Exact probabilities of the two half-spaces (the components' tails included)."""
        w0, w1 = self.weights.tolist()
        inside, outside = _phi(self.half), _phi(-self.half)
        return [w0 * inside + w1 * outside, w1 * inside + w0 * outside]

    def starting_points(self, chains: int, generator) -> torch.Tensor:
        noise = torch.randn(chains, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[torch.arange(chains) % 2] + noise).float()


def manywell_starting_points(target: ManyWell, chains: int, generator) -> torch.Tensor:
    """Each pair in a random well (50/50), distributed inside it as the target (exact draws)."""
    pairs = target.num_pairs
    draws = target.sample(4 * chains, generator=generator, dtype=torch.float64)
    pool = draws[:, 0::2].flatten()
    right, left = pool[pool > 0], pool[pool < 0]
    need = chains * pairs
    if len(left) < need:  # 4 draws per chain give ~0.6 left values per pair: top up
        extra = target.sample(need, generator=generator, dtype=torch.float64)[:, 0::2].flatten()
        left = torch.cat([left, extra[extra < 0]])
    wells = torch.rand(chains, pairs, generator=generator) < 0.5
    first = torch.where(
        wells, right[:need].reshape(chains, pairs), left[:need].reshape(chains, pairs)
    )
    x = torch.randn(chains, target.dim, generator=generator, dtype=torch.float64)
    x[:, 0::2] = first
    return x.float()


@dataclass
class Problem:
    name: str
    description: str
    metric: str
    target: Energy
    x0: torch.Tensor
    tail_bound: float
    error: Callable[[torch.Tensor], float]  # samples (draws, chains, dim) -> max weight error
    labels: Callable[[torch.Tensor], torch.Tensor]  # samples -> (draws, chains) mode indices
    indicator: Callable[[torch.Tensor], torch.Tensor]  # samples -> (draws, chains) heaviest mode
    heavy_weight: float

    @property
    def dim(self) -> int:
        return self.target.dim


def mixture_problem(dim: int, separation: float, chains: int, seed: int) -> Problem:
    target = TwoGaussians(dim, separation)
    exact = target.exact_weights()
    barrier = separation**2 / 8
    return Problem(
        name=f"mixture-{dim}d",
        description=(
            f"two unit Gaussians in {dim}-D, weights 0.25/0.75, means {separation:g} apart "
            f"(midpoint {barrier:.1f} kT below the modes)"
        ),
        metric=f"max error over the 2 modes; exact weights {exact[0]:.4f} / {exact[1]:.4f}",
        target=target,
        x0=target.starting_points(chains, torch.Generator().manual_seed(seed)),
        tail_bound=math.ceil(separation / 2 + 5),
        error=lambda s: mode_weight_error(target.mode_index(s), exact),
        labels=target.mode_index,
        indicator=lambda s: target.mode_index(s).double(),
        heavy_weight=exact[1],
    )


def manywell_problem(dim: int, chains: int, seed: int) -> Problem:
    target = ManyWell(dim, validate_args=False)
    p = target.well_probability
    if target.num_modes <= 256:
        modes = torch.arange(target.num_modes)
        wells = (modes[:, None] >> torch.arange(target.num_pairs)) & 1 == 1
        exact = target.mode_log_probability(wells).exp()
        exact = exact / exact.sum()  # float64 rounding only

        def error(samples):
            labels = target.mode_index(samples.reshape(-1, dim)).view(samples.shape[:2])
            return mode_weight_error(labels, exact)

        metric = f"max error over all {target.num_modes} modes (exact heaviest {exact.max():.4f})"
    else:

        def error(samples):
            right = target.which_well(samples.reshape(-1, dim)).double().mean(0)
            return float((right - p).abs().max())

        metric = (
            f"max error over the {target.num_pairs} per-pair well probabilities "
            f"(exact {p:.4f}); {target.num_modes} modes are too many to count"
        )
    return Problem(
        name=f"manywell-{dim}",
        description=(
            f"ManyWell({dim}): {target.num_pairs} double wells, {target.num_modes} modes, "
            f"P(right well) = {p:.3f} per pair"
        ),
        metric=metric,
        target=target,
        x0=manywell_starting_points(target, chains, torch.Generator().manual_seed(seed)),
        tail_bound=4.0,
        error=error,
        labels=lambda s: target.mode_index(s.reshape(-1, dim)).view(s.shape[:2]),
        indicator=lambda s: (s[..., 0] > 0).double(),
        heavy_weight=p,
    )


# ------------------------------------------------------------------------------------- methods


@dataclass
class Result:
    method: str
    steps: int = 0
    evals_per_step: int = 1
    error: float = math.nan
    heavy: float = math.nan
    heavy_stderr: float = math.nan
    local: float | None = None
    global_: float | None = None
    switches: float = math.nan
    tau: float = math.nan
    min_ess: float = math.nan
    ess_per_second: float = math.nan
    ess_per_total_second: float = math.nan
    rhat: float = math.nan
    warm_seconds: float = math.nan
    prod_seconds: float = math.nan
    failure: str | None = None
    notes: list[str] = field(default_factory=list)


def new_flow(problem: Problem, seed: int):
    torch.manual_seed(seed)
    return NSF(
        problem.dim,
        coupling=True,
        transforms=4,
        bins=8,
        hidden_features=(64, 64),
        tail_bound=problem.tail_bound,
    )


def summarize(result: Result, problem: Problem, trace) -> Result:
    samples = trace.samples
    result.steps = samples.shape[0]
    result.error = problem.error(samples)
    indicator = problem.indicator(samples)
    result.heavy = float(indicator.mean())
    # sqrt(w (1 - w) / ESS) with the pooled ESS of the indicator (stuck chains: ESS ~ chains).
    indicator_ess = float(effective_sample_size(indicator))
    result.heavy_stderr = math.sqrt(result.heavy * (1 - result.heavy) / indicator_ess)
    result.local = float(trace.acceptance["local"].mean()) if "local" in trace.acceptance else None
    if "global" in trace.acceptance:
        result.global_ = float(trace.acceptance["global"].mean())
    result.switches = float(count_mode_switches(problem.labels(samples)).double().mean())
    tau = integrated_autocorrelation_time(indicator, pooled=True)
    result.tau = float(tau) * result.evals_per_step
    result.min_ess = float(effective_sample_size(samples).min())
    result.ess_per_second = result.min_ess / trace.seconds
    result.rhat = float(split_rhat(samples).max())
    result.prod_seconds = trace.seconds
    result.ess_per_total_second = result.min_ess / (trace.seconds + result.warm_seconds)
    return result


def run_methods(problem: Problem, args, methods) -> list[Result]:
    target, x0, seed = problem.target, problem.x0, args.seed
    warmup, production, leapfrog = args.warmup, args.production, args.leapfrog
    results = {}

    def attempt(name: str, body: Callable[[Result], None]) -> None:
        result = Result(name)
        results[name] = result
        try:
            body(result)
        except Exception as exc:  # one failing method must not stop the benchmark
            result.failure = f"{type(exc).__name__}: {exc}"
            if args.verbose:
                traceback.print_exc()

    shared = {}

    def mala(result: Result) -> None:
        kernel = MALA(target, step_size=0.1)
        half = warmup // 2
        # Adaptation, then the frozen chain whose positions train the two-stage flows.
        thin = max(1, (warmup - half) // 100)
        first = run(kernel, x0, warmup - half, num_warmup=half, thin=thin, seed=seed)
        shared["pool"] = first.samples.reshape(-1, problem.dim)
        shared["start"] = first.state.x
        shared["mala_warm_seconds"] = first.warmup_seconds + first.seconds
        trace = run(kernel, first.state, production, seed=seed + 1)
        result.warm_seconds = shared["mala_warm_seconds"]
        summarize(result, problem, trace)

    def hmc(result: Result) -> None:
        result.evals_per_step = leapfrog
        kernel = HMC(target, step_size=0.1, num_leapfrog=leapfrog)
        trace = run(kernel, x0, production // leapfrog, num_warmup=warmup // leapfrog, seed=seed)
        result.warm_seconds = trace.warmup_seconds
        summarize(result, problem, trace)

    def pretrained_flow():
        if "flow" not in shared:
            if "pool" not in shared:
                raise RuntimeError("the two-stage flow methods need MALA's warm-up chains")
            flow = new_flow(problem, seed)
            start = time.perf_counter()
            fit_boltzmann(
                flow,
                target,
                shared["pool"],
                steps=warmup // 2,  # as many Adam steps as the hybrid's warm-up makes
                batch_size=len(x0),
                learning_rate=args.learning_rate,
                schedule="constant",
                clip_grad=None,
                seed=seed,
                progress=False,
            )
            for parameter in flow.parameters():
                parameter.requires_grad_(False)
            shared["flow"] = flow
            shared["train_seconds"] = time.perf_counter() - start
        return shared["flow"]

    def imh(result: Result) -> None:
        flow = pretrained_flow()
        trace = run(IndependentMH(target, flow), shared["start"], production, seed=seed)
        result.warm_seconds = shared["mala_warm_seconds"] + shared["train_seconds"]
        summarize(result, problem, trace)

    def neutra(result: Result) -> None:
        result.evals_per_step = leapfrog
        flow = pretrained_flow()
        kernel = NeuTraHMC(target, flow, step_size=0.1, num_leapfrog=leapfrog)
        adapt = (production // 4) // leapfrog
        kept = (production - production // 4) // leapfrog
        trace = run(kernel, shared["start"], kept, num_warmup=adapt, seed=seed)
        result.warm_seconds = (
            shared["mala_warm_seconds"] + shared["train_seconds"] + trace.warmup_seconds
        )
        summarize(result, problem, trace)

    def hybrid(result: Result) -> None:
        result.evals_per_step = 2
        kernel = AdaptiveFlowMCMC(
            target,
            new_flow(problem, seed),
            local_kernel=MALA(target, step_size=0.1),
            local_steps=1,
            learning_rate=args.learning_rate,
            train_steps=1,
        )
        trace = run(kernel, x0, production // 2, num_warmup=warmup // 2, seed=seed)
        result.warm_seconds = trace.warmup_seconds
        summarize(result, problem, trace)

    bodies = {"MALA": mala, "HMC": hmc, "IMH-flow": imh, "NeuTra": neutra, "hybrid": hybrid}
    for name in METHODS:
        if name in methods:
            attempt(name, bodies[name])
    return [results[name] for name in METHODS if name in results]


# ------------------------------------------------------------------------------------- output


def _fmt(value, spec: str, width: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f"{'-':>{width}}"
    return f"{value:>{width}{spec}}"


def _ratio(value, reference, width: int) -> str:
    if value is None or reference is None or not reference or not math.isfinite(value):
        return f"{'-':>{width}}"
    if not math.isfinite(reference):
        return f"{'-':>{width}}"
    ratio = value / reference
    return f" {ratio:>{width - 2}.3g}x"  # leading space: columns never run together


def print_problem(problem: Problem, results: list[Result]) -> None:
    print(f"\n== {problem.name}: {problem.description}")
    print(f"   mode-weight error: {problem.metric}")
    header = (
        f"{'method':<9}{'draws':>6}{'ev/st':>6}{'w_heavy':>8}{'+-se':>7}{'err':>8}{'err/MALA':>9}"
        f"{'acc loc':>8}{'acc glob':>9}{'sw/ch':>7}{'tau':>7}{'minESS':>8}{'ESS/s':>8}"
        f"{'/MALA':>8}{'ESS/s all':>10}{'/MALA':>8}{'R-hat':>7}{'warm s':>7}{'prod s':>7}"
    )
    print(f"   exact w_heavy {problem.heavy_weight:.4f}")
    print(header)
    print("-" * len(header))
    base = next((r for r in results if r.method == "MALA" and r.failure is None), None)
    for r in results:
        if r.failure is not None:
            print(f"{r.method:<9}  FAILED: {r.failure}")
            continue
        print(
            f"{r.method:<9}{r.steps:>6d}{r.evals_per_step:>6d}{r.heavy:>8.4f}"
            + _fmt(r.heavy_stderr, ".4f", 7)
            + _fmt(r.error, ".4f", 8)
            + _ratio(r.error, base and base.error, 9)
            + _fmt(r.local, ".3f", 8)
            + _fmt(r.global_, ".3f", 9)
            + _fmt(r.switches, ".1f", 7)
            + _fmt(r.tau, ".1f", 7)
            + _fmt(r.min_ess, ".0f", 8)
            + _fmt(r.ess_per_second, ".0f", 8)
            + _ratio(r.ess_per_second, base and base.ess_per_second, 8)
            + _fmt(r.ess_per_total_second, ".0f", 10)
            + _ratio(r.ess_per_total_second, base and base.ess_per_total_second, 8)
            + _fmt(r.rhat, ".3f", 7)
            + _fmt(r.warm_seconds, ".1f", 7)
            + _fmt(r.prod_seconds, ".1f", 7)
        )


def throughput(args) -> None:
    """Chain-steps per second of MALA and the frozen hybrid on the 10-D mixture."""
    problem = mixture_problem(10, args.separation, 1, args.seed)
    target = problem.target
    print(
        f"\n== Throughput on {problem.name} (production steps only, after 1 warm-up step; "
        "hybrid flow frozen: train_steps=0, timing does not depend on its weights)"
    )
    header = (
        f"{'chains':>8}{'method':>9}{'steps':>7}{'seconds':>9}{'chain-steps/s':>15}"
        f"{'evals/s':>13}{'x MALA':>8}"
    )
    print(header)
    print("-" * len(header))
    for chains in args.throughput_chains:
        steps = min(200, max(2, int(args.throughput_work // chains)))
        x0 = target.starting_points(chains, torch.Generator().manual_seed(args.seed))
        rates = {}
        for method in ("MALA", "hybrid"):
            if method == "MALA":
                kernel, evals = MALA(target, step_size=0.1), 1
            else:
                kernel = AdaptiveFlowMCMC(
                    target,
                    new_flow(problem, args.seed),
                    local_kernel=MALA(target, step_size=0.1),
                    train_steps=0,
                )
                evals = 2
            try:
                trace = run(kernel, x0, steps, num_warmup=1, seed=args.seed)
            except Exception as exc:
                print(f"{chains:>8}{method:>9}  FAILED: {type(exc).__name__}: {exc}")
                continue
            rate = chains * steps / trace.seconds
            rates[method] = rate
            ratio = f"{rate / rates['MALA']:.3g}x" if "MALA" in rates else "-"
            print(
                f"{chains:>8}{method:>9}{steps:>7}{trace.seconds:>9.2f}{rate:>15,.0f}"
                f"{rate * evals:>13,.0f}{ratio:>8}"
            )


# ------------------------------------------------------------------ kernel throughput vs blackjax

KERNEL_DIM = 10
KERNEL_STEP_SIZES = {
    ("MALA", "gaussian"): 0.5,
    ("MALA", "rosenbrock"): 0.002,
    ("HMC", "gaussian"): 0.2,
    ("HMC", "rosenbrock"): 0.01,
}


def torch_log_density(name: str):
    """The benchmark targets in torch, batched over chains: ``(chains, 10) -> (chains,)``."""
    if name == "gaussian":
        return lambda x: -0.5 * x.square().sum(-1)

    def rosenbrock(x):
        head, tail = x[:, :-1], x[:, 1:]
        return -(100 * (tail - head.square()).square() + (1 - head).square()).sum(-1) / 20

    return rosenbrock


def jax_log_density(name: str):
    """The same targets in JAX, for one chain: ``(10,) -> ()``."""
    import jax.numpy as jnp

    if name == "gaussian":
        return lambda x: -0.5 * jnp.sum(x**2)
    return lambda x: -jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2) / 20


def torch_kernel(kind: str, target: str, leapfrog: int):
    log_prob, step_size = torch_log_density(target), KERNEL_STEP_SIZES[kind, target]
    if kind == "MALA":
        return MALA(log_prob, step_size=step_size)
    return HMC(log_prob, step_size=step_size, num_leapfrog=leapfrog, adapt_mass=False)


def torch_runner(kind: str, target: str, x0: torch.Tensor, leapfrog: int, compile: bool):
    """``steps -> (seconds, mean acceptance)``: production-only ``run`` keeping one sample."""
    kernel = torch_kernel(kind, target, leapfrog)
    # A checkout whose run has no compile option (the eager step only) runs without it.
    has_option = "compile" in inspect.signature(run).parameters
    options = {"compile": compile} if has_option else {}

    def timed(steps: int, seed: int = 0):
        trace = run(kernel, x0, steps, thin=steps, seed=seed, **options)
        return trace.seconds, float(trace.acceptance["local"].mean())

    return timed


def blackjax_runner(kind: str, target: str, x0: torch.Tensor, leapfrog: int):
    """``steps -> (seconds, mean acceptance)``: blackjax's kernel ``vmap``-ed over the chains and
    ``lax.fori_loop`` over the steps, one jitted call (compiled on first use per ``steps``)."""
    import blackjax
    import jax
    import jax.numpy as jnp

    log_density, step_size = jax_log_density(target), KERNEL_STEP_SIZES[kind, target]
    if kind == "MALA":
        algorithm = blackjax.mala(log_density, step_size)
    else:
        algorithm = blackjax.hmc(log_density, step_size, jnp.ones(KERNEL_DIM), leapfrog)
    chains = x0.shape[0]
    state0 = jax.jit(jax.vmap(algorithm.init))(jnp.asarray(x0.numpy()))
    step = jax.vmap(algorithm.step)

    def body(_, carry):
        state, key, accepted = carry
        key, sub = jax.random.split(key)
        state, info = step(jax.random.split(sub, chains), state)
        return state, key, accepted + info.is_accepted

    compiled = {}

    def timed(steps: int, seed: int = 0):
        if steps not in compiled:
            compiled[steps] = jax.jit(
                lambda state, key: jax.lax.fori_loop(
                    0, steps, body, (state, key, jnp.zeros(chains, jnp.int32))
                )
            )
        start = time.perf_counter()
        state, _, accepted = compiled[steps](state0, jax.random.key(seed))
        jax.block_until_ready((state, accepted))
        return time.perf_counter() - start, float(accepted.mean()) / steps

    return timed


def kernel_throughput(args) -> None:
    """MALA and HMC chain-steps per second, ours (eager and default ``run``) against blackjax."""
    try:
        import blackjax
        import jax
    except ImportError as error:
        print(f"blackjax columns left empty ({error}; pip install blackjax)")
        blackjax = None
    if blackjax is not None:
        print(f"blackjax {version('blackjax')}, jax {jax.__version__} ({jax.default_backend()})")
    print(
        f"\n== Kernel throughput: chain-steps/s over {args.kernel_steps} steps (best of "
        f"{args.kernel_repeats}, alternating), 10-D targets, float32, HMC {args.kernel_leapfrog} "
        "leapfrog steps; /bj = ours / blackjax"
    )
    header = (
        f"{'target':<11}{'kernel':<6}{'chains':>7}{'eager':>12}{'compiled':>12}"
        f"{'blackjax':>12}{'eager/bj':>9}{'comp/bj':>8}{'compile s':>10}{'jit s':>7}"
        f"{'acc ours':>9}{'acc bj':>8}"
    )
    print(header)
    print("-" * len(header))
    for target in args.kernel_targets:
        for kind in args.kernel_kinds:
            for chains in args.kernel_chains:
                kernel_row(args, target, kind, chains, blackjax is not None)


def kernel_row(args, target: str, kind: str, chains: int, with_blackjax: bool) -> None:
    x0 = torch.randn(chains, KERNEL_DIM, generator=torch.Generator().manual_seed(args.seed))
    if target == "rosenbrock":
        x0 = 1 + 0.1 * x0  # near the ridge, where a fixed small step size accepts
    leapfrog, steps = args.kernel_leapfrog, args.kernel_steps
    runners = {
        "eager": torch_runner(kind, target, x0, leapfrog, compile=False),
        "compiled": torch_runner(kind, target, x0, leapfrog, compile=True),
    }
    if with_blackjax:
        runners["blackjax"] = blackjax_runner(kind, target, x0, leapfrog)
    best, acceptance, first = {}, {}, {}
    for name, timed in runners.items():  # warm-up: compilation and first-call costs
        start = time.perf_counter()
        timed(steps)  # ours: compiles the single step and the block of steps
        first[name] = time.perf_counter() - start
    for repeat in range(args.kernel_repeats):
        for name, timed in runners.items():
            seconds, acceptance[name] = timed(steps, seed=repeat)
            best[name] = min(best.get(name, math.inf), seconds)
    rate = {name: chains * steps / seconds for name, seconds in best.items()}
    bj = rate.get("blackjax")
    print(
        f"{target:<11}{kind:<6}{chains:>7}{rate['eager']:>12,.0f}{rate['compiled']:>12,.0f}"
        + (f"{bj:>12,.0f}" if bj else f"{'-':>12}")
        + _ratio(rate["eager"], bj, 9)
        + _ratio(rate["compiled"], bj, 8)
        + f"{first['compiled']:>10.1f}"
        + (f"{first['blackjax']:>7.1f}" if bj else f"{'-':>7}")
        + f"{acceptance['compiled']:>9.3f}"
        + (f"{acceptance['blackjax']:>8.3f}" if bj else f"{'-':>8}")
    )


def print_summary(all_results: dict[str, list[Result]], threshold: float = 0.03) -> None:
    print(
        f"\n== Summary at equal target evaluations (recovered: mode-weight error < {threshold:g})"
    )
    for name, results in all_results.items():
        by = {r.method: r for r in results if r.failure is None}
        recovered = [r.method for r in by.values() if r.error < threshold]
        line = f"  {name:<13}"
        if "MALA" in by and "hybrid" in by:
            mala, hybrid = by["MALA"], by["hybrid"]
            line += (
                f"err MALA {mala.error:.4f} -> hybrid {hybrid.error:.4f}; hybrid/MALA min-ESS/s "
                f"x{hybrid.ess_per_second / mala.ess_per_second:.3g} (production), "
                f"x{hybrid.ess_per_total_second / mala.ess_per_total_second:.3g} (with warm-up); "
            )
        line += f"recovered: {', '.join(recovered) or 'none'}"
        print(line)


# ------------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small budgets, for a smoke run")
    parser.add_argument("--chains", type=int, default=None, help="chains per method")
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up target evaluations per chain"
    )
    parser.add_argument(
        "--production", type=int, default=None, help="production target evaluations per chain"
    )
    parser.add_argument("--leapfrog", type=int, default=5, help="HMC / NeuTra leapfrog steps")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="flow training (Adam)")
    parser.add_argument("--separation", type=float, default=10.0, help="mixture mean distance")
    parser.add_argument("--problems", nargs="+", default=None, help="subset of problem names")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=METHODS,
        help="methods to run (MALA, the baseline, always runs)",
    )
    parser.add_argument("--throughput-chains", type=int, nargs="*", default=[1000, 10_000, 100_000])
    parser.add_argument(
        "--throughput-work",
        type=float,
        default=None,
        help="chain-steps per throughput measurement (steps = work / chains, in [2, 200])",
    )
    parser.add_argument(
        "--throughput",
        action="store_true",
        help="only the MALA/HMC kernel throughput table against blackjax",
    )
    parser.add_argument("--kernel-chains", type=int, nargs="+", default=[64, 1024, 16384])
    parser.add_argument(
        "--kernel-targets",
        nargs="+",
        default=["gaussian", "rosenbrock"],
        choices=["gaussian", "rosenbrock"],
    )
    parser.add_argument(
        "--kernel-kinds", nargs="+", default=["MALA", "HMC"], choices=["MALA", "HMC"]
    )
    parser.add_argument("--kernel-steps", type=int, default=300, help="timed steps per run")
    parser.add_argument("--kernel-repeats", type=int, default=3, help="best of this many")
    parser.add_argument("--kernel-leapfrog", type=int, default=10, help="HMC leapfrog steps")
    parser.add_argument(
        "--slcp", action="store_true", help="only the SLCP time-to-C2ST table against flowMC"
    )
    parser.add_argument("--slcp-chains", type=int, default=256)
    parser.add_argument("--slcp-warmup", type=int, default=500, help="ours: warm-up steps")
    parser.add_argument("--slcp-production", type=int, default=200, help="ours: production steps")
    parser.add_argument("--slcp-segments", type=int, default=5, help="ours: checkpoints")
    parser.add_argument(
        "--slcp-flows", nargs="+", default=["small", "default"], choices=["small", "default"]
    )
    parser.add_argument(
        "--flowmc-python", default=sys.executable, help="interpreter with flowMC installed"
    )
    parser.add_argument("--flowmc-training-loops", type=int, default=20)
    parser.add_argument("--flowmc-production-loops", type=int, default=10)
    parser.add_argument("--flowmc-local-steps", type=int, default=100)
    parser.add_argument("--flowmc-global-steps", type=int, default=100)
    parser.add_argument("--flowmc-epochs", type=int, default=20)
    parser.add_argument("--flowmc-learning-rate", type=float, default=1e-3)
    parser.add_argument("--no-flowmc", action="store_true", help="ours only")
    parser.add_argument("--c2st-samples", type=int, default=10_000)
    parser.add_argument("--c2st-threshold", type=float, default=0.52)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="tracebacks of failing methods")
    args = parser.parse_args()
    defaults = (
        dict(chains=256, warmup=300, production=300, throughput_work=1e5)
        if args.quick
        else dict(chains=512, warmup=800, production=1000, throughput_work=1e6)
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    names = ["mixture-2d", "mixture-10d", "mixture-50d", "manywell-8"]
    if not args.quick:
        names.append("manywell-32")
    if args.problems is None:
        args.problems = names
    for name in args.problems:
        if parse_problem(name) is None:
            parser.error(
                f"unknown problem {name!r}: use mixture-<d>d (d >= 2) or manywell-<even d>"
            )
    if "MALA" not in args.methods:
        args.methods = ["MALA", *args.methods]
    if args.chains < 2 or args.warmup < 2 * args.leapfrog or args.production < 8 * args.leapfrog:
        parser.error("need chains >= 2, warmup >= 2 leapfrog, production >= 8 leapfrog")
    if args.leapfrog < 1 or args.separation <= 0 or args.threads < 1 or args.learning_rate <= 0:
        parser.error("need leapfrog >= 1, separation > 0, threads >= 1, learning-rate > 0")
    if any(c < 1 for c in args.throughput_chains):
        parser.error("throughput chains must be positive")
    return args


def parse_problem(name: str) -> tuple[str, int] | None:
    """``("mixture", d)`` for ``mixture-<d>d``, ``("manywell", d)`` for ``manywell-<even d>``."""
    match = re.fullmatch(r"(mixture)-(\d+)d|(manywell)-(\d+)", name)
    if match is None:
        return None
    kind, dim = (match[1], int(match[2])) if match[1] else (match[3], int(match[4]))
    if dim < 2 or (kind == "manywell" and dim % 2):
        return None
    return kind, dim


def make_problem(name: str, args) -> Problem:
    kind, dim = parse_problem(name)
    if kind == "mixture":
        return mixture_problem(dim, args.separation, args.chains, args.seed)
    return manywell_problem(dim, args.chains, args.seed)


def slcp_flow(kind: str, seed: int):
    """The proposal flows of ``--slcp``: ``default`` NSF(5) at its defaults, ``small`` a
    coupling NSF of flowMC's RQSpline size."""
    torch.manual_seed(seed)
    if kind == "default":
        return NSF(slcp.DIM)
    return NSF(
        slcp.DIM, coupling=True, transforms=4, hidden_features=(32, 32), bins=8, tail_bound=3.0
    )


def slcp_benchmark(args) -> None:
    """Time to C2ST <= threshold on SLCP: ours (one row per flow) and flowMC (when available)."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        sys.exit("--slcp computes C2ST with scikit-learn: pip install scikit-learn")
    try:
        data, reference = slcp.observation(1), slcp.reference_samples(1)
    except FileNotFoundError as error:
        sys.exit(str(error))
    reference = slcp.subsample(reference, args.c2st_samples, args.seed)
    x0 = slcp.prior_draws(args.slcp_chains, args.seed)
    print(
        f"== SLCP (sbibm observation 1), {args.slcp_chains} chains from prior draws; C2ST of "
        f"{len(reference)} samples each, threshold {args.c2st_threshold:g}"
    )
    options = dict(
        seed=args.seed,
        warmup=args.slcp_warmup,
        production=args.slcp_production,
        segments=args.slcp_segments,
    )
    outcomes = []
    for kind in args.slcp_flows:
        name = f"ours NSF {kind}"
        try:
            flow = slcp_flow(kind, args.seed)
            outcomes.append(slcp.run_ours(name, flow, data, x0, options))
        except Exception as exc:  # one failing method must not stop the benchmark
            outcomes.append(slcp.Outcome(name, 0, 0, math.nan, None, [], [], failure=repr(exc)))
    if not args.no_flowmc:
        outcomes.append(run_flowmc_row(args, data, x0))
    for outcome in outcomes:
        if outcome.failure is None:
            start = time.perf_counter()
            slcp.time_to_threshold(outcome, reference, args.c2st_threshold, args.seed)
            seconds = f"C2ST computed in {time.perf_counter() - start:.0f} s"
            outcome.notes = f"{outcome.notes}; {seconds}" if outcome.notes else seconds
    slcp.check_posterior(data, reference, outcomes)
    slcp.print_table(outcomes, args.c2st_threshold)


def run_flowmc_row(args, data, x0) -> slcp.Outcome:
    """flowMC's row, or a failed row saying why (not installed: how to run it)."""
    missing = slcp.flowmc_available(args.flowmc_python)
    if missing is not None:
        reason = f"{missing}; pip install flowmc (or pass --flowmc-python of a venv with it)"
        return slcp.Outcome("flowMC", 0, 0, math.nan, None, [], [], failure=reason)
    options = dict(
        chains=args.slcp_chains,
        training_loops=args.flowmc_training_loops,
        production_loops=args.flowmc_production_loops,
        local_steps=args.flowmc_local_steps,
        global_steps=args.flowmc_global_steps,
        epochs=args.flowmc_epochs,
        learning_rate=args.flowmc_learning_rate,
        seed=args.seed,
    )
    try:
        return slcp.run_flowmc_method(args.flowmc_python, data, x0, options, args.threads)
    except Exception as exc:
        return slcp.Outcome("flowMC", 0, 0, math.nan, None, [], [], failure=str(exc)[-500:])


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.slcp:
        print(
            f"normflows_sci SLCP benchmark | "
            f"{', '.join(f'{p} {version(p)}' for p in ('torch', 'normflows_sci', 'scikit-learn'))} | "
            f"threads={torch.get_num_threads()} seed={args.seed}"
        )
        monitor = OtherLoad()
        slcp_benchmark(args)
        report_load(monitor)
        return
    if args.throughput:
        # Before JAX is imported: XLA's CPU thread pools follow --threads, as torch's do.
        os.environ.setdefault(
            "XLA_FLAGS",
            f"--xla_cpu_multi_thread_eigen={'true' if args.threads > 1 else 'false'} "
            f"intra_op_parallelism_threads={args.threads}",
        )
        print(
            f"normflows_sci kernel throughput | "
            f"{', '.join(f'{p} {version(p)}' for p in ('torch', 'normflows_sci'))} | "
            f"threads={torch.get_num_threads()} seed={args.seed}"
        )
        monitor = OtherLoad()
        kernel_throughput(args)
        report_load(monitor)
        return
    versions = ", ".join(f"{pkg} {version(pkg)}" for pkg in ("torch", "normflows_sci"))
    print(
        f"normflows_sci sampler benchmark | {versions} | threads={torch.get_num_threads()} "
        f"seed={args.seed}{' | QUICK' if args.quick else ''}"
    )
    print(
        f"budget per chain: {args.warmup} warm-up + {args.production} production target "
        f"evaluations (log-density, with gradient where used); {args.chains} chains; "
        f"HMC/NeuTra leapfrog {args.leapfrog}; flows: NSF coupling 4x(64,64), Adam "
        f"{args.learning_rate:g}, {args.warmup // 2} training steps of batch {args.chains}"
    )
    monitor = OtherLoad()
    start = time.perf_counter()
    all_results = {}
    for name in args.problems:
        problem = make_problem(name, args)
        problem_start = time.perf_counter()
        results = run_methods(problem, args, args.methods)
        all_results[name] = results
        print_problem(problem, results)
        print(f"   ({time.perf_counter() - problem_start:.0f} s)")
    if args.throughput_chains:
        throughput(args)
    if all_results:
        print_summary(all_results)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    report_load(monitor)


def report_load(monitor: OtherLoad) -> None:
    """How much CPU other processes took while this script ran (and a warning when too much)."""
    others = monitor.cores()
    if others is not None:
        print(f"(other processes used {others:.2f} CPU cores on average during the run)")
        if others > BUSY_LIMIT:
            print(
                f"WARNING: other processes used {others:.2f} CPU cores during the run: wall times "
                "(ESS/s, throughput) are inflated by an unknown, uneven amount; errors, "
                "acceptance and autocorrelation times (counted in target evaluations) are not "
                "affected. Rerun on an idle machine for timings."
            )


if __name__ == "__main__":
    main()
