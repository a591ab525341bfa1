"""Base distributions of flows: ``log_prob(z, context=None) -> (batch,)`` and ``sample``.

``sample(num_samples, context=None, *, generator=None)`` draws ``num_samples`` points, reparameterised
where the distribution allows it (gradients reach the parameters). Bases are unconditional: they
accept ``context`` for a uniform interface and ignore it.

``log_prob`` checks that its inputs have shape ``(batch, *event_shape)`` (metadata only, no device
synchronisation) before any arithmetic, so a wrong width is an error instead of a density of
something else. Far outside the bulk the Gaussian terms are evaluated so that an overflowing
square gives ``-inf`` with a zero (not NaN) gradient.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normflows_sci.checks import check_num_samples, check_shape, guard_override

__all__ = [
    "Distribution",
    "StandardNormal",
    "DiagNormal",
    "GaussianMixture",
    "StudentT",
    "TailAdaptiveBase",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _shape(event_shape: int | Sequence[int]) -> torch.Size:
    shape = torch.Size((event_shape,) if isinstance(event_shape, int) else tuple(event_shape))
    if len(shape) == 0 or any(s < 1 for s in shape):
        raise ValueError(f"event_shape must be positive sizes, got {event_shape!r}")
    return shape


def _square_limit(dtype: torch.dtype) -> float:
    """The smallest power of two whose square overflows ``dtype`` (``2**64`` for float32)."""
    limit = _SQUARE_LIMITS.get(dtype)
    if limit is None:
        limit = _SQUARE_LIMITS[dtype] = 2.0 ** math.ceil(math.log2(torch.finfo(dtype).max) / 2)
    return limit


_SQUARE_LIMITS: dict[torch.dtype, float] = {}


def _square(values: Tensor) -> Tensor:
    """``values^2``, ``inf`` with a zero gradient where the square overflows.

    Beyond ``|z| ~ 1.8e19`` (float32) the Gaussian term ``-z^2 / 2`` is ``-inf``, but its
    gradient ``-z`` is finite and huge: multiplied by an affine layer's ``x exp(s)`` it overflows
    and meets the zero derivative of a saturated scale clamp as ``inf * 0 = NaN``. Clamped at the
    first overflowing magnitude, the value is the same ``inf`` and the gradient there is exactly
    zero. (``hardtanh`` is that clamp with a one-kernel backward.)
    """
    limit = _square_limit(values.dtype)
    return F.hardtanh(values, -limit, limit).square()


def _logsumexp(values: Tensor, dim: int) -> Tensor:
    """``torch.logsumexp`` whose gradient is zero, not NaN, where every term is ``-inf``.

    (torch's backward computes ``exp(x - result) = exp(-inf + inf)``; far outside every mixture
    component all terms are ``-inf``.) The terms are floored at the lowest finite number, whose
    sum rounds back to it, and those results are set to ``-inf`` again.
    """
    lowest = torch.finfo(values.dtype).min
    result = torch.logsumexp(values.clamp(min=lowest), dim=dim)
    return result.masked_fill(result <= lowest, -math.inf)


class Distribution(nn.Module, abc.ABC):
    """Base class of the base distributions.

    Subclasses set ``event_shape`` (through ``__init__``) and implement ``_log_prob`` and
    ``_sample``. :meth:`log_prob` checks the inputs' shape, then calls ``_log_prob``. Subclasses
    written against the older contract, overriding ``log_prob`` itself, keep working and get the
    same check: ``__init_subclass__`` wraps their ``log_prob`` with it.

    Example:
        >>> class Uniform01(Distribution):  # uniform on the unit square
        ...     def _log_prob(self, inputs, context=None):
        ...         inside = ((inputs >= 0) & (inputs <= 1)).all(-1)
        ...         return torch.where(inside, 0.0, -math.inf).to(inputs.dtype)
        ...     def _sample(self, num_samples, generator):
        ...         return torch.rand(num_samples, 2, generator=generator)
        >>> Uniform01(2).log_prob(torch.tensor([[0.5, 0.5], [2.0, 0.5]]))
        tensor([0., -inf])
        >>> Uniform01(2).log_prob(torch.zeros(4, 3))
        Traceback (most recent call last):
        ...
        ValueError: inputs must have shape (batch, 2), got (4, 3)
    """

    event_shape: torch.Size

    def __init__(self, event_shape: int | Sequence[int]):
        super().__init__()
        self.event_shape = _shape(event_shape)
        # A buffer that follows .to(device/dtype), so samples land where the module lives.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # A subclass overriding log_prob directly still gets the shape check.
        guard_override(cls, "log_prob", "_log_prob", "_check_inputs")

    def _check_inputs(self, inputs: Tensor) -> None:
        """Raise unless ``inputs`` is a floating-point tensor of shape ``(batch, *event_shape)``
        (metadata only: values are not read, so NaN/inf pass; :class:`Flow` checks those)."""
        check_shape("inputs", inputs, self.event_shape)
        if not inputs.is_floating_point():
            raise TypeError(f"inputs must be a floating-point tensor, got dtype {inputs.dtype}")

    def log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """``(batch,)`` log-densities of ``inputs: (batch, *event_shape)``.

        Raises:
            TypeError: ``inputs`` is not a floating-point tensor.
            ValueError: ``inputs`` does not have shape ``(batch, *event_shape)``.
        """
        self._check_inputs(inputs)
        return self._log_prob(inputs, context)

    log_prob._checks_inputs = True

    @abc.abstractmethod
    def _log_prob(self, inputs: Tensor, context: Tensor | None) -> Tensor:
        """``(batch,)`` log-densities of checked ``inputs: (batch, *event_shape)``."""

    def sample(
        self,
        num_samples: int,
        context: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``(num_samples, *event_shape)`` samples (``num_samples=0`` gives an empty batch)."""
        num_samples = check_num_samples(num_samples)
        if num_samples == 0:
            # Samplers such as torch.multinomial reject zero draws; nothing is random here.
            anchor = self._anchor
            return anchor.new_zeros((0, *self.event_shape))
        return self._sample(num_samples, generator)

    @abc.abstractmethod
    def _sample(self, num_samples: int, generator: torch.Generator | None) -> Tensor:
        """``(num_samples, *event_shape)`` draws."""

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

    def _log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        return -0.5 * self._sum_event(_square(inputs)) - 0.5 * self.event_shape.numel() * _LOG_2PI

    def _sample(self, num_samples, generator):
        return self._randn(num_samples, *self.event_shape, generator=generator)


class DiagNormal(Distribution):
    """Normal with learnable mean and diagonal scale (initialised at ``N(0, I)``).

    ``log p(z) = sum_i [-(z_i - loc_i)^2 / (2 sigma_i^2) - log sigma_i - log(2 pi) / 2]`` with
    ``sigma = exp(log_scale)``; samples ``loc + sigma * eps`` are reparameterised.

    Args:
        event_shape: shape of one sample.
        learnable: train ``loc`` and ``log_scale`` (otherwise fixed buffers).

    Example:
        >>> base = DiagNormal(2)
        >>> round(base.log_prob(torch.zeros(1, 2)).item(), 4)  # N(0, I) at the origin
        -1.8379
        >>> x = base.sample(3, generator=torch.Generator().manual_seed(0))
        >>> x.shape, x.requires_grad  # gradients reach loc and log_scale
        (torch.Size([3, 2]), True)
    """

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

    def _log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        standard = (inputs - self.loc) * (-self.log_scale).exp()
        per_dim = -0.5 * _square(standard) - self.log_scale - 0.5 * _LOG_2PI
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

    Example:
        >>> mixture = GaussianMixture(1, components=4, seed=0)
        >>> grid = torch.linspace(-10.0, 10.0, 2001)[:, None]
        >>> density = mixture.log_prob(grid).exp().detach()
        >>> round(torch.trapezoid(density, dx=0.01).item(), 4)  # integrates to 1
        1.0
        >>> mixture.sample(5, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([5, 1])
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

    def _log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        standard = (inputs[..., None, :] - self.means) * (-self.log_scales).exp()
        per_comp = (-0.5 * _square(standard) - self.log_scales).sum(-1)
        per_comp = per_comp - 0.5 * self.event_shape[0] * _LOG_2PI
        return _logsumexp(per_comp + torch.log_softmax(self.logits, -1), dim=-1)

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

    Example:
        >>> base = StudentT(1, df=3.0)
        >>> round(base.df.item(), 4)
        3.0
        >>> log_t3_at_0 = math.lgamma(2.0) - math.lgamma(1.5) - 0.5 * math.log(3 * math.pi)
        >>> abs(base.log_prob(torch.zeros(1, 1)).item() - log_t3_at_0) < 1e-5
        True
        >>> base.sample(4, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4, 1])
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

    def _log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        standard = (inputs - self.loc) * (-self.log_scale).exp()
        return (_student_t_log_density(standard, self.df) - self.log_scale).sum(-1)

    def _sample(self, num_samples, generator):
        student = _student_t_sample(self, num_samples, self.df, generator)
        return self.loc + self.log_scale.exp() * student


def _student_t_log_density(standard: Tensor, df: Tensor) -> Tensor:
    """Elementwise log-density of a standard Student-t with ``df`` degrees of freedom.

    The tail term ``log(1 + t^2)``, ``t = x / sqrt(df)``, is evaluated as
    ``2 log u + log1p((min(a, 1) / u)^2)`` with ``a = |t|``, ``u = max(a, 1)`` (the same function):
    ``t^2`` overflows float32 at ``|t| ~ 1.8e19`` while the density there is finite (polynomial
    tails), and every factor of the gradient stays finite up to ``|t| = inf``.
    """
    magnitude = (standard * torch.rsqrt(df)).abs()
    large = magnitude.clamp(min=1.0)
    log1p_square = 2.0 * large.log() + torch.log1p((magnitude.clamp(max=1.0) / large).square())
    return (
        torch.lgamma(0.5 * (df + 1.0))
        - torch.lgamma(0.5 * df)
        - 0.5 * torch.log(math.pi * df)
        - 0.5 * (df + 1.0) * log1p_square
    )


def _student_t_sample(dist: Distribution, num_samples: int, df: Tensor, generator) -> Tensor:
    """``(num_samples, len(df))`` standard Student-t draws, reparameterised in ``df``."""
    normal = dist._randn(num_samples, len(df), generator=generator)
    # torch._standard_gamma takes a generator and has an implicit reparameterisation gradient.
    gamma = torch._standard_gamma((0.5 * df).expand(num_samples, -1), generator=generator)
    return normal * torch.rsqrt(gamma / (0.5 * df))


class TailAdaptiveBase(Distribution):
    """Standard normal marginals, except Student-t marginals (learnable degrees of freedom) on the
    heavy-tailed dimensions.

    A flow whose layers are the identity far out (linear spline tails, autoregressive orders that
    keep dimensions in place) keeps each marginal's tail class from its base, so heavy-tailed data
    columns need heavy-tailed base dimensions and light ones a Gaussian.

    Args:
        df: one entry per dimension: the initial degrees of freedom of a heavy-tailed dimension, or
            ``None`` (or ``inf``) for a Gaussian one.
        min_df: lower bound of the learnable degrees of freedom.

    References:
        Laszkiewicz, Lederer, Fischer (2022), "Marginal Tail-Adaptive Normalizing Flows".

    Example:
        >>> base = TailAdaptiveBase([None, 3.0])
        >>> base.sample(4).shape
        torch.Size([4, 2])
    """

    def __init__(self, df: Sequence[float | None], *, min_df: float = 0.5):
        values = [math.inf if v is None else float(v) for v in df]
        super().__init__(len(values))
        values_t = torch.tensor(values)
        heavy = values_t.isfinite()
        if bool((values_t[heavy] <= min_df).any()):
            raise ValueError(f"df must exceed min_df={min_df}, got {values}")
        self.min_df = min_df
        self.register_buffer("heavy_index", torch.nonzero(heavy).flatten())
        self.register_buffer("light_index", torch.nonzero(~heavy).flatten())
        self.raw_df = nn.Parameter(torch.log(torch.expm1(values_t[heavy] - min_df)))

    @property
    def df(self) -> Tensor:
        """Degrees of freedom of the heavy-tailed dimensions, ``(num_heavy,)``."""
        return self.min_df + F.softplus(self.raw_df)

    def _log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        light = inputs.index_select(-1, self.light_index)
        heavy = inputs.index_select(-1, self.heavy_index)
        normal = -0.5 * _square(light).sum(-1) - 0.5 * light.shape[-1] * _LOG_2PI
        return normal + _student_t_log_density(heavy, self.df).sum(-1)

    def _sample(self, num_samples, generator):
        samples = self._randn(num_samples, self.event_shape[0], generator=generator)
        if len(self.heavy_index) == 0:
            return samples
        heavy = _student_t_sample(self, num_samples, self.df, generator)
        index = self.heavy_index.expand(num_samples, -1)
        return samples.scatter(-1, index, heavy)


class NormalWithAngles(Distribution):
    """Standard normal on ordinary features and uniform on ``[-pi, pi)`` for angle features.

    The base of flows over mixed Euclidean and circular variables (e.g. internal coordinates with
    torsions): each angle's density is ``1 / (2 pi)`` with respect to arc length.

    Args:
        circular: ``(features,)`` booleans, True for angles.

    >>> base = NormalWithAngles([False, True])
    >>> round(base.log_prob(torch.zeros(1, 2)).item(), 5) == round(-1.5 * math.log(2 * math.pi), 5)
    True
    """

    def __init__(self, circular: Sequence[bool] | Tensor):
        circular = torch.as_tensor(circular, dtype=torch.bool)
        if circular.ndim != 1 or len(circular) == 0:
            raise ValueError(f"circular must be a non-empty 1-D boolean mask, got {circular.shape}")
        super().__init__(len(circular))
        self.register_buffer("circular", circular)

    def _log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        normal = -0.5 * (_square(inputs) + math.log(2 * math.pi))
        outside = (inputs < -math.pi) | (inputs >= math.pi)
        angle = torch.where(outside, -math.inf, -math.log(2 * math.pi))
        return self._sum_event(torch.where(self.circular, angle, normal))

    def _sample(self, num_samples, generator):
        anchor = self._anchor
        shape = (num_samples, *self.event_shape)
        uniform = torch.rand(*shape, generator=generator, dtype=anchor.dtype, device=anchor.device)
        normal = self._randn(*shape, generator=generator)
        return torch.where(self.circular, (2 * uniform - 1) * math.pi, normal)
