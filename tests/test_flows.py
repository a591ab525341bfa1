"""Flow and factories: normalisation, context, sampling, validation, learning."""

from __future__ import annotations

import math

import pytest
import torch
from tests_helpers import grid_integral, perturb
from torch import nn

from normflows_sci.distributions import StudentT
from normflows_sci.flows import MAF, NSF, Flow, RealNVP

SMALL = dict(transforms=3, hidden_features=(16, 16))
FACTORIES = {
    "nsf_autoregressive": lambda **kw: NSF(2, tail_bound=4.0, **SMALL, **kw),
    "nsf_coupling": lambda **kw: NSF(2, coupling=True, tail_bound=4.0, **SMALL, **kw),
    "nsf_lu_random": lambda **kw: NSF(
        2, lu_linear=True, permutation="random", seed=0, **SMALL, **kw
    ),
    "maf": lambda **kw: MAF(2, **SMALL, **kw),
    "realnvp": lambda **kw: RealNVP(2, **SMALL, **kw),
}


def _flow(name, context_features=0, seed=0):
    torch.manual_seed(seed)
    flow = FACTORIES[name](context_features=context_features)
    return perturb(flow, scale=0.15, seed=seed).double().eval()


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_density_integrates_to_one_in_2d(name):
    flow = _flow(name)
    total = grid_integral(lambda x: flow.log_prob(x).exp(), bound=14.0, points=600)
    assert abs(total - 1.0) < 1e-2


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_conditional_density_integrates_to_one_for_each_context(name):
    flow = _flow(name, context_features=2)
    for context in ([0.0, 0.0], [1.5, -2.0]):
        row = torch.tensor([context], dtype=torch.float64)

        def density(x, row=row):
            return flow.log_prob(x, row.expand(len(x), 2)).exp()

        total = grid_integral(density, bound=14.0, points=600)
        assert abs(total - 1.0) < 1e-2


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_sample_and_log_prob_is_consistent_and_reparameterised(name):
    flow = _flow(name, context_features=2)
    context = torch.randn(3, 2, dtype=torch.float64)
    samples, log_prob = flow.sample_and_log_prob(4, context)
    assert samples.shape == (4, 3, 2) and log_prob.shape == (4, 3)
    expected = flow.log_prob(samples.reshape(12, 2), context.repeat(4, 1)).reshape(4, 3)
    torch.testing.assert_close(log_prob, expected, atol=1e-8, rtol=1e-8)
    # Reverse-KL style loss: gradients reach the conditioner parameters through the samples.
    (samples.square().sum() - log_prob.sum()).backward()
    grads = [p.grad for p in flow.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_sampling_is_reproducible_and_follows_context():
    flow = _flow("nsf_autoregressive", context_features=2)
    context = torch.randn(2, 2, dtype=torch.float64)
    a = flow.sample(5, context, generator=torch.Generator().manual_seed(3))
    b = flow.sample(5, context, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert a.shape == (5, 2, 2)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_inputs_far_outside_the_tail_bound_are_finite(name):
    flow = _flow(name)
    x = torch.tensor([[1e4, -1e4], [-50.0, 30.0], [0.0, 1e3]], dtype=torch.float64)
    x.requires_grad_(True)
    log_prob = flow.log_prob(x)
    assert torch.isfinite(log_prob).all()
    log_prob.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in flow.parameters() if p.grad is not None)


def test_bad_inputs_give_clear_errors():
    flow = NSF(3, **SMALL)
    with pytest.raises(ValueError, match=r"inputs must have shape \(batch, 3\), got \(4, 2\)"):
        flow.log_prob(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="NaN or inf"):
        flow.log_prob(torch.tensor([[0.0, float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="NaN or inf"):
        flow.log_prob(torch.tensor([[0.0, float("inf"), 1.0]]))
    with pytest.raises(TypeError, match=r"inputs must be a torch\.Tensor"):
        flow.log_prob([[0.0, 1.0, 2.0]])
    conditional = NSF(3, 2, **SMALL)
    with pytest.raises(ValueError, match="context must have 4 rows"):
        conditional.log_prob(torch.zeros(4, 3), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="context is required"):
        conditional.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="num_samples"):
        flow.sample(2.5)
    with pytest.raises(ValueError, match="features"):
        NSF(0)
    with pytest.raises(ValueError, match="permutation"):
        NSF(3, permutation="sideways")
    with pytest.raises(ValueError, match="base must have 3 features"):
        NSF(3, base=StudentT(2))


def test_embedding_network_transforms_the_context():
    embedding = nn.Sequential(nn.Linear(5, 4), nn.Tanh())
    flow = NSF(2, 4, embedding=embedding, **SMALL)
    perturb(flow)
    x, context = torch.randn(6, 2), torch.randn(6, 5)
    flow.log_prob(x, context).sum().backward()
    assert embedding[0].weight.grad is not None and embedding[0].weight.grad.abs().sum() > 0
    assert flow.sample(3, context).shape == (3, 6, 2)


@pytest.mark.parametrize("name", ["nsf_autoregressive", "nsf_coupling", "realnvp"])
def test_flow_learns_a_correlated_gaussian(name):
    """Maximum likelihood reaches the true entropy of a known density (held-out data)."""
    torch.manual_seed(0)
    covariance = torch.tensor([[1.0, 0.8], [0.8, 1.0]])
    target = torch.distributions.MultivariateNormal(torch.tensor([1.0, -1.0]), covariance)
    train, test = target.sample((4000,)), target.sample((4000,))
    flow = FACTORIES[name]()
    optimizer = torch.optim.Adam(flow.parameters(), lr=3e-3)
    for _ in range(400):
        batch = train[torch.randint(len(train), (256,))]
        loss = -flow.log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        held_out = flow.log_prob(test).mean().item()
    assert held_out == pytest.approx(target.log_prob(test).mean().item(), abs=0.05)


def test_student_t_base_flow_integrates_to_one():
    torch.manual_seed(0)
    flow = perturb(NSF(2, base=StudentT(2, df=[3.0, 30.0]), **SMALL), scale=0.2).double().eval()
    total = grid_integral(lambda x: flow.log_prob(x).exp(), bound=60.0, points=1200)
    # Tail mass beyond |x| = 60 of a t(3) marginal is about 1e-4.
    assert abs(total - 1.0) < 1e-2


def test_flow_is_a_plain_module():
    flow = Flow(NSF(2, **SMALL).transform, StudentT(2))
    assert flow.features == 2 and flow.event_shape == (2,)
    assert math.isfinite(float(flow.log_prob(torch.zeros(1, 2)).detach()))


@pytest.mark.parametrize("name", ["nsf_coupling", "maf"])
def test_chunked_evaluation_gives_the_same_numbers(name):
    flow = _flow(name, context_features=3)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(50, 2, generator=generator, dtype=torch.float64)
    context = torch.randn(50, 3, generator=generator, dtype=torch.float64)
    full = flow.log_prob(x, context)
    for chunk_size in (7, 50, 64):
        torch.testing.assert_close(flow.log_prob(x, context, chunk_size=chunk_size), full)

    def draws(**options):
        seeded = torch.Generator().manual_seed(4)
        return flow.sample_and_log_prob(6, context[:5], generator=seeded, **options)

    samples, log_prob = draws()
    chunked_samples, chunked_log_prob = draws(chunk_size=4)
    assert chunked_samples.shape == (6, 5, 2) and chunked_log_prob.shape == (6, 5)
    torch.testing.assert_close(chunked_samples, samples)
    torch.testing.assert_close(chunked_log_prob, log_prob)
    seeded = torch.Generator().manual_seed(4)
    torch.testing.assert_close(flow.sample(6, context[:5], generator=seeded, chunk_size=4), samples)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            flow.log_prob(x, context, chunk_size=bad)


@pytest.mark.parametrize("coupling", [False, True])
def test_factories_take_a_map_object_equal_to_their_shorthands(coupling):
    from normflows_sci.transforms import AffineMap, RQSplineMap

    def log_prob(factory, **kw):
        torch.manual_seed(0)
        flow = perturb(factory(3, transforms=2, hidden_features=(8,), **kw), seed=1)
        return flow.log_prob(torch.linspace(-2, 2, 12).view(4, 3))

    spline = RQSplineMap(bins=4, tail_bound=3.0, min_derivative=1e-2)
    shorthand = log_prob(NSF, coupling=coupling, bins=4, tail_bound=3.0, min_derivative=1e-2)
    torch.testing.assert_close(
        log_prob(NSF, coupling=coupling, map=spline), shorthand, rtol=0, atol=0
    )
    affine = RealNVP if coupling else MAF
    torch.testing.assert_close(
        log_prob(affine, map=AffineMap(2.0)), log_prob(affine, max_log_scale=2.0), rtol=0, atol=0
    )
    spline_maf = log_prob(MAF, map=spline)  # any map in any factory
    torch.testing.assert_close(spline_maf, log_prob(NSF, map=spline), rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"not next to map=: got \['bins'\]"):
        NSF(3, map=spline, bins=8)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['hiden_features'\]"):
        NSF(3, hiden_features=(8,))
    with pytest.raises(TypeError, match="circular counterpart"):
        NSF(2, map=AffineMap(), coupling=True, circular=[True, False])
