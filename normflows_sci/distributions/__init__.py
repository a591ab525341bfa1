"""Base distributions."""

from normflows_sci.distributions.base import (
    DiagNormal,
    Distribution,
    GaussianMixture,
    NormalWithAngles,
    StandardNormal,
    StudentT,
    TailAdaptiveBase,
)

__all__ = [
    "Distribution",
    "StandardNormal",
    "DiagNormal",
    "GaussianMixture",
    "StudentT",
    "TailAdaptiveBase",
    "NormalWithAngles",
]
