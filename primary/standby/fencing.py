"""Fencing: the checks a node makes before it starts as primary, so that
an old primary never comes back as a second one, and an empty or older one
never replaces the standby's newer copy (data.db's epoch, raised by every
promotion, says which primary is newer)."""

from __future__ import annotations

import time

import httpx

from broadsheet.litefs import NewestLtx, Pos
from broadsheet.supervisor import StartError


class AnotherPrimary(StartError):
    """A peer is primary already: this node must not start as one."""


def check_no_other_primary(peers: list[str], own_url: str, timeout: float = 2.0, key: str | None = None) -> None:
    """Refuse (AnotherPrimary) if any peer's private LiteFS says it is
    primary. A peer that does not answer is not counted: see the README's
    notes on fencing. ``key``: data.db's replication key, which a peer's
    gate asks for (broadsheet/gate.py)."""
    from broadsheet.gate import KEY_HEADER

    headers = {KEY_HEADER: key} if key else {}
    for peer in peers:
        if peer.rstrip("/") == own_url.rstrip("/"):
            continue
        try:
            # HTTP/2 (prior knowledge): a gate speaks nothing else, LiteFS both.
            with httpx.Client(http1=False, http2=True, timeout=timeout) as client:
                info = client.get(f"{peer.rstrip('/')}/info", headers=headers).json()
        except (httpx.HTTPError, ValueError):
            continue
        if info.get("isPrimary"):
            raise AnotherPrimary(
                f"{peer} is the private cluster's primary already: this node must not start as a second"
                " primary. If it was promoted while this one was away, this node's data.db is stale:"
                " wipe its volume and run it as a standby (broadsheet standby)"
            )


class NewerCopyElsewhere(StartError):
    """The standby holds a newer data.db than this node: starting as primary
    here would put an older copy above it."""


# How long a primary with an empty volume waits for its standby to answer
# (as when both start at once) before it refuses to start.
EMPTY_PRIMARY_WAITS = 60.0


def check_no_newer_copy(
    standby_urls: list[str],
    own: NewestLtx | None,
    cluster_id: str,
    timeout: float = 2.0,
    wait: float = EMPTY_PRIMARY_WAITS,
    say=lambda line: None,
) -> None:
    """Refuse (NewerCopyElsewhere) if a standby (its status API) holds, or
    acknowledged, data.db of this cluster at a later TXID than ``own`` (this
    node's newest LTX file: None for an empty volume), or another data.db at
    the same TXID. A node with data.db of its own starts even if its
    standby does not answer (the standby's guard still refuses to be
    overwritten); an empty one waits ``wait`` seconds for it, then refuses:
    it cannot know what the standby holds, and a standby that is only
    restarting, or being promoted, may hold every acknowledged write."""
    mine = own.pos if own is not None else Pos(0)
    for url in standby_urls:
        deadline, said = time.monotonic() + wait, False
        while True:
            try:
                status = httpx.get(f"{url.rstrip('/')}/status", timeout=timeout).json()
                theirs = Pos(int(status["txid"]), int(status.get("checksum") or "0", 16))
                acknowledged = int(status.get("acknowledged_txid") or 0)
                break
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                if own is not None:
                    status = None
                    break
                if time.monotonic() >= deadline:
                    raise NewerCopyElsewhere(
                        f"this node's data.db is empty (no data.db in its LiteFS directory), and its standby at {url}"
                        f" has not answered for {wait:.0f}s ({exc or type(exc).__name__}): an empty primary does not"
                        " start without knowing what its standby holds, which may be every acknowledged write."
                        " Start the standby (an empty one is fine), or promote it; if there is none any more,"
                        " start this node without BROADSHEET_STANDBY_URL"
                    ) from None
                if not said:
                    say(f"this node's data.db is empty: waiting (up to {wait:.0f}s) for the standby at {url} to say what it holds")
                    said = True
                time.sleep(1.0)
        if status is None or status.get("cluster_id") not in (None, cluster_id):
            continue  # no answer (this node has data of its own), or another deployment's standby
        other = theirs.txid == mine.txid > 0 and theirs.checksum != mine.checksum
        if max(theirs.txid, acknowledged) <= mine.txid and not other:
            continue
        here = "empty (no data.db in its LiteFS directory)" if own is None else f"at TXID {mine.txid}"
        held = f"data.db TXID {theirs.txid} (epoch {status.get('epoch', 1)})"
        if acknowledged:
            held += f", and acknowledged writes (Broadsheet-Wait: standby) up to TXID {acknowledged}"
        raise NewerCopyElsewhere(
            f"this node's data.db is {here}, and the standby at {url} holds {held}"
            + (": another data.db at the same TXID" if other else "")
            + ". Starting as primary here would put an older copy above it, and lose those writes."
            " Promote the standby instead (broadsheet promote on it; a local cluster: broadsheet promote --dir DIR),"
            " or, to start this node from a backup, empty the standby's volume first (and start it again, empty),"
            " start this node again and run broadsheet restore"
        )
