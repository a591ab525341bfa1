"""DensityEstimator: normalisation in original units, files, resume, conditional models, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from normflows_sci import DensityEstimator
from normflows_sci.estimator import hill_tail_index
from normflows_sci.flows import NSF
from normflows_sci.training import fit_flow

QUICK = dict(max_epochs=4, hidden_features=(32, 32), transforms=3, verbose=False, random_state=0)


def _midpoint(low, high, points):
    step = (high - low) / points
    return low + step * (np.arange(points) + 0.5), step


def test_bounded_column_density_integrates_to_one():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.beta(2.0, 5.0, size=2000)])
    est = DensityEstimator(bounds={"x0": (0.0, 1.0)}, **QUICK).fit(X)
    grid, step = _midpoint(0.0, 1.0, 20000)
    total = np.exp(est.score_samples(grid[:, None])).sum() * step
    assert abs(total - 1.0) < 1e-2
    # Outside the declared bounds the probability is zero: -inf with a warning counting the rows
    # (issue 21; this used to abort the whole call), or an error naming the row with strict=True.
    rows = np.array([[0.5], [1.5], [-0.25], [0.25]])
    with pytest.warns(UserWarning, match=r"2 of 4 rows of X lie outside .* row 1: column 'x0'"):
        scores = est.score_samples(rows)
    assert np.isneginf(scores[[1, 2]]).all() and np.isfinite(scores[[0, 3]]).all()
    np.testing.assert_array_equal(scores[[0, 3]], est.score_samples(rows[[0, 3]]))
    with pytest.raises(ValueError, match=r"row 1 of X .* above its upper bound"):
        est.score_samples(rows, strict=True)


def test_discrete_and_half_bounded_columns_sum_and_integrate_to_one():
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.poisson(3.0, size=3000), rng.exponential(2.0, size=3000)])
    est = DensityEstimator(discrete=["x0"], bounds={"x1": (0.0, None)}, **QUICK).fit(X)
    counts = np.arange(0, 30)
    grid, step = _midpoint(0.0, 60.0, 2400)
    rows = np.array([[k, v] for k in counts for v in grid])
    total = np.exp(est.score_samples(rows)).sum() * step
    assert abs(total - 1.0) < 2e-2
    samples = est.sample(500, random_state=0)
    assert np.all(samples[:, 0] == np.round(samples[:, 0])) and np.all(samples[:, 1] >= 0)
    with pytest.raises(ValueError, match="integers"):
        est.score_samples(np.array([[1.5, 1.0]]))


def test_fit_quality_on_a_known_density():
    """Held-out log-likelihood in original units approaches the truth (mixed column types)."""
    rng = np.random.default_rng(2)

    def draw(n):
        return np.column_stack(
            [rng.normal(3.0, 0.5, n), rng.gamma(2.0, 1.5, n), rng.uniform(-1.0, 2.0, n)]
        )

    def true_log_density(X):
        from scipy import stats

        return (
            stats.norm(3.0, 0.5).logpdf(X[:, 0])
            + stats.gamma(2.0, scale=1.5).logpdf(X[:, 1])
            + stats.uniform(-1.0, 3.0).logpdf(X[:, 2])
        )

    train, test = draw(4000), draw(2000)
    est = DensityEstimator(
        bounds={"x1": (0.0, None), "x2": (-1.0, 2.0)},
        max_epochs=30,
        hidden_features=(64, 64),
        verbose=False,
        random_state=0,
    ).fit(train)
    assert est.score(test) == pytest.approx(true_log_density(test).mean(), abs=0.08)


def test_save_load_round_trip_gives_identical_scores_and_samples(tmp_path):
    rng = np.random.default_rng(3)
    X = np.column_stack([rng.normal(size=800), rng.poisson(2.0, size=800)])
    est = DensityEstimator(discrete="auto", bounds="auto", **QUICK).fit(X)
    path = est.save(tmp_path / "model.nfs")
    loaded = DensityEstimator.load(path)
    np.testing.assert_array_equal(loaded.score_samples(X[:50]), est.score_samples(X[:50]))
    np.testing.assert_array_equal(loaded.sample(20, random_state=5), est.sample(20, random_state=5))
    assert loaded.info() == est.info()
    assert not list(tmp_path.glob(".*tmp"))


def test_damaged_or_foreign_model_files_are_clear_errors(tmp_path):
    rng = np.random.default_rng(4)
    est = DensityEstimator(**QUICK).fit(rng.normal(size=(200, 2)))
    path = est.save(tmp_path / "model.nfs")
    truncated = tmp_path / "truncated.nfs"
    truncated.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match="not a readable normflows_sci model"):
        DensityEstimator.load(truncated)
    foreign = tmp_path / "foreign.nfs"
    foreign.write_text("hello")
    with pytest.raises(ValueError, match="not a readable normflows_sci model"):
        DensityEstimator.load(foreign)
    with pytest.raises(FileNotFoundError):
        DensityEstimator.load(tmp_path / "missing.nfs")


def test_resume_continues_the_same_run(tmp_path):
    data = torch.randn(512, 3)
    val = torch.randn(128, 3)

    def run(checkpoint=None, resume=False, crash_at=None):
        torch.manual_seed(0)
        flow = NSF(3, transforms=2, hidden_features=(16,))
        calls = {"n": 0}

        def crash(batch, generator):
            calls["n"] += 1
            if crash_at is not None and calls["n"] == crash_at:
                raise KeyboardInterrupt("simulated crash")
            return batch

        history = fit_flow(
            flow, data, val_data=val, batch_size=64, max_epochs=5, seed=1, progress=False,
            transform_batch=crash, checkpoint=checkpoint, resume=resume,
        )  # fmt: skip
        return flow, history

    reference, reference_history = run()
    checkpoint = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint, crash_at=8 * 2 + 3)  # 8 steps per epoch: dies during epoch 3
    resumed, resumed_history = run(checkpoint, resume=True)
    assert resumed_history["epoch"] == reference_history["epoch"]
    np.testing.assert_allclose(resumed_history["val_loss"], reference_history["val_loss"])
    for a, b in zip(resumed.state_dict().values(), reference.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_dataframe_columns_and_conditional_density():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(5)
    x = rng.uniform(-2, 2, size=3000)
    y = 2.0 * x + rng.normal(0.0, 0.5, size=3000)
    frame = pd.DataFrame({"temperature": x, "pressure": y})
    est = DensityEstimator(context=["temperature"], **{**QUICK, "max_epochs": 15}).fit(frame)
    assert est.target_columns_ == ["pressure"] and est.context_columns_ == ["temperature"]
    grid, step = _midpoint(-10.0, 10.0, 4000)
    for temperature in (-1.0, 1.5):
        rows = pd.DataFrame({"temperature": temperature, "pressure": grid})
        assert abs(np.exp(est.score_samples(rows)).sum() * step - 1.0) < 1e-2
    draws = est.sample(context=pd.DataFrame({"temperature": np.full(2000, 1.0)}), random_state=0)
    assert list(draws.columns) == ["pressure"]
    assert draws["pressure"].mean() == pytest.approx(2.0, abs=0.25)
    with pytest.raises(ValueError, match="context is required"):
        est.sample(10)


def test_heavy_tailed_columns_are_detected():
    rng = np.random.default_rng(6)
    assert hill_tail_index(rng.standard_t(1.5, size=20000)) < 2.5
    assert hill_tail_index(rng.normal(size=20000)) > 4.0
    X = np.column_stack([rng.normal(size=3000), rng.standard_t(1.5, size=3000)])
    est = DensityEstimator(**QUICK).fit(X)
    assert list(est.info()["heavy_tailed_columns"]) == ["x1"]


def test_bad_input_is_a_clear_error():
    X = np.random.default_rng(7).normal(size=(100, 2))
    with_nan = X.copy()
    with_nan[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"missing values \(NaN\) in columns \{'x1': 1\}"):
        DensityEstimator(**QUICK).fit(with_nan)
    with pytest.raises(ValueError, match="2-D"):
        DensityEstimator(**QUICK).fit(X[:, 0])
    with pytest.raises(RuntimeError, match="not fitted"):
        DensityEstimator().score(X)
    est = DensityEstimator(**QUICK).fit(X)
    with pytest.raises(ValueError, match="must have 2 columns"):
        est.score_samples(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="flow must be one of"):
        DensityEstimator(flow="glow")
    with pytest.raises(ValueError, match="context column 'nope' not found"):
        DensityEstimator(context=["nope"], **QUICK).fit(X)
    with pytest.raises(ValueError, match="non-integer"):
        DensityEstimator(discrete=["x0"], **QUICK).fit(X)


def test_discrete_lattice_spacing_is_detected_and_normalised():
    rng = np.random.default_rng(8)
    X = (5 * rng.poisson(4.0, size=(2000, 1)) + 10).astype(float)
    est = DensityEstimator(discrete="auto", **QUICK).fit(X)
    assert est.spec_.step == (5.0,) and est.spec_.origin == (float(X.min()),)
    lattice = np.arange(10, 200, 5, dtype=float)[:, None]
    assert abs(np.exp(est.score_samples(lattice)).sum() - 1.0) < 2e-2
    draws = est.sample(300, random_state=0)
    assert np.all((draws - 10) % 5 == 0)


@pytest.mark.parametrize("flow", ["tarflow", "cnf"])
def test_transformer_and_continuous_flows_as_estimator_models(flow, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    x[:, 1] += x[:, 0] ** 2
    options = dict(QUICK, hidden_features=(16, 16), transforms=2)
    est = DensityEstimator(flow=flow, **options).fit(x[:200])
    scores = est.score_samples(x[200:])
    assert scores.shape == (100,) and np.isfinite(scores).all()
    est.save(tmp_path / "model.nfs")
    again = DensityEstimator.load(tmp_path / "model.nfs")
    np.testing.assert_allclose(again.score_samples(x[200:]), scores, rtol=1e-5, atol=1e-5)
    assert again.sample(4, random_state=0).shape == (4, 3)


# ----------------------------------------------------------------- the spec and the split (issue 19)

V1_SPEC_KEYS = {
    "columns", "context_columns", "target_columns", "discrete", "step", "origin", "lower", "upper",
    "lower_effective", "upper_effective", "tail_df", "flow", "transforms", "hidden_features",
    "bins", "frame",
}  # fmt: skip


def test_spec_is_a_frozen_table_spec_stored_under_the_format_1_keys(tmp_path):
    import dataclasses
    import json
    import zipfile

    from normflows_sci.estimator import TableSpec

    rng = np.random.default_rng(8)
    X = np.column_stack([5.0 * rng.poisson(3.0, size=300), rng.uniform(size=300)])
    est = DensityEstimator(discrete="auto", bounds="auto", **QUICK).fit(X)
    spec = est.spec_
    assert isinstance(spec, TableSpec) and spec.step == (5.0, 0.0) and spec.upper == (None, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.step = (1.0, 0.0)
    with pytest.warns(DeprecationWarning, match=r"use spec_\.step"):
        assert spec["step"] == [5.0, 0.0]  # the dict access of earlier versions, as a list
    with pytest.raises(KeyError):
        spec["steps"]
    path = est.save(tmp_path / "model.nfs")
    config = json.loads(zipfile.ZipFile(path).read("config.json"))
    assert config["format_version"] == 1 and set(config["spec"]) == V1_SPEC_KEYS
    assert TableSpec.from_dict(config["spec"]) == spec
    assert DensityEstimator.load(path).spec_ == spec


def test_validation_split_is_the_split_fit_makes():
    from normflows_sci.estimator import validation_split

    assert [len(v) for v in validation_split(19, 0.1, seed=0)] == [19, 0]  # too few rows
    assert [len(v) for v in validation_split(20, 0.1, seed=0)] == [18, 2]
    assert [len(v) for v in validation_split(500, 0.0, seed=0)] == [500, 0]
    train, held_out = validation_split(200, 0.1, seed=0)
    assert sorted(np.concatenate([train, held_out]).tolist()) == list(range(200))
    X = np.random.default_rng(9).normal(size=(200, 2))
    inner = DensityEstimator(**QUICK).fit(X)
    outer = DensityEstimator(**QUICK).fit(X[train], X_val=X[held_out])
    assert inner.history_["val_loss"] == outer.history_["val_loss"]
    np.testing.assert_array_equal(inner.score_samples(X[:20]), outer.score_samples(X[:20]))


def test_constant_context_column_warning_points_at_the_callers_fit():
    rng = np.random.default_rng(10)
    X = np.column_stack([np.full(100, 2.0), rng.normal(size=100)])
    with pytest.warns(UserWarning, match=r"context columns \['x0'\] are constant") as caught:
        DensityEstimator(context=[0], **{**QUICK, "max_epochs": 1}).fit(X)
    assert [w.filename for w in caught if "constant" in str(w.message)] == [__file__]
