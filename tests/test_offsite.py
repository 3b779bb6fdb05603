"""Off-site backups without LiteFS: objects sealed and opened, names, the
timeline a restore plans over, compaction and retention, against a real
S3-compatible server (versitygw, tests/s3server.py). The stream is made
here from a real SQLite file's states, one per transaction, with LiteFS's
checksums computed as LiteFS computes them."""

from __future__ import annotations

import dataclasses

import apsw
import pytest

from primary.offsite import crypto
from primary.offsite.crypto import ObjectError
from primary.offsite.objects import BaseMark, Header, ObjectName, Txn, encode, file_checksum
from primary.offsite.restore import RestoreError, describe, materialize, timelines, txid_at
from primary.offsite.uploader import Config, Uploader

SENTINEL = "zebra-sentinel-4471"
PAGE = 4096
T0 = 1_764_000_000_000  # ms


def states(path, n: int) -> list[bytes]:
    """data.db's file after each of ``n`` transactions (TXID 1 … n)."""
    conn = apsw.Connection(str(path))
    conn.execute(f"PRAGMA page_size={PAGE}; PRAGMA journal_mode=DELETE")
    out = []
    for i in range(1, n + 1):
        with conn:
            if i == 1:
                conn.execute(f"CREATE TABLE private_{SENTINEL.replace('-', '_')} (id INTEGER PRIMARY KEY, v TEXT)")
            else:
                conn.execute(f"INSERT INTO private_{SENTINEL.replace('-', '_')} (v) VALUES (?)", (f"{SENTINEL} {i} " + "x" * 3000,))
                if i % 4 == 0:
                    conn.execute(f"DELETE FROM private_{SENTINEL.replace('-', '_')} WHERE id = ?", (i - 2,))
        out.append(path.read_bytes())
    conn.close()
    return out


def pages_of(data: bytes) -> dict[int, bytes]:
    return {i // PAGE + 1: data[i:i + PAGE] for i in range(0, len(data), PAGE)}


def checksum(data: bytes, tmp_path) -> int:
    f = tmp_path / "ck"
    f.write_bytes(data)
    with open(f, "rb") as fp:
        return file_checksum(fp, PAGE, len(data) // PAGE)


class Stream:
    """Objects of one generation written as the uploader writes them."""

    def __init__(self, store, tmp_path, history, generation="a1b2c3d4", epoch=1):
        self.store, self.history, self.generation, self.epoch = store, history, generation, epoch
        self.sums = [checksum(s, tmp_path) for s in history]

    def txn(self, txid, pages):
        return Txn(txid, txid, len(self.history[txid - 1]) // PAGE, self.sums[txid - 2] if txid > 1 else 0,
                   self.sums[txid - 1], T0 + txid * 1000, len(pages))

    def snapshot(self, txid):
        pages = sorted(pages_of(self.history[txid - 1]).items())
        name = ObjectName(self.generation, self.epoch, "snapshot", txid, txid, T0 + txid * 1000, T0 + txid * 1000)
        header = Header("snapshot", "c1", self.generation, self.epoch, "snapshot", PAGE, txid, txid)
        txn = dataclasses.replace(self.txn(txid, pages), pre=0)
        self.store.put(name.key, encode(header, [(txn, pages)]))
        return name

    def l0(self, lo, hi):
        txns = []
        for t in range(lo, hi + 1):
            before, after = pages_of(self.history[t - 2]), pages_of(self.history[t - 1])
            changed = sorted((n, p) for n, p in after.items() if before.get(n) != p)
            txns.append((self.txn(t, changed), changed))
        name = ObjectName(self.generation, self.epoch, "L0", lo, hi, T0 + lo * 1000, T0 + hi * 1000)
        self.store.put(name.key, encode(Header("changes", "c1", self.generation, self.epoch, "L0", PAGE, lo, hi), txns))
        return name


@pytest.fixture
def history(tmp_path):
    return states(tmp_path / "data.db", 14)


def uploader_for(store, tmp_path, generation, epoch, **config):
    up = Uploader(Config(url="s3://x/y", **config), store, str(tmp_path / "none.db"), "http://127.0.0.1:9",
                  str(tmp_path / "litefs"), str(tmp_path / "status.json"), str(tmp_path))
    up.generation, up.epoch, up.cluster_id = generation, epoch, "c1"
    objects, bases, _ = store.list()
    up.objects, up.bases = objects, bases
    return up


def test_every_txid_restores_exactly_and_compaction_bounds_the_objects(s3_server, tmp_path, history):
    store = s3_server.store()
    stream = Stream(store, tmp_path, history)
    stream.snapshot(1)
    for lo, hi in ((2, 5), (6, 9), (10, 12)):
        stream.l0(lo, hi)
    up = uploader_for(store, tmp_path, stream.generation, 1)
    compacted = up.compact(1)
    assert (compacted.min_txid, compacted.max_txid, compacted.level) == (2, 12, "L1")
    stream.l0(13, 14)
    line = timelines(store)[stream.generation]
    assert line.newest() == 14
    # The coarsest object at each step: snapshot, L1, then the L0 after it.
    assert [(o.level, stop) for o, stop in line.plan(14)] == [("snapshot", 1), ("L1", 12), ("L0", 14)]
    assert [(o.level, stop) for o, stop in line.plan(7)] == [("snapshot", 1), ("L0", 5), ("L0", 7)]
    for txid in range(1, 15):
        done = materialize(store, line, txid, tmp_path / f"r{txid}.db")
        assert done.path.read_bytes() == history[txid - 1], txid
        assert done.checksum == stream.sums[txid - 1]
    # A moment between two commits: the last one before it.
    assert txid_at(store, line, T0 + 7 * 1000 + 500) == 7
    assert txid_at(store, line, T0 + 12 * 1000) == 12
    with pytest.raises(RestoreError):
        txid_at(store, line, T0)


def test_names_and_bytes_reveal_nothing(s3_server, tmp_path, history):
    store = s3_server.store()
    stream = Stream(store, tmp_path, history)
    stream.snapshot(1)
    stream.l0(2, 14)
    files = list(s3_server.object_files())
    assert len(files) >= 2
    for path, data in files:
        assert SENTINEL.encode() not in data and b"private_zebra" not in data, path
        assert SENTINEL not in str(path) and "private" not in str(path), path
    for name in store.list()[0]:
        assert set(name.key) <= set("0123456789abcdefLTZsnapshot/-.bo"), name.key


def test_wrong_key_missing_object_and_a_flipped_byte_are_errors_naming_the_object(s3_server, tmp_path, history):
    store = s3_server.store()
    stream = Stream(store, tmp_path, history)
    stream.snapshot(1)
    middle = stream.l0(2, 8)
    stream.l0(9, 14)
    line = timelines(store)[stream.generation]
    dest = tmp_path / "restored.db"

    other = s3_server.store(key=crypto.new_key())
    with pytest.raises(ObjectError, match="sealed with another backup key") as wrong:
        materialize(other, line, 14, dest)
    assert "snapshot/" in str(wrong.value) and not dest.exists()

    path = s3_server.data / s3_server.bucket / "team" / middle.key
    original = path.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    path.write_bytes(bytes(flipped))
    with pytest.raises(ObjectError, match="fails authentication") as bad:
        materialize(store, line, 14, dest)
    assert middle.key in str(bad.value) and not dest.exists()
    # An object swapped for another (renamed in the store) fails too.
    path.write_bytes((path.parent / stream.l0(9, 14).key.rsplit("/", 1)[1]).read_bytes())
    with pytest.raises(ObjectError, match="fails authentication"):
        materialize(store, line, 14, dest)
    path.write_bytes(original)
    assert materialize(store, line, 14, dest).path.read_bytes() == history[13]

    store.delete([middle.key])
    with pytest.raises(ObjectError, match="missing") as missing:
        materialize(store, line, 14, tmp_path / "again.db")
    assert middle.key in str(missing.value) and not (tmp_path / "again.db").exists()
    # Listed afresh, the hole is seen before anything is read.
    with pytest.raises(RestoreError, match="no chain of objects reaches TXID 14"):
        timelines(store)[stream.generation].plan(14)


def test_a_newer_epoch_wins_past_its_base_and_fences_the_older_uploader(s3_server, tmp_path, history):
    """The old primary went on to TXID 14 in epoch 1; its standby, promoted
    at TXID 8, continues in epoch 2 (here: the same transactions, which a
    restore must take from epoch 2)."""
    store = s3_server.store()
    old = Stream(store, tmp_path, history)
    old.snapshot(1)
    old.l0(2, 6)
    old.l0(7, 14)  # 9-14: the branch the promotion left behind
    new = Stream(store, tmp_path, history, epoch=2)
    store.put(BaseMark(old.generation, 2, 8).key, [b"{}"])
    new.l0(9, 12)
    line = timelines(store)[old.generation]
    assert line.newest() == 12
    steps = line.plan(12)
    assert [(o.epoch, o.level, stop) for o, stop in steps] == [(1, "snapshot", 1), (1, "L0", 6), (1, "L0", 8), (2, "L0", 12)]
    assert materialize(store, line, 12, tmp_path / "r.db").path.read_bytes() == history[11]
    listed = describe(store)[0]
    assert listed["to_txid"] == 12 and listed["epochs"] == [1, 2] and listed["left_behind"] == []
    # The old primary's uploader, still running, uploads nothing more.
    from primary.offsite.uploader import Fenced

    up = uploader_for(store, tmp_path, old.generation, 1)
    with pytest.raises(Fenced, match="epoch 2 writes this backup stream"):
        up._list()


def test_retention_keeps_what_a_restore_within_it_needs(s3_server, tmp_path, history):
    store = s3_server.store()
    stream = Stream(store, tmp_path, history)
    stream.snapshot(1)
    stream.l0(2, 6)
    stream.snapshot(6)
    stream.l0(7, 14)
    gone_generation = Stream(store, tmp_path, history, generation="ffee0011")
    gone_generation.snapshot(1)
    up = uploader_for(store, tmp_path, stream.generation, 1, retention=1.0)
    gone = up.prune()  # every object is years old: the newest old snapshot is the base
    assert sorted(n.rsplit("/", 2)[-2] for n in gone) == ["L0", "snapshot", "snapshot"]
    line = timelines(store)
    assert set(line) == {stream.generation}
    assert [(o.level, o.min_txid) for o in line[stream.generation].objects] == [("L0", 7), ("snapshot", 6)]
    assert materialize(store, line[stream.generation], 14, tmp_path / "r.db").path.read_bytes() == history[13]


def test_sealed_objects_stream_in_chunks_bound_to_their_name():
    key = crypto.parse_key(crypto.new_key(), "k")
    body = [bytes([i]) * 700 for i in range(50)]
    sealed = list(crypto.seal(key, "g/1/L0/a.bsob", body, chunk=1000))
    assert len(sealed) == 1 + 35  # the header, then 35 chunks of 1000 bytes (the last shorter)
    assert b"".join(crypto.open_sealed(key, "g/1/L0/a.bsob", sealed)) == b"".join(body)
    with pytest.raises(ObjectError, match="fails authentication"):
        list(crypto.open_sealed(key, "g/1/L0/b.bsob", sealed))
    with pytest.raises(ObjectError, match="fails authentication"):
        list(crypto.open_sealed(key, "g/1/L0/a.bsob", sealed[:-1]))  # cut at a chunk boundary
    with pytest.raises(ObjectError, match="fails authentication"):
        list(crypto.open_sealed(key, "g/1/L0/a.bsob", sealed[:3] + sealed[4:]))  # a chunk dropped
    swapped = sealed[:2] + [sealed[3], sealed[2]] + sealed[4:]
    with pytest.raises(ObjectError, match="chunk 1 fails"):
        list(crypto.open_sealed(key, "g/1/L0/a.bsob", swapped))


def test_settings_are_checked(tmp_path):
    from broadsheet.config import ConfigError

    assert Config.from_env({}) is None
    with pytest.raises(ConfigError, match="BROADSHEET_BACKUP_KEY"):
        Config.from_env({"BROADSHEET_BACKUP_URL": "s3://b/p"})
    with pytest.raises(ConfigError, match="s3://bucket/prefix"):
        Config.from_env({"BROADSHEET_BACKUP_URL": "https://b/p", "BROADSHEET_BACKUP_KEY": crypto.new_key()})
    with pytest.raises(ConfigError, match="32 bytes"):
        Config.from_env({"BROADSHEET_BACKUP_URL": "s3://b/p", "BROADSHEET_BACKUP_KEY": "short"})
    config = Config.from_env({"BROADSHEET_BACKUP_URL": "s3://b/p", "BROADSHEET_BACKUP_KEY": crypto.new_key(),
                              "BROADSHEET_BACKUP_RETENTION": "2d", "BROADSHEET_BACKUP_LEVELS": "10s,2m"})
    assert (config.retention, config.levels) == (172800.0, (10.0, 120.0))


def test_a_read_node_refuses_the_backup_key_and_the_stores_credentials(tmp_path):
    from broadsheet.config import ConfigError
    from replica.node import ReadNode

    for name in ("BROADSHEET_BACKUP_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"):
        with pytest.raises(ConfigError, match=name):
            ReadNode.from_env({name: "value", "BROADSHEET_ROOT": str(tmp_path)})


def test_only_the_uploader_gets_the_key_and_the_credentials(tmp_path):
    from primary.node import OFFSITE_SECRETS, PrimaryNode

    env = {"BROADSHEET_ROOT": str(tmp_path), "DATASETTE_SECRET": "s" * 32, "BROADSHEET_BACKUP_URL": "s3://b/p",
           "BROADSHEET_BACKUP_KEY": crypto.new_key(), "AWS_SECRET_ACCESS_KEY": "x", "AWS_ACCESS_KEY_ID": "y"}
    node = PrimaryNode.from_env(env)
    services = {s.name: s for s in [*node.litefs_services(), *node.app_services()]}
    assert services["offsite"].env["BROADSHEET_BACKUP_KEY"] == env["BROADSHEET_BACKUP_KEY"]
    assert "--litefs-data-dir" in services["offsite"].argv
    for name, service in services.items():
        if name != "offsite":
            assert set(OFFSITE_SECRETS) <= set(service.drop_env), name
            assert not set(OFFSITE_SECRETS) & set(service.env or {}), name
    # Promoted, a standby's primary gets them back from the old one's settings.
    assert PrimaryNode.from_env({**node.to_env(), "BROADSHEET_ROOT": str(tmp_path / "b")}).offsite_env == node.offsite_env
    assert "offsite" not in {s.name for s in PrimaryNode.from_env({"BROADSHEET_ROOT": str(tmp_path / "c"),
                                                                    "DATASETTE_SECRET": "s" * 32}).app_services()}
