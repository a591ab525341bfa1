"""The tutorials run end to end on small budgets and reach their stated results.

Every test runs from an empty working directory and checks that it stays empty: tutorials write
only to ``--out`` or to a fresh temporary folder, never where they are started (the repository).
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, TUTORIALS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
    """An empty working directory; the test fails if anything is left in it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield cwd
    assert sorted(p.name for p in cwd.iterdir()) == [], (
        "a tutorial wrote into its working directory"
    )


@pytest.fixture
def temp_root(tmp_path, monkeypatch):
    """Where ``tempfile.mkdtemp`` creates folders during the test."""
    root = tmp_path / "temp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_flows_quickstart_beats_the_gaussian_baseline(empty_cwd, capsys):
    result = _load("flows_quickstart").main(steps=300, progress=False)
    assert result["flow"] > result["gaussian"] + 0.5
    assert result["flow"] < result["true"] + 0.05  # held-out, so it cannot beat the truth by much
    assert "training a 4-layer neural spline flow for 300 steps" in capsys.readouterr().out


def test_tabular_tutorial_writes_to_a_fresh_temporary_folder(empty_cwd, temp_root, capsys):
    """Without ``--out`` the model and figures go to a new temporary folder, named in the output."""
    result = _load("tabular_density")._cli(["--max-time", "15"])
    assert result["flow"] > result["gaussian"]
    out = Path(result["out"])
    assert out.parent == temp_root and out.name.startswith("normflows_sci_tabular_density_")
    for name in ("training.png", "corner.png", "marginals.png", "storms.nfs"):
        assert (out / name).stat().st_size > 0
    printed = capsys.readouterr().out
    assert f"output folder: {out}" in printed
    assert "fitting the flow (at most 15 s of training)" in printed


def test_tabular_tutorial_output_folder_is_created_where_asked(tmp_path, temp_root):
    tutorial = _load("tabular_density")
    asked = tmp_path / "results" / "storms"
    assert tutorial.output_folder(asked) == asked and asked.is_dir()
    first, second = tutorial.output_folder(None), tutorial.output_folder(None)
    assert first != second and first.parent == second.parent == temp_root


def test_boltzmann_tutorial_recovers_exact_answers(empty_cwd, capsys):
    result = _load("boltzmann_generator").main(
        steps=150, dim=4, num_samples=20_000, num_data=10_000, transforms=4, progress=False
    )
    assert result["ess_fraction"] > 0.3
    assert result["reliable"] and result["pareto_k"] < 0.7  # the weights say they can be trusted
    assert abs(result["log_z"] - result["exact_log_z"]) < 4 * result["log_z_stderr"]
    assert (
        abs(result["free_energy"] - result["exact_free_energy"]) < 4 * result["free_energy_stderr"]
    )
    printed = capsys.readouterr().out
    for stage in (
        "1/3 maximum likelihood",
        "2/3 maximum likelihood + reverse KL",
        "3/3 importance",
    ):
        assert stage in printed
