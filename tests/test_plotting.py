"""Diagnostic figures: PNGs written atomically, clear errors for mismatched arguments."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.figure import Figure

from normflows_sci.plotting import (
    plot_corner,
    plot_marginals,
    plot_ramachandran,
    plot_training_curves,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 5000  # a real picture, not an empty canvas


def assert_only(folder, *names) -> None:
    """Nothing but the expected files: no temporary files left behind."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


@pytest.fixture
def history():
    epochs = np.arange(1, 41)
    return {
        "epoch": epochs.tolist(),
        "train_loss": (3.0 + 20 * np.exp(-epochs / 2.0)).tolist(),
        "val_loss": (3.1 + 20 * np.exp(-epochs / 2.0) + 0.002 * epochs).tolist(),
        "learning_rate": (1e-3 * 0.5 * (1 + np.cos(np.pi * epochs / 40))).tolist(),
        "time": (0.5 * epochs).tolist(),
    }


@pytest.fixture
def tables():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(3000, 3)) @ np.array([[1, 0.5, 0], [0, 1, 0.3], [0, 0, 1]])
    data[:, 2] = np.round(3 * data[:, 2])  # an integer column
    samples = rng.normal(size=(2000, 3)) @ np.array([[1, 0.4, 0], [0, 1, 0.2], [0, 0, 1]])
    return data, samples


def test_training_curves(tmp_path, history):
    path = plot_training_curves(history, tmp_path / "curves.png", title="fit")
    assert path == tmp_path / "curves.png"
    assert_png(path)
    assert_only(tmp_path, "curves.png")


def test_training_curves_of_a_training_history_draw_the_same_figure(tmp_path, history):
    """fit_flow and train return a TrainingHistory (a dict with attributes): plotting it
    gives the same picture as plotting the plain dict."""
    from normflows_sci.training import TrainingHistory

    as_history = TrainingHistory.from_dict(history)
    plot_training_curves(history, tmp_path / "dict.png")
    plot_training_curves(as_history, tmp_path / "history.png")
    assert (tmp_path / "dict.png").read_bytes() == (tmp_path / "history.png").read_bytes()


def test_training_curves_without_validation_or_learning_rate(tmp_path, history):
    history = {
        "train_loss": history["train_loss"][:3],
        "val_loss": [math.nan, None, math.nan],
    }
    assert_png(plot_training_curves(history, tmp_path / "curves.png"))


def test_training_curves_from_an_estimator_like_object_and_into_an_axes(tmp_path, history):
    class Fitted:
        history_ = history

    fig = Figure()
    ax = fig.add_subplot()
    assert plot_training_curves(Fitted(), None, ax=ax) is None
    assert ax.lines  # drawn into the given axes
    assert_png(plot_training_curves(Fitted(), tmp_path / "mine.png", ax=ax))


def test_training_curves_bad_history(tmp_path, history):
    with pytest.raises(ValueError, match="history lists must have equal lengths"):
        plot_training_curves({**history, "val_loss": [1.0]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="history must have a 'train_loss'"):
        plot_training_curves({"epoch": [1]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="history has no epochs"):
        plot_training_curves({"train_loss": []}, tmp_path / "x.png")
    with pytest.raises(TypeError, match="history must be a dict"):
        plot_training_curves([1.0, 2.0], tmp_path / "x.png")
    with pytest.raises(ValueError, match="path is None"):
        plot_training_curves(history, None)
    with pytest.raises(ValueError, match="path must end in"):
        plot_training_curves(history, tmp_path / "x.jpeg")
    assert_only(tmp_path)


def test_corner(tmp_path, tables):
    data, samples = tables
    path = plot_corner(data, samples, tmp_path / "sub" / "corner.png", columns=["a", "b", "k"])
    assert_png(path)
    assert_only(tmp_path / "sub", "corner.png")


def test_corner_one_column_and_subsampling(tmp_path, tables):
    data, samples = tables
    assert_png(plot_corner(data[:, :1], samples[:, :1], tmp_path / "one.png", max_points=100))


def test_corner_into_a_given_figure(tables):
    data, samples = tables
    fig = Figure(figsize=(6, 6))
    assert plot_corner(data, samples, None, fig=fig) is None
    assert len(fig.axes) == 9


def test_corner_mismatched_arguments(tmp_path, tables):
    data, samples = tables
    with pytest.raises(ValueError, match="samples must have 3 columns to match data, got 2"):
        plot_corner(data, samples[:, :2], tmp_path / "c.png")
    with pytest.raises(ValueError, match="columns must name all 3 columns of data, got 2"):
        plot_corner(data, samples, tmp_path / "c.png", columns=["a", "b"])
    with pytest.raises(ValueError, match="bins"):
        plot_corner(data, samples, tmp_path / "c.png", bins=1)
    with pytest.raises(ValueError, match="max_points"):
        plot_corner(data, samples, tmp_path / "c.png", max_points=0)
    with pytest.raises(ValueError, match="data has no rows"):
        plot_corner(data[:0], samples, tmp_path / "c.png")
    assert_only(tmp_path)


def test_marginals_with_samples_and_exact_curves(tmp_path, tables):
    data, samples = tables

    def normal_log_density(grid):
        return -0.5 * grid**2 - 0.5 * np.log(2 * np.pi)

    path = plot_marginals(
        data,
        tmp_path / "marginals.png",
        samples=samples,
        log_density=[normal_log_density] * 3,
        columns=["a", "b", "k"],
    )
    assert_png(path)
    assert_only(tmp_path, "marginals.png")


def test_marginals_of_data_alone_and_many_columns(tmp_path):
    data = np.random.default_rng(1).gamma(2.0, size=(500, 6))
    data[:, 5] = 7.0  # a constant column must not break the axis limits or the KDE
    assert_png(plot_marginals(data, tmp_path / "m.png", samples=data[::-1]))
    assert_png(plot_marginals(data[:, 0], tmp_path / "one.png", log_density=lambda g: -g))


def test_marginals_mismatched_arguments(tmp_path, tables):
    data, samples = tables
    with pytest.raises(ValueError, match="samples must have 3 columns"):
        plot_marginals(data, tmp_path / "m.png", samples=samples[:, :1])
    with pytest.raises(ValueError, match="columns must name all 3 columns"):
        plot_marginals(data, tmp_path / "m.png", columns=["a"])
    with pytest.raises(ValueError, match=r"log_density must hold one callable per column \(3\)"):
        plot_marginals(data, tmp_path / "m.png", log_density=[np.sin])
    with pytest.raises(ValueError, match=r"log_density\[0\] must return shape"):
        plot_marginals(data, tmp_path / "m.png", log_density=[lambda g: g[:5]] * 3)
    assert_only(tmp_path)


def test_a_failed_plot_keeps_the_previous_file(tmp_path, tables, monkeypatch):
    data, samples = tables
    target = tmp_path / "corner.png"
    target.write_bytes(b"previous")

    def broken(*args, **kwargs):
        raise RuntimeError("renderer failed")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(RuntimeError, match="renderer failed"):
        plot_corner(data, samples, target)
    assert target.read_bytes() == b"previous"
    assert_only(tmp_path, "corner.png")


def test_ramachandran_plot_with_weights(tmp_path):
    rng = np.random.default_rng(0)
    phi = rng.uniform(-math.pi, math.pi, 5000)
    psi = np.mod(phi + rng.normal(0, 0.5, 5000) + math.pi, 2 * math.pi) - math.pi
    weights = np.exp(-np.cos(phi))
    out = plot_ramachandran(
        {"samples": (phi, psi), "reweighted": (phi, psi, weights)}, tmp_path / "rama.png"
    )
    assert_png(out)
    assert_only(tmp_path, "rama.png")


def test_ramachandran_plot_rejects_bad_panels(tmp_path):
    with pytest.raises(ValueError, match="non-empty mapping"):
        plot_ramachandran({}, tmp_path / "r.png")
    with pytest.raises(ValueError, match="equal lengths"):
        plot_ramachandran({"a": (np.zeros(3), np.zeros(4))}, tmp_path / "r.png")
    with pytest.raises(ValueError, match=r"\(phi, psi\)"):
        plot_ramachandran({"a": (np.zeros(3),)}, tmp_path / "r.png")
    assert_only(tmp_path)
