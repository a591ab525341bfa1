"""Conditioner networks."""

from normflows_sci.nn.networks import MADE, MLP, MADESequence, MaskedLinear
from normflows_sci.nn.transformer import (
    CausalSelfAttention,
    CausalTransformer,
    KVCache,
    TransformerLayer,
)

__all__ = [
    "MLP",
    "MADE",
    "MADESequence",
    "MaskedLinear",
    "CausalTransformer",
    "KVCache",
    "CausalSelfAttention",
    "TransformerLayer",
]
