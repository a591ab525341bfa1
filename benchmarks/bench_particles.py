"""Particle-system Boltzmann generators: the equivariant particle flow against a plain CNF on DW4 and LJ13.

Run from the repository root::

    python benchmarks/bench_particles.py --quick           # smoke run (about a minute)
    python benchmarks/bench_particles.py                    # 10-15 CPU-minutes per system
    python benchmarks/bench_particles.py --systems dw4 --steps 3000 --out DIR
    python benchmarks/bench_particles.py --systems dw4 --steps 1500 --finetune 50

Data: the parallel-tempering reference of ``benchmarks/particle_reference.py`` (loaded from its
cache, ``--reference-dir``; sampled for ``--reference-minutes`` and cached when missing; the quick
run samples a small reference in memory when none is cached). The chains are split: the first
``1 - --held-out`` of them train, the others (independent chains) are the held-out set.

Models, trained the same way (conditional flow matching on the reference samples with minibatch
optimal-transport pairs, same steps, batch, learning rate and schedule, ``fit_flow_matching``;
the defaults per system are in ``TRAINING``: 10-15 CPU-minutes per system on one thread for
training and evaluating both models, most of it the equivariant model's):

* ``equivariant``: ``normflows_sci.flows.particle_flow`` (E(n)-equivariant graph network velocity,
  mean-free base), with equivariant OT pairs (``ot="equivariant"``); skipped, with a note, when
  this checkout has no ``particle_flow``.
* ``CNF``: ``normflows_sci.flows.CNF`` with an MLP velocity of about the same number of
  parameters, on the ``(n - 1) d`` coordinates of an orthonormal basis of the zero-centre-of-mass
  subspace (plain OT pairs): not equivariant, but on the same space and measure.

Energy-based fine-tuning (``--finetune STEPS``, off by default): after flow matching, the
equivariant flow is trained further by ``STEPS`` reverse-KL steps on the energy
(``fit_boltzmann`` with ``divergence="hutchinson"``: one probe tangent per field evaluation
instead of ``(n - 1) d``, the flow keeping its exact divergence for the evaluation;
``--finetune-path-gradient`` for the path-gradient estimator) and scored again, an extra row
``equivariant + reverse KL`` whose ``train s`` column is the fine-tune's wall time alone. To
compare with spending that time on flow matching instead, run again with more ``--steps``. Off
by default because it did not pay on DW4: after 1500 flow-matching steps (ESS 31%), 40-100
fine-tune steps left the ESS at 25-29% and raised the ODE error, while the same time spent on
flow matching (5800 steps) reached 65%; on LJ13 (600 flow-matching steps, ESS 28%) 20 steps
took it to 16% (numbers in the Boltzmann guide).

Both flows integrate with fixed-step RK4 (``--ode-steps``) and the exact divergence, so their
``log q`` is deterministic and the importance weights are unbiased up to the integration error,
which is printed: the largest change of ``log q`` of held-out configurations when the step count
is doubled (``ODE err``; an error of a few tenths of a nat already distorts the weights). The
evaluation sizes differ by system (the equivariant LJ13 field's exact divergence carries 36
tangents through every evaluation); see ``EVALUATION``.

Columns: held-out NLL (mean ``-log q(x)`` per configuration in nats, with respect to the
``(n - 1) d``-dimensional volume of the zero-centre-of-mass subspace, +- its standard error),
importance sampling against the energy (``importance_sample``: Kish ESS fraction and Pareto
k-hat with its threshold), training and sampling (with ``log q``) wall time, parameters, the
flow-matching loss (mean of the first and of the last 10% of steps), ODE error. The
published rows of Klein, Krämer & Noé, "Equivariant flow matching" (NeurIPS 2023) and Midgley et
al., "SE(3) equivariant augmented coupling flows" (NeurIPS 2023) stand next to them with
``ours / published`` ratios; a number that could not be looked up is printed as ``n/a``. PNG
histograms of the energy and of the pair distances (reference, flow samples, reweighted flow
samples) are written to ``--out``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from _common import OtherLoad, versions, warn_if_busy
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import particle_reference as reference_module

from normflows_sci.flows import CNF
from normflows_sci.samplers import importance_sample
from normflows_sci.training import fit_boltzmann, fit_flow_matching

try:  # built in parallel with this benchmark; absent from older checkouts
    from normflows_sci.flows import particle_flow
except ImportError:  # pragma: no cover - depends on the checkout
    particle_flow = None

SYSTEMS = ("dw4", "lj13")
NOT_FOUND = (
    "not looked up: the stored copies of the papers reachable when this benchmark was "
    "written gave their abstracts only, not their tables; fill in PUBLISHED"
)


@dataclass(frozen=True)
class Published:
    """One published result: held-out NLL (nats per configuration) and ESS (%) with its source."""

    system: str
    model: str
    source: str
    nll: float | None = None
    ess_percent: float | None = None
    note: str = NOT_FOUND


# Klein, Krämer, Noé, "Equivariant flow matching", NeurIPS 2023 (arXiv:2306.15030), Table 1;
# Midgley et al., "SE(3) equivariant augmented coupling flows", NeurIPS 2023 (arXiv:2308.10364),
# Table 1. Their numbers could not be looked up here (see NOT_FOUND): they print as n/a.
PUBLISHED = [
    Published(system, model, source)
    for system in SYSTEMS
    for model, source in (
        ("equivariant OT flow matching", "Klein et al. 2023, Table 1"),
        ("OT flow matching", "Klein et al. 2023, Table 1"),
        ("E-ACF (spherical-proj)", "Midgley et al. 2023, Table 1"),
        ("E-CNF (ML)", "Midgley et al. 2023, Table 1"),
    )
]


class SubspaceFlow:
    """A flow on the ``(n - 1) d`` subspace coordinates ``z``, seen on configurations
    ``x = z @ B.T`` (``B`` orthonormal, so densities are unchanged: the subspace's volume)."""

    def __init__(self, flow, basis: Tensor):
        self.flow, self.basis = flow, basis.float()

    def log_prob(self, x: Tensor) -> Tensor:
        return self.flow.log_prob(x @ self.basis)

    def sample_and_log_prob(self, num_samples: int, generator=None) -> tuple[Tensor, Tensor]:
        z, log_q = self.flow.sample_and_log_prob(num_samples, generator=generator)
        return z @ self.basis.T, log_q


@dataclass
class Result:
    """One model on one system."""

    model: str
    params: int
    pairing: str
    train_seconds: float = math.nan
    nll: float = math.nan
    nll_stderr: float = math.nan
    ess_fraction: float = math.nan
    pareto_k: float = math.nan
    khat_threshold: float = math.nan
    sample_seconds: float = math.nan
    loss_start: float = math.nan
    loss_end: float = math.nan
    ode_error: float = math.nan
    samples: Tensor | None = None
    weights: Tensor | None = None
    notes: list[str] = field(default_factory=list)


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def solver_options(args) -> dict:
    """ODE settings shared by both models: fixed-step RK4 (a cost known in advance: the exact
    divergence of the equivariant field costs ``(n - 1) d`` backward passes per evaluation)."""
    return dict(solver="rk4", steps=args.ode_steps)


def matched_cnf(features: int, target_params: int, depth: int, args, seed: int):
    """The MLP-velocity CNF with ``depth`` hidden layers whose width gives the parameter count
    closest to ``target_params``."""
    best = None
    for width in range(8, 1025, 8):
        flow = CNF(features, hidden_features=(width,) * depth, seed=seed, **solver_options(args))
        gap = abs(count_params(flow) - target_params)
        if best is None or gap < best[0]:
            best = (gap, flow)
        elif count_params(flow) > target_params:
            break
    return best[1]


def build_models(energy, args) -> dict:
    """``name -> (flow as seen on configurations, trainable module, training data map, ot)``."""
    n, d = energy.n_particles, energy.spatial_dim
    basis = reference_module.subspace_basis(n, d, torch.float32)
    models, target = {}, 20_000
    if particle_flow is not None:
        flow = particle_flow(n, d, args.hidden, args.layers, seed=args.seed, **solver_options(args))
        models["equivariant"] = (flow, flow, lambda x: x, "equivariant")
        target = count_params(flow)
    cnf = matched_cnf((n - 1) * d, target, args.layers, args, args.seed)
    models["CNF"] = (SubspaceFlow(cnf, basis), cnf, lambda x: x @ basis, True)
    return models


def ode_transform(flow):
    """The :class:`~normflows_sci.flows.ODETransform` of a continuous flow (or of the flow a
    :class:`SubspaceFlow` wraps)."""
    flow = getattr(flow, "flow", flow)
    return flow.transform


def ode_error(flow, x: Tensor) -> float:
    """Largest change of ``log q(x)`` when the RK4 step count is doubled: the integration
    error the importance weights carry (``log w = log p - log q``)."""
    transform = ode_transform(flow)
    steps = transform.steps
    with torch.no_grad():
        coarse = flow.log_prob(x)
        transform.steps = 2 * steps
        try:
            fine = flow.log_prob(x)
        finally:
            transform.steps = steps
    return float((coarse - fine).abs().max())


def held_out_nll(flow, x: Tensor, batch: int) -> tuple[float, float]:
    """Mean and standard error of ``-log q`` over ``x`` (chunks of ``batch``)."""
    with torch.no_grad():
        nll = -torch.cat([flow.log_prob(chunk) for chunk in x.split(batch)]).double()
    return float(nll.mean()), float(nll.std() / math.sqrt(len(nll)))


def evaluate(name: str, model: tuple, energy, train: Tensor, held: Tensor, args) -> Result:
    """Train one model by flow matching, then score it (NLL, importance sampling, timings)."""
    flow, module, to_space, ot = model
    result = Result(name, count_params(module), f"OT ({ot})" if ot is not True else "OT")
    start = time.perf_counter()
    history = fit_flow_matching(
        module,
        to_space(train),
        steps=args.steps,
        batch_size=args.batch_size,
        ot=ot,
        learning_rate=args.learning_rate,
        schedule=args.schedule,
        seed=args.seed,
        progress=False,
    )
    result.train_seconds = time.perf_counter() - start
    result.loss_start, result.loss_end = first_and_last_tenth(history["loss"])
    return score(result, flow, energy, held, args)


def first_and_last_tenth(losses: list[float]) -> tuple[float, float]:
    """Mean loss over the first and over the last tenth of the steps (at least one step each)."""
    tenth = max(1, len(losses) // 10)
    return sum(losses[:tenth]) / tenth, sum(losses[-tenth:]) / tenth


def finetune(model: tuple, energy, held: Tensor, args) -> Result:
    """``args.finetune`` reverse-KL steps on the energy with the Hutchinson divergence (the
    flow-matched model, trained in place), then the same scores; the row's ``train s`` is the
    fine-tune's wall time and its loss columns the reverse KL (first and last 10%)."""
    flow, module, _, _ = model
    estimator = "path gradient" if args.finetune_path_gradient else "reverse KL"
    result = Result(f"equivariant + {estimator}", count_params(module), "Hutchinson")
    module.train()
    start = time.perf_counter()
    history = fit_boltzmann(
        module,
        energy,
        steps=args.finetune,
        batch_size=args.finetune_batch,
        learning_rate=args.finetune_lr,
        schedule="constant",
        divergence="hutchinson",
        path_gradient=args.finetune_path_gradient,
        seed=args.seed,
        progress=False,
        log_every=1,
    )
    result.train_seconds = time.perf_counter() - start
    result.loss_start, result.loss_end = first_and_last_tenth(history["reverse_kl"])
    return score(result, flow, energy, held, args)


def score(result: Result, flow, energy, held: Tensor, args) -> Result:
    """Held-out NLL, ODE error and importance sampling (exact divergence) of a trained flow."""
    getattr(flow, "flow", flow).eval()
    result.nll, result.nll_stderr = held_out_nll(flow, held, args.eval_batch)
    result.ode_error = ode_error(flow, held[: args.ode_check])
    generator = torch.Generator().manual_seed(args.seed + 1)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        proposals = importance_sample(
            flow, energy, args.proposals, batch_size=args.eval_batch, generator=generator
        )
    result.sample_seconds = time.perf_counter() - start
    result.notes += [str(w.message).split(";")[0] for w in caught]
    result.ess_fraction = proposals.ess_fraction
    result.pareto_k, result.khat_threshold = proposals.pareto_k, proposals.khat_threshold
    result.samples, result.weights = proposals.samples.detach(), proposals.weights.detach()
    return result


def load_reference(system: str, args) -> dict:
    """The cached reference; a missing one is sampled (and cached, except in the quick run)."""
    directory = Path(args.reference_dir or reference_module.default_cache_dir())
    path = directory / f"{system}_reference.npz"
    if path.exists():
        return reference_module.load_reference(path, system)
    minutes = args.reference_minutes
    print(f"{system}: no reference at {path}; sampling one for {minutes:g} min")
    result = reference_module.run_reference(system, minutes=minutes, seed=args.seed)
    if not args.quick:
        reference_module.save_reference(result, path)
    return result


def split_chains(samples: Tensor, held_fraction: float) -> tuple[Tensor, Tensor]:
    """``(draws, chains, D)`` -> flat training and held-out sets from disjoint chains."""
    chains = samples.shape[1]
    held = min(max(1, round(held_fraction * chains)), chains - 1)
    train, test = samples[:, : chains - held], samples[:, chains - held :]
    return train.reshape(-1, samples.shape[-1]), test.reshape(-1, samples.shape[-1])


def _histograms(ax, values: dict, bins, xlabel: str) -> None:
    """Step histograms normalised over ALL of each sample: off-scale mass is missing from the
    plot instead of inflating the bins in range (as ``density=True`` would)."""
    width = bins[1] - bins[0]
    for label, (data, weights) in values.items():
        weights = np.ones(len(data)) if weights is None else np.asarray(weights, dtype=float)
        weights = weights / (weights.sum() * width)
        ax.hist(data, bins=bins, weights=weights, histtype="step", label=label)
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=7)


def plot(system: str, energy, reference: Tensor, results: list[Result], out: Path) -> Path:
    """Energy and pair-distance histograms: reference, each flow raw and reweighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def features(x: Tensor) -> tuple:
        x = x.double()
        return energy.energy(x).numpy(), energy.pairwise_distances(x).flatten().numpy()

    ref_energy, ref_distance = features(reference)
    low, high = torch.tensor(ref_energy).quantile(torch.tensor([0.001, 0.999], dtype=torch.float64))
    margin = 0.25 * float(high - low)
    energy_bins = torch.linspace(float(low) - margin, float(high) + margin, 80).numpy()
    distance_bins = torch.linspace(0.0, float(ref_distance.max()) * 1.3, 80).numpy()
    energies, distances = {"reference": (ref_energy, None)}, {"reference": (ref_distance, None)}
    pairs = energy.num_pairs
    for result in results:
        if result.samples is None:
            continue
        flow_energy, flow_distance = features(result.samples)
        weights = result.weights.double().numpy()
        # Off-scale energies are left out of the plot (not piled at its edge): say how many.
        outside = ((flow_energy < energy_bins[0]) | (flow_energy > energy_bins[-1])).mean()
        energies[f"{result.model} ({100 * outside:.0f}% off-scale)"] = (flow_energy, None)
        energies[f"{result.model}, reweighted"] = (flow_energy, weights)
        distances[result.model] = (flow_distance, None)
        distances[f"{result.model}, reweighted"] = (flow_distance, weights.repeat(pairs))
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    _histograms(left, energies, energy_bins, "energy (kT)")
    _histograms(right, distances, distance_bins, "pair distance")
    figure.suptitle(f"{system.upper()}: reference vs flows")
    path = out / f"{system}_histograms.png"
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def print_table(system: str, results: list[Result]) -> None:
    print(
        f"\n{'model':<26} {'params':>7} {'pairing':<17} {'NLL':>15} {'ESS %':>7} "
        f"{'k-hat (thr)':>12} {'train s':>8} {'sample s':>9} {'FM loss':>13} {'ODE err':>8}"
    )
    # Fine-tune rows ("equivariant + ..."): train s is the fine-tune's time, the loss column the reverse KL.
    for r in results:
        nll = f"{_fmt(r.nll)} +- {_fmt(r.nll_stderr)}"
        khat = f"{_fmt(r.pareto_k)} ({_fmt(r.khat_threshold)})"
        loss = f"{_fmt(r.loss_start)} -> {_fmt(r.loss_end)}"
        print(
            f"{r.model:<26} {r.params:>7} {r.pairing:<17} {nll:>15} "
            f"{_fmt(100 * r.ess_fraction):>7} {khat:>12} {_fmt(r.train_seconds, 1):>8} "
            f"{_fmt(r.sample_seconds, 1):>9} {loss:>13} {_fmt(r.ode_error, 3):>8}"
        )
    by_name = {r.model: r for r in results}
    if {"equivariant", "CNF"} <= set(by_name):
        eq, cnf = by_name["equivariant"], by_name["CNF"]
        print(
            f"equivariant vs CNF: NLL difference {_fmt(eq.nll - cnf.nll)} nats, ESS ratio "
            f"{_fmt(eq.ess_fraction / cnf.ess_fraction if cnf.ess_fraction else math.nan)}, "
            f"train time ratio {_fmt(eq.train_seconds / cnf.train_seconds)}, sampling time ratio "
            f"{_fmt(eq.sample_seconds / cnf.sample_seconds)}"
        )
    print_published(system, by_name)


def print_published(system: str, by_name: dict) -> None:
    """The published rows next to ours: ``ours / published`` for NLL and ESS."""
    ours = by_name.get("equivariant") or by_name.get("CNF")
    print(
        f"\npublished, {system} (ratios: ours = {ours.model})\n"
        f"{'model':<30} {'NLL':>7} {'ESS %':>7} {'NLL ours/pub':>13} {'ESS ours/pub':>13}  source"
    )
    missing = False
    for row in (p for p in PUBLISHED if p.system == system):
        nll_ratio = ours.nll / row.nll if row.nll else None
        ess_ratio = 100 * ours.ess_fraction / row.ess_percent if row.ess_percent else None
        missing |= row.nll is None or row.ess_percent is None
        print(
            f"{row.model:<30} {_fmt(row.nll):>7} {_fmt(row.ess_percent):>7} "
            f"{_fmt(nll_ratio):>13} {_fmt(ess_ratio):>13}  {row.source}"
        )
    if missing:
        print(f"n/a: {NOT_FOUND}")


def run_system(system: str, args, out: Path) -> list[Result]:
    energy = reference_module.make_energy(system)
    reference = load_reference(system, args)
    if not reference["converged"]:
        print(
            f"WARNING: the {system} reference is not converged (largest R-hat "
            f"{reference['diagnostics']['max_rhat']:.3f}): scores against it are unreliable"
        )
    train, held = split_chains(reference["samples"].float(), args.held_out)
    train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))]
    held_all, held = held, held[: args.eval_samples]
    print(
        f"\n## {system.upper()}: {len(train)} training samples, {len(held)} held-out samples "
        f"(disjoint chains), reference {reference['steps']} PT steps, largest R-hat "
        f"{reference['diagnostics']['max_rhat']:.3f}\n"
        f"training: {args.steps} flow-matching steps, batch {args.batch_size}, learning rate "
        f"{args.learning_rate:g} ({args.schedule}); evaluation: RK4 {args.ode_steps} steps, "
        f"{args.proposals} proposals, ODE error on {args.ode_check} held-out configurations"
    )
    if particle_flow is None:
        print("equivariant particle_flow: not in this checkout (normflows_sci.flows); skipped")
    if args.finetune:
        print(
            f"fine-tune: {args.finetune} reverse-KL steps (Hutchinson divergence"
            f"{', path gradients' if args.finetune_path_gradient else ''}), batch "
            f"{args.finetune_batch}, constant learning rate {args.finetune_lr:g}"
        )
    results = []
    for name, model in build_models(energy, args).items():
        if name not in args.models:
            continue
        results.append(evaluate(name, model, energy, train, held, args))
        sys.stdout.flush()
        if args.finetune and name == "equivariant":
            results.append(finetune(model, energy, held, args))
            sys.stdout.flush()
    print_table(system, results)
    for result in results:
        for note in dict.fromkeys(result.notes):
            print(f"note ({result.model}): {note}")
    print(f"histograms: {plot(system, energy, held_all, results, out)}")
    return results


# Per-system training settings (quick, full). Full: 10-15 CPU-minutes per system for both
# models, training and evaluation, on one thread (a budget of 30 leaves room for more steps).
# Flow matching needs no ODE solve, so its steps are cheap. The peak learning rate matters most: with the cosine schedule, 1500 steps of batch
# 256 on DW4 gave ESS 2% (5e-4), 14% (1e-3), 43% (2e-3) and 46% (4e-3, k-hat higher); on LJ13
# 600 steps of batch 128 ended at a lower flow-matching loss with 2e-3 than with 1e-3.
# Equivariant OT costs batch^2 particle alignments per step (LJ13: 13 x 13 scipy assignments),
# and LJ13's evaluation is dear, so LJ13 takes a smaller batch and fewer steps.
TRAINING = {
    "dw4": dict(steps=(40, 10000), batch_size=(32, 256), learning_rate=(2e-3, 2e-3)),
    "lj13": dict(steps=(40, 3000), batch_size=(32, 128), learning_rate=(2e-3, 2e-3)),
}

# Per-system evaluation sizes (quick, full): the equivariant LJ13 flow's exact divergence makes
# each of its samples about 30x dearer than DW4's.
EVALUATION = {
    "dw4": dict(
        eval_samples=(64, 1000), proposals=(128, 4000), ode_steps=(8, 20), ode_check=(8, 64)
    ),
    "lj13": dict(eval_samples=(32, 128), proposals=(64, 512), ode_steps=(4, 10), ode_check=(4, 16)),
}


def for_system(args, system: str) -> argparse.Namespace:
    """``args`` with the training and evaluation settings not given on the command line set
    for ``system``."""
    filled = argparse.Namespace(**vars(args))
    for name, (small, full) in {**TRAINING[system], **EVALUATION[system]}.items():
        if getattr(filled, name) is None:
            setattr(filled, name, small if args.quick else full)
    return filled


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke-size run (under a minute)")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument(
        "--models", nargs="+", choices=("equivariant", "CNF"), default=["equivariant", "CNF"]
    )
    parser.add_argument("--steps", type=int, default=None, help="flow-matching steps (TRAINING)")
    parser.add_argument("--batch-size", type=int, default=None, help="(TRAINING)")
    parser.add_argument("--learning-rate", type=float, default=None, help="peak rate (TRAINING)")
    parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    parser.add_argument("--hidden", type=int, default=None, help="particle_flow width (64; 16)")
    parser.add_argument("--layers", type=int, default=None, help="particle_flow layers (3; 2)")
    parser.add_argument("--eval-samples", type=int, default=None, help="held-out configurations")
    parser.add_argument("--proposals", type=int, default=None, help="importance-sampling draws")
    parser.add_argument("--ode-steps", type=int, default=None, help="RK4 steps of both flows")
    parser.add_argument(
        "--ode-check", type=int, default=None, help="held-out configurations for the ODE error"
    )
    parser.add_argument("--eval-batch", type=int, default=500)
    parser.add_argument(
        "--finetune",
        type=int,
        default=0,
        help="reverse-KL steps (Hutchinson) after flow matching, equivariant model (0: off)",
    )
    parser.add_argument("--finetune-batch", type=int, default=64)
    parser.add_argument("--finetune-lr", type=float, default=2e-5, help="constant rate")
    parser.add_argument("--finetune-path-gradient", action="store_true")
    parser.add_argument("--held-out", type=float, default=0.25, help="fraction of chains")
    parser.add_argument("--reference-dir", default=None)
    parser.add_argument("--reference-minutes", type=float, default=None, help="(5; 0.05)")
    parser.add_argument("--out", default=None, help="plots (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    defaults = dict(
        hidden=(16, 64),
        layers=(2, 3),
        reference_minutes=(0.05, 5.0),
    )
    for name, (small, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if args.quick else full)
    for name in (
        "steps",
        "batch_size",
        "hidden",
        "layers",
        "eval_samples",
        "proposals",
        "ode_steps",
        "ode_check",
    ):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    if not 0 < args.held_out < 1 or args.reference_minutes <= 0:
        parser.error("--held-out must be in (0, 1) and --reference-minutes > 0")
    if args.learning_rate is not None and not args.learning_rate > 0:
        parser.error("--learning-rate must be positive")
    if args.finetune < 0 or args.finetune_batch < 1 or not args.finetune_lr > 0:
        parser.error("--finetune must be >= 0, --finetune-batch >= 1, --finetune-lr > 0")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_particles_"))
    os.makedirs(out, exist_ok=True)
    print(
        f"bench_particles | {versions('torch')} | particle_flow width {args.hidden} x "
        f"{args.layers} layers, threads {args.threads}, seed {args.seed}"
        f"{' (quick)' if args.quick else ''}"
    )
    load = OtherLoad()
    start = time.perf_counter()
    for system in args.systems:
        run_system(system, for_system(args, system), out)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    warn_if_busy(load.cores())


if __name__ == "__main__":
    main()
