"""AIS and SMC from a flow recover the exact log Z of known targets within their error bars."""

from __future__ import annotations

import math
import warnings
from functools import partial

import pytest
import torch

from normflows_sci.flows import RealNVP
from normflows_sci.samplers import AIS, HMC, MALA, SMC, RandomWalkMH, StepSizeAdaptation, anneal
from normflows_sci.training.fab import fab_ais

LOG_Z = math.log(7.5)  # the unnormalised mixture below integrates to 7.5


def _mixture(x):
    """Two 2-D Gaussians (sd 0.5) at (+-2, 0) with weights 0.3 / 0.7, scaled by 7.5."""
    shift = torch.tensor([2.0, 0.0], dtype=x.dtype)
    log_norm = -math.log(2 * math.pi * 0.25)
    a = math.log(0.3) + log_norm - 2.0 * (x - shift).square().sum(-1)
    b = math.log(0.7) + log_norm - 2.0 * (x + shift).square().sum(-1)
    return torch.logaddexp(a, b) + LOG_Z


def _broad_flow(dtype):
    """An untrained flow (identity at init) scaled to cover both modes: q = N(0, 3^2 I)."""
    torch.manual_seed(0)
    flow = RealNVP(2, transforms=2, hidden_features=(16,)).to(dtype)
    return _Scaled(flow, 3.0)


class _Scaled:
    """``x = s * y`` with ``y`` from ``flow``: a proposal that is deliberately far from the target."""

    def __init__(self, flow, scale):
        self.flow, self.scale = flow, scale

    def sample_and_log_prob(self, n, generator=None):
        y, log_q = self.flow.sample_and_log_prob(n, generator=generator)
        return self.scale * y, log_q - y.shape[-1] * math.log(self.scale)

    def log_prob(self, x):
        return self.flow.log_prob(x / self.scale) - x.shape[-1] * math.log(self.scale)


@pytest.mark.parametrize("method", [AIS, SMC])
@pytest.mark.parametrize("kernel", [HMC, MALA, RandomWalkMH])
def test_log_z_within_error_bars(method, kernel):
    flow = _broad_flow(torch.float64)
    sampler = method(_mixture, flow, num_temperatures=16, kernel=kernel, mcmc_steps=2)
    out = sampler.sample(2000, replicas=8, generator=torch.Generator().manual_seed(1))
    assert out.log_z_stderr > 0
    assert out.log_z_stderr < 0.1
    assert abs(out.log_z - LOG_Z) < 4 * out.log_z_stderr
    # The final particles carry the mode weights: 0.7 on the left mode.
    left = float((out.weights * (out.samples[:, 0] < 0)).sum())
    assert left == pytest.approx(0.7, abs=0.05)
    if method is SMC:
        assert out.resamples > 0
    else:
        assert out.resamples == 0


@pytest.mark.parametrize(
    "kernel, per_move", [(MALA, 1), (RandomWalkMH, 1), (partial(HMC, num_leapfrog=3), 3)]
)
def test_each_level_reuses_the_densities_of_the_last_moves(kernel, per_move):
    # Target rows evaluated: the start, every MCMC move, and once between levels (the increment
    # of the next level and its starting state from the same log p and gradient).
    rows = []

    def counting(x):
        rows.append(x.shape[0])
        return _mixture(x)

    sampler = AIS(
        counting, _broad_flow(torch.float64), num_temperatures=5, kernel=kernel, mcmc_steps=2
    )
    with warnings.catch_warnings():  # 64 particles count evaluations; their log Z is no estimate
        warnings.simplefilter("ignore", RuntimeWarning)
        out = sampler.sample(64, generator=torch.Generator().manual_seed(0))
    assert sum(rows) == 64 * (1 + 5 * 2 * per_move + 4)
    assert out.acceptance.shape == (5,) and bool((out.acceptance > 0).all())


def test_annealing_improves_on_plain_importance_sampling():
    flow = _broad_flow(torch.float64)
    generator = torch.Generator().manual_seed(2)
    one = AIS(_mixture, flow, num_temperatures=1, mcmc_steps=1).sample(4000, generator=generator)
    many = AIS(_mixture, flow, num_temperatures=32, mcmc_steps=2).sample(4000, generator=generator)
    assert many.ess_fraction > 2 * one.ess_fraction


def test_exact_flow_gives_exact_log_z_and_uniform_weights():
    """A normalised target equal to the flow: every AIS weight is 1 and log Z = 0."""
    torch.manual_seed(0)
    flow = RealNVP(2, transforms=2, hidden_features=(8,)).to(torch.float64)
    out = AIS(flow.log_prob, flow, num_temperatures=4).sample(
        256, generator=torch.Generator().manual_seed(0)
    )
    assert out.log_z == pytest.approx(0.0, abs=1e-9)
    assert out.ess == pytest.approx(256.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_temperatures=0), "num_temperatures"),
        (dict(schedule=[0.0, 0.7, 0.5, 1.0]), "schedule"),
        (dict(schedule=[0.1, 1.0]), "schedule"),
        (dict(kernel="nuts"), "kernel"),
        (dict(mcmc_steps=0), "mcmc_steps"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AIS(_mixture, _broad_flow(torch.float32), **kwargs)


def test_bad_sample_arguments():
    sampler = AIS(_mixture, _broad_flow(torch.float32))
    with pytest.raises(ValueError, match="replicas"):
        sampler.sample(10, replicas=3)
    with pytest.raises(ValueError, match="resample_threshold"):
        SMC(_mixture, _broad_flow(torch.float32), resample_threshold=0.0)
    with pytest.raises(TypeError, match="flow"):
        AIS(_mixture, object())


@pytest.mark.parametrize("sampler", [AIS, SMC])
def test_a_kernel_value_carries_its_hyperparameters_and_the_name_is_a_deprecated_alias(sampler):
    """``kernel=partial(HMC, num_leapfrog=3)`` is the value form of the old ``kernel="hmc"`` with
    ``kernel_options``: the same moves, the same numbers for the same seed; the name warns."""
    flow = _broad_flow(torch.float64)
    by_value = sampler(_mixture, flow, num_temperatures=3, kernel=partial(HMC, num_leapfrog=3))
    with pytest.warns(DeprecationWarning, match=r"kernel=HMC"):
        by_name = sampler(
            _mixture, flow, num_temperatures=3, kernel="hmc", kernel_options={"num_leapfrog": 3}
        )
    a = by_value.sample(128, generator=torch.Generator().manual_seed(1))
    b = by_name.sample(128, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.samples, b.samples) and torch.equal(a.log_weights, b.log_weights)


@pytest.mark.parametrize(
    "kernel, error",
    [(MALA(_mixture), TypeError), (partial(MALA, 0.1), TypeError), (len, TypeError)],
)
def test_a_kernel_that_is_not_a_kernel_class_is_refused_naming_the_argument(kernel, error):
    """An instance (AIS builds one kernel per temperature), a partial with positional
    arguments, or an unrelated callable: a TypeError that says what to pass."""
    with pytest.raises(error, match=r"kernel must be a kernel class"):
        AIS(_mixture, _broad_flow(torch.float64), kernel=kernel)


def test_fab_ais_takes_a_kernel_value():
    """fab_ais with ``kernel=MALA`` runs MALA moves (the old name-only argument refused a
    class); the name still works, with a DeprecationWarning."""
    flow = _broad_flow(torch.float64).flow
    out = fab_ais(flow, _mixture, 64, kernel=MALA, generator=torch.Generator().manual_seed(0))
    with pytest.warns(DeprecationWarning, match="kernel=MALA"):
        old = fab_ais(flow, _mixture, 64, kernel="mala", generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["log_weights"], old["log_weights"])


def test_annealing_adapts_one_pooled_step_size_with_the_adaptation_object():
    """anneal's step size follows StepSizeAdaptation(pooled=True): every particle shares it, and
    a partial's target_accept (carried by the kernel value) drives it (a higher target, a
    smaller step, a higher acceptance)."""
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    base = lambda y: -0.5 * (y / 3).square().sum(-1) - math.log(2 * math.pi * 9)  # noqa: E731
    schedule = torch.linspace(0, 1, 9, dtype=torch.float64)
    rates = []
    for accept in (0.3, 0.9):
        kernel = partial(RandomWalkMH, step_size=1.0, target_accept=accept)
        out = anneal(
            x,
            base,
            _mixture,
            schedule,
            kernel=kernel,
            mcmc_steps=4,
            generator=torch.Generator().manual_seed(1),
        )
        rates.append(float(out["acceptance"][-3:].mean()))
    assert rates[1] > rates[0] + 0.2
    adaptation = StepSizeAdaptation(0.5, pooled=True)
    state = adaptation.update(adaptation.init(torch.full((3,), 0.1)), torch.tensor([0.0, 1.0, 1.0]))
    expected = 0.1 * math.exp(2.0 * (2 / 3 - 0.5))
    assert torch.allclose(state.step_size, torch.full((3,), expected))


@pytest.mark.parametrize(
    "kernel, name",
    [(partial(MALA, step_size=-1.0), "step_size"), (partial(HMC, num_leapfrog=0), "num_leapfrog")],
)
def test_a_kernel_value_with_a_bad_hyperparameter_is_refused_when_the_sampler_is_built(
    kernel, name
):
    """The partial's hyperparameters are checked by AIS/SMC's constructor (one kernel built),
    not after the flow has been sampled."""
    for sampler in (AIS, SMC):
        with pytest.raises(ValueError, match=name):
            sampler(_mixture, _broad_flow(torch.float64), kernel=kernel)


def test_annealing_positions_are_a_schedule_and_betas_is_a_deprecated_alias():
    """Old code called the positions on the flow -> target path ``betas`` (the name of an
    inverse temperature): ``schedule=`` did not exist. ``betas=`` keeps working, with a
    DeprecationWarning naming ``schedule``, and gives the same numbers."""
    schedule = [0.0, 0.25, 0.5, 1.0]
    new = AIS(_mixture, _broad_flow(torch.float64), schedule=schedule, kernel=MALA)
    assert new.schedule.tolist() == schedule
    with pytest.warns(DeprecationWarning, match="schedule="):
        old = AIS(_mixture, _broad_flow(torch.float64), betas=schedule, kernel=MALA)
    with pytest.warns(DeprecationWarning, match=r"\.schedule"):
        assert old.betas.tolist() == schedule
    with pytest.warns(DeprecationWarning, match="schedule="):
        SMC(_mixture, _broad_flow(torch.float64), betas=schedule)
    results = [
        sampler.sample(64, generator=torch.Generator().manual_seed(3)) for sampler in (new, old)
    ]
    assert results[0].log_z == results[1].log_z
    with pytest.raises(TypeError, match="not both"):
        AIS(_mixture, _broad_flow(torch.float64), schedule=schedule, betas=schedule)

    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    base = lambda y: -0.5 * y.square().sum(-1) - math.log(2 * math.pi)  # noqa: E731
    runs = [
        anneal(
            x,
            base,
            _mixture,
            torch.tensor(schedule),
            kernel=MALA,
            generator=torch.Generator().manual_seed(1),
        ),
    ]
    with pytest.warns(DeprecationWarning, match="schedule="):
        runs.append(
            anneal(
                x,
                base,
                _mixture,
                betas=torch.tensor(schedule),
                kernel=MALA,
                generator=torch.Generator().manual_seed(1),
            )
        )
    assert torch.equal(runs[0]["log_z_groups"], runs[1]["log_z_groups"])
    with pytest.raises(TypeError, match="schedule"):
        anneal(x, base, _mixture, kernel=MALA)
    with pytest.raises(TypeError, match="betta"):  # a misspelt keyword is not swallowed
        anneal(x, base, _mixture, torch.tensor(schedule), kernel=MALA, betta=0.5)


def test_anneal_returns_an_anneal_result_read_like_the_old_dict():
    """Old code returned a plain dict; the result is now an AnnealResult dataclass whose fields
    also read by key (``out["log_weights"]``, ``in``, ``keys()``, ``dict(out)``) as the dict did,
    through the one Mapping base it shares with FAB's AISResult."""
    from normflows_sci.samplers import AnnealResult
    from normflows_sci.training import AISResult

    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    base = lambda y: -0.5 * y.square().sum(-1) - math.log(2 * math.pi)  # noqa: E731
    out = anneal(
        x,
        base,
        _mixture,
        torch.linspace(0, 1, 4, dtype=torch.float64),
        kernel=MALA,
        replicas=2,
        resample_threshold=0.5,
        generator=torch.Generator().manual_seed(1),
    )
    assert isinstance(out, AnnealResult)
    names = ["samples", "log_weights", "log_z_groups", "acceptance", "resamples"]
    assert list(out) == list(out.keys()) == names and len(out) == 5
    assert all(out[name] is getattr(out, name) for name in names)
    assert dict(out).keys() == set(names) and "log_z" not in out and out.get("log_z") is None
    assert out.samples.shape == (64, 2) and out.log_z_groups.shape == (2,)
    assert out.acceptance.shape == (3,) and isinstance(out.resamples, int)
    with pytest.raises(KeyError):
        out["log_z"]
    with pytest.raises(TypeError):
        out["samples"] = x  # read-only, as a result should be
    # One base class carries the Mapping code of both results (not written twice).
    assert AnnealResult.__getitem__ is AISResult.__getitem__


def _unit_gaussian_at(centre: float):
    """Normalised 2-D unit Gaussian at ``(centre, centre)``: log Z = 0."""

    def log_prob(x):
        return -0.5 * (x - centre).square().sum(-1) - math.log(2 * math.pi)

    return log_prob


def _identity_flow():
    torch.manual_seed(0)
    return RealNVP(2, transforms=2, hidden_features=(8,)).to(torch.float64)  # N(0, I) at init


@pytest.mark.parametrize("method", [AIS, SMC])
def test_a_target_80_sigma_away_is_unreliable_and_warns(method):
    """Issue 20: log Z = 0 came out as -1947 +- 0.999 (AIS) and -1766 (SMC, ESS 500 of 500, NaN
    error bar) without a word. The result now says it is unreliable, with the k-hat and ESS."""
    sampler = method(_unit_gaussian_at(80.0), _identity_flow(), num_temperatures=8, kernel=MALA)
    with pytest.warns(RuntimeWarning, match=r"unreliable importance weights: Pareto k-hat") as rec:
        out = sampler.sample(256, generator=torch.Generator().manual_seed(0))
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    assert "ESS =" in str(rec[0].message) and "num_temperatures" in str(rec[0].message)
    assert abs(out.log_z) > 100  # the estimate is far off ...
    assert not out.reliable  # ... and says so
    assert out.pareto_k > out.khat_threshold
    assert out.ess < 0.5 * 256  # the final weights' ESS, not N after a last resampling
    assert out.log_z_replicas.shape == (4,)  # an error bar out of the box


@pytest.mark.parametrize("method", [AIS, SMC])
def test_a_target_close_to_the_flow_is_reliable_without_a_warning(method):
    sampler = method(_unit_gaussian_at(0.3), _identity_flow(), num_temperatures=8, kernel=MALA)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = sampler.sample(512, generator=torch.Generator().manual_seed(0))
    assert out.reliable and out.pareto_k < out.khat_threshold
    assert out.log_z_stderr is not None and 0 < out.log_z_stderr < 0.05
    assert abs(out.log_z) < 1.96 * out.log_z_stderr
    assert out.replica_spread < 0.1 and out.stage_pareto_k.shape == (out.resamples + 1,)


def test_smc_with_one_replica_has_no_error_bar_and_says_so():
    """One SMC replica reported a NaN error bar: now None, with a warning saying what to do."""
    sampler = SMC(_unit_gaussian_at(0.3), _identity_flow(), num_temperatures=8, kernel=MALA)
    with pytest.warns(RuntimeWarning, match=r"one replica: no error bar.*replicas >= 2"):
        out = sampler.sample(512, replicas=1, generator=torch.Generator().manual_seed(0))
    assert out.log_z_stderr is None and out.reliable
    ais = AIS(_unit_gaussian_at(0.3), _identity_flow(), num_temperatures=8, kernel=MALA)
    one = ais.sample(512, replicas=1, generator=torch.Generator().manual_seed(0))
    assert one.log_z_stderr == pytest.approx(math.sqrt(1 / one.ess - 1 / 512))


def test_smc_reports_the_ess_of_its_final_weights_not_n_after_resampling():
    """SMC resampled after the last stage and reported ESS = N. It no longer resamples there:
    ``ess`` and ``weights`` are those of the final weights."""
    sampler = SMC(_unit_gaussian_at(1.5), _identity_flow(), num_temperatures=2, kernel=MALA)
    out = sampler.sample(512, generator=torch.Generator().manual_seed(0))
    assert out.reliable and out.resamples == 1  # after the first stage only
    assert out.ess < 0.9 * 512
    assert out.ess == pytest.approx(float(1 / out.weights.square().sum()))
    assert float(torch.logsumexp(out.log_weights.double(), 0)) - math.log(512) == pytest.approx(
        out.log_z
    )


def test_smc_k_hat_is_the_worst_segment_not_only_the_last():
    """One big step collapses the population onto a few particles; after resampling, the last
    segment's weights look healthy (k-hat and ESS fine, replicas agreeing) while log Z is off by
    many error bars. The collapse in the first segment makes the result unreliable."""
    sampler = SMC(
        _unit_gaussian_at(4.0),
        _identity_flow(),
        schedule=[0.0, 0.9, 0.95, 1.0],
        kernel=MALA,
        mcmc_steps=5,
    )
    with pytest.warns(RuntimeWarning, match=r"maximum over 2 resampling segments"):
        out = sampler.sample(256, generator=torch.Generator().manual_seed(0))
    assert out.stage_pareto_k[-1] < out.khat_threshold < out.stage_pareto_k[0] == out.pareto_k
    assert out.ess > 0.5 * 256 and out.replica_spread < 1.0  # the end looks fine ...
    assert abs(out.log_z) > 4 * out.log_z_stderr  # ... but log Z (exactly 0) is far off
    assert not out.reliable
