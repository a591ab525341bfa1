"""Data-parallel training with torch.distributed (gloo, 2 processes on CPU, via torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from normflows_sci import DensityEstimator

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

    rng = np.random.default_rng(0)
    train = np.column_stack([rng.normal(size=4000), rng.gamma(2.0, size=4000)])
    test = np.column_stack([rng.normal(size=2000), rng.gamma(2.0, size=2000)])
    single = DensityEstimator(
        bounds={"x1": (0.0, None)},
        max_epochs=12,
        hidden_features=(32, 32),
        transforms=3,
        verbose=False,
        random_state=0,
    ).fit(train)
    assert result["scores"][0] == pytest.approx(single.score(test), abs=0.05)
