"""LTX files written by hand, checksums and all, as LiteFS's encoder writes
them: what a test posts to one node's loopback LiteFS (``POST /tx``) to forge
a transaction no publisher made. Tests only."""

from __future__ import annotations

import struct

CHECKSUM_FLAG = 1 << 63
_ISO = 0xD800000000000000  # CRC-64/ISO, reflected, as Go's hash/crc64
_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ _ISO if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc64_iso(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFFFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFFFFFFFFFF


def page_checksum(pgno: int, page: bytes) -> int:
    return CHECKSUM_FLAG | crc64_iso(struct.pack(">I", pgno) + page)


def database_checksum(pages: dict[int, bytes]) -> int:
    """LiteFS's checksum of a database: the XOR of its page checksums."""
    total = 0
    for pgno, page in pages.items():
        total ^= page_checksum(pgno, page)
    return CHECKSUM_FLAG | total


def after(pre: int, old: dict[int, bytes], new: dict[int, bytes]) -> int:
    """The checksum once ``new`` pages replace ``old`` ones (same numbers,
    ``old`` missing for pages the transaction adds)."""
    total = pre & ~CHECKSUM_FLAG
    for pgno, page in old.items():
        total ^= page_checksum(pgno, page) & ~CHECKSUM_FLAG
    for pgno, page in new.items():
        total ^= page_checksum(pgno, page) & ~CHECKSUM_FLAG
    return CHECKSUM_FLAG | total


def ltx(pages: dict[int, bytes], commit: int, min_txid: int, max_txid: int, pre: int, post: int,
        compressed: bool = False, page_size: int = 4096, timestamp_ms: int = 0) -> bytes:
    """An LTX file with a correct file checksum (CRC-64/ISO of every byte
    before it, the page block uncompressed)."""
    import lz4.frame

    header = b"LTX1" + struct.pack(">IIIQQqQ", 1 if compressed else 0, page_size, commit, min_txid, max_txid,
                                   timestamp_ms, pre)
    header = header.ljust(100, b"\0")
    body = b"".join(struct.pack(">I", n) + p for n, p in sorted(pages.items())) + b"\0\0\0\0"
    head = struct.pack(">Q", post)
    file_checksum = CHECKSUM_FLAG | crc64_iso(header + body + head)
    return header + (lz4.frame.compress(body) if compressed else body) + head + struct.pack(">Q", file_checksum)
