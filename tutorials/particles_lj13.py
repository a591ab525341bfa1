"""Tutorial: an equivariant Boltzmann generator for the LJ13 Lennard-Jones cluster.

Thirteen identical particles in 3-D with the Lennard-Jones pair energy and a harmonic pull towards
their centre of mass (``normflows_sci.energies.LJ13``, kT = 1, the parameters of the
equivariant-flow papers). The energy does not change when the cluster is translated, rotated,
reflected or its particles relabelled, and a flow for it should not either:

1. The space: ``normflows_sci.manifolds.MeanFree(13, 3)``, configurations with zero centre of mass
   (a 36-dimensional subspace of ``R^39``; densities count its volume), and its base distribution
   ``MeanFreeNormal``. A translation-invariant energy has no normalisable density on all of
   ``R^39``; on the subspace it has.
2. A reference: Hamiltonian Monte Carlo chains (``normflows_sci.samplers.HMC`` and ``run``) from a
   lattice start, projected onto the subspace. They are short, so the reference is approximate
   (the printed mean energies show how far apart reference and reweighted flow are); held-out
   chains stay out of training.
3. The flow: ``normflows_sci.flows.particle_flow``, a continuous normalizing flow whose velocity
   is an E(n)-equivariant graph network, so its density is exactly invariant (checked below on a
   rotated, reflected and relabelled configuration).
4. Training: equivariant optimal-transport flow matching (``fit_flow_matching(...,
   ot="equivariant")``, Klein, Krämer & Noé 2023): each noise draw is rotated and relabelled
   onto the data point it is paired with before the minibatch assignment, which straightens the
   paths the flow has to learn. It needs samples, not energies, and solves no ODE.
5. Importance weights ``w = exp(-u(x)) / q(x)`` of flow samples (``importance_sample``, exact
   divergence, so ``log q`` is exact up to the ODE solver): effective sample size, Pareto k-hat
   and ``reliable``. With the full budget the weights came out reliable (in one run an ESS of
   about half the samples); a short training run (the smoke run below) gives unreliable ones,
   and the tutorial says so instead of trusting the reweighted numbers.
6. Histograms of the energy and of the pair distances: reference, raw flow samples and reweighted
   flow samples (``lj13_histograms.png`` in ``--out``, by default a new temporary folder whose path
   is printed).

Run::

    python tutorials/particles_lj13.py                 # allow about 5 minutes
    python tutorials/particles_lj13.py --mcmc-steps 200 --steps 100 --samples 64 --ode-steps 4

The full-size comparison with a non-equivariant flow, on a long parallel-tempering reference, is
``benchmarks/bench_particles.py``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import warnings
from pathlib import Path

import torch

from normflows_sci.energies import LJ13
from normflows_sci.flows import particle_flow
from normflows_sci.manifolds import MeanFree, MeanFreeNormal
from normflows_sci.samplers import HMC, importance_sample, run
from normflows_sci.training import fit_flow_matching

N_PARTICLES, SPATIAL_DIM = 13, 3


def output_folder(out: str | Path | None) -> Path:
    """``out`` (created if missing), or a new temporary folder when ``out`` is None."""
    if out is None:
        return Path(tempfile.mkdtemp(prefix="normflows_sci_particles_lj13_"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def hmc_reference(
    energy: LJ13, space: MeanFree, chains: int, steps: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, held_out)`` configurations from HMC chains (a quarter of the chains held out).

    The chains start on a jittered cubic lattice (no overlapping particles); half of ``steps``
    is warm-up (step sizes adapt, nothing kept), every 5th production step is kept. The energy
    ignores the centre of mass, which therefore drifts freely; projecting onto the subspace
    leaves HMC on the zero-centre-of-mass configurations.
    """
    generator = torch.Generator().manual_seed(seed)
    grid = torch.cartesian_prod(*[torch.arange(3.0, dtype=torch.float64)] * SPATIAL_DIM)
    lattice = 1.1 * grid[:N_PARTICLES]
    jitter = 0.05 * torch.randn(chains, N_PARTICLES, SPATIAL_DIM, generator=generator).double()
    start = space.proj((lattice + jitter).flatten(1))
    kernel = HMC(energy, num_leapfrog=5, step_size=0.005)
    trace = run(
        kernel,
        start,
        steps - steps // 2,
        num_warmup=steps // 2,
        thin=5,
        generator=generator,
        compile=False,
    )
    samples = space.proj(trace.samples).float()  # (draws, chains, 39)
    held = max(1, chains // 4)
    train, test = samples[:, : chains - held], samples[:, chains - held :]
    return train.reshape(-1, space.features), test.reshape(-1, space.features)


def check_invariance(flow, space: MeanFree, x: torch.Tensor) -> float:
    """Largest change of ``log q`` when ``x`` is rotated, reflected, relabelled and shifted."""
    generator = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(SPATIAL_DIM, SPATIAL_DIM, generator=generator))
    reflection = torch.diag(torch.tensor([1.0, 1.0, -1.0]))
    order = torch.randperm(N_PARTICLES, generator=generator)
    moved = space.particles(x) @ (q @ reflection).T
    moved = moved[:, order] + torch.tensor([0.3, -1.0, 2.0])  # a shift: its centre is ignored
    with torch.no_grad():
        return float((flow.log_prob(moved.flatten(1)) - flow.log_prob(x)).abs().max())


def _step_histogram(ax, values, weights, bins, label: str) -> None:
    """A histogram normalised over ALL of the sample: mass off the plotted range is missing from
    the plot instead of inflating the bins in range."""
    width = float(bins[1] - bins[0])
    weights = (weights / (weights.sum() * width)).numpy()
    ax.hist(values.numpy(), bins, weights=weights, histtype="step", label=label)


def plot_histograms(energy: LJ13, reference, result, out: Path) -> Path:
    """Energy and pair-distance histograms: reference, raw and reweighted flow samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples, weights = result.samples.double(), result.weights.double()
    ref_energy = energy.energy(reference.double())
    low, high = ref_energy.quantile(torch.tensor([0.005, 0.995], dtype=torch.float64)).tolist()
    energy_bins = torch.linspace(low - 5.0, high + 5.0, 50).numpy()
    distance_bins = torch.linspace(0.0, 4.0, 60).numpy()
    pairs = energy.num_pairs
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, x, w in (
        ("reference (HMC, held out)", reference.double(), None),
        ("flow", samples, None),
        ("flow, reweighted", samples, weights),
    ):
        w = torch.ones(len(x), dtype=torch.float64) if w is None else w
        _step_histogram(left, energy.energy(x), w, energy_bins, label)
        _step_histogram(
            right,
            energy.pairwise_distances(x).flatten(),
            w.repeat_interleave(pairs),
            distance_bins,
            label,
        )
    left.set_xlabel("energy (kT)")
    right.set_xlabel("pair distance (r_min = 1)")
    left.legend(fontsize=8)
    figure.suptitle("LJ13: reference vs equivariant flow ")
    path = out / "lj13_histograms.png"
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def main(
    *,
    mcmc_steps: int = 2000,
    chains: int = 64,
    steps: int = 4000,
    batch_size: int = 64,
    num_samples: int = 512,
    hidden: int = 32,
    layers: int = 3,
    ode_steps: int = 8,
    out: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Sample a reference, train the equivariant flow on it, reweight and plot.

    Args:
        mcmc_steps: HMC steps per chain (half of them warm-up); ``chains`` independent chains.
        steps, batch_size: flow-matching optimiser steps and minibatch size.
        num_samples: flow samples to weight.
        hidden, layers: width and message-passing layers of the EGNN velocity.
        ode_steps: fixed RK4 steps of the flow's ODE.
        out: folder for the figure (None: a new temporary folder).
        seed: seeds the chains, the flow and the training.
        progress: show a progress bar during training.

    Returns:
        ``ess_fraction``, ``pareto_k``, ``khat_threshold``, ``reliable``, ``invariance_error``
        (largest change of ``log q`` under a symmetry), ``reference_energy`` (held-out mean),
        ``reweighted_energy`` with ``reweighted_energy_stderr``, ``flow_median_energy`` (raw
        samples), ``figure`` and ``out``.
    """
    out = output_folder(out)
    print(f"output folder: {out}")
    energy, space = LJ13(), MeanFree(N_PARTICLES, SPATIAL_DIM)
    base = MeanFreeNormal(N_PARTICLES, SPATIAL_DIM)
    x0 = base.sample(4, generator=torch.Generator().manual_seed(seed))
    print(
        f"space: {space.features} coordinates, {space.dim} on the zero-centre-of-mass subspace; "
        f"base samples' largest |centre of mass| {float(space.center_of_mass(x0).abs().max()):.1e}"
    )

    print(f"1/4 reference: {chains} HMC chains x {mcmc_steps} steps", flush=True)
    start = time.perf_counter()
    train, held = hmc_reference(energy, space, chains, mcmc_steps, seed)
    reference_energy = float(energy.energy(held.double()).mean())
    print(
        f"    {len(train)} training and {len(held)} held-out configurations "
        f"({time.perf_counter() - start:.0f} s); held-out mean energy {reference_energy:.2f}"
    )

    flow = particle_flow(
        N_PARTICLES, SPATIAL_DIM, hidden, layers, solver="rk4", steps=ode_steps, seed=seed
    )
    params = sum(p.numel() for p in flow.parameters())
    invariance = check_invariance(flow, space, held[:2])
    print(
        f"2/4 particle_flow: EGNN velocity {hidden} x {layers} layers, {params} parameters; "
        f"log q changes by {invariance:.1e} under rotation + reflection + relabelling + shift"
    )

    print(f"3/4 equivariant OT flow matching: {steps} steps of batch {batch_size}", flush=True)
    start = time.perf_counter()
    history = fit_flow_matching(
        flow,
        train,
        steps=steps,
        batch_size=batch_size,
        ot="equivariant",
        learning_rate=2e-3,
        seed=seed,
        progress=progress,
    )
    last = history["loss"][-min(50, len(history["loss"])) :]
    print(
        f"    {time.perf_counter() - start:.0f} s; loss {history['loss'][0]:.2f} -> "
        f"{sum(last) / len(last):.2f} (mean of the last {len(last)} steps)"
    )

    print(f"4/4 importance sampling: {num_samples} flow samples, exact log q", flush=True)
    flow.eval()
    start = time.perf_counter()
    with warnings.catch_warnings():
        # The verdict on unreliable weights is printed below, in words.
        warnings.simplefilter("ignore", RuntimeWarning)
        result = importance_sample(
            flow,
            energy,
            num_samples,
            batch_size=256,
            generator=torch.Generator().manual_seed(seed + 1),
        )
        u = energy.energy(result.samples.double())
        reweighted, reweighted_err = result.expectation(u)
    print(f"    {time.perf_counter() - start:.0f} s")
    print(f"ESS: {result.ess:.1f} of {num_samples} ({100 * result.ess_fraction:.2f}%)")
    verdict = (
        "reliable"
        if result.reliable
        else "NOT reliable: a few samples carry the weight, so the reweighted numbers below are "
        "not trustworthy; train longer (--steps), with more data (--mcmc-steps), or draw more"
    )
    print(f"Pareto k-hat: {result.pareto_k:.2f} (threshold {result.khat_threshold:.2f}; {verdict})")
    error = f"+- {float(reweighted_err):.2f}" if math.isfinite(reweighted_err) else "(no error bar)"
    print(
        f"mean energy: reference {reference_energy:.2f}, reweighted flow samples "
        f"{float(reweighted):.2f} {error}; median energy of the raw flow samples "
        f"{float(u.median()):.2f}"
    )
    figure = plot_histograms(energy, held, result, out)
    print(f"figure: {figure}")
    return dict(
        ess_fraction=result.ess_fraction,
        pareto_k=result.pareto_k,
        khat_threshold=result.khat_threshold,
        reliable=result.reliable,
        invariance_error=invariance,
        reference_energy=reference_energy,
        flow_median_energy=float(u.median()),
        reweighted_energy=float(reweighted),
        reweighted_energy_stderr=float(reweighted_err),
        figure=figure,
        out=out,
    )


def _cli(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mcmc-steps", type=int, default=2000, help="HMC steps per chain")
    parser.add_argument("--chains", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4000, help="flow-matching steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=512, help="flow samples to weight")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--ode-steps", type=int, default=8)
    parser.add_argument("--out", default=None, help="figure folder (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in (
        "mcmc_steps",
        "chains",
        "steps",
        "batch_size",
        "samples",
        "hidden",
        "layers",
        "ode_steps",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    if args.mcmc_steps < 20 or args.chains < 2:
        parser.error("--mcmc-steps must be at least 20 and --chains at least 2")
    return main(
        mcmc_steps=args.mcmc_steps,
        chains=args.chains,
        steps=args.steps,
        batch_size=args.batch_size,
        num_samples=args.samples,
        hidden=args.hidden,
        layers=args.layers,
        ode_steps=args.ode_steps,
        out=args.out,
        seed=args.seed,
    )


if __name__ == "__main__":
    _cli()
