"""The /watch page's script and style (``watch.js``, ``watch.css``): one
copy, inlined into both pages that show it, the team Datasette's
(``/-/broadsheet/watch``, in Datasette's look) and the control plane's
(``/watch``). Plain JS drawing inline SVG, no build step and nothing
fetched from elsewhere: a primary may have no way out to the network."""

from __future__ import annotations

import functools
import html
from pathlib import Path

HERE = Path(__file__).parent


@functools.cache
def script() -> str:
    return (HERE / "watch.js").read_text()


@functools.cache
def style() -> str:
    return (HERE / "watch.css").read_text()


def container(state: str, events: str) -> str:
    """The element the script fills: where it reads the state from, and the
    event stream that keeps it current (URLs, relative or absolute)."""
    return (
        f'<div id="broadsheet-watch" data-state="{html.escape(state)}" data-events="{html.escape(events)}">'
        '<p class="bw-conn bw-wait">connecting…</p></div>'
    )


def page(shell: str, state: str, events: str) -> str:
    """``shell`` (an HTML page with ``{{style}}``, ``{{body}}`` and
    ``{{script}}`` in it) filled in."""
    return (
        shell.replace("{{style}}", style())
        .replace("{{body}}", container(state, events))
        .replace("{{script}}", script())
    )
