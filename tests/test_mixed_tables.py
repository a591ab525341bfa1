"""Mixed categorical / continuous tables (issue 21): the shipped mixed penguins table, the exact
joint density over categories x numbers, samples, files, score uncertainty and out-of-support
rows."""

from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np
import pytest

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


def test_mixed_density_sums_and_integrates_to_one_over_categories_and_numbers():
    from normflows_sci import DensityEstimator

    frame = _mixed_frame(1500)
    est = DensityEstimator(discrete=["k"], bounds={"k": (0, 4)}, **QUICK).fit(frame)
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
