"""Transformer autoregressive flow (TarFlow) blocks for vectors and particle systems.

A data vector of ``D`` features is cut into ``T = D / token_size`` tokens of ``token_size``
features: one feature per token for tabular data, or the 3 coordinates of one particle per token
for particle systems (``token_size=3``, data laid out as ``(x0, y0, z0, x1, y1, z1, ...)``). A block
reads the tokens in its order (natural, or reversed for every other block), feeds the sequence
shifted by one token, ``(start, x_0, ..., x_{T-2})``, to a causal Transformer, and transforms each
token elementwise with the parameters read at its position::

    z_t = f(x_t; theta_t(x_<t, context)),   logabsdet = sum_t sum_i log |f'(x_ti)|

so token ``t`` depends only on tokens before it (the start token is a zero input whose position
embedding, and the context, set the parameters of token 0). The Jacobian is block-triangular with
diagonal blocks, so the log-determinant is exact and costs nothing extra. ``f`` is affine
(``AffineMap``: ``z = x exp(s) + b``, ``s`` soft-clamped) or a rational-quadratic spline with
identity tails (``RQSplineMap``, which calls ``normflows_sci.transforms.splines``). The
Transformer's output head starts at zero, so a fresh block is exactly the identity.

Density evaluation (data -> latent) is one parallel Transformer pass. Sampling (latent -> data)
inverts token by token, three ways that give the same result:

* ``"kv_cache"``: sequential decoding, one Transformer step per token against a key/value cache
  (exact; ``T`` small passes).
* ``"jacobi"``: fixed-point (Jacobi) iteration ``x <- f^{-1}(z; theta(x))`` over all tokens of a
  chunk in parallel, chunk after chunk with a cache of the finished ones. Token ``t`` of a chunk is
  exact after ``t + 1`` sweeps, so a chunk of ``n`` tokens never needs more than ``n`` sweeps, and
  sweep ``k`` only recomputes the tokens from ``k - 1`` on (the exact prefix is frozen and cached);
  it stops as soon as the largest change is below ``tol * max(1, max|x|)``.
* ``"naive"``: sequential decoding that recomputes the whole prefix for every token (the
  reference; ``O(T^2)`` work).

References:
    Zhai et al. (2024), "Normalizing Flows are Capable Generative Models" (TarFlow);
    Gu et al. (2025), "STARFlow" and "STARFlow-V" (Jacobi sampling over chunks);
    Song, Meng, Liao, Ermon (2021), "Accelerating Feedforward Computation via Parallel Nonlinear
    Equation Solving" (Jacobi decoding of autoregressive models).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor

from normflows_sci.checks import check_context, check_features, check_int
from normflows_sci.nn.transformer import CausalTransformer, KVCache
from normflows_sci.transforms.base import CompositeTransform, Transform
from normflows_sci.transforms.elementwise import (
    ElementwiseMap,
    make_map,
    map_alias,
    pop_map_options,
)

__all__ = [
    "INVERSION_METHODS",
    "BlockInverseInfo",
    "InverseInfo",
    "TarFlowBlock",
    "TarFlowTransform",
    "block_map",
]

INVERSION_METHODS = ("kv_cache", "jacobi", "naive")


class BlockInverseInfo(NamedTuple):
    """How one block was inverted.

    Attributes:
        method: ``"kv_cache"``, ``"jacobi"`` or ``"naive"``.
        iterations: sequential sweeps: tokens decoded one by one (``kv_cache``, ``naive``) or Jacobi
            sweeps summed over chunks (at most the number of tokens).
        passes: Transformer calls, including the Jacobi passes that store a finished chunk in the
            cache.
        converged: every Jacobi chunk met the tolerance or ran its full number of sweeps (always
            True for the sequential methods).
        max_change: the largest final Jacobi change over chunks (0 for the sequential methods).
    """

    method: str
    iterations: int
    passes: int
    converged: bool
    max_change: float


class InverseInfo(NamedTuple):
    """How a stack of blocks was inverted: one :class:`BlockInverseInfo` per block (sampling order,
    i.e. last block first), and the totals."""

    method: str
    blocks: tuple[BlockInverseInfo, ...]

    @property
    def iterations(self) -> int:
        return sum(b.iterations for b in self.blocks)

    @property
    def passes(self) -> int:
        return sum(b.passes for b in self.blocks)

    @property
    def converged(self) -> bool:
        return all(b.converged for b in self.blocks)


def block_map(map=None, transform=None, **options) -> ElementwiseMap:
    """The per-token map of TarFlow blocks: ``map`` (or ``transform``, its former name, kept as
    a shorthand) built by :func:`~normflows_sci.transforms.make_map` (default ``"affine"``) with
    the spline and affine shorthands among ``options``.

    Raises:
        TypeError: both ``map`` and ``transform`` given, or an option neither map takes.

    Example:
        >>> block_map("spline", bins=4).num_params
        11
    """
    if map is not None and transform is not None:
        raise TypeError("give the per-token map as map= only (transform= is its former name)")
    shorthands = {**pop_map_options(options, "spline"), **pop_map_options(options, "affine")}
    if options:
        raise TypeError(f"TarFlow blocks got unexpected keyword arguments {sorted(options)}")
    name, map = ("transform", transform) if map is None and transform is not None else ("map", map)
    return make_map(map, default="affine", name=name, **shorthands)


def _check_inversion(method, tol, max_iterations, chunk_size) -> None:
    if method not in INVERSION_METHODS:
        raise ValueError(f"method must be one of {INVERSION_METHODS}, got {method!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be a non-negative number, got {tol!r}")
    check_int("max_iterations", max_iterations, optional=True)
    check_int("chunk_size", chunk_size, optional=True)


class TarFlowBlock(Transform):
    """One TarFlow block: a causal Transformer conditioner and a per-token elementwise map.

    Args:
        features: data dimension ``D`` (a multiple of ``token_size``).
        token_size: features per token (1 for tabular data, 3 for particles in 3-D).
        map: ``"affine"`` (default), ``"spline"`` (rational-quadratic, identity tails) or an
            :class:`ElementwiseMap` (see :func:`block_map`).
        context_features: width of the context (0: unconditional; a given context is ignored).
        width, layers, heads, mlp_ratio, dropout: Transformer size (see
            :class:`~normflows_sci.nn.transformer.CausalTransformer`).
        reverse: read the tokens last to first (alternate this between blocks).
        inversion: default inversion method of :meth:`inverse`: ``"kv_cache"`` (default),
            ``"jacobi"`` or ``"naive"``.
        **options: the Jacobi options ``tol`` (1e-5: stopping tolerance on
            ``max|x_new - x| / max(1, max|x|)``), ``max_iterations`` (sweeps per chunk at most;
            default the chunk's token count, always enough for the exact answer) and
            ``chunk_size`` (tokens per Jacobi chunk; default all tokens in one chunk); the map
            shorthands (``bins``, ``tail_bound``, ``min_bin_width``, ``min_bin_height``,
            ``min_derivative``, ``max_log_scale``) and ``transform`` (the former name of
            ``map``), see :func:`block_map`.

    Shapes:
        ``forward(x: (batch, D), context: (batch, C) | None)`` returns ``z: (batch, D)`` and
        ``logabsdet: (batch,)``; ``inverse`` and :meth:`invert` the same shapes.

    References:
        Zhai et al. (2024), "Normalizing Flows are Capable Generative Models".

    Example:
        >>> block = TarFlowBlock(6, token_size=3, width=16, layers=1, heads=2)
        >>> x = torch.randn(5, 6)
        >>> z, logabsdet = block(x)  # identity at initialisation
        >>> bool(torch.equal(z, x)), logabsdet.abs().max().item()
        (True, 0.0)
    """

    def __init__(
        self,
        features: int,
        *,
        token_size: int = 1,
        map: str | ElementwiseMap | None = None,
        context_features: int = 0,
        width: int = 128,
        layers: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        reverse: bool = False,
        inversion: str = "kv_cache",
        **options,
    ):
        super().__init__()
        check_int("features", features)
        check_int("token_size", token_size)
        if features % token_size:
            raise ValueError(
                f"features={features} must be a multiple of token_size={token_size} "
                "(each token holds token_size features)"
            )
        tol = options.pop("tol", 1e-5)
        max_iterations = options.pop("max_iterations", None)
        chunk_size = options.pop("chunk_size", None)
        _check_inversion(inversion, tol, max_iterations, chunk_size)
        self.map = block_map(map, **options)
        self.features, self.token_size = int(features), int(token_size)
        self.tokens = self.features // self.token_size
        self.context_features = int(context_features)
        self.reverse = bool(reverse)
        self.num_params = self.map.num_params
        self.net = CausalTransformer(
            self.token_size,
            self.token_size * self.num_params,
            max_tokens=self.tokens,
            width=width,
            layers=layers,
            heads=heads,
            context_features=self.context_features,
            mlp_ratio=mlp_ratio,
            dropout=dropout,
        )
        # Zero head: all parameters 0, which both maps read as the identity.
        torch.nn.init.zeros_(self.net.output.weight)
        torch.nn.init.zeros_(self.net.output.bias)
        self.inversion, self.tol = inversion, float(tol)
        self.max_iterations, self.chunk_size = max_iterations, chunk_size

    elementwise = map_alias

    # ------------------------------------------------------------------ layout
    def _check(self, inputs: Tensor, context: Tensor | None) -> Tensor | None:
        check_features(inputs, self.features)
        if inputs.ndim != 2:
            raise ValueError(
                f"inputs must have shape (batch, {self.features}), got {tuple(inputs.shape)}"
            )
        check_context(context, self.context_features)
        return context if self.context_features else None

    def _to_tokens(self, inputs: Tensor) -> Tensor:
        tokens = inputs.reshape(inputs.shape[0], self.tokens, self.token_size)
        return tokens.flip(1) if self.reverse else tokens

    def _from_tokens(self, tokens: Tensor) -> Tensor:
        if self.reverse:
            tokens = tokens.flip(1)
        return tokens.reshape(tokens.shape[0], self.features)

    def _params(self, out: Tensor, like: Tensor) -> Tensor:
        # Back to the data's dtype: under torch.autocast the Transformer runs in lower precision,
        # the elementwise maps and log-determinants stay in the data's precision.
        return out.unflatten(-1, (self.token_size, self.num_params)).to(like.dtype)

    def _start(self, tokens: Tensor) -> Tensor:
        return tokens.new_zeros(tokens.shape[0], 1, self.token_size)

    # ------------------------------------------------------------------ directions
    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data to latent in one parallel pass: ``(z, log|det dz/dx|)``."""
        context = self._check(inputs, context)
        tokens = self._to_tokens(inputs)
        shifted = torch.cat([self._start(tokens), tokens[:, :-1]], dim=1)
        params = self._params(self.net(shifted, context), tokens)
        outputs, logabsdet = self.map.forward(tokens, params)
        return self._from_tokens(outputs), logabsdet.sum((1, 2))

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latent to data with the block's default inversion: ``(x, log|det dx/dz|)``."""
        outputs, logabsdet, _ = self.invert(inputs, context)
        return outputs, logabsdet

    def invert(
        self,
        inputs: Tensor,
        context: Tensor | None = None,
        *,
        method: str | None = None,
        tol: float | None = None,
        max_iterations: int | None = None,
        chunk_size: int | None = None,
    ) -> tuple[Tensor, Tensor, BlockInverseInfo]:
        """Latent to data with a chosen method; ``None`` arguments take the block's defaults.

        Returns:
            ``(x: (batch, D), logabsdet: (batch,), info)`` with ``info`` a
            :class:`BlockInverseInfo`.
        """
        method = self.inversion if method is None else method
        tol = self.tol if tol is None else tol
        max_iterations = self.max_iterations if max_iterations is None else max_iterations
        chunk_size = self.chunk_size if chunk_size is None else chunk_size
        _check_inversion(method, tol, max_iterations, chunk_size)
        context = self._check(inputs, context)
        latent = self._to_tokens(inputs)
        if method == "jacobi":
            tokens, logabsdet, info = self._jacobi(latent, context, tol, max_iterations, chunk_size)
        else:
            tokens, logabsdet, info = self._sequential(latent, context, method == "kv_cache")
        return self._from_tokens(tokens), logabsdet, info

    def _sequential(self, latent: Tensor, context, use_cache: bool):
        cache = KVCache(self.net.num_layers, self.tokens) if use_cache else None
        decoded: list[Tensor] = []
        logabsdet = latent.new_zeros(latent.shape[0])
        previous = self._start(latent)
        for t in range(self.tokens):
            if use_cache:
                out = self.net(previous, context, cache=cache)[:, 0]
            else:
                prefix = torch.cat([self._start(latent), *decoded], dim=1)
                out = self.net(prefix, context)[:, -1]
            value, token_logabsdet = self.map.inverse(latent[:, t], self._params(out, latent))
            logabsdet = logabsdet + token_logabsdet.sum(-1)
            previous = value[:, None]
            decoded.append(previous)
        info = BlockInverseInfo(
            "kv_cache" if use_cache else "naive", self.tokens, self.tokens, True, 0.0
        )
        return torch.cat(decoded, dim=1), logabsdet, info

    def _jacobi(self, latent: Tensor, context, tol, max_iterations, chunk_size):
        total = self.tokens
        chunk_size = total if chunk_size is None else min(int(chunk_size), total)
        cache = KVCache(self.net.num_layers, self.tokens)
        previous = self._start(latent)  # the last exact token (the start token at first)
        chunks, logabsdets = [], []
        iterations = passes = 0
        converged, worst = True, 0.0
        for begin in range(0, total, chunk_size):
            z = latent[:, begin : begin + chunk_size]
            size = z.shape[1]
            limit = size if max_iterations is None else min(int(max_iterations), size)
            # Initial guess: the identity map. After sweep k the first k tokens of the chunk are
            # exact (token j only sees tokens before it); they are frozen, their keys and values
            # go to the cache, and later sweeps only recompute the tokens after them.
            x, logabsdet = z, None
            change, done = 0.0, 0
            while done < limit:
                inputs = torch.cat([previous, x[:, done:-1]], dim=1)
                out = self.net(inputs, context, cache=cache, keep=1)
                new, new_logabsdet = self.map.inverse(z[:, done:], self._params(out, z))
                with torch.no_grad():
                    step = (new - x[:, done:]).abs().amax() if new.numel() else new.new_zeros(())
                    scale = new.abs().amax().clamp_min(1.0) if new.numel() else 1.0
                    change = float(step / scale)
                x = torch.cat([x[:, :done], new], dim=1)
                logabsdet = (
                    new_logabsdet
                    if logabsdet is None
                    else torch.cat([logabsdet[:, :done], new_logabsdet], dim=1)
                )
                previous = x[:, done : done + 1]
                done += 1
                if change <= tol:
                    break
            iterations += done
            passes += done
            converged = converged and (change <= tol or done == size)
            worst = max(worst, change)
            if done < size and begin + size < total:
                # Store the rest of the finished chunk for the chunks after it.
                self.net(torch.cat([previous, x[:, done:-1]], dim=1), context, cache=cache)
                passes += 1
            previous = x[:, -1:]
            chunks.append(x)
            logabsdets.append(logabsdet.sum((1, 2)))
        info = BlockInverseInfo("jacobi", iterations, passes, converged, worst)
        return torch.cat(chunks, dim=1), torch.stack(logabsdets).sum(0), info


class TarFlowTransform(CompositeTransform):
    """A stack of :class:`TarFlowBlock` (data side first) with a choice of inversion method.

    ``forward`` is one parallel pass per block; ``inverse`` uses each block's default method;
    :meth:`invert` takes the method and Jacobi options for every block and reports what it did.

    Args:
        blocks: the blocks, data side first (alternate ``reverse`` between them).

    Example:
        >>> small = dict(width=16, layers=1, heads=2)
        >>> t = TarFlowTransform([TarFlowBlock(4, reverse=r, **small) for r in (False, True)])
        >>> x, logabsdet, info = t.invert(torch.randn(3, 4), method="jacobi")
        >>> x.shape, info.method, info.iterations <= 2 * 4
        (torch.Size([3, 4]), 'jacobi', True)
    """

    def __init__(self, blocks: Iterable[TarFlowBlock]):
        blocks = list(blocks)
        if not blocks:
            raise ValueError("blocks must hold at least one TarFlowBlock")
        for block in blocks:
            if not isinstance(block, TarFlowBlock):
                raise TypeError(
                    f"blocks must be TarFlowBlock instances, got {type(block).__name__}"
                )
        features = {b.features for b in blocks}
        if len(features) != 1:
            raise ValueError(f"blocks must share one feature count, got {sorted(features)}")
        super().__init__(blocks)
        self.features = blocks[0].features

    def set_inversion(
        self,
        method: str,
        *,
        tol: float = 1e-5,
        max_iterations: int | None = None,
        chunk_size: int | None = None,
    ) -> TarFlowTransform:
        """Set every block's default inversion (used by ``inverse`` and so by ``Flow.sample``)."""
        _check_inversion(method, tol, max_iterations, chunk_size)
        for block in self:
            block.inversion, block.tol = method, float(tol)
            block.max_iterations, block.chunk_size = max_iterations, chunk_size
        return self

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        outputs, logabsdet, _ = self.invert(inputs, context)
        return outputs, logabsdet

    def invert(
        self,
        inputs: Tensor,
        context: Tensor | None = None,
        *,
        method: str | None = None,
        tol: float | None = None,
        max_iterations: int | None = None,
        chunk_size: int | None = None,
    ) -> tuple[Tensor, Tensor, InverseInfo]:
        """Latent to data, last block first; ``None`` options take each block's defaults.

        Returns:
            ``(x: (batch, D), logabsdet: (batch,), info)`` with ``info`` an :class:`InverseInfo`.
        """
        options = dict(method=method, tol=tol, max_iterations=max_iterations, chunk_size=chunk_size)
        total = inputs.new_zeros(inputs.shape[0])
        infos = []
        for block in reversed(self._transforms):
            inputs, logabsdet, info = block.invert(inputs, context, **options)
            total = total + logabsdet
            infos.append(info)
        methods = {info.method for info in infos}
        name = methods.pop() if len(methods) == 1 else "mixed"
        return inputs, total, InverseInfo(name, tuple(infos))
