"""Tabular density estimation, end to end, on real data.

Run:  python tutorials/tabular_density.py [--max-time 120] [--out DIR]

1. Load the bundled NOAA Atlantic storm fixes (latitude, longitude, wind, pressure, day of year).
2. Fit a DensityEstimator, declaring what we know about the columns: latitude is bounded, wind
   and pressure are positive, and wind, pressure and day of year are integer-valued (the
   estimator detects that winds come in 5-knot steps).
3. Compare held-out log-likelihood with a Gaussian and a Gaussian-mixture baseline. The flow's
   score is a log-probability for the integer columns and a log-density for the rest, so the
   baselines are scored the same way, on the same cells: their density integrated over each
   cell of the lattice the estimator detected (``[v, v+5)`` for winds in 5-knot steps; unit
   cells would cost the baselines log 5 = 1.6 nats per row for nothing).
4. Ask scientific questions of the model: the probability of a fix with winds of 100 knots or more
   given it is at 25-30 N, and conditional samples of pressure given wind.
5. Save the model, reload it, and plot training curves, a corner plot and 1-D marginals.

The model and the figures go to ``--out DIR``, by default a new temporary folder whose path is
printed. Training stops after ``--max-time`` seconds (a progress bar shows the epochs); with the
scoring, sampling and plotting around it, allow up to 10 minutes on two CPU cores shared with
other work. ``--max-time 15`` gives a quick, rougher run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from normflows_sci import DensityEstimator
from normflows_sci.baselines import baseline_scores, describe_cells, lattice_cells
from normflows_sci.datasets import load_dataset
from normflows_sci.estimator import held_out_split


def output_folder(out: str | Path | None) -> Path:
    """``out`` (created if missing), or a new temporary folder when ``out`` is None."""
    if out is None:
        return Path(tempfile.mkdtemp(prefix="normflows_sci_tabular_density_"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def main(max_time: float = 120.0, out: str | Path | None = None, seed: int = 0) -> dict:
    """Fit, compare, query, save and plot; returns the held-out scores and the probabilities.

    Args:
        max_time: training budget in seconds.
        out: folder for the model and the figures (None: a new temporary folder).
        seed: seeds the split, training and sampling.

    Returns:
        ``{"flow", "gaussian", "gaussian mixture"}`` held-out log-likelihoods (nats per row),
        ``model_p`` and ``data_p`` (the conditional probability from samples and from held-out
        data) and ``out``, the folder written.
    """
    out = output_folder(out)
    print(f"output folder: {out}")
    dataset = load_dataset("atlantic_storms")
    X, columns = dataset.data, dataset.columns
    # The fixes are in storm order, six hours apart: each row is a near-copy of the next, so the
    # test rows are whole blocks of consecutive rows (a single held-out fix would have its
    # neighbours in training, and the test would reward memorising).
    train_rows, test_rows, block = held_out_split(X, 0.2, seed)
    train, test = X[train_rows], X[test_rows]
    print(dataset.description.split(": ")[0])
    print(
        f"{len(train)} training rows, {len(test)} test rows in blocks of {block}, columns {columns}"
    )

    print(f"fitting the flow (at most {max_time:g} s of training)", flush=True)
    estimator = DensityEstimator(
        bounds=dataset.bounds,
        discrete=dataset.discrete,
        max_time=max_time,
        random_state=seed,
        verbose=True,
    ).fit(train, columns=columns)
    steps = np.asarray(estimator.spec_.step)
    print("detected lattice spacing per column:", dict(zip(columns, steps.tolist())))

    print("fitting the baselines and scoring the held-out rows", flush=True)
    discrete, cells = lattice_cells(estimator, columns)  # the flow's cells, for every model
    print("every model scores", describe_cells(columns, discrete, cells))
    (_, gaussian, _), (_, mixture, _) = baseline_scores(
        train, test, discrete=discrete, step=cells, random_state=seed
    )
    scores = {"flow": estimator.score(test), "gaussian": gaussian, "gaussian mixture": mixture}
    for name, value in scores.items():
        print(f"held-out log-likelihood  {name:18s} {value:9.3f} nats/row")

    # P(wind >= 100 kt | latitude in [25, 30]) from model samples vs the held-out data.
    print("drawing 50000 samples", flush=True)
    samples = estimator.sample(50000, random_state=seed)
    band = (samples[:, 0] >= 25) & (samples[:, 0] <= 30)
    band_test = (test[:, 0] >= 25) & (test[:, 0] <= 30)
    model_p = float((samples[band, 2] >= 100).mean())
    data_p = float((test[band_test, 2] >= 100).mean())
    print(f"P(wind >= 100 kt | 25-30 N): model {model_p:.3f}, held-out data {data_p:.3f}")

    path = estimator.save(out / "storms.nfs")
    reloaded = DensityEstimator.load(path)
    assert np.allclose(reloaded.score_samples(test[:10]), estimator.score_samples(test[:10]))
    print(f"saved and reloaded {path}")

    from normflows_sci import plotting

    print("plotting", flush=True)
    plotting.plot_training_curves(estimator.history_, out / "training.png")
    plotting.plot_corner(test, samples[: len(test)], out / "corner.png", columns=columns)
    plotting.plot_marginals(test, out / "marginals.png", samples=samples, columns=columns)
    print(f"model and plots in {out}")
    return {**scores, "model_p": model_p, "data_p": data_p, "out": out}


def _cli(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-time", type=float, default=120.0, help="training seconds")
    parser.add_argument(
        "--out", default=None, help="folder for the model and figures (default: a new temp folder)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return main(args.max_time, args.out, args.seed)


if __name__ == "__main__":
    _cli()
