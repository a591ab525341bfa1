"""Flow-assisted MCMC on a multimodal target: where MALA stays stuck, the adaptive flow hybrid mixes.

Run:  python tutorials/hybrid_sampling.py [--dim 8] [--chains 512] [--warmup 300] [--steps 300]
                                         [--out DIR]

The target is a mixture of three unit Gaussians with unequal weights 0.5 / 0.3 / 0.2, far apart in
the first two coordinates (the corners of a triangle of circumradius 6, so neighbouring means are
10.4 apart and the density between them is ``exp(-13.5)`` times lower) and standard normal in the
other ``dim - 2``. Its mode weights are known: the Voronoi cell of each mean holds its component's
weight up to ``2 Phi(-10.4 / 2)``, about 2e-7.

Local samplers move by small steps, so crossing a 13.5-kT barrier takes of order ``exp(13.5)``
steps: chains started in a mode stay there, and the fraction of chains per mode keeps whatever
split they started with. Started evenly (1/3 per mode, as if each metastable state were found by a
short exploratory run but its weight unknown), MALA reports 1/3 for every mode however long it
runs. Its error bars cannot see this (with every chain frozen in its mode the effective sample
size of a mode indicator is about one per chain, and the chains' split was not drawn from the
target), but its diagnostics can: split R-hat far above 1 (chains disagree) and an
autocorrelation time of the mode indicator longer than the run.

The adaptive flow hybrid of Gabrié, Rotskoff & Vanden-Eijnden (2022) alternates a MALA step with an
independent Metropolis-Hastings move whose proposal ``x' ~ q`` comes from a normalizing flow,
accepted with probability ``min(1, p(x') q(x) / (p(x) q(x')))``. During warm-up the flow is trained
by maximum likelihood on the walkers' current positions; every accepted flow move can jump
between modes, so the walkers redistribute towards the true weights and the flow follows them.
For production the flow is frozen, so the chain is an ordinary Metropolis-Hastings chain with the
target as its stationary distribution, whatever the flow's quality (a poor flow only lowers the
acceptance). The flow can only propose modes the walkers have shown it, which is why every mode
needs some walkers at the start.

Both samplers get the same number of target evaluations (log-density and gradient): MALA makes
two steps for every hybrid step (one MALA step plus one flow proposal). Printed for each: acceptance
(local / global), mode weights against the exact ones with standard errors, mode switches per
chain, the integrated autocorrelation time of the heaviest mode's indicator, effective sample size
per second and split R-hat. A figure of trajectories, per-draw mode occupancy and samples is
written to ``--out DIR``, by default a new temporary folder whose path is printed. Progress bars
follow both runs; allow up to 10 minutes on two CPU cores shared with other work.

References: Gabrié, Rotskoff, Vanden-Eijnden, "Adaptive Monte Carlo augmented with normalizing
flows", PNAS 119 (2022); Vehtari et al., "Rank-normalization, folding, and localization: an
improved R-hat", Bayesian Analysis (2021).
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch

from normflows_sci.energies import Energy
from normflows_sci.flows import NSF
from normflows_sci.samplers import (
    MALA,
    AdaptiveFlowMCMC,
    count_mode_switches,
    effective_sample_size,
    integrated_autocorrelation_time,
    mode_occupancy,
    mode_weight_error,
    run,
    split_rhat,
)

WEIGHTS = (0.5, 0.3, 0.2)
RADIUS = 6.0
ANGLES_DEGREES = (90.0, 210.0, 330.0)


class ThreeModeMixture(Energy):
    """``u(x) = -log sum_k w_k N(x; mu_k, I)`` in ``dim`` dimensions (normalised: ``log_z = 0``).

    The means sit at the corners of a triangle of circumradius ``radius`` in the first two
    coordinates and at zero in the others.
    """

    log_z = 0.0

    def __init__(self, dim: int, weights=WEIGHTS, radius: float = RADIUS):
        if int(dim) != dim or dim < 2:
            raise ValueError(f"dim must be an integer >= 2, got {dim!r}")
        super().__init__(int(dim))
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (3,) or (weights <= 0).any() or abs(float(weights.sum()) - 1) > 1e-12:
            raise ValueError(f"weights must be 3 positive numbers summing to 1, got {weights}")
        angles = torch.tensor(ANGLES_DEGREES, dtype=torch.float64) * math.pi / 180
        means = torch.zeros(3, int(dim), dtype=torch.float64)
        means[:, 0], means[:, 1] = radius * angles.cos(), radius * angles.sin()
        self.register_buffer("means", means)
        self.register_buffer("weights", weights)

    @property
    def num_modes(self) -> int:
        return len(self.weights)

    def _energy(self, x):
        squared = (x[:, None, :] - self.means.to(x)).square().sum(-1)
        log_components = (
            self.weights.to(x).log() - 0.5 * squared - 0.5 * self.dim * math.log(2 * math.pi)
        )
        return -torch.logsumexp(log_components, dim=1)

    def mode_index(self, x):
        """Index of the nearest mean (the Voronoi cell) for ``x: (..., dim)`` -> ``(...)`` long."""
        plane = x[..., :2].to(torch.float64)
        return (
            (plane[..., None, :] - self.means[:, :2].to(plane.device)).square().sum(-1).argmin(-1)
        )

    def starting_points(self, num_chains: int, generator: torch.Generator):
        """``num_chains`` positions spread evenly over the modes (round robin), unit noise."""
        mode = torch.arange(num_chains) % self.num_modes
        noise = torch.randn(num_chains, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[mode] + noise).to(torch.get_default_dtype())


def summarize(name: str, trace, target: ThreeModeMixture, evals_per_step: int) -> dict:
    """Mode weights with standard errors, acceptance and mixing diagnostics of one production run."""
    labels = target.mode_index(trace.samples)  # (draws, chains)
    weights = mode_occupancy(labels, target.num_modes).overall.double()
    indicators = torch.stack([labels == k for k in range(target.num_modes)], -1).double()
    # Standard error of a weight: sqrt(w (1 - w) / ESS) with the ESS of that mode's indicator,
    # whose pooled estimate counts the disagreement between chains (stuck chains -> tiny ESS).
    indicator_ess = effective_sample_size(indicators)
    stderr = (weights * (1 - weights) / indicator_ess).sqrt()
    heaviest = int(target.weights.argmax())
    tau = float(integrated_autocorrelation_time(indicators[..., heaviest], pooled=True))
    ess = effective_sample_size(trace.samples)
    result = dict(
        weights=weights.tolist(),
        weight_stderr=stderr.tolist(),
        error=mode_weight_error(labels, target.weights),
        acceptance={kind: float(rate.mean()) for kind, rate in trace.acceptance.items()},
        switches_per_chain=float(count_mode_switches(labels).double().mean()),
        tau_steps=tau,
        tau_evaluations=tau * evals_per_step,
        min_ess=float(ess.min()),
        ess_per_second=float(ess.min()) / trace.seconds,
        rhat=float(split_rhat(trace.samples).max()),
        seconds=trace.seconds,
        warmup_seconds=trace.warmup_seconds,
    )
    exact = target.weights.tolist()
    print(f"\n{name}")
    print(
        "  acceptance      "
        + ", ".join(f"{kind} {rate:.3f}" for kind, rate in result["acceptance"].items())
    )
    for k, (w, se, truth) in enumerate(zip(weights.tolist(), stderr.tolist(), exact)):
        print(
            f"  mode {k} weight   {w:.4f} +- {se:.4f}   exact {truth:.4f}   ({(w - truth) / se:+.1f} se)"
        )
    print(f"  max weight error {result['error']:.4f}")
    print(f"  mode switches    {result['switches_per_chain']:.1f} per chain")
    print(
        f"  tau (mode {heaviest})     {tau:.1f} steps = {result['tau_evaluations']:.1f} target evaluations"
        f" (of {trace.samples.shape[0]} draws)"
    )
    print(
        f"  min ESS          {result['min_ess']:.0f} of {trace.samples.shape[:2].numel()} draws, "
        f"{result['ess_per_second']:.0f}/s (production {trace.seconds:.1f} s, "
        f"warm-up {trace.warmup_seconds:.1f} s)"
    )
    print(f"  split R-hat      {result['rhat']:.3f} (max over coordinates; < 1.01 is mixed)")
    return result


def plot(path: Path, target: ThreeModeMixture, traces: dict, num_lines: int = 3) -> Path:
    """Trajectories of ``x0``, per-draw mode occupancy and samples, one row per sampler.

    ``traces`` maps a name to ``(trace, target evaluations per step)``; time axes count target
    evaluations per chain, so the samplers line up at equal cost.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.2 * len(traces)), layout="constrained")
    axes = fig.subplots(len(traces), 3, squeeze=False)
    colors = ("#1f77b4", "#ff7f0e", "#2ca02c")
    exact = target.weights.tolist()
    generator = torch.Generator().manual_seed(0)
    for row, (name, (trace, evals_per_step)) in zip(axes, traces.items()):
        samples = trace.samples.detach().cpu()
        cost = evals_per_step * torch.arange(1, samples.shape[0] + 1)
        for chain in range(min(num_lines, samples.shape[1])):
            row[0].plot(cost, samples[:, chain, 0], lw=0.8)
        row[0].set(
            title=f"{name}: x0 of {num_lines} chains",
            xlabel="production target evaluations per chain",
            ylabel="x0",
        )
        occupancy = mode_occupancy(target.mode_index(samples), target.num_modes).per_draw
        for k in range(target.num_modes):
            row[1].plot(cost, occupancy[:, k], color=colors[k], label=f"mode {k}")
            row[1].axhline(exact[k], color=colors[k], ls="--", lw=1)
        row[1].set(
            title=f"{name}: fraction of chains per mode (dashed: exact)",
            xlabel="production target evaluations per chain",
            ylim=(0, 1),
        )
        row[1].legend(loc="upper right", fontsize=8)
        flat = samples.reshape(-1, target.dim)
        pick = torch.randperm(len(flat), generator=generator)[:4000]
        row[2].scatter(flat[pick, 0], flat[pick, 1], s=2, alpha=0.3, color="k", rasterized=True)
        row[2].set(title=f"{name}: 4000 samples (x0, x1)", xlabel="x0", ylabel="x1", aspect="equal")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def main(
    num_chains: int = 512,
    warmup: int = 300,
    steps: int = 300,
    dim: int = 8,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Run MALA and the adaptive flow hybrid with the same number of target evaluations.

    Args:
        num_chains: chains of each sampler.
        warmup: hybrid warm-up steps (flow training, step-size adaptation); MALA gets twice as many.
        steps: hybrid production steps (flow frozen); MALA gets twice as many.
        dim: dimension of the target (>= 2).
        seed: seeds the starting points, the flow initialisation and both chains.
        out: folder for ``hybrid_sampling.png`` (None: a new temporary folder).
        progress: progress bars for the two runs.

    Returns:
        ``{"exact_weights": [...], "mala": {...}, "hybrid": {...}, "figure": path}`` with the
        per-sampler summaries of :func:`summarize`.
    """
    out = Path(tempfile.mkdtemp(prefix="normflows_sci_hybrid_sampling_") if out is None else out)
    print(f"output folder: {out}")
    target = ThreeModeMixture(dim)
    x0 = target.starting_points(num_chains, torch.Generator().manual_seed(seed))
    print(
        f"{target.num_modes}-mode Gaussian mixture in {dim} dimensions, exact weights "
        f"{', '.join(f'{w:.2f}' for w in WEIGHTS)}; {num_chains} chains started 1/3 per mode"
    )

    # MALA: one target evaluation (with gradient) per step.
    print(f"\nMALA: {2 * warmup} warm-up + {2 * steps} production steps", flush=True)
    mala = run(
        MALA(target, step_size=0.3),
        x0,
        2 * steps,
        num_warmup=2 * warmup,
        seed=seed,
        progress=progress,
    )

    # Hybrid: one MALA step + one flow proposal per step. A coupling spline flow: one pass each way,
    # and monotone splines on [-10, 10] can split a coordinate into several modes.
    torch.manual_seed(seed)
    flow = NSF(dim, coupling=True, transforms=4, hidden_features=(64, 64), tail_bound=10.0)
    kernel = AdaptiveFlowMCMC(
        target,
        flow,
        local_kernel=MALA(target, step_size=0.3),
        local_steps=1,
        learning_rate=3e-3,
        train_steps=1,
    )
    print(
        f"adaptive flow hybrid: {warmup} warm-up steps (training the flow) + {steps} production "
        "steps",
        flush=True,
    )
    hybrid = run(kernel, x0, steps, num_warmup=warmup, seed=seed, progress=progress)

    print(f"\nsame budget: {2 * (warmup + steps)} target evaluations per chain")
    results = dict(
        exact_weights=list(WEIGHTS),
        mala=summarize(f"MALA ({2 * warmup} warm-up + {2 * steps} steps)", mala, target, 1),
        hybrid=summarize(
            f"adaptive flow hybrid ({warmup} warm-up + {steps} steps, flow frozen in production)",
            hybrid,
            target,
            2,
        ),
    )
    ratio = results["hybrid"]["ess_per_second"] / results["mala"]["ess_per_second"]
    print(
        f"\nmode-weight error: MALA {results['mala']['error']:.3f}, hybrid "
        f"{results['hybrid']['error']:.3f}; min ESS per second hybrid / MALA = {ratio:.1f}"
    )
    results["figure"] = plot(
        out / "hybrid_sampling.png", target, {"MALA": (mala, 1), "hybrid": (hybrid, 2)}
    )
    print(f"figure: {results['figure']}")
    return results


def _cli(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default=None, help="folder for the figure (default: a new temporary folder)"
    )
    args = parser.parse_args(argv)
    return main(args.chains, args.warmup, args.steps, args.dim, args.seed, args.out)


if __name__ == "__main__":
    _cli()
