"""A causal (decoder-only) Transformer with a key/value cache, the conditioner of TarFlow blocks.

Pre-norm residual layers ``h <- h + Attn(LN(h))``, ``h <- h + MLP(LN(h))`` with multi-head
attention under a causal mask, so the output at position ``t`` depends only on the inputs at
positions ``<= t``. Tokens are embedded by a small MLP (``Linear - GELU - Linear``), get a learned
position embedding and, optionally, a context embedding added at every position. (A linear
embedding would not do for small tokens: layer normalisation of ``w x + b`` for a scalar ``x``
keeps little more than the sign of ``x - x0``, and the conditioner would see steps instead of
values.) Tokens and context are clamped by :func:`~normflows_sci.nn.networks.bounded_inputs`
(``±2**32``, ``±2**256`` in float64) first, so layer normalisation never squares an overflowing
number.

The same network runs three ways, all giving the same numbers:

* a full parallel pass over a sequence (training, density evaluation);
* an incremental pass over new positions that attends to a :class:`KVCache` of the earlier ones
  (one token at a time for sequential decoding, or a chunk of tokens at once);
* the same incremental pass without storing the new keys and values (``update_cache=False``), so a
  chunk can be re-evaluated many times (Jacobi iteration) against a fixed prefix.

References:
    Vaswani et al. (2017), "Attention Is All You Need"; Xiong et al. (2020), "On Layer
    Normalization in the Transformer Architecture" (pre-norm); Zhai et al. (2024), "Normalizing
    Flows are Capable Generative Models" (TarFlow).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normflows_sci.checks import check_int
from normflows_sci.nn.networks import bounded_inputs

__all__ = ["KVCache", "CausalSelfAttention", "TransformerLayer", "CausalTransformer"]


class KVCache:
    """Keys and values of the positions processed so far, one storage pair per layer.

    Each layer's keys and values are ``(batch, heads, positions, head_features)`` tensors whose
    first :attr:`length` positions are valid. Outside autograd (``torch.no_grad``, inference
    mode, or inputs that need no gradient) new positions are written into storage allocated once
    for ``capacity`` positions (growing by doubling if it is exceeded), so ``T`` decoding steps
    copy ``O(T)`` numbers instead of ``O(T^2)``; when a gradient must flow through the cache, the
    new positions are concatenated instead. A cache belongs to one sequence batch and one
    network; create a fresh one per decoding run.

    Args:
        num_layers: number of Transformer layers.
        capacity: positions to allocate room for (e.g. the sequence length); default: grow as
            needed.

    Attributes:
        length: number of cached positions.
    """

    def __init__(self, num_layers: int, capacity: int | None = None):
        check_int("capacity", capacity, optional=True)
        self.keys: list[Tensor | None] = [None] * num_layers
        self.values: list[Tensor | None] = [None] * num_layers
        self._owned = [False] * num_layers  # storage allocated here, safe to write in place
        self.capacity = None if capacity is None else int(capacity)
        self.length = 0

    def get(self, layer: int) -> tuple[Tensor, Tensor] | None:
        """The valid keys and values of ``layer``: ``(batch, heads, length, head_features)``."""
        if self.keys[layer] is None or self.length == 0:
            return None
        return self.keys[layer][..., : self.length, :], self.values[layer][..., : self.length, :]

    def extend(self, layer: int, keys: Tensor, values: Tensor, keep: int) -> tuple[Tensor, Tensor]:
        """Keys and values of the cached positions followed by ``n`` new ones, for attention.

        The first ``keep`` new positions become part of the cache once :attr:`length` is advanced
        by ``keep`` (the caller does that after the last layer); the rest are scratch.
        """
        end = self.length + keys.shape[-2]
        past = self.get(layer)
        tracked = torch.is_grad_enabled() and (keys.requires_grad or values.requires_grad)
        if tracked:
            if past is not None:
                keys, values = torch.cat([past[0], keys], -2), torch.cat([past[1], values], -2)
            self.keys[layer] = keys[..., : self.length + keep, :]
            self.values[layer] = values[..., : self.length + keep, :]
            self._owned[layer] = False
            return keys, values
        stored = self.keys[layer]
        if not self._owned[layer] or stored.shape[-2] < end:
            size = max(end, self.capacity or 0)
            if self._owned[layer]:
                size = max(size, 2 * stored.shape[-2])
            shape = (*keys.shape[:-2], size, keys.shape[-1])
            new_keys, new_values = keys.new_empty(shape), values.new_empty(shape)
            if past is not None:
                new_keys[..., : self.length, :] = past[0]
                new_values[..., : self.length, :] = past[1]
            self.keys[layer], self.values[layer] = new_keys, new_values
            self._owned[layer] = True
        self.keys[layer][..., self.length : end, :] = keys
        self.values[layer][..., self.length : end, :] = values
        return self.keys[layer][..., :end, :], self.values[layer][..., :end, :]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position ``t`` attends to positions ``<= t``.

    Args:
        width: model width ``W`` (divisible by ``heads``).
        heads: number of attention heads.
        dropout: attention-weight dropout (training only).

    Shapes:
        ``forward(h: (batch, n, W), cache=None, layer=0, keep=0) -> (batch, n, W)``. With a
        :class:`KVCache` holding ``m`` earlier positions, the new positions are ``m .. m + n - 1``
        and attend to all earlier ones; their keys and values go to the cache's slot ``layer``,
        the first ``keep`` of them to stay (see :meth:`KVCache.extend`).
    """

    def __init__(self, width: int, heads: int, *, dropout: float = 0.0):
        super().__init__()
        if int(heads) != heads or heads < 1 or width % heads:
            raise ValueError(f"heads must be a positive divisor of width={width}, got {heads!r}")
        self.width, self.heads = int(width), int(heads)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = float(dropout)

    def forward(
        self, h: Tensor, cache: KVCache | None = None, layer: int = 0, keep: int = 0
    ) -> Tensor:
        batch, n, _ = h.shape
        head_features = self.width // self.heads
        qkv = self.qkv(h).view(batch, n, 3, self.heads, head_features)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        dropout = self.dropout if self.training else 0.0
        offset = 0 if cache is None else cache.length
        if cache is not None:
            k, v = cache.extend(layer, k, v, keep)
        if offset == 0:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=n > 1)
        else:
            mask = None
            if n > 1:
                query_pos = torch.arange(offset, offset + n, device=h.device)
                key_pos = torch.arange(k.shape[-2], device=h.device)
                mask = key_pos[None, :] <= query_pos[:, None]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(batch, n, self.width)
        return self.proj(out)


class TransformerLayer(nn.Module):
    """Pre-norm Transformer layer: causal attention then a two-layer GELU MLP, both residual.

    Args:
        width: model width.
        heads: attention heads.
        mlp_ratio: hidden width of the MLP as a multiple of ``width``.
        dropout: dropout on attention weights and after each residual branch.
    """

    def __init__(self, width: int, heads: int, *, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        hidden = max(1, round(mlp_ratio * width))
        self.norm1 = nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(
        self, h: Tensor, cache: KVCache | None = None, layer: int = 0, keep: int = 0
    ) -> Tensor:
        h = h + self.drop(self.attention(self.norm1(h), cache, layer, keep))
        return h + self.drop(self.mlp(self.norm2(h)))


class CausalTransformer(nn.Module):
    """Causal Transformer ``(batch, n, in_features) -> (batch, n, out_features)``.

    Output ``t`` depends on inputs ``0..t`` only (and on the context).

    Args:
        in_features: features per input token.
        out_features: features per output token.
        max_tokens: longest sequence (size of the learned position embedding).
        width: model width ``W``.
        layers: number of Transformer layers.
        heads: attention heads (must divide ``width``).
        context_features: width of a context vector embedded and added at every position (0: none).
        mlp_ratio: MLP hidden width as a multiple of ``width``.
        dropout: dropout probability.

    Attributes:
        output: the final ``nn.Linear(W, out_features)`` head (TarFlow zero-initialises it).

    Example:
        >>> net = CausalTransformer(2, 3, max_tokens=5, width=16, layers=1, heads=2)
        >>> x = torch.randn(4, 5, 2)
        >>> full = net(x)
        >>> cache = KVCache(net.num_layers)
        >>> steps = torch.cat([net(x[:, t : t + 1], cache=cache) for t in range(5)], dim=1)
        >>> full.shape, bool(torch.allclose(full, steps, atol=1e-5))
        (torch.Size([4, 5, 3]), True)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        max_tokens: int,
        width: int = 128,
        layers: int = 2,
        heads: int = 4,
        context_features: int = 0,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        for name, value in (
            ("in_features", in_features),
            ("out_features", out_features),
            ("max_tokens", max_tokens),
            ("width", width),
            ("layers", layers),
        ):
            check_int(name, value)
        check_int("context_features", context_features, minimum=0)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.max_tokens, self.context_features = int(max_tokens), int(context_features)
        self.embed = nn.Sequential(
            nn.Linear(in_features, width), nn.GELU(), nn.Linear(width, width)
        )
        self.position = nn.Parameter(0.02 * torch.randn(max_tokens, width))
        self.context_embed = nn.Linear(context_features, width) if context_features else None
        self.layers = nn.ModuleList(
            TransformerLayer(width, heads, mlp_ratio=mlp_ratio, dropout=dropout)
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(width)
        self.output = nn.Linear(width, out_features)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(
        self,
        tokens: Tensor,
        context: Tensor | None = None,
        *,
        cache: KVCache | None = None,
        update_cache: bool = True,
        keep: int | None = None,
    ) -> Tensor:
        """Outputs for ``tokens: (batch, n, in_features)`` at positions ``m .. m + n - 1``.

        Args:
            tokens: the new inputs.
            context: ``(batch, context_features)``; required when the network was built with one,
                ignored otherwise.
            cache: keys and values of the ``m = cache.length`` earlier positions (``m = 0``
                without a cache).
            update_cache: append the new positions' keys and values to ``cache``.
            keep: append only the first ``keep`` new positions (those whose inputs are final,
                e.g. the exact prefix of a Jacobi iterate); default all.

        Returns:
            ``(batch, n, out_features)``.
        """
        if tokens.ndim != 3 or tokens.shape[-1] != self.in_features:
            raise ValueError(
                f"tokens must have shape (batch, n, {self.in_features}), got {tuple(tokens.shape)}"
            )
        offset = 0 if cache is None else cache.length
        n = tokens.shape[1]
        if offset + n > self.max_tokens:
            raise ValueError(
                f"sequence of {offset + n} tokens is longer than max_tokens={self.max_tokens}"
            )
        h = self.embed(bounded_inputs(tokens)) + self.position[offset : offset + n]
        if self.context_embed is not None:
            if context is None:
                raise ValueError(
                    f"context is required: network built with context_features="
                    f"{self.context_features}"
                )
            if context.ndim != 2 or context.shape[-1] != self.context_features:
                raise ValueError(
                    f"context must have shape (batch, {self.context_features}), "
                    f"got {tuple(context.shape)}"
                )
            h = h + self.context_embed(bounded_inputs(context))[:, None, :]
        stored = 0
        if cache is not None and update_cache:
            stored = n if keep is None else max(0, min(int(keep), n))
        for i, layer in enumerate(self.layers):
            h = layer(h, cache, i, stored)
        if cache is not None:
            cache.length += stored
        return self.output(self.norm(h))
