"""A causal (decoder-only) Transformer with a key/value cache, the conditioner of TarFlow blocks.

Pre-norm residual layers ``h <- h + Attn(LN(h))``, ``h <- h + MLP(LN(h))`` with multi-head
attention under a causal mask, so the output at position ``t`` depends only on the inputs at
positions ``<= t``. Tokens are embedded by a small MLP (``Linear - GELU - Linear``), get a learned
position embedding and, optionally, a context embedding added at every position. (A linear
embedding would not do for small tokens: layer normalisation of ``w x + b`` for a scalar ``x``
keeps little more than the sign of ``x - x0``, and the conditioner would see steps instead of
values.)

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

__all__ = ["KVCache", "CausalSelfAttention", "TransformerLayer", "CausalTransformer"]


class KVCache:
    """Keys and values of the positions processed so far, one ``(keys, values)`` pair per layer.

    Each tensor is ``(batch, heads, length, head_features)``. A cache belongs to one sequence
    batch and one network; create a fresh one per decoding run.

    Attributes:
        length: number of cached positions.
    """

    def __init__(self, num_layers: int):
        self.keys: list[Tensor | None] = [None] * num_layers
        self.values: list[Tensor | None] = [None] * num_layers
        self.length = 0

    def get(self, layer: int) -> tuple[Tensor, Tensor] | None:
        if self.keys[layer] is None:
            return None
        return self.keys[layer], self.values[layer]

    def append(self, layer: int, keys: Tensor, values: Tensor) -> None:
        if self.keys[layer] is None:
            self.keys[layer], self.values[layer] = keys, values
        else:
            self.keys[layer] = torch.cat([self.keys[layer], keys], dim=-2)
            self.values[layer] = torch.cat([self.values[layer], values], dim=-2)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position ``t`` attends to positions ``<= t``.

    Args:
        width: model width ``W`` (divisible by ``heads``).
        heads: number of attention heads.
        dropout: attention-weight dropout (training only).

    Shapes:
        ``forward(h: (batch, n, W), past=None) -> (out: (batch, n, W), (keys, values))`` where the
        returned keys/values are those of the ``n`` new positions, ``(batch, heads, n, W / heads)``.
        With ``past`` (keys and values of ``m`` earlier positions) the new positions are
        ``m .. m + n - 1`` and attend to all earlier ones.
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
        self, h: Tensor, past: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        batch, n, _ = h.shape
        head_features = self.width // self.heads
        qkv = self.qkv(h).view(batch, n, 3, self.heads, head_features)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        new = (k, v)
        dropout = self.dropout if self.training else 0.0
        if past is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=n > 1)
        else:
            k = torch.cat([past[0], k], dim=-2)
            v = torch.cat([past[1], v], dim=-2)
            mask = None
            if n > 1:
                offset = k.shape[-2] - n
                query_pos = torch.arange(offset, offset + n, device=h.device)
                key_pos = torch.arange(k.shape[-2], device=h.device)
                mask = key_pos[None, :] <= query_pos[:, None]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(batch, n, self.width)
        return self.proj(out), new


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
        self, h: Tensor, past: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        attended, new = self.attention(self.norm1(h), past)
        h = h + self.drop(attended)
        h = h + self.drop(self.mlp(self.norm2(h)))
        return h, new


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
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if int(context_features) != context_features or context_features < 0:
            raise ValueError(
                f"context_features must be a non-negative integer, got {context_features!r}"
            )
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
        h = self.embed(tokens) + self.position[offset : offset + n]
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
            h = h + self.context_embed(context)[:, None, :]
        stored = 0
        if cache is not None and update_cache:
            stored = n if keep is None else max(0, min(int(keep), n))
        for i, layer in enumerate(self.layers):
            h, (keys, values) = layer(h, None if cache is None else cache.get(i))
            if stored:
                cache.append(i, keys[..., :stored, :], values[..., :stored, :])
        if stored:
            cache.length += stored
        return self.output(self.norm(h))
