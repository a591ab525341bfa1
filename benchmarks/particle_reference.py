"""Reference samples of the DW4 and LJ13 particle systems by parallel tempering (cached).

Usage::

    python benchmarks/particle_reference.py --system dw4 --minutes 5 --out DIR
    python benchmarks/particle_reference.py --system lj13 --minutes 5   # default cache directory

Sampler: this package's :class:`~normflows_sci.samplers.ParallelTempering` with MALA (DW4) or
HMC (LJ13) local moves, many chains in one batch, run in the ``(n - 1) d`` coordinates of an orthonormal basis of the
zero-centre-of-mass subspace. The energies ignore the centre of mass, so this samples exactly the
Boltzmann density with respect to the subspace's volume (the measure the flows' likelihoods use);
the stored configurations are flat, ``(draws, chains, n * d)``, with zero centre of mass.

Diagnostics (printed and stored with the samples): split rank-normalised R-hat over chains and the
pooled integrated autocorrelation time (Geyer) of the energy, of the fraction of short pairs (DW4:
distance below the barrier at ``d0``; LJ13: below ``1.5 r_min``) and of three pair distances;
local and swap acceptance. The observables are recorded every ``thin`` steps (so the IAT is
resolved); the stored configurations are evenly spaced, a few hundred per chain, after a 20%
burn-in. A run whose largest R-hat exceeds ``RHAT_LIMIT`` is flagged
``converged = False`` and says so. Known facts printed next to the run: DW4's pair-distance
bimodality (wells at ``d0 +- sqrt(-b / 2c)``); LJ13's mean energy at the temperature of the
flow papers (``tau = 1``, harmonic centring ``0.5 |x - x_com|^2``; the papers do not state a mean
energy, so the comparison is the icosahedral ground state as a lower bound).

The samples are not committed to the repository (a useful LJ13 ensemble is about 4 MB):
they are cached as ``DIR/<system>_reference.npz``; ``DIR`` defaults to
``$NORMFLOWS_SCI_CACHE/particles`` or ``~/.cache/normflows_sci/particles``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from normflows_sci.energies.particles import DW4, LJ13, ParticleEnergy
from normflows_sci.samplers import (
    HMC,
    MALA,
    ParallelTempering,
    effective_sample_size,
    integrated_autocorrelation_time,
    run,
    split_rhat,
)

__all__ = [
    "RHAT_LIMIT",
    "LJ13_GROUND_STATE",
    "Settings",
    "SETTINGS",
    "default_cache_dir",
    "make_energy",
    "subspace_basis",
    "observables",
    "summarize",
    "diagnostics",
    "known_facts",
    "run_reference",
    "save_reference",
    "load_reference",
]

RHAT_LIMIT = 1.01  # largest split rank-normalised R-hat accepted as converged (Vehtari et al.)
# Lennard-Jones energy of the icosahedral LJ13 global minimum (Cambridge Cluster Database), in
# epsilon; every configuration's pair energy is above it.
LJ13_GROUND_STATE = -44.326801
FORMAT_VERSION = 1
CHUNK_DRAWS = 20  # draws per call of run: the time budget is checked between calls


@dataclass(frozen=True)
class Settings:
    """Sampler settings of one system.

    Attributes:
        temperatures: the parallel-tempering ladder (starts at 1).
        chains: independent chains (each carries one replica per temperature).
        step_size: initial MALA step size (adapted per replica during warm-up).
        warmup: adaptation steps (nothing kept).
        thin: the diagnostics' observables are recorded every ``thin`` production steps.
        max_draws: configurations kept per chain: between ``max_draws`` and twice as many.
        start_spacing: lattice spacing of the starting configurations.
        leapfrog: local moves: MALA when 0, else HMC with this many leapfrog steps.
        burn_in: fraction of the production discarded before the diagnostics and the samples
            (the warm-up adapts step sizes; the chains may still be relaxing from their start).
    """

    temperatures: tuple[float, ...]
    chains: int
    step_size: float
    warmup: int
    thin: int
    max_draws: int
    start_spacing: float
    leapfrog: int = 0
    burn_in: float = 0.2


SETTINGS = {
    # The DW4 barrier is b^2 / 4c = 4.4 kT per pair: the hot replicas cross it.
    "dw4": Settings((1.0, 1.5, 2.25, 3.4, 5.0), 64, 0.05, 1000, 10, 400, 4.0),
    # MALA mixes LJ13 slowly (energy IAT ~600 steps); HMC with 5 leapfrog steps gave about
    # 3x the ESS per second in a side-by-side run.
    "lj13": Settings((1.0, 1.3, 1.7, 2.2), 64, 0.005, 500, 10, 400, 1.1, leapfrog=5),
}


def default_cache_dir() -> Path:
    """``$NORMFLOWS_SCI_CACHE/particles``, else ``~/.cache/normflows_sci/particles``."""
    root = os.environ.get("NORMFLOWS_SCI_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "normflows_sci"
    return base / "particles"


def make_energy(system: str) -> ParticleEnergy:
    """The energy of ``system`` (``"dw4"`` or ``"lj13"``) with the papers' parameters."""
    if system == "dw4":
        return DW4()
    if system == "lj13":
        return LJ13()
    raise ValueError(f"system must be 'dw4' or 'lj13', got {system!r}")


def subspace_basis(n_particles: int, spatial_dim: int, dtype=torch.float64) -> Tensor:
    """Orthonormal basis ``(n d, (n - 1) d)`` of the zero-centre-of-mass subspace (flat layout).

    Per spatial axis, the ``n - 1`` columns of a QR factor orthogonal to the all-ones vector;
    ``x = z @ B.T`` maps subspace coordinates to configurations and ``z = x @ B`` back.
    """
    steps = torch.cat([torch.eye(n_particles - 1), -torch.ones(1, n_particles - 1)]).double()
    per_axis = torch.linalg.qr(steps).Q.contiguous()  # (n, n - 1): orthonormal, zero-sum columns
    return torch.kron(per_axis, torch.eye(spatial_dim, dtype=torch.float64)).to(dtype)


def _start(energy: ParticleEnergy, chains: int, spacing: float, generator) -> Tensor:
    """Chains start on a cubic lattice (no overlapping particles), jittered, centred, flat."""
    n, d = energy.n_particles, energy.spatial_dim
    side = math.ceil(n ** (1.0 / d))
    grid = torch.cartesian_prod(*[torch.arange(side, dtype=torch.float64)] * d).reshape(-1, d)
    lattice = spacing * grid[:n]
    jitter = 0.05 * spacing * torch.randn(chains, n, d, generator=generator, dtype=torch.float64)
    return energy.remove_center_of_mass((lattice + jitter).flatten(1))


def short_threshold(energy: ParticleEnergy) -> float:
    """Distance below which a pair counts as short: DW4's barrier ``d0``, LJ13's ``1.5 r_min``."""
    return energy.d0 if isinstance(energy, DW4) else 1.5 * energy.r_min


def observables(energy: ParticleEnergy, x: Tensor) -> tuple[Tensor, list[str]]:
    """Energy, short-pair fraction and three pair distances of ``x: (..., n d)``: ``(..., 5)``."""
    distances = energy.pairwise_distances(x)
    n = energy.n_particles
    pairs = {"d(0,1)": 0, "d(0,2)": 1, "d(1,2)": n - 1}  # torch.triu_indices order
    columns = [
        energy.energy(x.flatten(0, -2)).reshape(x.shape[:-1]),
        (distances < short_threshold(energy)).to(x.dtype).mean(-1),
        *[distances[..., index] for index in pairs.values()],
    ]
    return torch.stack(columns, -1), ["energy", "short-pair fraction", *pairs]


def summarize(values: Tensor, names: list[str], thin: int) -> dict:
    """R-hat (split, rank-normalised), pooled IAT (in steps) and ESS of observables
    ``values: (draws, chains, k)`` recorded every ``thin`` steps (energy first)."""
    values = values.double()
    rhat = split_rhat(values, rank_normalized=True)
    iat = integrated_autocorrelation_time(values, pooled=True) * thin
    ess = effective_sample_size(values)
    return {
        "names": names,
        "rhat": rhat.tolist(),
        "iat_steps": iat.tolist(),
        "ess": ess.tolist(),
        "max_rhat": float(rhat.nan_to_num(nan=math.inf).max()),
        "mean_energy": float(values[..., 0].mean()),
        "mean_energy_stderr": float(values[..., 0].std() / ess[0].clamp_min(1).sqrt()),
    }


def diagnostics(energy: ParticleEnergy, samples: Tensor, thin: int) -> dict:
    """:func:`summarize` of the :func:`observables` of ``samples: (draws, chains, n d)``."""
    return summarize(*observables(energy, samples.double()), thin)


def _histogram_peaks(distances: np.ndarray, split: float, bins: int = 120) -> dict:
    density, edges = np.histogram(distances, bins=bins, density=True)
    centres = 0.5 * (edges[1:] + edges[:-1])
    low, high = centres < split, centres >= split
    peak_low = centres[low][density[low].argmax()] if low.any() else math.nan
    peak_high = centres[high][density[high].argmax()] if high.any() else math.nan
    near = np.abs(centres - split) <= 2 * (edges[1] - edges[0])
    dip = density[near].mean() / min(density[low].max(), density[high].max())
    return {"peak_low": float(peak_low), "peak_high": float(peak_high), "dip_ratio": float(dip)}


def known_facts(energy: ParticleEnergy, samples: Tensor) -> list[tuple[str, str, str]]:
    """``(quantity, this run, known value and source)`` rows for the printed comparison."""
    x = samples.reshape(-1, samples.shape[-1]).double()
    distances = energy.pairwise_distances(x).flatten().numpy()
    if isinstance(energy, DW4):
        offset = math.sqrt(-energy.b / (2 * energy.c))
        peaks = _histogram_peaks(distances, energy.d0)
        bimodal = peaks["dip_ratio"] < 0.5
        return [
            (
                "pair-distance peaks",
                f"{peaks['peak_low']:.2f} and {peaks['peak_high']:.2f}",
                f"wells of the pair potential at {energy.d0 - offset:.2f} and "
                f"{energy.d0 + offset:.2f} (d0 -+ sqrt(-b/2c)); the 4-particle geometry shifts them",
            ),
            (
                "density at the barrier / lower peak",
                f"{peaks['dip_ratio']:.3f} ({'bimodal' if bimodal else 'NOT bimodal'})",
                "bimodal pair-distance histogram (Köhler et al. 2020, Fig. 4; FAB, Midgley et al. 2023)",
            ),
        ]
    lennard_jones = energy.lennard_jones_energy(x)
    total = energy.energy(x)
    return [
        (
            "mean energy (tau = 1)",
            f"{float(total.mean()):.3f}",
            "n/a: no mean energy is stated in the EFM (Klein et al. 2023) or E-ACF/FAB "
            "(Midgley et al. 2023) papers (their LJ13: epsilon = r_min = tau = 1, harmonic 0.5 |x - x_com|^2)",
        ),
        (
            "lowest Lennard-Jones energy sampled",
            f"{float(lennard_jones.min()):.3f}",
            f">= {LJ13_GROUND_STATE} (icosahedral ground state, Cambridge Cluster Database)",
        ),
    ]


def _kernel(energy: ParticleEnergy, settings: Settings) -> tuple[ParallelTempering, Tensor]:
    basis = subspace_basis(energy.n_particles, energy.spatial_dim)

    def log_prob(z: Tensor) -> Tensor:
        return -energy.energy(z @ basis.T.to(z))

    local = MALA if not settings.leapfrog else partial(HMC, num_leapfrog=settings.leapfrog)
    kernel = ParallelTempering(
        log_prob, settings.temperatures, local=local, step_size=settings.step_size
    )
    return kernel, basis


class _Thinned:
    """Configurations kept at an even spacing that doubles whenever ``2 * max_draws`` are held,
    so memory stays bounded however long the run (the spacing is in recorded draws)."""

    def __init__(self, max_draws: int):
        self.max_draws, self.stride, self.seen, self.kept = max_draws, 1, 0, []

    def add(self, draws: Tensor) -> None:
        for draw in draws:
            if self.seen % self.stride == 0:
                self.kept.append(draw)
            self.seen += 1
            if len(self.kept) >= 2 * self.max_draws:
                self.kept, self.stride = self.kept[::2], 2 * self.stride


def _production(kernel, state, generator, energy, basis, settings: Settings, steps, deadline):
    """Production in chunks of ``CHUNK_DRAWS`` recorded draws until ``steps`` are done or the
    ``deadline`` passes (after at least two chunks). Observables are recorded every
    ``settings.thin`` steps; configurations are kept by :class:`_Thinned`."""
    values, local, swap, done = [], [], [], 0
    configurations = _Thinned(settings.max_draws)
    chunk = settings.thin * CHUNK_DRAWS
    while done < steps and (time.perf_counter() < deadline or done < 2 * chunk):
        length = min(chunk, steps - done)
        trace = run(kernel, state, length, thin=settings.thin, generator=generator)
        state, x = trace.state, trace.samples @ basis.T
        values.append(observables(energy, x)[0])
        configurations.add(x.float())
        local.append(float(trace.acceptance["local"].mean()) * length)
        swap.append(float(trace.acceptance["swap"].mean()) * length)
        done += length
    samples = torch.stack(configurations.kept)
    return (
        samples,
        torch.cat(values),
        configurations.stride,
        sum(local) / done,
        sum(swap) / done,
        done,
    )


def run_reference(
    system: str,
    *,
    minutes: float | None = None,
    steps: int | None = None,
    settings: Settings | None = None,
    seed: int = 0,
) -> dict:
    """Sample ``system`` by parallel tempering for ``minutes`` (wall time) or ``steps`` production steps.

    The diagnostics use observables recorded every ``settings.thin`` steps; between
    ``settings.max_draws`` and twice as many configurations per chain are kept, evenly spaced
    (every ``sample_thin`` steps); the first ``settings.burn_in`` of both is discarded.

    Returns a dict: ``samples`` ``(draws, chains, n d)`` float32 with zero centre of mass, the
    :func:`summarize` diagnostics, ``local_acceptance``, ``swap_acceptance``, ``converged``, the
    settings, ``sample_thin``, ``seconds`` and ``steps``. Warns (``RuntimeWarning``) when the
    largest R-hat exceeds ``RHAT_LIMIT``: the samples then do not represent the target.
    """
    if (minutes is None) == (steps is None):
        raise ValueError("give exactly one of minutes (wall time) and steps (production steps)")
    energy = make_energy(system)
    settings = settings or SETTINGS[system]
    kernel, basis = _kernel(energy, settings)
    generator = torch.Generator().manual_seed(seed)
    start = _start(energy, settings.chains, settings.start_spacing, generator) @ basis
    clock = time.perf_counter()
    trace = run(kernel, start, 0, num_warmup=settings.warmup, generator=generator)
    deadline = math.inf if minutes is None else clock + 60 * minutes
    # Whole thinning intervals, and at least two chunks: R-hat and the IAT need the draws.
    if steps is not None:
        steps = max(
            settings.thin * math.ceil(steps / settings.thin), 2 * settings.thin * CHUNK_DRAWS
        )
    else:
        steps = math.inf
    samples, values, stride, local, swap, done = _production(
        kernel, trace.state, generator, energy, basis, settings, steps, deadline
    )
    names = observables(energy, samples[:1, :1])[1]
    values = values[int(settings.burn_in * len(values)) :]
    samples = samples[int(settings.burn_in * len(samples)) :]
    result = dict(
        system=system,
        samples=samples,
        diagnostics=summarize(values, names, settings.thin),
        local_acceptance=local,
        swap_acceptance=swap,
        settings=asdict(settings),
        sample_thin=stride * settings.thin,
        seconds=time.perf_counter() - clock,
        steps=done,
        seed=seed,
    )
    result["converged"] = result["diagnostics"]["max_rhat"] <= RHAT_LIMIT
    if not result["converged"]:
        warnings.warn(
            f"{system} reference not converged: largest R-hat {result['diagnostics']['max_rhat']:.3f}"
            f" > {RHAT_LIMIT} after {done} steps; its samples do not represent the target yet: "
            "run longer (--minutes)",
            RuntimeWarning,
            stacklevel=2,
        )
    return result


def save_reference(result: dict, path: str | os.PathLike) -> Path:
    """Write ``result`` atomically to ``path`` (npz; metadata as a JSON string)."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in result.items() if k != "samples"}
    meta["format_version"] = FORMAT_VERSION
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(handle)
    np.savez_compressed(tmp, samples=result["samples"].numpy(), meta=json.dumps(meta))
    os.replace(tmp, path)
    return path


def load_reference(path: str | os.PathLike, system: str | None = None) -> dict:
    """Read a file written by :func:`save_reference`; ``ValueError`` naming the file and field
    when it is not one (or is of another system or format version)."""
    import json

    path = Path(path)
    try:
        with np.load(path) as stored:
            samples, meta = stored["samples"], json.loads(str(stored["meta"]))
    except (OSError, KeyError, ValueError) as error:
        raise ValueError(f"{path}: not a particle reference file ({error})") from error
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version is {meta.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    if system is not None and meta.get("system") != system:
        raise ValueError(f"{path}: system is {meta.get('system')!r}, expected {system!r}")
    if samples.ndim != 3 or samples.shape[-1] != make_energy(meta["system"]).dim:
        raise ValueError(f"{path}: samples must be (draws, chains, n * d), got {samples.shape}")
    return {**meta, "samples": torch.from_numpy(samples)}


def report(result: dict) -> str:
    """The printed summary: settings, acceptance, the diagnostics table and the known facts."""
    energy = make_energy(result["system"])
    diag, settings = result["diagnostics"], result["settings"]
    samples = result["samples"]
    leapfrog = settings.get("leapfrog", 0)
    local = f"HMC, {leapfrog} leapfrog steps" if leapfrog else "MALA"
    lines = [
        f"{result['system']}: {samples.shape[0]} draws x {samples.shape[1]} chains kept "
        f"(every {result['sample_thin']} steps; observables every {settings['thin']}) "
        f"from {result['steps']} production steps after "
        f"{settings['warmup']} warm-up, in {result['seconds']:.0f} s; "
        f"ladder {settings['temperatures']}",
        f"acceptance: local ({local}) {result['local_acceptance']:.3f}, "
        f"swap {result['swap_acceptance']:.3f}",
        "\n| observable | R-hat (split, rank) | IAT (steps) | ESS |\n|---|---|---|---|",
    ]
    thin = settings["thin"]
    for name, rhat, iat, ess in zip(diag["names"], diag["rhat"], diag["iat_steps"], diag["ess"]):
        # Below about 1.5 kept draws the IAT is not resolved: only "at most the thinning" is known.
        shown = f"<= {thin}" if iat < 1.5 * thin else f"{iat:.0f}"
        lines.append(f"| {name} | {rhat:.3f} | {shown} | {ess:.0f} |")
    verdict = "converged" if result["converged"] else "NOT CONVERGED (run longer)"
    lines.append(f"\nlargest R-hat {diag['max_rhat']:.3f} (limit {RHAT_LIMIT}): {verdict}")
    lines.append(
        f"mean energy {diag['mean_energy']:.3f} +- {diag['mean_energy_stderr']:.3f} (ESS-based)"
    )
    lines.append("\n| quantity | this run | known |\n|---|---|---|")
    for name, value, known in known_facts(energy, samples):
        lines.append(f"| {name} | {value} | {known} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=sorted(SETTINGS), required=True)
    parser.add_argument("--minutes", type=float, default=5.0, help="sampling wall time")
    parser.add_argument("--out", default=None, help=f"cache directory ({default_cache_dir()})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="resample even if cached")
    args = parser.parse_args()
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    torch.set_num_threads(args.threads)
    path = Path(args.out or default_cache_dir()) / f"{args.system}_reference.npz"
    if path.exists() and not args.force:
        result = load_reference(path, args.system)
        print(f"cached: {path} (--force to resample)")
    else:
        result = run_reference(args.system, minutes=args.minutes, seed=args.seed)
        save_reference(result, path)
        print(f"saved: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(report(result))


if __name__ == "__main__":
    main()
