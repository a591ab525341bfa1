"""DensityEstimator and the baselines on degenerate tables and at extreme scales: no silent wrong
answers (errors naming the cause, exact float64 preprocessing), refused non-finite fits, sampling
in bounded chunks, and integer-cell scoring whose cost does not grow as 2^k."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

import normflows_sci.estimator as estimator_module
import normflows_sci.quadrature as quadrature
from normflows_sci import DensityEstimator
from normflows_sci.baselines import GaussianBaseline
from normflows_sci.quadrature import combine_cell_estimates, unit_cell_rule, unit_cube_rule

QUICK = dict(max_epochs=3, hidden_features=(16, 16), transforms=2, verbose=False, random_state=0)


def _normal_table(rows=600, columns=2, seed=0):
    return np.random.default_rng(seed).normal(size=(rows, columns))


# ----------------------------------------------------------------------- degenerate tables


def test_a_single_row_is_an_error_naming_the_count():
    with pytest.raises(ValueError, match=r"X has 1 row: .* at least 2 rows"):
        DensityEstimator(**QUICK).fit(np.array([[1.0, 2.0]]))


def test_constant_columns_and_identical_rows_are_errors_naming_the_columns():
    X = _normal_table()
    X[:, 1] = 3.0
    with pytest.raises(ValueError, match=r"columns \['x1'\] are constant .*x1 = 3.*point mass"):
        DensityEstimator(**QUICK).fit(X)
    with pytest.raises(ValueError, match=r"all 270 training rows are the same \(x0 = 1, x1 = 2\)"):
        DensityEstimator(**QUICK).fit(np.tile([[1.0, 2.0]], (300, 1)))


def test_a_one_level_discrete_column_gets_probability_near_one():
    """A constant integer column declared discrete is a one-level count: its dequantised cell has
    spread, so the fit is sound and the level's probability is close to 1."""
    X = _normal_table(rows=500)
    X[:, 1] = 4.0
    est = DensityEstimator(discrete=["x1"], **{**QUICK, "max_epochs": 20}).fit(X)
    rows = np.column_stack([np.linspace(-1.5, 1.5, 7), np.full(7, 4.0)])
    log_p_level = est.score_samples(rows) - stats.norm.logpdf(rows[:, 0])
    assert np.all(np.abs(log_p_level) < 0.15)  # log P(4) ~ 0, the rest the normal's density
    others = est.score_samples(np.array([[0.0, 2.0], [0.0, 6.0]]))
    assert np.all(others < math.log(0.05))
    draws = est.sample(400, random_state=0)[:, 1]
    assert np.mean(draws == 4.0) > 0.9 and np.all(draws == np.round(draws))


@pytest.mark.parametrize(("scale", "offset"), [(1e-12, 0.0), (1e-3, 1e6), (1e300, 0.0)])
def test_data_far_from_unit_scale_score_exactly_like_unit_data(scale, offset):
    """Standardised in float64, a rescaled table trains the same flow: scores differ by exactly
    the log-Jacobian of the rescaling (float32 standardisation lost 10 nats/row at 1e-12 and
    everything at an offset of 1e6; 1e300 overflowed float32)."""
    X = _normal_table(rows=800)
    unit = DensityEstimator(**QUICK).fit(X)
    scaled = DensityEstimator(**QUICK).fit(X * scale + offset)
    expected = unit.score_samples(X[:100]) - 2 * math.log(scale)
    np.testing.assert_allclose(scaled.score_samples(X[:100] * scale + offset), expected, atol=1e-3)
    truth = stats.norm(offset, scale).logpdf(X[:800] * scale + offset).sum(1).mean()
    assert scaled.score(X * scale + offset) == pytest.approx(truth, abs=0.3)


def test_values_beyond_float32_range_name_the_column():
    X = _normal_table()
    est = DensityEstimator(**QUICK).fit(X)
    with pytest.raises(ValueError, match=r"column 'x1' of X has the value 1e\+300 .*float32's"):
        est.score_samples(np.array([[0.0, 0.0], [0.0, 1e300]]))
    with pytest.raises(ValueError, match=r"column 'x0' of X_val .*float32's range"):
        DensityEstimator(**QUICK).fit(X, X_val=np.array([[-1e300, 0.0]]))
    conditional = DensityEstimator(context=["x0"], **QUICK).fit(X)
    with pytest.raises(ValueError, match=r"column 'x0' of X has the value 1e\+200"):
        conditional.score_samples(np.array([[1e200, 0.0]]))


def test_a_fit_with_non_finite_weights_or_loss_is_refused(monkeypatch):
    real_fit_flow = estimator_module.fit_flow

    def poisoned(model, *args, **kwargs):
        history = real_fit_flow(model, *args, **kwargs)
        with torch.no_grad():
            next(model.parameters()).fill_(math.nan)
        return history

    monkeypatch.setattr(estimator_module, "fit_flow", poisoned)
    with pytest.raises(ValueError, match=r"training diverged: .* NaN or inf"):
        DensityEstimator(**QUICK).fit(_normal_table())

    def nan_loss(model, *args, **kwargs):
        history = real_fit_flow(model, *args, **kwargs)
        history["val_loss"] = [math.nan] * len(history["val_loss"])
        return history

    monkeypatch.setattr(estimator_module, "fit_flow", nan_loss)
    with pytest.raises(ValueError, match="held-out negative log-likelihood is not finite"):
        DensityEstimator(**QUICK).fit(_normal_table())


def test_nan_scores_are_reported(monkeypatch):
    est = DensityEstimator(**QUICK).fit(_normal_table())
    real = est.flow_.log_prob

    def overflowing(inputs, context=None):
        out = real(inputs, context)
        return torch.where(inputs[:, 0] > 2.5, math.nan, out)

    monkeypatch.setattr(est.flow_, "log_prob", overflowing)
    with pytest.warns(UserWarning, match=r"1 of 3 rows of X score NaN \(first: row 1\)"):
        est.score_samples(np.array([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0]]))


# ----------------------------------------------------------------------------------- sampling


def _spy_rows(monkeypatch, est):
    """Record the rows of every pass through the flow network in the sampling direction."""
    core = est.flow_.transform[len(est.flow_.transform) - 1]
    seen = []
    real = core.inverse

    def spy(inputs, context=None):
        seen.append(inputs.shape[0])
        return real(inputs, context)

    monkeypatch.setattr(core, "inverse", spy)
    return seen


def test_sampling_runs_in_chunks_with_the_same_draws(monkeypatch):
    X = _normal_table()
    X[:, 1] = np.round(np.abs(X[:, 1]) * 3)
    est = DensityEstimator(discrete=["x1"], bounds={"x1": (0, None)}, **QUICK).fit(X)
    whole = est.sample(300, random_state=4)
    seen = _spy_rows(monkeypatch, est)
    monkeypatch.setattr(estimator_module, "SAMPLE_CHUNK_ROWS", 64)
    chunked = est.sample(300, random_state=4)
    # The same latent draws; the float32 network may round differently at another batch size.
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
    assert seen == [64, 64, 64, 64, 44]

    conditional = DensityEstimator(context=["x0"], **QUICK).fit(_normal_table())
    context = np.linspace(-1, 1, 150)[:, None]
    monkeypatch.setattr(estimator_module, "SAMPLE_CHUNK_ROWS", 10**6)
    whole = conditional.sample(context=context, random_state=1)
    seen = _spy_rows(monkeypatch, conditional)
    monkeypatch.setattr(estimator_module, "SAMPLE_CHUNK_ROWS", 100)
    chunked = conditional.sample(context=context, random_state=1)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
    assert seen == [100, 50]


def test_samples_stay_within_the_declared_bounds():
    """The model's support reaches a hair past each bound; draws landing there (a count of -1
    under a lower bound of 0) are moved onto the bound, so every sample can be scored."""
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.beta(0.3, 0.3, size=2000), rng.poisson(0.2, size=2000)])
    bounds = {"x0": (0.0, 1.0), "x1": (0, None)}
    est = DensityEstimator(bounds=bounds, discrete=["x1"], **QUICK).fit(X)
    samples = est.sample(20000, random_state=1)
    assert samples[:, 0].min() >= 0.0 and samples[:, 0].max() <= 1.0
    assert samples[:, 1].min() >= 0 and np.all(samples[:, 1] == np.round(samples[:, 1]))
    assert np.isfinite(est.score_samples(samples[:2000])).all()


# ------------------------------------------------------------------------ integer cells


def test_one_to_three_integer_columns_keep_the_exact_rule():
    for dims in (1, 2, 3):
        nodes, log_w = unit_cell_rule(dims)
        exact_nodes, exact_log_w = unit_cube_rule(dims)
        np.testing.assert_array_equal(nodes, exact_nodes[None])
        np.testing.assert_array_equal(log_w, exact_log_w[None])
    rng = np.random.default_rng(2)
    X = np.column_stack([rng.poisson(2.0, size=(400, 2)), rng.normal(size=400)])
    est = DensityEstimator(discrete=["x0", "x1"], **QUICK).fit(X)
    rows = X[:5]
    nodes, log_w = unit_cube_rule(2)
    points = np.repeat(rows[None], len(nodes), 0)
    points[..., :2] += nodes[:, None, :]
    with torch.no_grad():
        log_p = est.flow_.log_prob(torch.as_tensor(points.reshape(-1, 3))).numpy()
    expected = logsumexp(log_p.reshape(len(nodes), -1) + log_w[:, None], axis=0)
    np.testing.assert_allclose(est.score_samples(rows), expected, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(est.last_score_error_, 0.0)


def test_qmc_cells_agree_with_a_fine_tensor_rule_within_their_error():
    rng = np.random.default_rng(3)
    X = rng.poisson([1.0, 2.0, 3.0, 5.0], size=(600, 4)).astype(float)
    X[:, 1] += X[:, 0]
    est = DensityEstimator(discrete="auto", **{**QUICK, "max_epochs": 5}).fit(X)
    rows = X[:6]
    scores, error = est.score_samples(rows), est.last_score_error_
    nodes, log_w = unit_cube_rule(4, per_dim=12)
    with torch.no_grad():
        points = torch.as_tensor((rows[None] + nodes[:, None, :]).reshape(-1, 4))
        log_p = est.flow_.log_prob(points).double().numpy().reshape(len(nodes), -1)
    reference = logsumexp(log_p + log_w[:, None], axis=0)
    assert np.all((error > 0) & (error < quadrature.QMC_STDERR_TOLERANCE))
    assert np.all(np.abs(scores - reference) <= 4 * error + 1e-3)
    np.testing.assert_array_equal(est.score_samples(rows), scores)  # a fixed rule: reproducible


def test_thirty_two_integer_columns_score_at_a_cost_independent_of_their_number(monkeypatch):
    """A tensor-product rule needs at least 2^32 nodes here (32 GiB requested before)."""
    rng = np.random.default_rng(4)
    X = rng.poisson(3.0, size=(64, 32)).astype(float)
    est = DensityEstimator(discrete="auto", **{**QUICK, "max_epochs": 1}).fit(X)
    evaluated = []
    real = est.flow_.log_prob

    def counting(inputs, context=None):
        evaluated.append(inputs.shape[0])
        return real(inputs, context)

    monkeypatch.setattr(est.flow_, "log_prob", counting)
    baseline = GaussianBaseline(discrete=list(range(32))).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 256 points in 32 dimensions may warn: not the point
        scores = est.score_samples(X[:3])
        baseline_scores = baseline.score_samples(X[:3])
    budget = quadrature.QMC_POINTS * quadrature.QMC_REPLICATES
    assert sum(evaluated) == 3 * budget
    assert np.isfinite(scores).all() and np.isfinite(est.last_score_error_).all()
    assert np.isfinite(baseline_scores).all() and baseline.last_score_error_.shape == (3,)


def test_imprecise_cells_are_reported(monkeypatch):
    rng = np.random.default_rng(5)
    X = rng.poisson([1.0, 4.0, 2.0, 3.0, 6.0], size=(300, 5)).astype(float)
    baseline = GaussianBaseline(discrete=[0, 1, 2, 3, 4]).fit(X)
    scores = baseline.score_samples(X[:4])
    error = baseline.last_score_error_
    assert np.all(error > 0)
    nodes, log_w = unit_cube_rule(5, per_dim=8)
    points = (X[:4][None] + nodes[:, None, :]).reshape(-1, 5)
    log_density = baseline._log_density(points).reshape(len(nodes), 4)
    reference = logsumexp(log_density + log_w[:, None], axis=0)
    assert np.all(np.abs(scores - reference) <= 4 * error + 1e-4)
    monkeypatch.setattr(quadrature, "QMC_STDERR_TOLERANCE", float(error.min()) / 2)
    with pytest.warns(UserWarning, match=r"4 of 4 rows .* last_score_error_"):
        baseline.score_samples(X[:4])


def test_combined_cell_estimates_carry_the_spread_of_the_replicates():
    # Replicates estimating P = 0.5, 0.7, 0.6, 0.6: mean 0.6, relative standard error
    # std([0.5, 0.7, 0.6, 0.6]) / sqrt(4) / 0.6.
    per_replicate = np.log([[0.5], [0.7], [0.6], [0.6]])
    log_p, stderr = combine_cell_estimates(per_replicate[:, None, :])
    assert log_p[0] == pytest.approx(math.log(0.6))
    expected = np.std([0.5, 0.7, 0.6, 0.6], ddof=1) / 2 / 0.6
    assert stderr[0] == pytest.approx(expected)
    log_p, stderr = combine_cell_estimates(np.full((3, 2, 1), -np.inf))
    assert log_p[0] == -np.inf and stderr[0] == 0.0
