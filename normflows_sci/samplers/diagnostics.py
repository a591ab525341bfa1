"""MCMC diagnostics for many chains at once: autocorrelation, tau, ESS, split R-hat, mode statistics.

Every function takes a trace ``x`` of shape ``(draws, chains, *event)`` (the layout of
:class:`normflows_sci.samplers.run.Trace`), works on whatever device and dtype ``x`` has, and is
vectorised over chains and event dimensions: the only Python loops are over memory blocks of
columns, so 100k chains do not need 100k iterations nor one giant FFT buffer.

Conventions (the same as Stan and ArviZ):

* Autocovariances use the biased estimator ``c_k = (1/n) sum_t (x_t - mean)(x_{t+k} - mean)``,
  computed by FFT with zero padding to at least ``2n`` so there is no circular wrap-around.
* The integrated autocorrelation time is ``tau = 1 + 2 sum_{k>=1} rho_k``: ``tau = 1`` for
  i.i.d. draws, ``tau = (1 + r) / (1 - r)`` for an AR(1) chain with coefficient ``r``, and
  ``tau < 1`` for antithetic chains. ``ESS = draws * chains / tau``.
* The pooled (multi-chain) autocorrelation is the one of Vehtari et al. (2021), eq. 10:
  ``rho_k = 1 - (W - mean_chains(c_k)) / var_plus`` with ``W`` the mean within-chain variance
  (``ddof=1``) and ``var_plus = (n - 1)/n W + B/n`` including the between-chain variance ``B/n``, so
  chains sitting at different places lower the ESS.
* Split diagnostics cut every chain into its first and last ``draws // 2`` draws (the middle draw
  of an odd count is dropped) and treat the halves as separate chains.

References: Geyer (1992), "Practical Markov chain Monte Carlo"; Sokal (1997), "Monte Carlo methods in
statistical mechanics"; Gelman et al. (2013), "Bayesian Data Analysis", 3rd ed. (split R-hat);
Vehtari, Gelman, Simpson, Carpenter, Buerkner (2021), "Rank-normalization, folding, and
localization: an improved R-hat for assessing convergence of MCMC".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from normflows_sci.checks import check_int, check_positive

__all__ = [
    "ModeOccupancy",
    "autocorrelation",
    "integrated_autocorrelation_time",
    "effective_sample_size",
    "ess_per_second",
    "split_rhat",
    "mode_occupancy",
    "mode_weight_error",
    "count_mode_switches",
    "to_inference_data",
]

# Largest number of complex FFT entries held at once (2^24 complex128 = 256 MiB).
_FFT_BUDGET = 1 << 24
# Sokal's estimate is trusted for series longer than this many tau (emcee's default tolerance).
_SOKAL_MIN_LENGTH = 50


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------


def _check_trace(x, name: str = "x", min_draws: int = 2) -> Tensor:
    """Check ``x`` is a finite ``(draws, chains, *event)`` tensor; return it as a float tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (draws, chains, *event), got "
            f"{type(x).__name__}"
        )
    if x.is_complex():
        raise TypeError(f"{name} must be real (float, integer or bool), got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have shape (draws, chains, *event) (at least 2 dimensions), "
            f"got shape {tuple(x.shape)}"
        )
    if x.shape[0] < min_draws:
        raise ValueError(
            f"{name} must have at least {min_draws} draws (dimension 0), got shape {tuple(x.shape)}"
        )
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    x = x.detach()
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    elif x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # FFTs and ndtri need at least single precision
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"{name} contains NaN or inf values ({bad} of {x.numel()} entries)")
    return x


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _check_labels(labels, name: str = "labels") -> Tensor:
    if not isinstance(labels, Tensor):
        raise TypeError(
            f"{name} must be an integer torch.Tensor of shape (draws, chains), got "
            f"{type(labels).__name__}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    if labels.ndim != 2 or labels.numel() == 0:
        raise ValueError(
            f"{name} must have shape (draws, chains) with draws, chains >= 1, got "
            f"shape {tuple(labels.shape)}"
        )
    if bool((labels < 0).any()):
        raise ValueError(
            f"{name} must be non-negative mode indices, got minimum {int(labels.min())}"
        )
    return labels.detach().long()


# --------------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------------


def _fast_len(target: int) -> int:
    """Smallest 5-smooth integer (2^a 3^b 5^c) >= ``target``: a fast FFT length."""
    best = 1 << max(target - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < target:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _blocks(total: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, total)) for i in range(0, total, size)]


def _autocovariance(y: Tensor) -> Tensor:
    """Biased autocovariance ``(n, ...)`` of every column of ``y: (n, ...)`` along dim 0, by FFT.

    Zero padding to at least ``2n`` removes the circular wrap-around; columns that are exactly
    constant get exactly zero autocovariance.
    """
    n = y.shape[0]
    centred = y - y.mean(0, keepdim=True)
    constant = (y.amax(0) == y.amin(0)).unsqueeze(0)
    centred = torch.where(constant, torch.zeros_like(centred), centred)
    m = _fast_len(2 * n)
    spectrum = torch.fft.rfft(centred, n=m, dim=0)
    power = spectrum.real.square() + spectrum.imag.square()
    return torch.fft.irfft(power, n=m, dim=0)[:n] / n


def _split(y: Tensor) -> Tensor:
    """``(n, G, B) -> (n // 2, 2G, B)``: first and last halves of every chain as separate chains."""
    half = y.shape[0] // 2
    return torch.cat([y[:half], y[y.shape[0] - half :]], dim=1)


def _rank_dtype(values: Tensor) -> torch.dtype:
    # Ranks of millions of draws and their probabilities need float64 (float32 rounds the top rank
    # to probability 1 and the normal score to inf); MPS has no float64.
    return torch.float32 if values.device.type == "mps" else torch.float64


def _average_ranks(values: Tensor) -> Tensor:
    """Average (1-based) ranks of the entries of ``values: (B, S)``, each row sorted ascending; tied
    entries share the mean of their positions (scipy's ``rankdata(method="average")``)."""
    size = values.shape[1]
    position = torch.arange(size, device=values.device).expand_as(values)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    ends = torch.ones_like(values, dtype=torch.bool)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, position, torch.zeros_like(position)).cummax(1).values
    last = torch.where(ends, position, torch.full_like(position, size)).flip(1).cummin(1)
    return (first + last.values.flip(1)).to(_rank_dtype(values)) / 2 + 1


def _z_scale(y: Tensor, with_median: bool = False):
    """Rank-normalise ``y: (n, G, B)`` over its draws and chains, per column ``B``: average ranks
    ``r`` of the ``S = n G`` values mapped to ``Phi^-1((r - 3/8) / (S + 1/4))`` (Blom's offset, as
    Vehtari et al. 2021 and ArviZ). With ``with_median`` also return the ``(B,)`` medians (mean of
    the two middle values for an even count, as numpy), from the same sort."""
    n, groups, cols = y.shape
    rows = y.reshape(n * groups, cols).T  # (B, S): sort along the contiguous dimension
    values, order = torch.sort(rows.contiguous(), dim=1)
    size = values.shape[1]
    probability = (_average_ranks(values) - 0.375) / (size + 0.25)
    z_sorted = torch.special.ndtri(probability).to(y.dtype)
    z = torch.empty_like(z_sorted).scatter_(1, order, z_sorted)
    z = z.T.reshape(n, groups, cols)
    if not with_median:
        return z
    median = (values[:, (size - 1) // 2] + values[:, size // 2]) / 2
    return z, median


def _pooled_rho(y: Tensor) -> tuple[Tensor, Tensor]:
    """Multi-chain autocorrelation of ``y: (n, G, B)``: pools the ``G`` chains of each column ``B``.

    Returns ``(rho, constant)``: ``rho`` of shape ``(n, B)`` (``rho[0] = 1``) following Vehtari et
    al. (2021) eq. 10, and a ``(B,)`` mask of columns whose draws are all equal.
    """
    n, groups, cols = y.shape
    m = _fast_len(2 * n)
    block_b = max(1, min(cols, _FFT_BUDGET // m))
    block_g = max(1, min(groups, _FFT_BUDGET // (m * block_b)))
    rhos = []
    for sb in _blocks(cols, block_b):
        total = torch.zeros(n, sb.stop - sb.start, dtype=y.dtype, device=y.device)
        for sg in _blocks(groups, block_g):
            total = total + _autocovariance(y[:, sg, sb]).sum(1)
        mean_acov = total / groups
        mean_var = mean_acov[0] * n / (n - 1)
        var_plus = mean_acov[0]
        if groups > 1:
            var_plus = var_plus + y[:, :, sb].mean(0).var(0)
        rho = 1 - (mean_var - mean_acov) / var_plus
        rho[0] = 1
        rhos.append(rho)
    flat = y.reshape(n * groups, cols)
    constant = flat.amax(0) == flat.amin(0)
    return torch.cat(rhos, dim=1), constant


def _geyer_tau(rho: Tensor) -> Tensor:
    """Geyer's initial monotone positive sequence estimate of ``tau`` for every column of
    ``rho: (n, B)`` (``rho[0] = 1``), exactly as Stan and ArviZ compute it.

    Pair sums ``P_m = rho_2m + rho_2m+1`` are summed while positive (pairs ``m < n/2 - 1``), made
    monotone non-increasing (running minimum), and ``tau = -1 + 2 sum_{m<K} P_m + rho_2K`` where
    ``K`` is the first non-positive pair (Stan's "improved estimate" adds the even term of pair
    ``K`` when it is positive or its pair is non-negative).
    """
    n = rho.shape[0]
    last_pair = max(0, (n - 3) // 2)  # pairs 1..last_pair are examined, as Stan's loop bound
    even = rho[0 : 2 * last_pair + 1 : 2]
    odd = rho[1 : 2 * last_pair + 2 : 2]
    if odd.shape[0] < even.shape[0]:  # n < 2: no lag 1
        odd = torch.cat([odd, torch.zeros_like(even[:1])])
    pairs = even + odd  # (last_pair + 1, B)
    stop = pairs <= 0
    first_stop = torch.where(
        stop.any(0),
        stop.to(torch.int8).argmax(0),
        torch.full_like(stop[0], last_pair, dtype=torch.long),
    )
    first_stop = first_stop.clamp(max=last_pair)
    monotone = pairs.cummin(0).values
    cumulative = torch.cat([torch.zeros_like(monotone[:1]), monotone.cumsum(0)])
    head = cumulative.gather(0, first_stop.unsqueeze(0)).squeeze(0)
    last_even = even.gather(0, first_stop.unsqueeze(0)).squeeze(0)
    last_sum = pairs.gather(0, first_stop.unsqueeze(0)).squeeze(0)
    extra = torch.where((last_even > 0) | (last_sum >= 0), last_even, torch.zeros_like(last_even))
    return -1 + 2 * head + extra


def _sokal_tau(rho: Tensor, c: float) -> Tensor:
    """Sokal's self-consistent window: ``tau(M) = 1 + 2 sum_{1<=k<=M} rho_k`` at the smallest
    ``M >= 1`` with ``M >= c tau(M)``, and a warning where the series is shorter than
    ``_SOKAL_MIN_LENGTH tau``."""
    n = rho.shape[0]
    taus = 2 * rho.cumsum(0) - 1
    lags = torch.arange(n, device=rho.device, dtype=rho.dtype).unsqueeze(1)
    ok = (lags >= c * taus) & (lags >= 1)
    # The biased autocovariances of a centred series sum to zero over all lags, so tau(n - 1) = 0
    # and a window always exists; it is only trustworthy when M << n.
    window = torch.where(
        ok.any(0), ok.to(torch.int8).argmax(0), torch.full_like(ok[0], n - 1, dtype=torch.long)
    )
    tau = taus.gather(0, window.unsqueeze(0)).squeeze(0)
    short = int((n < _SOKAL_MIN_LENGTH * tau).sum())
    if short:
        warnings.warn(
            f"{short} of {tau.numel()} series are shorter than {_SOKAL_MIN_LENGTH} tau "
            f"({n} draws): Sokal's tau estimate is unreliable; run longer chains.",
            RuntimeWarning,
            stacklevel=3,
        )
    return tau


def _as_groups(x: Tensor, pooled: bool) -> Tensor:
    """``(draws, chains, *event) -> (draws, G, B)``: all chains pooled per event entry, or each
    chain on its own (``G = 1``)."""
    draws, chains = x.shape[:2]
    if pooled:
        return x.reshape(draws, chains, -1)
    return x.reshape(draws, 1, -1)


def _per_chain_rho(x: Tensor, max_lag: int) -> Tensor:
    """Normalised autocorrelation ``(max_lag + 1, cols)`` of every column of ``x: (n, cols)``,
    computed in column blocks; NaN for constant columns."""
    n, cols = x.shape
    block = max(1, min(cols, _FFT_BUDGET // _fast_len(2 * n)))
    out = torch.empty(max_lag + 1, cols, dtype=x.dtype, device=x.device)
    for sl in _blocks(cols, block):
        acov = _autocovariance(x[:, sl])[: max_lag + 1]
        out[:, sl] = acov / acov[:1]  # 0 / 0 = NaN for constant columns
    return out


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


def autocorrelation(x: Tensor, max_lag: int | None = None) -> Tensor:
    """Normalised autocorrelation function of every chain and dimension, by FFT.

    ``rho_k = c_k / c_0`` with the biased autocovariance ``c_k`` of each chain (mean removed per
    chain); zero padding to at least twice the length avoids circular wrap-around.

    Args:
        x: trace ``(draws, chains, *event)`` (at least 2 draws).
        max_lag: largest lag returned (default ``draws - 1``), ``0 <= max_lag < draws``.

    Returns:
        ``(max_lag + 1, chains, *event)`` with ``rho_0 = 1``. A chain that never moves in some
        dimension has an undefined autocorrelation: NaN there.

    Raises:
        TypeError, ValueError: ``x`` is not a finite real tensor of at least 2 dimensions with at
            least 2 draws, or ``max_lag`` is out of range.

    Example:
        >>> x = torch.tensor([1.0, -1.0, 1.0, -1.0]).reshape(4, 1)
        >>> autocorrelation(x, max_lag=2).squeeze(1)
        tensor([ 1.0000, -0.7500,  0.5000])
    """
    x = _check_trace(x, min_draws=2)
    draws = x.shape[0]
    if max_lag is None:
        max_lag = draws - 1
    if isinstance(max_lag, bool) or not isinstance(max_lag, int) or not 0 <= max_lag < draws:
        raise ValueError(
            f"max_lag must be an integer in [0, {draws - 1}] (draws - 1), got {max_lag!r}"
        )
    rho = _per_chain_rho(x.reshape(draws, -1), max_lag)
    return rho.reshape(max_lag + 1, *x.shape[1:])


def integrated_autocorrelation_time(
    x: Tensor, method: str = "geyer", c: float = 5.0, pooled: bool = False
) -> Tensor:
    """Integrated autocorrelation time ``tau = 1 + 2 sum_{k>=1} rho_k`` per chain or pooled.

    Two truncation rules for the noisy tail of the autocorrelation:

    * ``"geyer"``: Geyer's initial monotone positive sequence, exactly as Stan/ArviZ (pair sums
      ``rho_2m + rho_2m+1`` kept while positive and forced non-increasing). No tuning; can give
      ``tau < 1`` for antithetic chains.
    * ``"sokal"``: Sokal's automatic window, ``tau(M)`` at the smallest ``M >= 1`` with
      ``M >= c tau(M)``; needs ``draws`` well above ``c tau`` (a ``RuntimeWarning`` is raised for
      series shorter than ``50 tau``, emcee's tolerance). The rule assumes positively
      correlated chains: for antithetic chains (``rho_1 < 0``) it stops at ``M = 1`` and
      underestimates ``tau``; use ``"geyer"`` there.

    With ``pooled=False`` each chain uses its own autocorrelation (:func:`autocorrelation`); with
    ``pooled=True`` the chains' autocovariances are averaged and the between-chain variance enters
    as in Stan/ArviZ (Vehtari et al. 2021 eq. 10), giving one ``tau`` per dimension. No chain
    splitting and no rank normalisation here (see :func:`effective_sample_size`).

    Args:
        x: trace ``(draws, chains, *event)``, at least 4 draws.
        method: ``"geyer"`` or ``"sokal"``.
        c: Sokal's window constant (5 is customary; ignored by ``"geyer"``).
        pooled: one ``tau`` per dimension from all chains instead of one per chain.

    Returns:
        ``(chains, *event)`` (per chain) or ``(*event)`` (pooled). ``tau = 1`` for i.i.d. draws and
        ``(1 + r) / (1 - r)`` for an AR(1) chain with coefficient ``r``. NaN for a chain that never
        moves (per chain); ``1`` where all draws of all chains are equal (pooled).

    Example:
        >>> x = torch.randn(1000, 8, generator=torch.Generator().manual_seed(0))
        >>> tau = integrated_autocorrelation_time(x, pooled=True)
        >>> bool(0.8 < tau < 1.2)
        True
    """
    x = _check_trace(x, min_draws=4)
    if method not in ("geyer", "sokal"):
        raise ValueError(f"method must be 'geyer' or 'sokal', got {method!r}")
    c = check_positive("c", c)
    pooled = _check_bool("pooled", pooled)
    draws = x.shape[0]
    if pooled:
        rho, constant = _pooled_rho(_as_groups(x, pooled=True))
    else:
        flat = x.reshape(draws, -1)
        rho = _per_chain_rho(flat, draws - 1)
        constant = flat.amax(0) == flat.amin(0)
    tau = _geyer_tau(rho) if method == "geyer" else _sokal_tau(rho, c)
    fill = 1.0 if pooled else math.nan
    tau = torch.where(constant, torch.full_like(tau, fill), tau)
    return tau.reshape(x.shape[2:] if pooled else x.shape[1:])


def effective_sample_size(
    x: Tensor, pooled: bool = True, rank_normalized: bool = False, split: bool = True
) -> Tensor:
    """Effective sample size ``ESS = N / tau`` (Stan / ArviZ / Vehtari et al. 2021).

    The chains (split in halves when ``split``, rank-normalised when ``rank_normalized``) are
    pooled with the multi-chain autocorrelation that includes the between-chain variance, and
    ``tau`` is Geyer's initial monotone positive sequence estimate; ``N`` is the number of draws
    used (``2 (draws // 2) chains`` when split). As in Stan, ``tau`` is floored at
    ``1 / log10(N)`` (``ESS <= N log10 N``), and a dimension whose draws are all equal gets
    ``ESS = N``.

    ArviZ equivalents: ``split=True`` is ``arviz.ess(method="mean")``; with ``rank_normalized=True``
    it is the bulk ESS ``arviz.ess(method="bulk")``; ``split=False`` is ``method="identity"``.

    Args:
        x: trace ``(draws, chains, *event)``, at least 4 draws.
        pooled: one ESS per dimension from all chains (default), or one per chain: each chain
            treated as a one-chain trace with the same estimator (so
            ``effective_sample_size(x, pooled=False)[i] == effective_sample_size(x[:, i:i+1])``).
        rank_normalized: replace the draws by normal scores of their ranks over all (pooled) or
            each (per chain) chain's draws: robust to heavy tails, but then the ESS is that of
            the bulk, not of the mean.
        split: split every chain into halves first (detects drift within a chain).

    Returns:
        ``(*event)`` (pooled) or ``(chains, *event)`` (per chain), in ``x``'s dtype.

    Example:
        >>> x = torch.randn(1000, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        >>> ess = effective_sample_size(x)
        >>> bool(7000 < ess < 9000)
        True
    """
    x = _check_trace(x, min_draws=4)
    pooled = _check_bool("pooled", pooled)
    rank_normalized = _check_bool("rank_normalized", rank_normalized)
    split = _check_bool("split", split)
    y = _as_groups(x, pooled)
    if split:
        y = _split(y)
    if rank_normalized:
        y = _z_scale(y)
    total = y.shape[0] * y.shape[1]
    rho, constant = _pooled_rho(y)
    tau = _geyer_tau(rho).clamp(min=1 / math.log10(total))
    ess = total / tau
    ess = torch.where(constant, torch.full_like(ess, float(total)), ess)
    return ess.reshape(x.shape[2:] if pooled else x.shape[1:])


def ess_per_second(x: Tensor, seconds: float, **options) -> Tensor:
    """Effective samples per second of sampling: :func:`effective_sample_size` / ``seconds``.

    Args:
        x: trace ``(draws, chains, *event)``.
        seconds: wall time that produced the trace (e.g. ``Trace.seconds``), positive.
        **options: passed to :func:`effective_sample_size` (``pooled``, ``rank_normalized``,
            ``split``).

    Example:
        >>> x = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
        >>> bool(torch.isclose(ess_per_second(x, 2.0), effective_sample_size(x) / 2))
        True
    """
    seconds = check_positive("seconds", seconds)
    return effective_sample_size(x, **options) / seconds


def _rhat(y: Tensor) -> Tensor:
    """Potential scale reduction of ``y: (n, G, B)`` with ``G >= 2`` chains, per column."""
    n = y.shape[0]
    constant = y.amax(0) == y.amin(0)
    within_each = torch.where(constant, torch.zeros_like(y[0]), y.var(0))
    within = within_each.mean(0)
    between = n * y.mean(0).var(0)
    return torch.sqrt((between / within + n - 1) / n)


def split_rhat(x: Tensor, rank_normalized: bool = False) -> Tensor:
    """Split R-hat per dimension (BDA3), or its rank-normalised version (Vehtari et al. 2021).

    Every chain is split into its first and last ``draws // 2`` draws, and with ``n`` draws per
    half-chain, ``W`` the mean within-half variance (``ddof=1``) and ``B / n`` the variance of the
    half-chain means: ``R-hat = sqrt(((n - 1)/n W + B/n) / W)``. With ``rank_normalized=True`` it is
    ``max(R-hat of the rank-normalised draws, R-hat of the rank-normalised |draws - median|)``
    (bulk and tail). Values near 1 (Vehtari et al. recommend ``< 1.01``) indicate mixing.

    ArviZ equivalents: ``arviz.rhat(method="split")`` and ``arviz.rhat(method="rank")``. A single
    chain is allowed (its two halves are compared); ArviZ returns NaN for it.

    Args:
        x: trace ``(draws, chains, *event)``, at least 4 draws.
        rank_normalized: use the rank-normalised, folded version.

    Returns:
        ``(*event)``. ``inf`` where every half-chain is constant but they differ; NaN where all
        draws are equal.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> mixed = torch.randn(500, 4, generator=g)
        >>> bool(split_rhat(mixed) < 1.02)
        True
        >>> stuck = mixed + torch.tensor([0.0, 0.0, 0.0, 3.0])  # one chain elsewhere
        >>> bool(split_rhat(stuck) > 1.1)
        True
    """
    x = _check_trace(x, min_draws=4)
    rank_normalized = _check_bool("rank_normalized", rank_normalized)
    y = _split(_as_groups(x, pooled=True))
    if rank_normalized:
        z, median = _z_scale(y, with_median=True)
        folded = (y - median).abs()  # |draws - median| measures the tails
        rhat = torch.maximum(_rhat(z), _rhat(_z_scale(folded)))
    else:
        rhat = _rhat(y)
    return rhat.reshape(x.shape[2:])


class ModeOccupancy(NamedTuple):
    """Fractions of samples in each mode.

    Attributes:
        per_draw: ``(draws, num_modes)``: fraction of chains in each mode at each draw.
        overall: ``(num_modes,)``: fraction over all draws and chains.
    """

    per_draw: Tensor
    overall: Tensor


def _mode_counts(labels: Tensor, num_modes: int) -> Tensor:
    draws = labels.shape[0]
    offsets = num_modes * torch.arange(draws, device=labels.device).unsqueeze(1)
    counts = torch.bincount((labels + offsets).flatten(), minlength=draws * num_modes)
    return counts.reshape(draws, num_modes)


def mode_occupancy(labels: Tensor, num_modes: int) -> ModeOccupancy:
    """Fraction of chains in each mode at every draw, and overall.

    Args:
        labels: ``(draws, chains)`` integer mode index of every sample, in ``[0, num_modes)``.
        num_modes: number of modes (a positive integer).

    Returns:
        :class:`ModeOccupancy` ``(per_draw, overall)`` in the default float dtype, on
        ``labels``' device.

    Example:
        >>> labels = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
        >>> occupancy = mode_occupancy(labels, 2)
        >>> occupancy.per_draw
        tensor([[0.5000, 0.5000],
                [0.2500, 0.7500]])
        >>> occupancy.overall
        tensor([0.3750, 0.6250])
    """
    num_modes = check_int("num_modes", num_modes)
    labels = _check_labels(labels)
    if int(labels.max()) >= num_modes:
        raise ValueError(
            f"labels must be < num_modes = {num_modes}, got maximum {int(labels.max())}"
        )
    draws, chains = labels.shape
    counts = _mode_counts(labels, num_modes).to(torch.get_default_dtype())
    return ModeOccupancy(counts / chains, counts.sum(0) / (draws * chains))


def mode_weight_error(labels: Tensor, true_weights) -> float:
    """Largest absolute error between empirical and true mode weights.

    The empirical weight of mode ``k`` is the fraction of all samples (draws and chains) with label
    ``k``.

    Args:
        labels: ``(draws, chains)`` integer mode index of every sample.
        true_weights: ``(num_modes,)`` non-negative weights summing to 1 (tensor or sequence);
            ``num_modes`` must exceed every label.

    Returns:
        ``max_k |empirical_k - true_k|`` as a float.

    Example:
        >>> labels = torch.tensor([[0, 1], [0, 0]])
        >>> mode_weight_error(labels, [0.5, 0.5])
        0.25
    """
    labels = _check_labels(labels)
    weights = torch.as_tensor(true_weights, dtype=torch.float64).detach()
    if weights.ndim != 1 or weights.numel() == 0:
        raise ValueError(
            f"true_weights must be a non-empty 1-D sequence of mode weights, got shape "
            f"{tuple(weights.shape)}"
        )
    if (
        not bool(torch.isfinite(weights).all())
        or bool((weights < 0).any())
        or abs(float(weights.sum()) - 1) > 1e-6
    ):
        raise ValueError(f"true_weights must be non-negative and sum to 1, got {weights.tolist()}")
    occupancy = mode_occupancy(labels, weights.numel()).overall
    return float((occupancy.to(weights.device, torch.float64) - weights).abs().max())


def count_mode_switches(labels: Tensor) -> Tensor:
    """Number of mode changes along each chain (draws ``t`` with ``labels[t] != labels[t-1]``).

    Args:
        labels: ``(draws, chains)`` integer mode index of every sample.

    Returns:
        ``(chains,)`` int64.

    Example:
        >>> count_mode_switches(torch.tensor([[0, 1], [1, 1], [0, 1]]))
        tensor([2, 0])
    """
    labels = _check_labels(labels)
    return (labels[1:] != labels[:-1]).sum(0)


def _to_numpy(value: Tensor):
    value = value.detach()
    if value.dtype in (torch.float16, torch.bfloat16):
        value = value.float()
    return value.cpu().numpy()


def _stat_tensor(name: str, value, draws: int, chains: int) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if tuple(value.shape) not in ((draws, chains), (chains,)):
        raise ValueError(
            f"{name} must have shape (draws, chains) = ({draws}, {chains}) or "
            f"(chains,) = ({chains},), got {tuple(value.shape)}"
        )
    return value


def _posterior_variables(samples, names) -> dict[str, Tensor]:
    """The posterior variables of :func:`to_inference_data`: ``name -> (draws, chains, ...)``."""
    if isinstance(samples, Mapping):
        if names is not None:
            raise ValueError(
                "names must be None when samples is a mapping (its keys are the names)"
            )
        if not samples:
            raise ValueError("samples must not be an empty mapping")
        return {
            str(k): _check_trace(v, name=f"samples[{k!r}]", min_draws=1) for k, v in samples.items()
        }
    x = _check_trace(samples, name="samples", min_draws=1)
    if names is None or isinstance(names, str):
        return {names or "x": x}
    names = list(names)
    if x.ndim < 3 or x.shape[-1] != len(names):
        raise ValueError(
            f"names must give one name per entry of the last event dimension "
            f"of samples (shape {tuple(x.shape)}), got {len(names)} names"
        )
    if len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"names must be distinct strings, got {names!r}")
    return {n: x[..., i] for i, n in enumerate(names)}


def _sample_stats(log_prob, acceptance, draws: int, chains: int) -> tuple[dict, dict]:
    """``(per_draw, per_chain)`` numpy sample statistics of :func:`to_inference_data`, in ArviZ's
    naming and ``(chain, draw)`` / ``(chain,)`` layout."""
    per_draw, per_chain = {}, {}
    if log_prob is not None:
        lp = _stat_tensor("log_prob", log_prob, draws, chains)
        if lp.shape != (draws, chains):
            raise ValueError(
                f"log_prob must have shape (draws, chains) = ({draws}, {chains}), got "
                f"{tuple(lp.shape)}"
            )
        per_draw["lp"] = _to_numpy(lp.movedim(0, 1))
    if acceptance is not None:
        items = acceptance.items() if isinstance(acceptance, Mapping) else [(None, acceptance)]
        for kind, value in items:
            key = "acceptance_rate" if kind is None else f"acceptance_rate_{kind}"
            label = "acceptance" if kind is None else f"acceptance[{kind!r}]"
            value = _stat_tensor(label, value, draws, chains)
            if value.ndim == 2:
                per_draw[key] = _to_numpy(value.movedim(0, 1))
            else:
                per_chain[key] = _to_numpy(value)
    return per_draw, per_chain


def to_inference_data(
    samples,
    log_prob: Tensor | None = None,
    acceptance=None,
    names: str | Sequence[str] | None = None,
):
    """Convert a trace to an ``arviz.InferenceData`` (requires ArviZ: ``pip install arviz``).

    Our traces are ``(draws, chains, ...)``; ArviZ wants ``(chain, draw, ...)``, so every array is
    transposed. Tensors are detached and copied to the CPU.

    Args:
        samples: ``(draws, chains, *event)`` tensor, or a mapping ``name -> (draws, chains, ...)``
            tensor (one posterior variable each).
        log_prob: optional ``(draws, chains)`` target log-densities, stored as
            ``sample_stats.lp``.
        acceptance: optional acceptance statistics: a tensor, or a mapping ``kind -> tensor`` such
            as :attr:`Trace.acceptance`. ``(draws, chains)`` values (per-draw acceptance
            probabilities) become ``sample_stats.acceptance_rate`` (``acceptance_rate_<kind>`` for a
            mapping, ArviZ's naming); ``(chains,)`` values (per-chain rates) become variables of
            the same names with the single dimension ``chain``.
        names: for a tensor ``samples``: one variable name (default ``"x"``), or one name per
            entry of the last event dimension (the variable is split into scalar variables).

    Returns:
        ``arviz.InferenceData`` with groups ``posterior`` (dims ``chain``, ``draw``, ...) and, when
        given, ``sample_stats``.

    Raises:
        ImportError: ArviZ is not installed.
        TypeError, ValueError: inconsistent shapes or names.

    Example:
        Skipped by the doctest run: ArviZ is optional and takes seconds to import.

        >>> trace = torch.randn(100, 4, 2)  # (draws, chains, 2)
        >>> idata = to_inference_data(trace, names=["a", "b"])  # doctest: +SKIP
        >>> dict(idata.posterior.sizes)  # doctest: +SKIP
        {'chain': 4, 'draw': 100}
    """
    try:
        import arviz
    except ImportError as error:
        raise ImportError("to_inference_data needs ArviZ: pip install arviz") from error

    variables = _posterior_variables(samples, names)
    shapes = {tuple(v.shape[:2]) for v in variables.values()}
    if len(shapes) != 1:
        raise ValueError(f"all samples must share (draws, chains), got {sorted(shapes)}")
    draws, chains = shapes.pop()
    posterior = {k: _to_numpy(v.movedim(0, 1)) for k, v in variables.items()}
    per_draw, per_chain = _sample_stats(log_prob, acceptance, draws, chains)

    idata = arviz.from_dict(posterior=posterior)
    if per_draw or per_chain:
        import xarray

        chain_coord = {"chain": idata.posterior.coords["chain"].values}
        if per_draw:
            stats = arviz.dict_to_dataset(per_draw, coords=dict(chain_coord))
        else:
            stats = xarray.Dataset(coords=chain_coord)
        for key, value in per_chain.items():
            stats[key] = xarray.DataArray(value, dims=("chain",), coords=chain_coord)
        idata.add_groups(sample_stats=stats)
    return idata
