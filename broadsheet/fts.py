"""Full-text tables: which table an external-content FTS table indexes.

Both roles need this: the publisher copies a published table's full-text
companions, and the read-node rule lets Datasette search them."""

from __future__ import annotations

import re

_CONTENT = re.compile(r"""content\s*=\s*(?:'((?:[^']|'')*)'|"((?:[^"]|"")*)"|\[([^\]]*)\]|([\w$]+))""", re.I)


def content_table(sql: str | None) -> str | None:
    """The table an FTS virtual table's ``content=`` option names, if any."""
    if not sql or not re.match(r"\s*CREATE\s+VIRTUAL\s+TABLE\b.*\bUSING\s+FTS", sql, re.I | re.S):
        return None
    m = _CONTENT.search(sql)
    if not m:
        return None
    value = next(g for g in m.groups() if g is not None)
    return value.replace("''", "'").replace('""', '"') or None
