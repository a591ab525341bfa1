"""Training Boltzmann generators: forward KL on data, reverse KL on the energy, and mixtures.

Reverse KL: ``E_{x~q}[u(x) + log q(x)] = KL(q || p) - log Z``, estimated with reparameterised
samples. Forward KL: the negative log-likelihood of samples from the target (e.g. MD frames).
Energies of badly placed samples (overlapping atoms) can reach 1e10 kT or overflow; the loss sees
``regularize_energy(u)``, which is the identity below ``energy_cap`` and grows logarithmically
above it, and ignores non-finite energies (reported in the history).

References:
    Noé, Olsson, Köhler, Wu (2019), "Boltzmann generators", Science 365.
    Vaitl, Nicoli, Nakajima, Kessel (2022), "Gradients should stay on path: better estimators of
    the reverse- and forward KL divergence for normalizing flows".
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from normflows_sci.checks import check_int
from normflows_sci.flows.cnf import check_divergence, divergence_estimator
from normflows_sci.samplers.targets import as_log_prob
from normflows_sci.training.scaffold import (
    TrainingHistory,
    TrainingLoss,
    TrainingOptions,
    option_defaults,
    route_keywords,
    train,
)

__all__ = [
    "regularize_energy",
    "reverse_kl_loss",
    "forward_kl_loss",
    "BoltzmannLoss",
    "fit_boltzmann",
]


def regularize_energy(energy: Tensor, cap: float | None = 1e4) -> Tensor:
    """``u`` below ``cap``; ``cap + log(1 + u - cap)`` above (continuous, slope 1 at the cap).

    >>> [round(u, 2) for u in regularize_energy(torch.tensor([1.0, 1e4, 1e10]), cap=1e4).tolist()]
    [1.0, 10000.0, 10023.03]
    """
    if cap is None:
        return energy
    excess = (energy - cap).clamp_min(0.0)
    return torch.where(energy > cap, cap + torch.log1p(excess), energy)


def _path_log_prob(flow, x: Tensor) -> Tensor:
    """``log q(x)`` whose gradient reaches the parameters only through ``x``: its value, plus
    ``g . x - (g . x).detach()`` with ``g = grad_x log q(x)`` held fixed.

    ``g`` comes from a first-order pass at a detached copy of ``x`` with the parameters in
    place (not swapped for detached copies), so flows whose field recomputes activations in
    the backward pass (checkpointing, e.g. :class:`~normflows_sci.nn.EGNNVelocity`) see the same
    parameters then as in the forward pass.
    """
    point = x.detach().requires_grad_(True)
    with torch.enable_grad():
        log_q = flow.log_prob(point)
        (score,) = torch.autograd.grad(log_q.sum(), point)
    along = (score * x).flatten(1).sum(1)
    return log_q.detach() + along - along.detach()


def reverse_kl_loss(
    flow,
    target,
    num_samples: int,
    *,
    energy_cap: float | None = 1e4,
    path_gradient: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict]:
    """Reverse-KL loss ``mean(u(x) + log q(x))`` over ``x ~ q`` (reparameterised).

    Args:
        flow: the Flow being trained.
        target: an Energy, or anything with ``log_prob`` (``u = -log_prob``), or a callable
            returning log-densities.
        num_samples: samples per estimate.
        energy_cap: see :func:`regularize_energy` (None: raw energies).
        path_gradient: use the path-gradient estimator (the score term, zero in expectation, is
            dropped; lower variance near convergence): samples drawn without ``log q``, which a
            ``log_prob`` pass with the parameters held fixed computes. With a Hutchinson
            divergence it stays unbiased (the probe does not depend on ``x``: ``E[grad_x log
            q_hat(x)] = grad_x log q(x)``), but the probe noise in ``grad_x log q_hat`` does not
            vanish at convergence as the exact path gradient's variance does.
        generator: seeds the draws.

    Returns:
        ``(loss, info)`` where ``info`` holds the batch's ``ess_fraction`` (Kish, from the raw
        importance weights), ``nonfinite`` (samples with non-finite energy, left out of the loss)
        and ``mean_energy``.

    Example:
        >>> from normflows_sci.distributions import StandardNormal
        >>> from normflows_sci.flows import NSF
        >>> flow = NSF(2, transforms=1, hidden_features=(8,))  # the identity: q = N(0, I)
        >>> loss, info = reverse_kl_loss(flow, StandardNormal(2), 256,
        ...                              generator=torch.Generator().manual_seed(0))
        >>> # q equals the normalised target: u + log q = 0 for every sample, all weights equal
        >>> abs(loss.item()) < 1e-4, round(info["ess_fraction"], 3), loss.requires_grad
        (True, 1.0, True)
    """
    if path_gradient:  # the sampling pass's log q would be discarded: skip it
        x = flow.sample(num_samples, generator=generator)
        log_q = _path_log_prob(flow, x)
    else:
        x, log_q = flow.sample_and_log_prob(num_samples, generator=generator)
    energy = -as_log_prob(target)(x)
    finite = torch.isfinite(energy)
    safe = torch.where(finite, energy, torch.zeros_like(energy))
    terms = regularize_energy(safe, energy_cap) + log_q
    count = finite.sum()
    loss = (terms * finite).sum() / count.clamp_min(1)
    with torch.no_grad():
        log_w = torch.where(finite, -energy - log_q, -math.inf)
        ess = float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)))
    info = dict(
        ess_fraction=ess / num_samples if count > 0 else 0.0,
        nonfinite=int(num_samples - count),
        mean_energy=float(safe.detach()[finite].mean()) if count > 0 else math.nan,
    )
    return loss, info


def forward_kl_loss(flow, data: Tensor) -> Tensor:
    """Forward-KL loss up to a constant: the mean negative log-likelihood of ``data``.

    ``KL(p || q) = E_p[log p] - E_p[log q]``; the first term does not depend on the flow, so
    minimising ``-mean(log q(x_i))`` over target samples ``x_i ~ p`` (e.g. MD frames) minimises
    the forward KL.

    Args:
        flow: the Flow being trained.
        data: ``(n, *event)`` samples of the target.

    Returns:
        Scalar loss (differentiable in the flow's parameters).

    Example:
        >>> from normflows_sci.flows import NSF
        >>> flow = NSF(2, transforms=1, hidden_features=(8,))  # the identity: q = N(0, I)
        >>> round(forward_kl_loss(flow, torch.zeros(4, 2)).item(), 4)  # -log N(0; 0, I) = log(2 pi)
        1.8379
    """
    return -flow.log_prob(data).mean()


class BoltzmannLoss(TrainingLoss):
    """``forward_weight * NLL(data batch) + reverse_weight * reverse-KL(batch)``.

    Every step draws ``batch_size`` data points (with replacement) for the forward term and
    ``batch_size`` flow samples for the reverse term, from one generator seeded by the scaffold
    (data first). A non-finite loss raises :class:`FloatingPointError`.

    Args:
        target: an Energy (or anything with ``log_prob``, or a log-density callable).
        data: ``(n, *event)`` samples of the target, optional.
        batch_size: data minibatch and reverse-KL sample size.
        forward_weight, reverse_weight: the mixture (defaults as in :func:`fit_boltzmann`).
        energy_cap: see :func:`regularize_energy`.
        path_gradient: path-gradient estimator for the reverse-KL term.
        divergence: ``None`` (the flow's own settings) or a divergence of
            :func:`~normflows_sci.flows.divergence_estimator` that every ODE transform of the
            flow uses inside each loss evaluation (Hutchinson probes from the loss's seeded
            generator), restored afterwards.

    Example:
        >>> from normflows_sci.flows import RealNVP
        >>> from normflows_sci.training import TrainingOptions, train
        >>> flow = RealNVP(2, transforms=1, hidden_features=(8,))
        >>> loss = BoltzmannLoss(lambda x: -0.5 * (x**2).sum(-1), batch_size=32)
        >>> options = TrainingOptions(max_steps=4, log_every=2, seed=0, progress=False)
        >>> train(flow, loss, options)["step"]
        [2, 4]
    """

    history_keys = ("step", "loss", "forward_kl", "reverse_kl", "ess_fraction", "nonfinite")
    description = "fit_boltzmann"

    def __init__(
        self,
        target,
        data: Tensor | None = None,
        *,
        batch_size: int = 256,
        forward_weight: float | None = None,
        reverse_weight: float | None = None,
        energy_cap: float | None = 1e4,
        path_gradient: bool = False,
        divergence: str | None = None,
    ):
        self.batch_size = check_int("batch_size", batch_size)
        self.divergence = None if divergence is None else check_divergence(divergence)
        if forward_weight is None:
            forward_weight = 1.0 if data is not None else 0.0
        if reverse_weight is None:
            reverse_weight = 1.0 if data is None else 0.0
        if forward_weight < 0 or reverse_weight < 0 or forward_weight + reverse_weight == 0:
            raise ValueError(
                "forward_weight and reverse_weight must be non-negative and not both zero, got "
                f"{forward_weight} and {reverse_weight}"
            )
        if forward_weight > 0 and data is None:
            raise ValueError("forward_weight > 0 needs data (samples of the target)")
        self.target, self.data = target, data
        self.forward_weight, self.reverse_weight = forward_weight, reverse_weight
        self.energy_cap, self.path_gradient = energy_cap, path_gradient

    def start(self, flow, seed: int, rank: int, world: int) -> None:
        if self.forward_weight > 0:
            data = self.data
            if not isinstance(data, Tensor) or tuple(data.shape[1:]) != tuple(flow.event_shape):
                shape = getattr(data, "shape", type(data).__name__)
                raise ValueError(
                    f"data must be a tensor of shape (n, {', '.join(map(str, flow.event_shape))}),"
                    f" got {shape}"
                )
            if not torch.isfinite(data).all():
                raise ValueError("data contains NaN or inf values")
        reference = next(flow.parameters())
        self.generator = torch.Generator(device=reference.device).manual_seed(seed)
        if self.data is not None:
            self.data = self.data.to(device=reference.device, dtype=reference.dtype)
        self.zero = torch.zeros((), device=reference.device, dtype=reference.dtype)

    def next_batch(self):
        if self.forward_weight == 0:
            return {"data": None}
        size = (self.batch_size,)
        index = torch.randint(
            len(self.data), size, generator=self.generator, device=self.zero.device
        )
        return {"data": self.data[index]}

    def __call__(self, flow, batch) -> Tensor:
        if self.divergence is None:
            return self._terms(flow, batch)
        with divergence_estimator(flow, self.divergence, generator=self.generator):
            return self._terms(flow, batch)

    def _terms(self, flow, batch) -> Tensor:
        loss = self.zero
        self.last = dict(forward_kl=math.nan, reverse_kl=math.nan, ess_fraction=math.nan)
        self.last["nonfinite"] = 0
        if batch["data"] is not None:
            nll = forward_kl_loss(flow, batch["data"])
            loss = loss + self.forward_weight * nll
            self.last["forward_kl"] = float(nll.detach())
        if self.reverse_weight > 0:
            rkl, info = reverse_kl_loss(
                flow,
                self.target,
                self.batch_size,
                energy_cap=self.energy_cap,
                path_gradient=self.path_gradient,
                generator=self.generator,
            )
            loss = loss + self.reverse_weight * rkl
            # A Hutchinson log q makes the batch's ESS biased (nonlinear in the noise): not recorded.
            ess = math.nan if self.divergence == "hutchinson" else info["ess_fraction"]
            self.last.update(reverse_kl=float(rkl.detach()), ess_fraction=ess)
            self.last["nonfinite"] = info["nonfinite"]
        return loss

    def nonfinite_message(self, step: int) -> str:
        return (
            f"non-finite loss at step {step} (forward KL {self.last['forward_kl']}, reverse KL "
            f"{self.last['reverse_kl']}); lower the learning rate or energy_cap"
        )

    def after_step(self, flow, batch, loss: Tensor) -> None:
        self.last_loss = float(loss)

    def end_epoch(self, flow, epoch: int, step: int) -> dict:
        return dict(step=step, loss=self.last_loss, **self.last)


# The training settings (keywords) of fit_boltzmann and fit_fab, and their defaults.
STEP_TRAINING_DEFAULTS = option_defaults(
    "learning_rate", "weight_decay", "schedule", "clip_grad", "max_time", "seed", "progress",
    log_every=10,
)  # fmt: skip


def fit_boltzmann(
    flow,
    target,
    data: Tensor | None = None,
    *,
    steps: int = 1000,
    batch_size: int = 256,
    forward_weight: float | None = None,
    reverse_weight: float | None = None,
    energy_cap: float | None = 1e4,
    path_gradient: bool = False,
    divergence: str | None = None,
    **training,
) -> TrainingHistory:
    """Train a Boltzmann generator by forward KL on ``data``, reverse KL on ``target``, or both:
    :func:`train` on :class:`BoltzmannLoss`.

    The loss is ``forward_weight * NLL(data batch) + reverse_weight * reverse-KL(batch)``. By
    default ``forward_weight`` is 1 when ``data`` is given (else 0) and ``reverse_weight`` is 1
    when it is not (else 0): maximum likelihood on data, or purely energy-based training without
    data. Set both for the mixture of Noé et al. (2019); a common recipe is a maximum-likelihood
    run followed by a mixed run (call this function twice).

    Args:
        flow: the Flow to train (modified in place).
        target: an Energy (or anything with ``log_prob``, or a log-density callable).
        data: ``(n, *event)`` samples of the target (e.g. MD frames), optional.
        steps: optimiser steps.
        batch_size: data minibatch and reverse-KL sample size.
        forward_weight, reverse_weight: the weights of the two terms (defaults above).
        energy_cap: energies above it enter the loss logarithmically (:func:`regularize_energy`).
        path_gradient: path-gradient estimator for the reverse-KL term (valid with either
            divergence; see :func:`reverse_kl_loss`).
        divergence: for continuous flows, ``"hutchinson"`` or ``"exact"`` inside each loss
            evaluation only (:func:`~normflows_sci.flows.divergence_estimator`: restored after,
            also on an error); ``None`` (default) keeps the flow's settings. Hutchinson probes
            come from the seeded generator; the loss and its gradient stay unbiased (linear in
            ``log q``, also with ``path_gradient``), the batch ESS would not, so the history
            records it as NaN. A flow without an ODE transform is a ``TypeError``.
        **training: the :class:`TrainingOptions` fields ``learning_rate`` (1e-3),
            ``weight_decay`` (0), ``schedule`` (``"cosine"`` over ``steps``, or
            ``"constant"``), ``clip_grad`` (10), ``max_time``, ``seed`` (seeds minibatches and
            flow samples), ``progress`` and ``log_every`` (10: record the history every this
            many steps).

    Returns:
        :class:`~normflows_sci.training.TrainingHistory` of equal-length lists: ``step``,
        ``loss``, ``forward_kl`` (NLL, NaN if unused), ``reverse_kl`` (NaN if unused),
        ``ess_fraction`` (of the reverse-KL batch; NaN if unused or with
        ``divergence="hutchinson"``), ``nonfinite``, ``learning_rate``, ``time``.

    Example:
        >>> from normflows_sci.flows import RealNVP
        >>> flow = RealNVP(2, transforms=2, hidden_features=(16,))
        >>> target = lambda x: -0.5 * ((x - 2.0) ** 2).sum(-1)  # N(2, I), unnormalised
        >>> history = fit_boltzmann(flow, target, steps=60, batch_size=128, learning_rate=1e-2,
        ...                         seed=0, progress=False, log_every=30)
        >>> history["step"], history["forward_kl"]  # reverse KL only: no data given
        ([30, 60], [nan, nan])
        >>> # reverse KL = KL(q || p) - log Z >= -log(2 pi) = -1.84; 2.16 for the untrained flow
        >>> history["reverse_kl"][-1] < -1.0
        True
    """
    options = route_keywords("fit_boltzmann", training, options=STEP_TRAINING_DEFAULTS)["options"]
    loss = BoltzmannLoss(
        target,
        data,
        batch_size=batch_size,
        forward_weight=forward_weight,
        reverse_weight=reverse_weight,
        energy_cap=energy_cap,
        path_gradient=path_gradient,
        divergence=divergence,
    )
    options = TrainingOptions(max_steps=check_int("steps", steps), **options)
    return train(flow, loss, options)
