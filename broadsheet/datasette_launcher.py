"""Start Datasette with exactly the plugins a role names.

Datasette loads every installed plugin by default; a read node must never
run a primary-only plugin (nor the reverse), so each role's Datasette runs
through ``launch`` with DATASETTE_LOAD_PLUGINS empty and its plugins
registered by hand.
"""

from __future__ import annotations

import importlib
import os
import sys


def launch(plugin_modules: list[str], argv: list[str]) -> None:
    os.environ["DATASETTE_LOAD_PLUGINS"] = ""
    from datasette.cli import cli
    from datasette.plugins import pm

    for name in plugin_modules:
        pm.register(importlib.import_module(name), name=name)
    sys.exit(cli.main(args=argv, prog_name="datasette"))
