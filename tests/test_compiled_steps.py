"""Compiled kernel steps: every step compiles as one graph (``fullgraph=True``: no ``.item()``,
``float()``/``bool()`` of a tensor, data-dependent branch or generator argument inside) and gives
the chains of the eager step.

On CPU, ``fullgraph=True`` is the proof that a step never synchronises with the device: any read
of a tensor back to the host is a graph break, which ``fullgraph`` turns into an error (the CUDA
check, ``torch.cuda.set_sync_debug_mode``, needs a GPU). The graph-break checks use the "eager"
and "aot_eager" backends (tracing without code generation: fast); ``aot_eager`` also traces the
gradients, as inductor does.
"""

from __future__ import annotations

import pytest
import torch

from normflows_sci.distributions import StandardNormal
from normflows_sci.flows import NSF, Flow
from normflows_sci.samplers import (
    HMC,
    MALA,
    AdaptiveFlowMCMC,
    IndependentMH,
    NeuTraHMC,
    RandomWalkMH,
    StepSizeAdaptation,
    run,
)
from normflows_sci.transforms import ElementwiseAffine


def banana(x):
    """A 4-D banana (Rosenbrock-like) log-density: curved, so a wrong gradient shows."""
    return -0.5 * (x[:, 0].square() + 4 * (x[:, 1] - x[:, 0].square()).square()) - 0.5 * x[
        :, 2:
    ].square().sum(-1)


def start(chains: int = 32, dim: int = 4, seed: int = 1):
    return torch.randn(chains, dim, generator=torch.Generator().manual_seed(seed))


def close(a, b, atol: float = 1e-5) -> bool:
    """Every tensor of two (nested) states or infos agrees."""
    if isinstance(a, tuple):
        return len(a) == len(b) and all(close(x, y, atol) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        if a.dtype == torch.bool:
            return bool((a == b).all())
        return torch.allclose(a, b, atol=atol, rtol=1e-5)
    return a == b


def same_chains(kernel, state, steps: int = 4, backend: str = "aot_eager"):
    """The compiled step (eager draws from a seeded generator, compiled transition) reproduces
    the eager step's chains, and did not fall back to the eager transition."""
    compiled = kernel.compiled_step(backend=backend)
    eager_generator = torch.Generator().manual_seed(7)
    compiled_generator = torch.Generator().manual_seed(7)
    eager = state
    accepted = 0
    for _ in range(steps):
        eager, eager_info = kernel.step(eager, eager_generator)
        state, info = compiled(state, compiled_generator)
        assert close(state, eager), "compiled chains left the eager ones"
        assert close(info, eager_info)
        accepted += int(torch.as_tensor(kernel.acceptance(info)[kernel.kind]).sum())
    assert compiled.fallback is None, f"fell back to eager: {compiled.fallback!r}"
    assert accepted > 0  # the chains moved: the comparison is not between frozen states
    return state


def global_rng_step_matches(kernel, state, backend: str = "eager") -> None:
    """``torch.compile(kernel.step, fullgraph=True)`` (global generator) gives the eager step."""
    step = torch.compile(kernel.step, fullgraph=True, backend=backend)
    torch.manual_seed(3)
    compiled, _ = step(state)
    torch.manual_seed(3)
    eager, _ = kernel.step(state)
    assert close(compiled, eager)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_random_walk_step_compiles_with_a_generator():
    kernel = RandomWalkMH(banana, step_size=0.5)
    state = kernel.init(start())
    same_chains(kernel, state)
    global_rng_step_matches(kernel, state)


def test_mala_step_compiles_fullgraph_gradient_included():
    # The gradient of the eager step is torch.autograd.grad, which dynamo does not trace.
    kernel = MALA(banana, step_size=0.2)
    state = kernel.init(start())
    same_chains(kernel, state)
    global_rng_step_matches(kernel, state)


def test_hmc_step_and_mass_adaptation_compile_fullgraph():
    kernel = HMC(banana, step_size=0.2, num_leapfrog=3)
    state = kernel.init(start(64))
    state = same_chains(kernel, state)
    global_rng_step_matches(kernel, state)
    # The warm-up update at the end of the first mass window: it rescaled the step sizes by a
    # factor read back to the host (float()), a synchronisation in a warm-up step.
    num_warmup = 16
    memory_eager, memory_compiled = {}, {}
    _, info = kernel.step(state, torch.Generator().manual_seed(0))
    adapt = torch.compile(kernel.adapt, fullgraph=True, backend="eager")
    for iteration in range(num_warmup // 8, num_warmup // 4 + 1):
        eager = kernel.adapt(state, info, iteration, num_warmup, memory_eager)
        compiled = adapt(state, info, iteration, num_warmup, memory_compiled)
    assert memory_eager["restart"] == memory_compiled["restart"] == num_warmup // 4 + 1
    assert not torch.equal(eager.inverse_mass, torch.ones(4))  # the mass was estimated
    assert close(compiled, eager)


def test_step_size_adaptation_with_a_tensor_count_is_one_graph():
    adaptation = StepSizeAdaptation(0.6)
    count = torch.tensor(4)

    def update(step_size, accept_prob, count):
        return adaptation.update(adaptation.init(step_size, count), accept_prob)

    step_size, accept_prob = torch.full((3,), 0.1), torch.tensor([0.0, 0.6, 1.0])
    compiled = torch.compile(update, fullgraph=True, backend="eager")(step_size, accept_prob, count)
    eager = adaptation.update(adaptation.init(step_size, 4), accept_prob)
    assert torch.allclose(compiled.step_size, eager.step_size)
    assert int(compiled.count) == eager.count == 5


def whitening_flow():
    scales = torch.tensor([2.0, 0.5, 1.0, 1.0])
    return Flow(ElementwiseAffine(4, scale=1 / scales, learnable=False), StandardNormal(4))


def spline_flow():
    torch.manual_seed(0)
    return NSF(4, coupling=True, transforms=2, hidden_features=(16,), tail_bound=6.0)


def test_independent_mh_step_with_a_spline_flow_compiles():
    flow = spline_flow()
    kernel = IndependentMH(banana, flow)
    state = kernel.init(start())
    same_chains(kernel, state)
    global_rng_step_matches(kernel, state)


def test_neutra_hmc_step_compiles_through_the_flow():
    kernel = NeuTraHMC(banana, whitening_flow(), step_size=0.3, num_leapfrog=3)
    state = kernel.init(start())
    same_chains(kernel, state)
    global_rng_step_matches(kernel, state)


def test_adaptive_flow_mcmc_step_compiles_local_and_flow_moves():
    kernel = AdaptiveFlowMCMC(
        banana,
        whitening_flow(),
        local_kernel=MALA(banana, step_size=0.2),
        local_steps=2,
        train_steps=0,
    )
    state = kernel.init(start())
    # same_chains compares the infos too: local acceptance rate, flow move and the local info.
    state = same_chains(kernel, state, steps=3)
    global_rng_step_matches(kernel, state)


def branching(x):
    # A branch on tensor values: fullgraph refuses it, the compiled step must not.
    if bool((x.abs() > 100).any()):
        return torch.full_like(x[:, 0], -torch.inf)
    return banana(x)


def test_a_target_dynamo_cannot_compile_falls_back_to_the_same_chains():
    kernel = MALA(branching, step_size=0.2)
    state = kernel.init(start())
    compiled = kernel.compiled_step(backend="eager")
    a, _ = compiled(state, torch.Generator().manual_seed(0))
    b, _ = kernel.step(state, torch.Generator().manual_seed(0))
    assert compiled.fallback is not None
    assert close(a, b)
    a, _ = compiled(a, torch.Generator().manual_seed(1))  # later calls: eager, no retry
    b, _ = kernel.step(b, torch.Generator().manual_seed(1))
    assert close(a, b)


@pytest.mark.slow  # inductor generates and builds C++ code: seconds, not milliseconds
def test_mala_compiled_by_inductor_gives_the_eager_chains():
    kernel = MALA(lambda x: -0.5 * x.square().sum(-1), step_size=0.5)
    same_chains(kernel, kernel.init(start(16, 2)), steps=3, backend="inductor")


@pytest.mark.parametrize("target", [banana, branching], ids=["compilable", "graph-break"])
def test_run_with_the_compiled_step_gives_the_eager_trace(target):
    kernel = HMC(target, step_size=0.2, num_leapfrog=3)
    options = dict(num_warmup=8, seed=0)
    eager = run(kernel, start(), 6, compile=False, **options)
    compiled = run(kernel, start(), 6, compile={"backend": "aot_eager"}, **options)
    assert torch.allclose(compiled.samples, eager.samples, atol=1e-5)
    assert torch.allclose(compiled.log_prob, eager.log_prob, atol=1e-5)
    assert torch.equal(compiled.acceptance["local"], eager.acceptance["local"])
    assert torch.allclose(compiled.state.inverse_mass, eager.state.inverse_mass)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_run_refuses_an_unknown_compile_value(value):
    with pytest.raises(ValueError, match="compile must be True, False, 'auto' or a dict"):
        run(MALA(banana), start(), 2, compile=value)


def test_run_switching_to_the_compiled_step_mid_run_keeps_the_trace(monkeypatch):
    # "auto" compiles once the eager pace projects a long run: forced here for any run length
    # (the switch and the pace comparison after it must not change the chains).
    import importlib

    run_module = importlib.import_module("normflows_sci.samplers.run")  # not the function
    monkeypatch.setattr(run_module, "_COMPILE_PAYS_SECONDS", -1.0)

    class TracedOnly(run_module.CompiledStep):  # no code generation: fast
        def __init__(self, kernel):
            super().__init__(kernel, backend="aot_eager")

    monkeypatch.setattr(run_module, "CompiledStep", TracedOnly)
    kernel = MALA(banana, step_size=0.2)
    switched = run(kernel, start(), 12, num_warmup=4, seed=0)
    eager = run(kernel, start(), 12, num_warmup=4, seed=0, compile=False)
    assert torch.allclose(switched.samples, eager.samples, atol=1e-5)
    assert torch.equal(switched.acceptance["local"], eager.acceptance["local"])


def test_parallel_tempering_step_compiles_and_alternates_its_swaps_without_a_sync():
    """The swap parity used to be read with ``int(state.iteration)`` (a host sync every step):
    now one graph, the same chains as eager, and swaps accepted on both parities."""
    from normflows_sci.samplers import ParallelTempering

    kernel = ParallelTempering(banana, (1.0, 2.0, 4.0), step_size=0.3)
    state = kernel.init(start(16))
    state = same_chains(kernel, state, steps=4)
    global_rng_step_matches(kernel, state)
    swaps = []
    for _ in range(6):
        state, info = kernel.step(state, torch.Generator().manual_seed(len(swaps)))
        swaps.append(float(info.swap_accepted.mean()))
    assert min(swaps[0::2]) > 0 and min(swaps[1::2]) > 0  # both parities swap


def test_more_compiled_steps_than_dynamos_recompile_limit_all_compile(monkeypatch):
    # Dynamo counts recompilations per code object, and every MALA's transition shares one: the
    # ninth kernel or chain count in a process used to run eager without a word.
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    steps = []
    for chains in range(2, torch._dynamo.config.recompile_limit + 5):
        kernel = MALA(banana, step_size=0.1)
        compiled = kernel.compiled_step(backend="eager")
        compiled(kernel.init(start(chains)), torch.Generator().manual_seed(0))
        steps.append(compiled)
    assert [step.fallback for step in steps] == [None] * len(steps)


def block_matches_steps(kernel, state, length: int = 3, stride: int | None = 1):
    """A compiled :class:`StepBlock` (one graph: ``fullgraph=True``) gives the chains, summed
    acceptance and kept positions of ``length`` single eager steps with the same generator."""
    from normflows_sci.samplers.kernels import StepBlock

    block = StepBlock(kernel, length, stride, compile={"backend": "aot_eager"})
    generator = torch.Generator().manual_seed(11)
    single, totals, kept = state, None, []
    for i in range(length):
        single, info = kernel.step(single, generator)
        accepted = {k: v.to(torch.float64) for k, v in kernel.acceptance(info).items()}
        totals = accepted if totals is None else {k: totals[k] + accepted[k] for k in totals}
        if stride is not None and (i + 1) % stride == 0:
            kept.append((kernel.position(single), kernel.position_log_prob(single)))
    zeros = {k: torch.zeros_like(v) for k, v in totals.items()}
    after, block_totals, block_kept = block(state, torch.Generator().manual_seed(11), zeros)
    assert block.fallback is None, f"fell back to eager: {block.fallback!r}"
    assert close(after, single)
    assert block_totals.keys() == totals.keys()
    assert all(torch.equal(block_totals[k], totals[k]) for k in totals)
    assert len(block_kept) == len(kept) and close(tuple(block_kept), tuple(kept))
    assert sum(float(v.sum()) for v in totals.values()) > 0  # the chains moved
    return block


def test_mala_block_of_steps_compiles_as_one_graph():
    kernel = MALA(banana, step_size=0.2)
    block_matches_steps(kernel, kernel.init(start()), length=4, stride=2)


def test_hmc_block_of_steps_compiles_as_one_graph():
    kernel = HMC(banana, step_size=0.2, num_leapfrog=2)
    block_matches_steps(kernel, kernel.init(start()), length=3, stride=None)


def test_parallel_tempering_block_compiles_with_its_swap_parity_in_the_graph():
    from normflows_sci.samplers import ParallelTempering

    kernel = ParallelTempering(banana, (1.0, 2.0, 4.0), step_size=0.3)
    block_matches_steps(kernel, kernel.init(start(16)), length=3, stride=1)


def test_a_block_whose_target_dynamo_cannot_compile_falls_back_to_the_same_chains():
    from normflows_sci.samplers.kernels import StepBlock

    kernel = MALA(branching, step_size=0.2)
    state = kernel.init(start())
    block = StepBlock(kernel, 3, 1, compile={"backend": "eager"})
    totals = {"local": torch.zeros(32, dtype=torch.float64)}
    after, _, kept = block(state, torch.Generator().manual_seed(0), totals)
    assert block.fallback is not None
    eager = StepBlock(kernel, 3, 1)(state, torch.Generator().manual_seed(0), totals)
    assert close(after, eager[0]) and close(kept, eager[2])


def test_run_in_compiled_blocks_gives_the_eager_trace(monkeypatch):
    # Production runs in compiled blocks of steps once the run compiles its step: the blocks
    # must compile (no fallback) and keep the eager chains, thinned samples and acceptance.
    import importlib

    from normflows_sci.samplers.kernels import StepBlock

    run_module = importlib.import_module("normflows_sci.samplers.run")  # not the function
    made = []

    class Recorded(StepBlock):
        def __init__(self, *args, **options):
            super().__init__(*args, **options)
            made.append(self)

    monkeypatch.setattr(run_module, "StepBlock", Recorded)
    monkeypatch.setattr(run_module, "_BLOCK_STEPS", 8)
    kernel = MALA(banana, step_size=0.2)
    options = dict(num_warmup=4, thin=2, seed=0)
    compiled = run(kernel, start(), 21, compile={"backend": "aot_eager"}, **options)
    eager = run(kernel, start(), 21, compile=False, **options)
    assert [b.compiled is not None for b in made] == [True, False]
    assert made[0].fallback is None and (made[0].length, made[0].stride) == (8, 2)
    assert torch.allclose(compiled.samples, eager.samples, atol=1e-5)
    assert torch.allclose(compiled.log_prob, eager.log_prob, atol=1e-5)
    assert torch.equal(compiled.acceptance["local"], eager.acceptance["local"])


@pytest.mark.parametrize("threshold", [-1.0, 10.0], ids=["blocks-pay", "blocks-do-not-pay"])
def test_auto_compiles_the_blocks_when_they_pay_and_keeps_the_trace(monkeypatch, threshold):
    # "auto" compiles the step and finds it faster; production then runs in blocks compiled
    # with the step's options if the compiled pace projects the rest of the run past the
    # threshold, else with the compiled step alone. The run's clock is a fake one that only the
    # eager target advances: the paces are fixed, not measured.
    import importlib
    import types

    from normflows_sci.samplers.kernels import StepBlock

    run_module = importlib.import_module("normflows_sci.samplers.run")  # not the function
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(run_module, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
    monkeypatch.setattr(run_module, "_COMPILE_PAYS_SECONDS", threshold)
    monkeypatch.setattr(run_module, "_BLOCK_STEPS", 8)
    made = []

    class TracedOnly(run_module.CompiledStep):  # no code generation: fast
        def __init__(self, kernel):
            super().__init__(kernel, backend="aot_eager")

    class Recorded(StepBlock):
        def __init__(self, *args, **options):
            super().__init__(*args, **options)
            made.append(self)

    def slow_when_eager(x):
        if not torch.compiler.is_compiling():
            clock.now += 1.0  # one "second" per eager evaluation; compiled code: none
        return banana(x)

    monkeypatch.setattr(run_module, "CompiledStep", TracedOnly)
    monkeypatch.setattr(run_module, "StepBlock", Recorded)
    kernel = MALA(slow_when_eager, step_size=0.2)
    auto = run(kernel, start(), 30, num_warmup=4, seed=0)
    if threshold < 0:  # compiled blocks (the compiled step's projection passes any threshold)
        assert len(made) == 1 and made[0].compiled is not None and made[0].fallback is None
    else:  # 27 eager "seconds" pay for compiling the step; the compiled pace, 0, not for blocks
        assert made == []
    eager = run(kernel, start(), 30, num_warmup=4, seed=0, compile=False)
    assert torch.allclose(auto.samples, eager.samples, atol=1e-5)
    assert torch.equal(auto.acceptance["local"], eager.acceptance["local"])
