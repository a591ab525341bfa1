"""Conditioner networks."""

from normflows_sci.nn.networks import MADE, MLP, MaskedLinear

__all__ = ["MLP", "MADE", "MaskedLinear"]
