"""Base distributions: normalisation, agreement with scipy, sampling, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from tests_helpers import grid_integral, perturb

from normflows_sci.distributions import (
    DiagNormal,
    GaussianMixture,
    StandardNormal,
    StudentT,
    TailAdaptiveBase,
)


def _make(name):
    if name == "standard_normal":
        return StandardNormal(2)
    if name == "diag_normal":
        return perturb(DiagNormal(2), scale=0.5)
    if name == "gaussian_mixture":
        return perturb(GaussianMixture(2, components=3, seed=0), scale=0.5)
    raise KeyError(name)


@pytest.mark.parametrize("name", ["standard_normal", "diag_normal", "gaussian_mixture"])
def test_density_integrates_to_one_in_2d(name):
    distribution = _make(name).double()
    total = grid_integral(lambda x: distribution.log_prob(x).exp(), bound=12.0, points=500)
    assert abs(total - 1.0) < 1e-3


def test_student_t_matches_scipy_and_integrates_to_one():
    base = StudentT(3, df=[1.5, 4.0, 30.0]).double()
    with torch.no_grad():
        base.loc.copy_(torch.tensor([0.5, -1.0, 0.0]))
        base.log_scale.copy_(torch.tensor([0.0, 0.3, -0.5]))
    x = torch.randn(50, 3, dtype=torch.float64) * 3
    dfs = base.df.detach().numpy()  # the float32-initialised parameter, exactly
    torch.testing.assert_close(base.df.detach(), torch.tensor([1.5, 4.0, 30.0]).double())
    expected = sum(
        stats.t.logpdf(x[:, i].numpy(), df=df, loc=loc, scale=scale)
        for i, (df, loc, scale) in enumerate(zip(dfs, [0.5, -1.0, 0.0], np.exp([0.0, 0.3, -0.5])))
    )
    torch.testing.assert_close(base.log_prob(x), torch.as_tensor(expected), atol=1e-7, rtol=1e-7)
    one_dim = StudentT(1, df=2.5).double()
    total, _ = integrate.quad(
        lambda v: float(one_dim.log_prob(torch.tensor([[v]], dtype=torch.float64)).exp().detach()),
        -np.inf,
        np.inf,
    )
    assert abs(total - 1.0) < 1e-6


def test_student_t_samples_follow_the_distribution_and_reparameterise_df():
    base = StudentT(2, df=[2.0, 8.0])
    samples = base.sample(20000, generator=torch.Generator().manual_seed(0))
    for i, df in enumerate([2.0, 8.0]):
        assert stats.kstest(samples[:, i].detach().numpy(), stats.t(df).cdf).pvalue > 1e-3
    samples.abs().mean().backward()
    assert torch.isfinite(base.raw_df.grad).all() and (base.raw_df.grad != 0).all()


def test_gaussian_mixture_sample_moments():
    mixture = GaussianMixture(2, components=2, seed=1)
    with torch.no_grad():
        mixture.logits.copy_(torch.tensor([0.0, np.log(3.0)]))
        mixture.means.copy_(torch.tensor([[-4.0, 0.0], [4.0, 1.0]]))
    samples = mixture.sample(40000, generator=torch.Generator().manual_seed(0)).detach()
    assert abs((samples[:, 0] > 0).float().mean().item() - 0.75) < 0.01
    torch.testing.assert_close(samples.mean(0), torch.tensor([2.0, 0.75]), atol=0.05, rtol=0)


@pytest.mark.parametrize(
    "base",
    [StandardNormal(3), DiagNormal(3), GaussianMixture(3, seed=0), StudentT(3)],
    ids=lambda b: type(b).__name__,
)
def test_sampling_is_reproducible_with_a_generator(base, device):
    base = base.to(device)
    first = base.sample(5, generator=torch.Generator(device).manual_seed(7))
    second = base.sample(5, generator=torch.Generator(device).manual_seed(7))
    assert first.shape == (5, 3) and first.device.type == device.type
    torch.testing.assert_close(first, second)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_samples"):
        StandardNormal(2).sample(-1)
    with pytest.raises(ValueError, match="df"):
        StudentT(2, df=0.0)
    with pytest.raises(ValueError, match="event_shape"):
        StandardNormal(0)


def test_tail_adaptive_base_mixes_gaussian_and_student_t_marginals():
    base = TailAdaptiveBase([None, 3.0, None]).double()
    x = torch.randn(20, 3, dtype=torch.float64) * 2
    expected = (
        stats.norm.logpdf(x[:, 0].numpy())
        + stats.t.logpdf(x[:, 1].numpy(), df=float(base.df[0].detach()))
        + stats.norm.logpdf(x[:, 2].numpy())
    )
    torch.testing.assert_close(base.log_prob(x), torch.as_tensor(expected), atol=1e-7, rtol=1e-7)
    samples = base.sample(20000, generator=torch.Generator().manual_seed(0)).detach()
    assert (
        stats.kstest(samples[:, 1].numpy(), stats.t(float(base.df[0].detach())).cdf).pvalue > 1e-3
    )
    assert stats.kstest(samples[:, 2].numpy(), stats.norm.cdf).pvalue > 1e-3
    two_d = TailAdaptiveBase([2.5, None]).double()
    total = grid_integral(lambda v: two_d.log_prob(v).exp(), bound=200.0, points=2000)
    assert abs(total - 1.0) < 1e-2
