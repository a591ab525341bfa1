"""Run by test_distributed.py under torchrun: fit on every rank, rank 0 writes the result.

``problem()`` is shared with the single-process reference fit in the test.
"""

import json
import os
import sys

import numpy as np

from normflows_sci import DensityEstimator


def problem():
    """``(train, test, estimator)``: the same data and settings for both runs."""
    rng = np.random.default_rng(0)
    train = np.column_stack([rng.normal(size=4000), rng.gamma(2.0, size=4000)])
    test = np.column_stack([rng.normal(size=2000), rng.gamma(2.0, size=2000)])
    estimator = DensityEstimator(
        bounds={"x1": (0.0, None)},
        max_epochs=12,
        hidden_features=(32, 32),
        transforms=3,
        verbose=False,
        random_state=0,
    )
    return train, test, estimator


def main(out_path: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    train, test, estimator = problem()
    score = estimator.fit(train).score(test)
    scores = [None] * dist.get_world_size()
    dist.all_gather_object(scores, score)
    if dist.get_rank() == 0:
        with open(out_path, "w") as file:
            json.dump({"scores": scores, "world": dist.get_world_size()}, file)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    # Skip interpreter teardown: with torch 2.13 a gloo worker thread is sometimes still joinable
    # when its destructor runs at exit ("terminate called without an active exception", SIGABRT)
    # after all the work is done. Everything is written and closed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
