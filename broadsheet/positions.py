"""A read node's position, as it reports it: its name, and the public TXID and
LiteFS checksum of its public.db. One line of the node's position stream
(``/-/replication/stream``), and the core of ``/-/replication.json``
(replica/status.py); the primary's propagation tracker reads both."""

from __future__ import annotations

from dataclasses import dataclass

from .bookmark import PublicTxid
from .litefs import Pos

# Where a read node's Datasette serves them.
STATUS_PATH = "/-/replication.json"
STREAM_PATH = "/-/replication/stream"


@dataclass(frozen=True)
class NodePosition:
    node: str
    txid: PublicTxid
    checksum: str  # 16 hex digits, as LiteFS writes its -pos file

    @classmethod
    def at(cls, node: str, pos: Pos) -> "NodePosition":
        return cls(node, PublicTxid(pos.txid), f"{pos.checksum:016x}")

    @classmethod
    def from_dict(cls, data: dict) -> "NodePosition":
        """From a stream line or ``/-/replication.json`` (ValueError, KeyError
        or TypeError for what is neither)."""
        return cls(str(data.get("node", "")), PublicTxid(int(data["txid"])), str(data.get("checksum", "")))

    def as_dict(self) -> dict:
        return {"node": self.node, "txid": self.txid, "checksum": self.checksum}

    @property
    def pos(self) -> Pos:
        return Pos(self.txid, int(self.checksum or "0", 16))
