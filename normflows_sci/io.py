"""Files: models (a JSON config plus tensors, in one zip archive, written atomically) and data
tables (CSV, ``.npy`` or Parquet, read by :func:`read_table`).

Layout (``format_version`` 1)::

    model.nfs (zip)
      config.json    {"format": "normflows_sci.model", "format_version": 1,
                      "package_version": ..., "kind": ..., ...user config...}
      weights.pt     torch.save of a flat {name: tensor} dict, read with weights_only=True

Loading never unpickles arbitrary objects and never allocates more than the file can justify:

* the config is JSON, read through a bounded stream (at most :data:`MAX_CONFIG_BYTES`
  decompressed, nested at most :data:`MAX_CONFIG_DEPTH` levels);
* tensors go through :func:`read_torch`: ``torch.load(weights_only=True)`` of an uncompressed
  PyTorch archive of at most :data:`MAX_WEIGHTS_BYTES`, every tensor dense (no expanded views
  that claim more elements than their storage holds);
* weights must be finite, when saving and when loading.

A missing, truncated, oversized or foreign file raises ``ValueError`` naming the path, the member
and the reason. Interrupted writes leave a temporary file ``.NAME.PID.XXXXXXXX.tmp`` next to the
target; the next write to the same target removes those of writers that are gone.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
import tempfile
import time
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from normflows_sci._version import __version__

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "MAX_WEIGHTS_BYTES",
    "MAX_PICKLE_BYTES",
    "STALE_TEMPORARY_SECONDS",
    "save_model",
    "load_model",
    "atomic_write",
    "read_torch",
    "data_fingerprint",
    "read_table",
    "write_table",
    "TableFileError",
]

FORMAT = "normflows_sci.model"
FORMAT_VERSION = 1
# Largest decompressed config.json accepted (a config is column names, a spec and a history).
MAX_CONFIG_BYTES = 8 * 2**20
# Deepest nesting of lists/objects accepted in a config (real configs nest 3 levels).
MAX_CONFIG_DEPTH = 32
# Largest weights.pt (decompressed) and largest torch file read by read_torch by default.
MAX_WEIGHTS_BYTES = 2 * 2**30
# Largest pickle (the structure, not the tensor data) inside a torch file.
MAX_PICKLE_BYTES = 64 * 2**20
# A temporary file of atomic_write untouched this long, whose writer is gone, is removed.
STALE_TEMPORARY_SECONDS = 600.0

# mkstemp's random part: 8 characters of [a-z0-9_].
_RANDOM_PART = r"[a-z0-9_]{8}"


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (True when it cannot be told)."""
    if pid <= 0 or os.name == "nt":
        return pid > 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Remove temporaries that interrupted writes of ``path`` left behind.

    A temporary is stale when it has not been modified for :data:`STALE_TEMPORARY_SECONDS` AND
    its writer (the pid in its name) is no longer running here. Both conditions: a live writer
    on this machine keeps its file however slow it is, and a writer on another machine sharing
    the folder keeps writing (so its file stays fresh) until it renames it. Names without a pid
    (written by older versions) are judged by age alone.
    """
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:(\d+)\.)?{_RANDOM_PART}\.tmp")
    now = time.time()
    try:
        candidates = list(path.parent.iterdir())
    except OSError:
        return
    for candidate in candidates:
        match = pattern.fullmatch(candidate.name)
        if match is None:
            continue
        pid = match.group(1)
        try:
            if now - candidate.lstat().st_mtime < STALE_TEMPORARY_SECONDS:
                continue
            if pid is not None and _process_alive(int(pid)):
                continue
            candidate.unlink()
        except OSError:  # gone already, or not ours to remove: never fail the write for it
            continue


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so a
    crash never leaves a half-written file behind.

    Missing parent folders are created; the file gets the permissions a plain ``open()`` would give
    it. The temporary is named ``.NAME.PID.XXXXXXXX.tmp``; after writing, temporaries of the same
    target left by writers that died (``kill -9``, power loss) are removed (see
    :data:`STALE_TEMPORARY_SECONDS`). Returns the path.

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
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"
    )
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
    _remove_stale_temporaries(path)
    return path


# ------------------------------------------------------------------------------------ tensors


def _check_finite_tensors(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise ``ValueError`` naming ``where`` and the first tensor with NaN or infinite entries.

    Example:
        >>> _check_finite_tensors({"ok": torch.ones(2), "bad": torch.tensor([1.0, float("nan")])}, "model")
        Traceback (most recent call last):
            ...
        ValueError: model: tensor 'bad' has 1 non-finite (NaN or infinite) entries
    """
    for name, tensor in tensors.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise ValueError(
                    f"{where}: tensor {name!r} has {bad} non-finite (NaN or infinite) entries"
                )


def _check_loaded_tensors(value, name: str) -> None:
    """Every tensor in a loaded structure must be a dense strided tensor that addresses no more
    elements than its storage holds (a stride-0 view of a few bytes can claim terabytes)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_CONFIG_DEPTH:
            raise ValueError(f"{name} nests containers more than {MAX_CONFIG_DEPTH} levels deep")
        if isinstance(item, torch.Tensor):
            if item.layout != torch.strided or item.is_quantized or item.is_meta:
                raise ValueError(f"{name} holds a {item.layout} tensor; only dense tensors")
            if item.numel() * item.element_size() > item.untyped_storage().nbytes():
                raise ValueError(
                    f"{name} holds a tensor of shape {tuple(item.shape)} that is a view larger "
                    "than its storage (an expanded or overlapping view); refusing it"
                )
        elif isinstance(item, Mapping):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)


def read_torch(source: bytes | str | os.PathLike, *, name: str, max_bytes: int = MAX_WEIGHTS_BYTES):
    """``torch.load(weights_only=True)`` of a ``torch.save`` archive, refusing anything that
    could run code or allocate more memory than the file holds.

    The archive must be PyTorch's zip format (the legacy pickle-stream format is refused), every
    member stored uncompressed (``torch.save`` never compresses, so a compressed member can only
    be a decompression bomb), at most ``max_bytes`` in all and its pickle at most
    :data:`MAX_PICKLE_BYTES`. Only tensors and plain containers are unpickled; every tensor must be
    dense and no larger than its storage. Tensors are loaded on the CPU.

    Args:
        source: the file's bytes or its path.
        name: how the file is named in errors (e.g. ``"model.nfs member weights.pt"``).
        max_bytes: size limit of the archive.

    Raises:
        ValueError: any of the above, naming ``name``.

    Example:
        >>> buffer = io.BytesIO()
        >>> torch.save({"w": torch.ones(2)}, buffer)
        >>> read_torch(buffer.getvalue(), name="demo")["w"].tolist()
        [1.0, 1.0]
        >>> read_torch(b"cos\\nsystem\\n(S'echo hi'\\ntR.", name="evil.pt")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: evil.pt is not a PyTorch archive ...
    """
    in_memory = isinstance(source, (bytes, bytearray, memoryview))
    size = len(source) if in_memory else os.path.getsize(source)
    if size > max_bytes:
        raise ValueError(f"{name} has {size} bytes, more than the limit of {max_bytes}")
    handle = io.BytesIO(source) if in_memory else source
    try:
        with zipfile.ZipFile(handle) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise ValueError(
            f"{name} is not a PyTorch archive (the zip format of torch.save): {error}"
        ) from error
    total = 0
    for member in members:
        if member.compress_type != zipfile.ZIP_STORED or member.file_size != member.compress_size:
            raise ValueError(
                f"{name}: member {member.filename} is compressed; torch.save never compresses, so "
                "this is not a file it wrote (refusing a possible decompression bomb)"
            )
        if member.filename.endswith(".pkl") and member.file_size > MAX_PICKLE_BYTES:
            raise ValueError(
                f"{name}: member {member.filename} has {member.file_size} bytes of pickle, more "
                f"than the limit of {MAX_PICKLE_BYTES}"
            )
        total += member.file_size
    if total > max_bytes:
        raise ValueError(f"{name} holds {total} bytes, more than the limit of {max_bytes}")
    if in_memory:
        handle.seek(0)
    try:
        value = torch.load(handle, weights_only=True, map_location="cpu")
    except Exception as error:  # torch raises several types for damaged or hostile data
        raise ValueError(
            f"{name} could not be read as plain tensors (damaged, or it holds objects other than "
            f"tensors and containers): {' '.join(str(error).split())[:500]}"
        ) from error
    _check_loaded_tensors(value, name)
    return value


def data_fingerprint(values) -> str:
    """``"dtype shape sha256:HEX"`` of a tensor or array: equal exactly when the contents are.

    Example:
        >>> a = data_fingerprint(torch.arange(4.0))
        >>> a == data_fingerprint(torch.arange(4.0)), a == data_fingerprint(2 * torch.arange(4.0))
        (True, False)
        >>> a.split()[:2]
        ['torch.float32', '(4,)']
    """
    if isinstance(values, torch.Tensor):
        flat = values.detach().cpu().contiguous().reshape(-1)
        raw = flat.view(torch.uint8).numpy() if flat.numel() else b""
        dtype, shape = str(values.dtype), tuple(values.shape)
    else:
        array = np.ascontiguousarray(values)
        raw, dtype, shape = array.view(np.uint8).reshape(-1), f"numpy.{array.dtype}", array.shape
    return f"{dtype} {shape} sha256:{hashlib.sha256(raw).hexdigest()}"


# ------------------------------------------------------------------------------------ model files


def save_model(path: str | os.PathLike, config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """Save a JSON-serialisable ``config`` and a flat dict of tensors to ``path`` atomically.

    Tensors are detached and moved to the CPU; the format header (``format``, ``format_version``,
    ``package_version``) is added to the config. Returns the path.

    Raises:
        TypeError: ``config`` is not JSON-serialisable, or ``tensors`` is not ``{str: Tensor}``.
        ValueError: a tensor has NaN or infinite entries (a model that could not be loaded).

    Example:
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = save_model(Path(folder) / "model.nfs", {"kind": "demo"},
        ...                       {"weight": torch.ones(2)})
        ...     config, tensors = load_model(path)
        >>> config["kind"], config["format"], tensors["weight"].tolist()
        ('demo', 'normflows_sci.model', [1.0, 1.0])
    """
    if not all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in tensors.items()):
        raise TypeError("tensors must be a dict {name: Tensor}")
    _check_finite_tensors(tensors, f"refusing to save {path}")
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__}
    try:
        config_text = json.dumps({**header, **config}, indent=2, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise TypeError(f"config must be JSON-serialisable: {error}") from error
    weights = io.BytesIO()
    torch.save({name: t.detach().cpu() for name, t in tensors.items()}, weights)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", config_text)
        zf.writestr("weights.pt", weights.getvalue())
    return atomic_write(path, archive.getvalue())


def _read_member(archive: zipfile.ZipFile, member: str, limit: int, path: Path) -> bytes:
    """A member's bytes, at most ``limit`` of them: the size in the header is checked first, and
    the read is bounded too, since a crafted header can understate the size."""
    info = archive.getinfo(member)
    too_big = f"{path}: member {member} decompresses to more than {limit} bytes (the limit)"
    if info.file_size > limit:
        raise ValueError(f"{too_big}: its header says {info.file_size}")
    try:
        with archive.open(info) as stream:
            data = stream.read(limit + 1)
    # BadZipFile (CRC), zlib.error, NotImplementedError (unknown compression), EOFError, ...
    except Exception as error:
        raise ValueError(
            f"{path} is not a readable normflows_sci model file: member {member} is damaged: "
            f"{error}"
        ) from error
    if len(data) > limit:
        raise ValueError(too_big)
    return data


def _too_deep(value, limit: int) -> str | None:
    """The location of the first container nested deeper than ``limit``, else None."""
    stack = [(value, 0, "config")]
    while stack:
        item, depth, where = stack.pop()
        if isinstance(item, (dict, list)) and depth >= limit:
            return where
        if isinstance(item, dict):
            stack.extend((v, depth + 1, f"{where}[{k!r}]") for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, depth + 1, f"{where}[{i}]") for i, v in enumerate(item))
    return None


def _read_config(path: Path, data: bytes) -> dict:
    """Parse and check the header of config.json."""
    try:
        config = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{path}: member config.json is not valid JSON: {error}") from error
    except RecursionError as error:  # stdlib json recurses per nesting level
        raise ValueError(
            f"{path}: member config.json nests lists/objects too deeply to read"
        ) from error
    if not isinstance(config, dict):
        raise ValueError(
            f"{path}: member config.json must hold a JSON object, got a {type(config).__name__}"
        )
    if config.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a normflows_sci model file (format {config.get('format')!r})"
        )
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has model format version {version!r}; this package reads up to "
            f"{FORMAT_VERSION}: upgrade normflows_sci"
        )
    deep = _too_deep(config, MAX_CONFIG_DEPTH)
    if deep is not None:
        raise ValueError(
            f"{path}: config.json field {deep} is nested more than {MAX_CONFIG_DEPTH} levels deep"
        )
    return config


def load_model(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read ``(config, tensors)`` from a file written by :func:`save_model`.

    Members are read through bounded streams (:data:`MAX_CONFIG_BYTES`,
    :data:`MAX_WEIGHTS_BYTES`), the weights through :func:`read_torch`, and every tensor must be
    finite. The caller validates the config's own fields.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a normflows_sci model file, a newer format, a damaged, oversized or
            hostile file, or non-finite weights; the message names the file and the member.

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
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise ValueError(f"{path} is not a readable normflows_sci model file: {error}") from error
    with archive:
        missing = {"config.json", "weights.pt"} - set(archive.namelist())
        if missing:
            raise ValueError(
                f"{path} is not a readable normflows_sci model file: it lacks "
                f"{' and '.join(sorted(missing))}"
            )
        config_bytes = _read_member(archive, "config.json", MAX_CONFIG_BYTES, path)
        weights = _read_member(archive, "weights.pt", MAX_WEIGHTS_BYTES, path)
    config = _read_config(path, config_bytes)
    tensors = read_torch(weights, name=f"{path}: member weights.pt")
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in tensors.items()
    ):
        raise ValueError(f"{path} has damaged weights: expected a dict of named tensors")
    _check_finite_tensors(tensors, f"{path}: member weights.pt")
    return config, tensors


# ------------------------------------------------------------------------------------ tables


class TableFileError(ValueError):
    """A data file that cannot be read as a table; the message names the file (and the
    line and column at fault where there is one)."""


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def table_format(path: str | os.PathLike) -> tuple[str, bool]:
    """``(format suffix, gzip-compressed)`` of a data file's name, as :func:`read_table` reads it.

    Example:
        >>> table_format("runs/data.CSV.gz"), table_format("x.npy")
        (('.csv', True), ('.npy', False))
    """
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] == ".gz"
    if compressed:
        suffixes = suffixes[:-1]
    return (suffixes[-1] if suffixes else ""), compressed


# Cells that mean "no value" in exported tables: a column of numbers with some of these is a
# numeric column with missing values, not a column of labels.
MISSING_MARKERS = frozenset({"na", "n/a", "nan", "null", "none", "?", "-", "."})


def _csv_rows(path: Path, compressed: bool, delimiter: str) -> tuple[list[str] | None, list]:
    """``(names or None, [(line, cells), ...])`` of a CSV file, checked for shape."""
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            header = next(reader, None)
            header_line = reader.line_num
            rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except UnicodeDecodeError:
        raise TableFileError(f"{path} is not a text CSV file (it is not UTF-8 text)") from None
    except (csv.Error, gzip.BadGzipFile, EOFError) as error:
        raise TableFileError(f"{path} is not a readable CSV file: {error}") from None
    if header is None or not any(c.strip() for c in header):
        raise TableFileError(f"{path} is empty")
    names: list[str] | None = [c.strip() for c in header]
    if all(_is_number(c) for c in names):
        # No header row: the first line is data.
        rows.insert(0, (header_line, header))
        names = None
    else:
        for position, name in enumerate(names):
            if not name:
                raise TableFileError(f"{path}: header column {position + 1} has no name")
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise TableFileError(f"{path}: duplicate column names in the header: {duplicated}")
    width = len(header)
    if not rows:
        raise TableFileError(f"{path} has a header but no data rows")
    for line, row in rows:
        if len(row) != width:
            raise TableFileError(
                f"{path}, line {line}: {len(row)} fields, but the header has {width}"
            )
    return names, rows


def _text_columns(path: Path, names: list[str], rows: list, text) -> list[int]:
    """Positions of the columns kept as text: ``text`` ``"auto"`` (every column with a cell
    that is not a number), or column names. A column whose non-numbers are all missing-value
    markers (``NA``, ``nan``, ...) or empty is numeric with missing values: ``TableFileError``."""
    if text is None:
        return []
    if text != "auto":  # names the file lacks are left to the caller's column check
        return [names.index(c) for c in text if c in names]
    chosen = []
    for j, column in enumerate(names):
        try:  # numpy parses a column of numbers at once; only other columns are scanned
            np.array([row[j] for _, row in rows], dtype=np.float64)
            continue
        except ValueError:
            pass
        words = [(line, row[j]) for line, row in rows if not _is_number(row[j])]
        if not words:
            continue
        labels = [(line, w) for line, w in words if w.strip().lower() not in MISSING_MARKERS]
        empty = [(line, w) for line, w in words if not w.strip()]
        if empty or not labels:
            line, cell = (empty or words)[0]
            what = "(empty field)" if not cell.strip() else f"{cell!r}"
            raise TableFileError(
                f"{path}, line {line}, column {column!r}: missing value {what}; impute or drop "
                "the rows with missing values first"
            )
        chosen.append(j)
    return chosen


def _read_csv(path: Path, compressed: bool, delimiter: str, text=None) -> tuple[np.ndarray, list]:
    names, rows = _csv_rows(path, compressed, delimiter)
    labels = _text_columns(path, names or [], rows, text) if names is not None else []
    numeric = [j for j in range(len(rows[0][1])) if j not in labels]
    try:
        values = np.array([[row[j] for j in numeric] for _, row in rows], dtype=np.float64)
    except ValueError:
        values = None
    if values is None:  # find the first offending cell for a precise message
        for line, row in rows:
            for j in numeric:
                cell = row[j]
                if not _is_number(cell):
                    column = names[j] if names is not None else f"x{j}"
                    what = "missing value (empty field)" if not cell.strip() else f"{cell!r}"
                    raise TableFileError(
                        f"{path}, line {line}, column {column!r}: {what} is not a number"
                    )
        raise TableFileError(f"{path} is not a numeric table")  # pragma: no cover - defensive
    if not labels:
        return values, names
    for j in labels:
        for line, row in rows:
            if not row[j].strip():
                raise TableFileError(
                    f"{path}, line {line}, column {names[j]!r}: missing value (empty field); "
                    "impute or drop the rows with missing values first"
                )
    table = np.empty((len(rows), len(rows[0][1])), dtype=object)
    table[:, numeric] = values
    table[:, labels] = np.array([[row[j].strip() for j in labels] for _, row in rows], object)
    return table, names


def _read_parquet(path: Path) -> tuple[np.ndarray, list[str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TableFileError(
            f"reading Parquet ({path.name}) needs pyarrow, which is not installed: "
            "pip install pyarrow (or convert the file to CSV)"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises its own exception types for damaged files
        raise TableFileError(f"{path} is not a readable Parquet file: {error}") from None
    names = [str(n) for n in table.column_names]
    columns = []
    for name, column in zip(names, table.columns):
        try:
            columns.append(np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64))
        except (TypeError, ValueError):
            raise TableFileError(
                f"{path}: column {name!r} is not numeric ({column.type})"
            ) from None
    if not columns:
        raise TableFileError(f"{path} has no columns")
    return np.column_stack(columns), names


def _read_npy(path: Path) -> np.ndarray:
    """A numeric ``.npy`` array as float64 ``(rows, columns)`` (1-D: one column); no pickles."""
    with open(path, "rb") as handle:
        if handle.read(6) != b"\x93NUMPY":
            raise TableFileError(f"{path} is not a .npy file (no NumPy header)")
    try:
        values = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise TableFileError(f"{path} is not a readable .npy array: {error}") from None
    if not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
        raise TableFileError(f"{path} holds {values.dtype} values, not numbers")
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise TableFileError(
            f"{path} must hold a 2-D array (rows, columns), got shape {values.shape}"
        )
    return values.astype(np.float64)


def read_table(
    path: str | os.PathLike, *, what: str = "DATA", text=None
) -> tuple[np.ndarray, list | None]:
    """Read a table from CSV (header row), ``.npy`` or Parquet, checked for missing values.

    Args:
        path: the file; the format follows the extension (``.npy``, ``.parquet``/``.pq``,
            ``.tsv``, anything else is read as comma-separated text; ``.gz`` for compressed text).
        what: how the file is named in error messages.
        text: which CSV columns hold labels (kept as stripped strings): None (none, every
            cell must be a number), ``"auto"`` (every column with a cell that is not a number) or
            a list of column names (those the file has). Text needs a header row; in a text
            column ``NA`` and the like are levels like any other. ``.npy`` and Parquet files are
            numeric only.

    Returns:
        ``(values, names)``: float64 ``(rows, columns)``, or, when some columns are text, an
        object array whose text columns hold ``str`` and the others ``float``; and the column
        names (``None`` for ``.npy`` files and CSV files without a header row: a first row of
        numbers is data).

    Raises:
        TableFileError: missing or unreadable file, non-numeric cells in a numeric column,
            ragged rows, NaN or inf values, empty fields, or (``text="auto"``) a column of
            numbers and missing-value markers such as ``NA`` (naming the file, and the line and
            column where there is one).

    Example:
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = Path(folder) / "t.csv"
        ...     _ = path.write_text("species,mass\\nAdelie,3.5\\nGentoo,5\\n")
        ...     values, names = read_table(path, text="auto")
        >>> names, values.tolist()
        (['species', 'mass'], [['Adelie', 3.5], ['Gentoo', 5.0]])
    """
    path = Path(path)
    if text is not None and text != "auto" and isinstance(text, str):
        raise TypeError(f"text must be None, 'auto' or a list of column names, got {text!r}")
    if not path.exists():
        raise TableFileError(f"{what} file not found: {path}")
    if path.is_dir():
        raise TableFileError(f"{what} is a folder, not a data file: {path}")
    suffix, compressed = table_format(path)
    names: list[str] | None = None
    if suffix == ".npy" and not compressed:
        values = _read_npy(path)
    elif suffix in (".parquet", ".pq"):
        values, names = _read_parquet(path)
    else:
        delimiter = "\t" if suffix == ".tsv" else ","
        values, names = _read_csv(path, compressed, delimiter, text)
    if len(values) == 0:
        raise TableFileError(f"{path} has no data rows")
    _check_finite_columns(path, values, names)
    return values, names


def _check_finite_columns(path: Path, values: np.ndarray, names: list | None) -> None:
    """``TableFileError`` naming the first numeric column with NaN or infinite values."""
    numeric = [j for j in range(values.shape[1]) if not isinstance(values[0, j], str)]
    bad = ~np.isfinite(values[:, numeric].astype(np.float64))
    if not bad.any():
        return
    column = numeric[int(np.flatnonzero(bad.any(axis=0))[0])]
    rows = np.flatnonzero(bad[:, numeric.index(column)])
    label = names[column] if names is not None else f"x{column}"
    kind = "missing values (NaN)" if np.isnan(float(values[rows[0], column])) else "infinite values"
    raise TableFileError(
        f"{path}: column {label!r} has {kind} in {_count(rows.size, 'row')} (first at data row "
        f"{rows[0] + 1}); impute or drop them first"
    )


def _csv_text(values: np.ndarray, names: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    if values.dtype != object:
        # 9 significant digits round-trip float32 model outputs exactly.
        np.savetxt(buffer, values, delimiter=",", fmt="%.9g")
    else:  # text columns as they are (quoted where needed), numbers as above
        writer.writerows(
            [cell if isinstance(cell, str) else f"{float(cell):.9g}" for cell in row]
            for row in values
        )
    return buffer.getvalue()


def write_table(
    values: np.ndarray, names: Sequence[str], target: str | os.PathLike | TextIO
) -> Path | None:
    """Write a ``(rows, columns)`` table with its column ``names``.

    ``values`` is float, or an object array whose text columns hold ``str`` (as
    :func:`read_table` returns them; CSV only). To a text stream (e.g. ``sys.stdout``): CSV with a header row. To a path: ``.npy`` by
    extension, CSV otherwise, written atomically (:func:`atomic_write`); an existing device or
    pipe such as ``/dev/null`` is written directly, since renaming over it would replace the
    device itself. CSV values have 9 significant digits (float32 model outputs round-trip).

    Returns:
        The path written, or None for a stream.

    Raises:
        TableFileError: the path is a folder.

    Example:
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = write_table(np.array([[1.0, 0.5]]), ["a", "b"], Path(folder) / "t.csv")
        ...     print(path.read_text(), end="")
        a,b
        1,0.5
    """
    if hasattr(target, "write"):
        target.write(_csv_text(values, names))
        target.flush()
        return None
    path = Path(target)
    if path.is_dir():
        raise TableFileError(f"{path} is a folder; give a file name")
    if path.suffix.lower() == ".npy":
        if values.dtype == object:
            raise TableFileError(
                f"{path}: a table with text columns cannot be written as .npy; give a .csv name"
            )
        buffer = io.BytesIO()
        np.save(buffer, values)
        data = buffer.getvalue()
    else:
        data = _csv_text(values, names).encode("utf-8")
    if path.exists() and not path.is_file():
        with open(path, "wb") as handle:
            handle.write(data)
        return path
    return atomic_write(path, data)
