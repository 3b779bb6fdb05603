"""Invariant 1: no byte of unpublished data ever reaches a read node: not its
LiteFS data directory (database copy, LTX files), not its mount, not the
memory of its processes."""

import re

from conftest import create_table, file_bytes, rows, status, wait_until
from primary import store
from test_publish import publish

SENTINELS = [b"SENTINEL-7f3a9c-PRIVATE", "SENTINEL-ünïcode-ßecret".encode()]


def memory_chunks(pid: int):
    """Every readable mapping of a process, one bytes object each."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+)", line)
            start, end, perms = int(m.group(1), 16), int(m.group(2), 16), m.group(3)
            if "r" not in perms or end - start > 1 << 30:
                continue
            try:
                mem.seek(start)
                yield mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue


def process_memory_contains(pid: int, needles: list[bytes]) -> list[bytes]:
    """Search every readable mapping of a process for ``needles``."""
    return sorted({n for chunk in memory_chunks(pid) for n in needles if n in chunk})


def process_memory_matches(pid: int, pattern: re.Pattern) -> set[bytes]:
    """Everything in a process's memory that ``pattern`` matches."""
    return {m for chunk in memory_chunks(pid) for m in pattern.findall(chunk)}


def test_private_sentinels_never_reach_a_read_node(cluster, db):
    secret_rows = [{"id": i, "note": f"{SENTINELS[i % 2].decode()} #{i}"} for i in range(20)]
    create_table(cluster, "private_notes", secret_rows)
    create_table(cluster, "bulletin", [{"id": 0, "text": "hello"}])
    publish(cluster, "bulletin")

    # Several publish cycles while the private table keeps changing too.
    for i in range(1, 8):
        with store.immediate(db):
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


LZ4_MAGIC = b"\x04\x22\x4d\x18"


def decompressed(data: bytes) -> bytes:
    """Every LZ4 frame inside ``data`` (an LTX file's body is one), decompressed."""
    import lz4.frame

    out = []
    start = data.find(LZ4_MAGIC)
    while start != -1:
        try:
            out.append(lz4.frame.LZ4FrameDecompressor().decompress(data[start:]))
        except RuntimeError:
            pass
        start = data.find(LZ4_MAGIC, start + 1)
    return b"".join(out)


def test_sentinels_absent_from_compressed_ltx_files(new_cluster):
    """The same scan on a cluster with LiteFS's default LZ4-compressed LTX
    files, decompressing each before looking."""
    cluster = new_cluster(replicas=1, compress=True)
    node = cluster.replicas[0]
    conn = store.connect(str(cluster.primary.data_db))
    with store.immediate(conn):
        conn.execute("CREATE TABLE secrets (id INTEGER PRIMARY KEY, note TEXT)")
        conn.executemany("INSERT INTO secrets (note) VALUES (?)", [(f"{SENTINELS[0].decode()} {i}",) for i in range(50)])
        conn.execute("CREATE TABLE notices (id INTEGER PRIMARY KEY, note TEXT)")
        conn.executemany("INSERT INTO notices (note) VALUES (?)", [(f"PUBLIC-NOTICE-91b2 {i}",) for i in range(50)])
    store.set_public(conn, "notices", True, actor="test")
    for i in range(5):
        with store.immediate(conn):
            conn.execute("INSERT INTO notices (note) VALUES (?)", (f"PUBLIC-NOTICE-91b2 later {i}",))
            conn.execute("INSERT INTO secrets (note) VALUES (?)", (f"{SENTINELS[0].decode()} later {i}",))
        wait_until(lambda: len(rows(node.url, "notices", _size="max")) == 51 + i)
    conn.close()
    cluster.wait_for_replicas()

    ltx_files = [(p, d) for p, d in file_bytes(node.root / "litefs") if p.suffix == ".ltx"]
    assert ltx_files
    plain = b"".join(decompressed(d) for _, d in ltx_files)
    # Decompression works: every published row is there (compressed, LZ4
    # keeps a repeated string as a back-reference, so a raw scan sees fewer).
    assert plain.count(b"PUBLIC-NOTICE-91b2") >= 55
    for path, data in file_bytes(node.root):
        for sentinel in SENTINELS:
            assert sentinel not in data, f"{sentinel!r} in {path}"
            assert sentinel not in decompressed(data), f"{sentinel!r} in {path} (decompressed)"
