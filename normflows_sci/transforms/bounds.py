"""Maps from bounded columns to the whole real line, with exact log-determinants."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from normflows_sci.checks import check_features
from normflows_sci.transforms.base import Transform

__all__ = ["BoundaryTransform"]


def _log_one_minus_exp(t: Tensor) -> Tensor:
    """``log(1 - exp(-t))`` for ``t > 0``, accurate for small and large ``t``."""
    return torch.where(t < math.log(2.0), torch.log(-torch.expm1(-t)), torch.log1p(-torch.exp(-t)))


class BoundaryTransform(Transform):
    """Per column: ``[a, b] -> R`` by a scaled logit, ``[a, inf) -> R`` by an inverse softplus,
    ``(-inf, b] -> R`` by its mirror image, unbounded columns unchanged.

    Forward (data to latent): ``logit((x - a) / (b - a))``, ``log(expm1(x - a))`` or
    ``-log(expm1(b - x))``; inverse: ``a + (b - a) sigmoid(y)``, ``a + softplus(y)``,
    ``b - softplus(-y)``. Points on or outside a bound have no finite image: callers validate
    their data (or widen the bounds slightly) first.

    Args:
        lower: ``(D,)`` lower bounds, ``-inf`` (or None) where a column has none.
        upper: ``(D,)`` upper bounds, ``inf`` (or None) where a column has none.

    Example:
        >>> t = BoundaryTransform([0.0, None], [1.0, None])
        >>> z, logabsdet = t(torch.tensor([[0.5, 3.0]]))
        >>> z.tolist(), round(logabsdet.item(), 4)
        ([[0.0, 3.0]], 1.3863)
    """

    context_features = 0  # takes no context (Flow checks contexts against this)

    def __init__(self, lower: Sequence[float | None], upper: Sequence[float | None]):
        super().__init__()
        lower_t = torch.tensor([-math.inf if v is None else float(v) for v in lower])
        upper_t = torch.tensor([math.inf if v is None else float(v) for v in upper])
        if lower_t.shape != upper_t.shape or lower_t.ndim != 1:
            raise ValueError(
                f"lower and upper must be 1-D of equal length, got {len(lower)} and {len(upper)}"
            )
        if bool((lower_t >= upper_t).any()):
            raise ValueError(
                f"lower must be below upper, got {lower_t.tolist()} and {upper_t.tolist()}"
            )
        self.features = len(lower_t)
        both = lower_t.isfinite() & upper_t.isfinite()
        self.register_buffer("both", both)
        self.register_buffer("lower_only", lower_t.isfinite() & ~both)
        self.register_buffer("upper_only", upper_t.isfinite() & ~both)
        # Finite stand-ins where a side is open keep the unused torch.where branches finite.
        self.register_buffer("low", torch.where(lower_t.isfinite(), lower_t, 0.0))
        self.register_buffer("high", torch.where(upper_t.isfinite(), upper_t, 1.0))

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(inputs, self.features)
        low, high = self.low.to(inputs.dtype), self.high.to(inputs.dtype)
        span = torch.where(self.both, high - low, 1.0)
        unit = ((inputs - low) / span).clamp(1e-300, 1.0)
        logit = torch.log(unit) - torch.log1p(-unit)
        logit_lad = -torch.log(span) - torch.log(unit) - torch.log1p(-unit)
        # log(expm1(t)) = t + log(1 - exp(-t)); its derivative is 1 / (1 - exp(-t)).
        t_low = (inputs - low).clamp_min(1e-300)
        t_high = (high - inputs).clamp_min(1e-300)
        log_term_low = _log_one_minus_exp(t_low)
        log_term_high = _log_one_minus_exp(t_high)
        outputs = torch.where(
            self.both,
            logit,
            torch.where(
                self.lower_only,
                t_low + log_term_low,
                torch.where(self.upper_only, -(t_high + log_term_high), inputs),
            ),
        )
        logabsdet = torch.where(
            self.both,
            logit_lad,
            torch.where(
                self.lower_only, -log_term_low, torch.where(self.upper_only, -log_term_high, 0.0)
            ),
        )
        return outputs, logabsdet.sum(-1)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(inputs, self.features)
        low, high = self.low.to(inputs.dtype), self.high.to(inputs.dtype)
        span = torch.where(self.both, high - low, 1.0)
        # log sigmoid(y) + log sigmoid(-y) + log(b - a) is the log-derivative of the logistic map.
        logistic = low + span * torch.sigmoid(inputs)
        logistic_lad = torch.log(span) + F.logsigmoid(inputs) + F.logsigmoid(-inputs)
        outputs = torch.where(
            self.both,
            logistic,
            torch.where(
                self.lower_only,
                low + F.softplus(inputs),
                torch.where(self.upper_only, high - F.softplus(-inputs), inputs),
            ),
        )
        logabsdet = torch.where(
            self.both,
            logistic_lad,
            torch.where(
                self.lower_only,
                F.logsigmoid(inputs),
                torch.where(self.upper_only, F.logsigmoid(-inputs), 0.0),
            ),
        )
        return outputs, logabsdet.sum(-1)
