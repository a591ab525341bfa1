"""MCMC diagnostics: autocorrelation times on AR(1) chains, ESS, split R-hat, agreement with ArviZ,
mode statistics, InferenceData conversion and input validation."""

from __future__ import annotations

import math
import sys
import warnings

import pytest
import torch

from normflows_sci.samplers import diagnostics as diag
from normflows_sci.samplers.diagnostics import (
    autocorrelation,
    count_mode_switches,
    effective_sample_size,
    ess_per_second,
    integrated_autocorrelation_time,
    mode_occupancy,
    mode_weight_error,
    split_rhat,
    to_inference_data,
)


def ar1(draws, chains, rho, *event, seed=0, dtype=torch.float64, device="cpu"):
    """Stationary AR(1) chains x_t = rho x_{t-1} + e_t: tau = (1 + rho) / (1 - rho)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(draws, chains, *event, generator=g, dtype=dtype)
    x = torch.empty_like(noise)
    x[0] = noise[0] / math.sqrt(1 - rho**2)
    for t in range(1, draws):
        x[t] = rho * x[t - 1] + noise[t]
    return x.to(device)


@pytest.fixture(scope="module")
def ar_chains():
    return {rho: ar1(2000, 64, rho, seed=int(10 * rho)) for rho in (0.5, 0.9)}


# ------------------------------------------------------------------------------------------------
# autocorrelation and tau
# ------------------------------------------------------------------------------------------------


def test_autocorrelation_matches_direct_sum():
    x = torch.randn(37, 3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rho = autocorrelation(x, max_lag=10)
    assert rho.shape == (11, 3, 2)
    centred = x - x.mean(0)
    direct = torch.stack([(centred[: 37 - k] * centred[k:]).sum(0) / 37 for k in range(11)])
    torch.testing.assert_close(rho, direct / direct[0], rtol=1e-12, atol=1e-12)
    assert autocorrelation(x).shape == (37, 3, 2)


def test_autocorrelation_of_ar1_decays_geometrically(ar_chains):
    rho = autocorrelation(ar_chains[0.5], max_lag=3).mean(1)
    torch.testing.assert_close(
        rho, torch.tensor([1, 0.5, 0.25, 0.125], dtype=rho.dtype), atol=0.02, rtol=0
    )


@pytest.mark.parametrize("rho", [0.5, 0.9])
@pytest.mark.parametrize("method", ["geyer", "sokal"])
def test_tau_of_ar1_chains(ar_chains, rho, method):
    true_tau = (1 + rho) / (1 - rho)
    x = ar_chains[rho]
    with warnings.catch_warnings():
        # a few chains' noisy Sokal estimates exceed 2000 / 50 draws and are flagged
        warnings.simplefilter("ignore", RuntimeWarning)
        per_chain = integrated_autocorrelation_time(x, method=method)
    assert per_chain.shape == (64,)
    assert abs(per_chain.mean().item() / true_tau - 1) < 0.1
    pooled = integrated_autocorrelation_time(x, method=method, pooled=True)
    assert pooled.shape == ()
    assert abs(pooled.item() / true_tau - 1) < 0.1


def test_tau_iid_is_one_and_geyer_sees_antithetic_chains():
    iid = torch.randn(2000, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for method in ("geyer", "sokal"):
        tau = integrated_autocorrelation_time(iid, method=method, pooled=True)
        assert abs(tau.item() - 1) < 0.1
    # rho = -0.5: tau = 1/3 < 1; Geyer's pairs handle negative autocorrelation.
    tau = integrated_autocorrelation_time(ar1(2000, 32, -0.5, seed=3), pooled=True)
    assert abs(tau.item() - 1 / 3) < 0.05


def test_sokal_warns_when_chains_are_too_short():
    walk = torch.randn(50, 4, generator=torch.Generator().manual_seed(4)).cumsum(0)
    with pytest.warns(RuntimeWarning, match="Sokal"):
        integrated_autocorrelation_time(walk, method="sokal", c=10.0)


def test_tau_event_dimensions_are_independent():
    x = torch.stack([ar1(1000, 16, 0.0, seed=5), ar1(1000, 16, 0.8, seed=6)], dim=-1)
    tau = integrated_autocorrelation_time(x, pooled=True)
    assert tau.shape == (2,)
    assert abs(tau[0].item() - 1) < 0.15 and abs(tau[1].item() / 9 - 1) < 0.15
    assert integrated_autocorrelation_time(x).shape == (16, 2)


def test_constant_series_conventions():
    x = torch.randn(100, 3, generator=torch.Generator().manual_seed(7))
    x[:, 1] = 2.0  # a stuck chain: its own autocorrelation is undefined
    tau = integrated_autocorrelation_time(x)
    assert torch.isnan(tau[1]) and torch.isfinite(tau[[0, 2]]).all()
    assert torch.isnan(autocorrelation(x)[:, 1]).all()
    constant = torch.full((100, 4), 0.1)
    assert effective_sample_size(constant).item() == 400  # ArviZ's convention
    assert torch.isnan(split_rhat(constant))
    stuck_apart = constant + torch.arange(4.0)
    assert effective_sample_size(stuck_apart).item() < 10
    assert split_rhat(stuck_apart).item() == math.inf


def test_block_processing_gives_identical_results(monkeypatch):
    x = ar1(300, 12, 0.7, 3, seed=8)
    before = [
        autocorrelation(x, max_lag=20),
        integrated_autocorrelation_time(x),
        integrated_autocorrelation_time(x, pooled=True),
        effective_sample_size(x),
        effective_sample_size(x, pooled=False),
    ]
    monkeypatch.setattr(diag, "_FFT_BUDGET", 2000)  # a few columns per FFT block
    after = [
        autocorrelation(x, max_lag=20),
        integrated_autocorrelation_time(x),
        integrated_autocorrelation_time(x, pooled=True),
        effective_sample_size(x),
        effective_sample_size(x, pooled=False),
    ]
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# ESS and R-hat
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rank_normalized", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ess_of_iid_draws_is_close_to_n(rank_normalized, dtype):
    x = torch.randn(1000, 64, 2, generator=torch.Generator().manual_seed(9), dtype=dtype)
    ess = effective_sample_size(x, rank_normalized=rank_normalized)
    assert ess.shape == (2,) and ess.dtype == dtype
    assert ((ess / 64000 - 1).abs() < 0.1).all()
    per_chain = effective_sample_size(x, pooled=False, rank_normalized=rank_normalized)
    assert per_chain.shape == (64, 2)
    assert abs(per_chain.mean().item() / 1000 - 1) < 0.1


def test_ess_of_ar1_chains(ar_chains):
    for rho, x in ar_chains.items():
        expected = x.shape[0] * x.shape[1] * (1 - rho) / (1 + rho)
        assert abs(effective_sample_size(x).item() / expected - 1) < 0.1


def test_per_chain_ess_equals_single_chain_traces():
    x = ar1(501, 5, 0.6, 2, seed=10)
    for options in ({}, {"rank_normalized": True}, {"split": False}):
        per_chain = effective_sample_size(x, pooled=False, **options)
        singles = torch.stack([effective_sample_size(x[:, i : i + 1], **options) for i in range(5)])
        torch.testing.assert_close(per_chain, singles, rtol=1e-12, atol=0)


def test_ess_drops_when_chains_disagree():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    apart = x + torch.linspace(-3, 3, 8, dtype=torch.float64)
    assert effective_sample_size(apart).item() < 0.05 * effective_sample_size(x).item()


def test_ess_per_second():
    x = ar1(400, 8, 0.5, seed=12)
    torch.testing.assert_close(ess_per_second(x, 4.0), effective_sample_size(x) / 4)
    torch.testing.assert_close(
        ess_per_second(x, 2, pooled=False), effective_sample_size(x, pooled=False) / 2
    )
    with pytest.raises(ValueError, match="seconds"):
        ess_per_second(x, 0.0)


@pytest.mark.parametrize("rank_normalized", [False, True])
def test_split_rhat_flags_poor_mixing(rank_normalized):
    g = torch.Generator().manual_seed(13)
    mixed = torch.randn(1000, 16, 3, generator=g, dtype=torch.float64)
    rhat = split_rhat(mixed, rank_normalized=rank_normalized)
    assert rhat.shape == (3,) and (rhat < 1.01).all() and (rhat > 0.99).all()
    apart = mixed + torch.linspace(-1, 1, 16, dtype=torch.float64).reshape(1, 16, 1)
    assert (split_rhat(apart, rank_normalized=rank_normalized) > 1.1).all()
    # every chain drifts the same way: only splitting can see it
    drift = mixed + torch.linspace(0, 3, 1000, dtype=torch.float64).reshape(1000, 1, 1)
    assert (split_rhat(drift, rank_normalized=rank_normalized) > 1.1).all()
    # a single chain is split in two
    assert split_rhat(mixed[:, :1], rank_normalized=rank_normalized).shape == (3,)


def test_rank_rhat_sees_a_chain_with_a_different_scale():
    g = torch.Generator().manual_seed(14)
    x = torch.randn(1000, 8, generator=g, dtype=torch.float64)
    x[:, 0] *= 4  # same mean, wider: the folded (tail) R-hat notices
    assert split_rhat(x).item() < 1.05
    assert split_rhat(x, rank_normalized=True).item() > 1.1


# ------------------------------------------------------------------------------------------------
# agreement with ArviZ
# ------------------------------------------------------------------------------------------------


def _traces():
    g = torch.Generator().manual_seed(15)
    yield "ar1", ar1(400, 6, 0.8, seed=16)
    yield "odd-draws", ar1(257, 4, 0.3, seed=17)
    yield "antithetic", ar1(300, 4, -0.6, seed=18)
    shifted = torch.randn(200, 5, generator=g, dtype=torch.float64)
    yield "shifted", shifted + torch.arange(5.0, dtype=torch.float64) * 0.3
    yield "ties", torch.randint(0, 4, (301, 6), generator=g).double()
    yield "heavy-tail", torch.distributions.StudentT(1.5).sample((300, 4)).double()


@pytest.mark.parametrize("x", [pytest.param(x, id=name) for name, x in _traces()])
def test_agrees_with_arviz(x):
    arviz = pytest.importorskip("arviz")
    data = x.T.numpy()  # ArviZ: (chain, draw)
    cases = [
        (effective_sample_size(x), arviz.ess(data, method="mean")),
        (effective_sample_size(x, rank_normalized=True), arviz.ess(data, method="bulk")),
        (effective_sample_size(x, split=False), arviz.ess(data, method="identity")),
        (split_rhat(x), arviz.rhat(data, method="split")),
        (split_rhat(x, rank_normalized=True), arviz.rhat(data, method="rank")),
    ]
    for ours, theirs in cases:
        assert ours.item() == pytest.approx(float(theirs), rel=1e-10)
    for i in range(2):  # one-chain traces: our per-chain ESS
        per_chain = effective_sample_size(x, pooled=False)[i].item()
        assert per_chain == pytest.approx(
            float(arviz.ess(data[i : i + 1], method="mean")), rel=1e-10
        )


def test_agrees_with_arviz_on_event_dimensions():
    arviz = pytest.importorskip("arviz")
    g = torch.Generator().manual_seed(19)
    x = torch.randn(300, 4, 3, 2, generator=g, dtype=torch.float64).cumsum(0) * 0.05
    x = x + torch.randn(300, 4, 3, 2, generator=g, dtype=torch.float64)
    dataset = arviz.convert_to_dataset(x.movedim(0, 1).numpy())
    for ours, method in [
        (effective_sample_size(x, rank_normalized=True), "bulk"),
        (effective_sample_size(x), "mean"),
    ]:
        theirs = torch.as_tensor(arviz.ess(dataset, method=method)["x"].values)
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=0)
    theirs = torch.as_tensor(arviz.rhat(dataset, method="rank")["x"].values)
    torch.testing.assert_close(split_rhat(x, rank_normalized=True), theirs, rtol=1e-10, atol=0)


# ------------------------------------------------------------------------------------------------
# modes
# ------------------------------------------------------------------------------------------------


def test_mode_occupancy_and_weights():
    labels = torch.tensor([[0, 0, 1, 2], [0, 1, 1, 2], [1, 1, 1, 2]])
    occupancy = mode_occupancy(labels, 3)
    expected = torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.0, 0.75, 0.25]])
    torch.testing.assert_close(occupancy.per_draw, expected)
    torch.testing.assert_close(occupancy.overall, torch.tensor([3, 6, 3]) / 12.0)
    per_draw, overall = mode_occupancy(labels, 4)  # an empty mode
    assert per_draw.shape == (3, 4) and overall[3].item() == 0
    assert mode_weight_error(labels, [0.25, 0.5, 0.25]) == pytest.approx(0.0)
    assert mode_weight_error(labels, torch.tensor([0.5, 0.25, 0.25])) == pytest.approx(0.25)
    assert mode_weight_error(labels, [0.2, 0.3, 0.2, 0.3]) == pytest.approx(0.3)
    torch.testing.assert_close(count_mode_switches(labels), torch.tensor([1, 1, 0, 0]))


def test_mode_weight_error_of_many_chains():
    g = torch.Generator().manual_seed(20)
    weights = torch.tensor([0.2, 0.3, 0.5])
    labels = torch.multinomial(weights, 200 * 100, replacement=True, generator=g).reshape(200, 100)
    assert mode_weight_error(labels, weights) < 0.02
    assert count_mode_switches(labels).float().mean().item() == pytest.approx(199 * 0.62, rel=0.05)


def test_mode_input_validation():
    labels = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="num_modes"):
        mode_occupancy(labels, 0)
    with pytest.raises(ValueError, match="< num_modes"):
        mode_occupancy(labels, 1)
    with pytest.raises(TypeError, match="integer dtype"):
        mode_occupancy(labels.float(), 2)
    with pytest.raises(ValueError, match=r"\(draws, chains\)"):
        count_mode_switches(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="non-negative"):
        count_mode_switches(torch.tensor([[0, -1]]))
    with pytest.raises(ValueError, match="sum to 1"):
        mode_weight_error(labels, [0.5, 0.6])
    with pytest.raises(ValueError, match="1-D"):
        mode_weight_error(labels, [[0.5, 0.5]])
    with pytest.raises(ValueError, match="< num_modes"):
        mode_weight_error(labels, [1.0])


# ------------------------------------------------------------------------------------------------
# validation, devices
# ------------------------------------------------------------------------------------------------


def test_trace_input_validation():
    x = torch.randn(10, 2)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        effective_sample_size(x.numpy())
    with pytest.raises(ValueError, match=r"\(draws, chains, \*event\)"):
        split_rhat(torch.randn(10))
    with pytest.raises(ValueError, match="at least 4 draws"):
        split_rhat(torch.randn(3, 4))
    with pytest.raises(ValueError, match="at least 4 draws"):
        effective_sample_size(torch.randn(3, 4))
    with pytest.raises(ValueError, match="NaN or inf"):
        integrated_autocorrelation_time(torch.tensor([[1.0], [math.nan], [0.0], [1.0]]))
    with pytest.raises(ValueError, match="method"):
        integrated_autocorrelation_time(x, method="emcee")
    with pytest.raises(ValueError, match="c must be"):
        integrated_autocorrelation_time(x, method="sokal", c=-1.0)
    with pytest.raises(ValueError, match="max_lag"):
        autocorrelation(x, max_lag=10)
    with pytest.raises(TypeError, match="pooled"):
        effective_sample_size(x, pooled="yes")
    with pytest.raises(TypeError, match="real"):
        effective_sample_size(torch.randn(10, 2, dtype=torch.complex64))


def test_integer_and_bool_traces_are_accepted():
    labels = torch.randint(0, 2, (500, 8), generator=torch.Generator().manual_seed(21))
    ess = effective_sample_size(labels == 1)
    assert ess.dtype == torch.get_default_dtype() and abs(ess.item() / 4000 - 1) < 0.15


def test_follows_device_and_dtype(device):
    for dtype in (torch.float32, torch.float64):
        x = ar1(500, 8, 0.5, 2, seed=22, dtype=dtype, device=device)
        outputs = [
            autocorrelation(x, max_lag=5),
            integrated_autocorrelation_time(x),
            integrated_autocorrelation_time(x, method="sokal", pooled=True),
            effective_sample_size(x),
            effective_sample_size(x, rank_normalized=True, pooled=False),
            split_rhat(x),
            split_rhat(x, rank_normalized=True),
        ]
        for out in outputs:
            assert out.device == x.device and out.dtype == dtype
            assert torch.isfinite(out).all()
        on_device = effective_sample_size(x, rank_normalized=True, pooled=False).cpu()
        cpu = effective_sample_size(x.cpu(), rank_normalized=True, pooled=False)
        torch.testing.assert_close(on_device, cpu)
    labels = torch.randint(0, 3, (20, 6), generator=torch.Generator().manual_seed(23)).to(device)
    assert mode_occupancy(labels, 3).per_draw.device == labels.device
    assert count_mode_switches(labels).device == labels.device


# ------------------------------------------------------------------------------------------------
# ArviZ conversion
# ------------------------------------------------------------------------------------------------


def test_to_inference_data():
    arviz = pytest.importorskip("arviz")
    g = torch.Generator().manual_seed(24)
    samples = torch.randn(50, 4, 2, generator=g)
    log_prob = torch.randn(50, 4, generator=g)
    per_draw = torch.rand(50, 4, generator=g)
    idata = to_inference_data(samples, log_prob=log_prob, acceptance=per_draw)
    assert isinstance(idata, arviz.InferenceData)
    posterior = idata.posterior["x"]
    assert posterior.dims[:2] == ("chain", "draw") and posterior.shape == (4, 50, 2)
    torch.testing.assert_close(torch.as_tensor(posterior.values), samples.movedim(0, 1))
    torch.testing.assert_close(torch.as_tensor(idata.sample_stats["lp"].values), log_prob.T)
    torch.testing.assert_close(
        torch.as_tensor(idata.sample_stats["acceptance_rate"].values), per_draw.T
    )
    # ArviZ's own diagnostics on the converted data agree with ours
    theirs = torch.as_tensor(arviz.ess(idata, method="bulk")["x"].values)
    torch.testing.assert_close(
        effective_sample_size(samples, rank_normalized=True).double(), theirs, rtol=1e-5, atol=0
    )

    named = to_inference_data(samples, names=["a", "b"], acceptance={"local": torch.rand(4)})
    assert set(named.posterior.data_vars) == {"a", "b"}
    assert named.posterior["b"].shape == (4, 50)
    assert named.sample_stats["acceptance_rate_local"].dims == ("chain",)
    mapping = to_inference_data({"pos": samples, "energy": log_prob})
    assert set(mapping.posterior.data_vars) == {"pos", "energy"}

    with pytest.raises(ValueError, match="log_prob"):
        to_inference_data(samples, log_prob=torch.randn(50, 3))
    with pytest.raises(ValueError, match="acceptance"):
        to_inference_data(samples, acceptance=torch.rand(50))
    with pytest.raises(ValueError, match="names"):
        to_inference_data(samples, names=["a", "b", "c"])
    with pytest.raises(ValueError, match="share"):
        to_inference_data({"a": samples, "b": torch.randn(40, 4)})


def test_to_inference_data_without_arviz(monkeypatch):
    monkeypatch.setitem(sys.modules, "arviz", None)  # import arviz -> ImportError
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ImportError, match="pip install arviz"):
            to_inference_data(torch.randn(10, 2))
