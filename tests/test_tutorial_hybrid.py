"""The hybrid-sampling tutorial: the flow hybrid recovers the exact mode weights, MALA does not."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parent.parent / "tutorials" / "hybrid_sampling.py"


def _load():
    spec = importlib.util.spec_from_file_location("hybrid_sampling", TUTORIAL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hybrid_recovers_mode_weights_where_mala_is_stuck(tmp_path):
    result = _load().main(
        num_chains=256, warmup=120, steps=100, dim=4, seed=0, out=tmp_path, progress=False
    )
    mala, hybrid = result["mala"], result["hybrid"]
    # MALA keeps the even 1/3 split it started with: max error |1/3 - 1/2| = 1/6.
    assert mala["error"] > 0.12
    assert mala["switches_per_chain"] < 0.05
    assert mala["rhat"] > 1.5
    # The hybrid gets within 0.03 of the exact weights, each within 4 standard errors.
    assert hybrid["error"] < 0.03
    for weight, stderr, exact in zip(
        hybrid["weights"], hybrid["weight_stderr"], result["exact_weights"]
    ):
        assert abs(weight - exact) < 4 * stderr + 1e-3
    assert hybrid["acceptance"]["global"] > 0.3
    assert hybrid["switches_per_chain"] > 10
    assert hybrid["rhat"] < 1.05
    assert hybrid["tau_evaluations"] < mala["tau_evaluations"] / 10
    assert (tmp_path / "hybrid_sampling.png").stat().st_size > 0


def test_hybrid_tutorial_without_out_writes_only_to_a_fresh_temporary_folder(
    tmp_path, monkeypatch, capsys
):
    """The command line without ``--out``: the figure goes to a new temporary folder, whose path
    is printed, and nothing is written where the tutorial is started."""
    cwd, temp_root = tmp_path / "cwd", tmp_path / "temp"
    cwd.mkdir()
    temp_root.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))
    result = _load()._cli(["--chains", "16", "--warmup", "8", "--steps", "8", "--dim", "2"])
    figure = Path(result["figure"])
    assert figure.name == "hybrid_sampling.png" and figure.stat().st_size > 0
    assert figure.parent.parent == temp_root
    assert figure.parent.name.startswith("normflows_sci_hybrid_sampling_")
    assert list(cwd.iterdir()) == []
    printed = capsys.readouterr().out
    assert f"output folder: {figure.parent}" in printed
    assert "MALA: 16 warm-up + 16 production steps" in printed
    assert "adaptive flow hybrid: 8 warm-up steps" in printed
