"""AdaptiveFlowMCMC's warm-up update: the flow evaluations it makes, and the state it leaves."""

from __future__ import annotations

import pytest
import torch

from normflows_sci.flows import RealNVP
from normflows_sci.samplers import AdaptiveFlowMCMC


def gaussian(x):
    return -0.5 * x.square().sum(-1)


class _CountingForward:
    """Counts the data-to-latent passes of a flow's transform (log-density evaluations)."""

    def __init__(self, flow):
        self.calls = 0
        flow.transform.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.calls += 1


@pytest.mark.parametrize("local_steps", [0, 1, 2])
def test_warmup_update_evaluates_the_flow_only_to_train_it(local_steps):
    torch.manual_seed(0)
    flow = RealNVP(2, transforms=2, hidden_features=(8,)).double()
    kernel = AdaptiveFlowMCMC(gaussian, flow, local_steps=local_steps, train_steps=3)
    state = kernel.init(torch.randn(32, 2, dtype=torch.float64))
    generator = torch.Generator().manual_seed(0)
    counter = _CountingForward(flow)
    accepted = 0.0
    for iteration in range(4):
        state, info = kernel.step(state, generator)
        accepted += float(info.global_accepted.sum())
        counter.calls = 0
        state = kernel.adapt(state, info, iteration, 4, {})
        # One pass per Adam step; the flow's log-density at the chains only when the next step
        # reads it (no local moves: the proposal's acceptance uses it as it is).
        assert counter.calls == 3 + (local_steps == 0)
        if local_steps:
            assert torch.isnan(state.log_q).all()  # not known, and not silently stale
        else:
            torch.testing.assert_close(state.log_q, flow.log_prob(state.local.x).detach())
    state, info = kernel.step(state, generator)
    accepted += float(info.global_accepted.sum())
    assert accepted > 0  # the flow moves are still accepted after the updates
    torch.testing.assert_close(state.log_q, flow.log_prob(state.local.x).detach())
