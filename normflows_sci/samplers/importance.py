"""Importance sampling with a flow proposal: weights, ESS, log Z and reweighted estimates.

For samples ``x ~ q`` and an unnormalised target ``p~(x) = exp(-u(x))`` the log importance weight is
``log w = log p~(x) - log q(x)``. Everything is computed in log space. Error bars use the delta
method for self-normalised estimators, which is accurate only when the weights have a light enough
tail. Every :class:`ImportanceResult` therefore carries the Pareto-k diagnostic of its weights
(:func:`~normflows_sci.samplers.psis.pareto_khat`) and warns once when k-hat is not below its
sample-size-dependent threshold; with an ESS below 2 the standard errors are NaN, never 0.

Each estimator returns an :class:`Estimate`, which unpacks as ``(value, stderr)`` and carries the
k-hat of that estimate (:func:`~normflows_sci.samplers.psis.function_khat`: an unbounded observable
can have a heavier tail than the weights); it warns when that k-hat alone is above the threshold.
:meth:`ImportanceResult.samples_needed` turns a wanted standard error into a number of samples.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from normflows_sci.checks import check_int, check_num_samples, check_positive
from normflows_sci.samplers.psis import (
    psis_smooth,
    result_threshold,
    signed_tail_khat,
    tail_khat,
    warn_unreliable,
)
from normflows_sci.samplers.targets import as_log_prob, check_log_prob

__all__ = ["Estimate", "ImportanceResult", "importance_sample", "importance_weights"]


class Estimate(tuple):
    """An estimate that unpacks, prints and compares as the tuple ``(value, stderr)``.

    It also carries the Pareto k-hat that governs it: the larger of the weights' k-hat and that of
    the tails of ``h(x) w(x)`` for the observable ``h`` (see
    :func:`~normflows_sci.samplers.psis.function_khat`), and the threshold it is compared with.

    Attributes:
        value: the estimate (a float, or a tensor for a vector observable).
        stderr: its delta-method standard error (same type; NaN when ``ess < 2``).
        pareto_k: k-hat of this estimate (the largest over an observable's components).
        khat_threshold: ``min(1 - 1 / log10(N), 0.7)`` for the ``N`` samples used.

    >>> mean, stderr = Estimate(1.5, 0.1, pareto_k=0.2, khat_threshold=0.7)
    >>> Estimate(1.5, 0.1, pareto_k=0.9, khat_threshold=0.7).reliable
    False
    """

    def __new__(cls, value, stderr, pareto_k: float = math.nan, khat_threshold: float = math.nan):
        self = super().__new__(cls, (value, stderr))
        self.pareto_k, self.khat_threshold = float(pareto_k), float(khat_threshold)
        return self

    def __reduce__(self):
        return (Estimate, (self[0], self[1], self.pareto_k, self.khat_threshold))

    @property
    def value(self):
        """The estimate, ``self[0]``."""
        return self[0]

    @property
    def stderr(self):
        """Its standard error, ``self[1]``."""
        return self[1]

    @property
    def reliable(self) -> bool:
        """Whether ``pareto_k < khat_threshold`` (NaN k-hat is unreliable)."""
        return self.pareto_k < self.khat_threshold


@dataclass(frozen=True)
class ImportanceResult:
    """Importance-sampling output; all tensors are detached.

    Attributes:
        samples: ``(N, *event)`` draws from the proposal.
        log_q: ``(N,)`` proposal log-densities.
        log_p: ``(N,)`` unnormalised target log-densities (``-inf`` where the target vanishes).
        log_weights: ``(N,)`` ``log_p - log_q``.
        weights: ``(N,)`` self-normalised weights (sum to 1).
        ess: Kish effective sample size ``(sum w)^2 / sum w^2``.
        ess_fraction: ``ess / N``.
        log_z: ``logsumexp(log w) - log N``, estimating the target's log normaliser (relative to
            the proposal's, which is 1 for a flow).
        log_z_stderr: delta-method standard error of ``log_z``: ``sqrt(1/ess - 1/N)`` (``inf``
            when ``ess < 2``: one weight carries everything and no error bar exists).
        pareto_k: Pareto shape estimate k-hat of the weights (computed from ``log_weights`` when
            not given); NaN below 21 samples, ``-inf`` when the largest weights agree to round-off.
        khat_threshold: ``min(1 - 1 / log10(N), 0.7)``; see :attr:`reliable`.

    Construction warns (RuntimeWarning, once per result) when the result is not :attr:`reliable`
    or ``ess < 2``; the estimators then still return numbers, which may be far off. The
    estimators return an :class:`Estimate` (unpacking as ``(value, stderr)``) with its own k-hat
    and warn when only the observable makes it unreliable; :meth:`samples_needed` plans the
    number of samples for a wanted standard error.
    """

    samples: Tensor
    log_q: Tensor
    log_p: Tensor
    log_weights: Tensor
    weights: Tensor
    ess: float
    ess_fraction: float
    log_z: float
    log_z_stderr: float
    pareto_k: float | None = None
    khat_threshold: float | None = None

    def __post_init__(self) -> None:
        reason = ""
        if self.pareto_k is None:
            k, reason = math.nan, "one sample has no tail to fit"
            if self.num_samples >= 2:
                k, reason = tail_khat(self.log_weights)
            object.__setattr__(self, "pareto_k", k)  # frozen: filled in once, here
        if self.khat_threshold is None:
            object.__setattr__(self, "khat_threshold", result_threshold(self.num_samples))
        if not self.reliable or self.ess < 2:
            self._warn(reason)

    @property
    def reliable(self) -> bool:
        """Whether k-hat is below its threshold (NaN k-hat, too few samples, is unreliable)."""
        return not math.isnan(self.pareto_k) and self.pareto_k < self.khat_threshold

    def _warn(self, reason: str) -> None:
        warn_unreliable(
            self.pareto_k,
            self.khat_threshold,
            self.num_samples,
            self.ess,
            cause=reason,
            advice="draw more samples, improve (train) the proposal, or use a wider / tempered "
            "proposal",
            stacklevel=4,  # importance_sample -> __init__ -> __post_init__ -> _warn
        )

    @property
    def num_samples(self) -> int:
        return len(self.log_weights)

    def _values(self, f) -> Tensor:
        values = f(self.samples) if callable(f) else torch.as_tensor(f)
        values = values.to(self.weights)
        if values.shape[:1] != self.weights.shape:
            raise ValueError(
                f"f must give one value per sample (leading dimension {self.num_samples}), "
                f"got shape {tuple(values.shape)}"
            )
        return values

    def expectation(
        self, f: Callable[[Tensor], Tensor] | Tensor, *, smooth: bool = False
    ) -> Estimate:
        """Self-normalised estimate of ``E_p[f(x)]`` and its standard error.

        The error bar is trustworthy only when the estimate is reliable: the weights' k-hat and
        that of ``f(x) w(x)`` below the threshold. When the weights are reliable but an unbounded
        ``f`` makes ``f(x) w(x)`` heavy-tailed, this warns (RuntimeWarning); unreliable weights
        already warned when the result was made. With ``ess < 2`` the error is NaN.

        Args:
            f: a function of the samples returning ``(N, ...)``, or those values directly.
            smooth: weight with the Pareto-smoothed weights
                (:func:`~normflows_sci.samplers.psis.psis_smooth`): lower variance, same k-hat.

        Returns:
            An :class:`Estimate` unpacking as ``(mean, stderr)``, tensors with the trailing shape
            of ``f``'s values; its ``pareto_k`` is the largest over the components.
        """
        estimate, reason = self._mean_estimate(self._values(f), smooth)
        return self._report(estimate, "expectation", reason)

    def probability(self, region: Callable[[Tensor], Tensor] | Tensor) -> Estimate:
        """Probability of a region (boolean per sample, or a function giving it) with its error.

        Returns:
            An :class:`Estimate` unpacking as ``(probability, stderr)`` (floats); it warns like
            :meth:`expectation` (e.g. when fewer than 5 weighted samples fall in the region).
        """
        estimate, reason = self._mean_estimate(self._region(region), False)
        value, stderr = float(estimate.value), float(estimate.stderr)
        estimate = Estimate(value, stderr, estimate.pareto_k, estimate.khat_threshold)
        return self._report(estimate, "probability", reason)

    def _region(self, region) -> Tensor:
        mask = self._values(region)
        if mask.ndim != 1:
            raise ValueError(f"a region must give one boolean per sample, got {tuple(mask.shape)}")
        return mask.to(self.weights.dtype)

    def free_energy_difference(self, region_a, region_b) -> Estimate:
        """``F_b - F_a = -log(P(b) / P(a))`` in units of kT, with a delta-method standard error.

        Args:
            region_a, region_b: boolean per sample, or functions of the samples returning it.

        Returns:
            An :class:`Estimate` unpacking as ``(delta_f, stderr)`` (floats); its k-hat covers the
            weights inside each region, and it warns like :meth:`expectation`.

        Raises:
            ValueError: a region holds no weight (the estimate would be infinite).
        """
        estimate, reason = self._free_energy_estimate(region_a, region_b)
        return self._report(estimate, "free-energy difference", reason)

    def _mean_estimate(self, values: Tensor, smooth: bool) -> tuple[Estimate, str]:
        """Weighted mean and delta-method error of ``values`` ``(N, ...)``, with k-hat and why."""
        mean, stderr = self._weighted_mean(values, smooth)
        k, reason = self._function_khat(values)
        return Estimate(mean, stderr, k, self.khat_threshold), reason

    def _weighted_mean(self, values: Tensor, smooth: bool) -> tuple[Tensor, Tensor]:
        weights = self.weights
        if smooth:
            with warnings.catch_warnings():  # the result already warned about a NaN k-hat
                warnings.simplefilter("ignore", RuntimeWarning)
                weights = psis_smooth(self.log_weights)[0].exp().to(self.weights)
        w = weights.reshape(-1, *([1] * (values.ndim - 1)))
        mean = (w * values).sum(0)
        stderr = ((w * (values - mean)) ** 2).sum(0).sqrt()
        if self.ess < 2:
            stderr = torch.full_like(stderr, math.nan)
        return mean, stderr

    def samples_needed(self, stderr: float, *, quantity="log_z") -> int | float:
        """Number of proposal samples that gives an estimate the standard error ``stderr``.

        Extrapolates the current error: below k-hat 0.5 it shrinks as ``1 / sqrt(N)``, so
        ``N = N_now (stderr_now / stderr)^2``; for ``0.5 <= k-hat <`` threshold (infinite
        variance) only as ``N^-(1 - k)``, which is used instead. At least ``10^(1 / (1 - k))``
        (where the threshold exceeds k-hat) and 21 (a k-hat exists). Plan from a pilot of a few
        thousand samples.

        Args:
            stderr: the wanted standard error, in the estimate's units: nats for log Z, units of
                ``f`` for an expectation, kT for a free-energy difference.
            quantity: ``"log_z"``; a function of the samples (or its values ``(N, ...)``) for
                :meth:`expectation` (the largest need over its components); or a pair
                ``(region_a, region_b)`` for :meth:`free_energy_difference`.

        Returns:
            The number of samples (``int``), or ``math.inf`` with a RuntimeWarning naming k-hat
            when the current estimate is not reliable (k-hat not below its threshold, or
            ``ess < 2``): its error does not shrink predictably, and no number would be honest.
            Also ``math.inf`` (without a warning) when the plan exceeds the floating-point range.

        Raises:
            ValueError: ``stderr`` not a positive finite number, an unknown quantity name, or a
                region without weight.
            TypeError: ``quantity`` of another type.

        Example:
            >>> from normflows_sci.distributions import StandardNormal
            >>> from normflows_sci.flows import Flow
            >>> from normflows_sci.transforms import ElementwiseAffine
            >>> wide = Flow(ElementwiseAffine(1, scale=1 / 1.5, learnable=False), StandardNormal(1))
            >>> seed = torch.Generator().manual_seed(0)
            >>> pilot = importance_sample(wide, StandardNormal(1), 2000, generator=seed)
            >>> needed = pilot.samples_needed(0.005)  # log Z to +-0.005: (N/ESS - 1) / 0.005^2
            >>> 7000 < needed < 10_000  # exact variance of the weights: 0.2030 / 0.005^2 = 8120
            True
        """
        wanted = check_positive("stderr", stderr)
        estimate, reason = self._current_estimate(quantity)
        current = float(torch.as_tensor(estimate.stderr, dtype=torch.float64).max())
        k, threshold = estimate.pareto_k, estimate.khat_threshold
        if not (estimate.reliable and self.ess >= 2 and math.isfinite(current)):
            cause = f" ({reason})" if reason else ""
            warnings.warn(
                f"cannot plan the sample size: the current estimate is not reliable (Pareto "
                f"k-hat = {k:.3g}{cause}, threshold {threshold:.3g} for {self.num_samples} "
                f"samples, ESS = {self.ess:.3g}), so its error does not shrink predictably with "
                "more samples from this proposal; returning inf. Improve (train) or widen the "
                "proposal, then plan again",
                RuntimeWarning,
                stacklevel=2,
            )
            return math.inf
        return _planned_samples(self.num_samples, current, wanted, k)

    def _current_estimate(self, quantity) -> tuple[Estimate, str]:
        """The estimate ``samples_needed`` plans for, without the estimators' warnings."""
        if isinstance(quantity, str):
            if quantity != "log_z":
                raise ValueError(
                    f"quantity must be 'log_z', a function of the samples or a pair of regions, "
                    f"got {quantity!r}"
                )
            return Estimate(self.log_z, self.log_z_stderr, self.pareto_k, self.khat_threshold), ""
        if isinstance(quantity, (tuple, list)) and len(quantity) == 2:
            return self._free_energy_estimate(*quantity)
        if callable(quantity) or isinstance(quantity, Tensor):
            return self._mean_estimate(self._values(quantity), False)
        raise TypeError(
            "quantity must be 'log_z', a function of the samples (or its values) or a pair "
            f"(region_a, region_b), got {type(quantity).__name__}"
        )

    def _free_energy_estimate(self, region_a, region_b) -> tuple[Estimate, str]:
        a, b = self._region(region_a), self._region(region_b)
        p_a, p_b = float((self.weights * a).sum()), float((self.weights * b).sum())
        if p_a <= 0 or p_b <= 0:
            raise ValueError(
                f"a region carries no importance weight (P(a)={p_a:.3g}, P(b)={p_b:.3g}); "
                "draw more samples or improve the proposal"
            )
        influence = self.weights * (b / p_b - a / p_a)
        stderr = float(influence.pow(2).sum().sqrt()) if self.ess >= 2 else math.nan
        k, reason = self._function_khat(torch.stack([a, b], 1))
        return Estimate(-math.log(p_b / p_a), stderr, k, self.khat_threshold), reason

    def _function_khat(self, values: Tensor) -> tuple[float, str]:
        """The larger of the weights' k-hat and that of both tails of ``values * w``, with why."""
        if math.isnan(self.pareto_k) or self.num_samples < 2:
            return math.nan, ""
        lw = self.log_weights.double()
        w = (lw - lw.max()).exp().reshape(-1, *([1] * (values.ndim - 1)))
        flat = math.sqrt(torch.finfo(self.log_weights.dtype).eps)
        hw = (values.detach().double() * w).reshape(self.num_samples, -1)
        k, reason = signed_tail_khat(hw, flat=flat)
        if math.isnan(k) or k > self.pareto_k:
            return k, reason
        return self.pareto_k, ""

    def _report(self, estimate: Estimate, what: str, reason: str) -> Estimate:
        """Warn when ``estimate`` is unreliable for a cause the construction did not report."""
        # Unreliable weights (or ESS < 2) warned once when the result was made: the same cause
        # is not repeated for every estimate drawn from it.
        if self.reliable and self.ess >= 2 and not estimate.reliable:
            cause = reason or "h(x) w(x) has a heavier tail than the weights alone"
            warnings.warn(
                f"unreliable {what}: Pareto k-hat of h(x) w(x) = {estimate.pareto_k:.3g} "
                f"({cause}), threshold {estimate.khat_threshold:.3g} for {self.num_samples} "
                f"samples, while the weights alone are reliable (k-hat {self.pareto_k:.3g}): the "
                "estimate and its standard error may be far off. Put more proposal mass where "
                "|h(x)| w(x) is large, draw more samples, or use a bounded observable",
                RuntimeWarning,
                stacklevel=3,  # caller -> estimator -> _report
            )
        return estimate

    def histogram(
        self,
        f: Callable[[Tensor], Tensor] | Tensor,
        bins: int = 50,
        range: tuple[float, float] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Reweighted histogram of a scalar observable: ``(density, stderr, edges)``.

        ``density`` integrates to the weight inside ``range`` (1 when it covers all samples);
        ``stderr`` is the per-bin delta-method error.
        """
        values = self._values(f)
        if values.ndim != 1:
            raise ValueError(f"histogram needs a scalar per sample, got {tuple(values.shape)}")
        lo, hi = (float(values.min()), float(values.max())) if range is None else range
        if not hi > lo:
            raise ValueError(f"range must satisfy low < high, got {(lo, hi)}")
        edges = torch.linspace(lo, hi, bins + 1, dtype=self.weights.dtype)
        index = ((values - lo) / (hi - lo) * bins).floor().long()
        inside = (index >= 0) & (index < bins) | (values == hi)
        index = index.clamp(0, bins - 1)
        width = (hi - lo) / bins
        onehot = torch.zeros(len(values), bins, dtype=self.weights.dtype)
        onehot[torch.arange(len(values))[inside], index[inside]] = 1.0
        # Bin indicators are bounded: their tails are no heavier than the weights', which the
        # construction checked, and a per-bin fit would flag every sparsely filled bin.
        mean, stderr = self._weighted_mean(onehot, False)
        return mean / width, stderr / width, edges

    def resample(self, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``num_samples`` samples (with replacement) in proportion to the weights."""
        num_samples = check_num_samples(num_samples)
        index = torch.multinomial(self.weights, num_samples, replacement=True, generator=generator)
        return self.samples[index]


_LOG_FLOAT_MAX = math.log(sys.float_info.max)


def _planned_samples(num_samples: int, current: float, wanted: float, k: float) -> int | float:
    """Samples for the error ``wanted`` from ``current`` at ``num_samples``, given k-hat ``k``."""
    # Below this size the threshold min(1 - 1/log10 S, 0.7) would not exceed k (S > 10^(1/(1-k))).
    minimum = max(21, math.floor(10.0 ** (1.0 / (1.0 - k))) + 1)
    if current == 0.0:  # e.g. an exact proposal: any sample with a diagnosable tail will do
        return minimum
    rate = 0.5 if k < 0.5 else 1.0 - k  # the error shrinks as N^-rate
    log_planned = math.log(num_samples) + math.log(current / wanted) / rate
    if log_planned > _LOG_FLOAT_MAX:
        return math.inf
    return max(math.ceil(math.exp(log_planned)), minimum)


def importance_weights(log_p: Tensor, log_q: Tensor) -> dict:
    """Log weights, normalised weights, Kish ESS and log Z from target and proposal log-densities.

    Non-finite target values of ``-inf`` (zero target density) get zero weight; NaN anywhere, or a
    proposal density that is not finite, is an error.

    >>> out = importance_weights(torch.zeros(4), torch.zeros(4))
    >>> out["ess"], out["log_z"]
    (4.0, 0.0)
    """
    if torch.isnan(log_p).any() or torch.isnan(log_q).any():
        raise ValueError("log-densities contain NaN (target or proposal evaluated to NaN)")
    if not torch.isfinite(log_q).all():
        raise ValueError("the proposal log-density is not finite for some samples")
    log_p = torch.where(log_p == math.inf, torch.full_like(log_p, math.nan), log_p)
    if torch.isnan(log_p).any():
        raise ValueError("the target log-density is +inf for some samples")
    num = len(log_p)
    log_weights = log_p - log_q
    if not torch.isfinite(log_weights).any():
        raise ValueError("every importance weight is zero: the target vanishes on all samples")
    # Statistics in float64: float32 sums over many samples lose the digits log Z needs.
    log_sum = torch.logsumexp(log_weights.double(), 0)
    weights64 = (log_weights.double() - log_sum).exp()
    weights = weights64.to(log_weights.dtype)
    ess = float(1.0 / weights64.pow(2).sum())
    return dict(
        log_weights=log_weights,
        weights=weights,
        ess=ess,
        ess_fraction=ess / num,
        log_z=float(log_sum) - math.log(num),
        log_z_stderr=math.sqrt(max(1.0 / ess - 1.0 / num, 0.0)) if ess >= 2 else math.inf,
    )


def importance_sample(
    proposal,
    target,
    num_samples: int,
    *,
    batch_size: int = 65536,
    generator: torch.Generator | None = None,
) -> ImportanceResult:
    """Draw ``num_samples`` from ``proposal`` and weight them towards ``target``.

    Args:
        proposal: a Flow (anything with ``sample_and_log_prob(n, generator=...)``).
        target: an Energy, a Flow, or a callable returning unnormalised log-densities ``(batch,)``.
        num_samples: number of proposals.
        batch_size: draws per chunk, bounding memory.
        generator: seeds the proposal's draws.

    Returns:
        An :class:`ImportanceResult`; it warns (RuntimeWarning) when its weights are unreliable.

    When to trust the delta-method error ``log_z_stderr = sqrt(1/ess - 1/N)`` (and the
    estimators'): it comes from the same weights, so the Pareto k-hat of the weights decides.
    Below 0.5 (finite variance) ``log_z +- 1.96 log_z_stderr`` is a 95% interval; from 0.5 to the
    threshold ``min(1 - 1 / log10(N), 0.7)`` the variance is infinite and the error bar only
    indicative; at or above it (not :attr:`~ImportanceResult.reliable`: a warning), or with
    ``ess < 2`` (error ``inf``), it means nothing: a proposal far from the target gives a
    precise-looking, badly biased log Z, which ``ess_fraction`` (from the same weights) cannot
    reveal. Reliable is necessary, not sufficient: a proposal much narrower than the target can
    have a tail that ``N`` draws do not show. :meth:`~ImportanceResult.samples_needed` plans ``N``.

    Example:
        >>> from normflows_sci.flows import NSF
        >>> from normflows_sci.distributions import StandardNormal
        >>> flow = NSF(2, transforms=1, hidden_features=(8,))
        >>> target = StandardNormal(2)  # normalised: log Z = 0, and the untrained flow is exact
        >>> result = importance_sample(flow, target, 1000, generator=torch.Generator().manual_seed(0))
        >>> round(result.ess_fraction, 6), round(result.log_z, 6)
        (1.0, 0.0)
    """
    num_samples = check_num_samples(num_samples)
    if num_samples < 1:
        raise ValueError("num_samples must be at least 1")
    batch_size = check_int("batch_size", batch_size)
    if not callable(getattr(proposal, "sample_and_log_prob", None)):
        raise TypeError(
            f"proposal must have sample_and_log_prob (a Flow), got {type(proposal).__name__}"
        )
    log_target = as_log_prob(target)
    samples, log_q, log_p = [], [], []
    with torch.no_grad():
        for start in range(0, num_samples, int(batch_size)):
            n = min(int(batch_size), num_samples - start)
            x, lq = proposal.sample_and_log_prob(n, generator=generator)
            lp = log_target(x)
            if start == 0:  # checked once: the later chunks come from the same target
                check_log_prob(lp, target, n, what="samples")
            samples.append(x)
            log_q.append(lq)
            log_p.append(lp)
    samples, log_q, log_p = torch.cat(samples), torch.cat(log_q), torch.cat(log_p)
    return ImportanceResult(
        samples=samples, log_q=log_q, log_p=log_p, **importance_weights(log_p, log_q)
    )
