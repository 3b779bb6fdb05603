"""The queries of one request that a time limit cut short, where Datasette
answers 200 all the same (a facet in ``facets_timed_out``, a table page
without its count, an autocomplete without rows): such a page depends on
how busy the node was, not only on the request and the position, so it is
never kept (replica/cache.py)."""

from __future__ import annotations

import contextvars

from datasette.database import QueryInterrupted

_interrupted: contextvars.ContextVar[list | None] = contextvars.ContextVar("broadsheet_interrupted", default=None)


def collecting() -> list:
    """A list that gathers, from now on in this request, each query of
    public.db a time limit cuts."""
    cut: list = []
    _interrupted.set(cut)
    return cut


def note(datasette, db) -> None:
    """Note each query of public.db cut by a time limit, except the probes
    Datasette expects to be cut and only decorate a page (facet
    suggestions, the table counts of the index page: budgets of
    ``facet_suggest_time_limit_ms`` or less)."""
    if getattr(db.execute, "_broadsheet_noting", False):
        return
    execute = db.execute
    probe_ms = datasette.setting("facet_suggest_time_limit_ms")

    async def noting(*args, **kwargs):
        try:
            return await execute(*args, **kwargs)
        except QueryInterrupted:
            cut = _interrupted.get()
            budget = kwargs.get("custom_time_limit", args[3] if len(args) > 3 else None)
            if cut is not None and (not budget or budget > probe_ms):
                cut.append(args[0] if args else kwargs.get("sql"))
            raise

    noting._broadsheet_noting = True
    db.execute = noting
