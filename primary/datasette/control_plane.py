"""What the team's Datasette asks of the control plane: every change to
data.db it offers (flips, previews, metadata, saved queries), and where a
publish is live.

A change to data.db is made by the control plane in its own process, with
a short-lived token of the actor whom the page has already checked. Not in
this one: here Datasette has data.db open with Python's SQLite, and a
connection of apsw's SQLite in the same process shares the process's POSIX
locks unknowingly, so its write could run beside one of the write API's and
its close drops their locks (table-action flips under a stream of writes
corrupted data.db). Even a read-only apsw connection's close would, so
previews are computed there too.
"""

from __future__ import annotations

from datasette.utils import tilde_encode

from broadsheet.client import AsyncControlClient, ControlError

from .. import publishing, store
from ..settings import settings
from ..store import PublishSpec
from ..store.preview import Preview


async def ask(datasette, actor: dict, call, table: str | None = None, timeout: float = 30.0):
    """``call(client)``'s answer, with a control-plane client for ``actor``;
    PublishError with the control plane's status (502: it did not answer)."""
    token = await datasette.create_token(actor["id"], expires_after=60)
    try:
        return await call(AsyncControlClient(settings().control_url, token, timeout=timeout))
    except ControlError as exc:
        error = store.PublishError(exc.message, table)
        error.status = exc.status or 502
        raise error from None


async def preview(datasette, actor: dict, table: str, spec: PublishSpec) -> Preview:
    """What ``spec`` would publish."""
    body = spec.to_dict() if not spec.whole else None
    return Preview(**await ask(datasette, actor, lambda client: client.preview(table, body), table))


async def flip(datasette, actor: dict, table: str, public: bool, spec: PublishSpec) -> publishing.Outcome:
    """The flip, for this actor."""
    body = spec.to_dict() if public and not spec.whole else None
    answer = await ask(datasette, actor, lambda client: client.publish(table, public, body), table)
    return publishing.Outcome(table, public, answer["changed"], answer["private_txid"], answer["public_txid"])


async def schedule(datasette, actor: dict, table: str, public: bool, at: str, spec: PublishSpec) -> dict:
    """Set the flip for the moment ``at`` (an embargo); the pending entry."""
    body = spec.to_dict() if public and not spec.whole else None
    return await ask(datasette, actor, lambda client: client.schedule(table, at, public, body), table)


async def scheduled(datasette, actor: dict, table: str) -> list[dict]:
    """``table``'s pending entries (none if the control plane cannot say)."""
    try:
        entries = await ask(datasette, actor, lambda client: client.scheduled(), table)
    except store.PublishError:
        return []
    return [e for e in entries if e["table"] == table]


async def cancel_scheduled(datasette, actor: dict, table: str, entry_id: int) -> dict:
    return await ask(datasette, actor, lambda client: client.cancel_scheduled(entry_id), table)


async def where_live(datasette, actor: dict, table: str, txid: int, timeout: float = 3.0) -> list[dict]:
    """Each read node, and whether it has public TXID ``txid`` yet, from the
    control plane's propagation record (waiting a little for it, since
    propagation takes milliseconds)."""
    token = await datasette.create_token(actor["id"], expires_after=60)
    client = AsyncControlClient(settings().control_url, token, timeout=timeout + 2)
    arrivals = {}
    # Read nodes come and go (DNS discovery): ask the control plane which
    # there are; the statically listed ones if it cannot answer.
    nodes = [{"name": n.name, "url": n.public_url or n.url} for n in settings().read_nodes]
    try:
        record = await _unless_refused(client.propagation(txid, wait=timeout))
        if record is not None:
            arrivals = {a["name"]: a for a in record["nodes"]}
        listed = await _unless_refused(client.nodes())
        if listed is not None:
            nodes = listed
    except ControlError:
        pass  # the control plane is down: every node shows as unknown
    return [
        {
            "name": node["name"],
            "url": f"{node['url']}/public/{tilde_encode(table)}",
            "live": bool(arrivals.get(node["name"], {}).get("arrived")),
            "ms": arrivals.get(node["name"], {}).get("ms"),
        }
        for node in nodes
    ]


async def _unless_refused(answer):
    """The control plane's answer, None if it refused (an HTTP error status);
    ControlError if it did not answer at all."""
    try:
        return await answer
    except ControlError as exc:
        if not exc.status:
            raise
        return None
