"""The bookmark's one format (broadsheet/bookmark.py): ``?_txid=N`` and
``Broadsheet-Min-Txid: N`` name a public TXID; the highest of several
counts; anything but a non-negative integer is the visitor's error."""

from __future__ import annotations

import pytest

from broadsheet import bookmark
from broadsheet.bookmark import Bookmark, BookmarkError, PrivateTxid, PublicTxid
from broadsheet.litefs import Pos
from broadsheet.positions import NodePosition


def test_a_bookmark_is_a_public_txid():
    assert bookmark.parse("41") == 41 and bookmark.format(PublicTxid(41)) == "41"
    assert bookmark.wanted([]) is None
    assert bookmark.wanted(["3", "41", "7"]) == 41
    for bad in ("banana", "", "4.5", "-1"):
        with pytest.raises(BookmarkError, match="TXID"):
            bookmark.wanted([bad])


def test_a_bookmark_pairs_the_two_databases_txids():
    mark = Bookmark(PrivateTxid(12), PublicTxid(41))
    assert Bookmark.from_dict(mark.as_dict()) == mark
    assert mark.as_dict() == {"private_txid": 12, "public_txid": 41}
    assert mark.query == "_txid=41"


def test_a_node_position_reads_back_as_written():
    position = NodePosition.at("replica-1", Pos(41, 0xC0FFEE))
    assert position.as_dict() == {"node": "replica-1", "txid": 41, "checksum": "0000000000c0ffee"}
    assert NodePosition.from_dict(position.as_dict()) == position and position.pos == Pos(41, 0xC0FFEE)
