"""Column heuristics of the table model (issue 21): bounds of positive columns, heavy-tail
detection, and the cells on which every printed comparison scores its models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from normflows_sci import DensityEstimator
from normflows_sci._tabular import (
    NetworkSize,
    column_layout,
    float64_bounds,
    plan_table,
    positive_column,
)

QUICK = dict(max_epochs=3, hidden_features=(32, 32), transforms=3, verbose=False, random_state=0)
NETWORK = NetworkSize(flow="nsf", transforms=3, hidden_features=(32, 32), bins=8)


def _spec(X: np.ndarray, **options):
    """The spec ``DensityEstimator.fit`` would plan for ``X`` (no training)."""
    names = [f"x{i}" for i in range(X.shape[1])]
    layout = column_layout(X, names, **options)
    return plan_table(layout, X, None, network=NETWORK, heavy_tails="auto", frame=False)[0]


# ---------------------------------------------------------------------------- positive columns


@pytest.mark.parametrize("bounds", ["auto", {"flux": (0.0, None)}])
def test_positive_column_samples_respect_the_bound_exactly(bounds):
    """A log-normal flux: 20000 draws of the model itself (before any clipping by the
    estimator) are >= 0. The old model widened the bound by a margin (and gave the column a
    Student-t base), so its draws reached -2e-6; the old "auto" did not bound it at all."""
    X = np.random.default_rng(0).lognormal(0.0, 1.0, size=(5000, 1))
    est = DensityEstimator(bounds=bounds, **QUICK).fit(X, columns=["flux"])
    assert est.spec_.lower == (0.0,) and est.spec_.lower_effective == (0.0,)
    with torch.no_grad():
        draws = est.flow_.sample(20000, generator=torch.Generator().manual_seed(1))
    assert draws.dtype == torch.float64 and float(draws.min()) >= 0.0
    assert est.sample(20000, random_state=1).min() >= 0.0


def test_auto_bounds_a_skewed_positive_column_not_one_that_is_merely_positive():
    rng = np.random.default_rng(1)
    skewed = rng.lognormal(3.0, 0.5, size=5000)  # minimum ~0.3 std above 0: missed before
    assert skewed.min() > 0.1 * skewed.std()
    gaussian = rng.normal(10.0, 1.0, size=5000)  # positive, symmetric, ~6 std above 0
    piled = rng.exponential(size=5000)
    assert [positive_column(c) for c in (skewed, gaussian, piled)] == [True, False, True]
    spec = _spec(np.column_stack([skewed, gaussian, piled]), bounds="auto")
    assert spec.lower == (0.0, None, 0.0) and spec.upper == (None, None, None)


def test_bounds_the_data_touch_keep_their_margin():
    """Values on the bound (exact zeros) still need the widened bound to score finitely."""
    X = np.random.default_rng(2).exponential(size=(500, 1))
    X[:5] = 0.0
    spec = _spec(X, bounds={"x0": (0.0, None)})
    assert spec.lower_effective[0] < 0.0
    est = DensityEstimator(bounds={"x0": (0.0, None)}, **QUICK).fit(X)
    assert np.isfinite(est.score_samples(X[:10])).all()
    assert est.sample(2000, random_state=0).min() >= 0.0


def test_rows_on_an_exact_bound_score_finitely_and_low():
    """Training rows strictly inside (0, 30): the model's bounds are exact, so a later row ON a
    bound is a point of (almost) zero density, scored finitely rather than as an infinity that
    the float32 network refuses ("beyond float32's range" for the upper side)."""
    X = np.random.default_rng(5).lognormal(0.0, 1.0, size=(2000, 2))
    est = DensityEstimator(bounds={"x0": (0.0, None), "x1": (0.0, 30.0)}, **QUICK).fit(X)
    assert est.spec_.lower_effective == (0.0, 0.0) and est.spec_.upper_effective == (None, 30.0)
    rows = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 30.0], [1.0, 1.0]])
    scores = est.score_samples(rows)
    assert np.isfinite(scores).all() and (scores[:3] < scores[3] - 100).all()
    assert np.all(est.sample(20000, random_state=2)[:, 1] <= 30.0)


def test_draws_that_round_onto_a_bound_are_moved_inside_with_a_count():
    """The last resort: a latent far in a tail saturates the float64 map onto the bound."""
    bounds = float64_bounds([0.0, 0.0], [1.0, None])
    latent = torch.tensor([[50.0, -800.0], [0.1, 0.2]], dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match=r"^2 of 4 values mapped onto a bound of the model"):
        values, _ = bounds.inverse(latent)
    assert 0.0 < values[0, 0] < 1.0 and values[0, 1] > 0.0
    assert torch.isfinite(bounds(values)[0]).all()


# ---------------------------------------------------------------------------- heavy tails


def _banana(rng, n):
    x = rng.normal(size=n)
    return np.column_stack([x, x**2 + 0.5 * rng.normal(size=n)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_heavy_tails_are_flagged_for_t_and_cauchy_columns_only(seed):
    """Log-normal (bounded by "auto", so after its softplus map), banana and Gaussian columns
    have a light side: none gets a Student-t base (the old pooled Hill index, 2.2-3.5 for the
    skewed ones, flagged them). Student-t(2) and Cauchy columns are heavy on both sides."""
    rng = np.random.default_rng(seed)
    n = 5000
    light = np.column_stack([rng.lognormal(0.0, 1.0, n), *_banana(rng, n).T, rng.normal(size=n)])
    heavy = np.column_stack([rng.standard_t(2, n), rng.standard_cauchy(n)])
    spec = _spec(np.column_stack([light, heavy]), bounds="auto")
    assert spec.lower[0] == 0.0
    assert spec.tail_df[:4] == (None,) * 4
    assert all(df is not None and 1.0 <= df < 4.0 for df in spec.tail_df[4:])


def test_unbounded_log_normal_column_is_not_flagged_either():
    X = np.random.default_rng(3).lognormal(0.0, 1.0, size=(5000, 1))
    assert _spec(X).tail_df == (None,)
