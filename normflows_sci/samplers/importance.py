"""Importance sampling with a flow proposal: weights, ESS, log Z and reweighted estimates.

For samples ``x ~ q`` and an unnormalised target ``p~(x) = exp(-u(x))`` the log importance weight is
``log w = log p~(x) - log q(x)``. Everything is computed in log space. Error bars use the delta
method for self-normalised estimators, which is accurate only when the weights have a light enough
tail. Every :class:`ImportanceResult` therefore carries the Pareto-k diagnostic of its weights
(:func:`~normflows_sci.samplers.psis.pareto_khat`) and warns once when k-hat is not below its
sample-size-dependent threshold; with an ESS below 2 the standard errors are NaN, never 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from normflows_sci.checks import check_int, check_num_samples
from normflows_sci.samplers.psis import khat_threshold, psis_smooth, tail_khat
from normflows_sci.samplers.targets import as_log_prob, check_log_prob

__all__ = ["ImportanceResult", "importance_sample", "importance_weights"]


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
    or ``ess < 2``; the estimators then still return numbers, which may be far off.
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
            object.__setattr__(self, "khat_threshold", _threshold(self.num_samples))
        if not self.reliable or self.ess < 2:
            self._warn(reason)

    @property
    def reliable(self) -> bool:
        """Whether k-hat is below its threshold (NaN k-hat, too few samples, is unreliable)."""
        return not math.isnan(self.pareto_k) and self.pareto_k < self.khat_threshold

    def _warn(self, reason: str) -> None:
        cause = f" ({reason})" if reason else ""
        warnings.warn(
            f"unreliable importance weights: Pareto k-hat = {self.pareto_k:.3g}{cause}, "
            f"threshold {self.khat_threshold:.3g} for {self.num_samples} samples, "
            f"ESS = {self.ess:.3g}. log Z, expectations and their standard errors may be far "
            "off: draw more samples, improve (train) the proposal, or use a wider / tempered "
            "proposal",
            RuntimeWarning,
            stacklevel=5,  # importance_sample -> __init__ -> __post_init__ -> _warn
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
    ) -> tuple[Tensor, Tensor]:
        """Self-normalised estimate of ``E_p[f(x)]`` and its standard error.

        The error bar is trustworthy only when :attr:`reliable`; with ``ess < 2`` it is NaN.

        Args:
            f: a function of the samples returning ``(N, ...)``, or those values directly.
            smooth: weight with the Pareto-smoothed weights
                (:func:`~normflows_sci.samplers.psis.psis_smooth`): lower variance, same k-hat.

        Returns:
            ``(mean, stderr)`` with the trailing shape of ``f``'s values.
        """
        values = self._values(f)
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

    def probability(self, region: Callable[[Tensor], Tensor] | Tensor) -> tuple[float, float]:
        """Probability of a region (boolean per sample, or a function giving it) with its error."""
        mean, stderr = self.expectation(self._region(region))
        return float(mean), float(stderr)

    def _region(self, region) -> Tensor:
        mask = self._values(region)
        if mask.ndim != 1:
            raise ValueError(f"a region must give one boolean per sample, got {tuple(mask.shape)}")
        return mask.to(self.weights.dtype)

    def free_energy_difference(self, region_a, region_b) -> tuple[float, float]:
        """``F_b - F_a = -log(P(b) / P(a))`` in units of kT, with a delta-method standard error.

        Args:
            region_a, region_b: boolean per sample, or functions of the samples returning it.

        Raises:
            ValueError: a region holds no weight (the estimate would be infinite).
        """
        a, b = self._region(region_a), self._region(region_b)
        p_a, p_b = float((self.weights * a).sum()), float((self.weights * b).sum())
        if p_a <= 0 or p_b <= 0:
            raise ValueError(
                f"a region carries no importance weight (P(a)={p_a:.3g}, P(b)={p_b:.3g}); "
                "draw more samples or improve the proposal"
            )
        influence = self.weights * (b / p_b - a / p_a)
        stderr = float(influence.pow(2).sum().sqrt()) if self.ess >= 2 else math.nan
        return -math.log(p_b / p_a), stderr

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
        mean, stderr = self.expectation(onehot)
        return mean / width, stderr / width, edges

    def resample(self, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``num_samples`` samples (with replacement) in proportion to the weights."""
        num_samples = check_num_samples(num_samples)
        index = torch.multinomial(self.weights, num_samples, replacement=True, generator=generator)
        return self.samples[index]


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


def _threshold(num_samples: int) -> float:
    # One sample has no threshold; NaN makes it unreliable.
    return khat_threshold(num_samples) if num_samples >= 2 else math.nan


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

    The delta-method standard error ``log_z_stderr`` (and those of the estimators) can be trusted
    only when the result is :attr:`~ImportanceResult.reliable`, i.e. the Pareto k-hat of the
    weights is below ``min(1 - 1 / log10(N), 0.7)``. Above it the weights' variance is infinite or
    so large that a finite sample misses the mass of the target: log Z can be wrong by many
    standard errors (a proposal far from the target gives a precise-looking, badly biased log Z).
    ``ess_fraction`` alone cannot tell: it is computed from the same weights.

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
