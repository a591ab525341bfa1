"""MCMC kernels and the run loop: known moments, exact proposals, multimodal mixing, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from tests_helpers import Interrupting, perturb

from normflows_sci.flows import NSF, RealNVP
from normflows_sci.samplers import (
    HMC,
    MALA,
    AdaptiveFlowMCMC,
    IndependentMH,
    NeuTraHMC,
    ParallelTempering,
    RandomWalkMH,
    run,
)
from normflows_sci.samplers.kernels import log_prob_and_grad

MEAN = torch.tensor([1.0, -2.0])
COV = torch.tensor([[3.0, 0.8538], [0.8538, 0.3]])


def correlated_gaussian(x):
    d = x - MEAN.to(x)
    return -0.5 * ((d @ torch.linalg.inv(COV).to(x)) * d).sum(-1)


def assert_moments(samples, mean, cov, tol_mean=0.08, tol_cov=0.12):
    flat = samples.reshape(-1, samples.shape[-1]).double()
    assert torch.allclose(flat.mean(0), mean.double(), atol=tol_mean), flat.mean(0)
    emp = torch.cov(flat.T)
    assert torch.allclose(emp, cov.double(), atol=tol_cov * float(cov.abs().max())), emp


@pytest.mark.parametrize(
    "make",
    [
        lambda: RandomWalkMH(correlated_gaussian, step_size=0.5),
        lambda: MALA(correlated_gaussian, step_size=0.05),
        lambda: HMC(correlated_gaussian, step_size=0.1, num_leapfrog=8),
        lambda: ParallelTempering(correlated_gaussian, (1.0, 2.0, 4.0)),
    ],
    ids=["rwmh", "mala", "hmc", "parallel_tempering"],
)
def test_kernels_recover_mean_and_covariance(make):
    kernel = make()
    trace = run(kernel, torch.zeros(512, 2), 200, num_warmup=300, seed=0)
    assert trace.samples.shape == (200, 512, 2)
    assert_moments(trace.samples[50:], MEAN, COV)
    assert abs(float(trace.acceptance["local"].mean()) - kernel.target_accept) < 0.1


def test_hmc_adapts_a_diagonal_mass_matrix():
    scales = torch.tensor([10.0, 0.1])
    kernel = HMC(lambda x: -0.5 * (x / scales).square().sum(-1), step_size=0.05, num_leapfrog=5)
    trace = run(kernel, torch.zeros(256, 2), 100, num_warmup=200, seed=1)
    ratio = trace.state.inverse_mass / scales.square()
    assert torch.all((ratio > 0.6) & (ratio < 1.6)), ratio
    assert_moments(trace.samples, torch.zeros(2), torch.diag(scales.square()), 0.8, 0.15)


def test_exact_flow_proposal_accepts_every_move():
    torch.manual_seed(0)
    flow = perturb(NSF(3, transforms=2, hidden_features=(16,), coupling=True)).double()
    x0 = torch.zeros(64, 3, dtype=torch.float64)
    trace = run(IndependentMH(flow, flow), x0, 20, seed=0)
    assert float(trace.acceptance["global"].min()) == 1.0
    # In latent space the target is exactly standard normal: small-step HMC accepts almost always.
    neutra = NeuTraHMC(flow, flow, step_size=0.1, num_leapfrog=3, adapt_mass=False)
    trace = run(neutra, x0, 20, seed=0)
    assert float(trace.acceptance["local"].mean()) > 0.98
    assert torch.allclose(trace.log_prob[-1], flow.log_prob(trace.samples[-1]).detach())


WEIGHTS = torch.tensor([0.3, 0.7])
MODES = torch.tensor([[-6.0, 0.0], [6.0, 0.0]])


def two_modes(x):
    d = ((x[:, None, :] - MODES.to(x)) ** 2).sum(-1)
    return torch.logsumexp(WEIGHTS.to(x).log() - 0.5 * d - math.log(2 * math.pi), 1)


def test_flow_hybrid_recovers_unequal_mode_weights_where_mala_is_stuck():
    generator = torch.Generator().manual_seed(0)
    half = torch.randn(128, 2, generator=generator)
    x0 = torch.cat([MODES[0] + half, MODES[1] + half])  # 50/50 start; the truth is 30/70
    mala = run(MALA(two_modes, step_size=0.5), x0, 150, num_warmup=100, seed=0)
    mala_weight = float((mala.samples[..., 0] > 0).double().mean())
    assert abs(mala_weight - 0.7) > 0.15  # stuck at the initial split
    torch.manual_seed(0)
    flow = RealNVP(2, transforms=4, hidden_features=(32, 32))
    kernel = AdaptiveFlowMCMC(two_modes, flow, learning_rate=3e-3, train_steps=2)
    hybrid = run(kernel, x0, 150, num_warmup=250, seed=0)
    hybrid_weight = float((hybrid.samples[..., 0] > 0).double().mean())
    assert abs(hybrid_weight - 0.7) < 0.03
    assert set(hybrid.acceptance) == {"local", "global"}
    assert float(hybrid.acceptance["global"].mean()) > 0.3


class _Counting:
    """A log-density that counts the positions it is evaluated at."""

    def __init__(self, log_prob):
        self.function, self.evaluated = log_prob, 0

    def __call__(self, x):
        self.evaluated += x.shape[0]
        return self.function(x)


def _assert_state_matches_target(log_prob_fn, state):
    log_prob, grad = log_prob_and_grad(log_prob_fn, state.x)
    torch.testing.assert_close(state.log_prob, log_prob, atol=1e-10, rtol=1e-10)
    if "grad" in state._fields:
        torch.testing.assert_close(state.grad, grad, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("local", [MALA, HMC, RandomWalkMH])
def test_tempering_swaps_move_log_densities_without_evaluating_the_target(local):
    # Each step evaluates the target once per replica (MALA/RWMH) or once per leapfrog step (HMC);
    # swapped replicas carry beta * log p and beta * grad log p to their new temperature.
    counting = _Counting(two_modes)
    kernel = ParallelTempering(counting, (1.0, 2.0, 4.0, 8.0), local=local, step_size=0.3)
    state = kernel.init(torch.randn(32, 2, dtype=torch.float64) + MODES[0].double())
    generator = torch.Generator().manual_seed(0)
    swaps = 0.0
    for _ in range(10):
        counting.evaluated = 0
        state, info = kernel.step(state, generator)
        per_step = kernel.inner.num_leapfrog if local is HMC else 1
        assert counting.evaluated == per_step * 4 * 32
        swaps += float(info.swap_accepted.sum())
    assert swaps > 0
    _assert_state_matches_target(kernel.inner.log_prob_fn, state.inner)


@pytest.mark.parametrize("local", ["mala", "rwmh"])
def test_flow_hybrid_evaluates_the_target_once_per_move(local):
    torch.manual_seed(0)
    counting = _Counting(two_modes)
    flow = RealNVP(2, transforms=2, hidden_features=(8,)).double()
    local_kernel = {"mala": MALA, "rwmh": RandomWalkMH}[local](counting, step_size=0.3)
    kernel = AdaptiveFlowMCMC(counting, flow, local_kernel=local_kernel, train_steps=0)
    state = kernel.init(torch.randn(64, 2, dtype=torch.float64))
    generator = torch.Generator().manual_seed(0)
    accepted = 0.0
    for _ in range(5):
        counting.evaluated = 0
        state, info = kernel.step(state, generator)
        assert counting.evaluated == 2 * 64  # the local move and the flow proposals
        accepted += float(info.global_accepted.sum())
    assert accepted > 0
    _assert_state_matches_target(counting, state.local)
    torch.testing.assert_close(state.log_q, flow.log_prob(state.local.x).detach())


def test_flow_hybrid_rejects_non_finite_proposals():
    flow = RealNVP(2, transforms=1, hidden_features=(4,)).double()
    sample = flow.sample_and_log_prob

    def broken(num, **options):  # every other proposal is NaN
        x, log_q = sample(num, **options)
        return x.masked_fill(torch.arange(num)[:, None] % 2 == 0, math.nan), log_q

    flow.sample_and_log_prob = broken
    kernel = AdaptiveFlowMCMC(two_modes, flow, train_steps=0)
    state = kernel.init(torch.randn(16, 2, dtype=torch.float64))
    state, info = kernel.step(state, torch.Generator().manual_seed(0))
    assert not info.global_accepted[::2].any()
    assert torch.isfinite(state.local.x).all()


def test_checkpoint_resume_gives_the_same_chain(tmp_path):
    path = tmp_path / "chain.pt"
    kernel = MALA(correlated_gaussian, step_size=0.05)
    full = run(kernel, torch.zeros(16, 2), 30, num_warmup=10, seed=3)
    run(kernel, torch.zeros(16, 2), 30, num_warmup=10, seed=3, checkpoint=path, checkpoint_every=7)
    assert path.exists()
    # Simulate an interruption: rerun part of the way, then resume from the saved state.
    partial = tmp_path / "partial.pt"
    with pytest.raises(KeyboardInterrupt):
        run(
            Interrupting(kernel, after=25),
            torch.zeros(16, 2),
            30,
            num_warmup=10,
            seed=3,
            checkpoint=partial,
            checkpoint_every=7,
        )
    resumed = run(
        kernel, torch.zeros(16, 2), 30, num_warmup=10, seed=3, checkpoint=partial, resume=True
    )
    assert torch.equal(resumed.samples, full.samples)
    assert torch.equal(resumed.acceptance["local"], full.acceptance["local"])
    with pytest.raises(ValueError, match="num_warmup"):
        run(kernel, torch.zeros(16, 2), 30, num_warmup=5, seed=3, checkpoint=partial, resume=True)


def test_thinning_and_continuation():
    kernel = RandomWalkMH(correlated_gaussian)
    trace = run(kernel, torch.zeros(4, 2), 10, thin=3, seed=0)
    assert trace.samples.shape == (3, 4, 2)
    more = run(kernel, trace.state, 5, seed=1)
    assert more.samples.shape == (5, 4, 2)


def test_bad_input_raises():
    kernel = MALA(correlated_gaussian)
    with pytest.raises(ValueError, match="chains"):
        kernel.init(torch.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        kernel.init(torch.full((3, 2), math.nan))
    with pytest.raises(ValueError, match="num_steps"):
        run(kernel, torch.zeros(3, 2), -1)
    with pytest.raises(ValueError, match="thin"):
        run(kernel, torch.zeros(3, 2), 3, thin=0)
    with pytest.raises(ValueError, match="step_size"):
        MALA(correlated_gaussian, step_size=0.0)
    with pytest.raises(ValueError, match="target_accept"):
        MALA(correlated_gaussian, target_accept=1.5)
    with pytest.raises(ValueError, match="temperatures"):
        ParallelTempering(correlated_gaussian, (2.0, 4.0))
    with pytest.raises(TypeError, match="Flow"):
        IndependentMH(correlated_gaussian, correlated_gaussian)
    with pytest.raises(TypeError, match="target"):
        MALA(3.0)


def test_zero_density_proposals_are_rejected():
    def half_plane(x):
        return torch.where(x[:, 0] > 0, -0.5 * x.square().sum(-1), -math.inf)

    trace = run(MALA(half_plane, step_size=0.5), torch.ones(64, 2), 100, seed=0)
    assert float(trace.samples[..., 0].min()) > 0


def test_runs_on_device(device):
    kernel = HMC(correlated_gaussian, num_leapfrog=3)
    trace = run(kernel, torch.zeros(8, 2, device=device), 5, num_warmup=5, seed=0)
    assert trace.samples.device.type == device.type


def test_tempering_takes_its_local_kernel_as_a_value_and_the_name_is_a_deprecated_alias():
    """``local=partial(HMC, num_leapfrog=2)`` sets the leapfrog steps (the old name-only
    argument could not); ``local="hmc"`` still works and warns with the class to pass."""
    from functools import partial

    from normflows_sci.samplers.tempering import ParallelTempering as Tempering

    kernel = Tempering(two_modes, (1.0, 2.0), local=partial(HMC, num_leapfrog=2), step_size=0.3)
    assert isinstance(kernel.inner, HMC) and kernel.inner.num_leapfrog == 2
    assert kernel.inner.step_size == 0.3
    with pytest.warns(DeprecationWarning, match=r"local=HMC"):
        named = Tempering(two_modes, (1.0, 2.0), local="hmc", step_size=0.3)
    assert isinstance(named.inner, HMC) and named.inner.num_leapfrog == 10
    with pytest.raises(TypeError, match="local must be a kernel class"):
        Tempering(two_modes, (1.0, 2.0), local=MALA(two_modes))


def test_warm_up_adapts_through_the_kernels_adaptation_object():
    """The kernel only exposes its acceptance signal; the step-size rule is its ``adaptation``
    (a StepSizeAdaptation): replacing it changes where warm-up drives the step sizes."""
    from normflows_sci.samplers import StepSizeAdaptation

    rates = {}
    for accept in (0.2, 0.9):
        kernel = RandomWalkMH(correlated_gaussian, step_size=0.5)
        kernel.adaptation = StepSizeAdaptation(accept)
        trace = run(kernel, torch.zeros(64, 2), 50, num_warmup=200, seed=0)
        rates[accept] = float(trace.acceptance["local"].mean())
    assert abs(rates[0.2] - 0.2) < 0.1 and abs(rates[0.9] - 0.9) < 0.1


@pytest.mark.parametrize("make", [RandomWalkMH, MALA, lambda t: HMC(t, num_leapfrog=2)])
def test_a_differentiable_proposal_keeps_the_graph_to_the_start(make):
    """``propose(..., differentiable=True)`` is the kernel's move reparameterised (the SNF's
    MCMC layers use it): the proposal and its log-density carry gradients back to ``x``;
    without it they are detached."""
    kernel = make(correlated_gaussian)
    x = torch.randn(8, 2, dtype=torch.float64, requires_grad=True)
    log_prob, grad = log_prob_and_grad(kernel.log_prob_fn, x, differentiable=True)
    step = torch.full((8,), 0.1, dtype=torch.float64)
    state = kernel.state_at(x, log_prob, grad if kernel.uses_gradient else None, step)
    proposal, log_ratio = kernel.propose(
        state, torch.Generator().manual_seed(0), differentiable=True
    )
    (dx,) = torch.autograd.grad(proposal.log_prob.sum(), x)
    assert bool(torch.isfinite(dx).all()) and float(dx.abs().sum()) > 0
    assert log_ratio.shape == (8,)
    start = kernel.init(x.detach())._replace(step_size=step)  # the same state, detached
    detached, _ = kernel.propose(start, torch.Generator().manual_seed(0))
    assert not detached.x.requires_grad and torch.allclose(detached.x, proposal.x.detach())


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda bad: HMC(correlated_gaussian, num_leapfrog=bad), "num_leapfrog"),
        (
            lambda bad: AdaptiveFlowMCMC(correlated_gaussian, RealNVP(2), local_steps=bad),
            "local_steps",
        ),
        (
            lambda bad: AdaptiveFlowMCMC(correlated_gaussian, RealNVP(2), train_steps=bad),
            "train_steps",
        ),
    ],
)
def test_integer_hyperparameters_are_checked_by_the_one_integer_check(build, name):
    """Old code ran ``int(value)`` by hand: ``None`` died in ``int()`` with a TypeError naming no
    argument, and ``2.5`` for a count was only refused by a second, differently worded check."""
    for bad in (None, 2.5, "many"):
        with pytest.raises(ValueError, match=rf"^{name} must be a (positive|non-negative) integer"):
            build(bad)


def test_positive_numbers_are_checked_by_one_function_everywhere():
    """Samplers, diagnostics and training each had their own positive-number check: MALA refused
    a ``numpy.float32`` step size that TrainingOptions took as a learning rate, while
    TrainingOptions took the string ``"0.1"`` that MALA refused. One check now answers alike."""
    import numpy as np

    from normflows_sci.samplers import ess_per_second
    from normflows_sci.training import TrainingOptions

    assert MALA(correlated_gaussian, step_size=np.float32(0.5)).step_size == 0.5
    assert TrainingOptions(learning_rate=np.float32(0.5), max_steps=1).learning_rate == np.float32(
        0.5
    )
    for build in (
        lambda bad: MALA(correlated_gaussian, step_size=bad),
        lambda bad: TrainingOptions(learning_rate=bad, max_steps=1),
        lambda bad: ess_per_second(torch.zeros(10, 2), bad),
    ):
        for bad in ("0.1", True, float("nan"), -1.0):
            with pytest.raises(ValueError, match=r"must be a positive finite number, got"):
                build(bad)


# ------------------------------------------------------------------ production in blocks of steps


def _run_module():
    import importlib

    return importlib.import_module("normflows_sci.samplers.run")  # the module, not the function


def _count_blocks(monkeypatch) -> list:
    """The lengths of the blocks every later ``run`` executes (the new path is taken), with at
    most 8 steps per block (whatever the tuned default)."""
    from normflows_sci.samplers.kernels import StepBlock

    monkeypatch.setattr(_run_module(), "_BLOCK_STEPS", 8)
    lengths, call = [], StepBlock.__call__

    def counted(self, state, generator, totals):
        lengths.append(self.length)
        return call(self, state, generator, totals)

    monkeypatch.setattr(StepBlock, "__call__", counted)
    return lengths


def _step_by_step(monkeypatch, kernel, x0, steps, **options):
    """The trace of ``run`` with one step per iteration (no blocks), as before blocks existed."""
    with monkeypatch.context() as patch:
        patch.setattr(_run_module(), "_BLOCK_STEPS", 1)
        return run(kernel, x0, steps, **options)


def assert_same_trace(a, b) -> None:
    assert torch.equal(a.samples, b.samples)
    assert torch.equal(a.log_prob, b.log_prob)
    assert a.acceptance.keys() == b.acceptance.keys()
    assert all(torch.equal(a.acceptance[k], b.acceptance[k]) for k in a.acceptance)
    assert all(torch.equal(x, y) for x, y in zip(a.state, b.state) if isinstance(x, torch.Tensor))


@pytest.mark.parametrize("thin", [1, 3, 11])
@pytest.mark.parametrize(
    "make",
    [
        lambda: MALA(correlated_gaussian, step_size=0.05),
        lambda: HMC(correlated_gaussian, step_size=0.05, num_leapfrog=2),
        lambda: ParallelTempering(correlated_gaussian, (1.0, 3.0), step_size=0.05),
    ],
    ids=["mala", "hmc", "tempering"],
)
def test_blocks_of_eager_steps_give_the_step_by_step_trace_bit_for_bit(monkeypatch, make, thin):
    # Every step's draws are made before the block's transitions: the generator must still be
    # read in the order of single steps, and the acceptance sums added in the same order.
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    options = dict(num_warmup=6, thin=thin, seed=4, compile=False)
    single = _step_by_step(monkeypatch, make(), x0, 45, **options)
    lengths = _count_blocks(monkeypatch)
    blocks = run(make(), x0, 45, **options)
    assert lengths and set(lengths) == {thin * (8 // thin) if thin <= 8 else 8}
    assert blocks.samples.shape[0] == 45 // thin
    assert_same_trace(blocks, single)


@pytest.mark.parametrize("thin", [1, 4, 10])
def test_blocks_keep_every_thin_th_production_step(monkeypatch, thin):
    kernel = MALA(correlated_gaussian, step_size=0.05)
    x0 = torch.zeros(4, 2)
    every = _step_by_step(monkeypatch, kernel, x0, 40, num_warmup=3, seed=2, compile=False)
    lengths = _count_blocks(monkeypatch)
    thinned = run(kernel, x0, 40, num_warmup=3, thin=thin, seed=2, compile=False)
    assert lengths
    assert torch.equal(thinned.samples, every.samples[thin - 1 :: thin])
    assert torch.equal(thinned.log_prob, every.log_prob[thin - 1 :: thin])


class StopAfter:
    """A target that interrupts the run (``KeyboardInterrupt``) at evaluation ``calls + 1``:
    an interrupted job, interrupted inside a block of steps."""

    def __init__(self, calls: int):
        self.calls = calls

    def __call__(self, x):
        self.calls -= 1
        if self.calls < 0:
            raise KeyboardInterrupt
        return correlated_gaussian(x)


def test_checkpoints_between_blocks_resume_to_the_uninterrupted_trace(tmp_path, monkeypatch):
    x0, path = torch.zeros(6, 2), tmp_path / "chain.pt"
    options = dict(num_warmup=4, seed=5, compile=False, checkpoint_every=10)
    full = _step_by_step(monkeypatch, MALA(correlated_gaussian, step_size=0.05), x0, 50, **options)
    lengths = _count_blocks(monkeypatch)
    # 1 evaluation at init, then one per MALA step: interrupted at step 35, inside the block
    # of steps 30 to 37 (checkpoints every 10 steps: the last one at step 30).
    with pytest.raises(KeyboardInterrupt):
        run(MALA(StopAfter(36), step_size=0.05), x0, 50, checkpoint=path, **options)
    assert lengths
    saved = torch.load(path, weights_only=True)
    assert saved["step"] == 30 and saved["kept"].shape[0] == 26
    resumed = run(
        MALA(correlated_gaussian, step_size=0.05), x0, 50, checkpoint=path, resume=True, **options
    )
    assert_same_trace(resumed, full)


def test_a_kernel_overriding_step_or_with_value_dependent_draws_runs_step_by_step():
    from normflows_sci.samplers.kernels import StepBlock

    class ValueDraws(MALA):
        shape_only_draws = False

    assert StepBlock.supports(MALA(correlated_gaussian))
    assert StepBlock.supports(ParallelTempering(correlated_gaussian, (1.0, 2.0)))
    assert not StepBlock.supports(ValueDraws(correlated_gaussian))
    assert not StepBlock.supports(Interrupting(MALA(correlated_gaussian), after=3))
    with pytest.raises(TypeError, match="cannot run in blocks"):
        StepBlock(ValueDraws(correlated_gaussian), 4)
