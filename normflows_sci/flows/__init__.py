"""Flows: :class:`Flow` and the ready-made factories (Euclidean and manifold)."""

from normflows_sci.flows.base import Flow
from normflows_sci.flows.cnf import (
    CNF,
    ContinuousFlow,
    ODETransform,
    VelocityMLP,
    check_divergence,
    divergence_estimator,
)
from normflows_sci.flows.factories import MAF, NSF, RealNVP
from normflows_sci.flows.manifold import ManifoldFlow, ProductFlow, SO3Flow, SphereFlow, TorusFlow
from normflows_sci.flows.mixture import FlowMixture
from normflows_sci.flows.molecular import internal_coordinate_flow
from normflows_sci.flows.particles import particle_flow
from normflows_sci.flows.tarflow import TarFlow, gaussian_noise, sample_tarflow, score_denoise

__all__ = [
    "Flow",
    "FlowMixture",
    "internal_coordinate_flow",
    "NSF",
    "MAF",
    "RealNVP",
    "ManifoldFlow",
    "TorusFlow",
    "SphereFlow",
    "SO3Flow",
    "ProductFlow",
    "TarFlow",
    "sample_tarflow",
    "gaussian_noise",
    "score_denoise",
    "CNF",
    "ContinuousFlow",
    "ODETransform",
    "VelocityMLP",
    "check_divergence",
    "divergence_estimator",
    "particle_flow",
]
