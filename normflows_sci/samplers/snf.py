"""Stochastic normalizing flows: deterministic flow layers interleaved with MCMC / Langevin layers.

A stochastic normalizing flow (SNF) draws ``y_0 ~ q_0`` from a base and pushes it through layers
``y_0 -> y_1 -> ... -> y_K``. Each layer is either an invertible transform or a random move (a
Markov kernel). Sampled paths are weighted by the ratio of a backward path density, which ends in
the target ``p``, to the forward one:

``log w = log p(y_K) - log q_0(y_0) + sum_t ΔS_t``

with the per-layer contribution ("entropy change")

- deterministic layer ``y' = f(y)``: ``ΔS = log |det ∂f/∂y|``;
- stochastic layer with forward kernel ``K_t(y -> y')`` and backward kernel ``K~_t(y' -> y)``:
  ``ΔS = log K~_t(y' -> y) - log K_t(y -> y')``.

For a Metropolis-Hastings kernel (MALA, random-walk, HMC) in detailed balance with ``p_t``, taking
the kernel itself as its backward kernel gives ``ΔS = log p_t(y) - log p_t(y')`` (the ratio of
kernel densities is the density ratio; a rejected move contributes 0). For unadjusted (overdamped)
Langevin ``y' = y + h ∇log p_t(y) + sqrt(2h) ξ`` both kernels are explicit Gaussians:
``ΔS = |ξ|²/2 - |y - y' - h ∇log p_t(y')|² / (4h)``.

Because every backward kernel is a normalised density, ``E[exp(log w)] = Z`` exactly (the target's
normaliser), whatever the step sizes: a bad step size costs variance, never bias. The stochastic
layers target the geometric interpolation ``log p_t = (1 - s_t) log r + s_t log p`` between a
reference ``r`` (by default the SNF's base) and the target, ``s_t`` being layer ``t``'s
``position`` on that path (``beta`` is kept for inverse temperatures).

Training (reverse KL of path distributions): minimising ``-E[log w]`` fits the deterministic
layers' parameters; samples are reparameterised through the stochastic layers (gradients of the
target are taken with ``create_graph``), and the discrete accept/reject decisions of Metropolis
layers are not differentiated. See :meth:`StochasticNormalizingFlow.loss`.

References:
    Wu, Köhler, Noé (2020), "Stochastic normalizing flows", NeurIPS 33.
"""

from __future__ import annotations

import abc
import math
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from normflows_sci.checks import check_int, check_num_samples
from normflows_sci.samplers._mh import accept, finite, log_prob_and_grad, select, sum_event, value
from normflows_sci.samplers.importance import ImportanceResult, importance_weights
from normflows_sci.samplers.kernels import HMC, MALA, kernel_factory
from normflows_sci.samplers.targets import as_log_prob, check_log_prob
from normflows_sci.transforms import Transform

__all__ = ["StochasticLayer", "LangevinLayer", "MCMCLayer", "StochasticNormalizingFlow"]

LogProb = Callable[[Tensor], Tensor]

_POSITION = "the layer's position on the path from the reference to the target; beta names an "
_BETA_RENAMED = f"beta= is deprecated: use position= ({_POSITION}inverse temperature)"
_BETA_ATTRIBUTE = f".beta is deprecated: use .position ({_POSITION}inverse temperature)"


class StochasticLayer(nn.Module, abc.ABC):
    """A random move ``y -> y'`` that reports its path-weight contribution ``ΔS``.

    The move targets ``log p_s = (1 - s) log r + s log p`` at ``s = position`` (``r`` the
    reference, ``p`` the target); at ``s = 1`` the reference is never evaluated.

    Args:
        position: position ``s`` on the path from the reference (0) to the target (1, the
            default; ``None`` means 1).
        step_size: the move's step size ``h`` (> 0).
        steps: number of moves applied in a row (their contributions add up).
        beta: deprecated former name of ``position`` (``DeprecationWarning``).
    """

    def __init__(
        self,
        position: float | None = None,
        *,
        step_size: float = 0.1,
        steps: int = 1,
        beta: float | None = None,
    ):
        super().__init__()
        if beta is not None:
            if position is not None:
                raise TypeError("give position= only (beta= is its deprecated former name)")
            # Reported at the caller of LangevinLayer(...) / MCMCLayer(...) (one more frame).
            own = type(self).__init__ is StochasticLayer.__init__
            warnings.warn(_BETA_RENAMED, DeprecationWarning, stacklevel=2 if own else 3)
            position = beta
        position = 1.0 if position is None else position
        if (
            isinstance(position, bool)
            or not isinstance(position, (int, float))
            or not 0 <= position <= 1
        ):
            raise ValueError(f"position must be a number in [0, 1], got {position!r}")
        if (
            isinstance(step_size, bool)
            or not isinstance(step_size, (int, float))
            or not math.isfinite(step_size)
            or step_size <= 0
        ):
            raise ValueError(f"step_size must be a positive finite number, got {step_size!r}")
        steps = check_int("steps", steps)
        self.position, self.step_size, self.steps = float(position), float(step_size), steps

    @property
    def beta(self) -> float:
        """Deprecated former name of :attr:`position` (``DeprecationWarning``)."""
        warnings.warn(_BETA_ATTRIBUTE, DeprecationWarning, stacklevel=2)
        return self.position

    @beta.setter
    def beta(self, value: float) -> None:
        warnings.warn(_BETA_ATTRIBUTE, DeprecationWarning, stacklevel=2)
        self.position = float(value)

    def __setstate__(self, state: dict) -> None:
        # Layers pickled before the rename stored the position as "beta".
        if "beta" in state and "position" not in state:
            state = {("position" if k == "beta" else k): v for k, v in state.items()}
        super().__setstate__(state)

    def interpolated(self, target_log_prob: LogProb, reference_log_prob: LogProb | None) -> LogProb:
        """The log-density ``log p_s`` (``s = position``) this layer's moves leave invariant."""
        position = self.position
        if position == 1.0:
            return target_log_prob
        if reference_log_prob is None:
            raise ValueError(
                f"reference_log_prob is needed by a layer with position={position} < 1 (the path "
                "starts from the reference density)"
            )
        if position == 0.0:
            return reference_log_prob
        return lambda y: (1.0 - position) * reference_log_prob(y) + position * target_log_prob(y)

    def forward(
        self,
        x: Tensor,
        target_log_prob: LogProb,
        reference_log_prob: LogProb | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Move ``x: (batch, *event)``; returns ``(x', ΔS)`` with ``ΔS: (batch,)``.

        Differentiable (reparameterised) when gradients are enabled and ``x`` requires them.
        """
        if not isinstance(x, Tensor) or x.ndim < 2 or not x.is_floating_point():
            shape = getattr(x, "shape", type(x).__name__)
            raise ValueError(f"x must be a floating tensor of shape (batch, *event), got {shape}")
        log_prob_fn = self.interpolated(target_log_prob, reference_log_prob)
        differentiable = torch.is_grad_enabled() and x.requires_grad
        if not differentiable:
            x = x.detach()
        return self._move(x, log_prob_fn, differentiable, generator)

    @abc.abstractmethod
    def _move(self, x, log_prob_fn, differentiable, generator) -> tuple[Tensor, Tensor]:
        """``self.steps`` moves of ``x`` targeting ``log_prob_fn``: ``(x', ΔS)``."""

    def extra_repr(self) -> str:
        return f"position={self.position:g}, step_size={self.step_size:g}, steps={self.steps}"


class LangevinLayer(StochasticLayer):
    """Unadjusted overdamped Langevin moves ``y' = y + h ∇log p_s(y) + sqrt(2h) ξ``.

    No Metropolis correction: the layer's stationary distribution is only approximately
    ``p_s``, but the path weight uses the exact Gaussian forward and backward kernel densities,
    ``ΔS = |ξ|²/2 - |y - y' - h ∇log p_s(y')|² / (4h)``, so importance weights stay exact.

    Example:
        >>> layer = LangevinLayer(step_size=0.1)
        >>> target = lambda x: -0.5 * x.square().sum(-1)
        >>> x, delta = layer(torch.zeros(4, 2), target, generator=torch.Generator().manual_seed(0))
        >>> x.shape, delta.shape
        (torch.Size([4, 2]), torch.Size([4]))

    References:
        Wu, Köhler, Noé (2020), "Stochastic normalizing flows", eq. for Langevin layers.
    """

    def _move(self, x, log_prob_fn, differentiable, generator):
        h = self.step_size
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        _, grad = log_prob_and_grad(log_prob_fn, x, differentiable=differentiable)
        for _ in range(self.steps):
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            new = x + h * grad + math.sqrt(2 * h) * noise
            _, new_grad = log_prob_and_grad(log_prob_fn, new, differentiable=differentiable)
            back = x - new - h * new_grad
            total = total + 0.5 * sum_event(noise.square()) - sum_event(back.square()) / (4 * h)
            x, grad = new, new_grad
        return x, total


class MCMCLayer(StochasticLayer):
    """Metropolis-Hastings moves (MALA, random-walk or HMC) that leave ``p_s`` invariant.

    Each kernel is in detailed balance with ``p_s``, so ``ΔS = log p_s(y) - log p_s(y')`` over the
    layer's ``steps`` moves (it telescopes). The moves are those of the package's kernels
    (:class:`~normflows_sci.samplers.MALA`, :class:`~normflows_sci.samplers.RandomWalkMH`,
    :class:`~normflows_sci.samplers.HMC` with unit mass: their ``propose``), so the same generator
    gives the same chain; the layer can be differentiated through (reparameterised proposals,
    ``propose(..., differentiable=True)``; the accept decision itself is not differentiated).

    Args:
        position, step_size, steps: see :class:`StochasticLayer` (a partial's ``step_size``
            wins).
        kernel: the kernel as a value: a kernel class (``MALA``, the default, ``RandomWalkMH``,
            ``HMC``) or a ``functools.partial`` of one with its hyperparameters. The names
            ``"mala"``, ``"rwmh"`` and ``"hmc"`` are deprecated aliases.
        num_leapfrog: leapfrog steps per HMC proposal (unless the partial sets them).
        beta: deprecated former name of ``position`` (``DeprecationWarning``).

    Example:
        >>> from normflows_sci.samplers import RandomWalkMH
        >>> layer = MCMCLayer(step_size=0.5, kernel=RandomWalkMH)
        >>> target = lambda x: -0.5 * x.square().sum(-1)
        >>> x0 = torch.zeros(4, 2)
        >>> x, delta = layer(x0, target, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(delta, target(x0) - target(x))
        True

    References:
        Wu, Köhler, Noé (2020), "Stochastic normalizing flows" (Metropolis-Hastings layers).
    """

    def __init__(
        self,
        position: float | None = None,
        *,
        step_size: float = 0.1,
        steps: int = 1,
        kernel=MALA,
        num_leapfrog: int = 5,
        beta: float | None = None,
    ):
        super().__init__(position, step_size=step_size, steps=steps, beta=beta)
        self.num_leapfrog = check_int("num_leapfrog", num_leapfrog)
        defaults = dict(step_size=self.step_size, num_leapfrog=self.num_leapfrog)
        self.kernel = kernel_factory(kernel, defaults=defaults)
        self.step_size = float(self.kernel.options.get("step_size", self.step_size))
        if isinstance(self.kernel.cls, type) and issubclass(self.kernel.cls, HMC):
            self.num_leapfrog = int(self.kernel.options.get("num_leapfrog", self.num_leapfrog))
        self.last_acceptance = math.nan

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel={self.kernel!r}"

    def _move(self, x, log_prob_fn, differentiable, generator):
        kernel = self.kernel(log_prob_fn)
        if kernel.uses_gradient:
            log_prob, grad = log_prob_and_grad(log_prob_fn, x, differentiable=differentiable)
        else:
            log_prob, grad = value(log_prob_fn, x, differentiable=differentiable), None
        state = kernel.state_at(x, log_prob, grad, kernel.initial_step_size(x))
        accepted_total = 0.0
        for _ in range(self.steps):
            proposal, log_ratio = kernel.propose(state, generator, differentiable=differentiable)
            info = accept(log_ratio.detach(), generator)
            state = select(info.accepted, proposal, state)
            accepted_total += float(info.accepted.to(torch.float64).mean())
        self.last_acceptance = accepted_total / self.steps
        # A start with zero density (log p = -inf) gives -inf - (-inf): the move back has zero
        # probability, so the path weight is 0.
        delta = log_prob - state.log_prob
        delta = torch.where(torch.isnan(delta), -math.inf, delta)
        return state.x, delta


class StochasticNormalizingFlow(nn.Module):
    """A base distribution followed by a sequence of deterministic and stochastic layers.

    Sampling runs ``y_0 ~ base`` through ``layers`` in order. A :class:`Transform` in the list is
    applied in its *inverse* (latent -> data, i.e. generative) direction, contributing
    ``log|det ∂y'/∂y|``; a :class:`StochasticLayer` contributes its ``ΔS``. The path log weight
    is ``log w = log p(y_K) - log q_0(y_0) + Σ ΔS`` and ``E[w] = Z`` exactly.

    To put stochastic layers after a trained :class:`~normflows_sci.flows.Flow`, pass the flow
    itself as ``base`` (then ``q_0`` is the flow's density and, by default, the stochastic layers
    anneal from the flow to the target). To interleave them with a flow's own layers, note that
    ``flow.transform`` lists its steps data side first: the generative order is
    ``list(flow.transform)[::-1]``.

    Args:
        base: the starting density: a Flow (anything with ``sample_and_log_prob``) or a
            distribution with ``sample(n, generator=)`` and ``log_prob``; its parameters train.
        layers: Transforms and StochasticLayers, in sampling order.
        target: the unnormalised target (Energy, Flow or log-density callable).
        reference: log-density (or object with ``log_prob``) the stochastic layers' path starts
            from (``position = 0``); default ``base.log_prob``.

    Example:
        >>> from normflows_sci.distributions import StandardNormal
        >>> target = lambda x: -0.5 * ((x - 1) ** 2).sum(-1)  # log Z = log(2 pi)
        >>> layers = [MCMCLayer(b, step_size=0.5, steps=2) for b in (0.25, 0.5, 0.75, 1.0)]
        >>> snf = StochasticNormalizingFlow(StandardNormal(2), layers, target)
        >>> result = snf.importance_sample(4000, generator=torch.Generator().manual_seed(0))
        >>> abs(result.log_z - math.log(2 * math.pi)) < 4 * result.log_z_stderr
        True

    Training the deterministic layers by the path KL (``-E[log w]``)::

        optimizer = torch.optim.Adam(snf.parameters(), lr=1e-3)
        for step in range(1000):
            optimizer.zero_grad()
            loss, info = snf.loss(256, generator=generator)
            loss.backward()
            optimizer.step()

    References:
        Wu, Köhler, Noé (2020), "Stochastic normalizing flows", NeurIPS 33.
    """

    def __init__(self, base, layers: Sequence[nn.Module], target, *, reference=None):
        super().__init__()
        if not callable(getattr(base, "log_prob", None)) or not (
            callable(getattr(base, "sample_and_log_prob", None))
            or callable(getattr(base, "sample", None))
        ):
            raise TypeError(
                "base must be a Flow or a distribution with sample and log_prob, got "
                f"{type(base).__name__}"
            )
        if isinstance(layers, (nn.Module, Tensor)) or not isinstance(layers, Sequence):
            raise TypeError(
                f"layers must be a list of Transforms and StochasticLayers, got "
                f"{type(layers).__name__}"
            )
        for i, layer in enumerate(layers):
            if not isinstance(layer, (Transform, StochasticLayer)):
                raise TypeError(
                    f"layers[{i}] must be a Transform or a StochasticLayer, got "
                    f"{type(layer).__name__}"
                )
        self.base = base
        self.layers = nn.ModuleList(layers)
        # Stored outside the module registry: a target that is itself a Module (an Energy, a
        # Flow) must not have its parameters trained or saved with the SNF.
        object.__setattr__(self, "_target_log_prob", as_log_prob(target))
        object.__setattr__(
            self, "_reference_log_prob", None if reference is None else as_log_prob(reference)
        )
        object.__setattr__(self, "_targets", (target, reference))
        self._targets_checked = False

    def _check_targets(self, y: Tensor, log_q0: Tensor) -> None:
        """The first draw checks what the target (and a given reference) return: one
        log-density per sample. The layers mix them with per-sample terms, which would
        broadcast a wrong shape without an error."""
        num = y.shape[0]
        check_log_prob(log_q0, self.base, num, what="samples")
        with torch.no_grad():
            y = y.detach()
            target, reference = self._targets
            check_log_prob(self._target_log_prob(y), target, num, what="samples")
            if reference is not None:
                check_log_prob(self._reference_log_prob(y), reference, num, what="samples")
        self._targets_checked = True

    def _reference(self) -> LogProb:
        reference = self._reference_log_prob
        return self.base.log_prob if reference is None else reference

    def _base_draw(self, num_samples: int, generator):
        if callable(getattr(self.base, "sample_and_log_prob", None)):
            return self.base.sample_and_log_prob(num_samples, generator=generator)
        y = self.base.sample(num_samples, generator=generator)
        return y, self.base.log_prob(y)

    def _run(self, num_samples: int, generator) -> tuple[Tensor, Tensor, Tensor]:
        """Samples, ``log p(y_K)`` and the path's ``log q_0(y_0) - Σ ΔS``."""
        num_samples = check_num_samples(num_samples)
        if num_samples < 1:
            raise ValueError("num_samples must be at least 1")
        y, log_q0 = self._base_draw(num_samples, generator)
        if not self._targets_checked:
            self._check_targets(y, log_q0)
        path_log_q = log_q0
        target, reference = self._target_log_prob, self._reference()
        for layer in self.layers:
            if isinstance(layer, StochasticLayer):
                y, delta = layer(y, target, reference, generator=generator)
            else:
                y, delta = layer.inverse(y)
            path_log_q = path_log_q - delta
        return y, finite(target(y)), path_log_q

    def sample_and_log_weights(
        self, num_samples: int, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw ``num_samples`` paths: ``(samples (num_samples, *event), log_weights (num_samples,))``.

        Differentiable with respect to the parameters when gradients are enabled (reverse-KL
        training); wrap in ``torch.no_grad()`` otherwise (Langevin and MALA/HMC layers still
        take target gradients internally).
        """
        y, log_p, path_log_q = self._run(num_samples, generator)
        return y, log_p - path_log_q

    def sample(self, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Unweighted samples ``(num_samples, *event)`` (biased unless reweighted)."""
        with torch.no_grad():
            return self._run(num_samples, generator)[0]

    def importance_sample(
        self,
        num_samples: int,
        *,
        batch_size: int = 65536,
        generator: torch.Generator | None = None,
    ) -> ImportanceResult:
        """Weighted samples, ESS and the ``log Z`` estimate ``logsumexp(log w) - log N`` with its
        delta-method standard error, as an :class:`~normflows_sci.samplers.ImportanceResult`.

        Self-normalised expectations with these weights are consistent for the target. The
        result's ``log_q`` holds the path term ``log q_0(y_0) - Σ ΔS`` (so ``log_weights =
        log_p - log_q``), which is not a density of the samples.
        """
        num_samples = check_num_samples(num_samples)
        if num_samples < 1:
            raise ValueError("num_samples must be at least 1")
        batch_size = check_int("batch_size", batch_size)
        samples, log_p, log_q = [], [], []
        with torch.no_grad():
            for start in range(0, num_samples, batch_size):
                y, lp, lq = self._run(min(batch_size, num_samples - start), generator)
                samples.append(y)
                log_p.append(lp)
                log_q.append(lq)
        samples, log_p, log_q = torch.cat(samples), torch.cat(log_p), torch.cat(log_q)
        log_w = torch.where(torch.isneginf(log_p), -math.inf, log_p - log_q)
        stats = importance_weights(log_w, torch.zeros_like(log_w))
        return ImportanceResult(samples=samples, log_q=log_q, log_p=log_p, **stats)

    def loss(
        self, num_samples: int, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict]:
        """Reverse KL of the path distributions up to ``log Z``: ``-mean(log w)``.

        ``KL(P_forward || P_backward) = -E[log w] + log Z >= 0``. Paths with non-finite weights
        are left out of the mean (and counted).

        Returns:
            ``(loss, info)`` with ``info`` holding the batch's Kish ``ess_fraction`` and
            ``nonfinite``.
        """
        _, log_w = self.sample_and_log_weights(num_samples, generator=generator)
        kept = torch.isfinite(log_w)
        count = int(kept.sum())
        if count == 0:
            raise FloatingPointError("every path log weight is non-finite")
        loss = -torch.where(kept, log_w, torch.zeros_like(log_w)).sum() / count
        with torch.no_grad():
            lw = torch.where(kept, log_w, -math.inf).double()
            ess = float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)))
        return loss, dict(ess_fraction=ess / len(log_w), nonfinite=len(log_w) - count)
