"""How far the publisher has got, in a small file beside (not inside) the
LiteFS mounts: what a bookmark waits for."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from broadsheet.bookmark import Bookmark, PrivateTxid, PublicTxid


@dataclass(frozen=True)
class Watermark:
    """How far the publisher has got: every data.db transaction up to
    ``private_txid`` is reflected in public.db at ``public_txid`` or later.

    Written by the publisher after every cycle, including cycles that found
    nothing to publish, to a small file beside (not inside) the LiteFS mounts.
    """

    private_txid: PrivateTxid
    public_txid: PublicTxid
    # The publisher's change-log position at that point: entries up to it
    # are in public.db at ``public_txid`` (0: unknown).
    processed: int = 0

    def write(self, path: str | os.PathLike) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fp:
            json.dump(
                {"private_txid": self.private_txid, "public_txid": self.public_txid, "processed": self.processed}, fp
            )
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Watermark | None":
        try:
            with open(path) as fp:
                data = json.load(fp)
        except (FileNotFoundError, ValueError):
            return None
        return cls(PrivateTxid(int(data["private_txid"])), PublicTxid(int(data["public_txid"])), int(data.get("processed", 0)))

    @property
    def bookmark(self) -> Bookmark:
        """What a caller is told: data.db up to ``private_txid`` is public at ``public_txid``."""
        return Bookmark(self.private_txid, self.public_txid)
