"""The manifold tutorials run end to end with small budgets and give sensible numbers."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, TUTORIALS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torus_tutorial_fits_backbone_torsions(tmp_path, monkeypatch, capsys):
    """Cached REMD frames when present, else ~15 s of OpenMM MD: the flow beats both baselines.

    The training budget is in epochs only, so the result does not depend on the machine's load."""
    monkeypatch.chdir(tmp_path)
    tutorial = _load("torus_angles")
    if os.path.exists(tutorial.CACHE):
        source, seconds = "cache", 0.0
    else:
        pytest.importorskip("openmm")
        pytest.importorskip("openmmtools")
        source, seconds = "md", 15.0
    result = tutorial.main(
        source, md_seconds=seconds, max_frames=3000, max_epochs=8, max_time=None, progress=False
    )
    assert result["frames"] >= 100
    # Torsions are concentrated: much better than uniform, and better than one von Mises bump.
    assert result["test_nll_flow"] < result["test_nll_uniform"] - 1.0
    assert result["test_nll_flow"] < result["test_nll_von_mises"]
    for name, value in result["basins_data"].items():
        assert abs(result["basins_flow"][name] - value) < 0.1, name
    assert list(tmp_path.iterdir()) == []  # nothing written where the tutorial runs
    printed = capsys.readouterr().out
    assert "training TorusFlow on" in printed
    if source == "md":
        assert "running 15 s of Langevin MD" in printed


def test_torus_tutorial_torsions_are_angles():
    tutorial = _load("torus_angles")
    pytest.importorskip("openmmtools")
    from normflows_sci.energies.molecular.systems import alanine_dipeptide

    energy = alanine_dipeptide()
    angles = tutorial.torsions(energy.positions)
    assert angles.shape == (1, 2) and bool((angles.abs() <= torch.pi).all())


def test_rigid_body_tutorial_trains_and_reweights(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tutorial = _load("rigid_bodies")
    result = tutorial.main(steps=60, batch_size=128, num_samples=2000, progress=False)
    assert list(tmp_path.iterdir()) == []  # nothing written where the tutorial runs
    printed = capsys.readouterr().out
    assert "reverse-KL training for 60 steps or 90 s" in printed
    assert "importance sampling: 2000 flow samples" in printed
    assert result["on_manifold"] < 1e-5
    history = result["history"]
    assert history["loss"][-1] < history["loss"][0]
    assert 0.01 < result["ess_fraction"] <= 1.0
    for name in ("energy", "field_alignment", "pair_distance"):
        assert torch.isfinite(torch.tensor(result["reweighted"][name]))
        assert result["stderr"][name] > 0
    # The orientation-dependent field aligns the dipoles: <d_z> > 0 after reweighting.
    assert result["reweighted"]["field_alignment"] > 0.05
