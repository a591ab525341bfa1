"""Flows: :class:`Flow` and the ready-made factories."""

from normflows_sci.flows.base import Flow
from normflows_sci.flows.factories import MAF, NSF, RealNVP

__all__ = ["Flow", "NSF", "MAF", "RealNVP"]
