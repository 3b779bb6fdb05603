"""One log format for every broadsheet process. The supervisor prefixes each
line with the time and the process name; a process writes ``component: message``."""

from __future__ import annotations

import sys


def log(component: str, message: str) -> None:
    print(f"{component}: {message}", file=sys.stderr, flush=True)
