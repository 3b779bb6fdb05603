"""The standby's guard on plain files (the cluster tests in test_standby.py
run it between real LiteFS processes): which LTX files it lets reach the
standby's LiteFS, and reading the data.db a snapshot holds."""

from __future__ import annotations

import struct

import lz4.frame
import pytest
import sqlite_utils

from broadsheet.litefs import LtxHeader, Pos, snapshot_to_sqlite
from primary.backup import Identity, identity_of_file
from primary.standby.acknowledged import Acknowledged, kept
from primary.standby.guard import Kept, judge, position_of

OURS = Identity("c1", 1, "gen-a")


def header(min_txid: int, max_txid: int, commit: int = 4) -> LtxHeader:
    return LtxHeader(flags=0, page_size=4096, commit=commit, min_txid=min_txid, max_txid=max_txid,
                     timestamp_ms=0, pre_apply_checksum=0 if min_txid == 1 else 1 << 63)


COPY = [Kept("this standby's copy", 119, OURS, strict=True)]


@pytest.mark.parametrize(
    "ltx, theirs, allowed, why",
    [
        # An increment: LiteFS applies it only on top of the copy's position.
        (header(120, 120), None, True, None),
        # A snapshot of a data.db made afresh (a primary on an empty volume):
        # behind, or even past the copy's TXID, it is not this data.db.
        (header(1, 4), Identity("c1", 1, "gen-b"), False, "another data.db"),
        (header(1, 500), Identity("c1", 1, "gen-b"), False, "another data.db"),
        # The same data.db, behind the copy (an old disk image), or at its
        # TXID with other writes.
        (header(1, 56), OURS, False, "it is behind"),
        (header(1, 119), OURS, False, "other writes at the same TXID"),
        # The same data.db ahead (the standby was away past the retention).
        (header(1, 130), OURS, True, None),
        # A promotion's later epoch; an older epoch's primary.
        (header(1, 100), Identity("c1", 2, "gen-a"), True, None),
        (header(1, 200), Identity("c1", 0, "gen-a"), False, "older epoch"),
        (header(1, 200), Identity("c2", 1, "gen-a"), False, "another cluster"),
        # A deletion of data.db, even as an increment.
        (header(120, 120, commit=0), None, False, "deleting"),
    ],
)
def test_what_may_reach_the_standby(ltx, theirs, allowed, why):
    reason = judge(ltx, "data.db", theirs, COPY)
    assert (reason is None) == allowed, reason
    if why:
        assert why in reason and "TXID 119" in reason


def test_what_it_acknowledged_is_kept_even_without_its_copy(tmp_path):
    # Its LiteFS directory lost, what it acknowledged still stands.
    mark = Acknowledged(119, OURS, 0.0)
    mark.write(tmp_path)
    assert Acknowledged.read(tmp_path) == mark
    nothing = kept(Pos(0), Identity(), Acknowledged.read(tmp_path))
    assert judge(header(1, 3), "data.db", Identity("c1", 1, "gen-b"), nothing) is not None
    assert judge(header(1, 118), "data.db", OURS, nothing) is not None
    assert judge(header(1, 119), "data.db", OURS, nothing) is None
    # A standby with nothing to keep takes its first copy.
    assert kept(Pos(0), Identity(), None) == []
    assert judge(header(1, 3), "data.db", Identity("c1", 1, "gen-b"), []) is None


def test_the_position_map_a_replica_sends():
    def entry(name, txid, checksum):
        return struct.pack(">I", len(name)) + name.encode() + struct.pack(">QQ", txid, checksum)

    body = struct.pack(">I", 2) + entry("a.db", 5, 6) + entry("data.db", 119, 0xABC)
    assert position_of(body, "data.db") == Pos(119, 0xABC)
    assert position_of(struct.pack(">I", 0), "data.db") == Pos(0)


@pytest.mark.parametrize("compressed", [False, True])
def test_the_data_db_inside_a_snapshot(tmp_path, compressed):
    # An LTX snapshot as LiteFS writes one (superfly/ltx v0.3): header,
    # pages with their numbers (LZ4-framed when flagged), an empty page
    # header, trailer.
    source = tmp_path / "data.db"
    db = sqlite_utils.Database(source)
    db["_public_cluster"].insert({"cluster_id": "c1", "created_at": "now", "epoch": 3, "generation": "gen-z"})
    db["filler"].insert_all({"id": i, "text": "x" * 500} for i in range(200))
    db.close()
    data = source.read_bytes()
    page_size = struct.unpack(">H", data[16:18])[0]
    pages = len(data) // page_size
    body = b"".join(struct.pack(">I", n + 1) + data[n * page_size:(n + 1) * page_size] for n in range(pages))
    body += struct.pack(">I", 0)
    if compressed:
        body = lz4.frame.compress(body)
    ltx = tmp_path / "snapshot.ltx"
    ltx.write_bytes(
        (b"LTX1" + struct.pack(">IIIQQqQ", int(compressed), page_size, pages, 1, 77, 0, 0)).ljust(100, b"\0")
        + body + struct.pack(">QQ", 0xABC, 0)
    )
    out = tmp_path / "inside.db"
    parsed = snapshot_to_sqlite(ltx, out)
    assert (parsed.max_txid, parsed.is_snapshot, parsed.compressed) == (77, True, compressed)
    assert out.read_bytes() == data
    assert identity_of_file(out, immutable=True) == Identity("c1", 3, "gen-z")
    with pytest.raises(ValueError):
        snapshot_to_sqlite(_increment(tmp_path), out)  # an increment is not a whole database


def _increment(tmp_path):
    path = tmp_path / "increment.ltx"
    path.write_bytes((b"LTX1" + struct.pack(">IIIQQqQ", 0, 4096, 1, 5, 5, 0, 1 << 63)).ljust(100, b"\0") + b"\0" * 20)
    return path
