"""Sphinx configuration for the normflows_sci documentation.

Build (offline, warnings are errors):

    python -m sphinx -j 1 -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

import normflows_sci  # noqa: E402

project = "normflows_sci"
author = "normflows_sci developers"
copyright = "the normflows_sci developers, MIT licence"
release = normflows_sci.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinxarg.ext",
    "sphinx_copybutton",
    "nfs_tutorials",
    "nfs_api_check",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "_screenshots", "_ext", "_templates", "Thumbs.db", ".DS_Store"]
root_doc = "index"

# API reference: autosummary writes one page per public object into api/generated/.
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
add_module_names = False

# Keep "--option" and quotes as typed (command lines in tutorial docstrings).
smartquotes = False

html_theme = "furo"
html_title = f"normflows_sci {release}"
html_static_path = []
html_show_sourcelink = False

# Tutorials: (script name in tutorials/, command-line arguments of the small-budget build run).
# Adding a tutorial is one line here. Each runs as `python tutorials/<name>.py <args>` in a fresh
# process during the build; a non-zero exit fails the build. Figures it writes are shown.
nfs_tutorials = [
    ("flows_quickstart", "--steps 300"),
    ("tabular_density", "--max-time 15 --out {out}"),
    ("boltzmann_generator", "--steps 150 --dim 4 --samples 20000"),
    ("hybrid_sampling", "--chains 256 --warmup 120 --steps 100 --dim 4 --out {out}"),
    ("torus_angles", "--source md --md-seconds 10 --max-frames 4000 --max-epochs 10 --max-time 20"),
    ("rigid_bodies", "--steps 150 --samples 5000 --max-time 30"),
]

# Sections used in the package's Google-style docstrings beyond napoleon's defaults.
napoleon_custom_sections = [("Common args", "params_style")]
# Attributes as field lists: autodoc also documents the same attributes as members.
napoleon_use_ivar = True


_TRAILING_UNDERSCORE = re.compile(r"(?<![\w`\\])([A-Za-z]\w*)_(?![\w`\\])")


def _escape_fitted_attributes(app, what, name, obj, options, lines) -> None:
    """Escape scikit-learn style names (``means_``) written bare inside docstring prose.

    reStructuredText reads ``word_`` as a hyperlink reference. Runs after napoleon, so the
    attribute names of ``:ivar name_:`` fields are escaped too; inline literals and doctest lines
    are left alone.
    """
    for index, line in enumerate(lines):
        if line.lstrip().startswith((">>>", "...")):
            continue
        parts = line.split("``")
        for k in range(0, len(parts), 2):  # even parts lie outside ``literals``
            parts[k] = _TRAILING_UNDERSCORE.sub(r"\1\\_", parts[k])
        lines[index] = "``".join(parts)


def _summary_keeps_literals(original):
    """Wrap autosummary's summary extraction, which can cut a sentence inside ``a... b``.

    Sphinx re-parses the whole stanza instead of the candidate summary when checking for broken
    markup, so a period inside an inline literal ends the summary there. Keep the whole first
    paragraph in that case.
    """

    def extract_summary(doc, settings):
        summary = original(doc, settings)
        if summary.count("``") % 2:
            stanza = []
            for line in doc:
                if stanza and not line.strip():
                    break
                if line.strip():
                    stanza.append(line.strip())
            summary = " ".join(stanza)
        return summary

    return extract_summary


def setup(app):
    import sphinx.ext.autosummary as autosummary

    autosummary.extract_summary = _summary_keeps_literals(autosummary.extract_summary)
    # After napoleon (priority 500) has turned Google sections into field lists.
    app.connect("autodoc-process-docstring", _escape_fitted_attributes, priority=600)
