"""Mixed categorical / continuous tables (issue 21): the shipped mixed penguins table, the exact
joint density over categories x numbers, samples, files, score uncertainty and out-of-support
rows."""

from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np
import pytest
from tests_helpers import damaged_copy

pd = pytest.importorskip("pandas")

from normflows_sci.datasets import list_datasets, load_dataset  # noqa: E402

# ----------------------------------------------------------------------------- the shipped table


def test_mixed_penguins_is_an_edition_of_penguins_with_a_pinned_checksum():
    from normflows_sci.datasets import _MIXED

    spec = _MIXED["penguins"]
    path = resources.files("normflows_sci.datasets").joinpath("data").joinpath(spec.filename)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
    ds = load_dataset("penguins", categorical=True)
    assert list_datasets() == ["atlantic_storms", "penguins"]  # one name per dataset
    assert ds.shape == (333, 7) == (spec.rows, len(spec.columns))
    assert ds.categorical == ["species", "island", "sex"] == ds.columns[:3]
    frame = ds.data
    assert all(isinstance(frame[c].dtype, pd.CategoricalDtype) for c in ds.categorical)
    assert list(frame["species"].cat.categories) == ["Adelie", "Chinstrap", "Gentoo"]
    assert frame["sex"].value_counts().to_dict() == {"male": 168, "female": 165}
    assert not frame.isna().any().any()
    # The measurements are those of the numeric edition, on the birds with every value recorded.
    numeric = load_dataset("penguins").data
    known = {tuple(row) for row in numeric.tolist()}
    assert all(tuple(row) in known for row in frame[ds.columns[3:]].to_numpy().tolist())
    assert ds.discrete == ["flipper_length_mm", "body_mass_g"]
    with pytest.raises(ValueError, match="no categorical edition"):
        load_dataset("atlantic_storms", categorical=True)


# ----------------------------------------------------------------------------- the joint density

QUICK = dict(max_epochs=4, hidden_features=(32, 32), transforms=3, verbose=False, random_state=0)


def _mixed_frame(rows: int, seed: int = 0):
    """colour (strings; 'blue' never comes with size 'L'), size (pandas categorical), y
    (continuous, shifted by colour) and k (integers 0..4, depending on size)."""
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], size=rows, p=[0.5, 0.3, 0.2])
    size = np.where(colour == "blue", "S", rng.choice(["S", "L"], size=rows))
    shift = {"red": -2.0, "green": 0.0, "blue": 3.0}
    y = np.array([shift[c] for c in colour]) + rng.normal(0.0, 0.7, rows)
    k = rng.binomial(4, np.where(size == "L", 0.7, 0.3))
    return pd.DataFrame(
        {
            "colour": colour,
            "y": y,
            "size": pd.Categorical(size, categories=["S", "L"]),
            "k": k.astype(float),
        }
    )


def _grid_rows(levels: dict, y_grid: np.ndarray, ks: np.ndarray):
    """Every combination of the given levels x integers x grid points, as a DataFrame."""
    import itertools

    parts = []
    for combo in itertools.product(*levels.values()):
        part = pd.DataFrame({"y": np.repeat(y_grid, len(ks)), "k": np.tile(ks, len(y_grid))})
        for name, value in zip(levels, combo):
            part[name] = value
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def mixed():
    """``(estimator, frame)``: a quick model of :func:`_mixed_frame` (fitted once)."""
    from normflows_sci import DensityEstimator

    frame = _mixed_frame(1500)
    return DensityEstimator(discrete=["k"], bounds={"k": (0, 4)}, **QUICK).fit(frame), frame


def test_mixed_density_sums_and_integrates_to_one_over_categories_and_numbers(mixed):
    est, frame = mixed
    assert est.info()["categorical_columns"] == {"colour": 3, "size": 2}
    assert est.target_columns_ == ["colour", "y", "size", "k"]
    low, high, points = -12.0, 14.0, 800
    step = (high - low) / points
    y_grid = low + step * (np.arange(points) + 0.5)
    levels = {"colour": ["red", "green", "blue"], "size": ["S", "L"]}
    rows = _grid_rows(levels, y_grid, np.arange(5.0))[list(frame.columns)]
    log_p = est.score_samples(rows)
    # Sum over the 6 level combinations (including the empty blue-L) and the 5 integers,
    # midpoint rule over y: a probability x density must total 1.
    assert abs(np.exp(log_p).sum() * step - 1.0) < 1e-2
    # The categorical factor alone: the mass of each combination, against the data's shares.
    mass = np.exp(log_p).reshape(6, -1).sum(axis=1) * step
    shares = frame.groupby(["colour", "size"], observed=False).size() / len(frame)
    expected = [shares.get((c, s), 0.0) for c in levels["colour"] for s in levels["size"]]
    np.testing.assert_allclose(mass, expected, atol=0.02)
    assert mass[5] < 1e-3  # blue-L: never seen, little mass


def test_categorical_context_gives_a_conditional_density_over_the_other_columns():
    from normflows_sci import DensityEstimator

    frame = _mixed_frame(1500, seed=1)
    est = DensityEstimator(context=["colour"], discrete=["k"], bounds={"k": (0, 4)}, **QUICK)
    est.fit(frame)
    assert est.context_columns_ == ["colour"] and est.target_columns_ == ["y", "size", "k"]
    low, high, points = -12.0, 14.0, 800
    step = (high - low) / points
    y_grid = low + step * (np.arange(points) + 0.5)
    for colour in ("red", "blue"):
        rows = _grid_rows({"colour": [colour], "size": ["S", "L"]}, y_grid, np.arange(5.0))
        total = np.exp(est.score_samples(rows[list(frame.columns)])).sum() * step
        assert abs(total - 1.0) < 1e-2, colour
    draws = est.sample(context=pd.DataFrame({"colour": ["blue"] * 300}), random_state=0)
    assert list(draws.columns) == ["y", "size", "k"]
    assert (draws["size"] == "S").mean() > 0.95  # blue rows are all S in the data
    with pytest.raises(ValueError, match="'purple', not seen in training"):
        est.sample(context=pd.DataFrame({"colour": ["red", "purple"]}))
    with pytest.raises(ValueError, match="context column"):
        est.score_samples(frame.head(3).assign(colour=["red", "purple", "red"]))


def test_samples_hold_valid_levels_with_the_input_types(mixed):
    est, frame = mixed
    draws = est.sample(3000, random_state=0)
    assert list(draws.columns) == list(frame.columns)
    assert draws["colour"].dtype == frame["colour"].dtype  # text, as pandas holds it
    assert set(draws["colour"]) <= {"red", "green", "blue"}
    assert draws["size"].dtype == frame["size"].dtype  # same categories, same order
    assert draws["colour"].value_counts(normalize=True)["red"] == pytest.approx(0.5, abs=0.04)
    assert ((draws["colour"] == "blue") & (draws["size"] == "L")).mean() < 0.01
    assert set(np.unique(draws["k"])) <= {0.0, 1.0, 2.0, 3.0, 4.0}
    pd.testing.assert_frame_equal(est.sample(50, random_state=1), est.sample(50, random_state=1))


def test_samples_come_back_in_the_dtypes_of_the_training_columns(tmp_path):
    from normflows_sci import DensityEstimator

    frame = _mixed_frame(300, seed=11)
    frame["colour"] = frame["colour"].astype(object)  # not pandas' default text dtype
    frame["grade"] = np.arange(300, dtype=np.int32) % 3
    est = DensityEstimator(categorical=["colour", "size", "grade"], **QUICK).fit(frame)
    loaded = DensityEstimator.load(est.save(tmp_path / "dtypes.nfs"))
    for model in (est, loaded):
        draws = model.sample(50, random_state=0)
        assert (draws.dtypes == frame.dtypes).all(), draws.dtypes
        assert set(draws["grade"]) <= {0, 1, 2}


def test_numeric_array_with_declared_categorical_columns(tmp_path):
    import json
    import zipfile

    from normflows_sci import DensityEstimator

    rng = np.random.default_rng(3)
    group = rng.choice([10.0, 20.0, 30.0], size=600)
    X = np.column_stack([group, group / 10 + rng.normal(0.0, 0.5, 600)])
    est = DensityEstimator(categorical=[0], **QUICK).fit(X)
    assert est.info()["categorical_columns"] == {"x0": 3}
    draws = est.sample(200, random_state=0)
    assert isinstance(draws, np.ndarray) and set(np.unique(draws[:, 0])) <= {10.0, 20.0, 30.0}
    # 15 is no level of x0: probability zero, not the density of a number between levels.
    with pytest.warns(UserWarning, match="level 15.0, not seen in training"):
        assert np.isneginf(est.score_samples(np.array([[15.0, 1.5]])))[0]
    with pytest.raises(ValueError, match="discrete names the categorical columns"):
        DensityEstimator(categorical=[0], discrete=[0], **QUICK).fit(X)
    loaded = DensityEstimator.load(est.save(tmp_path / "declared.nfs"))
    assert loaded.categorical == [0] and loaded.info() == est.info()
    # At its default the new argument is not written: earlier versions still read the file.
    numeric = DensityEstimator(**QUICK).fit(X).save(tmp_path / "numeric.nfs")
    assert "categorical" not in json.loads(zipfile.ZipFile(numeric).read("config.json"))["params"]


def test_save_load_round_trip_stores_levels_as_data(mixed, tmp_path):
    import json
    import zipfile

    from normflows_sci import DensityEstimator

    est, frame = mixed
    path = est.save(tmp_path / "mixed.nfs")
    loaded = DensityEstimator.load(path)
    np.testing.assert_array_equal(loaded.score_samples(frame), est.score_samples(frame))
    pd.testing.assert_frame_equal(loaded.sample(40, random_state=2), est.sample(40, random_state=2))
    assert loaded.info() == est.info()
    config = json.loads(zipfile.ZipFile(path).read("config.json"))
    assert config["categorical"]["levels"] == [["blue", "green", "red"], ["S", "L"]]
    assert sum(config["categorical"]["counts"]) == len(frame) - 150  # the training rows


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: c["categorical"]["levels"][0].append({"x": 1}), r"levels'\]\[0\] must be"),
        (lambda c: c["categorical"]["counts"].pop(), "must be a list of 6 counts"),
        (lambda c: c["categorical"]["counts"].__setitem__(0, -1), "non-negative integers"),
        (lambda c: c["categorical"]["levels"][1].__setitem__(1, "XL"), "implies the flow columns"),
        (
            lambda c: c["categorical"]["levels"][0].extend(map(str, range(40000))),
            "'autoregressive'",
        ),
        (lambda c: c["categorical"].__setitem__("weights", [0.5]), "a list of 0 weights"),
        (lambda c: c["categorical"].__setitem__("alpha", 0), r"alpha'\] must be a positive"),
        (lambda c: c["categorical"]["kinds"].__setitem__(1, "integer"), "levels of kind"),
    ],
)
def test_damaged_categorical_part_of_a_model_file_is_refused_before_building(
    mixed, tmp_path, damage, message
):

    from normflows_sci import DensityEstimator

    path = mixed[0].save(tmp_path / "mixed.nfs")
    bad = tmp_path / "bad.nfs"
    damaged_copy(path, bad, damage)
    with pytest.raises(ValueError, match=message) as error:
        DensityEstimator.load(bad)
    assert "config field categorical" in str(error.value)


def test_unseen_levels_and_out_of_bounds_rows_score_minus_inf_or_raise_when_strict(mixed):
    est, frame = mixed
    rows = frame.head(6).copy()
    rows["colour"] = rows["colour"].astype(object)
    rows.loc[4, "colour"] = "purple"
    rows.loc[2, "k"] = 7.0  # above the declared bound 4
    reference = est.score_samples(frame.head(6))
    with pytest.warns(UserWarning, match=r"2 of 6 rows .* row 2: column 'k' holds 7, above"):
        scores = est.score_samples(rows)
    assert np.isneginf(scores[[2, 4]]).all()
    np.testing.assert_array_equal(scores[[0, 1, 3, 5]], reference[[0, 1, 3, 5]])
    with pytest.raises(ValueError, match="row 2 of X lies outside the model's support"):
        est.score_samples(rows, strict=True)
    with pytest.raises(ValueError, match=r"row 3 .* 'colour' holds the level 'purple'"):
        est.score(rows.drop(index=2), strict=True)


def test_lattice_values_off_the_lattice_are_outside_the_support():
    from normflows_sci import DensityEstimator

    rng = np.random.default_rng(4)
    X = (5 * rng.poisson(4.0, size=(500, 1)) + 10).astype(float)
    est = DensityEstimator(discrete="auto", **QUICK).fit(X)
    # 12 is an integer but not on 10 + 5 k: before, it silently scored the cell [12, 17).
    with pytest.warns(UserWarning, match=r"holds 12, off its lattice 10 \+ 5 k"):
        scores = est.score_samples(np.array([[12.0], [15.0]]))
    assert np.isneginf(scores[0]) and np.isfinite(scores[1])


def test_mixed_table_refusals():
    from normflows_sci import DensityEstimator

    frame = _mixed_frame(200, seed=5)
    with pytest.raises(ValueError, match="numeric context columns \\['y'\\]"):
        DensityEstimator(context=["y"], **QUICK).fit(frame)
    with pytest.raises(ValueError, match="bounds names the categorical columns \\['size'\\]"):
        DensityEstimator(bounds={"size": (0, 1)}, **QUICK).fit(frame)
    with pytest.raises(ValueError, match=r"X_val has levels not in X .* 'colour'"):
        DensityEstimator(**QUICK).fit(frame, X_val=frame.assign(colour="purple").head(20))
    wide = pd.DataFrame({f"c{i}": np.arange(600) % 500 for i in range(2)}).astype(str)
    wide["y"] = np.random.default_rng(0).normal(size=600)
    with pytest.raises(ValueError, match="would need 250500 weights, more than 200000"):
        DensityEstimator(**QUICK).fit(wide)
    with pytest.raises(ValueError, match="every column is categorical"):
        DensityEstimator(**QUICK).fit(frame[["colour", "size"]])
    with pytest.raises(ValueError, match="categorical must be 'auto', None or a list"):
        DensityEstimator(categorical="all")
    with pytest.raises(TypeError, match="numeric"):  # categorical=None: strings are an error
        DensityEstimator(categorical=None, **QUICK).fit(frame)
    holes = frame.assign(colour=frame["colour"].where(frame.index != 7, None))
    with pytest.raises(ValueError, match="'colour' has 1 missing values \\(first at row 7\\)"):
        DensityEstimator(**QUICK).fit(holes)
    with pytest.raises(TypeError, match="'colour' holds 'mixed-integer' values"):
        DensityEstimator(**QUICK).fit(frame.assign(colour=["red", 3] * 100))


# ----------------------------------------------------------------------------- uncertainty


def test_score_standard_error_and_paired_comparison_with_a_baseline():
    from normflows_sci import DensityEstimator
    from normflows_sci.baselines import GaussianBaseline
    from normflows_sci.estimator import ScoreEstimate

    rng = np.random.default_rng(6)
    X = np.column_stack([rng.normal(size=800), rng.poisson(3.0, size=800)])
    train, test = X[:600], X[600:]
    est = DensityEstimator(discrete=[1], **QUICK).fit(train)
    scores = est.score_samples(test)
    result = est.score(test, return_stderr=True)
    assert isinstance(result, ScoreEstimate) and result.rows == 200
    assert result.mean == est.score(test)  # the float of the scikit-learn contract
    # One integer column: exact quadrature, so the error is the spread over rows alone.
    assert result.stderr == pytest.approx(scores.std(ddof=1) / np.sqrt(200), rel=1e-12)
    base = GaussianBaseline(discrete=[1]).fit(train)
    difference = scores - base.score_samples(test)
    paired = est.compare(base, test)
    assert paired.mean == pytest.approx(difference.mean(), rel=1e-12)
    assert paired.stderr == pytest.approx(difference.std(ddof=1) / np.sqrt(200), rel=1e-12)
    assert tuple(est.compare(est, test)) == (0.0, 0.0, 200)
    with pytest.raises(ValueError, match=r"'x1' is scored as the log-probability .* as a density"):
        est.compare(GaussianBaseline().fit(train), test)

    class Plain:
        def score_samples(self, X):
            return base.score_samples(X)

    with pytest.warns(UserWarning, match=r"cannot check how Plain scores the integer columns"):
        assert est.compare(Plain(), test).mean == pytest.approx(paired.mean, rel=1e-12)
    with pytest.raises(TypeError, match="score_samples"):
        est.compare(object(), test)


def test_compare_refuses_cells_of_another_width():
    from normflows_sci import DensityEstimator
    from normflows_sci.baselines import GaussianBaseline

    rng = np.random.default_rng(7)
    X = np.column_stack([rng.normal(size=400), 5.0 * rng.poisson(3.0, size=400)])
    est = DensityEstimator(discrete=[1], **QUICK).fit(X)
    # The baseline's cells [k, k + 1) hold a fifth of the mass of the model's [k, k + 5): the
    # naive difference would be off by about log 5 nats per row.
    with pytest.raises(ValueError, match=r"'x1' .* cells \[v, v \+ 5\) by this model .* 1\)"):
        est.compare(GaussianBaseline(discrete=[1]).fit(X), X)
    same_cells = GaussianBaseline(discrete=[1], step=5.0).fit(X)
    assert np.isfinite(est.compare(same_cells, X).stderr)


def test_mixed_penguins_fitted_end_to_end():
    from normflows_sci import DensityEstimator

    ds = load_dataset("penguins", categorical=True)
    order = np.random.default_rng(0).permutation(ds.shape[0])
    train, test = ds.data.iloc[order[:250]], ds.data.iloc[order[250:]]
    est = DensityEstimator(bounds=ds.bounds, discrete=ds.discrete, **QUICK).fit(train)
    assert est.info()["categorical_columns"] == {"species": 3, "island": 3, "sex": 2}
    held_out = est.score(test, return_stderr=True)
    assert np.isfinite(held_out.mean) and 0 < held_out.stderr < 1
    draws = est.sample(1000, random_state=0)
    assert list(draws.columns) == ds.columns
    pairs = set(zip(draws["species"], draws["island"]))
    assert pairs <= set(zip(train["species"], train["island"]))  # no Gentoo on Dream
    assert (draws["body_mass_g"] % 25 == 0).all()
    numeric = DensityEstimator(**QUICK).fit(train[ds.columns[3:]])
    with pytest.raises(ValueError, match="not model the same table"):
        est.compare(numeric, test)
    longer = DensityEstimator(bounds=ds.bounds, discrete=ds.discrete, **{**QUICK, "max_epochs": 8})
    paired = est.compare(longer.fit(train), test)
    difference = est.score_samples(test) - longer.score_samples(test)
    assert paired.mean == pytest.approx(difference.mean(), rel=1e-12)
    assert paired.stderr < held_out.stderr  # the categories' share cancels in the pairs


def test_score_standard_error_includes_the_quadrature_error_of_integer_cells():
    from normflows_sci import DensityEstimator

    rng = np.random.default_rng(8)
    X = rng.poisson(3.0, size=(340, 4)).astype(float)
    est = DensityEstimator(discrete="auto", **{**QUICK, "max_epochs": 2}).fit(X[:300])
    result = est.score(X[300:], return_stderr=True)
    scores, row_error = est.score_samples(X[300:]), est.last_score_error_
    assert row_error.max() > 0  # four integer columns: randomised quasi-Monte Carlo cells
    spread = scores.var(ddof=1) / 40
    assert result.stderr == pytest.approx(np.sqrt(spread + (row_error**2).sum() / 40**2))
    assert result.stderr > np.sqrt(spread)


# ----------------------------------------------------------------------------- many levels


def _many_levels(rows: int, seed: int = 9):
    """a (40 levels), b (= a for 80% of rows, else random; 40 levels), c (50 levels): 80000
    combinations, more than a contingency table holds; y depends on a."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 40, rows)
    b = np.where(rng.random(rows) < 0.8, a, rng.integers(0, 40, rows))
    c = rng.integers(0, 50, rows)
    return pd.DataFrame(
        {
            "a": [f"a{i:02d}" for i in a],
            "y": a / 10 + rng.normal(size=rows),
            "b": [f"b{i:02d}" for i in b],
            "c": [f"c{i:02d}" for i in c],
        }
    )


def test_many_level_combinations_get_a_normalised_autoregressive_factor(tmp_path):
    from scipy.special import logsumexp

    from normflows_sci import DensityEstimator

    frame = _many_levels(1500)
    est = DensityEstimator(**QUICK).fit(frame)
    categories = est.categories_
    assert categories.factor == "autoregressive" and categories.counts == ()
    grid = np.meshgrid(*[np.arange(len(v)) for v in categories.levels], indexing="ij")
    every = np.stack(grid, axis=-1).reshape(-1, 3)
    assert len(every) == 80000
    assert logsumexp(categories.log_prob(every)) == pytest.approx(0.0, abs=1e-9)
    draws = est.sample(2000, random_state=0)
    # b follows a (independent columns would agree 1 time in 40).
    assert (draws["a"].str[1:] == draws["b"].str[1:]).mean() > 0.5
    assert set(draws["c"]) <= set(frame["c"])
    loaded = DensityEstimator.load(est.save(tmp_path / "many.nfs"))
    np.testing.assert_array_equal(loaded.score_samples(frame), est.score_samples(frame))
    with pytest.warns(UserWarning, match="'b' holds the level 'b99'"):
        assert np.isneginf(est.score_samples(frame.head(2).assign(b="b99"))).all()


def test_autoregressive_factor_is_conditional_on_categorical_context():
    from scipy.special import logsumexp

    from normflows_sci import DensityEstimator

    frame = _many_levels(1200, seed=10)
    est = DensityEstimator(context=["a"], **QUICK).fit(frame)
    categories = est.categories_
    assert categories.factor == "autoregressive" and est.context_columns_ == ["a"]
    for level in (0, 17):
        grid = np.meshgrid(np.arange(40), np.arange(50), indexing="ij")
        rows = np.stack([np.full(2000, level), grid[0].ravel(), grid[1].ravel()], axis=1)
        assert logsumexp(categories.log_prob(rows)) == pytest.approx(0.0, abs=1e-9)
    given = pd.DataFrame({"a": ["a03"] * 500})
    assert (est.sample(context=given, random_state=0)["b"] == "b03").mean() > 0.5


# ----------------------------------------------------------------------------- numeric levels


def _levels_table(rows: int, seed: int = 11) -> np.ndarray:
    """``rate`` (three non-integer levels, taken as levels by ``categorical="auto"``) and
    ``y`` (continuous, its mean depending on the rate)."""
    rng = np.random.default_rng(seed)
    rate = rng.choice([0.5, 1.7, 2.9], size=rows, p=[0.6, 0.3, 0.1])
    return np.column_stack([rate, 2.0 * rate + rng.normal(0.0, 0.6, rows)])


def test_levels_column_density_sums_and_integrates_to_one():
    from normflows_sci import DensityEstimator

    X = _levels_table(1200)
    est = DensityEstimator(**QUICK).fit(X, columns=["rate", "y"])
    assert est.info()["level_columns"] == {"rate": [0.5, 1.7, 2.9]}
    low, high, points = -10.0, 16.0, 1000
    step = (high - low) / points
    y_grid = low + step * (np.arange(points) + 0.5)
    rows = np.array([[r, y] for r in (0.5, 1.7, 2.9) for y in y_grid])
    mass = np.exp(est.score_samples(rows)).reshape(3, -1).sum(axis=1) * step
    assert abs(mass.sum() - 1.0) < 1e-2
    # P(rate) is the smoothed share of each level in the training rows.
    shares = [np.mean(X[:, 0] == r) for r in (0.5, 1.7, 2.9)]
    np.testing.assert_allclose(mass, shares, atol=0.01)


def test_compare_with_a_baseline_needs_the_same_level_cells():
    """The old comparison could only score the level column as a density (or refused the
    table): a probability against a density is off by the log of the cell width."""
    from normflows_sci import DensityEstimator
    from normflows_sci.baselines import GaussianBaseline, describe_cells, level_cells

    X = _levels_table(900, seed=12)
    train, test = X[:700], X[700:]
    est = DensityEstimator(**QUICK).fit(train, columns=["rate", "y"])
    levels = level_cells(est, ["rate", "y"])
    assert levels == {0: [0.5, 1.7, 2.9]}
    assert describe_cells(["rate", "y"], [], [], levels) == (
        "level columns as log-probabilities of their level cells rate (3)"
    )
    same = GaussianBaseline(levels=levels).fit(train)
    paired = est.compare(same, test)
    difference = est.score_samples(test) - same.score_samples(test)
    assert paired.mean == pytest.approx(difference.mean(), rel=1e-12)
    with pytest.raises(ValueError, match=r"'rate' is scored as the log-probability of its 3 "):
        est.compare(GaussianBaseline().fit(train), test)
    with pytest.raises(ValueError, match=r"'rate' .* 3 levels .* 2 levels"):
        est.compare(GaussianBaseline(levels={0: [0.5, 1.7]}).fit(train[train[:, 0] < 2]), test)
