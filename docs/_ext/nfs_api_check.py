"""Sphinx extension: warn (an error under ``-W``) for every public name missing from docs/api/."""

from __future__ import annotations

from api_inventory import undocumented_names
from sphinx.util import logging

logger = logging.getLogger(__name__)


def _check(app) -> None:
    for name in undocumented_names():
        logger.warning(
            "public name %s is not in the API reference: add it to an autosummary in docs/api/",
            name,
            type="nfs",
            subtype="api",
        )


def setup(app):
    app.connect("builder-inited", _check)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
