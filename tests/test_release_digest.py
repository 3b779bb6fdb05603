"""The release digest and signatures on plain files (no LiteFS): a tree
followed page by page equals the tree built afresh, a copy made with
SQLite's backup API has the same digest, any changed row changes it, and a
signature covers exactly one (TXID, digest, checksum)."""

from __future__ import annotations

import random
import sqlite3

import pytest

from broadsheet import release
from broadsheet.litefs import Pos


def _db(path, rows=2000):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"value {i}" * 3) for i in range(rows)])
    conn.commit()
    conn.close()


def _pages(path) -> dict[int, bytes]:
    data = path.read_bytes()
    size = release.PageTree.of_file(path).page_size
    return {i // size + 1: data[i : i + size] for i in range(0, len(data), size)}


def test_a_tree_followed_page_by_page_equals_one_built_afresh(tmp_path):
    path = tmp_path / "a.db"
    _db(path)
    tree = release.PageTree.of_file(path)
    rng = random.Random(7)
    conn = sqlite3.connect(path)
    for step in range(30):
        before = _pages(path)
        if rng.random() < 0.3:
            conn.executemany("INSERT INTO t (v) VALUES (?)", [("grow" * 50,)] * rng.randint(1, 200))
        else:
            conn.execute("DELETE FROM t WHERE id % ? = 0", (rng.randint(2, 50),))
        conn.commit()
        after = _pages(path)
        changed = {n: p for n, p in after.items() if before.get(n) != p}
        tree.update(changed, len(after), Pos(step + 2))
        assert tree.digest == release.PageTree.of_file(path).digest, f"step {step}"
    conn.close()


def test_a_backup_copy_has_the_same_digest_and_a_changed_row_another(tmp_path):
    path, copy = tmp_path / "a.db", tmp_path / "copy.db"
    _db(path)
    src, dst = sqlite3.connect(path), sqlite3.connect(copy)
    src.backup(dst)
    dst.close()
    assert release.PageTree.of_file(copy).digest == release.PageTree.of_file(path).digest
    src.execute("UPDATE t SET v = 'x' WHERE id = 1000")
    src.commit()
    src.close()
    assert release.PageTree.of_file(copy).digest != release.PageTree.of_file(path).digest


def test_a_signature_covers_one_txid_digest_and_checksum_and_only_its_key():
    key, other = release.SigningKey(release.new_private_key()), release.SigningKey(release.new_private_key())
    digest = "ab" * 32
    signed = key.release(7, digest, 0x1234)
    trusted = {key.public.key_id: key.public}
    assert release.verdict(digest, Pos(7, 0x1234), signed, trusted) is None
    assert "not 8" in release.verdict(digest, Pos(8, 0x1234), signed, trusted)
    assert "checksum" in release.verdict(digest, Pos(7, 0x1235), signed, trusted)
    assert "digest" in release.verdict("cd" * 32, Pos(7, 0x1234), signed, trusted)
    assert "does not trust" in release.verdict(digest, Pos(7, 0x1234), other.release(7, digest, 0x1234), trusted)
    forged = release.Release(**{**signed.as_dict(), "digest": "cd" * 32})
    assert "not signed" in release.verdict("cd" * 32, Pos(7, 0x1234), forged, trusted)
    # A rotation counts only when the trusted key endorsed the new one.
    listed = [(other.public, key.public.key_id, key.endorse(other.public))]
    assert other.public.key_id in release.trusted_keys(key.public, listed)
    assert other.public.key_id not in release.trusted_keys(key.public, [(other.public, key.public.key_id, "AAAA")])


def test_public_keys_parse_strictly():
    key = release.SigningKey(release.new_private_key()).public
    assert release.PublicKey.parse(str(key)) == key
    with pytest.raises(ValueError, match="Ed25519"):
        release.PublicKey.parse("ed25519:not-base64")


def _litefs_dir(tmp_path, rows: int):
    """A database laid out as LiteFS keeps it (``dbs/<name>/database`` and
    its ``wal``), the WAL holding committed transactions not yet
    checkpointed; and a plain copy of the same content."""
    path = tmp_path / "a.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA page_size=4096")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"value {i}" * 20) for i in range(rows)])
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("DELETE FROM t WHERE id % 3 = 0")
    conn.execute("INSERT INTO t (v) VALUES ('grown')")
    conn.commit()
    base = tmp_path / "litefs" / "dbs" / "public.db"
    base.mkdir(parents=True)
    (base / "database").write_bytes(path.read_bytes())
    (base / "wal").write_bytes((tmp_path / "a.db-wal").read_bytes())
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return tmp_path / "litefs", path


def test_a_tree_is_built_from_litefs_page_by_page_and_keeps_64_bytes_a_page(tmp_path):
    """Scale: building the tree of a LiteFS database reads it a page at a
    time (never the whole file in memory), and the tree keeps its hashes
    packed: about 64 bytes per page, the leaves and every level above."""
    import tracemalloc

    data_dir, plain = _litefs_dir(tmp_path, 40_000)
    size = plain.stat().st_size
    assert size > 8 * 2**20
    tracemalloc.start()
    try:
        tree = release.PageTree.of_litefs(data_dir, "public.db", Pos(2))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert tree.digest == release.PageTree.of_file(plain).digest
    assert tree.pages == size // 4096
    assert tree.nbytes <= 64 * (tree.pages + len(tree.levels))
    assert peak < size / 8, f"{peak} bytes at peak for a {size}-byte database"
