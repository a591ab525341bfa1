"""Base distributions of flows: ``log_prob(z, context=None) -> (batch,)`` and ``sample``.

``sample(num_samples, context=None, *, generator=None)`` draws ``num_samples`` points, reparameterised
where the distribution allows it (gradients reach the parameters). Bases are unconditional: they
accept ``context`` for a uniform interface and ignore it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normflows_sci.checks import check_num_samples

__all__ = ["Distribution", "StandardNormal", "DiagNormal", "GaussianMixture", "StudentT"]

_LOG_2PI = math.log(2.0 * math.pi)


def _shape(event_shape: int | Sequence[int]) -> torch.Size:
    shape = torch.Size((event_shape,) if isinstance(event_shape, int) else tuple(event_shape))
    if len(shape) == 0 or any(s < 1 for s in shape):
        raise ValueError(f"event_shape must be positive sizes, got {event_shape!r}")
    return shape


class Distribution(nn.Module):
    """Base class. Subclasses set ``event_shape`` and implement ``log_prob`` and ``_sample``."""

    event_shape: torch.Size

    def __init__(self, event_shape: int | Sequence[int]):
        super().__init__()
        self.event_shape = _shape(event_shape)
        # A buffer that follows .to(device/dtype), so samples land where the module lives.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def sample(
        self,
        num_samples: int,
        context: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``(num_samples, *event_shape)`` samples."""
        return self._sample(check_num_samples(num_samples), generator)

    def _sample(self, num_samples: int, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def _randn(self, *shape: int, generator: torch.Generator | None) -> Tensor:
        anchor = self._anchor
        return torch.randn(*shape, generator=generator, dtype=anchor.dtype, device=anchor.device)

    def _sum_event(self, values: Tensor) -> Tensor:
        return values.flatten(values.ndim - len(self.event_shape)).sum(-1)


class StandardNormal(Distribution):
    """Standard normal ``N(0, I)`` over ``event_shape``.

    Example:
        >>> base = StandardNormal(2)
        >>> base.log_prob(torch.zeros(1, 2))
        tensor([-1.8379])
    """

    def log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        return -0.5 * self._sum_event(inputs.square()) - 0.5 * self.event_shape.numel() * _LOG_2PI

    def _sample(self, num_samples, generator):
        return self._randn(num_samples, *self.event_shape, generator=generator)


class DiagNormal(Distribution):
    """Normal with learnable mean and diagonal scale (initialised at ``N(0, I)``)."""

    def __init__(self, event_shape: int | Sequence[int], *, learnable: bool = True):
        super().__init__(event_shape)
        loc = torch.zeros(self.event_shape)
        log_scale = torch.zeros(self.event_shape)
        if learnable:
            self.loc = nn.Parameter(loc)
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("loc", loc)
            self.register_buffer("log_scale", log_scale)

    def log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        standard = (inputs - self.loc) * (-self.log_scale).exp()
        per_dim = -0.5 * standard.square() - self.log_scale - 0.5 * _LOG_2PI
        return self._sum_event(per_dim)

    def _sample(self, num_samples, generator):
        noise = self._randn(num_samples, *self.event_shape, generator=generator)
        return self.loc + self.log_scale.exp() * noise


class GaussianMixture(Distribution):
    """Mixture of diagonal Gaussians with learnable weights, means and scales.

    Sampling is reparameterised with respect to means and scales, not the mixture weights.

    Args:
        features: dimension ``D``.
        components: number of components.
        spread: standard deviation of the random initial means.
        seed: seed for the initial means.
    """

    def __init__(self, features: int, components: int = 8, *, spread: float = 1.0, seed=None):
        super().__init__(features)
        if components < 1:
            raise ValueError(f"components must be >= 1, got {components}")
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        self.logits = nn.Parameter(torch.zeros(components))
        self.means = nn.Parameter(spread * torch.randn(components, features, generator=generator))
        self.log_scales = nn.Parameter(torch.zeros(components, features))

    def log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        standard = (inputs[..., None, :] - self.means) * (-self.log_scales).exp()
        per_comp = (-0.5 * standard.square() - self.log_scales).sum(-1)
        per_comp = per_comp - 0.5 * self.event_shape[0] * _LOG_2PI
        return torch.logsumexp(per_comp + torch.log_softmax(self.logits, -1), dim=-1)

    def _sample(self, num_samples, generator):
        probs = torch.softmax(self.logits, -1).detach()
        component = torch.multinomial(probs, num_samples, replacement=True, generator=generator)
        noise = self._randn(num_samples, self.event_shape[0], generator=generator)
        return self.means[component] + self.log_scales[component].exp() * noise


class StudentT(Distribution):
    """Product of Student-t marginals with per-dimension learnable degrees of freedom.

    Heavy-tailed base for data whose marginals decay polynomially: a flow keeps the tail class of
    its base. ``df`` is parametrised as ``min_df + softplus(raw)``; samples are reparameterised in
    location, scale and ``df`` (implicit gamma reparameterisation).

    Args:
        features: dimension ``D``.
        df: initial degrees of freedom, scalar or ``(D,)``.
        learnable: whether ``df``, location and scale are trained.
        min_df: lower bound of ``df``.

    References:
        Laszkiewicz, Lederer, Fischer (2022), "Marginal Tail-Adaptive Normalizing Flows".
    """

    def __init__(self, features: int, df=5.0, *, learnable: bool = True, min_df: float = 0.1):
        super().__init__(features)
        df = torch.as_tensor(df, dtype=torch.get_default_dtype()).expand(features).clone()
        if not bool((df > min_df).all()):
            raise ValueError(f"df must exceed min_df={min_df}, got {df.tolist()}")
        self.min_df = min_df
        raw_df = torch.log(torch.expm1(df - min_df))
        loc = torch.zeros(features)
        log_scale = torch.zeros(features)
        if learnable:
            self.raw_df = nn.Parameter(raw_df)
            self.loc = nn.Parameter(loc)
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("raw_df", raw_df)
            self.register_buffer("loc", loc)
            self.register_buffer("log_scale", log_scale)

    @property
    def df(self) -> Tensor:
        """Degrees of freedom, ``(D,)``."""
        return self.min_df + F.softplus(self.raw_df)

    def log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        df = self.df
        standard = (inputs - self.loc) * (-self.log_scale).exp()
        per_dim = (
            torch.lgamma(0.5 * (df + 1.0))
            - torch.lgamma(0.5 * df)
            - 0.5 * torch.log(math.pi * df)
            - self.log_scale
            - 0.5 * (df + 1.0) * torch.log1p(standard.square() / df)
        )
        return per_dim.sum(-1)

    def _sample(self, num_samples, generator):
        df = self.df
        normal = self._randn(num_samples, self.event_shape[0], generator=generator)
        concentration = (0.5 * df).expand(num_samples, -1)
        # torch._standard_gamma takes a generator and has an implicit reparameterisation gradient.
        gamma = torch._standard_gamma(concentration, generator=generator)
        student = normal * torch.rsqrt(gamma / (0.5 * df))
        return self.loc + self.log_scale.exp() * student
