"""Tutorial: a rigid-body Boltzmann generator — three point dipoles with positions and orientations.

Each molecule is a rigid point dipole: a position ``r_i in R^3`` and an orientation ``q_i`` in SO(3)
(unit quaternion; the dipole points along ``d_i = R(q_i) e_z``). The dimensionless energy
(kT = 1) is::

    u = sum_i k |r_i|^2 / 2                                         (harmonic trap)
      + sum_{i<j} eps exp(-r_ij^2 / (2 sigma^2))                    (soft-core repulsion)
      + sum_{i<j} lam [d_i.d_j - 3 (d_i.n_ij)(d_j.n_ij)] / s_ij^3   (dipole-dipole)
      - sum_i E . d_i                                               (external field along z)

with ``|r_i|`` the distance of body ``i`` from the trap centre, ``r_ij`` the pair distance,
``n_ij`` the unit vector from ``r_i`` to ``r_j`` and the softened distance
``s_ij = sqrt(r_ij^2 + a^2)`` (smooth, bounded energies: reverse-KL training never meets infinite
energies), so the orientations matter: dipoles prefer head-to-tail chains along their axis and the
field aligns them. The configuration lives on ``R^9 x SO(3)^3``; a ``ProductFlow`` (autoregressive
splines on the positions, rotation / odd-radial / antipodal-twist blocks on each quaternion, every
factor conditioned on all the others) is trained by reverse KL with
``normflows_sci.training.fit_boltzmann`` (no data), then reweighted with
``normflows_sci.samplers.importance_sample``: effective sample size, reweighted observables with
standard errors, and the free energy ``log Z`` estimate.

Run::

    python tutorials/rigid_bodies.py                # 600 steps, at most 90 s of training
    python tutorials/rigid_bodies.py --steps 150 --samples 5000 --max-time 30    # smoke run

A progress bar follows the training, which stops after ``--steps`` steps or ``--max-time``
seconds, whichever comes first; allow up to 10 minutes on two CPU cores shared with other work.
Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from normflows_sci.energies import Energy
from normflows_sci.flows.manifold import ProductFlow
from normflows_sci.manifolds import SO3, Euclidean, Product, quaternion_to_matrix
from normflows_sci.samplers import importance_sample
from normflows_sci.training import fit_boltzmann


class RigidDipoles(Energy):
    """``num_bodies`` point dipoles in a harmonic trap, on ``R^(3B) x SO(3)^B``.

    Inputs ``(batch, 3 B + 4 B)``: all positions first, then one unit quaternion per body.
    Quaternions enter through rotation matrices, so ``u(q) = u(-q)``.
    """

    def __init__(
        self,
        num_bodies: int = 3,
        *,
        trap: float = 1.0,
        epsilon: float = 10.0,
        sigma: float = 0.6,
        dipole: float = 2.0,
        field: float = 1.0,
        softening: float = 0.8,
    ):
        super().__init__(7 * num_bodies)
        self.num_bodies = num_bodies
        self.trap, self.epsilon, self.sigma = trap, epsilon, sigma
        self.dipole, self.field, self.softening = dipole, field, softening
        self.manifold = Product(Euclidean(3 * num_bodies), *[SO3() for _ in range(num_bodies)])
        self.pairs = list(itertools.combinations(range(num_bodies), 2))

    def split(self, x):
        """Positions ``(batch, B, 3)`` and dipole directions ``(batch, B, 3)``."""
        b = self.num_bodies
        positions = x[:, : 3 * b].reshape(-1, b, 3)
        quaternions = x[:, 3 * b :].reshape(-1, b, 4)
        directions = quaternion_to_matrix(quaternions)[..., :, 2]
        return positions, directions

    def _energy(self, x):
        positions, directions = self.split(x)
        u = 0.5 * self.trap * positions.square().sum((-1, -2))
        u = u - self.field * directions[..., 2].sum(-1)
        for i, j in self.pairs:
            delta = positions[:, j] - positions[:, i]
            r = delta.norm(dim=-1).clamp_min(1e-6)
            n = delta / r[:, None]
            di, dj = directions[:, i], directions[:, j]
            angular = (di * dj).sum(-1) - 3 * (di * n).sum(-1) * (dj * n).sum(-1)
            soft = (r.square() + self.softening**2).sqrt()
            repulsion = self.epsilon * torch.exp(-0.5 * (r / self.sigma).square())
            u = u + repulsion + self.dipole * angular / soft**3
        return u


def observables(energy: RigidDipoles, x: torch.Tensor) -> torch.Tensor:
    """``(N, 3)``: energy, mean alignment with the field ``<d_z>``, mean pair distance."""
    positions, directions = energy.split(x)
    distances = torch.stack(
        [(positions[:, j] - positions[:, i]).norm(dim=-1) for i, j in energy.pairs], -1
    )
    return torch.stack([energy.energy(x), directions[..., 2].mean(-1), distances.mean(-1)], dim=-1)


def main(
    *,
    num_bodies: int = 3,
    steps: int = 600,
    batch_size: int = 256,
    num_samples: int = 20_000,
    max_time: float | None = 90.0,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Train the rigid-body flow by reverse KL and reweight its samples.

    Training stops after ``steps`` steps or ``max_time`` seconds (None: no time limit), whichever
    comes first; ``progress`` shows a progress bar.

    Returns:
        ``history`` (from fit_boltzmann), ``ess_fraction``, ``log_z`` and ``log_z_stderr``,
        ``raw`` and ``reweighted`` observables (energy, field alignment, pair distance) with
        ``stderr``, ``on_manifold`` (largest deviation of samples), ``train_seconds``.
    """
    torch.manual_seed(seed)
    energy = RigidDipoles(num_bodies)
    flow = ProductFlow(energy.manifold, transforms=2, bins=8, hidden_features=(64, 64))
    budget = f"{steps} steps" + ("" if max_time is None else f" or {max_time:g} s")
    print(f"{num_bodies} rigid dipoles; reverse-KL training for {budget}", flush=True)
    start = time.perf_counter()
    history = fit_boltzmann(
        flow,
        energy,
        steps=steps,
        batch_size=batch_size,
        learning_rate=2e-3,
        max_time=max_time,
        seed=seed,
        progress=progress,
    )
    train_seconds = time.perf_counter() - start
    print(f"importance sampling: {num_samples} flow samples", flush=True)
    with torch.no_grad():
        result = importance_sample(
            flow, energy, num_samples, generator=torch.Generator().manual_seed(seed + 1)
        )
        values = observables(energy, result.samples)
        mean, stderr = result.expectation(values)
        raw = values.mean(0)
    names = ("energy", "field_alignment", "pair_distance")
    return dict(
        history=history,
        ess_fraction=result.ess_fraction,
        log_z=result.log_z,
        log_z_stderr=result.log_z_stderr,
        raw={k: float(v) for k, v in zip(names, raw)},
        reweighted={k: float(v) for k, v in zip(names, mean)},
        stderr={k: float(v) for k, v in zip(names, stderr)},
        on_manifold=float(energy.manifold.distance_to_manifold(result.samples).max()),
        train_seconds=train_seconds,
    )


def _cli(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bodies", type=int, default=3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--max-time", type=float, default=90.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = main(
        num_bodies=args.bodies,
        steps=args.steps,
        batch_size=args.batch_size,
        num_samples=args.samples,
        max_time=args.max_time,
        seed=args.seed,
    )
    print(f"trained {len(result['history']['step'])} log points in {result['train_seconds']:.0f} s")
    print(
        f"ESS {100 * result['ess_fraction']:.1f}%   log Z = {result['log_z']:.3f} ± "
        f"{result['log_z_stderr']:.3f}"
    )
    print(f"{'observable':16s} {'flow (raw)':>11s} {'reweighted':>11s} {'± stderr':>9s}")
    for name in result["raw"]:
        print(
            f"{name:16s} {result['raw'][name]:11.4f} {result['reweighted'][name]:11.4f} "
            f"{result['stderr'][name]:9.4f}"
        )
    return result


if __name__ == "__main__":
    _cli()
