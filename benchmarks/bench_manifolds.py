"""Manifold flows trained by reverse KL on multimodal targets on S^2, T^2 and SO(3).

Run from the repository root::

    python benchmarks/bench_manifolds.py            # 3000 steps per target
    python benchmarks/bench_manifolds.py --quick    # 400 steps per target (a few minutes on CPU)

For each manifold the target is a normalised multimodal density (so the KL is exact, not up to a
constant):

* ``S^2``: a mixture of 4 von Mises-Fisher densities (kappa = 15) at random directions, the
  setting of Rezende et al. (2020), who report KL 0.05 nats / ESS 90% for their Moebius-spline flow.
* ``T^2``: a mixture of 3 products of von Mises densities (kappa = 4 and 8).
* ``SO(3)``: a mixture of 3 antipodally symmetric "Bingham" modes ``exp(kappa <q, mu_k>^2)``
  (kappa = 12), normalised by 1-D quadrature (``<q, mu>`` has density ``(2/pi) sqrt(1 - t^2)``
  under the uniform distribution on ``S^3``).

The flow (``SphereFlow``, ``TorusFlow``, ``SO3Flow``) is trained with
``normflows_sci.training.fit_boltzmann`` (reverse KL, Adam, cosine schedule); then
``KL(q || p) = E_q[log q - log p]`` and the Kish ESS of ``p / q`` on 20 000 fresh samples are
reported, with the Monte Carlo standard error of the KL. Timing: one reverse-KL training step
(sample_and_log_prob + backward, batch 256) of the manifold flow vs a Euclidean coupling NSF of the
same size (same features, layers, bins and hidden widths) on a standard normal target, and the
ratio.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import OtherLoad, version

from normflows_sci.flows import NSF
from normflows_sci.flows.manifold import SO3Flow, SphereFlow, TorusFlow
from normflows_sci.manifolds import SO3, Sphere, Torus, VonMises, VonMisesFisher
from normflows_sci.training import fit_boltzmann


class VMFMixture:
    """Equal-weight mixture of von Mises-Fisher densities on S^2 (normalised)."""

    def __init__(self, means: torch.Tensor, kappa: float):
        self.parts = [VonMisesFisher(2, mean_direction=m, concentration=kappa) for m in means]

    def log_prob(self, x):
        logs = torch.stack([p.to(x.dtype).log_prob(x) for p in self.parts], -1)
        return torch.logsumexp(logs, -1) - math.log(len(self.parts))


class VonMisesMixture:
    """Equal-weight mixture of products of von Mises densities on T^2 (normalised)."""

    def __init__(self, locs, kappas):
        self.parts = [VonMises(2, loc=loc, concentration=k) for loc, k in zip(locs, kappas)]

    def log_prob(self, x):
        logs = torch.stack([p.to(x.dtype).log_prob(x) for p in self.parts], -1)
        return torch.logsumexp(logs, -1) - math.log(len(self.parts))


class BinghamMixture:
    """Mixture of ``exp(kappa <q, mu_k>^2) / Z`` on SO(3) (unit quaternions, volume pi^2)."""

    def __init__(self, means: torch.Tensor, kappa: float):
        self.means = means / means.norm(dim=-1, keepdim=True)
        self.kappa = kappa
        t = np.linspace(-1.0, 1.0, 200_001)
        integrand = np.exp(kappa * (t**2 - 1.0)) * (2.0 / math.pi) * np.sqrt(1.0 - t**2)
        # E_uniform[exp(kappa t^2)] by the trapezoidal rule, times vol(SO(3)) = pi^2.
        mean = float((0.5 * (integrand[1:] + integrand[:-1]) * np.diff(t)).sum())
        self.log_z = math.log(mean) + kappa + 2.0 * math.log(math.pi)

    def log_prob(self, q):
        overlap = q @ self.means.to(q.dtype).T
        logs = self.kappa * overlap.square() - self.log_z
        return torch.logsumexp(logs, -1) - math.log(len(self.means))


def _setups(seed: int):
    generator = torch.Generator().manual_seed(seed)
    sphere_means = Sphere(2).sample_uniform(4, generator=generator)
    so3_means = SO3().sample_uniform(3, generator=generator)
    return {
        "S^2": (
            Sphere(2),
            VMFMixture(sphere_means, 15.0),
            lambda: SphereFlow(2, transforms=4, bins=8, hidden_features=(64, 64)),
        ),
        "T^2": (
            Torus(2),
            VonMisesMixture([[0.0, 1.5], [2.0, -1.0], [-2.0, -2.5]], [4.0, 8.0, 6.0]),
            lambda: TorusFlow(2, transforms=4, bins=8, hidden_features=(64, 64)),
        ),
        "SO(3)": (
            SO3(),
            BinghamMixture(so3_means, 12.0),
            lambda: SO3Flow(transforms=4, bins=8, hidden_features=(64, 64)),
        ),
    }


@torch.no_grad()
def evaluate(flow, target, num_samples: int, seed: int) -> dict:
    x, log_q = flow.sample_and_log_prob(num_samples, generator=torch.Generator().manual_seed(seed))
    log_p = target.log_prob(x)
    diff = log_q - log_p
    log_w = -diff
    ess = float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)))
    log_z = float(torch.logsumexp(log_w, 0) - math.log(num_samples))
    return dict(
        kl=float(diff.mean()),
        kl_stderr=float(diff.std() / math.sqrt(num_samples)),
        ess_fraction=ess / num_samples,
        log_z=log_z,
    )


def time_step(flow, target, repeats: int, batch: int = 256) -> float:
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)

    def step():
        x, log_q = flow.sample_and_log_prob(batch, generator=generator)
        loss = (log_q - target(x)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="400 training steps per target")
    parser.add_argument("--steps", type=int, default=None, help="training steps per target")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--eval-samples", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    steps = args.steps or (400 if args.quick else 3000)
    torch.manual_seed(args.seed)
    print(f"torch {version('torch')}, normflows_sci, {torch.get_num_threads()} threads")
    print(f"reverse KL, {steps} steps, batch {args.batch_size}, Adam lr 3e-3 cosine\n")
    rows = {}
    for name, (manifold, target, build) in _setups(args.seed).items():
        flow = build()
        load = OtherLoad()
        start = time.perf_counter()
        history = fit_boltzmann(
            flow,
            target,
            steps=steps,
            batch_size=args.batch_size,
            learning_rate=3e-3,
            seed=args.seed,
            progress=False,
        )
        train_time = time.perf_counter() - start
        result = evaluate(flow, target, args.eval_samples, args.seed + 1)
        euclid = NSF(
            manifold.features, transforms=4, bins=8, hidden_features=(64, 64), coupling=True
        )

        def normal(x):
            return -0.5 * x.square().sum(-1)

        repeats = 10 if args.quick else 50
        t_manifold = time_step(flow, target.log_prob, repeats)
        t_euclid = time_step(euclid, normal, repeats)
        busy = load.cores()
        result.update(
            train_time=train_time,
            final_train_ess=history["ess_fraction"][-1],
            step_ms=1e3 * t_manifold,
            euclid_step_ms=1e3 * t_euclid,
            ratio=t_manifold / t_euclid,
            other_load=busy,
        )
        rows[name] = result
    print(
        f"{'manifold':8s} {'KL (nats)':>16s} {'ESS':>7s} {'log Z':>8s} {'train s':>8s} "
        f"{'step ms':>8s} {'NSF ms':>8s} {'ratio':>6s}"
    )
    for name, r in rows.items():
        print(
            f"{name:8s} {r['kl']:9.4f} ± {r['kl_stderr']:.4f} {100 * r['ess_fraction']:6.1f}% "
            f"{r['log_z']:8.4f} {r['train_time']:8.1f} {r['step_ms']:8.2f} "
            f"{r['euclid_step_ms']:8.2f} {r['ratio']:6.2f}"
        )
    print(
        "\nReference (Rezende et al. 2020, S^2 mixture of vMFs): KL 0.05 nats, ESS 90%. "
        "log Z should be 0 (normalised targets)."
    )
    loads = [r["other_load"] for r in rows.values() if r["other_load"] is not None]
    if loads:
        print(f"other processes used up to {max(loads):.2f} CPU cores during the runs")
    return rows


if __name__ == "__main__":
    main()
