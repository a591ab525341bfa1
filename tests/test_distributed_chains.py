"""Chains spread across processes (run_distributed): 2 gloo processes on CPU via torchrun, and the
single-process fallback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import distributed_chains_script as script
import pytest
import torch

from normflows_sci.samplers import MALA, AdaptiveFlowMCMC, run
from normflows_sci.samplers.distributed import _rank_seed, run_distributed

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the 2 ranks saw (one torchrun launch for every scenario)."""
    out = tmp_path_factory.mktemp("distributed_chains")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(HERE / "distributed_chains_script.py"), str(out),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    if completed.returncode != 0:
        pytest.fail(f"torchrun failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}")
    results = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["world"] for r in results] == [2, 2]
    return results


def _equal_dicts(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gathered_trace_has_every_chain_in_rank_order(ranks):
    half = script.MALA_CHAINS // 2
    for rank, result in enumerate(ranks):
        mala = result["mala"]
        assert mala["samples"].shape == (script.MALA_STEPS, script.MALA_CHAINS, 2)
        assert mala["log_prob"].shape == (script.MALA_STEPS, script.MALA_CHAINS)
        assert mala["acceptance"]["local"].shape == (script.MALA_CHAINS,)
        assert mala["warmup_acceptance"]["local"].shape == (script.MALA_CHAINS,)
        assert mala["extras"]["chains_per_rank"] == (half, half)
        start, stop = mala["extras"]["chain_slice"]
        assert (start, stop) == (rank * half, (rank + 1) * half)
        # This rank's final local state is its block of the gathered last sample.
        assert torch.equal(mala["samples"][-1, start:stop], mala["state_x"])
        assert torch.allclose(mala["log_prob"][-1], script.log_prob(mala["samples"][-1]))
    # Continuing from each rank's local state gives all chains again, on both ranks.
    assert ranks[0]["continued"]["shape"] == (5, script.MALA_CHAINS, 2)
    assert torch.equal(ranks[0]["continued"]["first_step_x"], ranks[1]["continued"]["first_step_x"])
    # Uneven shards (33 chains -> 17 + 16).
    flow = ranks[0]["flow"]
    assert flow["extras"]["chains_per_rank"] == (17, 16)
    assert flow["samples"].shape == (script.FLOW_STEPS, script.FLOW_CHAINS, 2)
    assert flow["acceptance"]["global"].shape == (script.FLOW_CHAINS,)


def test_gathered_trace_is_identical_on_both_ranks(ranks):
    a, b = ranks[0]["mala"], ranks[1]["mala"]
    assert torch.equal(a["samples"], b["samples"])
    assert torch.equal(a["log_prob"], b["log_prob"])
    assert _equal_dicts(a["acceptance"], b["acceptance"])
    assert _equal_dicts(a["warmup_acceptance"], b["warmup_acceptance"])
    assert torch.equal(ranks[0]["flow"]["samples"], ranks[1]["flow"]["samples"])
    assert not torch.equal(a["state_x"], b["state_x"])  # the state stays local


def test_ranks_use_different_random_streams(ranks):
    # All 64 chains start at the same point, so equal seeds would give equal halves.
    samples = ranks[0]["mala"]["samples"]
    half = script.MALA_CHAINS // 2
    assert (samples[:, :half] - samples[:, half:]).abs().max() > 1.0
    seeds = ranks[0]["mala"]["extras"]["seeds"]
    assert seeds == (_rank_seed(script.MALA_SEED, 0), _rank_seed(script.MALA_SEED, 1))
    assert seeds[0] != seeds[1]


def test_each_rank_is_run_on_its_shard_with_its_seed(ranks):
    """The distributed run is exactly ``run`` per rank (float64), concatenated."""
    samples = ranks[0]["mala"]["samples"]
    for rank, shard in enumerate(torch.tensor_split(script.mala_x0(), 2)):
        alone = run(
            MALA(script.log_prob, step_size=0.1),
            shard,
            script.MALA_STEPS,
            num_warmup=script.MALA_WARMUP,
            seed=_rank_seed(script.MALA_SEED, rank),
        )
        start, stop = ranks[rank]["mala"]["extras"]["chain_slice"]
        torch.testing.assert_close(samples[:, start:stop], alone.samples)


def test_mala_recovers_mean_and_covariance(ranks):
    samples = ranks[0]["mala"]["samples"].reshape(-1, 2)
    mean = torch.tensor(script.MEAN, dtype=samples.dtype)
    cov = torch.tensor(script.COV, dtype=samples.dtype)
    # About 1600 effective samples: standard errors ~0.025 (mean) and ~0.035 (covariance).
    assert (samples.mean(0) - mean).abs().max() < 0.12
    assert (torch.cov(samples.T) - cov).abs().max() < 0.15
    assert 0.4 < float(ranks[0]["mala"]["acceptance"]["local"].mean()) < 0.75


def test_adaptive_flow_is_identical_across_ranks(ranks):
    a, b = ranks[0]["flow"], ranks[1]["flow"]
    assert a["warnings"] == [] and b["warnings"] == []
    # Built with different seeds, started from rank 0's broadcast parameters...
    assert _equal_dicts(a["initial"], b["initial"])
    # ...trained during warm-up (the parameters moved) and still bitwise equal afterwards.
    moved = max(float((a["final"][k] - a["initial"][k]).abs().sum()) for k in a["final"])
    assert moved > 0.05
    assert _equal_dicts(a["final"], b["final"])
    # Control: the same start but plain run() per rank on its own chains: the flows drift apart.
    control = [r["control_final"] for r in ranks]
    assert not _equal_dicts(*control)
    # The shared flow learnt the target: most global moves are accepted, moments are right.
    assert float(a["acceptance"]["global"].mean()) > 0.5
    samples = a["samples"].reshape(-1, 2)
    assert (samples.mean(0) - torch.tensor(script.MEAN)).abs().max() < 0.15
    assert (torch.cov(samples.T) - torch.tensor(script.COV)).abs().max() < 0.2


def test_gradients_are_averaged_weighted_by_chain_count(ranks):
    # One SGD step on 4 + 3 points equals the full-batch step on all 7.
    for result in ranks:
        assert result["sgd_error"] < 1e-12


def test_inconsistent_inputs_raise_on_every_rank(ranks):
    for rank, result in enumerate(ranks):
        errors = result["errors"]
        assert "num_steps differs across ranks" in errors["num_steps"]
        assert "[5, 6]" in errors["num_steps"]
        assert "x0 differs across ranks" in errors["x0"] and "split=False" in errors["x0"]
        assert "same state on two or more ranks" in errors["generator"]
        assert "{rank}" in errors["checkpoint"]
        assert "at least one chain" in errors["too_few"]
        assert "NaN" in errors["nan"]
        if rank == 0:  # the other rank learns which rank failed and why
            assert "rank 1" in errors["nan"]
        assert result["after_errors_chains"] == (5, 8, 2)  # 4 chains per rank, split=False


# ----------------------------------------------------------------------------- one process


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_single_process_fallback_is_run(dtype):
    x0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=dtype)
    kernel = MALA(script.log_prob, step_size=0.2)
    trace = run_distributed(kernel, x0, 30, num_warmup=10, thin=2, seed=4)
    plain = run(kernel, x0, 30, num_warmup=10, thin=2, seed=4)
    assert torch.equal(trace.samples, plain.samples)
    assert torch.equal(trace.log_prob, plain.log_prob)
    assert _equal_dicts(trace.acceptance, plain.acceptance)
    assert trace.samples.dtype == dtype and trace.samples.shape == (15, 6, 2)
    assert trace.extras["world_size"] == 1 and trace.extras["rank"] == 0
    assert trace.extras["chains_per_rank"] == (6,) and trace.extras["chain_slice"] == (0, 6)
    # Continuing from the state, as with run.
    more = run_distributed(kernel, trace.state, 5, seed=5)
    assert more.samples.shape == (5, 6, 2)


def test_single_process_fallback_adaptive_flow_and_checkpoint(tmp_path):
    torch.manual_seed(0)
    kernel = AdaptiveFlowMCMC(script.log_prob, script.tiny_flow())
    path = tmp_path / "chains-{rank}.pt"
    trace = run_distributed(kernel, script.flow_x0(), 4, num_warmup=3, seed=1, checkpoint=path)
    assert trace.samples.shape == (4, script.FLOW_CHAINS, 2)
    assert (tmp_path / "chains-0.pt").exists()  # {rank} -> 0
    with pytest.raises(ValueError, match="num_steps"):
        run_distributed(kernel, script.flow_x0(), -1)


def test_rank_seeds_are_distinct_and_stable():
    seeds = [_rank_seed(11, r) for r in range(8)]
    assert len(set(seeds)) == 8 and all(0 <= s < 2**63 for s in seeds)
    assert _rank_seed(11, 3) == seeds[3] and _rank_seed(12, 0) != seeds[0]
