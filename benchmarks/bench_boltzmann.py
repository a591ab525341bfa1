"""Alanine dipeptide Boltzmann generator (vacuum, 300 K), trained on CPU within a time budget.

Run from the repository root::

    python benchmarks/bench_boltzmann.py                  # 30 min training, 60 ns reference
    python benchmarks/bench_boltzmann.py --minutes 3 --reference-ns 2   # smoke run

Steps (all numbers are printed as one table at the end):

1. Reference ensemble: replica-exchange MD with OpenMM (``benchmarks/alanine_reference.py``;
   cached in ``benchmarks/.cache``). Its 300 K frames give the reference Ramachandran
   distribution and the free-energy difference ``F(phi > 0) - F(phi < 0)`` (kT), with a
   batch-means standard error over 20 contiguous blocks.
2. Training data: the first ``--train-fraction`` of the reference frames; the rest is split into
   a validation block (model selection) and a test block (reported NLL), contiguous because
   frames are correlated in time. The flow: ``internal_coordinate_flow`` (coupling neural spline
   flow on bonds, angles and torsions; circular splines on torsions). Training in rounds of
   ``--round-steps``: maximum likelihood for ``--ml-share`` of the budget keeping the parameters
   with the best validation NLL (early stopping: the flow overfits the correlated frames within
   about a thousand steps and the importance weights collapse), then maximum likelihood plus
   reverse KL on the torch energy keeping the parameters with the best ESS on 5000 fresh samples.
3. Importance sampling with the flow as proposal: ESS (Kish), the reweighted free-energy
   difference, and the reweighted Ramachandran plot next to the reference and the raw flow.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import version
from alanine_reference import run_reference

from normflows_sci.energies.molecular.internal import alanine_dipeptide_z_matrix
from normflows_sci.energies.molecular.systems import alanine_dipeptide, dihedral
from normflows_sci.flows import internal_coordinate_flow
from normflows_sci.plotting import plot_ramachandran
from normflows_sci.samplers import importance_sample
from normflows_sci.training import fit_boltzmann

CACHE = os.path.join(os.path.dirname(__file__), ".cache")


def phi_psi(energy, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return dihedral(x, *energy.phi_atoms), dihedral(x, *energy.psi_atoms)


def reference_free_energy(phi: np.ndarray, blocks: int = 20) -> tuple[float, float]:
    """``-log(P(phi > 0) / P(phi < 0))`` and its batch-means standard error."""
    positive = phi > 0
    estimate = -math.log(positive.mean() / (1 - positive.mean()))
    per_block = [b.mean() for b in np.array_split(positive, blocks)]
    # Delta method on the block means of the indicator (robust when some blocks have no visit).
    p, se_p = float(np.mean(per_block)), float(np.std(per_block, ddof=1) / math.sqrt(blocks))
    return estimate, se_p / (p * (1 - p))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget")
    parser.add_argument("--reference-ns", type=float, default=60.0)
    parser.add_argument("--reference-minutes", type=float, default=45.0)
    parser.add_argument("--train-fraction", type=float, default=0.8)
    parser.add_argument("--ml-share", type=float, default=0.7)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--round-steps", type=int, default=200)
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--transforms", type=int, default=8)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (on a busy machine more threads slow small ops down 10-1000x)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=CACHE)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)

    cache = os.path.join(CACHE, f"ala2_ref_{args.reference_ns:g}ns.npz")
    reference = run_reference(cache, args.reference_ns, max_minutes=args.reference_minutes)
    frames = torch.as_tensor(reference["positions"], dtype=torch.float64)
    energy = alanine_dipeptide(300.0)
    ref_phi, ref_psi = (a.numpy() for a in phi_psi(energy, frames))
    ref_df, ref_df_err = reference_free_energy(ref_phi)

    # Contiguous split (frames are time-correlated): train | validation (model selection) | test.
    n_train = int(args.train_fraction * len(frames))
    n_val = (len(frames) - n_train) // 2
    train = frames[:n_train].float()
    validation = frames[n_train : n_train + n_val].float()
    held_out = frames[n_train + n_val :].float()
    flow = internal_coordinate_flow(
        alanine_dipeptide_z_matrix(),
        train,
        transforms=args.transforms,
        hidden_features=tuple(args.hidden),
        seed=args.seed,
    )
    target = energy.float()

    def nll(frames_: torch.Tensor) -> float:
        with torch.no_grad():
            return float(-torch.cat([flow.log_prob(c) for c in frames_.split(8192)]).mean())

    def small_ess(seed: int) -> float:
        generator = torch.Generator().manual_seed(10_000 + seed)
        return importance_sample(flow, target, 5000, generator=generator).ess_fraction

    def train_in_rounds(seconds: float, score, **options) -> dict:
        """Rounds of ``--round-steps`` steps until ``seconds`` run out; keeps the parameters with
        the best ``score()`` (higher is better), as early stopping on held-out data does."""
        deadline = time.perf_counter() + seconds
        best, best_state, rounds, steps = -math.inf, None, 0, 0
        while time.perf_counter() < deadline:
            history = fit_boltzmann(
                flow,
                target,
                train,
                steps=args.round_steps,
                batch_size=args.batch_size,
                schedule="constant",
                max_time=deadline - time.perf_counter(),
                progress=False,
                log_every=args.round_steps,
                seed=args.seed + 7919 * rounds,
                **options,
            )
            steps += history["step"][-1]
            rounds += 1
            value = score(rounds)
            if value > best:
                best, best_state = value, copy.deepcopy(flow.state_dict())
        flow.load_state_dict(best_state)
        return dict(steps=steps, rounds=rounds, best=best)

    budget = 60 * args.minutes
    start = time.perf_counter()
    ml = train_in_rounds(
        args.ml_share * budget, lambda r: -nll(validation), learning_rate=args.learning_rate
    )
    mixed = train_in_rounds(
        budget - (time.perf_counter() - start),
        small_ess,
        learning_rate=args.learning_rate / 5,
        forward_weight=1.0,
        reverse_weight=1.0,
    )
    train_seconds = time.perf_counter() - start

    held_nll = nll(held_out)
    sample_start = time.perf_counter()
    result = importance_sample(
        flow,
        target,
        args.samples,
        batch_size=20_000,
        generator=torch.Generator().manual_seed(args.seed),
    )
    sample_seconds = time.perf_counter() - sample_start
    phi, psi = phi_psi(energy, result.samples.double())
    try:
        df, df_err = result.free_energy_difference(phi < 0, phi > 0)
    except ValueError as error:  # the flow put no weight in one basin: report, don't crash
        print(f"free-energy difference unavailable: {error}")
        df, df_err = math.nan, math.nan
    raw_positive = float((phi > 0).double().mean())
    raw_df = -math.log(raw_positive / (1 - raw_positive)) if 0 < raw_positive < 1 else math.inf
    figure = plot_ramachandran(
        {
            f"reference REMD ({float(reference['simulated_ns']):.0f} ns)": (ref_phi, ref_psi),
            "flow samples": (phi.numpy(), psi.numpy()),
            "flow, reweighted": (phi.numpy(), psi.numpy(), result.weights.numpy()),
        },
        os.path.join(args.out, "ala2_ramachandran.png"),
    )

    print(f"torch {torch.__version__}, openmm {version('openmm')}, threads {args.threads}")
    print(
        f"reference: {len(frames)} frames, {float(reference['simulated_ns']):.1f} ns at 300 K, "
        f"swap acceptance {np.round(reference['swap_acceptance'], 2).tolist()}, "
        f"{float(reference['wall_seconds']) / 60:.1f} min"
    )
    print(
        f"training: {len(train)} frames (validation {len(validation)}, test {len(held_out)}), "
        f"ML {ml['steps']} steps (best validation NLL {-ml['best']:.2f}) + ML/reverse-KL "
        f"{mixed['steps']} steps (best 5k-sample ESS {mixed['best']:.4f}) in "
        f"{train_seconds / 60:.1f} min; test NLL {held_nll:.2f}"
    )
    print("\n| quantity | value |\n|---|---|")
    rows = [
        ("importance samples", f"{args.samples} ({sample_seconds:.0f} s incl. energies)"),
        ("ESS fraction (Kish)", f"{result.ess_fraction:.4f} (ESS {result.ess:.0f})"),
        ("Pareto k-hat (threshold)", f"{result.pareto_k:.2f} ({result.khat_threshold:.2f})"),
        ("log Z (flow IS)", f"{result.log_z:.3f} +- {result.log_z_stderr:.3f}"),
        ("dF(phi>0 - phi<0) reference REMD", f"{ref_df:.3f} +- {ref_df_err:.3f} kT"),
        ("dF flow samples, unweighted", f"{raw_df:.3f} kT"),
        ("dF flow, reweighted", f"{df:.3f} +- {df_err:.3f} kT"),
        ("dF reweighted - reference", f"{df - ref_df:+.3f} kT"),
        ("Ramachandran plot", str(figure)),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
