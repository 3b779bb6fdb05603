"""Masked columns on a real cluster: seeded random writes to a masked,
filtered table leave every read node serving exactly ``SELECT <masks> FROM
t WHERE <filter>`` as data.db computes it, and no unmasked value in any byte
of a read node (database, WAL, LTX, process memory)."""

from __future__ import annotations

import random

from conftest import create_table, settle
from primary import store
from test_partial import all_rows, scan

SENTINEL = "UNMASKED-SENTINEL-8b4"
MASKS = {"email": "NULL", "postcode": "substr(postcode, 1, 4)", "lat": "round(lat, 2)"}
FILTER = "consent = 1"


def person(rng: random.Random, i: int) -> dict:
    return {
        "id": i,
        "name": f"person {i}",
        "email": f"{SENTINEL}-{rng.randrange(10**6)}@example.com",
        "postcode": f"EH{rng.randrange(10)} {SENTINEL}-{rng.randrange(1000)}",
        "lat": rng.uniform(50, 58) + 0.000123,
        "consent": rng.randrange(2),
    }


def served_by_data_db(db) -> list[dict]:
    masked = ", ".join(f"{e} AS {c}" for c, e in MASKS.items())
    cursor = db.execute(f"SELECT id, name, {masked}, consent FROM masked_people WHERE {FILTER} ORDER BY id")
    names = [d[0] for d in cursor.getdescription()]
    return [dict(zip(names, row)) for row in cursor]


def test_random_writes_to_a_masked_filtered_table_serve_the_masked_select_and_no_unmasked_byte(cluster, control, db):
    rng = random.Random(8)
    create_table(cluster, "masked_people", [person(rng, i) for i in range(1, 61)])
    result = control.publish("masked_people", spec={"masks": MASKS, "where": FILTER})
    cluster.wait_for_replicas(result["public_txid"])
    next_id = 61
    for round_ in range(6):
        with store.immediate(db):
            for _ in range(rng.randrange(3, 9)):
                ids = [i for (i,) in db.execute("SELECT id FROM masked_people")]
                op, fresh = rng.random(), person(rng, next_id)
                if op < 0.35:
                    db.execute("INSERT INTO masked_people VALUES (:id, :name, :email, :postcode, :lat, :consent)", fresh)
                    next_id += 1
                elif op < 0.85:
                    db.execute(
                        "UPDATE masked_people SET email = :email, postcode = :postcode, lat = :lat, consent = :consent"
                        " WHERE id = :target",
                        {**fresh, "target": rng.choice(ids)},
                    )
                else:
                    db.execute("DELETE FROM masked_people WHERE id = ?", (rng.choice(ids),))
        settle(cluster)
        cluster.wait_for_replicas()
        expected = served_by_data_db(db)
        for node in cluster.replicas:
            assert all_rows(node.url, "masked_people") == expected, f"round {round_}, {node.url}"
    assert scan(cluster, [SENTINEL.encode()]) == []
