"""Sphinx extension: run the scripts in ``tutorials/`` with small budgets and render them as pages.

Each tutorial is a plain script: a module docstring (first line = title, rest = reStructuredText
introduction), a ``main(...)`` function and an argparse block under ``if __name__ == "__main__"``.
The build runs every script registered in ``conf.py``'s ``nfs_tutorials`` exactly as a user would,
``python tutorials/<name>.py <args>``, in a fresh process whose working directory is
``docs/tutorials/_run/<name>/`` (so ``--out tutorial_output`` writes there), and writes
``docs/tutorials/<name>.rst`` with the introduction, the command, the printed output, every PNG
figure the run wrote, and the source. A non-zero exit status or a timeout stops the build with the
script's error output. A script in ``tutorials/`` that is not registered is a warning (an error
under ``-W``), so a new tutorial cannot be forgotten.

Set ``NFS_DOCS_RUN_TUTORIALS=0`` to skip the runs while editing prose (the pages then say so).
"""

from __future__ import annotations

import ast
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sphinx.errors import ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)

__all__ = ["setup"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _split_docstring(path: Path) -> tuple[str, str, int]:
    """(title, rest of the docstring, first source line after the docstring)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    doc = ast.get_docstring(tree, clean=True)
    if not doc:
        raise ExtensionError(
            f"{path}: a tutorial needs a module docstring (its first line is the title)"
        )
    first, _, rest = doc.partition("\n")
    title = re.sub(r"^Tutorial:\s*", "", first.strip()).rstrip(".")
    title = title[:1].upper() + title[1:]
    return title, rest.strip("\n"), tree.body[0].end_lineno + 1


def _rst_problems(text: str) -> list[str]:
    """Docutils warnings and errors in ``text``, ignoring Sphinx-only roles and directives."""
    from docutils.frontend import get_default_settings
    from docutils.parsers.rst import Parser
    from docutils.utils import new_document

    settings = get_default_settings(Parser)
    settings.report_level = 5
    settings.halt_level = 5
    settings.warning_stream = io.StringIO()
    document = new_document("<tutorial docstring>", settings)
    messages = []
    document.reporter.attach_observer(messages.append)
    Parser().parse(text, document)
    return [
        f"line {message.get('line')}: {message.astext()}"
        for message in messages
        if message["level"] >= 2
        and "Unknown interpreted text role" not in message.astext()
        and "Unknown directive type" not in message.astext()
    ]


def _indent(text: str, prefix: str = "   ") -> str:
    return "\n".join(prefix + line if line.strip() else "" for line in text.splitlines())


def _run(app, name: str, script: Path, args: list[str], run_dir: Path) -> tuple[str, float]:
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    env = dict(os.environ)
    env["MPLBACKEND"] = "Agg"
    repo = str(script.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    command = [sys.executable, str(script), *args]
    logger.info("[tutorials] running %s %s", script.name, shlex.join(args))
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            cwd=run_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=app.config.nfs_tutorials_timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise ExtensionError(
            f"tutorial {name} did not finish within {app.config.nfs_tutorials_timeout} s"
        ) from error
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).splitlines()[-40:])
        raise ExtensionError(
            f"tutorial {name} failed (exit status {done.returncode}) running "
            f"`python tutorials/{script.name} {shlex.join(args)}`:\n{tail}"
        )
    return _ANSI.sub("", done.stdout).replace("\r", ""), seconds


def _page(name, script, args, title, intro, body_line, output, seconds, figures, depth) -> str:
    full = f"python tutorials/{script.name}"
    small = f"{full} {shlex.join(args)}".strip()
    up = "../" * depth
    lines = [f".. _tutorial-{name}:", "", title, "=" * len(title), ""]
    problems = _rst_problems(intro)
    if problems:
        # A plain-text docstring (written for the terminal) is shown verbatim rather than
        # rendered into broken markup.
        logger.info(
            "[tutorials] %s: docstring is not reStructuredText (%s); shown verbatim",
            name,
            problems[0],
        )
        lines += [".. code-block:: text", "", _indent(intro), ""]
    else:
        lines += [intro, ""]
    lines += [
        "Run it",
        "------",
        "",
        "From the repository root, with the full budget:",
        "",
        ".. code-block:: bash",
        "",
        f"   {full}",
        "",
    ]
    if output is None:
        lines += [
            "This build skipped the run (``NFS_DOCS_RUN_TUTORIALS=0``); "
            "the published documentation shows its output.",
            "",
        ]
    else:
        lines += [
            f"The documentation build ran it with a small budget, ``{small}`` "
            f"({seconds:.0f} s on the build machine), and printed:",
            "",
            ".. code-block:: text",
            "",
            _indent(output.rstrip() or "(no output)"),
            "",
        ]
        if figures:
            lines += ["Figures", "-------", ""]
            for figure, caption in figures:
                lines += [f".. figure:: {figure}", "   :width: 100%", "", f"   ``{caption}``", ""]
    lines += [
        "Source",
        "------",
        "",
        f"``tutorials/{script.name}`` (the docstring above is its first lines):",
        "",
        f".. literalinclude:: {up}../tutorials/{script.name}",
        "   :language: python",
        f"   :lines: {body_line}-",
        "",
    ]
    return "\n".join(lines)


def _generate(app) -> None:
    config = app.config
    srcdir = Path(app.srcdir)
    scripts = Path(config.nfs_tutorials_source).resolve()
    pages = srcdir / "tutorials"
    images = pages / "_images"
    for folder in (images,):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    execute = os.environ.get("NFS_DOCS_RUN_TUTORIALS", "1") != "0"

    registered = [name for name, _ in config.nfs_tutorials]
    for script in sorted(scripts.glob("*.py")):
        if script.stem not in registered and not script.stem.startswith("_"):
            logger.warning(
                "tutorials/%s is not registered: add (%r, [small-budget arguments]) to "
                "nfs_tutorials in docs/conf.py",
                script.name,
                script.stem,
                type="nfs",
                subtype="tutorials",
            )

    toc = []
    for name, raw_args in config.nfs_tutorials:
        script = scripts / f"{name}.py"
        if not script.is_file():
            raise ExtensionError(f"nfs_tutorials names {name!r} but {script} does not exist")
        if isinstance(raw_args, str):
            raw_args = shlex.split(raw_args)
        args = [str(a).replace("{out}", "tutorial_output") for a in raw_args]
        title, intro, body_line = _split_docstring(script)
        output, seconds, figures = None, 0.0, []
        if execute:
            run_dir = pages / "_run" / name
            output, seconds = _run(app, name, script, args, run_dir)
            for png in sorted(run_dir.rglob("*.png"), key=lambda p: (p.stat().st_mtime, p.name)):
                target = images / f"{name}-{png.name}"
                shutil.copyfile(png, target)
                figures.append((f"_images/{target.name}", png.relative_to(run_dir).as_posix()))
        text = _page(name, script, args, title, intro, body_line, output, seconds, figures, 1)
        page = pages / f"{name}.rst"
        if not page.exists() or page.read_text(encoding="utf-8") != text:
            page.write_text(text, encoding="utf-8")
        toc.append(name)

    index = [
        ".. _tutorials:",
        "",
        "Tutorials",
        "=========",
        "",
        "Each tutorial is a plain script in ``tutorials/``: run it with ``python tutorials/<name>.py``",
        "(``--help`` lists its options). Every documentation build executes each one with a small",
        "budget and shows what it printed and drew, so the pages below cannot drift from the code.",
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "",
        *[f"   {name}" for name in toc],
        "",
    ]
    text = "\n".join(index)
    path = pages / "index.rst"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def setup(app):
    app.add_config_value("nfs_tutorials", [], "env")
    app.add_config_value(
        "nfs_tutorials_source", str(Path(__file__).resolve().parents[2] / "tutorials"), "env"
    )
    app.add_config_value("nfs_tutorials_timeout", 1200, "env")
    app.connect("builder-inited", _generate)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
