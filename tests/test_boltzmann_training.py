"""Boltzmann-generator training: reverse KL, forward KL, mixtures, path gradients, stability."""

from __future__ import annotations

import math

import pytest
import torch
from tests_helpers import WithoutDivergenceHook

from normflows_sci.energies import DW4, Energy
from normflows_sci.flows import NSF, RealNVP, particle_flow
from normflows_sci.flows.cnf import divergence_estimator
from normflows_sci.samplers import importance_sample
from normflows_sci.training import fit_boltzmann, regularize_energy, reverse_kl_loss


class CorrelatedGaussian(Energy):
    """u = x^T A x / 2 + 1 with a fixed correlated precision; log Z known."""

    def __init__(self):
        super().__init__(2)
        cov = (
            torch.tensor([[1.0, 0.8], [0.8, 1.0]])
            * torch.tensor([2.0, 0.5]).outer(torch.tensor([2.0, 0.5])).sqrt()
        )
        self.register_buffer("precision", torch.linalg.inv(cov))
        self.register_buffer("mean", torch.tensor([1.0, -0.5]))
        self.cov = cov
        self.log_z = math.log(2 * math.pi) + 0.5 * math.log(float(torch.linalg.det(cov))) - 1.0

    def _energy(self, x):
        d = x - self.mean.to(x)
        return 0.5 * ((d @ self.precision.to(x)) * d).sum(-1) + 1.0


def small_flow():
    torch.manual_seed(0)
    return RealNVP(2, transforms=4, hidden_features=(32,))


@pytest.mark.parametrize("path_gradient", [False, True])
def test_reverse_kl_learns_a_gaussian_and_recovers_log_z(path_gradient):
    target = CorrelatedGaussian()
    flow = small_flow()
    history = fit_boltzmann(
        flow,
        target,
        steps=400,
        batch_size=256,
        learning_rate=5e-3,
        seed=0,
        path_gradient=path_gradient,
        progress=False,
    )
    assert history["ess_fraction"][-1] > 0.9
    assert history["reverse_kl"][-1] < history["reverse_kl"][0]
    result = importance_sample(flow, target, 20_000, generator=torch.Generator().manual_seed(1))
    assert result.ess_fraction > 0.9
    assert abs(result.log_z - target.log_z) < 4 * result.log_z_stderr + 1e-3


def test_forward_and_mixed_training_on_data():
    target = CorrelatedGaussian()
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(4000, 2, generator=generator) @ torch.linalg.cholesky(target.cov).T
    data = data + target.mean
    flow = small_flow()
    history = fit_boltzmann(
        flow, target, data, steps=300, learning_rate=5e-3, seed=0, progress=False
    )
    assert math.isnan(history["reverse_kl"][-1])
    exact_nll = float(target.energy(data).mean()) + target.log_z
    assert abs(history["forward_kl"][-1] - exact_nll) < 0.15
    mixed = fit_boltzmann(
        flow,
        target,
        data,
        steps=100,
        forward_weight=1.0,
        reverse_weight=1.0,
        seed=0,
        learning_rate=1e-3,
        progress=False,
    )
    assert mixed["ess_fraction"][-1] > 0.8


def test_same_seed_same_history():
    target = CorrelatedGaussian()
    runs = []
    for _ in range(2):
        flow = small_flow()
        runs.append(fit_boltzmann(flow, target, steps=20, seed=5, progress=False, log_every=5))
    assert runs[0]["loss"] == runs[1]["loss"]


class Clash(Energy):
    """Infinite energy for x1 > 1, huge energies near it: training must stay finite."""

    def __init__(self):
        super().__init__(2)

    def _energy(self, x):
        u = 0.5 * (x**2).sum(-1) + 1e12 * (x[:, 0] > 0.8)
        return torch.where(x[:, 0] > 1.0, math.inf, u)


def test_huge_and_infinite_energies_do_not_break_training():
    flow = small_flow()
    history = fit_boltzmann(flow, Clash(), steps=50, seed=0, progress=False, log_every=1)
    assert all(math.isfinite(v) for v in history["loss"])
    assert max(history["nonfinite"]) > 0


def test_regularize_energy_is_continuous_and_monotone():
    u = torch.linspace(0, 1e6, 10001, dtype=torch.float64, requires_grad=True)
    r = regularize_energy(u, cap=1e3)
    (grad,) = torch.autograd.grad(r.sum(), u)
    assert torch.all(grad > 0) and torch.all(grad <= 1)
    assert torch.all(r.diff() > 0)
    assert float(regularize_energy(torch.tensor(1e3 + 1e-9), 1e3)) == pytest.approx(1e3)
    assert torch.equal(regularize_energy(u, None), u)


def test_path_gradient_matches_standard_gradient_in_expectation():
    # Both estimators are unbiased for the same gradient: with many samples they agree.
    target = CorrelatedGaussian().double()
    flow = NSF(2, transforms=2, hidden_features=(8,), coupling=True).double()
    torch.manual_seed(3)
    for p in flow.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    grads = []
    for path in (False, True):
        flow.zero_grad()
        loss, _ = reverse_kl_loss(
            flow, target, 200_000, path_gradient=path, generator=torch.Generator().manual_seed(0)
        )
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in flow.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=0.02 * float(grads[0].abs().max()))


def test_bad_arguments():
    flow, target = small_flow(), CorrelatedGaussian()
    with pytest.raises(ValueError, match="needs data"):
        fit_boltzmann(flow, target, forward_weight=1.0, progress=False)
    with pytest.raises(ValueError, match="data must be a tensor of shape"):
        fit_boltzmann(flow, target, torch.zeros(10, 3), progress=False)
    with pytest.raises(ValueError, match="NaN"):
        fit_boltzmann(flow, target, torch.full((10, 2), math.nan), progress=False)
    with pytest.raises(ValueError, match="not both zero"):
        fit_boltzmann(flow, target, forward_weight=0.0, reverse_weight=0.0, progress=False)
    with pytest.raises(ValueError, match="steps"):
        fit_boltzmann(flow, target, steps=0, progress=False)
    with pytest.raises(ValueError, match="schedule"):
        fit_boltzmann(flow, target, schedule="plateau", progress=False)


# ---------------------------------------------------------------- Hutchinson training of CNFs


def _small_particle_flow():
    return particle_flow(4, 2, hidden_features=8, layers=1, solver="rk4", steps=3, seed=0)


class _Recording:
    """DW4's log-density that records the flow's divergence setting at every call (the trainer
    calls it inside the loss) and can fail on a given call."""

    def __init__(self, flow, fail_at: int | None = None):
        self.flow, self.fail_at, self.seen, self.target = flow, fail_at, [], DW4()

    def __call__(self, x):
        transform = self.flow.transform
        self.seen.append((transform.divergence, transform.probe_generator is not None))
        if self.fail_at is not None and len(self.seen) >= self.fail_at:
            raise RuntimeError("energy evaluation failed")
        return self.target.log_prob(x)


def test_fit_boltzmann_hutchinson_switches_for_the_loss_and_restores_also_on_error():
    flow = _small_particle_flow()
    target = _Recording(flow)
    options = dict(steps=3, batch_size=8, seed=0, progress=False, log_every=1)
    history = fit_boltzmann(flow, target, divergence="hutchinson", **options)
    # Every loss evaluation ran with seeded Hutchinson probes; the flow is exact again after.
    assert target.seen == [("hutchinson", True)] * 3
    assert all(math.isnan(v) for v in history["ess_fraction"])  # biased with a noisy log q
    assert flow.transform.divergence == "exact" and flow.transform.probe_generator is None
    # Same seed, exact divergence: the first batch draws the same samples (the latent comes
    # before the probes), so the reverse KL differs by the probes' noise alone.
    exact = fit_boltzmann(_small_particle_flow(), DW4(), **options)
    assert history["reverse_kl"][0] != exact["reverse_kl"][0]
    assert all(0 < v <= 1 for v in exact["ess_fraction"])
    assert abs(history["reverse_kl"][0] - exact["reverse_kl"][0]) < 0.1 * abs(
        exact["reverse_kl"][0]
    )
    failing = _Recording(flow, fail_at=2)
    with pytest.raises(RuntimeError, match="energy evaluation failed"):
        fit_boltzmann(flow, failing, divergence="hutchinson", **options)
    assert failing.seen == [("hutchinson", True)] * 2
    assert flow.transform.divergence == "exact" and flow.transform.probe_generator is None


def test_hutchinson_reverse_kl_loss_averages_to_the_exact_loss():
    """The same samples (one sampling seed), fresh probes per call: the losses differ, and their
    mean over the probes is the exact loss within its standard error."""
    flow = particle_flow(3, 2, hidden_features=8, layers=1, solver="rk4", steps=2, seed=0)
    flow = flow.double()
    with torch.no_grad():
        for parameter in flow.parameters():  # a field with a real divergence
            parameter.add_(
                0.3
                * torch.randn(
                    parameter.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64
                )
            )
    target = lambda x: -0.5 * x.square().sum(-1)  # noqa: E731
    with torch.no_grad():
        exact, _ = reverse_kl_loss(flow, target, 32, generator=torch.Generator().manual_seed(0))
        draws = []
        for seed in range(100):
            probes = torch.Generator().manual_seed(100 + seed)
            with divergence_estimator(flow, "hutchinson", generator=probes):
                loss, _ = reverse_kl_loss(
                    flow, target, 32, generator=torch.Generator().manual_seed(0)
                )
            draws.append(float(loss))
    draws = torch.tensor(draws, dtype=torch.float64)
    stderr = float(draws.std()) / math.sqrt(len(draws))
    assert float(draws.std()) > 1e-4  # the probes matter
    assert abs(float(draws.mean()) - float(exact)) < 4 * stderr


def test_hutchinson_reverse_kl_fine_tune_lowers_the_exact_reverse_kl_on_dw4():
    """An untrained particle flow (its near-zero field: q is the base) fine-tuned on DW4's
    energy with the Hutchinson divergence; scored with the exact one."""
    flow, target = _small_particle_flow(), DW4()

    def exact_reverse_kl():
        with torch.no_grad():
            x, log_q = flow.sample_and_log_prob(512, generator=torch.Generator().manual_seed(7))
            terms = target.energy(x) + log_q
        return float(terms.mean()), float(terms.std()) / math.sqrt(len(terms))

    before, before_se = exact_reverse_kl()
    fit_boltzmann(
        flow, target, steps=12, batch_size=32, learning_rate=5e-2, seed=0,
        divergence="hutchinson", progress=False,
    )  # fmt: skip
    after, after_se = exact_reverse_kl()
    assert flow.transform.divergence == "exact"
    assert before - after > 10 * math.hypot(before_se, after_se), (before, after)


class _LogProbOf(torch.nn.Module):
    """``flow.log_prob`` as a forward, for ``functional_call`` with detached parameters."""

    def __init__(self, flow):
        super().__init__()
        self.flow = flow

    def forward(self, x):
        return self.flow.log_prob(x)


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_path_gradient_of_a_checkpointed_particle_flow_is_the_frozen_parameter_gradient(
    divergence,
):
    """Path gradients through the EGNN's checkpointed divergence (whose backward recomputes the
    field with the live parameters) against the definition: ``log q`` with the parameters
    swapped for detached copies, on the same flow without hooks, same samples and probes."""
    target = DW4().double()
    flow = particle_flow(4, 2, hidden_features=8, layers=1, solver="rk4", steps=2, seed=0)
    flow = flow.double()
    with torch.no_grad():
        noise = torch.Generator().manual_seed(1)
        for parameter in flow.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=noise, dtype=torch.float64))
    plain = particle_flow(4, 2, hidden_features=8, layers=1, solver="rk4", steps=2).double()
    plain.load_state_dict(flow.state_dict())
    plain.transform.velocity = WithoutDivergenceHook(plain.transform.velocity)
    seeded = dict(generator=torch.Generator().manual_seed(2))
    with divergence_estimator(flow, divergence, **seeded):
        loss, _ = reverse_kl_loss(
            flow, target, 16, path_gradient=True, generator=torch.Generator().manual_seed(0)
        )
    grads = torch.autograd.grad(loss, list(flow.parameters()))
    x = plain.sample(16, generator=torch.Generator().manual_seed(0))
    wrapper = _LogProbOf(plain)
    frozen = {name: p.detach() for name, p in wrapper.named_parameters()}
    seeded = dict(generator=torch.Generator().manual_seed(2))
    with divergence_estimator(plain, divergence, **seeded):
        log_q = torch.func.functional_call(wrapper, frozen, (x,))
    expected = torch.autograd.grad((target.energy(x) + log_q).mean(), list(plain.parameters()))
    torch.testing.assert_close(loss.detach(), (target.energy(x) + log_q).mean().detach())
    for mine, theirs in zip(grads, expected):
        torch.testing.assert_close(mine, theirs, atol=1e-9, rtol=1e-7)


def test_divergence_is_checked_where_it_is_owned():
    flow = _small_particle_flow()
    with pytest.raises(ValueError, match="divergence must be one of"):
        fit_boltzmann(flow, DW4(), divergence="skilling", progress=False)
    with pytest.raises(TypeError, match="contains no ODETransform"):
        fit_boltzmann(
            small_flow(), CorrelatedGaussian(), divergence="hutchinson", steps=1, progress=False
        )
