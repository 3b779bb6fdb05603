"""Sphinx configuration for broadsheet's documentation (scripts/docs).

Pages are MyST Markdown. Two are generated from the code, so they cannot
drift: the CLI reference (sphinx-click, from ``broadsheet.cli:cli``) and the
HTTP reference (``_ext/openapi_reference.py``, from the control plane's
OpenAPI document). tests/test_docs.py checks the rest against the source.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))

project = "broadsheet"
author = "the broadsheet team"
copyright = "2026, the broadsheet team"

extensions = [
    "myst_parser",
    "sphinx_click",
    "openapi_reference",
    "cli_commands",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

html_theme = "furo"
html_title = "broadsheet"

# Where the control plane's FastAPI app lives, tried in order (it may move
# into a package of its own).
openapi_apps = ["primary.control.app:app"]

