"""The documentation site: every public name is in the API reference, and the site builds with -W.

The fast test parses ``docs/api/*.rst`` (no Sphinx needed); the full build executes every
registered tutorial with a small budget, so it is marked slow.
"""

from __future__ import annotations

import importlib.util
import os
import re
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _inventory():
    spec = importlib.util.spec_from_file_location(
        "api_inventory", DOCS / "_ext" / "api_inventory.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_public_namespaces_are_discovered():
    namespaces = _inventory().public_namespaces()
    for expected in (
        "normflows_sci",
        "normflows_sci.transforms",
        "normflows_sci.distributions",
        "normflows_sci.flows",
        "normflows_sci.nn",
        "normflows_sci.training",
        "normflows_sci.energies",
        "normflows_sci.energies.molecular",
        "normflows_sci.samplers",
        "normflows_sci.datasets",
        "normflows_sci.interop.nflows",
        "normflows_sci.baselines",
        "normflows_sci.plotting",
    ):
        assert expected in namespaces
    # Implementation modules whose names their package re-exports are not namespaces of their own.
    assert "normflows_sci.samplers.kernels" not in namespaces
    assert "normflows_sci.flows.factories" not in namespaces


def test_every_public_name_is_in_the_api_reference():
    inventory = _inventory()
    missing = inventory.undocumented_names()
    assert not missing, (
        f"{len(missing)} public names are not in docs/api/*.rst (add each to an autosummary "
        f"on its namespace's page): {missing}"
    )


def test_api_entries_resolve_to_real_objects():
    inventory = _inventory()
    entries = inventory.documented_entries()
    assert len(entries) > 150
    for _page, module, entry in entries:
        full = f"{module}.{entry}" if module and module != "None" else entry
        try:
            inventory.resolve(full)
        except ImportError:
            inventory.resolve(entry)  # a fully qualified re-export entry


def test_coverage_check_fails_for_an_undocumented_name(tmp_path):
    """Drop one entry from a copy of the API pages: the check must name exactly that entry."""
    inventory = _inventory()
    for page in inventory.API_DIR.glob("*.rst"):
        (tmp_path / page.name).write_text(page.read_text(encoding="utf-8"), encoding="utf-8")
    page = tmp_path / "normflows_sci.samplers.rst"
    text = page.read_text(encoding="utf-8")
    assert "\n   split_rhat\n" in text
    page.write_text(text.replace("\n   split_rhat\n", "\n"), encoding="utf-8")
    assert inventory.undocumented_names(tmp_path) == ["normflows_sci.samplers.split_rhat"]


def test_every_tutorial_is_registered_for_the_build():
    """Each script in tutorials/ is executed by the docs build (one line in docs/conf.py)."""
    registered = [name for name, _ in runpy.run_path(str(DOCS / "conf.py"))["nfs_tutorials"]]
    for script in sorted((ROOT / "tutorials").glob("*.py")):
        assert script.stem in registered, f"register tutorials/{script.name} in docs/conf.py"


def rst_python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, dedented code)`` of every ``.. code-block:: python`` directive."""
    blocks = []
    pattern = r"^\.\. code-block:: python[ \t]*\n((?:[ \t]*\n|[ \t]+\S.*\n?)+)"
    for match in re.finditer(pattern, text, re.MULTILINE):
        line = text.count("\n", 0, match.start()) + 1
        blocks.append((line, textwrap.dedent(match.group(1)).strip("\n") + "\n"))
    return blocks


QUICKSTART = DOCS / "quickstart.rst"


def test_rst_block_extraction_keeps_each_block_whole():
    text = (
        ".. code-block:: python\n\n   a = 1\n\n   b = a\nProse.\n\n.. code-block:: python\n\n   c\n"
    )
    assert rst_python_blocks(text) == [(1, "a = 1\n\nb = a\n"), (8, "c\n")]


# Extras a block may need: a block failing only because one of these is not installed is skipped.
OPTIONAL_MODULES = {"openmm", "openmmtools", "mdtraj", "pandas", "pyarrow", "arviz"}
# A block whose first line is this comment is shown but not run; the rest of the line says why.
NOT_RUN = "# not run:"


def _missing_optional_module(error: BaseException) -> str | None:
    """The optional module whose absence raised ``error`` (through its causes), else ``None``.

    The package re-raises a missing OpenMM as an ``ImportError`` with an install hint, so the
    modules named in the messages count too, but only when they really are not installed.
    """
    named = set()
    while error is not None:
        if isinstance(error, ModuleNotFoundError) and error.name:
            named.add(error.name.split(".")[0])
        named.update(re.findall(r"\w+", str(error)))
        error = error.__cause__ or error.__context__
    missing = [m for m in sorted(named & OPTIONAL_MODULES) if importlib.util.find_spec(m) is None]
    return missing[0] if missing else None


def run_doc_block(code: str, where: str) -> None:
    """Run one documentation block in a fresh namespace; skip it only for a stated reason.

    ``where`` (``page:line``) names the block in tracebacks. The block runs in the caller's working
    directory; torch's thread count, default dtype and grad mode are restored afterwards, because a
    block may set them (the performance guide shows ``torch.set_num_threads``).
    """
    first = code.splitlines()[0].strip() if code.strip() else ""
    if first.startswith(NOT_RUN):
        reason = first[len(NOT_RUN) :].strip()
        if not reason:
            pytest.fail(f"{where}: '{NOT_RUN}' must give the reason the block cannot run")
        pytest.skip(f"{where} is not run: {reason}")
    threads, dtype, grad = (
        torch.get_num_threads(),
        torch.get_default_dtype(),
        torch.is_grad_enabled(),
    )
    try:
        exec(compile(code, where, "exec"), {"__name__": "__docs__"})
    except ImportError as error:
        missing = _missing_optional_module(error)
        if missing is None:
            raise
        pytest.skip(f"{where} needs the optional module {missing!r}")
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)


@pytest.mark.parametrize(
    "line, code",
    rst_python_blocks(QUICKSTART.read_text(encoding="utf-8")),
    ids=lambda v: str(v)[:8],
)
def test_quickstart_block_runs_on_its_own(line, code, tmp_path, monkeypatch):
    """Each quick-start block is copied on its own: it must define every name it uses."""
    monkeypatch.chdir(tmp_path)
    run_doc_block(code, f"docs/quickstart.rst:{line}")


def test_quickstart_has_its_blocks():
    assert len(rst_python_blocks(QUICKSTART.read_text(encoding="utf-8"))) >= 2


# The pages whose python blocks users copy, besides the quick start (tested above). A new guide is
# picked up by the glob.
DOC_PAGES = [
    *sorted((DOCS / "guides").glob("*.rst")),
    DOCS / "index.rst",
    DOCS / "choosing_a_flow.rst",
    DOCS / "installation.rst",
    DOCS / "cli.rst",
]
DOC_BLOCKS = [
    (page.relative_to(DOCS).as_posix(), line, code)
    for page in DOC_PAGES
    for line, code in rst_python_blocks(page.read_text(encoding="utf-8"))
]


@pytest.mark.parametrize(
    "page, line, code", DOC_BLOCKS, ids=[f"{page}:{line}" for page, line, _ in DOC_BLOCKS]
)
def test_doc_block_runs_as_written(page, line, code, tmp_path, monkeypatch):
    """Every python block of the guides, the index and the getting-started pages runs on its own.

    A fresh namespace per block, so a block using a name it does not define (``target``, ``flow``
    or ``x0`` from prose, ``torch`` from an earlier block) fails; an empty working directory, so
    files a block writes never land in the repository.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    run_doc_block(code, f"docs/{page}:{line}")


def test_doc_pages_have_their_blocks():
    """The pages show runnable examples; an extraction that found none would test nothing."""
    found = {page for page, _, _ in DOC_BLOCKS}
    for page in (
        "guides/tabular.rst",
        "guides/boltzmann.rst",
        "guides/hybrid.rst",
        "guides/manifolds.rst",
        "guides/performance.rst",
        "index.rst",
        "installation.rst",
    ):
        assert page in found, page
    not_run = [f"{page}:{line}" for page, line, code in DOC_BLOCKS if code.startswith(NOT_RUN)]
    assert len(not_run) <= len(DOC_BLOCKS) // 4, f"too many blocks are not run: {not_run}"


_LITERAL_BLOCK = re.compile(r"^(?!\.\. )[^\n]*\S::[ \t]*\n[ \t]*\n[ \t]+\S", re.MULTILINE)


def test_doc_pages_show_code_only_in_code_blocks():
    """A ``::`` literal block has no language, so the test above cannot tell python from shell.

    Code on these pages goes in ``.. code-block:: python`` (run above) or ``bash``; the GPU and
    performance snippets used to be bare literal blocks naming undefined ``x``, ``kernel`` and
    ``x_huge``.
    """
    for page in [*DOC_PAGES, QUICKSTART]:
        text = page.read_text(encoding="utf-8")
        for match in _LITERAL_BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            pytest.fail(f"docs/{page.relative_to(DOCS).as_posix()}:{line} is a bare '::' block")


def test_a_failing_block_fails_its_test(tmp_path, monkeypatch):
    """Errors propagate; only a stated reason or a missing optional module skips a block."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NameError, match="target"):
        run_doc_block("print(target)\n", "page.rst:1")
    with pytest.raises(ModuleNotFoundError):
        run_doc_block("import normflows_sci.no_such_module\n", "page.rst:1")
    with pytest.raises(pytest.skip.Exception, match="needs a CUDA GPU"):
        run_doc_block("# not run: needs a CUDA GPU\nraise RuntimeError\n", "page.rst:1")
    with pytest.raises(pytest.fail.Exception, match="reason"):
        run_doc_block("# not run:\nx = 1\n", "page.rst:1")
    # An error naming an optional module skips only when that module is really missing.
    monkeypatch.setitem(globals(), "OPTIONAL_MODULES", {"json", "no_such_extra"})
    with pytest.raises(ImportError, match="json"):
        run_doc_block("raise ImportError('json is broken')\n", "page.rst:1")
    with pytest.raises(pytest.skip.Exception, match="no_such_extra"):
        run_doc_block("raise ImportError('install no_such_extra')\n", "page.rst:1")


@pytest.mark.slow
def test_site_builds_without_warnings(tmp_path):
    pytest.importorskip("sphinx", reason="sphinx is not installed: pip install -e '.[docs]'")
    pytest.importorskip(
        "sphinxarg", reason="sphinx-argparse is not installed: pip install -e '.[docs]'"
    )
    pytest.importorskip("furo", reason="furo is not installed: pip install -e '.[docs]'")
    out = tmp_path / "html"
    env = dict(os.environ, NFS_DOCS_RUN_TUTORIALS="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-E",
            "-j",
            "1",
            "-W",
            "--keep-going",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    assert "warning" not in done.stderr.lower(), done.stderr[-5000:]
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "Boltzmann generators and importance weights" in index
    tutorials = sorted(p.stem for p in (ROOT / "tutorials").glob("*.py"))
    for name in tutorials:
        page = (out / "tutorials" / f"{name}.html").read_text(encoding="utf-8")
        assert "The documentation build ran it" in page, name
    assert (out / "api" / "generated" / "normflows_sci.samplers.split_rhat.html").exists()
    assert "Fit a DensityEstimator to DATA" in (out / "cli.html").read_text(encoding="utf-8")
