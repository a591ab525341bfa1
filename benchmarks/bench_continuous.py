"""Continuous normalizing flows trained by flow matching vs a neural spline flow (NSF).

Run from the repository root::

    python benchmarks/bench_continuous.py            # ~60 s per fit
    python benchmarks/bench_continuous.py --quick    # smoke run (a few seconds per fit)

Part 1, tabular density estimation (the bundled tables of ``benchmarks/bench_tabular.py``,
built by its ``make_table`` with the same seeded dequantisation and 70/10/20 split, no bounds):

* ``NSF``: ``normflows_sci.flows.NSF`` (5 autoregressive RQ-spline layers, hidden (128, 128)),
  maximum likelihood with ``fit_flow`` (early stopping on the validation rows, patience 20).
* ``CFM`` / ``OT-CFM``: ``normflows_sci.flows.CNF`` (velocity MLP (128, 128), SiLU), trained by
  conditional flow matching, without / with exact minibatch OT pairing, ``fit_flow_matching``
  (cosine schedule over ``--steps``, stopped by the same wall-clock budget). The held-out
  log-likelihood uses dopri5 (rtol = atol = 1e-5) and the exact divergence.

Every model sees the data standardised with the training mean and standard deviation; scores are
mean held-out log-densities per row in nats in the ORIGINAL units (the log-Jacobian of the
standardisation is added back). ``fit s`` is the training wall time, ``eval s`` the time to score
the test rows.

Part 2, Boltzmann-generator proposal on ``ManyWell(4)`` (4 modes with exact samples and exact
``log Z``): each model is fitted to ``--samples`` exact draws, then used as the proposal of
``normflows_sci.samplers.importance_sample``; the table gives the Kish ESS fraction and the
``log Z`` error of the importance estimate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tabular import make_table

from normflows_sci.energies import ManyWell
from normflows_sci.flows import NSF
from normflows_sci.flows.cnf import CNF
from normflows_sci.samplers import importance_sample
from normflows_sci.training import fit_flow
from normflows_sci.training.flow_matching import fit_flow_matching

HIDDEN = (128, 128)
TABLES = ("penguins", "atlantic_storms")


def _mean_log_prob(flow, x: torch.Tensor, batch: int = 4096) -> float:
    flow.eval()
    with torch.no_grad():
        return float(torch.cat([flow.log_prob(chunk) for chunk in x.split(batch)]).mean())


def fit_model(method: str, train, val, args, seed: int):
    torch.manual_seed(seed)
    d = train.shape[1]
    start = time.perf_counter()
    if method == "NSF":
        flow = NSF(d, transforms=5, hidden_features=HIDDEN)
        batch = int(min(max(len(train) // 20, 32), 256))
        fit_flow(
            flow,
            train,
            val_data=val,
            batch_size=batch,
            max_epochs=None,
            max_time=args.time,
            patience=20,
            schedule="plateau",
            seed=seed,
            progress=False,
        )
    else:
        flow = CNF(d, hidden_features=HIDDEN, rtol=1e-5, atol=1e-5, seed=seed)
        fit_flow_matching(
            flow,
            train,
            steps=args.steps,
            batch_size=min(256, len(train)),
            ot=method == "OT-CFM",
            learning_rate=1e-3,
            max_time=args.time,
            seed=seed,
            progress=False,
        )
    return flow, time.perf_counter() - start


def tabular(args) -> None:
    print("\n## Tabular held-out log-likelihood (nats per row, original units; higher is better)")
    print(
        f"{'table':<16} {'rows x cols':>12} {'method':<8} {'test LL':>9} {'fit s':>7} {'eval s':>7}"
    )
    for name in args.tables:
        table = make_table(name, args.seed, use_bounds=False)
        train = torch.as_tensor(table.train, dtype=torch.float32)
        mean, std = train.mean(0), train.std(0)
        train, val, test = (
            (torch.as_tensor(part, dtype=torch.float32) - mean) / std
            for part in (table.train, table.val, table.test)
        )
        log_jacobian = float(std.log().sum())
        for method in ("NSF", "CFM", "OT-CFM"):
            flow, fit_seconds = fit_model(method, train, val, args, args.seed)
            start = time.perf_counter()
            score = _mean_log_prob(flow, test) - log_jacobian
            eval_seconds = time.perf_counter() - start
            shape = f"{table.rows}x{len(table.columns)}"
            print(
                f"{name:<16} {shape:>12} {method:<8} {score:>9.3f} {fit_seconds:>7.1f} "
                f"{eval_seconds:>7.2f}"
            )
            sys.stdout.flush()


def boltzmann(args) -> None:
    target = ManyWell(4)
    gen = torch.Generator().manual_seed(args.seed)
    data = target.sample(args.samples, generator=gen).float()
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    print(
        f"\n## Boltzmann-generator proposal: ManyWell(4), {len(train)} exact training samples, "
        f"{args.proposals} importance draws (exact log Z = {target.log_z:.4f})"
    )
    print(f"{'method':<8} {'ESS/N':>7} {'log Z err':>10} {'fit s':>7} {'IS s':>7}")
    for method in ("NSF", "CFM", "OT-CFM"):
        flow, fit_seconds = fit_model(method, train, val, args, args.seed)
        flow.eval()
        start = time.perf_counter()
        result = importance_sample(
            flow,
            target,
            args.proposals,
            batch_size=4096,
            generator=torch.Generator().manual_seed(args.seed + 1),
        )
        is_seconds = time.perf_counter() - start
        error = result.log_z - target.log_z
        print(
            f"{method:<8} {result.ess_fraction:>7.3f} {error:>+10.4f} {fit_seconds:>7.1f} "
            f"{is_seconds:>7.1f}"
        )
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget, for a smoke run")
    parser.add_argument("--time", type=float, default=None, help="seconds per fit (60; quick 5)")
    parser.add_argument("--steps", type=int, default=None, help="flow-matching steps (20000; 1500)")
    parser.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES))
    parser.add_argument("--samples", type=int, default=None, help="exact samples (20000; 4000)")
    parser.add_argument("--proposals", type=int, default=None, help="IS draws (20000; 4000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    quick = args.quick
    args.time = args.time or (5.0 if quick else 60.0)
    args.steps = args.steps or (1500 if quick else 20000)
    args.samples = args.samples or (4000 if quick else 20000)
    args.proposals = args.proposals or (4000 if quick else 20000)
    if args.time <= 0 or args.steps < 1 or args.samples < 10 or args.proposals < 1:
        parser.error("--time, --steps, --samples and --proposals must be positive")
    torch.set_num_threads(args.threads)
    print(
        f"bench_continuous | {args.time:g} s per fit, {args.steps} flow-matching steps max, "
        f"seed {args.seed}, threads {torch.get_num_threads()}, torch {torch.__version__}"
    )
    start = time.perf_counter()
    tabular(args)
    boltzmann(args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
