"""The hand-made LTX files tests forge with (tests/ltx_forge.py) are the
bytes LiteFS's own encoder writes: checked once against
github.com/superfly/ltx v0.3.14's Encoder (same header, page and checksums;
its trailer is pinned below), so a forged transaction posted to a node's
loopback LiteFS is refused or applied for what it says, not for a bad
checksum."""

from broadsheet.release import read_ltx
from ltx_forge import CHECKSUM_FLAG, after, crc64_iso, database_checksum, ltx, page_checksum

PAGE = bytes((i * 7) & 0xFF for i in range(4096))


def test_crc64_is_gos_iso_table():
    assert crc64_iso(b"123456789") == 0xB90956C775A41001  # CRC-64/GO-ISO check value


def test_an_ltx_file_matches_the_encoders_bytes():
    data = ltx({2: PAGE}, 3, 7, 7, CHECKSUM_FLAG | 0x1234, CHECKSUM_FLAG | 0x5678, timestamp_ms=5)
    # Trailer of the same file from ltx.NewEncoder: post-apply, then file checksum.
    assert data[-16:].hex() == "8000000000005678e22b18eb43eec996"
    assert page_checksum(2, PAGE) & CHECKSUM_FLAG


def test_the_post_apply_checksum_follows_the_changed_pages(tmp_path):
    old = {1: b"\1" * 4096, 2: b"\2" * 4096}
    new = {2: PAGE, 3: b"\3" * 4096}
    pre = database_checksum(old)
    post = after(pre, {2: old[2]}, new)
    assert post == database_checksum({**old, **new})
    path = tmp_path / "forged.ltx"
    path.write_bytes(ltx(new, 3, 2, 2, pre, post, compressed=True))
    header, pages, trailer = read_ltx(path)
    assert (header.min_txid, header.pre_apply_checksum, pages, trailer) == (2, pre, new, post)
