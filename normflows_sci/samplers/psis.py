"""Pareto-k diagnostic and Pareto smoothing of importance weights (PSIS).

Vehtari, Simpson, Gelman, Yao and Gabry, "Pareto smoothed importance sampling" (JMLR 2024): fit a
generalised Pareto distribution (GPD) to the ``M = ceil(min(S / 5, 3 sqrt(S)))`` largest of ``S``
importance weights with the empirical-Bayes estimator of Zhang and Stephens (2009), including the
weakly informative prior that shrinks the shape towards 0.5 (the same numerics as arviz's
``psislw``). The shape estimate ``k_hat`` says how many moments the weights have: with ``k_hat``
below ``min(1 - 1 / log10(S), 0.7)`` importance-sampling estimates converge at a practical rate and
their error bars can be trusted; above it, estimates such as log Z or expectations can be far off
while reporting small standard errors. An estimate of ``E[h]`` also depends on the tail of
``h(x) w(x)``: :func:`function_khat` fits both tails of it (as the paper recommends and the ``loo``
package's ``E_loo`` does), because an unbounded ``h`` can make that tail heavier than the
weights' own.

Everything runs in float64 on the device of the input; weights are handled in log space.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

__all__ = ["function_khat", "khat_threshold", "pareto_khat", "psis_smooth"]

# Tail fits need at least this many weights strictly above the cut-off (as in arviz).
_MIN_TAIL = 5
# Zhang-Stephens prior: b scaled by the first quartile, and k shrunk to 0.5 with 10 pseudo-samples.
_PRIOR_BS = 3.0
_PRIOR_K = 10.0


def khat_threshold(num_samples: int) -> float:
    """Sample-size-dependent k-hat threshold ``min(1 - 1 / log10(S), 0.7)``.

    >>> round(khat_threshold(1000), 6), khat_threshold(10**8)
    (0.666667, 0.7)
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2, got {num_samples}")
    return min(1.0 - 1.0 / math.log10(num_samples), 0.7)


def result_threshold(num_samples: int) -> float:
    """:func:`khat_threshold`, or NaN for a single sample (no tail, hence never reliable)."""
    return khat_threshold(num_samples) if num_samples >= 2 else math.nan


def warn_unreliable(
    pareto_k: float,
    threshold: float,
    num_samples: int,
    ess: float,
    *,
    cause: str = "",
    advice: str,
    stacklevel: int = 2,
) -> None:
    """Warn (RuntimeWarning) that a result's importance weights are unreliable, naming the
    k-hat, its threshold, the sample size, the ESS, the ``cause`` (optional) and the ``advice``;
    ``stacklevel`` counts from the caller of this function (2: the caller's caller). The one
    message shared by every weighted result."""
    cause = f" ({cause})" if cause else ""
    warnings.warn(
        f"unreliable importance weights: Pareto k-hat = {pareto_k:.3g}{cause}, threshold "
        f"{threshold:.3g} for {num_samples} samples, ESS = {ess:.3g}. log Z, expectations and "
        f"their standard errors may be far off: {advice}",
        RuntimeWarning,
        stacklevel=stacklevel + 1,
    )


def _tail_size(num_samples: int) -> int:
    return math.ceil(min(num_samples / 5.0, 3.0 * math.sqrt(num_samples)))


def _check_log_weights(log_weights) -> Tensor:
    if not isinstance(log_weights, Tensor):
        raise TypeError(f"log_weights must be a torch.Tensor, got {type(log_weights).__name__}")
    if log_weights.ndim != 1 or len(log_weights) < 2:
        raise ValueError(
            f"log_weights must be 1-D with at least 2 entries, got shape {tuple(log_weights.shape)}"
        )
    if torch.isnan(log_weights).any() or (log_weights == math.inf).any():
        raise ValueError("log_weights contain NaN or +inf")
    if not torch.isfinite(log_weights).any():
        raise ValueError("log_weights are all -inf (every weight is zero)")
    return log_weights.detach().double()


def _gpd_fit(y: Tensor) -> tuple[Tensor, Tensor]:
    """Zhang-Stephens posterior-mean GPD fit to sorted positive excesses ``y``: ``(k, sigma)``."""
    n = len(y)
    m = 30 + int(n**0.5)
    grid = torch.arange(1, m + 1, dtype=y.dtype, device=y.device)
    b = 1.0 - torch.sqrt(m / (grid - 0.5))
    b = b / (_PRIOR_BS * y[int(n / 4 + 0.5) - 1]) + 1.0 / y[-1]
    k = torch.log1p(-b[:, None] * y).mean(1)
    profile = n * (torch.log(-(b / k)) - k - 1.0)
    weights = 1.0 / torch.exp(profile[None, :] - profile[:, None]).sum(1)
    keep = weights >= 10 * torch.finfo(y.dtype).eps  # drop negligible grid points
    weights, b = weights[keep], b[keep]
    b_post = (b * weights).sum() / weights.sum()
    k_post = torch.log1p(-b_post * y).mean()
    sigma = -k_post / b_post
    return (n * k_post + 0.5 * _PRIOR_K) / (n + _PRIOR_K), sigma


def _gpd_quantiles(probs: Tensor, k: Tensor, sigma: Tensor) -> Tensor:
    """Inverse GPD CDF at ``probs`` in (0, 1)."""
    if abs(float(k)) < torch.finfo(probs.dtype).eps:
        return -torch.log1p(-probs) * sigma
    return torch.expm1(-k * torch.log1p(-probs)) / k * sigma


def _fit_tail(lw: Tensor, flat: float) -> tuple[float, Tensor | None, str]:
    """k-hat of ``lw`` (float64, max subtracted) and the smoothed log weights, with a reason.

    ``flat`` is the log-weight spread below which weights count as equal (see :func:`_shifted`).
    Returns ``(k_hat, smoothed or None, reason)``; ``reason`` is empty when the fit ran.
    """
    num = len(lw)
    tail = _tail_size(num)
    if tail < _MIN_TAIL:
        reason = f"k-hat needs at least 21 weights to fit a tail of {_MIN_TAIL}, got {num}"
        return math.nan, None, reason
    order = torch.argsort(lw)
    cutoff = torch.clamp(lw[order[-tail - 1]], min=math.log(torch.finfo(lw.dtype).tiny))
    if float(lw.max() - cutoff) <= flat:
        # The M + 1 largest weights agree to working precision (e.g. an exact proposal up to
        # round-off): there is no tail, and fitting one to round-off noise would be meaningless.
        return -math.inf, None, ""
    in_tail = lw > cutoff
    if int(in_tail.sum()) < _MIN_TAIL:  # ties at the cut-off: a few weights dominate the rest
        return math.inf, None, "fewer than 5 distinct weights above the tied bulk dominate"
    tail_index = torch.nonzero(in_tail).squeeze(1)
    tail_index = tail_index[torch.argsort(lw[tail_index])]
    excess = torch.exp(lw[tail_index]) - torch.exp(cutoff)
    k, sigma = _gpd_fit(excess)
    if not (torch.isfinite(k) and torch.isfinite(sigma) and sigma > 0):
        return float(k), None, "the generalised Pareto fit failed"
    probs = (torch.arange(len(excess), dtype=lw.dtype, device=lw.device) + 0.5) / len(excess)
    smoothed = lw.clone()
    smoothed[tail_index] = torch.log(_gpd_quantiles(probs, k, sigma) + torch.exp(cutoff))
    return float(k), smoothed.clamp(max=0.0), ""


def pareto_khat(log_weights: Tensor) -> tuple[float, float]:
    """Pareto shape estimate k-hat of importance weights and its reliability threshold.

    Args:
        log_weights: ``(S,)`` log importance weights, ``S >= 2`` (unnormalised; ``-inf`` allowed
            for zero weights).

    Returns:
        ``(k_hat, threshold)``. Estimates from these weights are reliable when
        ``k_hat < threshold``. ``k_hat`` is NaN (with a RuntimeWarning) when ``S < 21`` (too few
        weights for a tail fit), ``+inf`` when a handful of weights dominate a tied bulk, and
        ``-inf`` when the ``M + 1`` largest weights agree to ``sqrt(eps)`` of the input dtype in
        log space (no tail: e.g. an exact proposal up to round-off).

    >>> lw = 0.3 * torch.randn(4000, generator=torch.Generator().manual_seed(0))  # log-normal w
    >>> k, threshold = pareto_khat(lw)
    >>> k < threshold
    True
    """
    k, reason = tail_khat(log_weights)
    if math.isnan(k):
        warnings.warn(f"pareto_khat: {reason}; k-hat is NaN", RuntimeWarning, stacklevel=2)
    return k, khat_threshold(len(log_weights))


def tail_khat(log_weights: Tensor) -> tuple[float, str]:
    """``(k_hat, reason)`` as :func:`pareto_khat` computes it, without warning: ``reason`` says
    why k-hat is NaN (empty otherwise), for callers that report it themselves."""
    k, _, reason = _fit_tail(*_shifted(log_weights))
    return k, reason


def _shifted(log_weights: Tensor) -> tuple[Tensor, float]:
    """float64 log weights with the maximum at 0, and the spread that counts as round-off."""
    lw = _check_log_weights(log_weights)
    flat = math.sqrt(torch.finfo(log_weights.dtype).eps) if log_weights.is_floating_point() else 0.0
    return lw - lw.max(), flat


def psis_smooth(log_weights: Tensor) -> tuple[Tensor, float]:
    """Pareto-smoothed, normalised log weights and k-hat.

    The ``M`` largest weights are replaced by the expected order statistics of the fitted
    generalised Pareto distribution and capped at the largest raw weight; the others are kept.
    When no tail can be fitted (see :func:`pareto_khat`) the weights are only normalised.
    Smoothing reduces the variance of estimates but cannot rescue a k-hat above the threshold.

    Args:
        log_weights: ``(S,)`` log importance weights, ``S >= 2``.

    Returns:
        ``(smoothed, k_hat)``: ``(S,)`` float64 log weights with ``logsumexp == 0`` on the input's
        device, and k-hat as in :func:`pareto_khat`.
    """
    lw, flat = _shifted(log_weights)
    k, smoothed, reason = _fit_tail(lw, flat)
    if math.isnan(k):
        warnings.warn(f"psis_smooth: {reason}; k-hat is NaN", RuntimeWarning, stacklevel=2)
    out = lw if smoothed is None else smoothed
    return out - torch.logsumexp(out, 0), k


def signed_tail_khat(values: Tensor, *, flat: float = 0.0) -> tuple[float, str]:
    """k-hat of the heavier tail of signed values, without warning: ``(k_hat, reason)``.

    Both tails of each column are fitted like the weights' tail in :func:`pareto_khat` (the
    ``M = ceil(min(S / 5, 3 sqrt(S)))`` largest values of ``values`` and of ``-values``, excesses
    over the next one) and the largest k-hat is returned. A tail whose ``M + 1`` values agree to
    ``flat`` relative to its largest magnitude (e.g. the zeros of an indicator) has no tail
    (``-inf``); fewer than 5 values above a tied cut-off give ``+inf`` (a handful dominates).

    Args:
        values: ``(S,)`` or ``(S, C)`` finite values, typically ``h(x) w(x)``; ``S >= 2``.
        flat: relative spread that counts as round-off.

    Returns:
        ``(k_hat, reason)``; ``reason`` says why k-hat is NaN or ``+inf`` (empty otherwise).
    """
    if not isinstance(values, Tensor) or values.ndim not in (1, 2) or len(values) < 2:
        got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"values must be a (S,) or (S, C) tensor with S >= 2, got {got}")
    if not torch.isfinite(values).all():
        return math.nan, "h(x) w(x) is not finite on some samples"
    columns = values.detach().double().reshape(len(values), -1)
    tail = _tail_size(len(values))
    if tail < _MIN_TAIL:
        return math.nan, f"k-hat needs at least 21 values to fit a tail of {_MIN_TAIL}"
    # The M + 1 largest of each column and of its negative: (M + 1, 2C), ascending.
    top = torch.cat([columns, -columns], 1).topk(tail + 1, dim=0).values.flip(0)
    worst, why = -math.inf, ""
    for column in top.unbind(1):  # a few columns (the components of h), never the samples
        k, reason = _signed_tail(column, flat)
        if not k <= worst:  # NaN or larger
            worst, why = k, reason
    return worst, why


def _signed_tail(top: Tensor, flat: float) -> tuple[float, str]:
    """k-hat of one tail: ``top`` holds its ``M + 1`` largest values in ascending order."""
    cutoff, largest = top[0], top[-1]
    if float(largest - cutoff) <= flat * float(top.abs().max()):
        return -math.inf, ""
    excess = top[1:][top[1:] > cutoff] - cutoff
    if len(excess) < _MIN_TAIL:
        return math.inf, "fewer than 5 values of h(x) w(x) above a tied bulk dominate the estimate"
    k, sigma = _gpd_fit(excess)
    if not (torch.isfinite(k) and torch.isfinite(sigma) and sigma > 0):
        return math.nan, "the generalised Pareto fit to h(x) w(x) failed"
    return float(k), ""


def function_khat(values: Tensor, log_weights: Tensor) -> tuple[float, float]:
    """k-hat of an importance-sampling estimate of ``E[h]`` and its reliability threshold.

    The estimate converges like the heavier of the weights' tail and the tails of ``h(x) w(x)``
    (Vehtari et al. 2024): k-hat is the largest of :func:`pareto_khat` of the weights
    and :func:`signed_tail_khat` of ``h(x) w(x)`` (both of its tails, for each component of ``h``).
    A bounded ``h`` cannot make the tail heavier; an unbounded one can, under a fine proposal.

    Args:
        values: ``(S,)`` or ``(S, C)`` values ``h(x)`` of the samples.
        log_weights: ``(S,)`` log importance weights (unnormalised; ``-inf`` for zero weights).

    Returns:
        ``(k_hat, threshold)``: the estimate is reliable when ``k_hat < threshold``; k-hat is NaN
        (with a RuntimeWarning) when it cannot be fitted (fewer than 21 samples, non-finite
        ``h(x) w(x)``).

    >>> x = 1.5 * torch.randn(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> lw = -0.5 * x**2 + 0.5 * (x / 1.5) ** 2  # N(0, 1) target, N(0, 1.5^2) proposal
    >>> k_bounded, threshold = function_khat(torch.tanh(x), lw)
    >>> k_heavy, _ = function_khat(x.abs() ** -0.9, lw)  # E_p finite, variance infinite
    >>> bool(k_bounded < threshold < k_heavy)
    True
    """
    lw, flat = _shifted(log_weights)
    if not isinstance(values, Tensor) or values.shape[:1] != lw.shape:
        raise ValueError(
            f"values must be a tensor with one row per weight ({len(lw)}), got "
            f"{tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__}"
        )
    k_w, _, reason = _fit_tail(lw, flat)
    w = lw.exp().reshape(-1, *([1] * (values.ndim - 1)))
    k_hw, reason_hw = signed_tail_khat(
        (values.detach().double() * w).reshape(len(lw), -1), flat=flat
    )
    k, why = (k_w, reason) if math.isnan(k_w) or k_w >= k_hw else (k_hw, reason_hw)
    if math.isnan(k_hw):
        k, why = k_hw, reason_hw
    if math.isnan(k):
        warnings.warn(f"function_khat: {why}; k-hat is NaN", RuntimeWarning, stacklevel=2)
    return k, khat_threshold(len(lw))
