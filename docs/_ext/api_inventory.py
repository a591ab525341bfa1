"""Which public names the API reference must document, and which ones it does.

Shared by ``docs/conf.py`` (the build fails on an undocumented name) and ``tests/test_docs.py``.

Public namespaces (discovered by walking the package, not listed by hand):

* ``normflows_sci`` and every subpackage (a folder with ``__init__.py``): their ``__all__``;
* every top-level module ``normflows_sci.<module>`` (``baselines``, ``plotting``, ``io``, ...);
* every module of a package whose own ``__all__`` is empty (``normflows_sci.interop.nflows``);
* the modules in ``EXTRA_PUBLIC_MODULES``, whose functions the README presents as public.

A name is documented when an ``autosummary`` entry in ``docs/api/*.rst`` resolves to it: either
``namespace.name`` itself (entry under ``.. currentmodule:: namespace``) or, for a re-export, an
entry on the namespace's page that ends in ``.name`` and resolves to the same object.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

PACKAGE = "normflows_sci"
EXTRA_PUBLIC_MODULES = ("normflows_sci.transforms.splines",)
API_DIR = Path(__file__).resolve().parent.parent / "api"

__all__ = [
    "API_DIR",
    "documented_entries",
    "public_names",
    "public_namespaces",
    "resolve",
    "undocumented_names",
]


def public_namespaces() -> list[str]:
    """Names of the public namespaces of the package, in walk order."""
    root = importlib.import_module(PACKAGE)
    names = [PACKAGE]
    for info in pkgutil.walk_packages(root.__path__, PACKAGE + "."):
        short = info.name.rpartition(".")[2]
        if short.startswith("_"):
            continue
        parent_name = info.name.rpartition(".")[0]
        if info.ispkg or parent_name == PACKAGE:
            names.append(info.name)
            continue
        parent = importlib.import_module(parent_name)
        if not getattr(parent, "__all__", None) or info.name in EXTRA_PUBLIC_MODULES:
            names.append(info.name)
    return names


def public_names() -> dict[str, list[str]]:
    """``namespace -> __all__`` for every public namespace (empty ``__all__`` kept)."""
    return {
        name: list(getattr(importlib.import_module(name), "__all__", []))
        for name in public_namespaces()
    }


def resolve(dotted: str):
    """The object named by a dotted path (module attribute chain), or raise ``ImportError``."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                raise ImportError(f"{dotted!r}: {'.'.join(parts[:cut])} has no attribute {attr!r}")
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot import any prefix of {dotted!r}")


_DIRECTIVE = re.compile(r"^\.\. (\w[\w:-]*)::\s*(.*)$")


def documented_entries(api_dir: Path = API_DIR) -> list[tuple[str, str, str]]:
    """``(page, current module, entry)`` for every autosummary entry of the API sources."""
    entries = []
    for page in sorted(api_dir.glob("*.rst")):
        module, in_autosummary = None, False
        for line in page.read_text(encoding="utf-8").splitlines():
            match = _DIRECTIVE.match(line)
            if match:
                directive, argument = match.groups()
                in_autosummary = directive == "autosummary"
                if directive in ("currentmodule", "py:currentmodule", "module", "py:module"):
                    module = argument.strip()
                continue
            if not in_autosummary:
                continue
            if line and not line[0].isspace():
                in_autosummary = False
                continue
            text = line.strip()
            if text and not text.startswith(":"):
                entries.append((page.stem, module or "", text.lstrip("~")))
    return entries


def _full_name(module: str, entry: str) -> str:
    if module:
        candidate = f"{module}.{entry}"
        try:
            resolve(candidate)
            return candidate
        except ImportError:
            pass
    return entry


def undocumented_names(api_dir: Path = API_DIR) -> list[str]:
    """``namespace.name`` of every public name with no autosummary entry (empty when complete)."""
    listed: dict[str, list[str]] = {}
    for page, module, entry in documented_entries(api_dir):
        listed.setdefault(page, []).append(_full_name(module, entry))
    everything = [full for fulls in listed.values() for full in fulls]
    missing = []
    for namespace, names in public_names().items():
        module = importlib.import_module(namespace)
        on_page = listed.get(namespace, [])
        for name in names:
            target = f"{namespace}.{name}"
            if target in everything:
                continue
            value = getattr(module, name)
            if any(full.endswith("." + name) and _same(full, value) for full in on_page):
                continue
            missing.append(target)
    return missing


def _same(full: str, value) -> bool:
    try:
        return resolve(full) is value
    except ImportError:
        return False
