"""Bookmarks: what a write tells its caller, and what a read asks a read node.

The two databases count their transactions separately: a *private* TXID is
data.db's (the team's writes), a *public* TXID is public.db's (one per
publish cycle). A ``Bookmark`` pairs them: everything data.db held up to
``private_txid`` is in public.db from ``public_txid`` on. A visitor asks any
read node for "at least public TXID N" with ``?_txid=N`` or the
``Broadsheet-Min-Txid: N`` header, and the node waits (bounded) until it
has N.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NewType

PrivateTxid = NewType("PrivateTxid", int)  # a data.db transaction
PublicTxid = NewType("PublicTxid", int)  # a public.db transaction (a publish cycle)

# How a request names the public TXID it wants to see at least.
QUERY_PARAMETER = "_txid"
HEADER = "Broadsheet-Min-Txid"


class BookmarkError(ValueError):
    """A bookmark that is not a TXID; the message says so, for a visitor."""


def parse(value: str | int) -> PublicTxid:
    """The public TXID a ``?_txid=`` or ``Broadsheet-Min-Txid`` value names."""
    txid = _integer(value)
    _check(txid)
    return PublicTxid(txid)


def wanted(values: Iterable[str]) -> PublicTxid | None:
    """The TXID a request asks for, given every value it sent (query
    parameters and headers alike): the highest; None when it sent none."""
    txids = [_integer(value) for value in values]
    if not txids:
        return None
    _check(max(txids))
    return PublicTxid(max(txids))


def _integer(value: str | int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BookmarkError(f"Bookmark must be a TXID (a non-negative integer), not {value!r}") from None


def _check(txid: int) -> None:
    if txid < 0:
        raise BookmarkError(f"Bookmark must be a TXID (a non-negative integer), not {txid}")


def format(txid: PublicTxid | int) -> str:
    """The value of ``?_txid=`` and ``Broadsheet-Min-Txid`` for ``txid``."""
    return str(int(txid))


@dataclass(frozen=True)
class Bookmark:
    """data.db up to ``private_txid`` is in public.db at ``public_txid``."""

    private_txid: PrivateTxid
    public_txid: PublicTxid

    @classmethod
    def from_dict(cls, data: dict) -> "Bookmark":
        return cls(PrivateTxid(int(data["private_txid"])), PublicTxid(int(data["public_txid"])))

    def as_dict(self) -> dict:
        return {"private_txid": self.private_txid, "public_txid": self.public_txid}

    @property
    def query(self) -> str:
        """The query string that asks a read node for this bookmark."""
        return f"{QUERY_PARAMETER}={format(self.public_txid)}"
