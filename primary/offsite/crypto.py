"""The backup key, and objects sealed with it.

An object is a short plain header (magic, the key's id, a random salt, the
chunk size) and then the plaintext in chunks of ``CHUNK`` bytes, each sealed
with AES-256-GCM under a key derived for this object alone (HKDF-SHA256 of
the backup key with the salt). Each chunk's nonce is its index; its
associated data is the header, the object's name, the index and whether it
is the last chunk. So a chunk cannot be moved, dropped, repeated or cut off,
an object cannot be renamed or swapped for another, and a large object is
sealed and opened a chunk at a time (never held whole in memory). The
backup key itself never leaves the primary.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from broadsheet.config import ConfigError, Env

MAGIC = b"BSOB1\0"
CHUNK = 1 << 20
TAG = 16
_HEADER = struct.Struct(">6s8s16sI")
HEADER_SIZE = _HEADER.size


class ObjectError(Exception):
    """An object that cannot be opened: the message names it and says why."""


def new_key() -> str:
    """A new backup key, as BROADSHEET_BACKUP_KEY (or its file) holds it."""
    return base64.b64encode(os.urandom(32)).decode()


def parse_key(text: str, where: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{where} must be 32 bytes in base64 (make one with `broadsheet backups new-key`)")
    return raw


def key_from_env(environ: Mapping[str, str] | None = None) -> bytes:
    """BROADSHEET_BACKUP_KEY, else the file BROADSHEET_BACKUP_KEY_FILE names."""
    env = Env(environ)
    if text := env.optional("BROADSHEET_BACKUP_KEY"):
        return parse_key(text, "BROADSHEET_BACKUP_KEY")
    if path := env.optional("BROADSHEET_BACKUP_KEY_FILE"):
        try:
            return parse_key(Path(path).read_text(), f"BROADSHEET_BACKUP_KEY_FILE ({path})")
        except OSError as exc:
            raise ConfigError(f"BROADSHEET_BACKUP_KEY_FILE: cannot read {path}: {exc.strerror}") from None
    raise ConfigError("BROADSHEET_BACKUP_URL is set but neither BROADSHEET_BACKUP_KEY nor BROADSHEET_BACKUP_KEY_FILE")


def key_id(key: bytes) -> bytes:
    """Which key sealed an object (8 bytes that reveal nothing of it)."""
    return hmac.new(key, b"broadsheet offsite key id", hashlib.sha256).digest()[:8]


def _object_key(key: bytes, salt: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"broadsheet offsite object v1").derive(key)


def _aad(header: bytes, name: str, index: int, last: bool) -> bytes:
    return header + name.encode() + struct.pack(">QB", index, last)


def _nonce(index: int) -> bytes:
    return struct.pack(">IQ", 0, index)


def seal(key: bytes, name: str, plaintext: Iterable[bytes], chunk: int = CHUNK) -> Iterator[bytes]:
    """The sealed object ``name`` for ``plaintext`` (pieces of any size)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt = os.urandom(16)
    header = _HEADER.pack(MAGIC, key_id(key), salt, chunk)
    aead = AESGCM(_object_key(key, salt))
    yield header
    buffer = bytearray()
    index = 0
    for piece in plaintext:
        buffer += piece
        # Keep at least one byte back: the last chunk is known only at the end.
        while len(buffer) > chunk:
            yield aead.encrypt(_nonce(index), bytes(buffer[:chunk]), _aad(header, name, index, False))
            del buffer[:chunk]
            index += 1
    yield aead.encrypt(_nonce(index), bytes(buffer), _aad(header, name, index, True))


def open_sealed(key: bytes, name: str, sealed: Iterable[bytes]) -> Iterator[bytes]:
    """The plaintext of the sealed object ``name``, a chunk at a time;
    ObjectError (naming it) for another key, a changed byte, a chunk
    missing or an object cut short or renamed."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    pieces = iter(sealed)
    buffer = bytearray()

    def fill(n: int) -> bool:
        for piece in pieces:
            buffer.extend(piece)
            if len(buffer) >= n:
                return True
        return len(buffer) >= n

    if not fill(HEADER_SIZE):
        raise ObjectError(f"{name}: not a broadsheet backup object (only {len(buffer)} bytes)")
    header = bytes(buffer[:HEADER_SIZE])
    magic, kid, salt, chunk = _HEADER.unpack(header)
    if magic != MAGIC:
        raise ObjectError(f"{name}: not a broadsheet backup object (no {MAGIC[:5].decode()} header)")
    if not hmac.compare_digest(kid, key_id(key)):
        raise ObjectError(
            f"{name}: sealed with another backup key (key id {kid.hex()}, this key's is {key_id(key).hex()}):"
            " check BROADSHEET_BACKUP_KEY"
        )
    if not 1 <= chunk <= 64 << 20:
        raise ObjectError(f"{name}: damaged header (chunk size {chunk})")
    del buffer[:HEADER_SIZE]
    aead = AESGCM(_object_key(key, salt))
    index = 0
    sealed_chunk = chunk + TAG
    while True:
        more = fill(sealed_chunk + 1)
        last = not more
        body = bytes(buffer[:sealed_chunk])
        del buffer[:sealed_chunk]
        try:
            yield aead.decrypt(_nonce(index), body, _aad(header, name, index, last))
        except InvalidTag:
            raise ObjectError(
                f"{name}: chunk {index} fails authentication: the object was changed, cut short or renamed"
            ) from None
        if last:
            return
        index += 1
