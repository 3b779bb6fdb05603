"""Publishing is a Datasette action (``broadsheet-publish``): Datasette's
permissions and token restrictions decide who may flip a table, through the
control plane and through the table action alike."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from datasette.tokens import TokenRestrictions

from conftest import create_table
from primary import store
from primary.control import auth


def viewer() -> TokenRestrictions:
    """May see every table page (so the table actions menu is rendered)."""
    return TokenRestrictions().allow_all("view-instance").allow_all("view-database").allow_all("view-table")


def restricted_token(cluster, restrictions: TokenRestrictions) -> str:
    ds = auth.datasette(cluster.primary.secret)
    return asyncio.run(ds.create_token("restricted", restrictions=restrictions))


def flip_everywhere(cluster, token: str, table: str) -> tuple[int, int, bool | None]:
    """The status of a publish through the control plane and through the table
    action's form, and whether the table page offers the action."""
    headers = {"Authorization": f"Bearer {token}"}
    control = httpx.post(f"{cluster.primary.control_url}/tables/{table}/publish", headers=headers, timeout=30)
    action = httpx.post(
        f"{cluster.primary.url}/-/broadsheet/visibility/data/{table}",
        data={"operation": "publish"}, headers=headers, timeout=30,
    )
    page = httpx.get(f"{cluster.primary.url}/data/{table}", headers=headers, timeout=30)
    # None: the token may not even see the table page.
    offered = bool(re.search(r"Make public|Make private", page.text)) if page.status_code == 200 else None
    return control.status_code, action.status_code, offered


@pytest.fixture
def table(cluster):
    create_table(cluster, "perm_notes", [{"id": 1, "text": "hello"}])
    yield "perm_notes"
    conn = store.connect(str(cluster.primary.data_db))
    store.set_public(conn, "perm_notes", False, actor="test")
    conn.execute("DROP TABLE perm_notes")
    conn.close()


@pytest.mark.parametrize(
    "restrictions",
    [
        TokenRestrictions().allow_all("view-instance"),
        viewer().allow_resource("data", "airports", "insert-row"),
        viewer().allow_resource("data", "airports", "broadsheet-publish"),
    ],
    ids=["view-instance only", "insert-row on another table", "publish on another table"],
)
def test_a_restricted_token_cannot_publish(cluster, db, table, restrictions):
    before = (store.public_tables(db), store.audit_entries(db, limit=5))
    control, action, offered = flip_everywhere(cluster, restricted_token(cluster, restrictions), table)
    assert (control, action) == (403, 403)
    assert offered is (None if restrictions.all == ["view-instance"] else False)
    assert (store.public_tables(db), store.audit_entries(db, limit=5)) == before


def test_a_token_allowed_to_publish_that_table_can(cluster, db, table):
    restrictions = viewer().allow_resource("data", table, "broadsheet-publish")
    control, action, offered = flip_everywhere(cluster, restricted_token(cluster, restrictions), table)
    assert (control, action, offered) == (200, 200, True)
    assert table in store.public_tables(db)
