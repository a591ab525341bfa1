"""Model files: a JSON config plus tensors, in one zip archive, written atomically.

Layout (``format_version`` 1)::

    model.nfs (zip)
      config.json    {"format": "normflows_sci.model", "format_version": 1,
                      "package_version": ..., "kind": ..., ...user config...}
      weights.pt     torch.save of a flat {name: tensor} dict, read with weights_only=True

Loading never unpickles arbitrary objects: the config is JSON and the weights are read by
``torch.load(weights_only=True)``. A missing, truncated or foreign file raises ``ValueError`` with
the path and the reason.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import torch

__all__ = ["FORMAT", "FORMAT_VERSION", "save_model", "load_model", "atomic_write"]

FORMAT = "normflows_sci.model"
FORMAT_VERSION = 1


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so a
    crash never leaves a half-written file behind.

    Missing parent folders are created; the file gets the permissions a plain ``open()`` would give
    it. Returns the path.

    Example:
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = atomic_write(Path(folder) / "runs" / "notes.txt", b"hello")
        ...     path.read_bytes(), [p.name for p in path.parent.iterdir()]  # no temporary left
        (b'hello', ['notes.txt'])
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} exists and is not a regular file; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def save_model(path: str | os.PathLike, config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """Save a JSON-serialisable ``config`` and a flat dict of tensors to ``path`` atomically.

    Tensors are detached and moved to the CPU; the format header (``format``, ``format_version``,
    ``package_version``) is added to the config. Returns the path.

    Example:
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = save_model(Path(folder) / "model.nfs", {"kind": "demo"},
        ...                       {"weight": torch.ones(2)})
        ...     config, tensors = load_model(path)
        >>> config["kind"], config["format"], tensors["weight"].tolist()
        ('demo', 'normflows_sci.model', [1.0, 1.0])
    """
    from normflows_sci import __version__

    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__}
    try:
        config_text = json.dumps({**header, **config}, indent=2, sort_keys=True)
    except TypeError as error:
        raise TypeError(f"config must be JSON-serialisable: {error}") from error
    weights = io.BytesIO()
    torch.save({name: t.detach().cpu() for name, t in tensors.items()}, weights)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", config_text)
        zf.writestr("weights.pt", weights.getvalue())
    return atomic_write(path, archive.getvalue())


def load_model(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read ``(config, tensors)`` from a file written by :func:`save_model`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a normflows_sci model file, a newer format, or a damaged file.

    Example:
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = save_model(Path(folder) / "a.nfs", {"features": 3}, {"bias": torch.zeros(3)})
        ...     config, tensors = load_model(path)
        ...     damaged = atomic_write(Path(folder) / "damaged.nfs", b"not a model")
        ...     load_model(damaged)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: ...damaged.nfs is not a readable normflows_sci model file: ...
        >>> config["features"], tensors["bias"].shape
        (3, torch.Size([3]))
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if not {"config.json", "weights.pt"} <= names:
                raise ValueError("it lacks config.json or weights.pt")
            config = json.loads(zf.read("config.json").decode("utf-8"))
            weights = zf.read("weights.pt")
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, ValueError, OSError) as e:
        raise ValueError(f"{path} is not a readable normflows_sci model file: {e}") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a normflows_sci model file (format {config.get('format')!r})"
        )
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has model format version {version!r}; this package reads up to "
            f"{FORMAT_VERSION}: upgrade normflows_sci"
        )
    try:
        tensors = torch.load(io.BytesIO(weights), weights_only=True, map_location="cpu")
    except Exception as error:  # torch raises several types for damaged data
        raise ValueError(f"{path} has damaged weights: {error}") from error
    if not isinstance(tensors, dict):
        raise ValueError(f"{path} has damaged weights: expected a dict of tensors")
    return config, tensors
