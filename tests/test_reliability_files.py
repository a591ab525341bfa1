"""Attacks on model files, fit_flow checkpoints and the atomic writer: hostile or damaged files
are refused with a message naming the file and the field, before anything large is built or any
code runs; checkpoints of another run are refused; temporaries of killed writers are removed."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import normflows_sci.io as nio
from normflows_sci import DensityEstimator
from normflows_sci.cli import main
from normflows_sci.flows import NSF
from normflows_sci.training import fit_flow

QUICK = dict(max_epochs=1, hidden_features=(8,), transforms=2, verbose=False, random_state=0)


# ------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A valid two-column model with a bounded column (fitted for one epoch)."""
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=200), rng.exponential(size=200)])
    est = DensityEstimator(bounds={"x1": (0.0, None)}, **QUICK).fit(X)
    return est.save(tmp_path_factory.mktemp("model") / "model.nfs")


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_zip(path: Path, content: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in content.items():
            archive.writestr(name, data)
    return path


def edited(model_file: Path, folder: Path, edit=None, *, config_text=None, weights=None) -> Path:
    """A copy of the model file with its config edited (``edit(config)``) or replaced."""
    content = members(model_file)
    if edit is not None:
        config = json.loads(content["config.json"])
        edit(config)
        content["config.json"] = json.dumps(config).encode()
    if config_text is not None:
        content["config.json"] = config_text
    if weights is not None:
        content["weights.pt"] = weights
    return write_zip(folder / "edited.nfs", content)


def torch_bytes(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def stored_tensors(model_file: Path) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(members(model_file)["weights.pt"]), weights_only=True)


@pytest.fixture
def no_build(monkeypatch):
    """Make building a model from a spec an error: checks must reject before it."""

    def refuse(self, spec):
        raise AssertionError("the model was built from a config that should have been refused")

    monkeypatch.setattr(DensityEstimator, "_build", refuse)


class Plant:
    """Unpickling it creates a folder: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


# ------------------------------------------------------------------------- 1: no code execution


def test_pickled_code_in_weights_is_refused_and_never_runs(model_file, tmp_path):
    marker = tmp_path / "code_ran"
    for weights in (
        torch_bytes({"w": Plant(marker)}),  # torch's zip format with a hostile pickle
        pickle.dumps({"w": Plant(marker)}),  # a bare pickle stream
    ):
        path = edited(model_file, tmp_path, weights=weights)
        with pytest.raises(ValueError, match=r"edited\.nfs: member weights\.pt"):
            DensityEstimator.load(path)
        assert not marker.exists()


def test_pickled_code_in_a_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "code_ran"
    checkpoint = tmp_path / "run.ckpt"
    checkpoint.write_bytes(torch_bytes({"flow": Plant(marker)}))
    flow = NSF(2, transforms=1, hidden_features=(8,))
    with pytest.raises(ValueError, match=r"checkpoint .*run\.ckpt"):
        fit_flow(flow, torch.randn(64, 2), max_epochs=1, progress=False,
                 checkpoint=checkpoint, resume=True)  # fmt: skip
    assert not marker.exists()


# ----------------------------------------------------------------------- 2: bounded model files


def test_config_zip_bomb_is_refused_naming_the_member(model_file, tmp_path):
    config = members(model_file)["config.json"]
    # Valid JSON that decompresses past the limit (a few kB on disk).
    padded = config[:-1] + b" " * (nio.MAX_CONFIG_BYTES + 1) + b"}"
    path = edited(model_file, tmp_path, config_text=padded)
    assert path.stat().st_size < 100_000
    with pytest.raises(ValueError, match=r"edited\.nfs: member config\.json decompresses to more"):
        DensityEstimator.load(path)


def test_zip_header_understating_the_size_is_refused(model_file, tmp_path):
    """The central directory claims 100 bytes for a config of several MB: the bounded stream
    never reads past the claim, and the archive is reported damaged."""
    config = members(model_file)["config.json"]
    padded = config[:-1] + b" " * 3_000_000 + b"}"
    path = edited(model_file, tmp_path, config_text=padded)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("config.json")
        central = archive.start_dir  # config.json is the first entry of the central directory
    assert data[central + 46 : central + 57] == b"config.json"
    data[central + 24 : central + 28] = (100).to_bytes(4, "little")  # uncompressed size
    data[info.header_offset + 22 : info.header_offset + 26] = (100).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"edited\.nfs.*member config\.json"):
        DensityEstimator.load(path)


def test_weights_bomb_and_compressed_torch_archives_are_refused(model_file, tmp_path, monkeypatch):
    # A compressed member inside the torch archive: torch.save never writes one.
    inner = members_of_bytes(torch_bytes({"w": torch.zeros(10)}))
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in inner.items():
            archive.writestr(name, data)
    path = edited(model_file, tmp_path, weights=bomb.getvalue())
    with pytest.raises(ValueError, match=r"member weights\.pt: member .* is compressed"):
        DensityEstimator.load(path)
    # A weights member larger than the (configurable) limit.
    monkeypatch.setattr(nio, "MAX_WEIGHTS_BYTES", 1000)
    with pytest.raises(ValueError, match=r"member weights\.pt decompresses to more than 1000"):
        DensityEstimator.load(model_file)


def members_of_bytes(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_expanded_view_claiming_more_than_its_storage_is_refused(model_file, tmp_path):
    tensors = stored_tensors(model_file)
    name = next(iter(tensors))
    tensors[name] = torch.zeros(1).expand(10**6)  # 4 bytes on disk, 10^6 entries claimed
    path = edited(model_file, tmp_path, weights=torch_bytes(tensors))
    with pytest.raises(ValueError, match="view larger than its storage"):
        DensityEstimator.load(path)


@pytest.mark.parametrize(
    "field, value",
    [("hidden_features", [10**9]), ("transforms", 10**7), ("bins", 10**8)],
)
def test_absurd_sizes_are_refused_before_building(model_file, tmp_path, no_build, field, value):
    def edit(config):
        config["spec"][field] = value

    path = edited(model_file, tmp_path, edit)
    with pytest.raises(ValueError, match=rf"edited\.nfs: config field spec.*{field}"):
        DensityEstimator.load(path)


def test_absurd_column_count_is_refused_before_building(model_file, tmp_path, no_build):
    def edit(config):
        spec, count = config["spec"], 10**5
        names = [f"c{i}" for i in range(count)]
        spec["columns"], spec["target_columns"] = names, names
        for key in ("discrete", "step", "origin", "lower", "upper", "lower_effective",
                    "upper_effective", "tail_df"):  # fmt: skip
            spec[key] = [spec[key][0]] * count

    path = edited(model_file, tmp_path, edit)
    with pytest.raises(
        ValueError, match=r"target_columns'\] lists 100000 columns, but the weights"
    ):
        DensityEstimator.load(path)


def test_config_disagreeing_with_the_tensor_shapes_names_the_tensor(model_file, tmp_path):
    def edit(config):
        config["spec"]["hidden_features"] = [6]  # stored layers are 8 wide
        for record in config.get("selection") or []:  # a consistent edit: only the weights disagree
            record["hidden_features"] = [6]

    with pytest.raises(ValueError, match=r"edited\.nfs: member weights\.pt tensor '.*' has shape"):
        DensityEstimator.load(edited(model_file, tmp_path, edit))


_HEADER = b'{"format": "normflows_sci.model", "format_version": 1, "x": '


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda c: c["spec"].pop("flow"), r"config field spec lacks the field\(s\) \['flow'\]"),
        (lambda c: c["spec"].update(flow="glow"), r"spec\['flow'\] must be one of"),
        (lambda c: c["spec"].update(transforms="5"), r"spec\['transforms'\] must be a positive"),
        (lambda c: c["spec"].update(hidden_features=[8, "x"]), r"spec\['hidden_features'\]"),
        (lambda c: c["spec"].update(discrete=[False]), r"spec\['discrete'\] must be a list of 2"),
        (lambda c: c["spec"].update(target_columns=["x0", "zz"]), r"must split 'columns'"),
        (lambda c: c["spec"].update(lower=[None, 5.0], upper=[None, 1.0]), "must be below"),
        (lambda c: c["params"].update(sneaky=1), r"params has unknown field\(s\) \['sneaky'\]"),
        (lambda c: c["params"].update(heavy_tails=3), r"params\['heavy_tails'\] must be"),
        (lambda c: c.update(history=[1, 2]), "config field history must be a JSON object"),
        (lambda c: c["history"].update(epoch=["one"]), r"history\['epoch'\] must be a list"),
        (lambda c: c.pop("spec"), r"config.json lacks the field\(s\) \['spec'\]"),
        (lambda c: c["spec"].update(extra=json.loads(_deep(40))), "nested more than 32 levels"),
    ],
)
def test_malformed_configs_name_the_file_and_field(model_file, tmp_path, edit, fragment):
    path = edited(model_file, tmp_path, edit)
    with pytest.raises(ValueError, match=r"edited\.nfs") as caught:
        DensityEstimator.load(path)
    assert re.search(fragment, str(caught.value)), str(caught.value)


@pytest.mark.parametrize(
    "text, fragment",
    [
        (b"[1, 2, 3]", "must hold a JSON object, got a list"),
        (_deep(100_000).encode(), "nests lists/objects too deeply"),
        (_HEADER + _deep(100_000).encode() + b"}", "nests lists/objects too deeply"),
        (b"{not json", "config.json is not valid JSON"),
    ],
    ids=["list", "deep", "deep-field", "not-json"],
)
def test_unreadable_configs_are_value_errors(model_file, tmp_path, text, fragment):
    path = edited(model_file, tmp_path, config_text=text)
    with pytest.raises(ValueError, match=r"edited\.nfs") as caught:
        DensityEstimator.load(path)
    assert fragment in str(caught.value)


def test_non_finite_weights_are_never_saved_nor_loaded(model_file, tmp_path):
    est = DensityEstimator.load(model_file)
    name, parameter = next(iter(est.flow_.named_parameters()))
    with torch.no_grad():
        parameter.view(-1)[0] = float("nan")
    target = tmp_path / "nan.nfs"
    with pytest.raises(ValueError, match=rf"refusing to save .*nan\.nfs: tensor '{name}'"):
        est.save(target)
    assert not target.exists() and not list(tmp_path.iterdir())
    tensors = stored_tensors(model_file)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[-1] = float("inf")
    path = edited(model_file, tmp_path, weights=torch_bytes(tensors))
    with pytest.raises(ValueError, match=rf"edited\.nfs: member weights\.pt: tensor '{name}'"):
        DensityEstimator.load(path)


def test_loading_does_not_touch_the_global_random_state(model_file):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    DensityEstimator.load(model_file)
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------------- 3: checkpoint identity


def test_resuming_on_rescaled_data_is_refused(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 2))
    checkpoint = tmp_path / "fit.ckpt"
    options = dict(QUICK, max_epochs=2)
    DensityEstimator(**options).fit(X, checkpoint=checkpoint)
    with pytest.raises(ValueError, match=r"checkpoint .*fit\.ckpt is not from this run.*'table'"):
        DensityEstimator(**options).fit(1000.0 * X, checkpoint=checkpoint, resume=True)
    with pytest.raises(ValueError, match=r"fingerprint 'params': heavy_tails 'auto' in the ch"):
        DensityEstimator(**dict(options, heavy_tails=True)).fit(
            X, checkpoint=checkpoint, resume=True
        )
    with pytest.raises(ValueError, match=r"the checkpoint's seed is 0: pass it \(random_state"):
        DensityEstimator(**dict(options, random_state=None)).fit(
            X, checkpoint=checkpoint, resume=True
        )
    resumed = DensityEstimator(**options).fit(X, checkpoint=checkpoint, resume=True)
    assert resumed.history_["epoch"] == [1, 2]


def _fit(checkpoint, *, data=None, hidden=(8,), learning_rate=1e-3, seed=0, max_epochs=2):
    torch.manual_seed(0)
    flow = NSF(2, transforms=1, hidden_features=hidden)
    data = torch.randn(128, 2, generator=torch.Generator().manual_seed(0)) if data is None else data
    return fit_flow(
        flow, data, batch_size=64, max_epochs=max_epochs, seed=seed, progress=False,
        learning_rate=learning_rate, checkpoint=checkpoint, resume=True,
    )  # fmt: skip


def test_checkpoints_of_another_run_are_refused_naming_the_difference(tmp_path):
    checkpoint = tmp_path / "run.ckpt"
    _fit(checkpoint)
    with pytest.raises(ValueError, match=r"run\.ckpt is not from this run.*architecture: tensor"):
        _fit(checkpoint, hidden=(16,))
    with pytest.raises(ValueError, match=r"run\.ckpt is not from this run.*: data 'data'"):
        _fit(checkpoint, data=torch.randn(128, 2))
    with pytest.raises(
        ValueError, match=r"option 'learning_rate': 0\.001 in the checkpoint, 0\.01"
    ):
        _fit(checkpoint, learning_rate=1e-2)
    assert _fit(checkpoint)["epoch"] == [1, 2]  # the same run resumes (here: already complete)
    # Without a seed, a resumed run takes the checkpoint's (its own fresh seed would differ);
    # under the constant schedule max_epochs is only a budget, which may grow.
    flow = NSF(2, transforms=1, hidden_features=(8,))
    data = torch.randn(128, 2, generator=torch.Generator().manual_seed(0))
    for resume, epochs in ((False, 1), (True, 3)):
        history = fit_flow(flow, data, batch_size=64, max_epochs=epochs, progress=False,
                           schedule="constant", checkpoint=checkpoint, resume=resume)  # fmt: skip
    assert history["epoch"] == [1, 2, 3]


@pytest.mark.parametrize(
    "content, fragment",
    [
        (lambda good: good[: len(good) // 2], "run.ckpt"),  # truncated
        (lambda good: torch_bytes({"weights": torch.ones(2)}), "it lacks"),
        (lambda good: torch_bytes([1, 2, 3]), "holds no dict"),
        (lambda good: b"", "run.ckpt"),
    ],
)
def test_damaged_checkpoints_are_value_errors_naming_the_file(tmp_path, content, fragment):
    checkpoint = tmp_path / "run.ckpt"
    _fit(checkpoint)
    checkpoint.write_bytes(content(checkpoint.read_bytes()))
    with pytest.raises(ValueError, match=r"checkpoint .*run\.ckpt") as caught:
        _fit(checkpoint)
    assert fragment in str(caught.value)


def test_checkpoint_without_a_fingerprint_is_refused(tmp_path):
    checkpoint = tmp_path / "run.ckpt"
    _fit(checkpoint)
    state = torch.load(checkpoint, weights_only=True)
    del state["fingerprint"]
    checkpoint.write_bytes(torch_bytes(state))
    with pytest.raises(ValueError, match="has no fingerprint"):
        _fit(checkpoint)


# ------------------------------------------------------------------ 4: temporaries of dead writers


KILLED_WRITER = textwrap.dedent(
    """
    import importlib.util, os, signal, sys
    # normflows_sci/io.py alone (not the whole package): a quick start
    spec = importlib.util.spec_from_file_location("nio", sys.argv[2])
    nio = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nio)
    def die(*args):  # SIGKILL after the temporary is written, before the rename
        os.kill(os.getpid(), signal.SIGKILL)
    nio.os.replace = die
    nio.atomic_write(sys.argv[1], b"half a model")
    """
)


def test_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "model.nfs"
    argv = [sys.executable, "-c", KILLED_WRITER, str(target), nio.__file__]
    killed = subprocess.run(argv, check=False)
    assert killed.returncode == -signal.SIGKILL
    (stale,) = tmp_path.glob(".model.nfs.*.tmp")  # what kill -9 leaves behind
    old = time.time() - 2 * nio.STALE_TEMPORARY_SECONDS
    os.utime(stale, (old, old))
    # A concurrent writer still at work (this process), even if its file is old, and a fresh
    # temporary of a dead writer (it may be a writer on another machine sharing the folder).
    live_old = tmp_path / f".model.nfs.{os.getpid()}.abcdefgh.tmp"
    live_old.write_bytes(b"in progress")
    os.utime(live_old, (old, old))
    dead_pid = stale.name.split(".")[3]
    dead_fresh = tmp_path / f".model.nfs.{dead_pid}.ijklmnop.tmp"
    dead_fresh.write_bytes(b"recent")
    other_target = tmp_path / f".other.nfs.{dead_pid}.qrstuvwx.tmp"
    other_target.write_bytes(b"not ours")
    os.utime(other_target, (old, old))

    nio.atomic_write(target, b"model")

    assert target.read_bytes() == b"model"
    assert not stale.exists()
    assert live_old.exists() and dead_fresh.exists() and other_target.exists()


# ------------------------------------------------------------------------------- 5: the CLI


def test_cli_prints_one_line_for_every_bad_model_file(model_file, tmp_path, capsys):
    marker = tmp_path / "code_ran"
    bad = {
        "list": dict(config_text=b"[]"),
        "deep": dict(config_text=_deep(100_000).encode()),
        "bomb": dict(config_text=b"{" + b" " * (nio.MAX_CONFIG_BYTES + 1) + b"}"),
        "pickle": dict(weights=torch_bytes({"w": Plant(marker)})),
        "absurd": dict(edit=lambda c: c["spec"].update(hidden_features=[10**9])),
        "nospec": dict(edit=lambda c: c.pop("spec")),
        "badtype": dict(edit=lambda c: c["spec"].update(columns="x0,x1")),
    }
    data = tmp_path / "rows.csv"
    data.write_text("x0,x1\n0.5,1.0\n")
    for label, change in bad.items():
        path = edited(model_file, tmp_path, **change).rename(tmp_path / f"{label}.nfs")
        for argv in (["info", path], ["score", path, data], ["sample", path, "-n", 2]):
            code = main([str(a) for a in argv])
            err = capsys.readouterr().err
            lines = err.strip().splitlines()
            assert code == 2, (label, err)
            assert len(lines) == 1 and lines[0].startswith("normflows-sci: error: "), (label, err)
            assert f"{label}.nfs" in lines[0], (label, err)
    assert not marker.exists()
