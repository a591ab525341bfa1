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


@pytest.mark.parametrize(
    "line, code",
    rst_python_blocks(QUICKSTART.read_text(encoding="utf-8")),
    ids=lambda v: str(v)[:8],
)
def test_quickstart_block_runs_on_its_own(line, code, tmp_path, monkeypatch):
    """Each quick-start block is copied on its own: it must define every name it uses."""
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"docs/quickstart.rst:{line}", "exec"), {"__name__": "__quickstart__"})


def test_quickstart_has_its_blocks():
    assert len(rst_python_blocks(QUICKSTART.read_text(encoding="utf-8"))) >= 2


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
