"""Start Datasette with exactly the plugins a role names.

Datasette loads every installed plugin by default; a read node must never
run a primary-only plugin (nor the reverse), so each role's Datasette runs
through ``launch`` with its own plugins registered by hand and, through
DATASETTE_LOAD_PLUGINS, only the packages the team chose for it
(``packages``: a read node's BROADSHEET_READ_NODE_PLUGINS).
"""

from __future__ import annotations

import importlib
import os
import sys


def launch(plugin_modules: list[str], argv: list[str], packages: tuple[str, ...] = ()) -> None:
    from .plugins import load_list

    os.environ["DATASETTE_LOAD_PLUGINS"] = load_list(packages)
    from datasette.cli import cli
    from datasette.plugins import pm

    for name in plugin_modules:
        pm.register(importlib.import_module(name), name=name)
    sys.exit(cli.main(args=argv, prog_name="datasette"))
