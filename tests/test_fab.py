"""FAB: training without target samples, absolute AIS weights, the prioritised replay buffer."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from normflows_sci.energies import Energy
from normflows_sci.flows import NSF, RealNVP
from normflows_sci.samplers import HMC, MALA, RandomWalkMH, importance_sample
from normflows_sci.samplers.psis import khat_threshold
from normflows_sci.training.fab import (
    PrioritizedReplayBuffer,
    fab_ais,
    fab_buffer_loss,
    fab_loss,
    fit_fab,
)


class TwoModes(Energy):
    """Two well-separated Gaussian modes at (-3, 0) and (3, 0), weights 0.3 / 0.7, std 0.6;
    ``exp(-u)`` integrates to ``e^{log_z}``."""

    log_z = 1.0
    left_weight = 0.3

    def __init__(self):
        super().__init__(2)
        self.register_buffer("means", torch.tensor([[-3.0, 0.0], [3.0, 0.0]]))
        self.register_buffer("log_weights", torch.tensor([0.3, 0.7]).log())
        self.scale = 0.6

    def _energy(self, x):
        d = (x[:, None, :] - self.means.to(x)) / self.scale
        log_components = -0.5 * d.square().sum(-1) - math.log(2 * math.pi * self.scale**2)
        return -(torch.logsumexp(log_components + self.log_weights.to(x), -1) + self.log_z)


def spline_flow():
    torch.manual_seed(0)
    return NSF(2, transforms=3, hidden_features=(32, 32), coupling=True, tail_bound=6.0)


def assert_learned_the_target(flow, target, min_ess):
    result = importance_sample(flow, target, 10_000, generator=torch.Generator().manual_seed(1))
    assert result.ess_fraction > min_ess
    assert abs(result.log_z - target.log_z) < 4 * result.log_z_stderr + 1e-3
    left, stderr = result.probability(result.samples[:, 0] < 0)
    assert abs(left - target.left_weight) < 4 * stderr + 0.01
    assert 0.15 < float((result.samples[:, 0] < 0).float().mean()) < 0.45  # q itself has both


def test_fit_fab_with_the_buffer_learns_both_modes_without_samples():
    target, flow = TwoModes(), spline_flow()
    with pytest.warns(RuntimeWarning, match="unreliable importance weights"):  # untrained
        untrained = importance_sample(
            flow, target, 10_000, generator=torch.Generator().manual_seed(1)
        )
    assert untrained.ess_fraction < 0.05 and not untrained.reliable
    history = fit_fab(
        flow,
        target,
        steps=100,
        batch_size=64,
        buffer_min_size=320,
        learning_rate=3e-3,
        seed=0,
        progress=False,
    )
    assert_learned_the_target(flow, target, min_ess=0.7)
    assert history["step"] == list(range(10, 101, 10))
    assert history["ess_fraction"][-1] > history["ess_fraction"][0]
    assert all(0 < b <= 6400 for b in history["buffer_size"])
    evaluations = history["target_evaluations"]
    assert all(a < b for a, b in zip(evaluations, evaluations[1:]))
    assert 0.4 < history["acceptance"][-1] < 0.9
    assert all(math.isfinite(v) for v in history["loss"])


def test_fit_fab_without_the_buffer_and_with_mala_improves_the_flow():
    target, flow = TwoModes(), spline_flow()
    history = fit_fab(
        flow,
        target,
        steps=30,
        batch_size=64,
        kernel=MALA,
        mcmc_steps=3,
        step_size=0.05,
        learning_rate=3e-3,
        replay_buffer=False,
        seed=0,
        progress=False,
        log_every=5,
    )
    assert history["buffer_size"] == [0] * 6
    assert_learned_the_target(flow, target, min_ess=0.2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kernel", [HMC, MALA, RandomWalkMH], ids=["hmc", "mala", "rwmh"])
def test_fab_ais_log_weights_estimate_the_integral_of_p2_over_q(kernel, dtype):
    """With q = N(0, I) (NSF at initialisation) and p = c N(m, s^2 I), ``∫ p²/q`` is a Gaussian
    integral; the absolute AIS weights must estimate it without bias."""
    mean, var, log_c = torch.tensor([0.5, -0.3], dtype=dtype), 0.8, 1.5

    def target(x):
        return log_c - 0.5 * ((x - mean) ** 2).sum(-1) / var - math.log(2 * math.pi * var)

    a = 1 / var - 0.5  # exponent of x^2 in p^2/q, per dimension
    exact = 2 * log_c
    for m in mean.tolist():
        b, c0 = 2 * m / var, m * m / var
        exact += -math.log(2 * math.pi * var) + 0.5 * math.log(2 * math.pi)
        exact += 0.5 * math.log(math.pi / a) + b * b / (4 * a) - c0
    flow = NSF(2, transforms=1, hidden_features=(8,)).to(dtype)
    out = fab_ais(
        flow, target, 4000, kernel=kernel, step_size=0.3, generator=torch.Generator().manual_seed(0)
    )
    log_w = out["log_weights"]
    assert log_w.dtype == torch.float64 and out["samples"].dtype == dtype
    estimate = float(torch.logsumexp(log_w, 0)) - math.log(len(log_w))
    ess = 1 / float(torch.softmax(log_w, 0).square().sum())
    stderr = math.sqrt(1 / ess - 1 / len(log_w))
    assert abs(estimate - exact) < 4 * stderr
    with torch.no_grad():
        assert torch.allclose(out["log_q"], flow.log_prob(out["samples"]))
    assert all(p.requires_grad for p in flow.parameters())  # unfrozen afterwards


def test_fab_ais_bounds_keep_weighted_samples_inside_the_box():
    torch.manual_seed(0)
    flow = RealNVP(2, transforms=2, hidden_features=(8,))
    out = fab_ais(
        flow, TwoModes(), 256, bounds=(-1.5, 1.5), generator=torch.Generator().manual_seed(0)
    )
    finite = torch.isfinite(out["log_weights"])
    assert finite.any() and not finite.all()  # some draws started outside: zero weight
    assert (out["samples"][finite].abs() <= 1.5).all()


def test_fab_ais_returns_an_ais_result_read_like_the_old_dict():
    """Old code returned a plain dict; the result is now an AISResult dataclass whose fields
    also read by key (``out["samples"]``, ``in``, ``keys()``) as the dict did."""
    from normflows_sci.training import AISResult

    flow = NSF(2, transforms=1, hidden_features=(8,))
    out = fab_ais(flow, TwoModes(), 32, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, AISResult)
    names = ["samples", "log_weights", "log_q", "proposal_log_weights", "acceptance"]
    assert list(out) == list(out.keys()) == names and len(out) == 5
    assert all(out[name] is getattr(out, name) for name in names)
    assert "log_q" in out and "log_z" not in out and out.get("log_z") is None
    assert out.samples.shape == (32, 2) and isinstance(out.acceptance, float)
    with pytest.raises(KeyError):
        out["log_z"]


def test_fit_fab_is_reproducible_with_a_seed():
    target = TwoModes()
    results = []
    for _ in range(2):
        flow = spline_flow()
        options = dict(steps=4, batch_size=16, buffer_min_size=32, buffer_updates=2, seed=3)
        history = fit_fab(flow, target, progress=False, log_every=2, **options)
        results.append((history["loss"], [p.detach().clone() for p in flow.parameters()]))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


def test_buffer_draws_in_proportion_to_the_weights():
    buffer = PrioritizedReplayBuffer(10)
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0])
    buffer.add(torch.arange(4.0)[:, None], weights.log(), torch.zeros(4))
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    for _ in range(4000):
        _, _, _, index = buffer.sample(1, generator=generator)
        counts[index] += 1
    assert torch.allclose(counts / counts.sum(), weights / weights.sum(), atol=0.025)
    x, log_w, _, index = buffer.sample(4, generator=generator)  # without replacement
    assert sorted(index.tolist()) == [0, 1, 2, 3]
    assert torch.equal(x[:, 0], index.float()) and torch.allclose(
        log_w, weights[index].log().double()
    )


def test_buffer_weight_correction():
    buffer = PrioritizedReplayBuffer(8)
    buffer.add(torch.zeros(3, 2), torch.tensor([0.0, 1.0, 2.0]), torch.tensor([-1.0, -2.0, -3.0]))
    index = torch.tensor([0, 2])
    buffer.adjust(index, torch.tensor([-1.5, -2.0]))
    # log w += log q_old - log q_new; log q_old <- log q_new; untouched entries unchanged.
    assert buffer.log_weights.tolist() == [0.5, 1.0, 1.0]
    assert buffer.log_q.tolist() == [-1.5, -2.0, -2.0]
    buffer.adjust(torch.tensor([1]), torch.tensor([-math.inf]))
    assert buffer.log_weights[1] == -math.inf and buffer.log_q[1] == -2.0
    with pytest.raises(ValueError, match="log_q"):
        buffer.adjust(index, torch.zeros(3))


def test_buffer_capacity_evicts_the_oldest_entries():
    buffer = PrioritizedReplayBuffer(5)
    for start in (0, 3):
        n = buffer.add(torch.arange(start, start + 3.0)[:, None], torch.zeros(3), torch.zeros(3))
        assert n == 3
    assert len(buffer) == 5
    assert sorted(buffer.samples[:, 0].tolist()) == [1.0, 2.0, 3.0, 4.0, 5.0]  # 0 evicted
    buffer.add(torch.arange(10.0, 17.0)[:, None], torch.zeros(7), torch.zeros(7))
    assert sorted(buffer.samples[:, 0].tolist()) == [12.0, 13.0, 14.0, 15.0, 16.0]


def test_buffer_drops_non_finite_rows_and_checks_arguments():
    buffer = PrioritizedReplayBuffer(5)
    x = torch.tensor([[0.0], [math.nan], [2.0], [3.0]])
    log_w = torch.tensor([0.0, 0.0, -math.inf, 0.0])
    log_q = torch.tensor([0.0, 0.0, 0.0, math.inf])
    assert buffer.add(x, log_w, log_q) == 1
    assert buffer.samples.tolist() == [[0.0]]
    with pytest.raises(ValueError, match="batch_size"):
        buffer.sample(2)
    with pytest.raises(ValueError, match="log_weights"):
        buffer.add(torch.zeros(2, 1), torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="event shape"):
        buffer.add(torch.zeros(2, 3), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="capacity"):
        PrioritizedReplayBuffer(0)


def test_losses():
    torch.manual_seed(0)
    flow = RealNVP(2, transforms=1, hidden_features=(8,))
    x = torch.randn(6, 2)
    log_w = torch.randn(6)
    with torch.no_grad():
        log_q = flow.log_prob(x)
    expected = -(torch.softmax(log_w, 0) * log_q).sum()
    assert torch.allclose(fab_loss(flow, x, log_w), expected)
    loss, new_log_q = fab_buffer_loss(flow, x, log_q)
    assert torch.allclose(loss, -log_q.mean()) and torch.allclose(new_log_q, log_q)
    loss, _ = fab_buffer_loss(flow, x, log_q + 5.0)  # ratio e^5 clipped to 10
    assert torch.allclose(loss, -10 * log_q.mean())
    loss.backward()
    assert all(p.grad is not None for p in flow.parameters())
    with pytest.raises(ValueError, match="non-finite"):
        fab_loss(flow, x, torch.full((6,), -math.inf))


@pytest.mark.parametrize(
    "options, error, message",
    [
        (dict(steps=0), ValueError, "steps"),
        (dict(batch_size=1), ValueError, "batch_size"),
        (dict(num_temperatures=0), ValueError, "num_temperatures"),
        (dict(kernel="nuts"), ValueError, "kernel"),
        (dict(mcmc_steps=1.5), ValueError, "mcmc_steps"),
        (dict(step_size=-1.0), ValueError, "step_size"),
        (dict(learning_rate=0.0), ValueError, "learning_rate"),
        (dict(replay_buffer=8, batch_size=16), ValueError, "replay_buffer"),
        (dict(buffer_min_size=8, batch_size=16), ValueError, "buffer_min_size"),
        (dict(buffer_updates=0), ValueError, "buffer_updates"),
        (dict(weight_adjust_clip=0.0), ValueError, "weight_adjust_clip"),
        (dict(clip_grad=-1.0), ValueError, "clip_grad"),
        (dict(schedule="linear"), ValueError, "schedule"),
        (dict(bounds=(1.0, -1.0)), ValueError, "bounds"),
        (dict(bounds=3.0), ValueError, "bounds"),
        (dict(kernel_options=[1]), TypeError, "kernel_options"),
        (dict(log_every=0), ValueError, "log_every"),
    ],
)
def test_fit_fab_bad_arguments_raise(options, error, message):
    flow = RealNVP(2, transforms=1, hidden_features=(4,))
    with pytest.raises(error, match=message):
        fit_fab(flow, TwoModes(), progress=False, **options)


def test_fit_fab_bad_flow_or_target_raise():
    with pytest.raises(TypeError, match="flow"):
        fit_fab(object(), TwoModes(), progress=False)
    with pytest.raises(TypeError, match="target"):
        fit_fab(RealNVP(2, transforms=1, hidden_features=(4,)), 1.0, progress=False)
    with pytest.raises(ValueError, match="num_samples"):
        fab_ais(RealNVP(2, transforms=1, hidden_features=(4,)), TwoModes(), 0)


@pytest.mark.parametrize("shift, reliable", [(0.0, True), (6.0, False)])
def test_the_history_reports_the_pareto_k_of_the_flow_weights_without_warning(shift, reliable):
    """The history's ess_fraction / log_z / log_z_stderr came with nothing telling whether they
    can be trusted: the Pareto k-hat of the same importance weights now comes with them (a
    training log: no warning per step)."""
    torch.manual_seed(0)
    flow = NSF(2, transforms=1, hidden_features=(8,), coupling=True)  # N(0, I) at init

    def target(x):
        return -0.5 * (x - shift).square().sum(-1)

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        history = fit_fab(
            flow,
            target,
            steps=2,
            batch_size=256,
            replay_buffer=False,
            learning_rate=1e-5,
            seed=0,
            progress=False,
            log_every=1,
        )
    threshold = khat_threshold(256)
    assert len(history["pareto_k"]) == 2
    assert all((k < threshold) is reliable for k in history["pareto_k"])
