"""Base distributions: normalisation, agreement with scipy, sampling, reproducibility."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from tests_helpers import grid_integral, perturb

from conftest import DISTRIBUTIONS
from normflows_sci.distributions import (
    DiagNormal,
    Distribution,
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


# ---------------------------------------------------------------- registry properties
# Every distribution registered in conftest.DISTRIBUTIONS.


@pytest.fixture(params=sorted(DISTRIBUTIONS))
def distribution_name(request):
    return request.param


def _expected_shape_message(event_shape, received) -> str:
    expected = ", ".join(["batch", *map(str, event_shape)])
    return re.escape(f"inputs must have shape ({expected}), got {tuple(received)}")


def test_log_prob_rejects_inputs_of_the_wrong_event_shape(distribution_name):
    """The attack: StandardNormal(2).log_prob on (N, 3) used to return a number (the density of
    a 3-D point); every distribution now checks the event shape before any arithmetic."""
    distribution = DISTRIBUTIONS[distribution_name]()
    shape = tuple(distribution.event_shape)
    wider = (5, *shape[:-1], shape[-1] + 1)
    narrower = (5, *shape[:-1], shape[-1] - 1) if shape[-1] > 1 else (5, *shape[:-1], 2)
    for bad in (wider, narrower, shape, (5, 1, *shape)):  # width, no batch dim, extra dim
        with pytest.raises(ValueError, match=_expected_shape_message(shape, bad)):
            distribution.log_prob(torch.zeros(bad))
    with pytest.raises(TypeError, match=r"inputs must be a torch\.Tensor, got list"):
        distribution.log_prob(torch.zeros(2, *shape).tolist())


def test_standard_normal_of_two_features_rejects_three():
    with pytest.raises(ValueError, match=r"inputs must have shape \(batch, 2\), got \(4, 3\)"):
        StandardNormal(2).log_prob(torch.zeros(4, 3))


def test_samples_have_the_event_shape_and_a_finite_log_prob(distribution_name):
    distribution = DISTRIBUTIONS[distribution_name]().double()
    samples = distribution.sample(64, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (64, *distribution.event_shape)
    log_prob = distribution.log_prob(samples)
    assert log_prob.shape == (64,) and torch.isfinite(log_prob).all()


def test_zero_samples_give_an_empty_batch(distribution_name):
    distribution = DISTRIBUTIONS[distribution_name]()
    empty = distribution.sample(0)
    assert empty.shape == (0, *distribution.event_shape)
    assert distribution.log_prob(empty).shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_samples_and_log_prob_follow_the_module_dtype_and_device(distribution_name, dtype, device):
    distribution = DISTRIBUTIONS[distribution_name]().to(device=device, dtype=dtype)
    samples = distribution.sample(8)
    assert samples.dtype == dtype and samples.device.type == device.type
    log_prob = distribution.log_prob(samples)
    assert log_prob.dtype == dtype and log_prob.device.type == device.type


def test_nflows_adapter_draws_one_sample_per_context_row():
    """With a context it drew one sample per context row whatever num_samples said: asked for 5
    samples under 3 context rows it returned 3."""
    import nflows.distributions

    from normflows_sci.interop.nflows import NflowsDistribution

    base = NflowsDistribution(nflows.distributions.StandardNormal([2]))
    assert base.sample(3, torch.zeros(3, 4)).shape == (3, 2)
    with pytest.raises(ValueError, match=r"context must have num_samples=5 rows .*got 3"):
        base.sample(5, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="num_samples must be a non-negative integer, got -1"):
        base.sample(-1)


def test_a_subclass_overriding_log_prob_gets_the_shape_check():
    """Subclasses written against the older contract (overriding ``log_prob``) are checked too,
    and one that extends a concrete base through ``super().log_prob`` does not recurse."""

    class Uniform(Distribution):
        def log_prob(self, inputs, context=None):
            return torch.zeros(inputs.shape[0])

        def _sample(self, num_samples, generator):
            return torch.rand(num_samples, 2, generator=generator)

    class Shifted(StandardNormal):
        def log_prob(self, inputs, context=None):
            return super().log_prob(inputs - 1.0, context)

    assert Uniform(2).log_prob(torch.zeros(3, 2)).shape == (3,)
    with pytest.raises(ValueError, match=_expected_shape_message((2,), (3, 5))):
        Uniform(2).log_prob(torch.zeros(3, 5))
    torch.testing.assert_close(
        Shifted(2).log_prob(torch.ones(1, 2)), torch.tensor([-math.log(2 * math.pi)])
    )
    with pytest.raises(ValueError, match=_expected_shape_message((2,), (1, 3))):
        Shifted(2).log_prob(torch.ones(1, 3))
