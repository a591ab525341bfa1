"""Samplers: importance sampling, batched MCMC kernels, flow-assisted kernels and the run loop.

Kernel contract (see the hybrid MCMC guide): ``state = kernel.init(x)`` with chains on the leading dimension,
``state, info = kernel.step(state, generator)``; :func:`run` handles warm-up, thinning, progress
and checkpoints and returns a :class:`Trace`. Step-size adaptation is its own object
(:class:`StepSizeAdaptation`, with a NamedTuple state); kernels only expose their acceptance signal.
Samplers that build kernels themselves (:class:`AIS`, :class:`SMC`, :func:`anneal`,
:class:`ParallelTempering`, :class:`MCMCLayer`, FAB) take the kernel as a value: a kernel class or a
``functools.partial`` of one with its hyperparameters (the names ``"hmc"``, ``"mala"``, ``"rwmh"``
are deprecated aliases).
"""

from normflows_sci.samplers.adaptation import (
    AdaptationState,
    DiagonalMassAdaptation,
    StepSizeAdaptation,
)
from normflows_sci.samplers.diagnostics import (
    ModeOccupancy,
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
from normflows_sci.samplers.distributed import run_distributed
from normflows_sci.samplers.flow_kernels import (
    AdaptiveFlowMCMC,
    HybridInfo,
    HybridState,
    IMHState,
    IndependentMH,
    NeuTraHMC,
)
from normflows_sci.samplers.importance import (
    Estimate,
    ImportanceResult,
    importance_sample,
    importance_weights,
)
from normflows_sci.samplers.kernels import (
    HMC,
    MALA,
    CompiledStep,
    HMCState,
    Kernel,
    MALAState,
    MetropolisKernel,
    RandomWalkMH,
    RWState,
    StepBlock,
    StepInfo,
)
from normflows_sci.samplers.psis import function_khat, khat_threshold, pareto_khat, psis_smooth
from normflows_sci.samplers.run import Trace, run
from normflows_sci.samplers.sequential import AIS, SMC, AnnealResult, SequentialResult, anneal
from normflows_sci.samplers.snf import (
    LangevinLayer,
    MCMCLayer,
    StochasticLayer,
    StochasticNormalizingFlow,
)
from normflows_sci.samplers.targets import as_log_prob, compile_target
from normflows_sci.samplers.tempering import ParallelTempering, PTInfo, PTState

__all__ = [
    "ImportanceResult",
    "Estimate",
    "importance_sample",
    "importance_weights",
    "pareto_khat",
    "function_khat",
    "psis_smooth",
    "khat_threshold",
    "as_log_prob",
    "compile_target",
    "Kernel",
    "MetropolisKernel",
    "CompiledStep",
    "StepBlock",
    "StepInfo",
    "RandomWalkMH",
    "RWState",
    "MALA",
    "MALAState",
    "HMC",
    "HMCState",
    "StepSizeAdaptation",
    "AdaptationState",
    "DiagonalMassAdaptation",
    "IndependentMH",
    "IMHState",
    "NeuTraHMC",
    "AdaptiveFlowMCMC",
    "HybridState",
    "HybridInfo",
    "ParallelTempering",
    "PTState",
    "PTInfo",
    "Trace",
    "run",
    "run_distributed",
    "StochasticLayer",
    "LangevinLayer",
    "MCMCLayer",
    "StochasticNormalizingFlow",
    "AIS",
    "SMC",
    "SequentialResult",
    "AnnealResult",
    "anneal",
    "autocorrelation",
    "integrated_autocorrelation_time",
    "effective_sample_size",
    "ess_per_second",
    "split_rhat",
    "ModeOccupancy",
    "mode_occupancy",
    "mode_weight_error",
    "count_mode_switches",
    "to_inference_data",
]
