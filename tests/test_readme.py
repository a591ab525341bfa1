"""What users copy from README.md works as written.

Every ```python block runs on its own (a fresh namespace, a temporary working directory): a block
that uses a name it does not define, or raises for any other reason, fails its test. Shell blocks
are not executed; the commands they show must name things that exist: the ``normflows-sci`` entry
point and its subcommands (parsed by the CLI's own parser), extras of ``pip install``, modules run
with ``python -m`` and scripts run with ``python path.py``. Scripts named anywhere in the README
(``tutorials/...py``, ``benchmarks/...py``) must exist.
"""

from __future__ import annotations

import argparse
import configparser
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from normflows_sci.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# Extras a block may need; a block that fails to import one of these is skipped, not failed.
OPTIONAL_MODULES = {"openmm", "openmmtools", "mdtraj", "pyarrow", "pandas", "arviz"}

_FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def code_blocks(text: str, language: str) -> list[tuple[int, str, str]]:
    """``(first line number, heading above, code)`` of every fenced block in ``language``."""
    blocks = []
    for match in _FENCE.finditer(text):
        if match.group(1) != language:
            continue
        line = text.count("\n", 0, match.start()) + 2  # the fence itself is one line
        headings = re.findall(r"^#+ (.+)$", text[: match.start()], re.MULTILINE)
        blocks.append((line, headings[-1] if headings else "top", match.group(2)))
    return blocks


def run_block(code: str, name: str) -> dict:
    """Execute ``code`` as a fresh ``__main__``-like module and return its namespace."""
    namespace = {"__name__": "__readme__"}
    exec(compile(code, name, "exec"), namespace)
    return namespace


def _slug(heading: str) -> str:
    return re.sub(r"\W+", "_", heading).strip("_")


PYTHON_BLOCKS = code_blocks(README.read_text(encoding="utf-8"), "python")
SHELL_BLOCKS = code_blocks(README.read_text(encoding="utf-8"), "bash")


def test_code_blocks_are_found():
    # The README shows the tabular, Boltzmann, hybrid, manifold and flow-API examples in Python and
    # the quick start in the shell: a parser that finds fewer would make the tests below vacuous.
    assert len(PYTHON_BLOCKS) >= 5
    assert len(SHELL_BLOCKS) >= 2


def test_extraction_sees_an_undefined_name(tmp_path, monkeypatch):
    """The runner executes each block in a fresh namespace: a name from an earlier block fails."""
    monkeypatch.chdir(tmp_path)
    text = "```python\nvalue = 1\n```\n\ntext\n\n```python\nprint(value)\n```\n"
    first, second = code_blocks(text, "python")
    assert (first[0], second[0]) == (2, 8)
    run_block(first[2], "first")
    with pytest.raises(NameError, match="value"):
        run_block(second[2], "second")


@pytest.mark.parametrize(
    "line, heading, code",
    PYTHON_BLOCKS,
    ids=[f"line{line}-{_slug(heading)}" for line, heading, _ in PYTHON_BLOCKS],
)
def test_python_block_runs_as_written(line, heading, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks may save files; never into the repository
    monkeypatch.setenv("MPLBACKEND", "Agg")
    try:
        run_block(code, f"README.md:{line}")
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] in OPTIONAL_MODULES:
            pytest.skip(f"README.md:{line} needs the optional {error.name!r}")
        raise


def _extras() -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return set(config["options.extras_require"])


def _console_scripts() -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return {line.split("=")[0].strip() for line in lines}


def check_command(words: list[str]) -> None:
    """Raise ``AssertionError`` if a shell command names a missing script, extra or subcommand."""
    program, args = words[0], words[1:]
    if program == "normflows-sci":
        assert program in _console_scripts(), "no normflows-sci console script in setup.cfg"
        build_parser().parse_args(args)  # exits (SystemExit) on an unknown subcommand or option
    elif program == "pip":
        assert args[:2] == ["install", "-e"], words
        spec = args[2]
        assert spec.startswith("."), words
        extras = re.fullmatch(r"\.(?:\[([\w,]+)\])?", spec)
        assert extras, f"unexpected pip target {spec!r}"
        for extra in (extras.group(1) or "").split(","):
            assert not extra or extra in _extras(), f"no extra {extra!r} in setup.cfg"
    elif program == "python":
        if args[0] == "-m":
            assert importlib.util.find_spec(args[1]) is not None, f"no module {args[1]}"
        else:
            assert (ROOT / args[0]).is_file(), f"no script {args[0]}"
    else:
        raise AssertionError(f"the README runs an unexpected program {program!r}")


@pytest.mark.parametrize("line, heading, code", SHELL_BLOCKS, ids=[str(b[0]) for b in SHELL_BLOCKS])
def test_shell_block_names_what_exists(line, heading, code):
    for command_line in code.strip().splitlines():
        for command in command_line.split("&&"):
            check_command(shlex.split(command))


def test_command_checks_reject_what_does_not_exist():
    with pytest.raises(SystemExit):
        check_command(["normflows-sci", "train", "data.csv"])
    with pytest.raises(AssertionError, match="no extra"):
        check_command(["pip", "install", "-e", ".[tests]"])
    with pytest.raises(AssertionError, match="no script"):
        check_command(["python", "tutorials/missing.py"])
    check_command(["normflows-sci", "sample", "model.nfs", "-n", "10"])


def test_every_named_script_and_subcommand_exists():
    text = README.read_text(encoding="utf-8")
    scripts = set(re.findall(r"\b((?:tutorials|benchmarks)/\w+\.py)\b", text))
    assert len(scripts) >= 6
    for script in sorted(scripts):
        assert (ROOT / script).is_file(), f"README.md names {script}, which does not exist"
    (subparsers,) = [
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    choices = set(subparsers.choices)
    used = set(re.findall(r"\bnormflows-sci (\w+)", text))
    assert "demo" in used and used <= choices, used - choices
    # The tabular section's "- CLI:" bullet lists every subcommand, each as a code span.
    bullet = re.search(r"^- CLI: (.*?)(?=^- |^$)", text, re.MULTILINE | re.DOTALL)
    assert bullet, "README.md has no '- CLI:' bullet"
    spans = [span.split() for span in re.findall(r"`([^`]+)`", bullet.group(1))]
    listed = {words[1] if words[0] == "normflows-sci" else words[0] for words in spans}
    assert listed == choices, (
        f"README lists subcommands {sorted(listed)}, CLI has {sorted(choices)}"
    )
