"""Run by test_distributed_chains.py under torchrun (2 gloo processes): every scenario of
``run_distributed``; each rank saves what it saw to ``<out_dir>/rank<r>.pt``.

The target, the starting points and the settings are shared with the in-process checks in the test.
"""

import os
import sys
import warnings

import torch

MEAN = (1.0, -0.5)
COV = ((1.0, 0.8), (0.8, 1.0))
MALA_CHAINS, MALA_WARMUP, MALA_STEPS, MALA_SEED = 64, 200, 400, 11
FLOW_CHAINS, FLOW_WARMUP, FLOW_STEPS, FLOW_SEED = 33, 100, 60, 5  # odd: shards of 17 and 16


def log_prob(x):
    """Correlated 2-D Gaussian, ``N(MEAN, COV)``, unnormalised; float32 or float64."""
    mean = torch.tensor(MEAN, dtype=x.dtype, device=x.device)
    precision = torch.linalg.inv(torch.tensor(COV, dtype=x.dtype, device=x.device))
    diff = x - mean
    return -0.5 * ((diff @ precision) * diff).sum(-1)


def mala_x0():
    # Every chain starts at the same point: only the random streams tell the ranks apart.
    return torch.zeros(MALA_CHAINS, 2, dtype=torch.float64)


def tiny_flow():
    from normflows_sci.flows import RealNVP

    return RealNVP(2, transforms=2, hidden_features=(8,))


def flow_x0():
    return torch.randn(FLOW_CHAINS, 2, generator=torch.Generator().manual_seed(1))


def _state_dict(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _error(call):
    try:
        call()
    except ValueError as error:
        return str(error)
    return None


def main(out_dir: str) -> None:
    import torch.distributed as dist

    from normflows_sci.samplers import MALA, AdaptiveFlowMCMC, run
    from normflows_sci.samplers.distributed import _averaged_gradients, run_distributed

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    out = {"world": world}

    # MALA on the correlated Gaussian (float64): the gathered trace.
    trace = run_distributed(
        MALA(log_prob, step_size=0.1), mala_x0(), MALA_STEPS, num_warmup=MALA_WARMUP, seed=MALA_SEED
    )
    # Continue from this rank's own final state.
    more = run_distributed(MALA(log_prob, step_size=0.1), trace.state, 5, seed=MALA_SEED + 1)
    out["continued"] = dict(shape=tuple(more.samples.shape), first_step_x=more.samples[0])
    out["mala"] = dict(
        samples=trace.samples,
        log_prob=trace.log_prob,
        acceptance=trace.acceptance,
        warmup_acceptance=trace.warmup_acceptance,
        state_x=trace.state.x,
        extras=trace.extras,
    )

    # AdaptiveFlowMCMC: the flows start different on purpose (seeded by rank) and must end equal.
    torch.manual_seed(100 + rank)
    flow = tiny_flow()
    kernel = AdaptiveFlowMCMC(log_prob, flow, learning_rate=1e-2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = []  # rank 0's flow as broadcast, recorded on the first optimizer step
        kernel.optimizer.register_step_pre_hook(
            lambda *_: start.append(_state_dict(flow)) if not start else None
        )
        trace = run_distributed(
            kernel, flow_x0(), FLOW_STEPS, num_warmup=FLOW_WARMUP, seed=FLOW_SEED
        )
    out["flow"] = dict(
        initial=start[0],
        final=_state_dict(flow),
        samples=trace.samples,
        acceptance=trace.acceptance,
        extras=trace.extras,
        warnings=[str(w.message) for w in caught],
    )

    # Control: the same flow everywhere but plain run() on each rank's shard: flows drift apart.
    torch.manual_seed(7)
    control = tiny_flow()
    shard = torch.tensor_split(flow_x0(), world)[rank]
    run(AdaptiveFlowMCMC(log_prob, control, learning_rate=1e-2), shard, 0, num_warmup=20, seed=rank)
    out["control_final"] = _state_dict(control)

    # Gradient averaging alone: one SGD step (lr 1) on 7 points split 4/3 must equal the
    # full-batch gradient step.
    torch.manual_seed(3)
    model = tiny_flow().double()
    data = torch.randn(7, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    local = torch.tensor_split(data, world)[rank]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    reference = torch.autograd.grad(-model.log_prob(data).mean(), list(model.parameters()))
    with _averaged_gradients([optimizer], len(local) / len(data)):
        optimizer.zero_grad()
        (-model.log_prob(local).mean()).backward()
        optimizer.step()
    out["sgd_error"] = max(
        float((b - g - p.detach()).abs().max())
        for b, g, p in zip(before, reference, model.parameters(), strict=True)
    )

    # Inconsistent or bad inputs: a ValueError on every rank, and the group stays usable.
    mala = MALA(log_prob)
    x0 = torch.zeros(4, 2)
    nan_x0 = x0.clone()
    nan_x0[-1, 0] = float("nan")  # only rank 1's shard is bad
    out["errors"] = dict(
        num_steps=_error(lambda: run_distributed(mala, x0, 5 + rank, seed=0)),
        x0=_error(lambda: run_distributed(mala, x0 + rank, 5, seed=0)),
        nan=_error(lambda: run_distributed(mala, nan_x0, 5, seed=0)),
        generator=_error(
            lambda: run_distributed(mala, x0, 5, generator=torch.Generator().manual_seed(0))
        ),
        checkpoint=_error(
            lambda: run_distributed(mala, x0, 5, seed=0, checkpoint=f"{out_dir}/chains.pt")
        ),
        too_few=_error(lambda: run_distributed(mala, x0[:1], 5, seed=0)),
    )
    # After all that, a consistent call still works (no rank was left waiting).
    after = run_distributed(mala, x0, 5, seed=0, split=False)
    out["after_errors_chains"] = tuple(after.samples.shape)

    torch.save(out, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    # Skip interpreter teardown, where a gloo worker thread sometimes aborts the process (see
    # distributed_fit.py); the results are saved by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
