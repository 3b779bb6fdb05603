"""Invariant 1: no byte of unpublished data ever reaches a read node: not its
LiteFS data directory (database copy, LTX files), not its mount, not the
memory of its processes."""

import re

from conftest import create_table, file_bytes, rows, status, wait_until
from primary import state
from test_publish import publish

SENTINELS = [b"SENTINEL-7f3a9c-PRIVATE", "SENTINEL-ünïcode-ßecret".encode()]


def process_memory_contains(pid: int, needles: list[bytes]) -> list[bytes]:
    """Search every readable mapping of a process for ``needles``."""
    found = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+)", line)
            start, end, perms = int(m.group(1), 16), int(m.group(2), 16), m.group(3)
            if "r" not in perms or end - start > 1 << 30:
                continue
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            found.update(n for n in needles if n in chunk)
    return sorted(found)


def test_private_sentinels_never_reach_a_read_node(cluster, db):
    secret_rows = [{"id": i, "note": f"{SENTINELS[i % 2].decode()} #{i}"} for i in range(20)]
    create_table(cluster, "private_notes", secret_rows)
    create_table(cluster, "bulletin", [{"id": 0, "text": "hello"}])
    publish(cluster, "bulletin")

    # Several publish cycles while the private table keeps changing too.
    for i in range(1, 8):
        with state.immediate(db):
            db.execute("INSERT INTO bulletin (id, text) VALUES (?, ?)", (i, f"bulletin {i}"))
            db.execute(
                "INSERT INTO private_notes (id, note) VALUES (?, ?)", (100 + i, f"{SENTINELS[0].decode()} later {i}")
            )
        for node in cluster.replicas:
            wait_until(lambda: len(rows(node.url, "bulletin")) == i + 1, message=f"bulletin {i} on {node.name}")
    cluster.wait_for_replicas()

    for node in cluster.replicas:
        assert status(node.url, "/public/private_notes.json") == 403
        scanned = 0
        for path, data in file_bytes(node.root):
            scanned += 1
            for sentinel in SENTINELS:
                assert sentinel not in data, f"{sentinel!r} found in {path}"
        assert scanned > 3  # the database, its LTX files, the mount's files
        for service in (node.litefs_service, node.datasette_service):
            pid = cluster.supervisor.pid(service)
            assert process_memory_contains(pid, SENTINELS) == [], f"sentinel in memory of {service}"


def test_scan_can_see_a_published_string(cluster):
    """The byte scan is able to fail: a string that was published is found in
    the same places the sentinels are looked for."""
    create_table(cluster, "visible", [{"id": 1, "text": "PUBLISHED-MARKER-4d2e"}])
    publish(cluster, "visible")
    for node in cluster.replicas:
        wait_until(lambda: status(node.url, "/public/visible.json") == 200)
    cluster.wait_for_replicas()
    node = cluster.replicas[0]
    assert any(b"PUBLISHED-MARKER-4d2e" in data for _, data in file_bytes(node.root / "litefs"))
    rows(node.url, "visible")
    pid = cluster.supervisor.pid(node.datasette_service)
    assert process_memory_contains(pid, [b"PUBLISHED-MARKER-4d2e"]) == [b"PUBLISHED-MARKER-4d2e"]
