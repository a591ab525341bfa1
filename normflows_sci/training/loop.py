"""Maximum-likelihood training: :class:`MaximumLikelihoodLoss` (forward KL on data, with a
validation set, dequantisation noise and data-parallel sharding) and :func:`fit_flow`, the
training scaffold (:func:`~normflows_sci.training.train`) on it."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from normflows_sci.checks import check_int
from normflows_sci.training.checkpoint import MAX_CHECKPOINT_BYTES
from normflows_sci.training.scaffold import (
    SCHEDULES,
    TrainingHistory,
    TrainingLoss,
    TrainingOptions,
    option_defaults,
    route_keywords,
    train,
)

__all__ = ["fit_flow", "MaximumLikelihoodLoss", "SCHEDULES", "MAX_CHECKPOINT_BYTES"]


def _mean_loss(flow, data: Tensor, context: Tensor | None, batch_size: int, transform_batch, gen):
    """Mean negative log-likelihood over ``data`` in evaluation mode, without gradients."""
    was_training = flow.training
    flow.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = data[start : start + batch_size]
            if transform_batch is not None:
                batch = transform_batch(batch, gen)
            ctx = None if context is None else context[start : start + batch_size]
            total += float(-flow.log_prob(batch, ctx).sum())
    flow.train(was_training)
    return total / len(data)


class MaximumLikelihoodLoss(TrainingLoss):
    """Forward KL on data: the mean negative log-likelihood of shuffled minibatches.

    An epoch is a pass over ``data`` in a fresh random order; its history row holds the mean
    training loss and the validation loss (NaN without ``val_data``), which the scaffold
    watches for early stopping and the plateau schedule. Under ``torch.distributed`` every rank
    takes its share of each global batch (``batch_size`` is the global batch).

    Args:
        data: ``(n, ...)`` training points; ``context``: ``(n, c)`` matching conditions.
        val_data, val_context: validation set.
        batch_size: global minibatch size.
        transform_batch: applied to every batch before ``log_prob``, called as
            ``transform_batch(batch, generator)`` (e.g. dequantisation noise).

    Example:
        >>> from normflows_sci.flows import RealNVP
        >>> from normflows_sci.training import TrainingOptions, train
        >>> data = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
        >>> flow = RealNVP(2, transforms=1, hidden_features=(8,))
        >>> loss = MaximumLikelihoodLoss(data, val_data=data[:64], batch_size=64)
        >>> history = train(flow, loss, TrainingOptions(max_epochs=2, seed=0, progress=False))
        >>> history["epoch"], len(history["val_loss"])
        ([1, 2], 2)
    """

    history_keys = ("epoch", "train_loss", "val_loss")
    schedules = ("cosine", "plateau", "constant")
    data_parallel = True
    check_finite = False  # no sync per step (a NaN loss shows in the history)
    checkpointable = True
    progress_keys = ("train_loss", "val_loss")

    def __init__(
        self,
        data: Tensor,
        *,
        context: Tensor | None = None,
        val_data: Tensor | None = None,
        val_context: Tensor | None = None,
        batch_size: int = 256,
        transform_batch: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    ):
        batch_size = check_int("batch_size", batch_size)
        if len(data) == 0:
            raise ValueError("data is empty")
        self.data, self.context = data, context
        self.val_data, self.val_context = val_data, val_context
        self.batch_size, self.transform_batch = batch_size, transform_batch
        self.steps_per_epoch = math.ceil(len(data) / batch_size)
        self.monitor = "val_loss" if val_data is not None else "train_loss"
        self.validated = val_data is not None

    def start(self, flow, seed: int, rank: int, world: int) -> None:
        self.seed, self.rank, self.world = seed, rank, world
        self.shuffle_gen = torch.Generator().manual_seed(seed)
        self.noise_gen = torch.Generator(self.data.device).manual_seed(seed + 1 + rank)
        self.val_gen = torch.Generator(self.data.device)

    def generators(self) -> dict[str, torch.Generator]:
        return {"shuffle_rng": self.shuffle_gen, "noise_rng": self.noise_gen}

    def fingerprint(self) -> tuple[dict, dict]:
        tensors = dict(
            data=self.data,
            context=self.context,
            val_data=self.val_data,
            val_context=self.val_context,
        )
        options = dict(
            batch_size=int(self.batch_size), transform_batch=self.transform_batch is not None
        )
        return tensors, options

    def start_epoch(self) -> None:
        generator = self.shuffle_gen
        self.order = torch.randperm(len(self.data), generator=generator).to(self.data.device)
        self.cursor, self.running, self.count = 0, 0.0, 0

    def next_batch(self):
        start, self.cursor = self.cursor, self.cursor + self.batch_size
        index = self.order[start : self.cursor][self.rank :: self.world]
        if len(index) == 0:
            return None
        batch = self.data[index]
        if self.transform_batch is not None:
            batch = self.transform_batch(batch, self.noise_gen)
        return batch, None if self.context is None else self.context[index]

    def __call__(self, flow, batch) -> Tensor:
        return -flow.log_prob(*batch).mean()

    def after_step(self, flow, batch, loss: Tensor) -> None:
        size = len(batch[0])
        self.running = self.running + loss * size  # on device: no sync per step
        self.count += size

    def end_epoch(self, flow, epoch: int, step: int) -> dict:
        val_loss = math.nan
        if self.val_data is not None:
            self.val_gen.manual_seed(self.seed + 12345)  # the same dequantisation noise every epoch
            val_loss = _mean_loss(
                flow,
                self.val_data,
                self.val_context,
                4 * self.batch_size,
                self.transform_batch,
                self.val_gen,
            )
        train_loss = float(self.running) / max(self.count, 1)
        return dict(epoch=epoch, train_loss=train_loss, val_loss=val_loss)


# fit_flow's training settings (keywords) and their defaults.
FIT_FLOW_DEFAULTS = option_defaults(
    "learning_rate", "weight_decay", "max_time", "schedule", "seed", "progress", "checkpoint",
    "resume", "fingerprint", max_epochs=100, patience=10, clip_grad=5.0,
)  # fmt: skip


def fit_flow(
    flow,
    data: Tensor,
    *,
    context: Tensor | None = None,
    val_data: Tensor | None = None,
    val_context: Tensor | None = None,
    batch_size: int = 256,
    transform_batch: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    **training,
) -> TrainingHistory:
    """Train ``flow`` by maximum likelihood (forward KL) on ``data``: :func:`train` on
    :class:`MaximumLikelihoodLoss`.

    Early stopping watches the validation loss (when ``val_data`` is given) and restores the best
    parameters at the end. Under ``torch.distributed`` (e.g. launched by ``torchrun``) every
    process holds the same model, takes its share of each global batch and averages gradients, so
    ``batch_size`` is the global batch and results match single-process training up to noise.

    Args:
        flow: anything with ``log_prob(x, context)`` and parameters (a :class:`Flow`).
        data, context, val_data, val_context, batch_size, transform_batch: the loss (see
            :class:`MaximumLikelihoodLoss`).
        **training: the :class:`TrainingOptions` fields ``learning_rate`` (1e-3),
            ``weight_decay`` (0), ``max_epochs`` (100; None: only ``max_time`` limits),
            ``max_time``, ``patience`` (10), ``schedule`` (``"cosine"``, over ``max_epochs``;
            ``"plateau"`` when ``max_epochs`` is None), ``clip_grad`` (5), ``seed``,
            ``progress``, ``checkpoint``, ``resume`` and ``fingerprint``. A checkpoint records
            the run's fingerprint: the data (dtype, shape and SHA-256 of ``data``, ``context``,
            ``val_data``, ``val_context``), the architecture (every tensor name, dtype and shape
            of ``flow.state_dict()``), the options that shape the run (``batch_size``,
            ``learning_rate``, ``weight_decay``, ``schedule``, ``clip_grad``, ``seed``,
            ``max_epochs`` under the cosine schedule, whether ``transform_batch`` is given) and
            ``fingerprint``. ``resume=True`` continues that run step for step; a checkpoint of
            another run or a damaged one raises ``ValueError`` naming the file and what differs
            (budgets may change). Without ``seed``, the checkpoint's seed is used.

    Returns:
        :class:`~normflows_sci.training.TrainingHistory`: equal-length lists ``epoch``, ``train_loss``, ``val_loss`` (NaN without a
        validation set), ``learning_rate``, ``time`` (seconds since the start of the run). With
        ``transform_batch`` noise (dequantisation) the losses are of the noisy data: an upper
        bound on the negative log-probability, not equal to it.

    Example:
        >>> from normflows_sci.flows import RealNVP
        >>> data = 1.0 + 0.5 * torch.randn(512, 2, generator=torch.Generator().manual_seed(0))
        >>> flow = RealNVP(2, transforms=2, hidden_features=(16,))
        >>> history = fit_flow(flow, data[:384], val_data=data[384:], max_epochs=4,
        ...                    batch_size=128, learning_rate=1e-2, seed=0, progress=False)
        >>> history["epoch"]
        [1, 2, 3, 4]
        >>> history["val_loss"][-1] < history["val_loss"][0]
        True
    """
    options = route_keywords("fit_flow", training, options=FIT_FLOW_DEFAULTS)["options"]
    if options["schedule"] not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {options['schedule']!r}")
    if options["max_epochs"] is None and options["schedule"] == "cosine":
        options["schedule"] = "plateau"  # no horizon for the cosine
    loss = MaximumLikelihoodLoss(
        data,
        context=context,
        val_data=val_data,
        val_context=val_context,
        batch_size=batch_size,
        transform_batch=transform_batch,
    )
    return train(flow, loss, TrainingOptions(**options))
