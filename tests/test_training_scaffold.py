"""The one training scaffold: train + TrainingOptions + a TrainingLoss; the fit_* functions are
it with their loss; options are checked in one place; the distributed helpers are a leaf."""

from __future__ import annotations

import ast
import functools
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import normflows_sci
from normflows_sci.flows import NSF, RealNVP
from normflows_sci.samplers import MALA
from normflows_sci.training import (
    BoltzmannLoss,
    FABLoss,
    FlowMatchingLoss,
    MaximumLikelihoodLoss,
    TrainingLoss,
    TrainingOptions,
    fit_boltzmann,
    fit_fab,
    fit_flow,
    fit_flow_matching,
    train,
)

PACKAGE = Path(normflows_sci.__file__).resolve().parent


def gaussian(x):
    return -0.5 * ((x - 1.0) ** 2).sum(-1)


def data(n=256):
    return 1.0 + 0.5 * torch.randn(n, 2, generator=torch.Generator().manual_seed(0))


def same_run(history_a, flow_a, history_b, flow_b):
    drop_time = [{k: v for k, v in h.items() if k != "time"} for h in (history_a, history_b)]
    assert drop_time[0] == drop_time[1]
    assert all(torch.equal(a, b) for a, b in zip(flow_a.parameters(), flow_b.parameters()))


def realnvp():
    torch.manual_seed(0)
    return RealNVP(2, transforms=2, hidden_features=(8,))


# ------------------------------------------------------------- the fit_* functions are train()


def test_fit_flow_is_train_on_the_maximum_likelihood_loss():
    x = data()
    a, b = realnvp(), realnvp()
    history_a = fit_flow(a, x[:192], val_data=x[192:], max_epochs=3, batch_size=64, seed=1,
                         progress=False)  # fmt: skip
    loss = MaximumLikelihoodLoss(x[:192], val_data=x[192:], batch_size=64)
    options = TrainingOptions(max_epochs=3, patience=10, clip_grad=5.0, seed=1, progress=False)
    same_run(history_a, a, train(b, loss, options), b)


def test_fit_boltzmann_and_fit_fab_are_train_on_their_losses():
    a, b = realnvp(), realnvp()
    history_a = fit_boltzmann(a, gaussian, steps=6, batch_size=32, seed=2, progress=False,
                              log_every=3)  # fmt: skip
    options = TrainingOptions(max_steps=6, log_every=3, seed=2, progress=False)
    same_run(history_a, a, train(b, BoltzmannLoss(gaussian, batch_size=32), options), b)
    torch.manual_seed(0)
    a = NSF(2, transforms=1, hidden_features=(8,), coupling=True)
    torch.manual_seed(0)
    b = NSF(2, transforms=1, hidden_features=(8,), coupling=True)
    history_a = fit_fab(a, gaussian, steps=4, batch_size=16, replay_buffer=64, seed=3,
                        progress=False, log_every=2)  # fmt: skip
    loss = FABLoss(gaussian, batch_size=16, replay_buffer=64)
    options = TrainingOptions(max_steps=4, log_every=2, seed=3, progress=False)
    same_run(history_a, a, train(b, loss, options), b)


def test_fit_flow_matching_is_train_and_logs_the_rate_each_step_used():
    from normflows_sci.flows.cnf import CNF

    a, b = (CNF(2, hidden_features=(8,), seed=0) for _ in range(2))
    b.load_state_dict(a.state_dict())
    history_a = fit_flow_matching(a, data(), steps=4, batch_size=64, seed=4, progress=False,
                                  learning_rate=1e-2)  # fmt: skip
    options = TrainingOptions(learning_rate=1e-2, clip_grad=1.0, max_steps=4, seed=4,
                              progress=False)  # fmt: skip
    same_run(history_a, a, train(b, FlowMatchingLoss(data(), batch_size=64), options), b)
    assert history_a["learning_rate"][0] == 1e-2  # the first step's rate, before the schedule


# ------------------------------------------------------------------------ one options check


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda f: fit_boltzmann(f, gaussian, steps=2, learning_rate=-1.0), "learning_rate"),
        (lambda f: fit_flow(f, data(), max_epochs=1, clip_grad=0.0), "clip_grad"),
        (lambda f: fit_flow(f, data(), max_epochs=1, weight_decay=-0.1), "weight_decay"),
        (lambda f: fit_flow_matching(f, data(), steps=2, max_time=-1.0), "max_time"),
        (lambda f: fit_flow(f, data(), max_epochs=1, patience=0), "patience"),
    ],
)
def test_bad_training_options_are_refused_naming_the_argument(call, name):
    """Old code: a negative learning rate, zero clipping norm or negative weight decay ran (or
    failed inside torch) without naming the argument."""
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        call(realnvp())


def test_an_unknown_setting_is_a_type_error_listing_the_settings():
    with pytest.raises(TypeError, match=r"fit_boltzmann\(\) got unexpected .*'learnin_rate'.*"
                                        r"'learning_rate'"):  # fmt: skip
        fit_boltzmann(realnvp(), gaussian, steps=1, learnin_rate=1e-2, progress=False)


def test_a_loss_refuses_options_it_cannot_honour():
    loss = BoltzmannLoss(gaussian, batch_size=8)
    with pytest.raises(ValueError, match="schedule must be one of"):
        train(realnvp(), loss, TrainingOptions(schedule="plateau", max_steps=2, progress=False))
    with pytest.raises(ValueError, match="checkpoint is not supported by BoltzmannLoss"):
        train(realnvp(), loss, TrainingOptions(max_steps=2, checkpoint="x.ckpt", progress=False))
    with pytest.raises(ValueError, match="cosine schedule needs max_epochs or max_steps"):
        TrainingOptions(max_time=1.0)


def test_a_flow_without_trainable_parameters_is_refused():
    flow = realnvp().requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters to train"):
        fit_flow(flow, data(), max_epochs=1, progress=False)


# ---------------------------------------------------------------------- the scaffold itself


class Quadratic(TrainingLoss):
    """Fit ``w`` to a target by ``(w - target)^2``; the validation target moves away after two
    epochs, so the best weights are those of epoch 2."""

    history_keys = ("epoch", "train", "val")
    monitor, validated, steps_per_epoch, checkpointable = "val", True, 2, False

    def start(self, flow, seed, rank, world):
        self.last = math.nan

    def next_batch(self):
        return torch.tensor(1.0)

    def __call__(self, flow, batch):
        return (flow.w - batch) ** 2

    def after_step(self, flow, batch, loss):
        self.last = float(loss)

    def end_epoch(self, flow, epoch, step):
        target = 1.0 if epoch <= 2 else -5.0  # later epochs look worse on validation
        return dict(epoch=epoch, train=self.last, val=float((flow.w.detach() - target) ** 2))


class Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.0))


def test_early_stopping_restores_the_best_weights_of_any_validated_loss():
    model = Scalar()
    options = TrainingOptions(learning_rate=0.1, schedule="constant", max_epochs=50, patience=3,
                              progress=False, seed=0)  # fmt: skip
    history = train(model, Quadratic(), options)
    assert history["epoch"] == [1, 2, 3, 4, 5]  # stops after 3 epochs without improvement
    assert set(history) == {"epoch", "train", "val", "learning_rate", "time"}
    best = min(history["val"])
    assert history["val"].index(best) == 1
    assert float((model.w.detach() - 1.0) ** 2) == pytest.approx(best)  # epoch 2's weights restored
    assert not model.training


def test_fit_fab_takes_kernels_as_values_without_a_warning():
    """Old code: kernel=MALA was refused (only names); the names now warn and give the same
    run as the class."""
    histories = []
    for kernel in (MALA, functools.partial(MALA), "mala"):
        torch.manual_seed(0)
        flow = NSF(2, transforms=1, hidden_features=(8,), coupling=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = fit_fab(flow, gaussian, steps=2, batch_size=16, replay_buffer=False,
                              kernel=kernel, seed=0, progress=False, log_every=1)  # fmt: skip
        deprecated = [w for w in caught if issubclass(w.category, DeprecationWarning)]
        assert len(deprecated) == (kernel == "mala")
        if deprecated:
            assert "kernel=MALA" in str(deprecated[0].message)
            assert deprecated[0].filename == __file__  # points at this call
        histories.append({k: v for k, v in history.items() if k != "time"})
    assert histories[0] == histories[1] == histories[2]


# ------------------------------------------------------------------------------ module shape


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def test_samplers_do_not_import_training_and_distributed_helpers_are_a_leaf():
    """Old code: samplers/distributed.py read ``_distributed`` from training/loop.py (a package
    cycle samplers <-> training, and a private name imported across modules)."""
    for path in (PACKAGE / "samplers").glob("*.py"):
        for module, _ in _imports(path):
            assert not module.startswith("normflows_sci.training"), f"{path.name} -> {module}"
    for module, _ in _imports(PACKAGE / "_distributed.py"):
        assert not module.startswith("normflows_sci"), module


def test_training_imports_no_private_names_from_other_modules():
    """Old code: fab.py imported ``_StepLog`` from boltzmann.py."""
    for path in (PACKAGE / "training").glob("*.py"):
        for module, names in _imports(path):
            if module.startswith("normflows_sci"):
                private = [n for n in names if n.startswith("_")]
                assert not private, f"{path.name} imports {private} from {module}"


# ------------------------------------------------------------------ results are dataclasses


def test_every_fit_returns_a_training_history_read_like_the_old_dict(tmp_path):
    """Old code returned a plain dict of lists from train and the four fit_* functions. The
    history is now a TrainingHistory (``.learning_rate``, ``.time``, ``.columns``) that is still a
    dict, so pandas and json read it as before (a Mapping that is not a dict made
    ``pandas.DataFrame(history)`` a frame of column names); its checkpoint stores a plain dict."""
    import json

    pandas = pytest.importorskip("pandas")
    from normflows_sci.flows.cnf import CNF
    from normflows_sci.training import TrainingHistory
    from normflows_sci.training.checkpoint import read_checkpoint

    x, path = data(), tmp_path / "run.ckpt"
    runs = {
        ("epoch", "train_loss", "val_loss"): fit_flow(
            realnvp(),
            x[:192],
            val_data=x[192:],
            max_epochs=2,
            batch_size=64,
            seed=1,
            progress=False,
            checkpoint=path,
        ),
        tuple(BoltzmannLoss.history_keys): fit_boltzmann(
            realnvp(), gaussian, steps=2, batch_size=16, seed=2, progress=False, log_every=1
        ),
        tuple(FABLoss.history_keys): fit_fab(
            NSF(2, transforms=1, hidden_features=(8,), coupling=True),
            gaussian,
            steps=2,
            batch_size=16,
            replay_buffer=False,
            seed=3,
            progress=False,
            log_every=1,
        ),
        tuple(FlowMatchingLoss.history_keys): fit_flow_matching(
            CNF(2, hidden_features=(8,), seed=0),
            x,
            steps=2,
            batch_size=64,
            seed=4,
            progress=False,
        ),
    }
    for columns, history in runs.items():
        assert isinstance(history, TrainingHistory)
        assert list(history) == [*columns, "learning_rate", "time"] == list(history.keys())
        assert list(history.columns) == list(columns)
        assert history["time"] is history.time and history["learning_rate"] is history.learning_rate
        assert "time" in history and "nonsense" not in history and len(history) == len(columns) + 2
        plain = history.to_dict()
        assert type(plain) is dict and plain == history and dict(history) == plain
        assert len({len(v) for v in plain.values()}) == 1
        with pytest.raises(KeyError):
            history["nonsense"]
        frame = pandas.DataFrame(history)
        assert list(frame.columns) == list(history) and len(frame) == len(history.time)
        assert json.loads(json.dumps(history)) == json.loads(json.dumps(plain))
    stored = read_checkpoint(path)["history"]
    assert type(stored) is dict and stored == runs["epoch", "train_loss", "val_loss"]
