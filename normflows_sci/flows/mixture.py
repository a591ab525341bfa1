"""A finite mixture of flows: ``p(x) = sum_k w_k p_k(x)``, exact like each of its members."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from normflows_sci.checks import check_num_samples

__all__ = ["FlowMixture"]


class FlowMixture(nn.Module):
    """A mixture of flows over the same space: ``log p(x | c) = logsumexp_k(log w_k + log
    p_k(x | c))``, a normalised density when each member is.

    An equal-weight mixture of flows trained from different seeds (an ensemble) scores held-out
    rows of small tables better than any one of them: averaging densities removes part of each
    member's overfitting. :class:`~normflows_sci.DensityEstimator` builds one with its
    ``ensemble`` argument.

    Args:
        flows: the members, each with ``log_prob(inputs, context, chunk_size=)`` and
            ``sample(num_samples, context, generator=, chunk_size=)`` like :class:`Flow`, on the
            same event shape and device.
        weights: ``(K,)`` positive mixture weights (normalised here); default equal.

    Example:
        >>> from normflows_sci.flows import NSF
        >>> mixture = FlowMixture([NSF(2, transforms=1, hidden_features=(8,)) for _ in range(3)])
        >>> mixture.log_prob(torch.zeros(5, 2)).shape, mixture.sample(4).shape
        (torch.Size([5]), torch.Size([4, 2]))
    """

    def __init__(self, flows: Sequence[nn.Module], weights: Sequence[float] | Tensor | None = None):
        super().__init__()
        flows = list(flows)
        if not flows or not all(isinstance(f, nn.Module) for f in flows):
            raise ValueError(f"flows must be a non-empty list of flows, got {flows!r}")
        if weights is None:
            weights = torch.ones(len(flows))
        weights = torch.as_tensor(weights, dtype=torch.float64).detach().cpu()
        if weights.shape != (len(flows),) or not bool(
            (torch.isfinite(weights) & (weights > 0)).all()
        ):
            raise ValueError(
                f"weights must be {len(flows)} positive finite numbers, one per flow, got "
                f"{weights.tolist()}"
            )
        self.members = nn.ModuleList(flows)
        # float64 on the members' device: the log-weights add to float32 or float64 log-densities
        device = next(iter(flows[0].buffers()), torch.empty(0)).device
        self.register_buffer("log_weights", (weights / weights.sum()).log().to(device))

    def log_prob(
        self, inputs: Tensor, context: Tensor | None = None, *, chunk_size: int | None = None
    ) -> Tensor:
        """Log-density ``(batch,)`` of ``inputs: (batch, *event_shape)`` (given ``context``)."""
        terms = torch.stack(
            [f.log_prob(inputs, context, chunk_size=chunk_size) for f in self.members]
        )
        log_w = self.log_weights.to(terms.dtype).reshape(-1, *[1] * (terms.ndim - 1))
        return torch.logsumexp(terms + log_w, 0)

    def sample(
        self,
        num_samples: int,
        context: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
    ) -> Tensor:
        """``(num_samples, *event)`` draws, or ``(num_samples, batch, *event)`` with a context
        batch: each draw picks a member by weight, then is that member's draw (under its
        context row). ``generator`` drives both choices, so a seeded generator repeats them."""
        num_samples = check_num_samples(num_samples)
        repeated = None if context is None else _repeated(context, num_samples)
        picks = self._picks(num_samples if repeated is None else len(repeated), generator)
        parts = []
        for k, flow in enumerate(self.members):
            mine, options = picks == k, dict(generator=generator, chunk_size=chunk_size)
            if repeated is None:
                parts.append(flow.sample(int(mine.sum()), **options))
            else:  # one draw under each of its context rows
                parts.append(flow.sample(1, repeated[mine], **options)[0])
        # The draws member by member, put back in the order of the picks.
        draws = torch.cat(parts)[torch.argsort(torch.argsort(picks, stable=True))]
        if context is None:
            return draws
        return draws.reshape(num_samples, context.shape[0], *draws.shape[1:])

    def sample_and_log_prob(
        self,
        num_samples: int,
        context: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`sample` and the mixture's log-density of the draws, ``(num_samples, [batch])``."""
        draws = self.sample(num_samples, context, generator=generator, chunk_size=chunk_size)
        if context is None:
            return draws, self.log_prob(draws, chunk_size=chunk_size)
        flat = draws.reshape(-1, *draws.shape[2:])
        log_p = self.log_prob(flat, _repeated(context, num_samples), chunk_size=chunk_size)
        return draws, log_p.reshape(num_samples, context.shape[0])

    def _picks(self, draws: int, generator: torch.Generator | None) -> Tensor:
        """``(draws,)`` member indices drawn by weight (no random numbers used for one member)."""
        if draws == 0 or len(self.members) == 1:
            return torch.zeros(draws, dtype=torch.long, device=self.log_weights.device)
        return torch.multinomial(
            self.log_weights.exp(), draws, replacement=True, generator=generator
        )

    @property
    def event_shape(self) -> torch.Size:
        """The members' event shape."""
        return self.members[0].event_shape

    def extra_repr(self) -> str:
        weights = ", ".join(f"{math.exp(w):.3g}" for w in self.log_weights.tolist())
        return f"weights=({weights})"


def _repeated(context: Tensor, num_samples: int) -> Tensor:
    """``(num_samples * batch, ...)`` context rows: draw ``i`` is under row ``i % batch``."""
    return context.repeat(num_samples, *([1] * (context.ndim - 1)))
