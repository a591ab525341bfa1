"""Column heuristics of the table model (issue 21): bounds of positive columns, heavy-tail
detection, and the cells on which every printed comparison scores its models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests_helpers import damaged_copy

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


# ---------------------------------------------------------------------------- levels and atoms


def _rates_table(rows: int, seed: int = 0) -> np.ndarray:
    """``rate`` (four non-integer levels, like a log co-insurance rate) and ``y`` (continuous,
    shifted by the rate)."""
    rng = np.random.default_rng(seed)
    rate = rng.choice([0.0, 3.258, 3.932, 4.564], size=rows, p=[0.5, 0.2, 0.2, 0.1])
    return np.column_stack([rate, rate + rng.normal(0.0, 0.5, rows)])


def test_auto_levels_rule_takes_few_valued_non_integer_columns_only():
    """The old "auto" took labels of DataFrames only: a five-valued rate in an array was a
    continuous column, whose density is unbounded on its values."""
    from normflows_sci._categorical import declared_categorical

    rng = np.random.default_rng(0)
    rows = 160
    rate = rng.choice([0.1 * k + 0.05 for k in range(16)], size=rows)  # 16 values, 10 per value
    many = rng.choice([0.1 * k + 0.05 for k in range(17)], size=rows)  # 17 values
    counts = rng.integers(0, 4, size=rows).astype(float)  # integers keep their lattice
    sparse = rng.choice([0.5, 1.5], size=rows)
    sparse[:40] = np.arange(40) + 0.25  # 42 values: under 5 rows per value
    y = rng.normal(size=rows)
    table = np.column_stack([rate, many, counts, sparse, y])
    names = ["rate", "many", "counts", "sparse", "y"]
    assert declared_categorical(table, names, "auto") == ["rate"]
    assert declared_categorical(table, names, "auto", context=["rate"]) == []
    # Modelled levels cannot depend on a numeric context column: none are taken then.
    assert declared_categorical(table, names, "auto", context=["y"]) == []
    # Every numeric column a level column would leave nothing for the flow: none taken.
    assert declared_categorical(table[:, :1], ["rate"], "auto") == []
    assert declared_categorical(table, names, None) == []
    # Bounded or declared discrete by the user: numeric by the user's word.
    assert declared_categorical(table, names, "auto", numeric=["rate"]) == []
    est = DensityEstimator(bounds={"rate": (0.0, 2.0)}, **QUICK).fit(
        table[:, [0, 4]], columns=["rate", "y"]
    )
    assert est.info()["level_columns"] == {} and est.spec_.lower == (0.0, None)


def test_auto_level_column_is_modelled_exactly_and_sampled_on_its_levels(tmp_path):
    X = _rates_table(800)
    est = DensityEstimator(**QUICK).fit(X, columns=["rate", "y"])
    levels = [0.0, 3.258, 3.932, 4.564]
    info = est.info()
    assert info["categorical_columns"] == {"rate": 4}
    assert info["level_columns"] == {"rate": levels}
    draws = est.sample(3000, random_state=0)
    assert set(np.unique(draws[:, 0])) <= set(levels) and len(np.unique(draws[:, 0])) == 4
    # A value between levels is no level: probability zero, with the usual warning.
    with pytest.warns(UserWarning, match="not seen in training"):
        assert np.isneginf(est.score_samples(np.array([[3.0, 3.0]])))[0]
    loaded = DensityEstimator.load(est.save(tmp_path / "levels.nfs"))
    assert loaded.info()["level_columns"] == {"rate": levels}
    np.testing.assert_array_equal(loaded.score_samples(X[:50]), est.score_samples(X[:50]))


def test_continuous_column_with_an_atom_warns_once_and_records_it(tmp_path):
    """10 % exact zeros in an amount: the old fit said nothing while its likelihood there
    grew without bound."""
    import warnings

    rng = np.random.default_rng(4)
    amount = rng.lognormal(0.0, 1.0, 500)
    amount[:50] = 0.0
    X = np.column_stack([amount, rng.normal(size=500)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = DensityEstimator(**QUICK).fit(X, columns=["amount", "x"])
    atoms = [w for w in caught if "point mass" in str(w.message)]
    assert len(atoms) == 1 and atoms[0].filename == __file__  # points at the caller of fit
    message = str(atoms[0].message)
    assert message.startswith("column 'amount' has a point mass: 10.0% of the training rows")
    assert "exactly 0" in message and "categorical" in message
    assert est.info()["atoms"] == {"amount": {"value": 0.0, "share": 0.1}}
    path = est.save(tmp_path / "atoms.nfs")
    loaded = DensityEstimator.load(path)
    assert loaded.info()["atoms"] == est.info()["atoms"]
    _refused_with_atoms(path, tmp_path, {"amount": [0.0, 1.5]}, r"atoms\['amount'\] must be")
    _refused_with_atoms(path, tmp_path, {"nope": [0.0, 0.1]}, "names 'nope', not a target")
    # Declared as an integer lattice, a repeated value is a probability: no warning.
    counts = np.column_stack([rng.poisson(0.3, 500).astype(float), rng.normal(size=500)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clean = DensityEstimator(discrete=[0], **QUICK).fit(counts)
    assert clean.info()["atoms"] == {}


def _refused_with_atoms(path, tmp_path, atoms, message: str) -> None:
    """A copy of the model file at ``path`` with the config field ``atoms`` replaced is refused
    on loading, naming the file and the field."""
    bad = tmp_path / "bad.nfs"
    damaged_copy(path, bad, lambda config: config.update(atoms=atoms))
    with pytest.raises(ValueError, match=message) as error:
        DensityEstimator.load(bad)
    assert "config field atoms" in str(error.value)
