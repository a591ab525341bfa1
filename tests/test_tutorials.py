"""The tutorials run end to end on small budgets and reach their stated results."""

from __future__ import annotations

import importlib.util
from pathlib import Path

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, TUTORIALS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flows_quickstart_beats_the_gaussian_baseline():
    result = _load("flows_quickstart").main(steps=300)
    assert result["flow"] > result["gaussian"] + 0.5
    assert result["flow"] < result["true"] + 0.05  # held-out, so it cannot beat the truth by much


def test_tabular_tutorial_runs_and_beats_the_gaussian(tmp_path):
    result = _load("tabular_density").main(max_time=15.0, out=tmp_path)
    assert result["flow"] > result["gaussian"]
    for name in ("training.png", "corner.png", "marginals.png", "storms.nfs"):
        assert (tmp_path / name).stat().st_size > 0


def test_boltzmann_tutorial_recovers_exact_answers():
    result = _load("boltzmann_generator").main(
        steps=150, dim=4, num_samples=20_000, num_data=10_000, transforms=4
    )
    assert result["ess_fraction"] > 0.3
    assert abs(result["log_z"] - result["exact_log_z"]) < 4 * result["log_z_stderr"]
    assert (
        abs(result["free_energy"] - result["exact_free_energy"]) < 4 * result["free_energy_stderr"]
    )
