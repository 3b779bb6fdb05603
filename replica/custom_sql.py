"""Custom SQL on a read node: which requests run it, and how many may run at
once.

Datasette runs every query of every request on a few SQL threads
(``num_sql_threads``, 3 by default). A visitor's own SQL can take one for the
whole time limit, so a handful of slow queries would leave table and row
pages waiting behind them. Custom SQL therefore gets fewer slots than there
are threads; a request that finds them all taken is refused at once (429)
rather than queued, so the threads left over always serve the ordinary
pages.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from urllib.parse import parse_qsl

# Datasette's query page (``/db/-/query``, ``.json``, ``.csv``, ...): ``/db?sql=``
# and ``/db.json?sql=`` redirect there.
_QUERY_PAGE = re.compile(r"^/[^/]+/-/query(\.\w+)?$")


def runs_custom_sql(path: str, query_string: bytes) -> bool:
    """Whether a request runs SQL the visitor wrote: ``?sql=`` on the query
    page, or ``?_where=`` fragments on any table page (rows, count, facets)."""
    keys = {key for key, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)}
    return "_where" in keys or ("sql" in keys and bool(_QUERY_PAGE.match(path)))


class Busy(Exception):
    """Every slot is taken."""


class Slots:
    """At most ``limit`` holders at once; the next one is refused, not queued.
    (One event loop: a plain counter is enough.)"""

    def __init__(self, limit: int):
        self.limit = limit
        self.taken = 0

    @property
    def full(self) -> bool:
        return self.taken >= self.limit

    @contextmanager
    def claim(self):
        if self.full:
            raise Busy(f"all {self.limit} slots are taken")
        self.taken += 1
        try:
            yield
        finally:
            self.taken -= 1
