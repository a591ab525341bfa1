"""Boltzmann-generator training: reverse KL, forward KL, mixtures, path gradients, stability."""

from __future__ import annotations

import math

import pytest
import torch

from normflows_sci.energies import Energy
from normflows_sci.flows import NSF, RealNVP
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
