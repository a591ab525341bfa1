"""Flows: :class:`Flow` and the ready-made factories (Euclidean and manifold)."""

from normflows_sci.flows.base import Flow
from normflows_sci.flows.factories import MAF, NSF, RealNVP
from normflows_sci.flows.manifold import ManifoldFlow, ProductFlow, SO3Flow, SphereFlow, TorusFlow

__all__ = [
    "Flow",
    "NSF",
    "MAF",
    "RealNVP",
    "ManifoldFlow",
    "TorusFlow",
    "SphereFlow",
    "SO3Flow",
    "ProductFlow",
]
