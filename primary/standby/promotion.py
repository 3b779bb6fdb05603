"""Promoting a standby: recording the promotion (refused when its copy is
older than what it acknowledged), and starting the node as the primary of
both clusters on the same directory."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Mapping

from broadsheet.litefs import NewestLtx, is_mounted
from primary.backup import identity_of_file
from primary.node import PrimaryNode

from .acknowledged import Acknowledged, write_durably
from .node import DATA_DB, StandbyNode
from .promoted import PROMOTED


def become_primary(standby: "StandbyNode | None", supervisor, environ: Mapping[str, str] | None = None):
    """Stop the standby's processes (if running) and start this node as the
    primary of both clusters, on the same root, configured as
    ``broadsheet primary`` would be (from ``environ``). Returns the
    PrimaryNode."""
    primary = PrimaryNode.from_env(environ)
    if standby is not None:
        standby.stop(supervisor)
    primary.start(supervisor)
    return primary


class PromoteRefused(Exception):
    """This standby's copy must not be promoted; the message says why."""


def promote(node: StandbyNode) -> dict:
    """Record this standby's promotion (the epoch after data.db's) in its
    root; the running standby picks it up on SIGUSR1, or at its next start.
    Refused (PromoteRefused) when its copy is older than, or not the
    data.db of, the writes it acknowledged: promoting it would lose them."""
    pos = node.position()
    if pos.txid == 0:
        raise PromoteRefused(
            f"no data.db in {node.private.data_dir}: this standby has never received data.db from the primary;"
            " nothing to promote"
        )
    mounted = is_mounted(node.private.mount_dir)
    copy = identity_of_file(node.data_db) if mounted else None
    acknowledged = Acknowledged.read(node.root)
    if acknowledged is not None:
        other = copy is not None and acknowledged.identity.generation and copy.generation != acknowledged.identity.generation
        if pos.txid < acknowledged.txid or other:
            raise PromoteRefused(
                f"this standby's data.db (TXID {pos.txid}{f', {copy}' if copy else ''}) is older than what it"
                f" acknowledged (TXID {acknowledged.txid}, {acknowledged.identity}, Broadsheet-Wait: standby):"
                " promoting it would lose acknowledged writes. Restore the newest backup instead (broadsheet restore)"
            )
    newest = NewestLtx.read(node.private.data_dir, DATA_DB)
    record = {
        # Without LiteFS running, data.db's epoch is read when it starts as
        # the primary (PrimaryNode.init_data_db), and written back here.
        "epoch": copy.epoch + 1 if copy is not None else None,
        "promoted_at": time.time(),
        "data_db_txid": pos.txid,
        "committed_at": newest.committed_at if newest is not None and newest.pos.txid == pos.txid else None,
        "acknowledged_txid": acknowledged.txid if acknowledged is not None else 0,
    }
    write_durably(Path(node.root) / PROMOTED, json.dumps(record))
    return record
