"""Conditioner networks and velocity fields."""

from normflows_sci.nn.egnn import EGNNVelocity, mean_free_basis
from normflows_sci.nn.networks import MADE, MLP, MADESequence, MaskedLinear, bounded_inputs
from normflows_sci.nn.transformer import (
    CausalSelfAttention,
    CausalTransformer,
    KVCache,
    TransformerLayer,
)

__all__ = [
    "mean_free_basis",
    "MLP",
    "MADE",
    "MADESequence",
    "MaskedLinear",
    "bounded_inputs",
    "CausalTransformer",
    "KVCache",
    "CausalSelfAttention",
    "TransformerLayer",
    "EGNNVelocity",
]
