"""Ensembles: FlowMixture (a mixture of flows) and DensityEstimator(ensemble=...) (issue 21)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from tests_helpers import damaged_copy

from normflows_sci import DensityEstimator
from normflows_sci.distributions import StandardNormal
from normflows_sci.flows import NSF, Flow, FlowMixture
from normflows_sci.samplers import IndependentMH, run
from normflows_sci.transforms import ElementwiseAffine

QUICK = dict(max_epochs=3, verbose=False, random_state=0)


def _distinct_flows(features: int, count: int, context_features: int = 0):
    """``count`` small NSFs with randomised weights (at initialisation they are all the identity)."""
    flows = []
    for k in range(count):
        torch.manual_seed(k)
        flow = NSF(features, transforms=2, hidden_features=(8,), context_features=context_features)
        with torch.no_grad():
            for parameter in flow.parameters():
                parameter.normal_(0.0, 0.4)
        flows.append(flow.double().eval())
    return flows


def _grid_mass(log_density, low: float, high: float, points: int, dims: int) -> float:
    """Trapezoid integral of ``exp(log_density)`` over ``[low, high]^dims`` (dims 1 or 2)."""
    axis = np.linspace(low, high, points)
    mesh = np.stack(np.meshgrid(*[axis] * dims, indexing="ij"), -1).reshape(-1, dims)
    density = np.exp(log_density(mesh)).reshape([points] * dims)
    for _ in range(dims):
        density = np.trapezoid(density, axis, axis=0)
    return float(density)


# ---------------------------------------------------------------------------- FlowMixture


def test_flow_mixture_integrates_to_one_and_is_the_weighted_sum():
    flows = _distinct_flows(2, 3)
    mixture = FlowMixture(flows, weights=[1.0, 2.0, 5.0])

    def log_density(points):
        with torch.no_grad():
            return mixture.log_prob(torch.as_tensor(points)).numpy()

    assert abs(_grid_mass(log_density, -12.0, 12.0, 481, 2) - 1.0) < 1e-3
    x = torch.randn(50, 2, dtype=torch.float64)
    with torch.no_grad():
        members = torch.stack([f.log_prob(x) for f in flows]).numpy()
        expected = logsumexp(members + np.log([[1 / 8], [2 / 8], [5 / 8]]), axis=0)
        np.testing.assert_allclose(mixture.log_prob(x).numpy(), expected, rtol=1e-12)


def test_flow_mixture_samples_follow_its_density():
    # 1-D: the draws' empirical CDF against the CDF integrated from log_prob (Kolmogorov-Smirnov
    # at the 0.1 % level); drawing from one member only, or ignoring the weights, fails it.
    flows = _distinct_flows(1, 2)
    mixture = FlowMixture(flows, weights=[0.2, 0.8])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        draws = mixture.sample(4000, generator=generator).numpy()[:, 0]
        grid = torch.linspace(-15.0, 15.0, 30001, dtype=torch.float64)[:, None]
        density = mixture.log_prob(grid).exp().numpy()
        member = flows[1].log_prob(grid).exp().numpy()
    axis = grid.numpy()[:, 0]
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(axis))])
    one = np.concatenate([[0.0], np.cumsum((member[1:] + member[:-1]) / 2 * np.diff(axis))])
    empirical = np.searchsorted(np.sort(draws), axis, side="right") / len(draws)
    critical = 1.95 / math.sqrt(len(draws))
    assert np.abs(empirical - cdf).max() < critical
    assert np.abs(one - cdf).max() > 3 * critical  # the members differ enough to be told apart


def test_flow_mixture_with_context_shapes_seeds_and_log_prob():
    mixture = FlowMixture(_distinct_flows(2, 3, context_features=1))
    context = torch.tensor([[-1.0], [0.0], [2.0]], dtype=torch.float64)
    with torch.no_grad():
        one = mixture.sample(5, context, generator=torch.Generator().manual_seed(3))
        two = mixture.sample(5, context, generator=torch.Generator().manual_seed(3))
        draws, log_p = mixture.sample_and_log_prob(4, context)
        again = mixture.log_prob(draws.reshape(12, 2), context.repeat(4, 1)).reshape(4, 3)
    assert one.shape == (5, 3, 2) and torch.equal(one, two)
    assert draws.shape == (4, 3, 2) and log_p.shape == (4, 3)
    torch.testing.assert_close(log_p, again)
    assert mixture.sample(0, context).shape == (0, 3, 2)


def test_flow_mixture_is_an_independence_proposal_that_recovers_mode_weights():
    # Two fixed flows, N(4, 1) and N(-4, 1), mixed 50/50, propose for a target with weights
    # 0.7 and 0.3 on the same modes; every chain starts in the left mode.
    flows = [
        Flow(ElementwiseAffine(1, shift=s, learnable=False), StandardNormal(1)) for s in (-4, 4)
    ]

    def target(x):
        modes = torch.stack([-0.5 * (x[:, 0] - 4) ** 2, -0.5 * (x[:, 0] + 4) ** 2])
        return torch.logsumexp(modes + torch.tensor([[0.7], [0.3]]).log(), 0)

    kernel = IndependentMH(target, FlowMixture(flows))
    trace = run(kernel, torch.full((512, 1), -4.0), 200, num_warmup=20, seed=0)
    right = float((trace.samples[..., 0] > 0).float().mean())
    assert abs(right - 0.7) < 0.03


@pytest.mark.parametrize(
    "flows, weights, match",
    [
        ([], None, "flows must be a non-empty list"),
        (["nsf"], None, "flows must be a non-empty list"),
        (2, [1.0], "weights must be 2 positive finite numbers"),
        (2, [1.0, 0.0], "weights must be 2 positive finite numbers"),
        (2, [1.0, math.nan], "weights must be 2 positive finite numbers"),
    ],
)
def test_flow_mixture_refuses_bad_members_and_weights(flows, weights, match):
    if isinstance(flows, int):
        flows = _distinct_flows(1, flows)
    with pytest.raises(ValueError, match=match):
        FlowMixture(flows, weights)


# ---------------------------------------------------------------------------- the estimator


def _table(rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    return np.column_stack([x, 0.5 * x**2 + 0.4 * rng.normal(size=rows)])


def test_small_tables_get_an_ensemble_by_default_and_score_its_mixture():
    X = _table(300)
    est = DensityEstimator(**QUICK).fit(X)
    assert isinstance(est.flow_, FlowMixture) and est.info()["ensemble_members"] == 3
    with torch.no_grad():
        members = np.stack(
            [m.log_prob(torch.as_tensor(X[:40])).double().numpy() for m in est.flow_.members]
        )
    assert np.ptp(members, axis=0).min() > 0  # different seeds, different flows
    expected = logsumexp(members, axis=0) - math.log(3)
    np.testing.assert_allclose(est.score_samples(X[:40]), expected, rtol=1e-6)
    # The ensemble's density in original units integrates to 1.
    low, high = X.min(0) - 4.0, X.max(0) + 4.0
    axes = [np.linspace(lo, hi, 301) for lo, hi in zip(low, high)]
    mesh = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    density = np.exp(est.score_samples(mesh)).reshape(301, 301)
    mass = np.trapezoid(np.trapezoid(density, axes[1], axis=1), axes[0])
    assert abs(mass - 1.0) < 5e-3
    draws = est.sample(3000, random_state=0)
    assert abs(draws[:, 1].mean() - X[:, 1].mean()) < 0.1


@pytest.mark.parametrize(
    "setting, rows, members",
    [
        (dict(transforms=2, ensemble=1), 300, 1),
        (dict(transforms=2), 300, 1),  # a size fixed by hand: no ensemble unless asked
        (dict(transforms=2, ensemble=2), 300, 2),
        (dict(), 600, 1),  # "auto": small tables only
    ],
)
def test_when_the_estimator_builds_an_ensemble(setting, rows, members):
    est = DensityEstimator(**{**QUICK, "max_epochs": 1, **setting}).fit(_table(rows))
    assert est.info()["ensemble_members"] == members
    assert isinstance(est.flow_, FlowMixture) == (members > 1)


def test_ensemble_files_round_trip_and_damaged_ones_are_refused(tmp_path):
    X = _table(200)
    est = DensityEstimator(**{**QUICK, "transforms": 2, "hidden_features": 8, "ensemble": 2})
    est.fit(X)
    path = est.save(tmp_path / "ensemble.nfs")
    loaded = DensityEstimator.load(path)
    assert isinstance(loaded.flow_, FlowMixture) and loaded.info()["ensemble_members"] == 2
    np.testing.assert_array_equal(loaded.score_samples(X[:30]), est.score_samples(X[:30]))
    assert loaded.get_params()["ensemble"] == 2
    for value, match in [
        (0, "config field members must be an integer from 1 to 32"),
        ("2", "config field members must be an integer from 1 to 32"),
        (3, "'log_weights' of 3 finite log-weights"),
        (None, "holds an ensemble's tensors"),
    ]:

        def damage(config, value=value):
            if value is None:
                del config["members"]
            else:
                config["members"] = value

        damaged = tmp_path / "damaged.nfs"
        damaged_copy(path, damaged, damage)
        with pytest.raises(ValueError, match=match):
            DensityEstimator.load(damaged)
    with torch.no_grad():
        est.flow_.log_weights.fill_(0.0)  # weights of 1 and 1: no longer a density
    with pytest.raises(ValueError, match="'log_weights' of 2 finite log-weights"):
        DensityEstimator.load(est.save(tmp_path / "unnormalised.nfs"))
    single = DensityEstimator(**{**QUICK, "transforms": 2, "ensemble": 1}).fit(X)
    config = json.loads(json.dumps(single.info()))
    assert config["ensemble_members"] == 1


def test_ensemble_on_a_mixed_table_samples_valid_categories():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    kind = rng.choice(["a", "b"], size=240)
    value = np.where(kind == "a", -1.0, 2.0) + rng.normal(size=240)
    frame = pd.DataFrame({"kind": kind, "value": value})
    est = DensityEstimator(**{**QUICK, "transforms": 2, "ensemble": 2}).fit(frame)
    draws = est.sample(400, random_state=1)
    assert set(draws["kind"]) == {"a", "b"}
    assert abs(draws.loc[draws["kind"] == "b", "value"].mean() - 2.0) < 0.5
    assert np.isfinite(est.score_samples(frame)).all()


@pytest.mark.parametrize("value", [0, 33, True, 2.5, "many", None])
def test_ensemble_argument_is_checked(value):
    with pytest.raises(ValueError, match="ensemble must be 'auto' or an integer from 1 to 32"):
        DensityEstimator(ensemble=value)


def test_an_ensemble_cannot_be_checkpointed(tmp_path):
    est = DensityEstimator(**{**QUICK, "transforms": 2, "ensemble": 2})
    with pytest.raises(ValueError, match="ensemble=2 cannot be combined with checkpoint"):
        est.fit(_table(100), checkpoint=tmp_path / "run.ckpt")
    assert not (tmp_path / "run.ckpt").exists()


def test_a_member_whose_training_fails_is_left_out_with_a_warning(monkeypatch):
    fit_candidate = DensityEstimator._fit_candidate

    def failing(self, candidate, max_time, problem, *args):
        if problem[4] == 1:  # the second member's seed
            raise ValueError("the training loss is not finite")
        return fit_candidate(self, candidate, max_time, problem, *args)

    monkeypatch.setattr(DensityEstimator, "_fit_candidate", failing)
    est = DensityEstimator(**{**QUICK, "transforms": 2, "ensemble": 3})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(_table(120))
    said = [str(w.message) for w in caught]
    assert said == ["ensemble member 1 left out: the training loss is not finite"]
    assert est.info()["ensemble_members"] == 2  # seeds 0 and 2
    assert np.isfinite(est.score_samples(_table(10, seed=1))).all()
