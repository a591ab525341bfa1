"""Base distributions."""

from normflows_sci.distributions.base import (
    DiagNormal,
    Distribution,
    GaussianMixture,
    StandardNormal,
    StudentT,
)

__all__ = ["Distribution", "StandardNormal", "DiagNormal", "GaussianMixture", "StudentT"]
