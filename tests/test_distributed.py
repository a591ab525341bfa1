"""Data-parallel training with torch.distributed (gloo, 2 processes on CPU, via torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from distributed_fit import problem

HERE = Path(__file__).resolve().parent


def test_two_process_fit_agrees_with_single_process(tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(HERE / "distributed_fit.py"), str(out),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    if completed.returncode != 0:
        pytest.fail(f"torchrun failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}")
    result = json.loads(out.read_text())
    assert result["world"] == 2
    # Every rank ends with the same model.
    assert result["scores"][0] == result["scores"][1]

    train, test, single = problem()
    assert result["scores"][0] == pytest.approx(single.fit(train).score(test), abs=0.05)
