"""Samplers under attack: crafted checkpoints, targets of the wrong shape, degenerate sampling.

Each test feeds the input that used to break the samplers: a checkpoint whose pickle runs code,
checkpoints of another kernel or chain count, a target returning one number for the batch (which
kernels broadcast into wrong samples), chains starting at zero density, zero chains, step sizes
that overflow or that warm-up drives to 0/inf, and a production run where nothing is accepted.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from tests_helpers import Interrupting

from normflows_sci.flows import NSF
from normflows_sci.samplers import (
    AIS,
    HMC,
    MALA,
    SMC,
    AdaptiveFlowMCMC,
    IndependentMH,
    MCMCLayer,
    NeuTraHMC,
    ParallelTempering,
    RandomWalkMH,
    StochasticNormalizingFlow,
    importance_sample,
    run,
    run_distributed,
)
from normflows_sci.training.fab import fab_ais


def gaussian(x):
    return -0.5 * x.square().sum(-1)


def _flow(seed: int = 0):
    torch.manual_seed(seed)
    return NSF(2, transforms=1, hidden_features=(8,))


class _Exploit:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


# ---------------------------------------------------------------------------------------------
# 1. Checkpoints: plain data only, validated on resume.


@pytest.mark.parametrize("where", ["bare", "inside_a_real_checkpoint"])
def test_resume_never_runs_code_from_a_crafted_checkpoint(tmp_path, where):
    path, marker = tmp_path / "chain.pt", tmp_path / "pwned"
    kernel = MALA(gaussian, step_size=0.1)
    if where == "bare":
        torch.save({"num_warmup": 0, "thin": 1, "payload": _Exploit(marker)}, path)
    else:
        run(kernel, torch.zeros(4, 2), 3, seed=0, checkpoint=path)
        saved = torch.load(path, weights_only=False)  # our own file, to tamper with
        saved["memory"] = {"note": _Exploit(marker)}
        torch.save(saved, path)
    with pytest.raises(ValueError, match=r"chain\.pt"):
        run(kernel, torch.zeros(4, 2), 6, seed=0, checkpoint=path, resume=True)
    assert not marker.exists()


def _resume_distributed_from_a_crafted_checkpoint(tmp_path):
    """Write rank 0's checkpoint as a pickle that would create a marker file, resume from it
    (which must raise naming the file) and return the marker's path."""
    marker = tmp_path / "pwned"
    torch.save({"payload": _Exploit(marker)}, tmp_path / "chains-0.pt")
    with pytest.raises(ValueError, match=r"chains-0\.pt"):
        run_distributed(
            MALA(gaussian), torch.zeros(4, 2), 5, seed=0,
            checkpoint=tmp_path / "chains-{rank}.pt", resume=True,
        )  # fmt: skip
    return marker


def test_run_distributed_resume_never_runs_code(tmp_path):
    marker = _resume_distributed_from_a_crafted_checkpoint(tmp_path)
    assert not marker.exists()


def test_run_distributed_rejects_a_bad_checkpoint_on_every_rank_before_sampling(
    tmp_path, monkeypatch
):
    """On 2 ranks (simulated), rank 0's crafted checkpoint is rejected while the ranks exchange
    their inputs, so every rank raises instead of the others waiting in a later collective."""
    from normflows_sci.samplers import distributed

    exchanged = []

    def all_gather_object(out, obj):
        exchanged.append(obj)
        out[:] = [obj, {key: value for key, value in obj.items() if key != "error"}]

    def collective(*args, **kwargs):
        raise AssertionError("sampling started after a rejected checkpoint")

    monkeypatch.setattr(distributed, "rank_and_world", lambda: (0, 2))
    monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
    monkeypatch.setattr(torch.distributed, "all_gather", collective)
    marker = _resume_distributed_from_a_crafted_checkpoint(tmp_path)
    assert not marker.exists()
    kind, message = exchanged[0]["error"]
    assert kind == "ValueError" and "chains-0.pt" in message


def _pt():
    return ParallelTempering(gaussian, (1.0, 2.0, 4.0), local=HMC, step_size=0.2)


def _adaptive(seed):
    return AdaptiveFlowMCMC(gaussian, _flow(seed), learning_rate=1e-2)


@pytest.mark.parametrize("kind", ["hmc", "tempering", "adaptive_flow"])
def test_checkpoints_are_plain_data_and_resume_exactly(tmp_path, kind):
    """The file loads with weights_only=True (kernel states, HMC's mass-matrix memory, a flow
    and its optimizer), and an interrupted run resumed from it equals an uninterrupted one
    (for the adaptive kernel, resumed with a differently initialised flow: the file restores it)."""
    make = {
        "hmc": lambda seed: HMC(gaussian, step_size=0.2, num_leapfrog=3),
        "tempering": lambda seed: _pt(),
        "adaptive_flow": _adaptive,
    }[kind]
    x0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    options = dict(num_warmup=16, seed=3)
    full = run(make(0), x0, 6, **options)
    path = tmp_path / "partial.pt"
    with pytest.raises(KeyboardInterrupt):
        run(Interrupting(make(0), after=11), x0, 6, checkpoint=path, checkpoint_every=5, **options)
    saved = torch.load(path, weights_only=True)
    assert saved["step"] == 10
    resumed = run(make(1), x0, 6, checkpoint=path, resume=True, **options)
    assert torch.equal(resumed.samples, full.samples)
    for name in full.acceptance:
        assert torch.equal(resumed.acceptance[name], full.acceptance[name])
        assert torch.equal(resumed.warmup_acceptance[name], full.warmup_acceptance[name])


def _checkpoint(tmp_path, kernel, chains=8, steps=4):
    path = tmp_path / "chain.pt"
    run(kernel, torch.zeros(chains, 2), steps, seed=0, checkpoint=path)
    return path


def test_resume_refuses_a_checkpoint_of_another_kernel(tmp_path):
    path = _checkpoint(tmp_path, RandomWalkMH(gaussian))
    with pytest.raises(ValueError, match=r"chain\.pt.*RWState.*MALAState.*another kernel"):
        run(MALA(gaussian), torch.zeros(8, 2), 8, seed=0, checkpoint=path, resume=True)


@pytest.mark.parametrize("x0", [torch.zeros(5, 2), torch.zeros(8, 3), torch.zeros(8, 2).double()])
def test_resume_refuses_another_chain_count_event_shape_or_dtype(tmp_path, x0):
    path = _checkpoint(tmp_path, MALA(gaussian))
    with pytest.raises(ValueError, match=r"chain\.pt.*state\.x has shape \(8, 2\)"):
        run(MALA(gaussian), x0, 8, seed=0, checkpoint=path, resume=True)


def test_resume_refuses_a_flow_checkpoint_for_another_architecture(tmp_path):
    path = _checkpoint(tmp_path, _adaptive(0))
    torch.manual_seed(0)
    other = AdaptiveFlowMCMC(gaussian, NSF(2, transforms=2, hidden_features=(8,)))
    with pytest.raises(ValueError, match=r"chain\.pt.*saved parameters do not fit"):
        run(other, torch.zeros(8, 2), 8, seed=0, checkpoint=path, resume=True)


@pytest.mark.parametrize("damage", ["truncated", "foreign", "fewer_steps", "kept_removed"])
def test_resume_refuses_a_damaged_or_mismatched_checkpoint(tmp_path, damage):
    kernel = MALA(gaussian)
    path = _checkpoint(tmp_path, kernel, steps=6)
    num_steps, match = 6, "chain.pt"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
        match = r"chain\.pt.*format"
    elif damage == "fewer_steps":
        num_steps, match = 2, r"chain\.pt.*step is 6"
    else:
        saved = torch.load(path, weights_only=True)
        saved["kept"] = saved["kept"][:-1]
        torch.save(saved, path)
        match = r"chain\.pt.*kept must be a tensor of shape \(6, 8, 2\)"
    with pytest.raises(ValueError, match=match):
        run(kernel, torch.zeros(8, 2), num_steps, seed=0, checkpoint=path, resume=True)


# ---------------------------------------------------------------------------------------------
# 2. Targets returning the wrong shape or dtype: one check at each algorithm's start.


def one_for_the_batch(x):
    return -0.5 * x.square().sum().reshape(1)


def scalar_for_the_batch(x):
    return -0.5 * x.square().sum()


def one_per_coordinate(x):
    return -0.5 * x.square()


def integer_valued(x):
    return torch.zeros(x.shape[0], dtype=torch.long)


def _algorithms():
    x0 = torch.zeros(8, 2)
    generator = torch.Generator().manual_seed(0)
    snf = lambda t: StochasticNormalizingFlow(_flow(), [MCMCLayer(1.0, step_size=0.3)], t)  # noqa: E731
    return {
        "rwmh": lambda t: run(RandomWalkMH(t, step_size=0.5), x0, 5, seed=0),
        "mala": lambda t: run(MALA(t), x0, 5, seed=0),
        "hmc": lambda t: run(HMC(t, num_leapfrog=2), x0, 5, seed=0),
        "independent_mh": lambda t: run(IndependentMH(t, _flow()), x0, 5, seed=0),
        "neutra": lambda t: run(NeuTraHMC(t, _flow(), num_leapfrog=2), x0, 5, seed=0),
        "tempering": lambda t: run(ParallelTempering(t, (1.0, 2.0)), x0, 5, seed=0),
        "adaptive_flow": lambda t: run(AdaptiveFlowMCMC(t, _flow()), x0, 5, seed=0),
        "importance": lambda t: importance_sample(_flow(), t, 64, generator=generator),
        "ais": lambda t: AIS(t, _flow(), num_temperatures=2, kernel=MALA).sample(32),
        "smc": lambda t: SMC(t, _flow(), num_temperatures=2, kernel=RandomWalkMH).sample(32),
        "snf": lambda t: snf(t).importance_sample(32, generator=generator),
        "fab_ais": lambda t: fab_ais(_flow(), t, 32, generator=generator),
    }


@pytest.mark.parametrize("algorithm", sorted(_algorithms()))
@pytest.mark.parametrize(
    "target, error, got",
    [
        (one_for_the_batch, ValueError, r"got shape \(1,\)"),
        (scalar_for_the_batch, ValueError, r"got shape \(\)"),
        (one_per_coordinate, ValueError, r"got shape \(\d+, 2\)"),
        (integer_valued, TypeError, "got dtype torch.int64"),
    ],
    ids=["shape_1", "scalar", "per_coordinate", "integer"],
)
def test_a_target_of_the_wrong_shape_or_dtype_is_refused_at_the_start(
    algorithm, target, error, got
):
    with pytest.raises(error, match=rf"target {target.__name__} must return .*{got}"):
        _algorithms()[algorithm](target)


def test_the_shape_error_states_the_expected_shape_and_names_an_energy():
    from normflows_sci.energies import DoubleWell

    class Lumped(DoubleWell):
        def log_prob(self, x):
            return super().log_prob(x).sum(0, keepdim=True)

    with pytest.raises(ValueError, match=r"target Lumped .* shape \(chains,\) = \(8,\), got "):
        RandomWalkMH(Lumped()).init(torch.zeros(8, 2))


# ---------------------------------------------------------------------------------------------
# 3. Degenerate sampling.


def box(x):
    """Uniform on [-1, 1]^2: a log-density without gradient (torch.where of constants)."""
    return torch.where((x.abs() < 1).all(-1), 0.0, -math.inf)


def _kernels(target):
    return {
        "rwmh": lambda: RandomWalkMH(target),
        "mala": lambda: MALA(target),
        "hmc": lambda: HMC(target, num_leapfrog=2),
        "independent_mh": lambda: IndependentMH(target, _flow()),
        "neutra": lambda: NeuTraHMC(target, _flow(), num_leapfrog=2),
        "tempering": lambda: ParallelTempering(target, (1.0, 2.0)),
        "adaptive_flow": lambda: AdaptiveFlowMCMC(target, _flow()),
    }


@pytest.mark.parametrize("kernel", sorted(_kernels(box)))
def test_every_chain_starting_at_zero_density_is_an_error(kernel):
    with pytest.raises(ValueError, match="all 8 chains start where target box has zero density"):
        run(_kernels(box)[kernel](), torch.full((8, 2), 5.0), 5, seed=0)


@pytest.mark.parametrize("kernel", sorted(_kernels(box)))
def test_some_chains_starting_at_zero_density_warn_and_the_others_sample(kernel):
    x0 = torch.zeros(8, 2)
    x0[:3] = 5.0
    with pytest.warns(RuntimeWarning, match="3 of 8 chains start where target box has zero"):
        trace = run(_kernels(box)[kernel](), x0, 5, seed=0)
    assert bool((trace.samples[:, 3:].abs() < 1).all())


@pytest.mark.parametrize("kernel", sorted(_kernels(gaussian)))
def test_zero_chains_are_refused_at_init(kernel):
    with pytest.raises(ValueError, match=r"x0 .* at least one chain, got shape \(0, 2\)"):
        run(_kernels(gaussian)[kernel](), torch.zeros(0, 2), 5, num_warmup=5, seed=0)


@pytest.mark.parametrize("step_size", [1e300, 1e-300, True])
@pytest.mark.parametrize("make", [RandomWalkMH, MALA, HMC], ids=["rwmh", "mala", "hmc"])
def test_a_step_size_that_is_not_positive_and_finite_in_the_chains_dtype_is_refused(
    make, step_size
):
    with pytest.raises(ValueError, match="step_size"):
        run(make(gaussian, step_size=step_size), torch.zeros(4, 2), 5, seed=0)


def test_warm_up_driving_the_step_size_to_infinity_stops_with_an_error():
    """A flat (improper) target accepts every move, so warm-up grows the step without bound;
    the chains would then jump to infinity and be 'accepted' there."""

    def flat(x):
        return x.new_zeros(x.shape[0])

    kernel = RandomWalkMH(flat, step_size=1e38)
    with pytest.raises(ValueError, match="warm-up drove the step size of 4 of 4 chains to inf"):
        run(kernel, torch.zeros(4, 2), 5, num_warmup=5, seed=0)


def test_warm_up_driving_the_step_size_to_zero_stops_with_an_error():
    """A chain that starts outside the support and never gets in has every proposal rejected;
    warm-up shrinks its step size until it underflows (to subnormal numbers, where it no
    longer moves at all)."""
    x0 = torch.zeros(8, 2)
    x0[0] = 5.0
    with pytest.warns(RuntimeWarning, match="1 of 8 chains start"):
        with pytest.raises(
            ValueError, match=r"step size of 1 of 8 chains to [\d.]+e-\d+: .*underflows"
        ):
            run(MALA(box, step_size=1.2e-38), x0, 5, num_warmup=100, seed=0)


def test_a_production_run_without_any_accepted_move_warns():
    """The rule: at least 20 production steps and, for a move kind, at least 10% of the chains
    (and at least one) without an accepted move. Shorter or healthy runs do not warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(RandomWalkMH(gaussian, step_size=1e30), torch.zeros(8, 2), 19, seed=0)
        run(MALA(gaussian, step_size=0.5), torch.zeros(64, 2), 40, seed=0)
    with pytest.warns(RuntimeWarning, match="8 of 8 chains accepted no 'local' move in 30"):
        trace = run(RandomWalkMH(gaussian, step_size=1e30), torch.zeros(8, 2), 30, seed=0)
    assert bool((trace.acceptance["local"] == 0).all())


def test_chains_stuck_on_global_moves_warn_naming_the_move_kind():
    """Flow proposals far from the target are never accepted, though local moves are."""

    def shifted(x):
        return -0.5 * (x - 40.0).square().sum(-1)

    kernel = AdaptiveFlowMCMC(shifted, _flow(), train_steps=0)  # proposes around 0
    with pytest.warns(RuntimeWarning, match="16 of 16 chains accepted no 'global' move") as seen:
        run(kernel, torch.full((16, 2), 40.0), 25, seed=0)
    assert not any("'local'" in str(w.message) for w in seen)


def test_a_uniform_box_target_without_gradient_runs_with_gradient_kernels():
    """A log-density with no autograd graph (constants inside torch.where) has gradient 0."""
    trace = run(MALA(box, step_size=0.1), torch.zeros(16, 2), 50, num_warmup=50, seed=0)
    assert bool((trace.samples.abs() < 1).all())
    assert float(trace.acceptance["local"].mean()) > 0.3


def test_ais_and_smc_refuse_to_return_weights_that_are_all_zero():
    def far(x):
        return torch.where((x > 50).all(-1), 0.0, -math.inf)

    for sampler in (AIS(far, _flow(), num_temperatures=2, kernel=RandomWalkMH), SMC(far, _flow())):
        with pytest.raises(ValueError, match="every particle has weight zero: target far"):
            sampler.sample(32, generator=torch.Generator().manual_seed(0))
