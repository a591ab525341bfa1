"""Sphinx configuration for the normflows_sci documentation.

Build (offline, warnings are errors):

    python -m sphinx -j 1 -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

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
    ("particles_lj13", "--mcmc-steps 200 --steps 100 --samples 64 --ode-steps 4 --out {out}"),
]

# Sections used in the package's Google-style docstrings beyond napoleon's defaults.
napoleon_custom_sections = [("Common args", "params_style")]
# Attributes as field lists: autodoc also documents the same attributes as members.
napoleon_use_ivar = True
