"""The team's menu items: "Make public" / "Change what is public" / "Make
private" on a table, "Publish this query" on a query, "Published queries"
on data.db; each only for an actor who may do it."""

from __future__ import annotations

from urllib.parse import urlencode

from datasette.utils import tilde_encode

from broadsheet.names import INTERNAL_PREFIXES

from .actors import is_team
from .data_db import data_db_name, public_specs
from .permissions import may_publish, may_publish_queries


def table_actions(datasette, actor, database, table):
    if not is_team(actor) or database != data_db_name() or table.startswith(INTERNAL_PREFIXES):
        return None

    async def inner():
        if not await may_publish(datasette, actor, table):
            return []
        href = datasette.urls.path(f"/-/broadsheet/visibility/{tilde_encode(database)}/{tilde_encode(table)}")
        if table not in await public_specs(datasette):
            return [
                {
                    "href": href,
                    "label": "Make public",
                    "description": "Choose its columns and rows, preview them, and serve them from every read node",
                }
            ]
        return [
            {
                "href": href,
                "label": "Change what is public",
                "description": "Choose other columns or rows, and preview the change",
            },
            {
                "href": href + "#make-private",
                "label": "Make private",
                "description": "Stop serving it from the read nodes and erase it there",
            },
        ]

    return inner


def query_actions(datasette, actor, database, query_name, sql):
    if not is_team(actor) or database != data_db_name() or not sql:
        return None

    async def inner():
        if not await may_publish_queries(datasette, actor):
            return []
        args = urlencode({"sql": sql, **({"name": query_name} if query_name else {})})
        return [
            {
                "href": datasette.urls.path(f"/-/broadsheet/query/{tilde_encode(database)}?{args}"),
                "label": "Publish this query",
                "description": "Name it and serve it from every read node, if it reads only public tables",
            }
        ]

    return inner


def database_actions(datasette, actor, database):
    if not is_team(actor) or database != data_db_name():
        return None

    async def inner():
        if not await may_publish_queries(datasette, actor):
            return []
        return [
            {
                "href": datasette.urls.path(f"/-/broadsheet/query/{tilde_encode(database)}"),
                "label": "Published queries",
                "description": "The saved queries every read node serves: publish one, or remove it",
            }
        ]

    return inner
