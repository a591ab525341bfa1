"""benchmarks/particle_reference.py: the DW4 / LJ13 parallel-tempering reference on a tiny budget."""

import importlib.util
import json
import re
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "particle_reference.py"
_SPEC = importlib.util.spec_from_file_location("particle_reference", _PATH)
reference = importlib.util.module_from_spec(_SPEC)
sys.modules.setdefault("particle_reference", reference)
_SPEC.loader.exec_module(reference)


def _tiny(system):
    settings = replace(reference.SETTINGS[system], chains=6, warmup=40, max_draws=20)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = reference.run_reference(system, steps=200, settings=settings, seed=3)
    return result, caught


@pytest.fixture(scope="module")
def tiny_runs():
    return {system: _tiny(system) for system in ("dw4", "lj13")}


@pytest.mark.parametrize("system", ["dw4", "lj13"])
def test_tiny_run_samples_the_mean_free_subspace_and_reports_every_diagnostic(tiny_runs, system):
    result, caught = tiny_runs[system]
    energy = reference.make_energy(system)
    samples = result["samples"]
    assert samples.shape[1:] == (6, energy.dim)
    assert 16 <= samples.shape[0] < 32  # max_draws to twice as many, less the 20% burn-in
    assert result["sample_thin"] % result["settings"]["thin"] == 0
    centre = energy.center_of_mass(samples.double())
    assert centre.abs().max() < 1e-5  # zero centre of mass
    assert len(torch.unique(samples[:, 0], dim=0)) > 1  # the chains moved
    diag = result["diagnostics"]
    assert diag["names"] == ["energy", "short-pair fraction", "d(0,1)", "d(0,2)", "d(1,2)"]
    for key in ("rhat", "iat_steps", "ess"):
        values = np.asarray(diag[key])
        assert values.shape == (5,) and np.isfinite(values).all(), key
    assert all(r > 0.9 for r in diag["rhat"])
    assert all(t > 0 for t in diag["iat_steps"])
    assert 0 < result["local_acceptance"] < 1 and 0 < result["swap_acceptance"] < 1
    assert result["steps"] >= 200 and result["steps"] % result["settings"]["thin"] == 0
    # The verdict follows the R-hat, and a run that is not converged says so.
    assert result["converged"] == (diag["max_rhat"] <= reference.RHAT_LIMIT)
    said = [w for w in caught if "not converged" in str(w.message)]
    assert bool(said) == (not result["converged"])
    text = reference.report(result)
    assert "R-hat" in text and "IAT" in text and "swap" in text


def test_chains_stuck_apart_are_not_converged(tiny_runs):
    """The degenerate ensemble: half the chains frozen at one configuration, half at another."""
    energy = reference.make_energy("dw4")
    samples = tiny_runs["dw4"][0]["samples"].clone()
    samples[:, :3] = samples[0, 0]
    samples[:, 3:] = samples[0, 5]
    samples += 1e-3 * torch.randn(samples.shape, generator=torch.Generator().manual_seed(0))
    diag = reference.diagnostics(energy, samples, thin=10)
    assert diag["max_rhat"] > 2.0


def test_subspace_basis_is_an_orthonormal_basis_of_the_mean_free_subspace():
    for n, d in [(4, 2), (13, 3), (2, 1)]:
        basis = reference.subspace_basis(n, d)
        assert basis.shape == (n * d, (n - 1) * d)
        assert torch.allclose(basis.T @ basis, torch.eye((n - 1) * d, dtype=basis.dtype))
        centre = basis.T.reshape(-1, n, d).mean(1)  # centre of mass of every basis vector
        assert centre.abs().max() < 1e-12


def test_run_reference_needs_exactly_one_budget_and_a_known_system():
    with pytest.raises(ValueError, match="exactly one of minutes"):
        reference.run_reference("dw4")
    with pytest.raises(ValueError, match="exactly one of minutes"):
        reference.run_reference("dw4", minutes=1.0, steps=10)
    with pytest.raises(ValueError, match="system must be 'dw4' or 'lj13'"):
        reference.run_reference("lj55", steps=10)


def test_saved_reference_round_trips_and_foreign_files_are_refused(tiny_runs, tmp_path):
    result = tiny_runs["dw4"][0]
    path = reference.save_reference(result, tmp_path / "dw4_reference.npz")
    loaded = reference.load_reference(path, "dw4")
    assert torch.equal(loaded["samples"], result["samples"])
    assert loaded["diagnostics"] == json.loads(json.dumps(result["diagnostics"]))
    with pytest.raises(
        ValueError, match=re.escape("dw4_reference.npz: system is 'dw4', expected 'lj13'")
    ):
        reference.load_reference(path, "lj13")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.zeros(3))
    with pytest.raises(ValueError, match=re.escape("foreign.npz: not a particle reference file")):
        reference.load_reference(foreign)
    meta = json.loads(str(np.load(path)["meta"]))
    meta["format_version"] = 0
    old = tmp_path / "old.npz"
    np.savez(old, samples=result["samples"].numpy(), meta=json.dumps(meta))
    with pytest.raises(ValueError, match=re.escape("old.npz: format_version is 0")):
        reference.load_reference(old)


def test_known_facts_compare_with_the_systems_known_values(tiny_runs):
    dw4_rows = reference.known_facts(reference.make_energy("dw4"), tiny_runs["dw4"][0]["samples"])
    assert "2.51 and 5.49" in dw4_rows[0][2]  # the pair potential's wells, d0 -+ sqrt(-b / 2c)
    lj13 = reference.make_energy("lj13")
    lj13_rows = reference.known_facts(lj13, tiny_runs["lj13"][0]["samples"])
    assert str(reference.LJ13_GROUND_STATE) in lj13_rows[1][2]
    assert float(lj13_rows[1][1]) > reference.LJ13_GROUND_STATE
