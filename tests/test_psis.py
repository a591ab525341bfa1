"""Pareto-k diagnostic: agrees with arviz, and unreliable importance weights say so."""

from __future__ import annotations

import math
import pickle
import warnings

import pytest
import torch

from normflows_sci.distributions import StandardNormal
from normflows_sci.flows import Flow
from normflows_sci.samplers import (
    ImportanceResult,
    function_khat,
    importance_sample,
    importance_weights,
    khat_threshold,
    pareto_khat,
    psis_smooth,
)
from normflows_sci.transforms import ElementwiseAffine


def _normal(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _panel() -> dict[str, torch.Tensor]:
    x = _normal(4000, 0)
    gauss = torch.distributions.Normal(0.0, 1.0)
    y = _normal(2000, 1)
    u = torch.rand(1000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return {
        # Student-t(3) target, standard-normal proposal: heavy target tails, moderate k.
        "student_t_target": torch.distributions.StudentT(3.0).log_prob(x) - gauss.log_prob(x),
        # N(0, 0.5^2) target with a N(0, 1) proposal: bounded weights, negative k.
        "light_tail": torch.distributions.Normal(0.0, 0.5).log_prob(x) - gauss.log_prob(x),
        # Pareto weights with shape 1.2: heavy tail above every threshold.
        "heavy_tail": -1.2 * torch.log(u),
        # Target N(80, 1) with a N(0, 1) proposal: log w = 80 y - 3200.
        "eighty_sigma": 80.0 * y - 3200.0,
        "small_sample": _normal(30, 3),
    }


@pytest.mark.parametrize("name", list(_panel()))
def test_khat_and_smoothed_weights_agree_with_arviz(name):
    az = pytest.importorskip("arviz")
    log_weights = _panel()[name]
    expected_lw, expected_k = az.psislw(log_weights.numpy().copy())
    smoothed, k = psis_smooth(log_weights)
    assert k == pytest.approx(float(expected_k), abs=1e-6)
    assert pareto_khat(log_weights)[0] == pytest.approx(float(expected_k), abs=1e-6)
    torch.testing.assert_close(smoothed, torch.as_tensor(expected_lw), atol=1e-6, rtol=0)


def test_heavy_and_light_tails_land_on_the_right_side_of_the_threshold():
    panel = _panel()
    k_heavy, threshold = pareto_khat(panel["heavy_tail"])
    assert threshold == pytest.approx(1 - 1 / 3)
    assert k_heavy > threshold
    assert pareto_khat(panel["light_tail"])[0] < 0.0
    assert pareto_khat(panel["eighty_sigma"])[0] > 1.0


def test_threshold_and_small_samples():
    assert khat_threshold(10**9) == 0.7
    assert khat_threshold(100) == pytest.approx(0.5)
    with pytest.warns(RuntimeWarning, match="at least 21 weights"):
        k, _ = pareto_khat(_normal(20, 4))
    assert math.isnan(k)
    with pytest.raises(ValueError, match="at least 2 entries"):
        pareto_khat(torch.zeros(1))
    with pytest.raises(TypeError, match=r"log_weights must be a torch\.Tensor"):
        pareto_khat([0.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        pareto_khat(torch.tensor([0.0, math.nan] * 20))


def _result(log_weights: torch.Tensor) -> ImportanceResult:
    stats = importance_weights(log_weights, torch.zeros_like(log_weights))
    samples = torch.arange(len(log_weights), dtype=log_weights.dtype)[:, None]
    return ImportanceResult(
        samples=samples, log_q=torch.zeros_like(log_weights), log_p=log_weights, **stats
    )


def test_eighty_sigma_target_warns_and_is_unreliable():
    """The issue's case: target N(80, 1), proposal N(0, 1), true log Z = 0."""
    proposal = Flow(ElementwiseAffine(1, learnable=False), StandardNormal(1)).double()

    def target(x):
        return torch.distributions.Normal(80.0, 1.0).log_prob(x[:, 0])

    with pytest.warns(RuntimeWarning, match="unreliable importance weights") as record:
        result = importance_sample(
            proposal, target, 2000, generator=torch.Generator().manual_seed(0)
        )
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    assert abs(result.log_z) > 100  # the number is badly wrong, and now it says so
    assert not result.reliable
    assert result.pareto_k > result.khat_threshold
    assert "k-hat" in str(record[0].message) and "ESS" in str(record[0].message)


def test_single_dominating_weight_has_no_zero_standard_error():
    log_weights = torch.zeros(1000, dtype=torch.float64)
    log_weights[7] = 200.0
    with pytest.warns(RuntimeWarning, match="unreliable importance weights"):
        result = _result(log_weights)
    assert not result.reliable and result.ess < 2
    assert result.log_z_stderr == math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the result warned once already
        mean, stderr = result.expectation(lambda x: x[:, 0])
        _, prob_err = result.probability(lambda x: x[:, 0] > 5)
        _, fe_err = result.free_energy_difference(lambda x: x[:, 0] < 100, lambda x: x[:, 0] > 5)
    assert float(mean) == pytest.approx(7.0)
    assert math.isnan(float(stderr)) and math.isnan(prob_err) and math.isnan(fe_err)


def test_exact_proposal_is_reliable_and_silent():
    flow = Flow(ElementwiseAffine(2, scale=0.7, learnable=False), StandardNormal(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = importance_sample(flow, flow, 3000, generator=torch.Generator().manual_seed(0))
    assert result.reliable
    assert result.pareto_k < result.khat_threshold


def test_good_proposal_is_reliable_and_smoothing_keeps_the_estimate():
    proposal = Flow(ElementwiseAffine(1, scale=1 / 1.5, learnable=False), StandardNormal(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = importance_sample(
            proposal.double(),
            StandardNormal(1).double(),
            4000,
            generator=torch.Generator().manual_seed(1),
        )
        raw, raw_err = result.expectation(lambda x: x[:, 0] ** 2)
        smooth, smooth_err = result.expectation(lambda x: x[:, 0] ** 2, smooth=True)
    assert result.reliable and result.pareto_k < 0.5
    assert abs(float(raw) - 1.0) < 4 * float(raw_err)
    assert abs(float(smooth) - float(raw)) < float(raw_err)
    assert float(smooth_err) > 0


def test_smoothing_changes_a_heavy_tailed_estimate():
    log_weights = _panel()["heavy_tail"]
    with pytest.warns(RuntimeWarning, match="unreliable"):
        result = _result(log_weights)
    values = torch.arange(len(log_weights), dtype=torch.float64)
    smoothed = psis_smooth(log_weights)[0].exp()
    mean, _ = result.expectation(values, smooth=True)
    assert float(mean) == pytest.approx(float((smoothed * values).sum()), rel=1e-12)
    assert float(mean) != pytest.approx(float(result.expectation(values)[0]), rel=1e-6)


def _fine_result(seed: int, num_samples: int = 4000) -> ImportanceResult:
    """Target N(0, 1), proposal N(0, 1.5^2): bounded weights, k-hat far below the threshold."""
    proposal = Flow(ElementwiseAffine(1, scale=1 / 1.5, learnable=False), StandardNormal(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return importance_sample(
            proposal.double(),
            StandardNormal(1).double(),
            num_samples,
            generator=torch.Generator().manual_seed(seed),
        )


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["right_tail", "left_tail"])
@pytest.mark.parametrize("seed", range(5))
def test_heavy_tailed_observable_warns_under_a_fine_proposal(seed, sign):
    """E[|x|^-0.9] is finite but |x|^-0.9 w(x) has infinite variance (k = 0.9) although the
    weights alone are bounded: the expectation warns, once, naming its own k-hat (either sign)."""
    result = _fine_result(seed)
    assert result.reliable and result.pareto_k < 0
    with pytest.warns(
        RuntimeWarning, match=r"unreliable expectation: Pareto k-hat of h\(x\) w\(x\)"
    ) as record:
        estimate = result.expectation(lambda x: sign * x[:, 0].abs() ** -0.9)
    assert len(record) == 1 and f"{estimate.pareto_k:.3g}" in str(record[0].message)
    assert not estimate.reliable
    assert estimate.pareto_k > estimate.khat_threshold == result.khat_threshold


@pytest.mark.parametrize("seed", range(5))
def test_bounded_and_light_observables_do_not_warn_under_a_fine_proposal(seed):
    result = _fine_result(seed)
    left, right = (lambda x: x[:, 0] < 0), (lambda x: x[:, 0] > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        estimates = [
            result.expectation(lambda x: torch.tanh(x[:, 0])),
            result.expectation(lambda x: torch.cat([x, x**2], 1)),  # unbounded, light tails
            result.expectation(lambda x: x[:, 0].abs() ** -0.4),  # finite variance: k = 0.4
            result.probability(right),
            result.free_energy_difference(left, right),
        ]
    assert all(estimate.reliable for estimate in estimates)


def test_rare_region_warns_even_under_a_fine_proposal():
    """P(x > 4.5) from 4000 samples rests on a handful of them: its error bar is not to be trusted."""
    result = _fine_result(0)
    inside = int((result.samples[:, 0] > 4.5).sum())
    assert 0 < inside < 5
    with pytest.warns(RuntimeWarning, match="fewer than 5 values"):
        prob, stderr = result.probability(lambda x: x[:, 0] > 4.5)
    assert prob > 0 and stderr > 0
    with pytest.warns(RuntimeWarning, match="unreliable free-energy difference"):
        result.free_energy_difference(lambda x: x[:, 0] < 0, lambda x: x[:, 0] > 4.5)


def test_unreliable_weights_warn_once_not_again_per_estimate():
    """The 80-sigma result warned at construction; its estimators do not repeat the cause."""
    y = _normal(2000, 1)
    with pytest.warns(RuntimeWarning, match="unreliable importance weights"):
        result = _result(80.0 * y - 3200.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        estimate = result.expectation(lambda x: x[:, 0] ** 2)
        probability = result.probability(lambda x: x[:, 0] > 1000)
    assert not estimate.reliable and not probability.reliable
    assert estimate.pareto_k >= result.pareto_k


def test_estimates_unpack_print_and_pickle_like_the_old_tuples():
    result = _fine_result(0)
    left, right = (lambda x: x[:, 0] < 0), (lambda x: x[:, 0] > 0)
    delta = result.free_energy_difference(left, right)
    value, stderr = delta
    assert (value, stderr) == delta and str(delta) == str((value, stderr))
    assert (delta.value, delta.stderr) == (value, stderr)
    copy = pickle.loads(pickle.dumps(delta))
    assert copy == delta and copy.pareto_k == delta.pareto_k and copy.reliable
    mean, err = result.expectation(lambda x: x)
    assert mean.shape == err.shape == (1,)


def test_function_khat_of_a_constant_is_the_weights_khat():
    log_weights = _panel()["student_t_target"]
    k_w, threshold = pareto_khat(log_weights)
    k_constant, same_threshold = function_khat(torch.full((4000,), 3.0), log_weights)
    assert k_constant == pytest.approx(k_w, rel=1e-9) and same_threshold == threshold
    k_heavy, _ = function_khat(torch.arange(4000.0) ** 3, log_weights)
    assert k_heavy >= k_w
    with pytest.raises(ValueError, match="one row per weight"):
        function_khat(torch.zeros(10), log_weights)
    with pytest.warns(RuntimeWarning, match="not finite"):
        k, _ = function_khat(torch.full((4000,), math.inf), log_weights)
    assert math.isnan(k)


def test_an_observable_that_is_not_finite_on_a_weighted_sample_warns():
    """A NaN or inf f(x) on one sample makes the mean NaN or inf: that must not pass silently."""
    result = _fine_result(0)
    values = result.samples[:, 0].clone()
    values[17] = math.inf
    with pytest.warns(RuntimeWarning, match="not finite on some samples"):
        estimate = result.expectation(values)
    assert not estimate.reliable and math.isnan(estimate.pareto_k)
