"""The one training scaffold of the package: :func:`train` runs a :class:`TrainingLoss` under
:class:`TrainingOptions`.

A loss is a value that draws its own batches and turns a batch into a scalar (forward KL on data,
reverse KL on an energy or a mixture, FAB's alpha-2 objective with its replay buffer, flow
matching); the scaffold owns everything else: seeding, the optimiser and its schedule, gradient
clipping, the time budget, the progress bar, the history, early stopping on a validation loss,
checkpoints with their run fingerprint, and the gradient all-reduce of data-parallel training
under ``torch.distributed``. ``fit_flow``, ``fit_boltzmann``, ``fit_fab`` and
``fit_flow_matching`` are this scaffold with their loss.

Training runs in epochs: an epoch is a pass over the data for losses that have one
(:attr:`TrainingLoss.steps_per_epoch`), otherwise ``log_every`` optimiser steps; the history
gets one row per epoch.
"""

from __future__ import annotations

import abc
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from normflows_sci._distributed import (
    average_gradients,
    broadcast_module,
    broadcast_seed,
    rank_and_world,
)
from normflows_sci._optim import adamw
from normflows_sci.checks import check_int, check_positive
from normflows_sci.training.checkpoint import (
    caller_fingerprint,
    compare_runs,
    read_checkpoint,
    restore_checkpoint,
    run_fingerprint,
    save_checkpoint,
)

__all__ = [
    "SCHEDULES",
    "TrainingOptions",
    "TrainingLoss",
    "TrainingHistory",
    "train",
    "route_keywords",
    "option_defaults",
]

SCHEDULES = ("cosine", "plateau", "constant")


def route_keywords(caller: str, keywords: dict, **groups: dict) -> dict[str, dict]:
    """Split the settings keywords of a ``fit_*`` call into ``groups`` (name -> defaults).

    Each group is returned as its defaults updated with the keywords it names, so a ``fit_*``
    function keeps its keyword arguments (and their defaults) while passing objects on.

    Raises:
        TypeError: a keyword no group takes, naming ``caller`` and the settings it accepts.

    Example:
        >>> route_keywords("fit", {"seed": 1}, options=dict(seed=None, progress=True))
        {'options': {'seed': 1, 'progress': True}}
    """
    accepted = {key for defaults in groups.values() for key in defaults}
    unknown = sorted(set(keywords) - accepted)
    if unknown:
        raise TypeError(
            f"{caller}() got unexpected keyword arguments {unknown}; its settings are "
            f"{sorted(accepted)}"
        )
    return {
        name: {key: keywords.get(key, value) for key, value in defaults.items()}
        for name, defaults in groups.items()
    }


@dataclass(frozen=True)
class TrainingOptions:
    """How :func:`train` optimises: the options every training function shares.

    Attributes:
        learning_rate, weight_decay: AdamW settings (``weight_decay=0`` is Adam).
        schedule: ``"cosine"`` (per step, to zero over the step budget), ``"plateau"`` (halve
            the rate when the monitored loss stalls; losses with a monitor only) or
            ``"constant"``.
        clip_grad: maximum gradient norm (None: no clipping).
        max_epochs, max_steps: budgets in epochs and in optimiser steps (None: unlimited; give
            at least one of them or ``max_time``). The cosine schedule needs one of them.
        max_time: wall-clock budget in seconds, checked after every step; the epoch under way
            is then closed and recorded.
        patience: epochs without improvement of the validation loss before stopping (None:
            never; ignored by losses without validation).
        log_every: steps per epoch for losses without epochs of their own (None: every step).
        seed: seeds the loss's draws (None: a fresh seed, recorded in checkpoints).
        progress: show a tqdm progress bar (rank 0 only).
        checkpoint: file the full training state is saved to after every epoch (losses that
            support checkpoints only).
        resume: continue from ``checkpoint`` if it exists (the same run, step for step).
        fingerprint: JSON-serialisable dict identifying the run beyond what the loss sees;
            compared on resume.

    Example:
        >>> TrainingOptions(learning_rate=1e-2, max_steps=100).schedule
        'cosine'
        >>> TrainingOptions(schedule="linear", max_steps=1)
        Traceback (most recent call last):
        ...
        ValueError: schedule must be one of ('cosine', 'plateau', 'constant'), got 'linear'
    """

    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    clip_grad: float | None = 10.0
    max_epochs: int | None = None
    max_steps: int | None = None
    max_time: float | None = None
    patience: int | None = None
    log_every: int | None = None
    seed: int | None = None
    progress: bool = True
    checkpoint: str | os.PathLike | None = None
    resume: bool = False
    fingerprint: dict | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        check_positive("learning_rate", self.learning_rate)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_positive("clip_grad", self.clip_grad, optional=True)
        check_positive("max_time", self.max_time, optional=True)
        for name in ("max_epochs", "max_steps", "patience", "log_every"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        if self.seed is not None and (isinstance(self.seed, bool) or int(self.seed) != self.seed):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")
        if self.max_epochs is None and self.max_steps is None and self.max_time is None:
            raise ValueError("give max_epochs or max_time (or both): training needs a budget")
        if self.schedule == "cosine" and self.max_epochs is None and self.max_steps is None:
            raise ValueError("the cosine schedule needs max_epochs or max_steps (its horizon)")


def option_defaults(*names: str, **overrides) -> dict:
    """The :class:`TrainingOptions` defaults of the fields ``names``, and ``overrides`` (a
    ``fit_*`` function's own defaults): the settings a ``fit_*`` function accepts.

    >>> option_defaults("seed", clip_grad=1.0)
    {'seed': None, 'clip_grad': 1.0}
    """
    fields = TrainingOptions.__dataclass_fields__
    return {**{name: fields[name].default for name in names}, **overrides}


class TrainingLoss(abc.ABC):
    """What :func:`train` trains on: draws batches, turns a batch into a scalar loss.

    Subclasses implement :meth:`start` (seeded generators), :meth:`next_batch`,
    :meth:`__call__` and :meth:`end_epoch`; the class attributes declare what the scaffold may
    do with the loss. The scaffold calls, per run, ``check``, ``start`` then ``prepare``; per
    epoch, ``start_epoch``, then ``next_batch`` / ``__call__`` / (optimiser step) /
    ``after_step`` per step, then ``end_epoch`` for the history row.

    Attributes:
        history_keys: keys of the rows :meth:`end_epoch` returns (the scaffold appends
            ``learning_rate`` and ``time``).
        schedules: the learning-rate schedules the loss supports.
        steps_per_epoch: steps of a pass over the data (None: the loss has no epochs).
        monitor: row key the plateau schedule and early stopping watch (None: no monitor).
        validated: ``monitor`` is a held-out loss (early stopping, best weights restored).
        data_parallel: under ``torch.distributed`` ranks share each batch and average
            gradients (otherwise every rank trains on its own).
        check_finite: raise :class:`FloatingPointError` on a non-finite loss (one sync per step).
        rate_before_step: the history's learning rate is the one the step used, not the next.
        checkpointable: the loss's state is its generators (:meth:`generators`), so a
            checkpoint resumes it step for step.
        progress_keys: row keys shown in the progress bar.
        description: the progress bar's label.
    """

    history_keys: tuple[str, ...] = ("step", "loss")
    schedules: tuple[str, ...] = ("cosine", "constant")
    steps_per_epoch: int | None = None
    monitor: str | None = None
    validated: bool = False
    data_parallel: bool = False
    check_finite: bool = True
    rate_before_step: bool = False
    checkpointable: bool = False
    progress_keys: tuple[str, ...] = ("loss",)
    description: str = "training"

    def check(self, flow) -> None:  # noqa: B027 (an optional hook: no-op by default)
        """Raise ``TypeError`` if ``flow`` is not a model this loss can train."""

    @abc.abstractmethod
    def start(self, flow, seed: int, rank: int, world: int) -> None:
        """Seed the loss's generators (``rank`` of ``world`` for data-parallel losses)."""

    def prepare(self, flow, out_of_time) -> None:  # noqa: B027 (an optional hook: no-op by default)
        """Work before the first step (``out_of_time()`` tells whether the budget is spent)."""

    def start_epoch(self) -> None:  # noqa: B027 (an optional hook: no-op by default)
        """Called before every epoch."""

    @abc.abstractmethod
    def next_batch(self):
        """The next step's batch, or None to skip the step."""

    @abc.abstractmethod
    def __call__(self, flow, batch) -> Tensor:
        """The scalar loss of ``flow`` on ``batch`` (differentiable in the parameters)."""

    def after_step(self, flow, batch, loss: Tensor) -> None:  # noqa: B027 (an optional hook: no-op by default)
        """Called after the optimiser step with the step's detached loss."""

    @abc.abstractmethod
    def end_epoch(self, flow, epoch: int, step: int) -> dict:
        """The history row (``history_keys``) of the epoch that just ended."""

    def nonfinite_message(self, step: int) -> str:
        """The error message for a non-finite loss at ``step``."""
        return f"non-finite loss at step {step}"

    def generators(self) -> dict[str, torch.Generator]:
        """The generators a checkpoint saves, by checkpoint key."""
        return {}

    def fingerprint(self) -> tuple[dict, dict]:
        """``(tensors, options)`` that identify the run in a checkpoint."""
        return {}, {}


class TrainingHistory(dict):
    """The per-epoch record of a :func:`train` run: ``{column: list}``, one entry per epoch.

    A plain dict underneath, so ``history["val_loss"]``, ``pandas.DataFrame(history)`` and
    ``json.dumps(history)`` work as they always did; the columns every run records are also
    attributes. (A dict on purpose: a mapping that is not a dict makes pandas build a frame of
    the column names without a word.)

    Attributes:
        columns: the loss's own columns (:attr:`TrainingLoss.history_keys`, e.g. ``"epoch"``,
            ``"train_loss"``, ``"val_loss"`` for maximum likelihood), in that order.
        learning_rate: the learning rate of each epoch.
        time: seconds since the start of the run at the end of each epoch.

    Example:
        >>> history = TrainingHistory({"epoch": [1, 2], "loss": [0.5, 0.25]}, [1e-3, 1e-3], [0.1, 0.2])
        >>> history["loss"], history.time, list(history)
        ([0.5, 0.25], [0.1, 0.2], ['epoch', 'loss', 'learning_rate', 'time'])
    """

    def __init__(self, columns: Mapping[str, list], learning_rate: list, time: list):
        super().__init__(columns)
        self["learning_rate"], self["time"] = learning_rate, time

    @property
    def columns(self) -> dict[str, list]:
        return {k: v for k, v in self.items() if k not in ("learning_rate", "time")}

    @property
    def learning_rate(self) -> list[float]:
        return self["learning_rate"]

    @property
    def time(self) -> list[float]:
        return self["time"]

    def to_dict(self) -> dict[str, list]:
        """A plain ``{column: list}`` dict (the form checkpoints and model files store)."""
        return dict(self)

    @classmethod
    def from_dict(cls, history: Mapping[str, list]) -> TrainingHistory:
        """The history of a plain dict with ``learning_rate`` and ``time`` lists."""
        columns = {k: v for k, v in history.items() if k not in ("learning_rate", "time")}
        return cls(columns, history["learning_rate"], history["time"])


def train(flow, loss: TrainingLoss, options: TrainingOptions) -> TrainingHistory:
    """Train ``flow`` in place on ``loss`` (see the module docstring); return the history.

    Args:
        flow: the model (parameters with ``requires_grad`` are optimised).
        loss: a :class:`TrainingLoss`.
        options: :class:`TrainingOptions` (they carry the budget).

    Returns:
        :class:`TrainingHistory`: equal-length lists, one per ``loss.history_keys`` plus
        ``learning_rate`` and ``time`` (seconds since the start of the run).

    Raises:
        ValueError: an option the loss does not support, or a checkpoint of another run.
        FloatingPointError: a non-finite loss (losses with ``check_finite``).
    """
    if not isinstance(loss, TrainingLoss):
        raise TypeError(f"loss must be a TrainingLoss, got {type(loss).__name__}")
    if not isinstance(options, TrainingOptions):
        raise TypeError(f"options must be TrainingOptions, got {type(options).__name__}")
    if options.schedule not in loss.schedules:
        raise ValueError(
            f"schedule must be one of {loss.schedules} for {type(loss).__name__}, "
            f"got {options.schedule!r}"
        )
    if options.checkpoint is not None and not loss.checkpointable:
        raise ValueError(f"checkpoint is not supported by {type(loss).__name__}")
    run = _Run(flow, loss, options)
    while run.running():
        run.epoch()
    return run.finish()


class _Run:
    """The state of one :func:`train` run."""

    def __init__(self, flow, loss: TrainingLoss, options: TrainingOptions):
        self.flow, self.loss, self.options = flow, loss, options
        loss.check(flow)
        if not callable(getattr(flow, "parameters", None)):
            raise TypeError(f"flow must be a torch.nn.Module, got {type(flow).__name__}")
        self.parameters = [p for p in flow.parameters() if p.requires_grad]
        if not self.parameters:
            raise ValueError("flow has no parameters to train")
        caller = caller_fingerprint(options.fingerprint)
        seed, state = options.seed, None
        if options.resume and options.checkpoint is not None and os.path.exists(options.checkpoint):
            state = read_checkpoint(options.checkpoint)
            seed = state["seed"] if seed is None else seed
        self.rank, self.world = rank_and_world() if loss.data_parallel else (0, 1)
        if self.world > 1:  # the same starting point and the same seed everywhere
            broadcast_module(flow)
            seed = broadcast_seed(seed)
        self.seed = torch.seed() % 2**62 if seed is None else int(seed)
        loss.start(flow, self.seed, self.rank, self.world)
        clock = time.perf_counter()  # the budget includes setting up (the first optimizer is slow)
        self.epoch_length = options.log_every or loss.steps_per_epoch or 1
        self.optimizer = adamw(self.parameters, options.learning_rate, options.weight_decay)
        self.scheduler = self._scheduler()
        self.history: dict[str, list] = {
            k: [] for k in (*loss.history_keys, "learning_rate", "time")
        }
        self.best_val, self.best_state, self.bad_epochs = math.inf, None, 0
        self.epochs, self.steps, elapsed, self.stopped = 0, 0, 0.0, False
        self.run_fingerprint = None
        if options.checkpoint is not None:
            self.run_fingerprint = self._fingerprint(caller)
        if state is not None:
            elapsed = self._restore(state)
        self.started = clock - elapsed
        self.bar = self._progress_bar()
        flow.train()
        loss.prepare(flow, self.time_is_up)

    def _scheduler(self):
        options = self.options
        if options.schedule == "cosine":
            horizon = options.max_steps or options.max_epochs * self.epoch_length
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=horizon)
        if options.schedule == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, factor=0.5, patience=max(2, (options.patience or 10) // 3)
            )
        return None

    def _fingerprint(self, caller) -> dict:
        options = self.options
        tensors, loss_options = self.loss.fingerprint()
        identity = dict(
            loss_options,
            learning_rate=float(options.learning_rate),
            weight_decay=float(options.weight_decay),
            schedule=options.schedule,
            clip_grad=None if options.clip_grad is None else float(options.clip_grad),
            seed=int(self.seed),
            max_epochs=options.max_epochs if options.schedule == "cosine" else None,
        )
        if options.max_steps is not None:
            identity["max_steps"] = options.max_steps if options.schedule == "cosine" else None
        return run_fingerprint(self.flow, tensors, identity, caller)

    def _restore(self, state: dict) -> float:
        path = self.options.checkpoint
        compare_runs(path, state["fingerprint"], self.run_fingerprint)
        generators = self.loss.generators()
        restore_checkpoint(path, state, self.flow, self.optimizer, self.scheduler, generators)
        self.history, self.best_val = state["history"], state["best_val"]
        self.best_state, self.bad_epochs = state["best_state"], state["bad_epochs"]
        self.epochs = state["epoch"]
        return state["elapsed"]

    def _progress_bar(self):
        options = self.options
        by_step = options.max_steps is not None
        return tqdm(
            total=options.max_steps if by_step else options.max_epochs,
            initial=self.steps if by_step else self.epochs,
            disable=not options.progress or self.rank != 0,
            desc=self.loss.description,
            unit="step" if by_step else "epoch",
            leave=not by_step,
        )

    def time_is_up(self) -> bool:
        max_time = self.options.max_time
        return max_time is not None and time.perf_counter() - self.started > max_time

    def running(self) -> bool:
        options = self.options
        if self.stopped:
            return False
        if options.max_epochs is not None and self.epochs >= options.max_epochs:
            return False
        return options.max_steps is None or self.steps < options.max_steps

    def epoch(self) -> None:
        """One epoch: its steps, then the history row, the monitor and the checkpoint."""
        loss, length = self.loss, self.epoch_length
        if self.options.max_steps is not None:
            length = min(length, self.options.max_steps - self.steps)
        loss.start_epoch()
        done, rate = 0, self.optimizer.param_groups[0]["lr"]
        for _ in range(length):
            batch = loss.next_batch()
            if batch is None:
                continue
            self.steps += 1
            done += 1
            value = loss(self.flow, batch)
            rate = self._step(value)
            loss.after_step(self.flow, batch, value.detach())
            if self.time_is_up():
                self.stopped = True
                break
        self.epochs += 1
        row = loss.end_epoch(self.flow, self.epochs, self.steps)
        self._watch(row)
        if not loss.rate_before_step:
            rate = self.optimizer.param_groups[0]["lr"]
        for key, value in (*row.items(), ("learning_rate", rate)):
            self.history[key].append(value)
        self.history["time"].append(time.perf_counter() - self.started)
        self.bar.update(done if self.options.max_steps is not None else 1)
        if not self.bar.disable:
            self.bar.set_postfix({k: f"{row[k]:.4f}" for k in loss.progress_keys})
        if self.options.checkpoint is not None and self.rank == 0:
            self._save()
        patience = self.options.patience
        self.stopped |= patience is not None and self.bad_epochs >= patience

    def _step(self, value: Tensor) -> float:
        """One optimiser step on the loss ``value``; returns the learning rate it used."""
        if self.loss.check_finite and not torch.isfinite(value):
            raise FloatingPointError(self.loss.nonfinite_message(self.steps))
        self.optimizer.zero_grad(set_to_none=True)
        value.backward()
        if self.world > 1:
            average_gradients(self.parameters, self.world)
        if self.options.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.options.clip_grad)
        rate = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        if self.options.schedule == "cosine":
            self.scheduler.step()
        return rate

    def _watch(self, row: dict) -> None:
        """Plateau schedule, best weights and patience from the loss's monitored value."""
        key = self.loss.monitor
        if key is None:
            return
        value = row[key]
        if self.options.schedule == "plateau":
            self.scheduler.step(value)
        if not self.loss.validated:
            return
        if value < self.best_val - 1e-4:
            self.best_val, self.bad_epochs = value, 0
            self.best_state = {k: v.detach().clone() for k, v in self.flow.state_dict().items()}
        else:
            self.bad_epochs += 1

    def _save(self) -> None:
        save_checkpoint(
            self.options.checkpoint,
            flow=self.flow.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=None if self.scheduler is None else self.scheduler.state_dict(),
            **{key: g.get_state() for key, g in self.loss.generators().items()},
            history=self.history,
            best_val=self.best_val,
            best_state=self.best_state,
            bad_epochs=self.bad_epochs,
            epoch=self.epochs,
            elapsed=time.perf_counter() - self.started,
            seed=self.seed,
            fingerprint=self.run_fingerprint,
        )

    def finish(self) -> TrainingHistory:
        self.bar.close()
        if self.best_state is not None:
            self.flow.load_state_dict(self.best_state)
        self.flow.eval()
        # The run keeps a plain dict: that is what checkpoints store and restore.
        return TrainingHistory.from_dict(self.history)
