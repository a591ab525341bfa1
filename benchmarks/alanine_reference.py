"""Reference ensemble for alanine dipeptide in vacuum: replica-exchange MD with OpenMM (cached).

The Boltzmann-generator benchmark compares its reweighted estimates against this run. Replicas at a
geometric temperature ladder run Langevin dynamics (OpenMM Reference platform: fastest for 22 atoms);
neighbouring replicas try to swap every ``swap_every`` steps with the usual Metropolis criterion.
All particle masses are set to 12 amu: the configurational Boltzmann distribution does not depend on
masses, and equal masses allow a 3 fs step without constraints (every bond stays flexible, as in the
energy the flow is trained on). Frames of the 300 K replica are saved every ``save_every`` steps.

Usage: python benchmarks/alanine_reference.py --nanoseconds 100 --out benchmarks/.cache/ala2_ref.npz
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def _system():
    from openmmtools import testsystems

    test = testsystems.AlanineDipeptideVacuum(constraints=None)
    return test.system, test.positions


def run_reference(
    path: str,
    nanoseconds: float = 100.0,
    *,
    temperatures=(300.0, 375.0, 470.0, 590.0, 740.0),
    timestep_fs: float = 3.0,
    swap_every: int = 300,
    save_every: int = 200,
    seed: int = 0,
    max_minutes: float | None = None,
) -> dict:
    """Run (or load, when ``path`` exists) the reference; returns positions (nm) and metadata."""
    if os.path.exists(path):
        with np.load(path) as cached:
            return dict(cached)
    import openmm as mm
    import openmm.unit as u

    system, positions = _system()
    for i in range(system.getNumParticles()):
        system.setParticleMass(i, 12.0)
    platform = mm.Platform.getPlatformByName("Reference")
    contexts, integrators = [], []
    for k, temperature in enumerate(temperatures):
        integrator = mm.LangevinMiddleIntegrator(
            temperature * u.kelvin, 1.0 / u.picosecond, timestep_fs * u.femtosecond
        )
        integrator.setRandomNumberSeed(seed * 1000 + k + 1)
        context = mm.Context(system, integrator, platform)
        context.setPositions(positions)
        context.setVelocitiesToTemperature(temperature * u.kelvin, seed * 1000 + k + 1)
        contexts.append(context)
        integrators.append(integrator)
    kb = u.MOLAR_GAS_CONSTANT_R.value_in_unit(u.kilojoule_per_mole / u.kelvin)
    betas = 1.0 / (kb * np.asarray(temperatures))
    rng = np.random.default_rng(seed)
    total_steps = int(nanoseconds * 1e6 / timestep_fs)
    equilibration = min(total_steps // 10, int(1e5))  # 300 ps at 3 fs
    frames, accepted, attempted = (
        [],
        np.zeros(len(temperatures) - 1),
        np.zeros(len(temperatures) - 1),
    )
    start = time.perf_counter()
    step = 0
    while step < total_steps + equilibration:
        for _ in range(swap_every // save_every or 1):
            for integrator in integrators:
                integrator.step(min(save_every, swap_every))
            step += min(save_every, swap_every)
            if step > equilibration:
                state = contexts[0].getState(getPositions=True)
                frames.append(state.getPositions(asNumpy=True).value_in_unit(u.nanometer))
        energies = np.array(
            [
                c.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
                for c in contexts
            ]
        )
        for i in range(step // swap_every % 2, len(temperatures) - 1, 2):
            attempted[i] += 1
            log_accept = (betas[i] - betas[i + 1]) * (energies[i] - energies[i + 1])
            if np.log(rng.uniform()) < log_accept:
                accepted[i] += 1
                si = contexts[i].getState(getPositions=True, getVelocities=True)
                sj = contexts[i + 1].getState(getPositions=True, getVelocities=True)
                scale = np.sqrt(temperatures[i + 1] / temperatures[i])
                contexts[i].setPositions(sj.getPositions())
                contexts[i].setVelocities(sj.getVelocities() / scale)
                contexts[i + 1].setPositions(si.getPositions())
                contexts[i + 1].setVelocities(si.getVelocities() * scale)
                energies[i], energies[i + 1] = energies[i + 1], energies[i]
        if max_minutes is not None and time.perf_counter() - start > 60 * max_minutes:
            break
    elapsed = time.perf_counter() - start
    result = dict(
        positions=np.asarray(frames, dtype=np.float32).reshape(len(frames), -1),
        temperatures=np.asarray(temperatures),
        timestep_fs=np.float64(timestep_fs),
        save_every=np.int64(save_every),
        simulated_ns=np.float64((step - equilibration) * timestep_fs * 1e-6),
        swap_acceptance=accepted / np.maximum(attempted, 1),
        wall_seconds=np.float64(elapsed),
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".npz")
    os.close(handle)
    np.savez_compressed(tmp, **result)
    os.replace(tmp, path)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanoseconds", type=float, default=100.0)
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), ".cache", "ala2_ref.npz")
    )
    args = parser.parse_args()
    result = run_reference(args.out, args.nanoseconds, max_minutes=args.max_minutes)
    print(
        f"{len(result['positions'])} frames, {float(result['simulated_ns']):.1f} ns at 300 K, "
        f"swap acceptance {np.round(result['swap_acceptance'], 2)}, "
        f"{float(result['wall_seconds']):.0f} s"
    )


if __name__ == "__main__":
    main()
