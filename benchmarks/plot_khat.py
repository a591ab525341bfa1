"""Figure of the importance-weights guide: Pareto k-hat against the number of samples.

Target N(0, 1); proposals N(0, s^2) with s = 1.5 (wider: the weights ``w ~ exp(x^2 (1/s^2 - 1) / 2)``
are bounded, and ``P(w > w_max - t) ~ sqrt(t)`` is a GPD tail with ``k = -2``), s = 0.6 and s = 0.4
(too narrow: the weights have a Pareto tail with shape ``k = 1 - s^2``, 0.64 and 0.84). For each sample size the median k-hat over ``--seeds`` draws is
drawn with its 10-90% band, next to the threshold ``min(1 - 1/log10(S), 0.7)``.

Run from the repository root (about 20 s on one core)::

    python benchmarks/plot_khat.py                      # writes the guide's figure
    python benchmarks/plot_khat.py --out /tmp/khat.png --seeds 5
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from normflows_sci.samplers import khat_threshold, pareto_khat

PROPOSALS = {  # scale s of the N(0, s^2) proposal -> label
    1.5: "proposal N(0, 1.5²): wider, k = -2 (bounded weights)",
    0.6: "proposal N(0, 0.6²): too narrow, k = 0.64",
    0.4: "proposal N(0, 0.4²): too narrow, k = 0.84",
}


def khats(scale: float, sizes: list[int], seeds: int) -> torch.Tensor:
    """``(len(sizes), seeds)`` k-hat of the weights of ``N(0, 1)`` against ``N(0, scale^2)``."""
    out = torch.empty(len(sizes), seeds, dtype=torch.float64)
    for j in range(seeds):
        generator = torch.Generator().manual_seed(j)
        for i, size in enumerate(sizes):
            x = scale * torch.randn(size, generator=generator, dtype=torch.float64)
            log_weights = -0.5 * x**2 + 0.5 * (x / scale) ** 2
            out[i, j] = pareto_khat(log_weights)[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/guides/_images/khat_vs_samples.png")
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = [round(10**e) for e in torch.linspace(2, 5, 13).tolist()]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for (scale, label), colour in zip(PROPOSALS.items(), ("C2", "C1", "C3")):
        k = khats(scale, sizes, args.seeds)
        low, mid, high = (k.quantile(q, dim=1) for q in (0.1, 0.5, 0.9))
        ax.fill_between(sizes, low, high, color=colour, alpha=0.2, linewidth=0)
        ax.plot(sizes, mid, "o-", color=colour, markersize=3, label=label)
    dense = torch.logspace(2, 5, 100).tolist()
    ax.plot(dense, [khat_threshold(round(s)) for s in dense], "k--", label="threshold")
    ax.set(xscale="log", xlabel="number of samples S", ylabel="Pareto k-hat", ylim=(-2.3, 1.2))
    ax.set_title("Target N(0, 1): k-hat of the importance weights", fontsize=10)
    ax.legend(fontsize=7, loc="center right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}; median k-hat at S = {sizes[-1]}:")
    for scale in PROPOSALS:
        median = float(khats(scale, sizes[-1:], 3).median())
        print(f"  s = {scale}: {median:.2f} (asymptotic {1 - scale**2 if scale < 1 else -2.0:.2f})")


if __name__ == "__main__":
    main()
