"""Continuous normalizing flows: exact densities of analytic fields, solvers, Hutchinson, flow
matching (plain and minibatch OT), and use as a proposal."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.linalg import expm
from tests_helpers import grid_integral
from torch import nn

from normflows_sci.flows.cnf import (
    CNF,
    ContinuousFlow,
    ODETransform,
    VelocityMLP,
    divergence_estimator,
)
from normflows_sci.samplers import IndependentMH, importance_sample
from normflows_sci.training.flow_matching import (
    fit_flow_matching,
    flow_matching_loss,
    ot_pairing,
)

A = torch.tensor([[0.3, -1.1], [0.7, -0.4]], dtype=torch.float64)


class LinearVelocity(nn.Module):
    """``v(x, t) = A x``: the time-1 map is ``expm(A)``, so ``x(1) = expm(A) z ~ N(0, M M^T)``."""

    def __init__(self, matrix):
        super().__init__()
        self.register_buffer("matrix", matrix.clone())

    def forward(self, x, t, context=None):
        return x @ self.matrix.T


def _linear_cnf(**options):
    return CNF(2, velocity=LinearVelocity(A), **options).double()


def _exact_gaussian():
    m = torch.as_tensor(expm(A.numpy()))
    return torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), m @ m.T)


def _points(n=64, seed=0):
    return 1.5 * torch.randn(
        n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )


def test_exact_divergence_matches_analytic_density_float64():
    x = _points()
    flow = _linear_cnf(rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        log_prob = flow.log_prob(x)
    torch.testing.assert_close(log_prob, _exact_gaussian().log_prob(x), atol=1e-8, rtol=0)
    # logabsdet is exactly -trace(A) for a linear field; latent is expm(-A) x.
    z, logabsdet = flow.transform(x)
    torch.testing.assert_close(logabsdet, torch.full_like(logabsdet, -float(A.trace())))
    torch.testing.assert_close(z, x @ torch.as_tensor(expm(-A.numpy())).T, atol=1e-9, rtol=0)


def test_time_dependent_field_matches_analytic_density():
    # v = a(t) x with a(t) = 2t (1-D in each coordinate): x(1) = e z, log p = log N(x; 0, e^2) per dim.
    class Scaling(nn.Module):
        def forward(self, x, t, context=None):
            return 2 * t * x

    flow = CNF(2, velocity=Scaling(), rtol=1e-10, atol=1e-10).double()
    x = _points(16)
    scale = torch.tensor(math.e, dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, scale).log_prob(x).sum(1)
    torch.testing.assert_close(flow.log_prob(x).detach(), expected, atol=1e-8, rtol=0)


def test_solver_tolerance_controls_the_error():
    x, exact = _points(), _exact_gaussian().log_prob(_points())
    errors = []
    for tol in (1e-2, 1e-4, 1e-6, 1e-8):
        flow = _linear_cnf(rtol=tol, atol=tol)
        with torch.no_grad():
            errors.append(float((flow.log_prob(x) - exact).abs().max()))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > 1e-5 and errors[-1] < 1e-7, errors
    rk4_errors = []
    for steps in (2, 4, 8, 16):
        flow = _linear_cnf(solver="rk4", steps=steps)
        with torch.no_grad():
            rk4_errors.append(float((flow.log_prob(x) - exact).abs().max()))
    # Fourth order: halving the step divides the error by about 16.
    ratios = [a / b for a, b in zip(rk4_errors, rk4_errors[1:])]
    assert all(10 < r < 25 for r in ratios[1:]), rk4_errors


def test_sample_and_log_prob_is_consistent_and_reparameterised():
    torch.manual_seed(0)
    flow = CNF(2, context_features=1, hidden_features=(16,), rtol=1e-9, atol=1e-9).double()
    context = torch.tensor([[0.0], [1.0], [-1.0]], dtype=torch.float64)
    samples, log_prob = flow.sample_and_log_prob(4, context)
    assert samples.shape == (4, 3, 2) and log_prob.shape == (4, 3)
    expected = flow.log_prob(samples.reshape(12, 2), context.repeat(4, 1)).reshape(4, 3)
    torch.testing.assert_close(log_prob, expected, atol=1e-6, rtol=0)
    (samples.square().sum() - log_prob.sum()).backward()
    grads = [p.grad for p in flow.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    plain = flow.sample(4, context, generator=torch.Generator().manual_seed(3))
    assert plain.shape == (4, 3, 2)


class SuppliedDivergence(LinearVelocity):
    """``v = A x`` that supplies its divergence ``tr A`` itself (or declines with ``None``) and
    records the calls and the manifold it was offered."""

    def __init__(self, matrix, decline=False):
        super().__init__(matrix)
        self.decline, self.calls = decline, []

    def value_and_divergence(self, x, t, context=None, manifold=None):
        self.calls.append(manifold)
        if self.decline:
            return None
        return self(x, t, context), self.matrix.trace().expand(x.shape[0])


def test_a_field_that_supplies_its_divergence_is_used_for_the_exact_density_only():
    x = _points(8)
    exact = _exact_gaussian().log_prob(x)
    for decline in (False, True):
        field = SuppliedDivergence(A, decline=decline)
        flow = CNF(2, velocity=field, rtol=1e-10, atol=1e-10).double()
        with torch.no_grad():
            torch.testing.assert_close(flow.log_prob(x), exact, atol=1e-8, rtol=0)
        assert field.calls and all(manifold is None for manifold in field.calls)
    # With gradients (training) the supplied divergence keeps its graph too.
    field = SuppliedDivergence(A)
    flow = CNF(2, velocity=field, solver="rk4", steps=4).double()
    points = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(flow.log_prob(points).sum(), points)
    plain = CNF(2, velocity=LinearVelocity(A), solver="rk4", steps=4).double()
    reference = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(plain.log_prob(reference).sum(), reference)
    torch.testing.assert_close(grad, expected, atol=1e-12, rtol=0)
    # Hutchinson's estimate never asks the field.
    field = SuppliedDivergence(A)
    flow = CNF(2, velocity=field, divergence="hutchinson", solver="rk4", steps=2).double()
    with torch.no_grad():
        flow.log_prob(x)
    assert not field.calls


def test_hutchinson_estimator_is_unbiased():
    torch.manual_seed(1)
    flow = CNF(2, hidden_features=(16, 16), solver="rk4", steps=6, seed=1).double()
    x = _points(3, seed=2)
    with torch.no_grad():
        exact = flow.log_prob(x)
        flow.transform.divergence = "hutchinson"
        for noise in ("rademacher", "gaussian"):
            flow.transform.noise = noise
            draws = flow.log_prob(x.repeat(4000, 1)).reshape(4000, 3)
            mean, se = draws.mean(0), draws.std(0) / math.sqrt(4000)
            assert bool((draws.std(0) > 1e-4).all())  # it really is random
            assert bool(((mean - exact).abs() < 4 * se + 1e-9).all()), (mean, exact, se)


def test_divergence_estimator_switches_every_ode_transform_and_restores_them_on_error():
    first, second = CNF(2, hidden_features=(8,)), CNF(2, hidden_features=(8,))
    own = torch.Generator().manual_seed(0)
    second.transform.divergence, second.transform.probe_generator = "hutchinson", own
    both, probes = nn.ModuleList([first, second]), torch.Generator().manual_seed(1)
    with divergence_estimator(both, "hutchinson", generator=probes) as switched:
        assert switched == [first.transform, second.transform]
        assert all(t.divergence == "hutchinson" and t.probe_generator is probes for t in switched)
    with pytest.raises(KeyError), divergence_estimator(both, "exact"):
        assert first.transform.divergence == second.transform.divergence == "exact"
        raise KeyError("inside the block")
    for transform, kind, generator in ((first, "exact", None), (second, "hutchinson", own)):
        assert transform.transform.divergence == kind
        assert transform.transform.probe_generator is generator
    # Checked before anything is switched; one validation path, also for direct assignment.
    with (
        pytest.raises(ValueError, match="divergence must be one of"),
        divergence_estimator(both, "skilling"),
    ):
        pass
    with pytest.raises(ValueError, match=r"divergence must be one of .* got 'Exact'"):
        first.transform.divergence = "Exact"
    assert first.transform.divergence == "exact"
    with (
        pytest.raises(TypeError, match="contains no ODETransform"),
        divergence_estimator(nn.Linear(2, 2), "exact"),
    ):
        pass


def test_transforms_pickled_with_a_plain_divergence_attribute_still_load():
    import pickle

    flow = CNF(2, hidden_features=(8,), solver="rk4", steps=2)
    state = dict(flow.transform.__dict__)
    del state["_divergence_kind"], state["probe_generator"]
    state["divergence"] = "hutchinson"  # as earlier versions stored it
    old = ODETransform.__new__(ODETransform)
    old.__setstate__(state)
    assert old.divergence == "hutchinson" and old.probe_generator is None
    loaded = pickle.loads(pickle.dumps(old))
    assert loaded.divergence == "hutchinson" and "divergence" not in loaded.__dict__


def test_hutchinson_probes_are_drawn_from_the_probe_generator():
    """Seeded probes: the same estimate whatever the global generator did in between."""
    flow = CNF(2, hidden_features=(16,), solver="rk4", steps=4, seed=1).double()
    x = _points(5, seed=3)
    flow.transform.divergence = "hutchinson"
    estimates = []
    with torch.no_grad():
        for global_seed in (0, 1):
            torch.manual_seed(global_seed)
            flow.transform.probe_generator = torch.Generator().manual_seed(4)
            estimates.append(flow.log_prob(x))
        flow.transform.probe_generator = torch.Generator().manual_seed(5)
        other = flow.log_prob(x)
    torch.testing.assert_close(estimates[0], estimates[1], atol=0, rtol=0)
    assert (other - estimates[0]).abs().max() > 1e-6


def test_trained_cnf_density_integrates_to_one_in_2d():
    data = _two_moons(2048, seed=0)
    flow = CNF(2, hidden_features=(32, 32), solver="rk4", steps=12, seed=0)
    fit_flow_matching(
        flow, data, steps=150, batch_size=128, learning_rate=1e-2, seed=0, progress=False
    )
    flow = flow.double()
    total = grid_integral(lambda x: flow.log_prob(x).exp(), bound=7.0, points=120)
    assert abs(total - 1.0) < 1e-2


def _two_moons(n, seed):
    g = torch.Generator().manual_seed(seed)
    angle = math.pi * torch.rand(n, generator=g)
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
    y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
    return torch.stack([x, y], 1) + 0.08 * torch.randn(n, 2, generator=g)


def test_flow_matching_beats_a_gaussian_and_ot_pairs_cheaper():
    g = torch.Generator().manual_seed(1)
    sign = (torch.rand(3000, generator=g) < 0.5).float() * 2 - 1
    data = 0.4 * torch.randn(3000, 2, generator=g) + torch.stack([2 * sign, 0 * sign], 1)
    train, test = data[:2500], data[2500:]
    flow = CNF(2, hidden_features=(64, 64), rtol=1e-4, atol=1e-4, seed=0)
    history = fit_flow_matching(
        flow, train, steps=300, batch_size=256, ot=True, learning_rate=5e-3, seed=0, progress=False
    )
    assert len(history["loss"]) == 300 and history["loss"][-1] < history["loss"][0]
    gaussian = torch.distributions.MultivariateNormal(train.mean(0), torch.cov(train.T))
    with torch.no_grad():
        cnf_ll = float(flow.log_prob(test).mean())
    # Held-out: true density -1.66, fitted Gaussian -2.61 nats.
    assert cnf_ll > float(gaussian.log_prob(test).mean()) + 0.5

    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(128, 2, generator=g), data[:128]
    random_cost = float((x0 - x1).square().sum(1).mean())
    perm = ot_pairing(x0, x1)
    assert sorted(perm.tolist()) == list(range(128))
    ot_cost = float((x0[perm] - x1).square().sum(1).mean())
    assert ot_cost < 0.6 * random_cost
    # Exact: no pair swap improves the assignment.
    cost = torch.cdist(x1, x0[perm]).square()
    diag = cost.diagonal()
    assert bool((diag[:, None] + diag[None, :] <= cost + cost.T + 1e-4).all())


def test_conditional_flow_matching_runs_and_learns_the_context():
    g = torch.Generator().manual_seed(0)
    context = torch.randint(0, 2, (1024, 1), generator=g).float()
    data = torch.randn(1024, 2, generator=g) * 0.3 + 3 * (2 * context - 1)
    flow = CNF(2, context_features=1, hidden_features=(32, 32), solver="rk4", steps=10, seed=0)
    fit_flow_matching(
        flow, data, context=context, steps=200, learning_rate=1e-2, seed=0, progress=False
    )
    with torch.no_grad():
        draws = flow.sample(
            200, torch.tensor([[0.0], [1.0]]), generator=torch.Generator().manual_seed(1)
        )
    means = draws.mean(0)
    torch.testing.assert_close(means, torch.tensor([[-3.0, -3.0], [3.0, 3.0]]), atol=0.4, rtol=0)


def test_exact_proposal_in_importance_sampling_and_imh():
    flow = _linear_cnf(rtol=1e-10, atol=1e-10)
    target = _exact_gaussian()
    result = importance_sample(
        flow, lambda x: target.log_prob(x), 200, generator=torch.Generator().manual_seed(0)
    )
    assert result.ess_fraction > 1 - 1e-10
    assert abs(result.log_z) < 1e-7
    kernel = IndependentMH(lambda x: target.log_prob(x), flow)
    state = kernel.init(torch.zeros(50, 2, dtype=torch.float64))
    for _ in range(2):
        state, info = kernel.step(state, torch.Generator().manual_seed(1))
        assert bool(info.accepted.all())


def test_float32_and_device_follow_inputs():
    flow = CNF(3, hidden_features=(8,), seed=0)
    x = torch.randn(5, 3)
    assert flow.log_prob(x).dtype == torch.float32
    assert flow.sample(4).dtype == torch.float32
    loss = flow_matching_loss(flow, x, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is not None for p in flow.parameters())


def test_maximum_likelihood_gradients_through_the_solver():
    # Gradient of log_prob w.r.t. A of the linear field: d/dA [-log det(M M^T)/2 - ...] by autograd
    # through dopri5 matches finite differences.
    matrix = A.clone().requires_grad_(True)

    class Field(nn.Module):
        def forward(self, x, t, context=None):
            return x @ matrix.T

    flow = CNF(2, velocity=Field(), rtol=1e-10, atol=1e-10).double()
    x = _points(8)
    flow.log_prob(x).sum().backward()
    grad = matrix.grad.clone()
    numeric = torch.zeros_like(grad)
    for i in range(2):
        for j in range(2):
            shift = torch.zeros_like(A)
            shift[i, j] = 1e-6
            values = []
            for sign in (1, -1):
                m = torch.as_tensor(expm((A + sign * shift).numpy()))
                dist = torch.distributions.MultivariateNormal(
                    torch.zeros(2, dtype=A.dtype), m @ m.T
                )
                values.append(float(dist.log_prob(x).sum()))
            numeric[i, j] = (values[0] - values[1]) / 2e-6
    torch.testing.assert_close(grad, numeric, atol=1e-5, rtol=1e-5)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="solver"):
        CNF(2, solver="euler")
    with pytest.raises(ValueError, match="divergence"):
        CNF(2, divergence="skilling")
    with pytest.raises(ValueError, match="rtol"):
        CNF(2, rtol=0)
    with pytest.raises(ValueError, match="steps"):
        CNF(2, solver="rk4", steps=0)
    with pytest.raises(ValueError, match="features"):
        CNF(0)
    with pytest.raises(ValueError, match="base"):
        from normflows_sci.distributions import StandardNormal

        CNF(2, base=StandardNormal(3))
    with pytest.raises(TypeError, match="ODETransform"):
        ContinuousFlow(nn.Identity(), None)
    flow = CNF(2, hidden_features=(8,))
    with pytest.raises(ValueError, match="inputs"):
        flow.log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="context is required"):
        CNF(2, context_features=1, hidden_features=(8,)).log_prob(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="data"):
        fit_flow_matching(flow, torch.zeros(10, 3), steps=1, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        fit_flow_matching(flow, torch.zeros(10, 2), steps=1, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="ot=True"):
        fit_flow_matching(
            CNF(2, context_features=1, hidden_features=(8,)),
            torch.zeros(10, 2),
            context=torch.zeros(10, 1),
            ot=True,
            steps=1,
            progress=False,
        )
    with pytest.raises(TypeError, match="ContinuousFlow"):
        fit_flow_matching(nn.Linear(2, 2), torch.zeros(10, 2), steps=1, progress=False)
    with pytest.raises(ValueError, match="same shape"):
        ot_pairing(torch.zeros(3, 2), torch.zeros(4, 2))
    stiff = ODETransform(
        VelocityMLP(2, hidden_features=(4,)), 2, max_steps=1, rtol=1e-12, atol=1e-12
    )
    with pytest.raises(RuntimeError, match="max_steps"):
        stiff(torch.randn(4, 2))


# ---------------------------------------------------------------- Riemannian CNF / flow matching


def test_sphere_cnf_matches_analytic_density_of_the_conformal_field():
    # v = P_x e (gradient of the height h = x_3): dh/dt = 1 - h^2, div_M v = -2 h on S^2, so
    # log p(x) = -log 4 pi + 2 log cosh(atanh h) - 2 log cosh(atanh h - 1).
    from normflows_sci.manifolds import Sphere

    class Conformal(nn.Module):
        def forward(self, x, t, context=None):
            return torch.zeros_like(x) + torch.tensor([0.0, 0.0, 1.0], dtype=x.dtype)

    flow = CNF(manifold=Sphere(2), velocity=Conformal(), rtol=1e-10, atol=1e-10).double()
    x = Sphere(2).sample_uniform(
        32, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    a = torch.atanh(x[:, 2])
    expected = -math.log(4 * math.pi) + 2 * torch.cosh(a).log() - 2 * torch.cosh(a - 1).log()
    with torch.no_grad():
        torch.testing.assert_close(flow.log_prob(x), expected, atol=1e-7, rtol=0)
        samples = flow.sample(5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(samples.norm(dim=1), torch.ones(5, dtype=torch.float64))
    flow.transform.divergence = "hutchinson"  # tangent probes: unbiased Riemannian divergence
    with torch.no_grad():
        draws = flow.log_prob(x[:2].repeat(2000, 1)).reshape(2000, 2)
    se = draws.std(0) / math.sqrt(2000)
    assert bool(((draws.mean(0) - expected[:2]).abs() < 4 * se + 1e-9).all())


def test_torus_cnf_matches_analytic_density_and_sees_periodic_features():
    # v_i = sin(x_i) (read from the (cos, sin) embedding): tan(x/2) grows like e^t, div = sum cos,
    # log p(x) = -2 log 2 pi - sum_i [1 - log(1 + u_i^2) + log(1 + u_i^2 e^-2)], u = tan(x / 2).
    from normflows_sci.manifolds import Torus

    class Sine(nn.Module):
        def forward(self, features, t, context=None):
            return features[:, 2:]

    flow = CNF(manifold=Torus(2), velocity=Sine(), rtol=1e-10, atol=1e-10).double()
    x = 2.5 * (
        2 * torch.rand(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) - 1
    )
    u2 = torch.tan(x / 2).square()
    expected = -2 * math.log(2 * math.pi) - (1 - u2.log1p() + (u2 * math.exp(-2)).log1p()).sum(1)
    with torch.no_grad():
        torch.testing.assert_close(flow.log_prob(x), expected, atol=1e-7, rtol=0)


def test_riemannian_flow_matching_on_torus_and_sphere_normalised_and_better_than_uniform():
    from normflows_sci.manifolds import Sphere, Torus, VonMisesFisher
    from normflows_sci.transforms import wrap_angle

    g = torch.Generator().manual_seed(0)
    # Torus: a wrapped normal straddling the +-pi seam.
    data = wrap_angle(torch.tensor([math.pi, 0.5]) + 0.5 * torch.randn(1200, 2, generator=g))
    flow = CNF(manifold=Torus(2), hidden_features=(32, 32), solver="rk4", steps=10, seed=0)
    fit_flow_matching(
        flow, data[:1000], steps=200, learning_rate=5e-3, ot=True, seed=0, progress=False
    )
    with torch.no_grad():
        assert float(flow.log_prob(data[1000:]).mean()) > -2 * math.log(2 * math.pi) + 1.5
        draws = flow.sample(200, generator=torch.Generator().manual_seed(2))
    assert bool((draws.abs() <= math.pi).all())
    flow = flow.double()
    n, step = 80, 2 * math.pi / 80
    axis = -math.pi + step * (torch.arange(n, dtype=torch.float64) + 0.5)
    with torch.no_grad():
        total = float(flow.log_prob(torch.cartesian_prod(axis, axis)).exp().sum() * step * step)
    assert abs(total - 1.0) < 1e-2

    # Sphere: a von Mises-Fisher (true held-out log-likelihood about -1.25; uniform -2.53).
    vmf = VonMisesFisher(2, mean_direction=[0.0, 0.6, 0.8], concentration=5.0)
    data = vmf.sample(1200, generator=torch.Generator().manual_seed(0))
    flow = CNF(manifold=Sphere(2), hidden_features=(32, 32), solver="rk4", steps=10, seed=0)
    fit_flow_matching(flow, data[:1000], steps=200, learning_rate=5e-3, seed=0, progress=False)
    with torch.no_grad():
        assert float(flow.log_prob(data[1000:]).mean()) > -1.6
    flow = flow.double()
    m = 60
    theta = (torch.arange(m, dtype=torch.float64) + 0.5) * math.pi / m
    phi = (torch.arange(2 * m, dtype=torch.float64) + 0.5) * math.pi / m
    th, ph = torch.meshgrid(theta, phi, indexing="ij")
    grid = torch.stack([th.sin() * ph.cos(), th.sin() * ph.sin(), th.cos()], -1).reshape(-1, 3)
    weights = (th.sin() * (math.pi / m) ** 2).reshape(-1)
    with torch.no_grad():
        total = float((flow.log_prob(grid).exp() * weights).sum())
    assert abs(total - 1.0) < 1e-2


def test_geodesic_ot_pairing_on_the_torus_uses_wrapped_distances():
    from normflows_sci.manifolds import Torus

    x1 = torch.tensor([[3.0], [0.0]])
    x0 = torch.tensor([[-3.0], [0.5]])  # -3 is 0.28 from 3 across the seam
    assert ot_pairing(x0, x1, Torus(1)).tolist() == [0, 1]
    assert ot_pairing(x0, x1).tolist() == [1, 0]  # Euclidean cost pairs differently


def test_cnf_on_a_product_with_euclidean_factors_uses_the_product_base():
    from normflows_sci.manifolds import Euclidean, Product, ProductDistribution, Torus

    manifold = Product(Euclidean(1), Torus(1))
    flow = CNF(manifold=manifold, hidden_features=(8,), solver="rk4", steps=6, seed=0).double()
    assert isinstance(flow.base, ProductDistribution)
    assert flow.transform.geometry.flat  # R x T^1: no tangent projection
    with torch.no_grad():
        x, log_prob = flow.sample_and_log_prob(32, generator=torch.Generator().manual_seed(0))
        assert bool(manifold.contains(x).all())
        torch.testing.assert_close(flow.log_prob(x), log_prob, atol=1e-4, rtol=0)


def test_cnf_names_its_solver_settings_for_a_misspelt_keyword():
    with pytest.raises(TypeError, match=r"CNF\(\) got unexpected keyword arguments \['solvr'\]"):
        CNF(2, solvr="rk4")
    assert CNF(2, hidden_features=(8,), solver="rk4", steps=3).transform.steps == 3


def test_flow_matching_on_a_product_takes_the_geometry_of_each_factor():
    from normflows_sci.manifolds import Euclidean, Product, Torus

    manifold = Product(Euclidean(1), Torus(1))
    flow = CNF(manifold=manifold, hidden_features=(8,), solver="rk4", steps=4, seed=0)
    x1 = manifold.proj(torch.randn(32, 2, generator=torch.Generator().manual_seed(0)) * 3)
    loss = flow_matching_loss(flow, x1, ot=True, generator=torch.Generator().manual_seed(1))
    assert loss.ndim == 0 and bool(torch.isfinite(loss))
    # OT cost: squared line distance plus squared wrapped angle (3 and -3 are 0.28 apart).
    x1 = torch.tensor([[0.0, 3.0], [0.0, 0.0]])
    x0 = torch.tensor([[0.0, -3.0], [0.0, 0.5]])
    assert ot_pairing(x0, x1, manifold).tolist() == [0, 1]
