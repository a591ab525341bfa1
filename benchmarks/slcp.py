"""SLCP posterior of sbibm (Papamakarios, Sterratt, Murray 2019; Lueckmann et al. 2021) for
``bench_samplers.py --slcp``: the exact log-posterior in torch and in JAX, sbibm's observation and
reference posterior samples, sbibm's C2ST, and the flowMC run (a worker started as a subprocess).

Model: ``theta ~ U(-3, 3)^5``; ``m = (theta_1, theta_2)``, ``s_1 = theta_3^2``,
``s_2 = theta_4^2``, ``rho = tanh(theta_5)``, ``S = [[s_1^2, rho s_1 s_2], [rho s_1 s_2,
s_2^2]] + 1e-6 I`` (sbibm's simulator adds the ``1e-6`` to the diagonal); the observation is four
iid draws ``x_j ~ N(m, S)`` (8 numbers, pairs ``(x_j1, x_j2)``), so the likelihood is the product
of four 2-D Gaussian densities and the posterior is known up to its normalising constant. Both
samplers sample ``theta`` directly (log-density ``-inf`` outside the prior's box).

Data: the files of sbibm's task ``slcp``, observation 1 (``observation.csv`` and the 10,000
``reference_posterior_samples.csv.bz2``), read from an installed ``sbibm`` without importing it
(its imports pull in pyro, sbi and more). Nothing is downloaded at run time; when sbibm is missing,
``pip install --no-deps sbibm==1.1.0`` installs its files only. sbibm is MIT-licensed (Copyright
Jan-Matthis Lueckmann and contributors); flowMC (Wong, Gabrié, Foreman-Mackey 2023) is
MIT-licensed too.

C2ST (sbibm's ``c2st``): both samples z-scored with the mean and standard deviation of the
reference, an ``MLPClassifier`` (ReLU, two hidden layers of ``10 * dim`` units, Adam,
``max_iter=10000``, ``random_state=seed``), 5-fold shuffled ``KFold`` cross-validated accuracy,
mean over folds; equal sample counts. 0.5 means indistinguishable. Needs scikit-learn.
"""

from __future__ import annotations

import argparse
import bz2
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "DIM",
    "BOX",
    "NUM_DATA",
    "EPS",
    "sbibm_files",
    "observation",
    "reference_samples",
    "SLCPPosterior",
    "prior_draws",
    "subsample",
    "c2st",
    "flowmc_available",
    "run_flowmc",
    "Outcome",
    "run_ours",
    "run_flowmc_method",
    "check_posterior",
    "time_to_threshold",
    "print_table",
]

DIM = 5
BOX = 3.0  # the prior is U(-BOX, BOX)^DIM
NUM_DATA = 4
EPS = 1e-6  # sbibm's simulator adds this to the covariance's diagonal
INSTALL_HINT = (
    "the SLCP benchmark reads sbibm's bundled files (observation 1 and its reference posterior "
    "samples) from an installed sbibm; install its files only with "
    "`pip install --no-deps sbibm==1.1.0` (MIT licence; nothing of it is imported)"
)


def sbibm_files(num_observation: int = 1) -> Path:
    """The folder of sbibm's SLCP files for ``num_observation``, found without importing sbibm.

    Raises:
        FileNotFoundError: sbibm is not installed or lacks the files (with how to install it).
    """
    spec = importlib.util.find_spec("sbibm")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"sbibm is not installed: {INSTALL_HINT}")
    root = Path(next(iter(spec.submodule_search_locations))) / "tasks" / "slcp" / "files"
    folder = root / f"num_observation_{num_observation}"
    for name in ("observation.csv", "reference_posterior_samples.csv.bz2"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing: {INSTALL_HINT}")
    return folder


def observation(num_observation: int = 1) -> np.ndarray:
    """sbibm's observed data ``(4, 2)`` (float64): the four 2-D draws."""
    path = sbibm_files(num_observation) / "observation.csv"
    values = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=1)
    if values.shape != (2 * NUM_DATA,):
        raise ValueError(f"{path}: expected {2 * NUM_DATA} numbers, got shape {values.shape}")
    return values.reshape(NUM_DATA, 2)


def reference_samples(num_observation: int = 1) -> np.ndarray:
    """sbibm's reference posterior samples ``(10000, 5)`` (float64)."""
    path = sbibm_files(num_observation) / "reference_posterior_samples.csv.bz2"
    with bz2.open(path, "rt") as text:
        values = np.loadtxt(text, delimiter=",", skiprows=1, ndmin=2)
    if values.shape[1] != DIM or not np.isfinite(values).all():
        raise ValueError(f"{path}: expected finite rows of {DIM} numbers, got {values.shape}")
    return values


class SLCPPosterior:
    """Unnormalised log-posterior of SLCP at an observation, batched: ``(n, 5) -> (n,)``.

    Uniform prior on the box (``-inf`` outside it), likelihood of four 2-D Gaussian draws with
    sbibm's covariance; computed in the input's dtype and device.
    """

    def __init__(self, data):
        import torch

        self.data = torch.as_tensor(np.asarray(data, dtype=np.float64)).reshape(NUM_DATA, 2)

    def log_likelihood(self, theta):
        """``sum_j log N(x_j; m(theta), S(theta))``, ``(n,)``."""
        import torch

        data = self.data.to(theta)
        s1, s2 = theta[:, 2].square(), theta[:, 3].square()
        rho = torch.tanh(theta[:, 4])
        a, c, b = s1.square() + EPS, s2.square() + EPS, rho * s1 * s2
        det = a * c - b.square()
        d = data[None] - theta[:, None, :2]  # (n, 4, 2)
        d1, d2 = d[..., 0], d[..., 1]
        quad = c[:, None] * d1.square() - 2 * b[:, None] * d1 * d2 + a[:, None] * d2.square()
        quad = quad.sum(1) / det
        return -NUM_DATA * math.log(2 * math.pi) - 0.5 * NUM_DATA * det.log() - 0.5 * quad

    def __call__(self, theta):
        import torch

        inside = (theta.abs() <= BOX).all(-1)
        log_prior = -DIM * math.log(2 * BOX)
        return torch.where(inside, self.log_likelihood(theta) + log_prior, -math.inf)


def prior_draws(num: int, seed: int) -> np.ndarray:
    """``num`` draws of the prior ``U(-3, 3)^5`` (float64), the chains' start."""
    return np.random.default_rng(seed).uniform(-BOX, BOX, size=(num, DIM))


def subsample(samples: np.ndarray, num: int, seed: int = 0) -> np.ndarray:
    """``num`` rows of ``(draws, chains, dim)`` or ``(rows, dim)`` samples, drawn without
    replacement (all of them when there are fewer)."""
    flat = np.asarray(samples).reshape(-1, DIM)
    if len(flat) <= num:
        return flat
    rows = np.random.default_rng(seed).choice(len(flat), size=num, replace=False)
    return flat[np.sort(rows)]


def c2st(reference: np.ndarray, samples: np.ndarray, seed: int = 1, folds: int = 5) -> float:
    """sbibm's C2ST accuracy between ``reference`` and ``samples`` (same number of rows).

    Raises:
        ImportError: scikit-learn is not installed.
        ValueError: the row counts differ, or a sample is not finite.
    """
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.neural_network import MLPClassifier

    x, y = np.asarray(reference, np.float64), np.asarray(samples, np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"c2st needs two samples of equal shape, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("c2st: the samples must be finite")
    mean, std = x.mean(0), x.std(0, ddof=1)  # torch.std in sbibm: unbiased
    x, y = (x - mean) / std, (y - mean) / std
    width = 10 * x.shape[1]
    classifier = MLPClassifier(
        activation="relu",
        hidden_layer_sizes=(width, width),
        max_iter=10000,
        solver="adam",
        random_state=seed,
    )
    data = np.concatenate([x, y])
    labels = np.concatenate([np.zeros(len(x)), np.ones(len(y))])
    splits = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(classifier, data, labels, cv=splits, scoring="accuracy")))


# ------------------------------------------------------------------------------------- runs


@dataclass
class Outcome:
    """One sampler's run: production samples ``(draws, chains, 5)`` known at each checkpoint
    (``clock[i]`` seconds after the start, ``draws[i]`` draws per chain), and its costs."""

    method: str
    chains: int
    evaluations: int  # target evaluations per chain, warm-up included
    warmup_seconds: float
    samples: np.ndarray
    clock: list[float]
    draws: list[int]
    local: float = math.nan
    global_: float = math.nan
    c2st: dict[int, float] = field(default_factory=dict)  # checkpoint index -> C2ST
    hit: int | None = None  # first checkpoint with C2ST <= threshold
    failure: str | None = None
    notes: str = ""

    @property
    def seconds(self) -> float:
        return self.clock[-1] if self.clock else math.nan


def run_ours(method: str, flow, data, x0: np.ndarray, options: dict) -> Outcome:
    """``run(AdaptiveFlowMCMC(target, flow))`` (the kernel's defaults: one MALA step and one
    flow proposal per step, flow trained one Adam step per warm-up step): ``warmup`` steps, then
    ``production`` steps in ``segments`` equal calls of ``run`` (a checkpoint after each)."""
    import torch

    from normflows_sci.samplers import AdaptiveFlowMCMC, run

    target = SLCPPosterior(data)
    seed, segments = options["seed"], options["segments"]
    per = max(1, options["production"] // segments)
    start = time.perf_counter()
    kernel = AdaptiveFlowMCMC(target, flow)
    trace = run(
        kernel, torch.as_tensor(x0, dtype=torch.float32), 0, num_warmup=options["warmup"], seed=seed
    )
    warm = time.perf_counter() - start
    state, chunks, clock, draws, rates = trace.state, [], [], [], []
    for segment in range(segments):
        trace = run(kernel, state, per, seed=seed + 1 + segment)
        state = trace.state
        chunks.append(trace.samples.double().numpy())
        clock.append(time.perf_counter() - start)
        draws.append(per * (segment + 1))
        rates.append({k: float(v.mean()) for k, v in trace.acceptance.items()})
    steps = options["warmup"] + per * segments
    return Outcome(
        method=method,
        chains=len(x0),
        evaluations=steps * (kernel.local_steps + 1),
        warmup_seconds=warm,
        samples=np.concatenate(chunks),
        clock=clock,
        draws=draws,
        local=float(np.mean([r.get("local", math.nan) for r in rates])),
        global_=float(np.mean([r["global"] for r in rates])),
    )


def run_flowmc_method(python: str, data, x0: np.ndarray, options: dict, threads: int) -> Outcome:
    """flowMC's RQSpline + MALA bundle (see :func:`flowmc_worker`) as an :class:`Outcome`."""
    import tempfile

    keys = (
        "chains",
        "training_loops",
        "production_loops",
        "local_steps",
        "global_steps",
        "epochs",
        "learning_rate",
        "seed",
    )
    config = {key: options[key] for key in keys}
    config.update(data=np.asarray(data).tolist(), x0=np.asarray(x0).tolist())
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "flowmc.npz"
        summary = run_flowmc(python, config, out, threads)
        saved = np.load(out)
        positions, clock = saved["positions"], saved["clock"].tolist()
    loop = options["local_steps"] + options["global_steps"]
    return Outcome(
        method="flowMC",
        chains=options["chains"],
        evaluations=summary["evaluations"],
        warmup_seconds=clock[0],
        samples=np.swapaxes(positions, 0, 1).astype(np.float64),
        clock=clock[1:],
        draws=[loop * (i + 1) for i in range(len(clock) - 1)],
        local=summary["local_acceptance"],
        global_=summary["global_acceptance"],
        notes=summary["versions"],
    )


def time_to_threshold(outcome: Outcome, reference: np.ndarray, threshold: float, seed: int):
    """C2ST (``len(reference)`` samples each) at the last checkpoint and, when it reaches
    ``threshold``, bisection for the earliest checkpoint that does (C2ST is taken to fall as
    samples accumulate; its noise can hide an earlier one). Checkpoints with fewer samples than
    the reference are skipped. Sets ``outcome.c2st`` and ``outcome.hit``."""

    def score(index: int) -> float:
        if index not in outcome.c2st:
            rows = subsample(outcome.samples[: outcome.draws[index]], len(reference), seed)
            outcome.c2st[index] = c2st(reference, rows)
        return outcome.c2st[index]

    chains, needed = outcome.samples.shape[1], len(reference)
    usable = [i for i, draws in enumerate(outcome.draws) if draws * chains >= needed]
    if not usable or score(usable[-1]) > threshold:
        return
    low, high = 0, len(usable) - 1  # usable[high] reaches the threshold
    while low < high:
        middle = (low + high) // 2
        if score(usable[middle]) <= threshold:
            high = middle
        else:
            low = middle + 1
    outcome.hit = usable[high]


def check_posterior(data, reference: np.ndarray, outcomes: list[Outcome]) -> None:
    """Print the likelihood check (reference samples against prior draws) and the posterior
    means of every sampler against the reference's, in reference standard deviations."""
    import torch

    target = SLCPPosterior(data)
    at_ref = target(torch.as_tensor(reference)).numpy()
    at_prior = target(torch.as_tensor(prior_draws(len(reference), 12345))).numpy()
    print(
        f"   log-posterior: reference samples median {np.median(at_ref):.1f} (min "
        f"{at_ref.min():.1f}), prior draws median {np.median(at_prior):.1f}; prior draws above "
        f"the reference median: {np.mean(at_prior > np.median(at_ref)):.4f}"
    )
    mean, std = reference.mean(0), reference.std(0)
    print(f"   posterior mean: reference {np.array2string(mean, precision=3)}")
    for outcome in outcomes:
        if outcome.failure is None:
            own = outcome.samples.reshape(-1, DIM).mean(0)
            gap = np.abs(own - mean).max() / std[np.abs(own - mean).argmax()]
            print(
                f"   {'':15}{outcome.method:<10} {np.array2string(own, precision=3)}  "
                f"max |diff| {gap:.3f} sd"
            )


def print_table(outcomes: list[Outcome], threshold: float) -> None:
    """The side-by-side table (ratios against flowMC's row when it ran)."""
    base = next((o for o in outcomes if o.method == "flowMC" and o.failure is None), None)
    header = (
        f"{'method':<22}{'chains':>7}{'evals/ch':>9}{'warm s':>8}{'total s':>8}"
        f"{f't(<={threshold:g}) s':>13}{'C2ST@t':>8}{'C2ST end':>9}{'acc loc':>8}"
        f"{'acc glob':>9}{'total/fMC':>10}{'t/fMC':>7}"
    )
    print(header)
    print("-" * len(header))
    for o in outcomes:
        if o.failure is not None:
            print(f"{o.method:<22}  FAILED: {o.failure}")
            continue
        hit = o.clock[o.hit] if o.hit is not None else math.nan
        base_hit = base.clock[base.hit] if base and base.hit is not None else math.nan
        print(
            f"{o.method:<22}{o.chains:>7}{o.evaluations:>9}{o.warmup_seconds:>8.1f}"
            f"{o.seconds:>8.1f}{_num(hit, '.1f', 13)}"
            f"{_num(o.c2st.get(o.hit, math.nan), '.4f', 8)}"
            f"{_num(o.c2st.get(len(o.clock) - 1, math.nan), '.4f', 9)}"
            f"{_num(o.local, '.3f', 8)}{_num(o.global_, '.3f', 9)}"
            f"{_num(o.seconds / base.seconds if base else math.nan, '.3f', 10)}"
            f"{_num(hit / base_hit, '.3f', 7)}"
        )
    for o in outcomes:
        if o.failure is None:
            checkpoints = ", ".join(
                f"{o.clock[i]:.1f} s: {value:.4f}" for i, value in sorted(o.c2st.items())
            )
            print(f"   {o.method}: C2ST at {checkpoints}; {o.notes}")


def _num(value: float, spec: str, width: int) -> str:
    if value is None or not math.isfinite(value):
        return f"{'-':>{width}}"
    return f"{value:>{width}{spec}}"


# ------------------------------------------------------------------------------------- flowMC


def flowmc_available(python: str) -> str | None:
    """None when ``python`` can import flowMC, else the reason (one line)."""
    probe = "import flowMC, jax; print(jax.__version__)"
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{python}: {error}"
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return f"{python} cannot import flowMC ({last})"
    return None


def run_flowmc(python: str, config: dict, out: Path, threads: int) -> dict:
    """Run :func:`flowmc_worker` in ``python`` (a subprocess, so that JAX and torch do not share
    a process); returns its summary (the samples are in ``out``, an ``.npz``)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
        f"intra_op_parallelism_threads={threads}"
    )
    env["JAX_ENABLE_X64"] = "0"
    command = [python, str(Path(__file__).resolve()), "--flowmc-worker", json.dumps(config)]
    command += ["--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"flowMC worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _jax_log_posterior(data):
    """The SLCP log-posterior for one chain in JAX: ``(5,) -> ()`` (as :class:`SLCPPosterior`)."""
    import jax.numpy as jnp

    data = jnp.asarray(data, dtype=jnp.float32)

    def log_posterior(theta, _):
        s1, s2 = theta[2] ** 2, theta[3] ** 2
        rho = jnp.tanh(theta[4])
        a, c, b = s1**2 + EPS, s2**2 + EPS, rho * s1 * s2
        det = a * c - b**2
        d1, d2 = data[:, 0] - theta[0], data[:, 1] - theta[1]
        quad = jnp.sum(c * d1**2 - 2 * b * d1 * d2 + a * d2**2) / det
        log_lik = -NUM_DATA * math.log(2 * math.pi) - 0.5 * NUM_DATA * jnp.log(det) - 0.5 * quad
        inside = jnp.all(jnp.abs(theta) <= BOX)
        return jnp.where(inside, log_lik - DIM * math.log(2 * BOX), -jnp.inf)

    return log_posterior


def flowmc_worker(config: dict, out: Path) -> None:
    """flowMC's ``RQSpline_MALA_Bundle`` on SLCP (run in its own process): the wall clock at the
    end of warm-up and of each production loop (the chains' positions waited for), the
    production positions ``(chains, steps, 5)`` saved to ``out``; prints a JSON summary."""
    from importlib import metadata

    import jax
    from flowMC.resource_strategy_bundle.RQSpline_MALA import RQSpline_MALA_Bundle
    from flowMC.Sampler import Sampler
    from flowMC.strategy.lambda_function import Lambda

    start = time.perf_counter()
    chains, loops = config["chains"], config["production_loops"]
    clock = []

    def tick(rng_key, resources, position, data):
        jax.block_until_ready(position)
        clock.append(time.perf_counter() - start)

    bundle = RQSpline_MALA_Bundle(
        rng_key=jax.random.key(config["seed"]),
        n_chains=chains,
        n_dims=DIM,
        logpdf=_jax_log_posterior(config["data"]),
        n_local_steps=config["local_steps"],
        n_global_steps=config["global_steps"],
        n_training_loops=config["training_loops"],
        n_production_loops=loops,
        n_epochs=config["epochs"],
        learning_rate=config["learning_rate"],
    )
    bundle.strategies["clock"] = Lambda(tick)
    order = []
    for name in bundle.strategy_order:  # a tick after warm-up and after each production loop
        order.append(name)
        if name == "update_state" or (name == "update_local_step" and "update_state" in order):
            order.append("clock")
    bundle.strategy_order = order
    sampler = Sampler(
        n_dim=DIM,
        n_chains=chains,
        rng_key=jax.random.key(config["seed"] + 1),
        resource_strategy_bundles=bundle,
        checkpoint_interval=0,
    )
    x0 = jax.numpy.asarray(np.asarray(config["x0"], dtype=np.float32))
    sampler.sample(x0, {})
    positions = np.asarray(sampler.resources["positions_production"].data)
    local = _written_mean(sampler.resources["local_accs_production"].data)
    glob = _written_mean(sampler.resources["global_accs_production"].data)
    np.savez(out, positions=positions, clock=np.asarray(clock))
    steps = config["local_steps"] + config["global_steps"]
    summary = dict(
        seconds=clock[-1],
        warmup_seconds=clock[0],
        local_acceptance=local,
        global_acceptance=glob,
        evaluations=(config["training_loops"] + loops) * steps,
        versions=f"flowMC {metadata.version('flowMC')}, jax {jax.__version__}",
    )
    print(json.dumps(summary))


def _written_mean(values) -> float:
    """Mean of a flowMC acceptance buffer over the entries written (the rest hold ``-inf``)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values[np.isfinite(values)].mean())


def _worker_main() -> None:
    parser = argparse.ArgumentParser(description="flowMC worker of bench_samplers.py --slcp")
    parser.add_argument("--flowmc-worker", required=True, help="JSON configuration")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    flowmc_worker(json.loads(args.flowmc_worker), args.out)


if __name__ == "__main__":
    sys.exit(_worker_main())
