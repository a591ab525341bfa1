"""The Flow: a base distribution pushed through an invertible transform."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normflows_sci.checks import check_batch, check_num_samples, check_tensor
from normflows_sci.distributions import Distribution
from normflows_sci.transforms import Transform

__all__ = ["Flow"]


class Flow(nn.Module):
    """A normalizing flow ``x = T^{-1}(z)``, ``z ~ base``, with exact ``log_prob``.

    Args:
        transform: maps data to latent (``z, logabsdet = transform(x, context)``).
        base: the latent distribution.
        embedding: optional network applied to the context before the transform sees it.
        validate_args: check inputs for shape and NaN/inf (one reduction per call; turn off in
            tight GPU loops once the pipeline is known to be clean).
        event_shape: shape of one data point when the transform changes it (e.g. Cartesian
            coordinates -> internal coordinates without rigid motion); defaults to the base's.

    Attributes:
        transform, base, embedding: as given. ``event_shape`` is the data's shape and ``features``
        its size.

    Example:
        >>> from normflows_sci.flows import NSF
        >>> flow = NSF(2, transforms=2, hidden_features=(16,))
        >>> flow.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
        >>> flow.sample(5, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        transform: Transform,
        base: Distribution,
        *,
        embedding: nn.Module | None = None,
        validate_args: bool = True,
        event_shape: int | tuple[int, ...] | None = None,
    ):
        super().__init__()
        self.transform = transform
        self.base = base
        self.embedding = embedding
        self.validate_args = validate_args
        if event_shape is None:
            self.event_shape = base.event_shape
        else:
            shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
            if not shape or any(int(s) != s or s < 1 for s in shape):
                raise ValueError(f"event_shape must be positive integers, got {event_shape!r}")
            self.event_shape = torch.Size(int(s) for s in shape)

    @property
    def features(self) -> int:
        return self.event_shape.numel()

    def _context(self, context: Tensor | None, batch: int | None) -> Tensor | None:
        if context is None:
            return None
        if self.validate_args:
            if not isinstance(context, Tensor) or context.ndim < 2:
                shape = getattr(context, "shape", type(context).__name__)
                raise ValueError(f"context must be a tensor of shape (batch, ...), got {shape}")
            check_tensor("context", context, tuple(context.shape[1:]))
            if batch is not None:
                check_batch("context", context, batch)
        return context if self.embedding is None else self.embedding(context)

    def compile(self, *, sample: bool = True, **options) -> Flow:
        """Compile the flow's arithmetic with :func:`torch.compile` (opt-in); returns ``self``.

        ``log_prob`` (with its backward pass, for training), and with ``sample=True`` also
        ``sample`` and ``sample_and_log_prob``, then run compiled code: the same numbers as eager
        mode up to floating-point reassociation (tested to 1e-5). It fuses the spline's many
        small operations: on a 2-core CPU training steps at batch 256 ran 1.3-1.8x faster, at
        batch 4096 (network-dominated) 2-15% faster; on GPUs the gain is larger. Argument checks
        stay in eager Python. The first call per input shape compiles (up to tens of seconds on
        CPU; later batch sizes reuse a dynamic-shape graph). Autoregressive sampling unrolls one
        step per feature, so compiling ``sample`` of a wide MAF/NSF takes long: pass
        ``sample=False`` to compile only ``log_prob``.
        The compiled functions are not part of the state dict: compile again after loading.

        Args:
            sample: also compile the sampling direction.
            **options: passed to :func:`torch.compile` (``mode``, ``dynamic``, ``backend``, ...).

        Example:
            >>> from normflows_sci.flows import NSF
            >>> flow = NSF(2, transforms=1, hidden_features=(8,)).compile(backend="eager")
            >>> flow.log_prob(torch.zeros(3, 2)).shape
            torch.Size([3])
        """
        self._log_prob = torch.compile(type(self)._log_prob.__get__(self), **options)
        if sample:
            for name in ("_samples", "_samples_and_log_prob"):
                setattr(
                    self, name, torch.compile(getattr(type(self), name).__get__(self), **options)
                )
        return self

    def log_prob(
        self, inputs: Tensor, context: Tensor | None = None, *, chunk_size: int | None = None
    ) -> Tensor:
        """Log-density of ``inputs: (batch, *event_shape)``; returns ``(batch,)``.

        ``chunk_size`` evaluates the batch in pieces of at most that many rows (same numbers,
        bounded memory: for batches larger than memory, typically under ``torch.no_grad()``).
        """
        if self.validate_args:
            check_tensor("inputs", inputs, tuple(self.event_shape))
        context = self._context(context, inputs.shape[0])
        return _chunked(self._log_prob, chunk_size, inputs, context)

    def _log_prob(self, inputs: Tensor, context: Tensor | None) -> Tensor:
        latent, logabsdet = self.transform(inputs, context)
        return self.base.log_prob(latent, context) + logabsdet

    def _draw(self, num_samples: int, context: Tensor | None, generator):
        num_samples = check_num_samples(num_samples)
        context = self._context(context, None)
        if context is None:
            latent = self.base.sample(num_samples, generator=generator)
            return latent, None, (num_samples,)
        batch = context.shape[0]
        # Sample k * batch + b is drawn under context b; reshaped to (num_samples, batch, ...).
        repeated = context.repeat(num_samples, *([1] * (context.ndim - 1)))
        latent = self.base.sample(num_samples * batch, repeated, generator=generator)
        return latent, repeated, (num_samples, batch)

    def _samples(self, latent: Tensor, context: Tensor | None) -> Tensor:
        """Latent -> data without the log-determinant (subclasses may skip computing it)."""
        return self.transform.inverse(latent, context)[0]

    def _samples_and_log_prob(self, latent: Tensor, context: Tensor | None):
        samples, logabsdet = self.transform.inverse(latent, context)
        return samples, self.base.log_prob(latent, context) - logabsdet

    def sample(
        self,
        num_samples: int,
        context: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
    ) -> Tensor:
        """Draw samples: ``(num_samples, *event)``, or ``(num_samples, batch, *event)`` with a context
        batch. Differentiable (wrap in ``torch.no_grad()`` when gradients are not needed).

        ``chunk_size``: push the latent draws through the transform in pieces of at most that
        many rows; the samples are the same as without chunking (the latent is drawn at once).
        """
        latent, context, lead = self._draw(num_samples, context, generator)
        samples = _chunked(self._samples, chunk_size, latent, context)
        return samples.reshape(*lead, *self.event_shape)

    def sample_and_log_prob(
        self,
        num_samples: int,
        context: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Samples and their log-densities in one pass, reparameterised (for reverse-KL training).

        ``chunk_size`` as in :meth:`sample`.

        Returns:
            ``(samples, log_prob)`` shaped ``(num_samples, [batch,] *event)`` and
            ``(num_samples, [batch])``.
        """
        latent, context, lead = self._draw(num_samples, context, generator)
        samples, log_prob = _chunked(self._samples_and_log_prob, chunk_size, latent, context)
        return samples.reshape(*lead, *self.event_shape), log_prob.reshape(lead)


def _chunked(function, chunk_size: int | None, inputs: Tensor, context: Tensor | None):
    """``function(inputs, context)`` on row chunks of at most ``chunk_size``, concatenated."""
    if chunk_size is None:
        return function(inputs, context)
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    chunk_size = int(chunk_size)
    if inputs.shape[0] <= chunk_size:
        return function(inputs, context)
    pieces = [
        function(
            inputs[i : i + chunk_size], None if context is None else context[i : i + chunk_size]
        )
        for i in range(0, inputs.shape[0], chunk_size)
    ]
    if isinstance(pieces[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*pieces))
    return torch.cat(pieces)
