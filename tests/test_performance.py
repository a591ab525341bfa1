"""Performance features: chunking is in test_flows; here torch.compile, mixed precision and MADE's
sequential (autoregressive sampling) evaluation, each checked against the plain computation."""

from __future__ import annotations

import warnings

import pytest
import torch
from tests_helpers import perturb

from normflows_sci._optim import adamw
from normflows_sci.distributions import StandardNormal
from normflows_sci.flows import MAF, NSF, RealNVP
from normflows_sci.nn import MADE
from normflows_sci.samplers import MALA, compile_target, run


@pytest.mark.parametrize("context_features", [0, 2])
def test_made_sequential_matches_the_full_network(context_features):
    torch.manual_seed(0)
    made = perturb(
        MADE(
            5, 3, hidden_features=(16, 16), context_features=context_features, order=[3, 0, 4, 1, 2]
        ),
        scale=0.5,
    )
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(8, 5, generator=generator, dtype=torch.float64)
    context = (
        torch.randn(8, 2, generator=generator, dtype=torch.float64) if context_features else None
    )
    made = made.double()
    full = made(x, context)
    state = made.sequential(torch.zeros_like(x), context)
    for feature in [3, 0, 4, 1, 2]:
        torch.testing.assert_close(state.feature(feature), full[:, feature])
        state.set(feature, x[:, feature])


FLOWS = {
    "nsf_autoregressive": lambda: NSF(6, transforms=2, hidden_features=(32, 32)),
    "nsf_coupling": lambda: NSF(6, transforms=2, hidden_features=(32, 32), coupling=True),
    "maf": lambda: MAF(6, transforms=2, hidden_features=(32, 32)),
    "realnvp": lambda: RealNVP(6, transforms=2, hidden_features=(32, 32)),
}


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_bfloat16_autocast_keeps_spline_arithmetic_in_float32(name):
    # torch.autocast runs the conditioners' matrix products in bfloat16; the layers take their
    # parameters back to float32, so log-densities stay float32 and within bfloat16 rounding of
    # the float32 result (rounding of the parameters, not of the spline arithmetic).
    torch.manual_seed(0)
    flow = perturb(FLOWS[name](), scale=0.05)
    x = torch.randn(256, 6, generator=torch.Generator().manual_seed(2))
    exact = flow.log_prob(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = flow.log_prob(x)
        samples, log_q = flow.sample_and_log_prob(64, generator=torch.Generator().manual_seed(3))
    assert mixed.dtype == torch.float32 and samples.dtype == torch.float32
    assert (mixed - exact).abs().max() < 0.05
    assert torch.isfinite(samples).all()
    torch.testing.assert_close(flow.log_prob(samples), log_q, atol=0.05, rtol=0)
    # A training step under autocast produces float32 gradients.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = -flow.log_prob(x).mean()
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in flow.parameters() if p.grad is not None)


def test_compiled_flow_gives_the_eager_numbers():
    torch.manual_seed(0)
    eager = perturb(NSF(3, transforms=1, hidden_features=(16,)), scale=0.3)
    compiled = perturb(NSF(3, transforms=1, hidden_features=(16,)), scale=0.3)
    compiled.load_state_dict(eager.state_dict())
    assert compiled.compile() is compiled
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for flow in (eager, compiled):
            flow.zero_grad()
            flow.log_prob(x).mean().backward()
    # Nothing in the spline code makes Dynamo warn (it did on the cached constant tables).
    assert not [str(w.message) for w in caught if "Dynamo" in str(w.message)]
    torch.testing.assert_close(compiled.log_prob(x), eager.log_prob(x), atol=1e-5, rtol=1e-5)
    for a, b in zip(compiled.parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4)
    draws = [
        flow.sample_and_log_prob(32, generator=torch.Generator().manual_seed(2))
        for flow in (eager, compiled)
    ]
    torch.testing.assert_close(draws[1], draws[0], atol=1e-5, rtol=1e-5)


def test_compiled_target_gives_the_eager_chains():
    target = StandardNormal(3)
    x0 = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    traces = [
        run(MALA(t, step_size=0.3), x0, 10, seed=5).samples
        for t in (target, compile_target(target))
    ]
    torch.testing.assert_close(traces[1], traces[0], atol=1e-5, rtol=1e-5)


def test_training_loops_use_fused_adamw_with_the_plain_update():
    torch.manual_seed(0)
    params = [torch.randn(20, 10, requires_grad=True), torch.randn(10, requires_grad=True)]
    copies = [p.detach().clone().requires_grad_() for p in params]
    fused = adamw(params, 1e-2, weight_decay=0.1)
    plain = torch.optim.AdamW(copies, lr=1e-2, weight_decay=0.1)
    if torch.__version__ >= "2.4":  # fused AdamW on CPU since torch 2.4
        assert fused.param_groups[0]["fused"] is True
    for _ in range(20):
        grads = [torch.randn_like(p) for p in params]
        for group, opt in ((params, fused), (copies, plain)):
            for p, g in zip(group, grads):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(params, copies):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
