"""Stochastic normalizing flows: exact path weights, unbiased log Z, ESS gains, gradients."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from normflows_sci.distributions import DiagNormal, StandardNormal
from normflows_sci.flows import RealNVP
from normflows_sci.samplers import HMC, MALA, RandomWalkMH, importance_sample
from normflows_sci.samplers.snf import (
    LangevinLayer,
    MCMCLayer,
    StochasticNormalizingFlow,
)

MEAN = torch.tensor([1.0, -0.5])
COV = torch.tensor([[1.5, 0.6], [0.6, 0.5]])
SHIFT = 1.5  # log p = log N(x; MEAN, COV) + log(2 pi) + 0.5 log det COV + SHIFT
LOG_Z = math.log(2 * math.pi) + 0.5 * math.log(float(torch.linalg.det(COV))) + SHIFT


def target(x):
    d = x - MEAN.to(x)
    return -0.5 * ((d @ torch.linalg.inv(COV).to(x)) * d).sum(-1) + SHIFT


def mismatched_flow(dtype=torch.float32):
    """An untrained RealNVP: close to N(0, I), far from the target (IS ESS ~ 20%)."""
    torch.manual_seed(0)
    return RealNVP(2, transforms=2, hidden_features=(16,)).to(dtype)


def stochastic_layers(kind: str, count: int = 6, steps: int = 2):
    positions = torch.linspace(0, 1, count + 1)[1:].tolist()
    if kind == "langevin":
        return [LangevinLayer(s, step_size=0.05, steps=steps) for s in positions]
    step = {"mala": 0.2, "hmc": 0.2, "rwmh": 0.6}[kind]
    kernel = {"mala": MALA, "hmc": HMC, "rwmh": RandomWalkMH}[kind]
    return [
        MCMCLayer(s, step_size=step, steps=steps, kernel=kernel, num_leapfrog=3) for s in positions
    ]


@pytest.mark.parametrize("kind", ["mala", "rwmh", "hmc", "langevin"])
def test_log_z_estimate_is_within_error_bars_float64(kind):
    flow = mismatched_flow(torch.float64)
    snf = StochasticNormalizingFlow(flow, stochastic_layers(kind), target)
    result = snf.importance_sample(4000, generator=torch.Generator().manual_seed(0))
    assert result.samples.dtype == torch.float64
    assert 0 < result.log_z_stderr < 0.1
    assert abs(result.log_z - LOG_Z) < 4 * result.log_z_stderr


def test_log_z_estimate_float32_and_interleaved_layers():
    """Stochastic layers between the flow's own layers, with the base as reference."""
    flow = mismatched_flow()
    steps = list(flow.transform)[::-1]  # generative order
    layers = [steps[0], MCMCLayer(0.5, step_size=0.2), steps[1], MCMCLayer(1.0, step_size=0.2)]
    snf = StochasticNormalizingFlow(flow.base, layers, target)
    result = snf.importance_sample(4000, generator=torch.Generator().manual_seed(1))
    assert result.samples.dtype == torch.float32
    assert abs(result.log_z - LOG_Z) < 4 * result.log_z_stderr


def test_deterministic_layers_alone_reproduce_flow_importance_weights():
    flow = mismatched_flow(torch.float64)
    snf = StochasticNormalizingFlow(StandardNormal(2).double(), list(flow.transform)[::-1], target)
    with torch.no_grad():
        x, log_w = snf.sample_and_log_weights(50, generator=torch.Generator().manual_seed(0))
        expected = target(x) - flow.log_prob(x)
    assert torch.allclose(log_w, expected, atol=1e-10)


def test_unadjusted_langevin_with_a_large_step_stays_unbiased():
    """The Langevin move itself is badly off (it overshoots: variances twice too large), the
    path weights correct it exactly. A base wider than the target keeps the weights light-tailed
    so that the delta-method error bar is reliable."""
    base = DiagNormal(2, learnable=False).double()
    base.log_scale.fill_(math.log(1.6))
    snf = StochasticNormalizingFlow(base, [LangevinLayer(1.0, step_size=0.4)], target)
    result = snf.importance_sample(8000, generator=torch.Generator().manual_seed(2))
    raw_var = result.samples.var(0)
    assert (raw_var - COV.diagonal().double()).abs().max() > 1.0  # the raw samples are wrong
    assert result.ess_fraction > 0.1
    assert abs(result.log_z - LOG_Z) < 4 * result.log_z_stderr
    mean, stderr = result.expectation(lambda x: x)
    assert ((mean - MEAN.double()).abs() < 4 * stderr).all()


def test_stochastic_layers_improve_ess_over_the_flow_alone():
    flow = mismatched_flow()
    plain = importance_sample(flow, target, 4000, generator=torch.Generator().manual_seed(3))
    snf = StochasticNormalizingFlow(flow, stochastic_layers("mala", count=8), target)
    hybrid = snf.importance_sample(4000, generator=torch.Generator().manual_seed(3))
    assert plain.ess_fraction < 0.3
    assert hybrid.ess_fraction > 1.5 * plain.ess_fraction


@pytest.mark.parametrize(
    "kernel, step, reference",
    [
        (MALA, 0.5, MALA),
        (RandomWalkMH, 1.0, RandomWalkMH),
        (partial(HMC, num_leapfrog=3), 0.7, partial(HMC, num_leapfrog=3)),
    ],
)
def test_mcmc_layer_moves_like_the_package_kernels(kernel, step, reference):
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(4))
    layer = MCMCLayer(1.0, step_size=step, kernel=kernel)
    x, delta = layer(x0, target, generator=torch.Generator().manual_seed(5))
    move = reference(target, step_size=step)
    state, info = move.step(move.init(x0), torch.Generator().manual_seed(5))
    assert torch.allclose(x, state.x, atol=1e-6)
    assert 0.2 < float(info.accepted.float().mean()) < 0.95  # both branches exercised
    assert torch.allclose(delta, target(x0) - target(x), atol=1e-5)
    assert layer.last_acceptance == pytest.approx(float(info.accepted.float().mean()))


def test_langevin_contribution_is_the_gaussian_kernel_log_ratio():
    h = 0.3
    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    layer = LangevinLayer(1.0, step_size=h)
    x1, delta = layer(x0, target, generator=torch.Generator().manual_seed(7))

    def grad(x):
        leaf = x.clone().requires_grad_(True)
        return torch.autograd.grad(target(leaf).sum(), leaf)[0]

    kernel = torch.distributions.Normal
    forward = kernel(x0 + h * grad(x0), math.sqrt(2 * h)).log_prob(x1).sum(-1)
    backward = kernel(x1 + h * grad(x1), math.sqrt(2 * h)).log_prob(x0).sum(-1)
    assert torch.allclose(delta, backward - forward, atol=1e-10)


@pytest.mark.parametrize("kind", ["mala", "langevin", "hmc"])
def test_gradients_reach_the_flow_parameters(kind):
    flow = mismatched_flow()
    snf = StochasticNormalizingFlow(flow, stochastic_layers(kind, count=2, steps=1), target)
    loss, info = snf.loss(64, generator=torch.Generator().manual_seed(8))
    loss.backward()
    grads = [p.grad for p in flow.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert 0 < info["ess_fraction"] <= 1 and info["nonfinite"] == 0


def test_langevin_path_gradient_matches_finite_differences():
    """Reparameterised gradient through two Langevin layers (second derivatives of the target
    and of the reference included), float64, common random numbers."""
    base = DiagNormal(2).double()
    with torch.no_grad():
        base.loc.copy_(torch.tensor([0.3, -0.2]))
        base.log_scale.copy_(torch.tensor([0.1, -0.3]))
    snf = StochasticNormalizingFlow(
        base, [LangevinLayer(0.5, step_size=0.1), LangevinLayer(1.0, step_size=0.1)], target
    )

    def loss():
        return snf.loss(16, generator=torch.Generator().manual_seed(9))[0]

    loss().backward()
    for param in (base.loc, base.log_scale):
        for i in range(2):
            eps = 1e-6
            with torch.no_grad():
                param[i] += eps
                up = float(loss())
                param[i] -= 2 * eps
                down = float(loss())
                param[i] += eps
            assert float(param.grad[i]) == pytest.approx((up - down) / (2 * eps), rel=1e-5)


def test_training_the_deterministic_layers_raises_the_ess():
    flow = mismatched_flow()
    snf = StochasticNormalizingFlow(flow, [MCMCLayer(0.5, step_size=0.1), MCMCLayer()], target)
    before = snf.importance_sample(2000, generator=torch.Generator().manual_seed(10))
    optimizer = torch.optim.Adam(snf.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(11)
    for _ in range(60):
        optimizer.zero_grad()
        loss, _ = snf.loss(256, generator=generator)
        loss.backward()
        optimizer.step()
    after = snf.importance_sample(2000, generator=torch.Generator().manual_seed(10))
    assert after.ess_fraction > before.ess_fraction + 0.3
    assert abs(after.log_z - LOG_Z) < 4 * after.log_z_stderr + 1e-3


def test_target_module_is_not_registered():
    other = RealNVP(2, transforms=1, hidden_features=(4,))
    snf = StochasticNormalizingFlow(StandardNormal(2), [MCMCLayer()], other)
    assert list(snf.parameters()) == []


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: MCMCLayer(1.5), ValueError, "position"),
        (lambda: LangevinLayer(0.5, step_size=0.0), ValueError, "step_size"),
        (lambda: LangevinLayer(0.5, steps=1.5), ValueError, "steps"),
        # Old code: int("two") raised ValueError without naming the argument.
        (lambda: LangevinLayer(0.5, steps="two"), ValueError, "steps must be a positive integer"),
        (lambda: MCMCLayer(num_leapfrog=None), ValueError, "num_leapfrog must be a positive"),
        (lambda: MCMCLayer(kernel="nuts"), ValueError, "kernel"),
        (lambda: MCMCLayer(kernel="hmc", num_leapfrog=0), ValueError, "num_leapfrog"),
        (
            lambda: StochasticNormalizingFlow(StandardNormal(2), [MCMCLayer(), "x"], target),
            TypeError,
            r"layers\[1\]",
        ),
        (lambda: StochasticNormalizingFlow(object(), [], target), TypeError, "base"),
        (
            lambda: StochasticNormalizingFlow(StandardNormal(2), MCMCLayer(), target),
            TypeError,
            "layers",
        ),
        (lambda: StochasticNormalizingFlow(StandardNormal(2), [], 3.0), TypeError, "target"),
        (
            lambda: StochasticNormalizingFlow(StandardNormal(2), [MCMCLayer()], target).sample(-1),
            ValueError,
            "num_samples",
        ),
        (
            lambda: StochasticNormalizingFlow(
                StandardNormal(2), [MCMCLayer()], target
            ).importance_sample(10, batch_size=0),
            ValueError,
            "batch_size",
        ),
        (lambda: MCMCLayer(0.5)(torch.zeros(3, 2), target), ValueError, "reference_log_prob"),
        (lambda: MCMCLayer()(torch.zeros(3), target), ValueError, "x must be"),
    ],
)
def test_bad_arguments_raise(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_mcmc_layer_kernel_name_is_a_deprecated_alias_of_the_kernel_value():
    """``kernel="hmc"`` still builds the HMC layer (with a DeprecationWarning naming the class);
    ``kernel=partial(HMC, num_leapfrog=3)`` is the same layer: the same path for the same seed."""
    with pytest.warns(DeprecationWarning, match=r"kernel=HMC"):
        named = MCMCLayer(0.5, step_size=0.3, kernel="hmc", num_leapfrog=3)
    valued = MCMCLayer(0.5, step_size=0.3, kernel=partial(HMC, num_leapfrog=3))
    assert valued.num_leapfrog == 3 and "HMC(" in repr(valued)
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    reference = StandardNormal(2).log_prob
    a = named(x0, target, reference, generator=torch.Generator().manual_seed(2))
    b = valued(x0, target, reference, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_layer_position_on_the_path_and_beta_is_a_deprecated_alias():
    """Old code called the layer's position between reference and target ``beta`` (the name of
    an inverse temperature): ``position=`` did not exist. ``beta=`` and ``layer.beta`` keep
    working with a DeprecationWarning naming ``position``; old pickles load with it."""
    import pickle

    layer = MCMCLayer(position=0.25, step_size=0.2)
    assert layer.position == 0.25 and "position=0.25" in repr(layer)
    with pytest.warns(DeprecationWarning, match="position="):
        old = MCMCLayer(beta=0.25, step_size=0.2)
    with pytest.warns(DeprecationWarning, match="position="):
        assert LangevinLayer(beta=0.5).position == 0.5
    with pytest.warns(DeprecationWarning, match=r"\.position"):
        assert old.beta == 0.25
    with pytest.warns(DeprecationWarning, match=r"\.position"):
        old.beta = 0.5
    assert old.position == 0.5
    with pytest.raises(TypeError, match="position"):
        MCMCLayer(0.5, beta=0.5)
    with pytest.raises(ValueError, match="position"), pytest.warns(DeprecationWarning):
        LangevinLayer(beta=2.0)
    assert LangevinLayer().position == 1.0

    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    reference = StandardNormal(2).log_prob
    runs = [
        made(x, target, reference, generator=torch.Generator().manual_seed(1))
        for made in (layer, MCMCLayer(0.25, step_size=0.2))
    ]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])

    pickled = LangevinLayer(0.3)  # as stored before the rename: the position under "beta"
    pickled.__dict__["beta"] = pickled.__dict__.pop("position")
    assert pickle.loads(pickle.dumps(pickled)).position == 0.3
