"""Tutorial: a density on the torus for real angle data — alanine-dipeptide backbone torsions.

The backbone torsions ``(phi, psi)`` of alanine dipeptide live on the torus ``T^2``. We

1. get torsions: from the cached replica-exchange reference ``benchmarks/.cache/ala2_ref_40ns.npz``
   (written by ``benchmarks/alanine_reference.py``) when it exists, else from a short OpenMM
   Langevin MD run at 300 K (a minute by default; no downloads);
2. fit ``TorusFlow(2)`` (circular rational-quadratic splines with rotations, coupling conditioners
   fed ``(cos, sin)``) by maximum likelihood on 80% of the frames;
3. score the held-out 20% (nats per frame) against the uniform density ``-2 log(2 pi)`` and a
   product of two von Mises fitted by moments, and compare basin populations of flow samples with
   the data.

Run::

    python tutorials/torus_angles.py                 # cache if present, else 60 s of MD
    python tutorials/torus_angles.py --source md --md-seconds 20 --max-epochs 30

The MD run reports its progress every few seconds and a progress bar follows the training (at most
``--max-time`` seconds); allow up to 10 minutes on two CPU cores shared with other work. Nothing
is written to disk.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch

from normflows_sci.flows.manifold import TorusFlow
from normflows_sci.manifolds import Torus, VonMises
from normflows_sci.training import fit_flow

CACHE = os.path.join(os.path.dirname(__file__), "..", "benchmarks", ".cache", "ala2_ref_40ns.npz")
PHI_ATOMS, PSI_ATOMS = (4, 6, 8, 14), (6, 8, 14, 16)


def torsions(positions: torch.Tensor) -> torch.Tensor:
    """``(frames, 2)`` backbone ``(phi, psi)`` in ``[-pi, pi)`` from ``(frames, 66)`` positions."""
    from normflows_sci.energies.molecular.systems import dihedral

    angles = torch.stack([dihedral(positions, *PHI_ATOMS), dihedral(positions, *PSI_ATOMS)], -1)
    return Torus(2).proj(angles)


def run_md(
    seconds: float, *, seed: int = 0, save_every: int = 100, report_every: float | None = 10.0
) -> np.ndarray:
    """Positions ``(frames, 66)`` in nm from Langevin MD at 300 K for ``seconds`` of wall time.

    OpenMM Reference platform, alanine dipeptide in vacuum (Amber ff96, as in
    ``normflows_sci.energies.molecular.alanine_dipeptide``), 12 amu masses and a 3 fs step (the
    configurational distribution does not depend on masses). Every ``report_every`` seconds of
    wall time it prints the frames so far (None: silent).
    """
    import openmm as mm
    import openmm.unit as u
    from openmmtools import testsystems

    test = testsystems.AlanineDipeptideVacuum(constraints=None)
    system = test.system
    for i in range(system.getNumParticles()):
        system.setParticleMass(i, 12.0)
    integrator = mm.LangevinMiddleIntegrator(300 * u.kelvin, 1.0 / u.picosecond, 3 * u.femtosecond)
    integrator.setRandomNumberSeed(seed + 1)
    context = mm.Context(system, integrator, mm.Platform.getPlatformByName("Reference"))
    context.setPositions(test.positions)
    mm.LocalEnergyMinimizer.minimize(context)
    context.setVelocitiesToTemperature(300 * u.kelvin, seed + 1)
    integrator.step(2000)  # 6 ps of equilibration
    frames = []
    start = time.perf_counter()
    next_report = report_every
    while (elapsed := time.perf_counter() - start) < seconds:
        integrator.step(save_every)
        state = context.getState(getPositions=True)
        frames.append(state.getPositions(asNumpy=True).value_in_unit(u.nanometer).reshape(-1))
        if next_report is not None and elapsed >= next_report:
            print(f"  MD: {elapsed:.0f} of {seconds:g} s, {len(frames)} frames", flush=True)
            next_report += report_every
    return np.asarray(frames, dtype=np.float64)


def load_angles(source: str, *, md_seconds: float, max_frames: int, seed: int):
    """``(angles, description)``: torsions from the cache or a fresh MD run."""
    use_cache = source == "cache" or (source == "auto" and os.path.exists(CACHE))
    if use_cache:
        if not os.path.exists(CACHE):
            raise FileNotFoundError(f"no cached reference at {CACHE}; use --source md")
        with np.load(CACHE) as cached:
            positions = cached["positions"]
        description = f"cached REMD reference ({len(positions)} frames at 300 K)"
    else:
        print(f"running {md_seconds:g} s of Langevin MD (OpenMM, Reference platform)", flush=True)
        positions = run_md(md_seconds, seed=seed)
        description = f"{md_seconds:g} s of Langevin MD ({len(positions)} frames)"
    angles = torsions(torch.as_tensor(positions, dtype=torch.float64))
    if len(angles) > max_frames:
        index = torch.randperm(len(angles), generator=torch.Generator().manual_seed(seed))
        angles = angles[index[:max_frames]]
    return angles.float(), description


def von_mises_by_moments(angles: torch.Tensor) -> VonMises:
    """Product of von Mises with the sample's circular means and concentrations (Banerjee's
    approximation ``kappa = R (2 - R^2) / (1 - R^2)`` of the maximum-likelihood estimate)."""
    c, s = angles.cos().mean(0), angles.sin().mean(0)
    resultant = torch.sqrt(c**2 + s**2).clamp(max=0.999)
    kappa = resultant * (2 - resultant**2) / (1 - resultant**2)
    return VonMises(angles.shape[1], loc=torch.atan2(s, c), concentration=kappa)


def basins(angles: torch.Tensor) -> dict:
    """Populations of the main Ramachandran regions (phi < 0: beta/PII vs alpha_R; phi > 0)."""
    phi, psi = angles[:, 0], angles[:, 1]
    left = phi < 0
    alpha_r = left & (psi > -2.0) & (psi < 1.0)
    return dict(
        alpha_R=float(alpha_r.float().mean()),
        beta_PII=float((left & ~alpha_r).float().mean()),
        phi_positive=float((~left).float().mean()),
    )


def main(
    source: str = "auto",
    *,
    md_seconds: float = 60.0,
    max_frames: int = 20_000,
    max_epochs: int = 60,
    max_time: float | None = 60.0,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Fit the torsions and return held-out scores and basin populations.

    Args:
        source: ``"auto"`` (cache if present, else MD), ``"cache"`` or ``"md"``.
        md_seconds: wall time of the MD fallback.
        max_frames: subsample the data to at most this many frames.
        max_epochs, max_time: training budget (epochs, seconds; ``max_time=None``: epochs only).
        seed: seeds the subsample, the split, training and sampling.
        progress: progress bar for the training.

    Returns:
        ``frames``, ``source``, ``test_nll_flow``, ``test_nll_von_mises``, ``test_nll_uniform``
        (nats per frame, lower is better), ``basins_data``, ``basins_flow``, ``train_seconds``.
    """
    torch.manual_seed(seed)
    angles, description = load_angles(
        source, md_seconds=md_seconds, max_frames=max_frames, seed=seed
    )
    split = int(0.8 * len(angles))
    permutation = torch.randperm(len(angles), generator=torch.Generator().manual_seed(seed + 1))
    train, test = angles[permutation[:split]], angles[permutation[split:]]
    print(f"data: {description}; {len(angles)} frames used")
    budget = f"{max_epochs} epochs" + ("" if max_time is None else f", {max_time:g} s")
    print(f"training TorusFlow on {len(train)} frames (at most {budget})", flush=True)
    flow = TorusFlow(2, transforms=4, bins=12, hidden_features=(64, 64))
    start = time.perf_counter()
    fit_flow(
        flow,
        train,
        val_data=test,
        batch_size=256,
        learning_rate=3e-3,
        max_epochs=max_epochs,
        max_time=max_time,
        patience=10,
        seed=seed,
        progress=progress,
    )
    train_seconds = time.perf_counter() - start
    with torch.no_grad():
        nll_flow = float(-flow.log_prob(test).mean())
        nll_vm = float(-von_mises_by_moments(train).log_prob(test).mean())
        samples = flow.sample(len(test), generator=torch.Generator().manual_seed(seed + 2))
    return dict(
        frames=len(angles),
        source=description,
        test_nll_flow=nll_flow,
        test_nll_von_mises=nll_vm,
        test_nll_uniform=2 * math.log(2 * math.pi),
        basins_data=basins(test),
        basins_flow=basins(samples),
        train_seconds=train_seconds,
    )


def _cli(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=["auto", "cache", "md"], default="auto")
    parser.add_argument("--md-seconds", type=float, default=60.0)
    parser.add_argument("--max-frames", type=int, default=20_000)
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--max-time", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = main(
        args.source,
        md_seconds=args.md_seconds,
        max_frames=args.max_frames,
        max_epochs=args.max_epochs,
        max_time=args.max_time,
        seed=args.seed,
    )
    print("held-out negative log-likelihood (nats per frame, lower is better):")
    for key in ("test_nll_flow", "test_nll_von_mises", "test_nll_uniform"):
        print(f"  {key[9:]:12s} {result[key]:.3f}")
    print("basin populations (data vs flow samples):")
    for name in result["basins_data"]:
        print(f"  {name:13s} {result['basins_data'][name]:.3f}  {result['basins_flow'][name]:.3f}")
    print(f"training took {result['train_seconds']:.1f} s")
    return result


if __name__ == "__main__":
    _cli()
