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

    def log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """Log-density of ``inputs: (batch, *event_shape)``; returns ``(batch,)``."""
        if self.validate_args:
            check_tensor("inputs", inputs, tuple(self.event_shape))
        context = self._context(context, inputs.shape[0])
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

    def sample(
        self,
        num_samples: int,
        context: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw samples: ``(num_samples, *event)``, or ``(num_samples, batch, *event)`` with a context
        batch. Differentiable (wrap in ``torch.no_grad()`` when gradients are not needed)."""
        latent, context, lead = self._draw(num_samples, context, generator)
        samples, _ = self.transform.inverse(latent, context)
        return samples.reshape(*lead, *self.event_shape)

    def sample_and_log_prob(
        self,
        num_samples: int,
        context: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Samples and their log-densities in one pass, reparameterised (for reverse-KL training).

        Returns:
            ``(samples, log_prob)`` shaped ``(num_samples, [batch,] *event)`` and
            ``(num_samples, [batch])``.
        """
        latent, context, lead = self._draw(num_samples, context, generator)
        base_log_prob = self.base.log_prob(latent, context)
        samples, logabsdet = self.transform.inverse(latent, context)
        return samples.reshape(*lead, *self.event_shape), (base_log_prob - logabsdet).reshape(lead)
