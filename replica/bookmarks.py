"""Bookmark waits: a request that asks for at least public TXID N
(``?_txid=N``, ``Broadsheet-Min-Txid: N``; broadsheet/bookmark.py) waits,
bounded in time and in number (replica/position.py), until this node has N."""

from __future__ import annotations

from urllib.parse import parse_qsl

from broadsheet import bookmark as bookmarks
from broadsheet.bookmark import PublicTxid
from broadsheet.litefs import Pos

from .position import PositionWatcher, TooManyWaits

_HEADER = bookmarks.HEADER.lower().encode()


def wanted(scope) -> PublicTxid | None:
    """The public TXID a request asks to see at least; BookmarkError (a
    ValueError) for a value that is not one."""
    values = [v for k, v in parse_qsl(scope.get("query_string", b"").decode()) if k == bookmarks.QUERY_PARAMETER]
    values += [v.decode() for k, v in scope.get("headers", []) if k.lower() == _HEADER]
    return bookmarks.wanted(values)


class NotReached(Exception):
    """The node cannot serve the bookmark now: ``status`` and a message for
    the visitor (503: too many waiting; 504: it did not arrive in time)."""

    def __init__(self, status: int, message: str, txid: int, wanted: int):
        super().__init__(message)
        self.status, self.message, self.txid, self.wanted = status, message, txid, wanted


async def reach(position: PositionWatcher, pos: Pos, wanted: PublicTxid, timeout: float) -> Pos:
    """The node's position once it has ``wanted``, from ``pos``; NotReached,
    or position.Stalled while LiteFS does not answer."""
    try:
        pos = await position.wait_for(wanted, timeout)
    except TooManyWaits:
        message = (
            f"This read node has public TXID {pos.txid} and too many requests waiting for newer ones."
            f" Retry TXID {wanted} shortly, or ask another node."
        )
        raise NotReached(503, message, pos.txid, wanted) from None
    if pos.txid < wanted:
        message = (
            f"This read node has public TXID {pos.txid}; TXID {wanted} did not arrive"
            f" within {timeout:g}s. Retry, or ask another node."
        )
        raise NotReached(504, message, pos.txid, wanted)
    return pos
