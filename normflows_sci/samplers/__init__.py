"""Samplers: importance sampling with flow proposals (MCMC kernels arrive with the hybrid samplers)."""

from normflows_sci.samplers.importance import (
    ImportanceResult,
    importance_sample,
    importance_weights,
)
from normflows_sci.samplers.targets import as_log_prob

__all__ = ["ImportanceResult", "importance_sample", "importance_weights", "as_log_prob"]
