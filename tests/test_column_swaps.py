"""A swap of column names never publishes a private column, on a real
cluster: through Datasette's alter API (with a team token), SQL in one
transaction and sqlite-utils' transform from a script, with a spec that
lists columns, one that excludes them, and a row filter. Each time the
swapped-in column holds a sentinel: it is in no byte of any read node
(files, LTX, process memory), the table answers 403 there, and the audit
log says why. A view over a table that is dropped is withdrawn and never
holds up the next publish."""

from __future__ import annotations

import time

import httpx
import pytest

from broadsheet.litefs import Pos
from conftest import create_table, rows, settle, status, team_db, wait_until
from primary import store
from test_partial import scan


def alter(cluster, token: str, table: str, *operations: tuple[str, dict]) -> httpx.Response:
    """Several operations in one request to Datasette's alter-table API."""
    return httpx.post(
        f"{cluster.primary.url}/data/{table}/-/alter",
        json={"operations": [{"op": op, "args": args} for op, args in operations]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def swap_table(cluster, control, table: str, sentinel: str, spec: dict) -> None:
    """``table`` (id, name, secret, city, home) published with ``spec`` and
    served by every read node. ``secret`` holds ``sentinel``-SECRET; the
    rows outside Leeds (which a filter on city leaves out) have
    ``sentinel``-FILTERED in their name; ``home`` is Leeds everywhere."""
    create_table(
        cluster, table,
        [{"id": i, "name": f"name {i}" if i % 2 else f"{sentinel}-FILTERED {i}", "secret": f"{sentinel}-SECRET {i}",
          "city": "Leeds" if i % 2 else "York", "home": "Leeds"} for i in range(1, 11)],
    )
    result = control.publish(table, spec=spec)
    cluster.wait_for_replicas(result["public_txid"])
    assert rows(cluster.replicas[0].url, table)[0]["name"] == "name 1"


def assert_private_and_said_why(cluster, db, table: str, needles: list[str], reason: str, by: str) -> None:
    wait_until(lambda: table not in store.public_tables(db), message=f"{table} made private")
    settle(cluster)
    cluster.wait_for_replicas()
    for node in cluster.replicas:
        assert status(node.url, f"/public/{table}.json") == 403
    entry = store.audit_entries(db, table=table, limit=1)[0]
    assert entry["operation"] == "unpublish" and reason in (entry["reason"] or ""), entry
    assert entry["actor"].startswith(by), entry
    assert scan(cluster, [n.encode() for n in needles]) == []


# spec, (the name taken over, the column that takes it), what must never be public
SPECS = {
    "columns": ({"columns": ["id", "name"]}, ("name", "secret"), ["SECRET"]),
    "exclude_columns": ({"exclude_columns": ["secret"]}, ("secret", "name"), ["SECRET"]),
    "where": ({"columns": ["id", "name"], "where": "city = 'Leeds'"}, ("city", "home"), ["SECRET", "FILTERED"]),
}


@pytest.mark.parametrize("variant", list(SPECS))
def test_a_swap_through_the_alter_api_publishes_nothing_of_the_swapped_in_column(cluster, control, token, db, variant):
    """Two renames in one request (Datasette rebuilds the table): the
    alteration itself makes the table private, in its own transaction, and
    it is never published again in the altering actor's name."""
    spec, (name, other), kinds = SPECS[variant]
    table, sentinel = f"alter_swap_{variant}", f"ALTER-SWAP-SENTINEL-{variant.upper()}"
    swap_table(cluster, control, table, sentinel, spec)
    response = alter(
        cluster, token, table, ("rename_column", {"name": name, "to": f"old_{name}"}),
        ("rename_column", {"name": other, "to": name}),
    )
    assert response.status_code == 200, response.text
    assert_private_and_said_why(
        cluster, db, table, [f"{sentinel}-{k}" for k in kinds],
        f"{name!r} now names another column (the one published as {other!r})", "broadsheet:alter-table by tester",
    )
    actors = [e["actor"] for e in store.audit_entries(db, table=table, limit=5)]
    assert not any(a.endswith("(alter-table)") for a in actors), actors
    health = control.health()
    assert any(w["name"] == table and w["kind"] == "table" for w in health["withdrawn"]), health["withdrawn"]


@pytest.mark.parametrize("variant", list(SPECS))
def test_a_swap_in_one_sql_transaction_publishes_nothing_of_the_swapped_in_column(cluster, control, db, variant):
    """The two renames in one transaction of a script, a row written in that
    same transaction and another afterwards: the publisher follows the
    columns (SQLite renames them in place) and fails closed."""
    spec, (name, other), kinds = SPECS[variant]
    table, sentinel = f"sql_swap_{variant}", f"SQL-SWAP-SENTINEL-{variant.upper()}"
    swap_table(cluster, control, table, sentinel, spec)
    with store.immediate(db):
        db.execute(f'ALTER TABLE "{table}" RENAME COLUMN {name} TO old_{name}')
        db.execute(f'ALTER TABLE "{table}" RENAME COLUMN {other} TO {name}')
        db.execute(f"INSERT INTO \"{table}\" (id, {name}) VALUES (99, '{sentinel}-SECRET later')")
    with store.immediate(db):  # by a script that knows nothing of it
        db.execute(f"INSERT INTO \"{table}\" (id, {name}) VALUES (100, '{sentinel}-SECRET afterwards')")
    assert_private_and_said_why(
        cluster, db, table, [f"{sentinel}-{k}" for k in kinds],
        f"{name!r} now names another column (the one published as {other!r})",
        "broadsheet:publisher (spec no longer fits: ",
    )


def test_a_swap_by_sqlite_utils_transform_from_a_script_publishes_nothing(cluster, control, db):
    """transform rebuilds the table (create, copy, drop, rename): no column
    can be followed through it, so the table fails closed, and nothing of the
    swapped-in column is copied even though the spec's names all exist."""
    table, sentinel = "transform_swap", "TRANSFORM-SWAP-SENTINEL"
    swap_table(cluster, control, table, sentinel, {"columns": ["id", "name"]})
    team_db(cluster)[table].transform(rename={"name": "old_name", "secret": "name"})
    assert_private_and_said_why(cluster, db, table, [f"{sentinel}-SECRET"], store.REBUILT_REASON, store.REBUILT_ACTOR)


def test_a_view_whose_table_is_dropped_is_withdrawn_and_publishing_goes_on(cluster, control, token, db):
    """Publish a view over a table, drop the table through Datasette's API:
    the next cycle publishes an unrelated write within its usual time (a
    write asking Broadsheet-Wait: public gets its public TXID), unpublishing
    another table works, the view is withdrawn, audit-logged, named on
    /health."""
    create_table(cluster, "beats", [{"id": i, "desk": f"desk {i}"} for i in range(1, 4)])
    create_table(cluster, "wires", [{"id": 1, "text": "first"}])
    create_table(cluster, "bystander", [{"id": 1, "text": "here"}])
    with store.immediate(db):
        db.execute("CREATE VIEW beat_desks AS SELECT desk FROM beats")
    try:
        for name in ("beats", "wires", "bystander", "beat_desks"):
            result = control.publish(name)
        cluster.wait_for_replicas(result["public_txid"])
        assert rows(cluster.replicas[0].url, "beat_desks")[0] == {"desk": "desk 1"}
        response = httpx.post(f"{cluster.primary.url}/data/beats/-/drop", json={"confirm": True},
                              headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert response.status_code == 200, response.text
        started = time.monotonic()
        written = httpx.post(
            f"{cluster.primary.url}/data/wires/-/insert", json={"row": {"id": 2, "text": "second"}},
            headers={"Authorization": f"Bearer {token}", "Broadsheet-Wait": "public"}, timeout=15,
        )
        assert written.status_code == 201 and "broadsheet-public-txid" in written.headers, written.headers
        # Within a publish cycle's usual time (milliseconds; the wait gives up at 10 s).
        assert time.monotonic() - started < 2.0
        cluster.wait_for_replicas(int(written.headers["broadsheet-public-txid"]))
        for node in cluster.replicas:
            assert [r["text"] for r in rows(node.url, "wires")] == ["first", "second"]
        unpublished = control.publish("bystander", public=False)
        cluster.wait_for_replicas(unpublished["public_txid"])
        wait_until(lambda: "beat_desks" not in store.public_tables(db), message="the view withdrawn")
        for node in cluster.replicas:
            assert status(node.url, "/public/beat_desks.json") == 403
            assert status(node.url, "/public/bystander.json") == 403
        entry = store.audit_entries(db, table="beat_desks", limit=1)[0]
        assert entry["operation"] == "unpublish" and entry["reason"] == "view no longer compiles: no such table: beats"
        health = control.health()
        assert {"name": "beat_desks", "kind": "view", "reason": entry["reason"]}.items() <= next(
            w for w in health["withdrawn"] if w["name"] == "beat_desks"
        ).items()
        assert Pos.read(cluster.primary.public_db).txid >= unpublished["public_txid"]
    finally:
        # A view whose table is gone makes SQLite refuse every RENAME in data.db: the team drops it.
        with store.immediate(db):
            db.execute("DROP VIEW IF EXISTS beat_desks")
