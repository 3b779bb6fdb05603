"""Propagation: where every read node is, and when each publish reached it.

The tracker follows the public cluster's primary LiteFS ``/events`` stream to
learn when each public TXID was committed, and every read node's LiteFS
``/events`` stream to learn when it applied it. On (re)connecting to a node
it asks the node's ``/-/replication.json`` for its position, since LiteFS
does not replay events. It also follows the publisher's cycle log (a file
beside the watermark, on this machine), so that each public TXID's record
says what that cycle did and who asked ("planes published by alice", "42
rows changed in airports"). Everything it learns is also broadcast to
subscribers (the server-sent-event stream).
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import apsw
import httpx

from broadsheet.bookmark import PublicTxid
from broadsheet.litefs import TxEvent
from broadsheet.positions import STATUS_PATH, STREAM_PATH, NodePosition
from broadsheet.sqlite import connect

from ..publisher.cycle import Cycle
from ..settings import ReadNodeAddress
from .discovery import Discovery

HISTORY = 500
# Each node's lag is sampled every LAG_INTERVAL seconds, LAG_SAMPLES kept:
# the last ten minutes, for /watch's charts.
LAG_INTERVAL = 1.0
LAG_SAMPLES = 600

# What /watch says of a node (TrackedNode.state).
LIVE, BEHIND, JOINING, CUT_OFF = "live", "behind", "joining", "cut off"


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class TrackedNode:
    """One read node as the primary sees it."""

    name: str
    url: str
    region: str = ""
    txid: PublicTxid = PublicTxid(0)
    connected: bool = False
    primary_reachable: bool | None = None
    # Seconds since the node last heard from the primary, as it said when
    # last asked (its /-/replication.json), and when that was.
    last_heard_s: float | None = None
    last_heard_asked_at: float | None = None
    updated_at: float | None = None
    # Whether a release signed by the publisher covers what the node holds
    # (None: the node does not say), and why not.
    verified: bool | None = None
    verification: str | None = None
    # Whether its Datasette has ever answered (with a position) since the
    # tracker began to follow it, and when that began.
    seen: bool = False
    since: float = field(default_factory=time.time)

    def state(self, behind: int) -> str:
        """``joining``: it has never answered (a read node's Datasette
        starts once its first copy of public.db has arrived, so a new node
        is this until then; so is one that does not start). ``cut off``: it
        answered before and does not now, or it says it cannot reach the
        primary. ``behind``: it answers, lacking ``behind`` TXIDs."""
        if not self.seen and not self.txid:
            return JOINING
        if not self.connected or self.primary_reachable is False:
            return CUT_OFF
        return BEHIND if behind else LIVE

    def lag_ms(self, primary_txid: int, oldest_missing_at: float | None, now: float | None = None) -> float:
        """How long the oldest transaction this node lacks has existed."""
        if primary_txid <= self.txid or not oldest_missing_at:
            return 0.0
        return round(((now or time.time()) - oldest_missing_at) * 1000, 1)

    def heard_ago(self, now: float | None = None) -> float | None:
        """Seconds since the node last heard from the primary: what it said,
        plus the time since it said it while it said it was cut off (a node
        that answers no more has been silent at least that long)."""
        if self.last_heard_s is None or self.last_heard_asked_at is None:
            return None
        since = (now or time.time()) - self.last_heard_asked_at if self.primary_reachable is False else 0.0
        return round(self.last_heard_s + since, 1)

    def as_dict(self, primary_txid: int, oldest_missing_at: float | None) -> dict:
        behind = max(0, primary_txid - self.txid)
        return {
            "name": self.name,
            "url": self.url,
            "region": self.region,
            "txid": self.txid,
            "connected": self.connected,
            "primary_reachable": self.primary_reachable,
            "last_heard_s": self.heard_ago(),
            "behind_txids": behind,
            "lag_ms": self.lag_ms(primary_txid, oldest_missing_at),
            "state": self.state(behind),
            "since": _iso(self.since),
            "updated_at": _iso(self.updated_at),
            "verified": self.verified,
            "verification": self.verification,
        }


def _rows(n: int) -> str:
    return f"{n:,} row{'' if n == 1 else 's'}"


def describe_cycle(cycle: Cycle) -> list[str]:
    """What one publish cycle did, in words, from its record in the
    publisher's cycle log: ``["planes published by alice (3,322 rows)",
    "42 rows changed in airports", "notes unpublished by bob", "saved query
    by_tz withdrawn (its table airports is no longer public)"]``."""
    actors = cycle.actors

    def by(table: str) -> str:
        return f" by {actors[table]}" if actors.get(table) else ""

    rows = cycle.rows_by_table
    said = []
    for table in cycle.published:
        said.append(f"{table} published{by(table)}" + (f" ({_rows(rows[table])})" if table in rows else ""))
    for table in cycle.recopied:
        why = f" (what is public changed{by(table)})" if actors.get(table) else ""
        said.append(f"{table} re-copied{why}" + (f": {_rows(rows[table])}" if table in rows else ""))
    for table in cycle.unpublished:
        said.append(f"{table} unpublished{by(table)}")
    shown = {*cycle.published, *cycle.recopied}
    for table, n in rows.items():
        if table not in shown:
            said.append(f"{_rows(n)} changed in {table}")
    told = cycle.query_changes
    for query in cycle.queries_changed:
        name = query if isinstance(query, str) else json.dumps(query)
        change = told.get(name) or {}  # a record from before query_changes: just "changed"
        line = f"saved query {name} {change.get('action') or 'changed'}"
        if change.get("actor"):
            line += f" by {change['actor']}"
        if change.get("reason"):
            line += f" ({change['reason']})"
        said.append(line)
    for table, progress in cycle.staging.items():
        # A large first copy over several cycles (primary/publisher/staging.py).
        state = progress.get("state")
        if state in ("copying", "done"):
            said.append(f"{table} first copy: {progress.get('copied', 0):,} of {progress.get('total', 0):,} rows staged")
        else:
            said.append(f"{table} staged copy {'erased' if state == 'erased' else 'being erased'}")
    if cycle.metadata_changed:
        said.append("titles, descriptions or licenses changed")
    return said


@dataclass
class Propagation:
    """One public TXID: when it was committed, what its publish cycle did
    (once the publisher's record of it is read), and when each node had it."""

    txid: int
    committed_at: float
    arrivals: dict[str, float] = field(default_factory=dict)  # node -> seconds since epoch
    cycle: Cycle | None = None  # the publisher's cycle log record

    def as_dict(self, nodes: list[str]) -> dict:
        return {
            "txid": self.txid,
            "committed_at": _iso(self.committed_at),
            "changes": describe_cycle(self.cycle) if self.cycle is not None else [],
            "cycle": self.cycle.summary() if self.cycle is not None else None,
            "nodes": [
                {
                    "name": name,
                    "arrived": name in self.arrivals,
                    "arrived_at": _iso(self.arrivals.get(name)),
                    "ms": round(max(0.0, self.arrivals[name] - self.committed_at) * 1000, 1)
                    if name in self.arrivals
                    else None,
                }
                for name in nodes
            ],
            "complete": all(name in self.arrivals for name in nodes),
        }


class Tracker:
    """Where every read node is. Nodes come from a static list and, when a
    DNS name is given, from what it resolves to: a node that joins is
    followed within one look-up, one that leaves is forgotten."""

    def __init__(
        self,
        public_litefs_url: str,
        nodes: tuple[ReadNodeAddress, ...],
        reconnect: float = 0.5,
        discovery: Discovery | None = None,
        discovery_interval: float = 2.0,
        cycle_log: str | os.PathLike | None = None,
        public_db: str | os.PathLike | None = None,
        lag_interval: float = LAG_INTERVAL,
    ):
        self.public_litefs_url = public_litefs_url
        self.static = tuple(nodes)
        self.addresses: dict[str, ReadNodeAddress] = {}
        self.nodes: dict[str, TrackedNode] = {}
        self.primary_txid = 0
        self.propagations: collections.OrderedDict[int, Propagation] = collections.OrderedDict()
        self.reconnect = reconnect
        self.discovery = discovery
        self.discovery_interval = discovery_interval
        self._subscribers: set[asyncio.Queue] = set()
        self._tasks: list[asyncio.Task] = []
        self._node_tasks: dict[str, list[asyncio.Task]] = {}
        self._changed = asyncio.Condition()
        self.cycle_log = Path(cycle_log) if cycle_log else None
        self.cycles: collections.OrderedDict[int, Cycle] = collections.OrderedDict()  # public TXID -> record
        self._cycle_log_offset, self._cycle_log_partial = 0, b""
        self.public_db = Path(public_db) if public_db else None
        self.lag_interval = lag_interval
        self._size: tuple[int, int] | None = None  # (public TXID, public.db's bytes then)
        # node -> (seconds since epoch, lag_ms, behind_txids, state), newest last
        self.lag: dict[str, collections.deque] = {}

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        self._spawn(self._follow_primary())
        for address in self.static:
            self._add(address)
        if self.discovery is not None:
            self._spawn(self._discover())
        if self.cycle_log is not None:
            self._spawn(self._follow_cycles())
        self._spawn(self._sample_lag())

    async def stop(self) -> None:
        tasks = self._tasks + [t for ts in self._node_tasks.values() for t in ts]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _add(self, address: ReadNodeAddress) -> None:
        self.addresses[address.name] = address
        self.nodes[address.name] = TrackedNode(address.name, address.public_url or address.url, address.region)
        self._node_tasks[address.name] = [
            asyncio.create_task(self._follow_node(address)),
            asyncio.create_task(self._poll_node(address)),
        ]

    async def _remove(self, name: str) -> None:
        for task in self._node_tasks.pop(name, []):
            task.cancel()
        self.addresses.pop(name, None)
        self.lag.pop(name, None)
        node = self.nodes.pop(name, None)
        if node is not None:
            await self._broadcast("node", {**self._node_dict(node), "connected": False, "left": True})

    async def _discover(self) -> None:
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                try:
                    found = {a.name: a for a in await self.discovery.nodes(client)}
                except Exception:  # a look-up must never end discovery
                    found = None
                if found is not None:
                    for name in [n for n in self.addresses if n not in found and not self._is_static(n)]:
                        await self._remove(name)
                    for name, address in found.items():
                        if self.addresses.get(name) != address:
                            if name in self.addresses:
                                await self._remove(name)  # same node, new address
                            self._add(address)
                            await self._broadcast("node", self._node_dict(self.nodes[name]))
                await asyncio.sleep(self.discovery_interval)

    def _is_static(self, name: str) -> bool:
        return any(a.name == name for a in self.static)

    # -- what the API serves -------------------------------------------------
    def node_list(self) -> list[dict]:
        return [self._node_dict(n) for n in self.nodes.values()]

    def propagation(self, txid: int) -> dict | None:
        p = self.propagations.get(txid)
        return p.as_dict(list(self.nodes)) if p else None

    def recent(self, limit: int = 20) -> list[dict]:
        return [p.as_dict(list(self.nodes)) for p in list(self.propagations.values())[-limit:]][::-1]

    def public_db_bytes(self) -> int | None:
        """The primary's public.db, in bytes (what a joining node is to
        receive, before LTX compression): its pages, as SQLite counts them
        (the file alone says less in WAL mode), asked once per public TXID;
        None where it is not on this machine. Blocking: call it from a
        thread."""
        if self.public_db is None:
            return None
        if self._size is not None and self._size[0] == self.primary_txid:
            return self._size[1]
        txid = self.primary_txid
        try:
            conn = connect(f"file:{self.public_db}?mode=ro", readonly=True)
        except apsw.Error:
            return None
        try:
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
            (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        except apsw.Error:
            return None
        finally:
            conn.close()
        self._size = (txid, pages * page_size)
        return self._size[1]

    def lag_history(self, seconds: float) -> dict[str, list[dict]]:
        """Each node's samples of the last ``seconds``, oldest first."""
        since = time.time() - seconds
        return {
            name: [
                {"at": _iso(at), "lag_ms": lag, "behind_txids": behind, "state": state}
                for at, lag, behind, state in samples
                if at >= since
            ]
            for name, samples in self.lag.items()
        }

    def watch_state(self, limit: int, seconds: float) -> dict:
        """What /watch opens with: the primary's position, every node, the
        newest publishes, each node's lag over the last ``seconds``."""
        return {
            "primary_txid": self.primary_txid,
            "public_db_bytes": self._size[1] if self._size else None,  # public_db_bytes() asked it
            "lag_interval_s": self.lag_interval,
            "nodes": self.node_list(),
            "publishes": self.recent(limit),
            "lag": self.lag_history(seconds),
        }

    def sample_lag(self, now: float | None = None) -> dict:
        """One sample of every node's lag, kept and returned as the ``lag``
        event says it."""
        now = now or time.time()
        said = []
        for name, node in self.nodes.items():
            behind = max(0, self.primary_txid - node.txid)
            lag = node.lag_ms(self.primary_txid, self._oldest_missing_at(node.txid), now)
            state = node.state(behind)
            self.lag.setdefault(name, collections.deque(maxlen=LAG_SAMPLES)).append((now, lag, behind, state))
            said.append({"name": name, "lag_ms": lag, "behind_txids": behind, "state": state})
        return {"at": _iso(now), "primary_txid": self.primary_txid, "nodes": said}

    async def _sample_lag(self) -> None:
        while True:
            sample = self.sample_lag()
            if self._subscribers:
                await self._broadcast("lag", sample)
            await asyncio.sleep(self.lag_interval)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=1000)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._subscribers.discard(queue)

    async def wait_for(self, txid: int, timeout: float) -> dict | None:
        """Wait until every node has ``txid`` and what its cycle did is known
        (the publisher writes that just after the commit, so it can come a
        moment after the last node); the propagation record either way."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while True:
                record = self.propagation(txid)
                if record and record["complete"] and (record["cycle"] is not None or not self._cycle_due(txid)):
                    return record
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return record
                try:
                    # Bounded: a later cycle's record (which tells that this
                    # TXID will have none) notifies nobody.
                    await asyncio.wait_for(self._changed.wait(), min(remaining, 0.25))
                except asyncio.TimeoutError:
                    pass

    def _cycle_due(self, txid: int) -> bool:
        """Whether a cycle record for ``txid`` may still come: there is a
        cycle log, and nothing after ``txid`` has been read from it yet."""
        return self.cycle_log is not None and max(self.cycles, default=0) <= txid

    # -- internals -----------------------------------------------------------
    def _node_dict(self, node: TrackedNode) -> dict:
        return node.as_dict(self.primary_txid, self._oldest_missing_at(node.txid))

    def _spawn(self, coro) -> None:
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.create_task(coro))

    def _oldest_missing_at(self, txid: int) -> float | None:
        for p in self.propagations.values():
            if p.txid > txid:
                return p.committed_at
        return None

    async def _broadcast(self, event: str, data: dict) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait((event, data))
            except asyncio.QueueFull:  # a stalled client: drop it
                self._subscribers.discard(queue)
        async with self._changed:
            self._changed.notify_all()

    async def _committed(self, txid: int, committed_at: float) -> None:
        if txid <= self.primary_txid and txid in self.propagations:
            return
        self.primary_txid = max(self.primary_txid, txid)
        if txid not in self.propagations:
            if txid not in self.cycles:
                self._read_cycles()
            self.propagations[txid] = Propagation(txid, committed_at, cycle=self.cycles.get(txid))
            while len(self.propagations) > HISTORY:
                self.propagations.popitem(last=False)
        # A node may have reported the TXID before the primary's event arrived.
        for node in self.nodes.values():
            if node.txid >= txid:
                self.propagations[txid].arrivals.setdefault(node.name, time.time())
        await self._broadcast("propagation", self.propagation(txid))

    async def _advanced(self, name: str, txid: int, connected: bool = True, primary_reachable=None) -> None:
        node = self.nodes.get(name)
        if node is None:
            return  # it has left
        now = time.time()
        moved = txid > node.txid or connected != node.connected
        # Cut off from the primary, or back: /watch shows it at once.
        moved = moved or (primary_reachable is not None and primary_reachable != node.primary_reachable)
        node.txid = max(node.txid, txid)
        node.connected = connected
        node.seen = node.seen or connected
        if primary_reachable is not None:
            node.primary_reachable = primary_reachable
        node.updated_at = now
        touched = []
        for p in self.propagations.values():
            if p.txid <= node.txid and name not in p.arrivals:
                p.arrivals[name] = now
                touched.append(p)
        if moved or touched:
            await self._broadcast("node", self._node_dict(node))
        if any(p.cycle is None for p in touched):
            self._read_cycles()  # recorded by now, in all likelihood: say what arrived
        for p in touched:
            await self._broadcast("propagation", p.as_dict(list(self.nodes)))

    async def _follow_primary(self) -> None:
        async for event in _tx_events(self.public_litefs_url, self.reconnect):
            if event.db == "public.db":
                await self._committed(event.pos.txid, event.committed_at or time.time())

    async def _check_node(self, address: ReadNodeAddress, client: httpx.AsyncClient) -> bool:
        try:
            status = (await client.get(f"{address.url}{STATUS_PATH}")).json()
            position = NodePosition.from_dict(status)
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            return False
        node = self.nodes.get(address.name)
        if node is None:
            return False
        region = status.get("region")
        if isinstance(region, str) and region and not address.region and region != node.region:
            node.region = region[:64]  # the node's own BROADSHEET_REGION, unless the primary's list names one
            await self._broadcast("node", self._node_dict(node))
        heard = status.get("last_heard_s")
        if isinstance(heard, (int, float)):
            node.last_heard_s, node.last_heard_asked_at = float(heard), time.time()
        if "verified" in status:
            said = (bool(status["verified"]), status.get("verification"))
            if said != (node.verified, node.verification):
                node.verified, node.verification = said
                await self._broadcast("node", self._node_dict(node))
        await self._advanced(address.name, position.txid, node.connected, status.get("primary_reachable"))
        return True

    async def _poll_node(self, address: ReadNodeAddress, interval: float = 2.0) -> None:
        # Events carry each transaction; this catches what they cannot (a
        # snapshot after a long outage, the node's link to the primary).
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                await self._check_node(address, client)
                await asyncio.sleep(interval)

    async def _follow_node(self, address: ReadNodeAddress) -> None:
        # The node's position stream (its Datasette's, so that its LiteFS
        # API can stay on loopback): one JSON line now, then one per TXID.
        async def on_connect():
            node = self.nodes.get(address.name)
            if node is not None and not node.connected:
                node.connected = node.seen = True
                await self._broadcast("node", self._node_dict(node))

        async def on_disconnect():
            node = self.nodes.get(address.name)
            if node is not None and node.connected:
                node.connected = False
                await self._broadcast("node", self._node_dict(node))

        # Keep-alives every 15 s: 30 s of silence is a dead connection.
        stream = _lines(f"{address.url}{STREAM_PATH}", self.reconnect, on_connect, on_disconnect, read_timeout=30.0)
        async for line in stream:
            if line.strip():
                await self._advanced(address.name, NodePosition.from_dict(json.loads(line)).txid)


    def _read_cycles(self) -> list["Propagation"]:
        """Read what the publisher has appended to its cycle log since the
        last call; returns the propagations that learned their cycle."""
        if self.cycle_log is None:
            return []
        try:
            size = os.stat(self.cycle_log).st_size
        except FileNotFoundError:
            size = 0
        if size < self._cycle_log_offset:  # rewritten, shorter (CycleLog keeps the newest)
            self._cycle_log_offset, self._cycle_log_partial = 0, b""
        if size == self._cycle_log_offset:
            return []
        with open(self.cycle_log, "rb") as fp:
            fp.seek(self._cycle_log_offset)
            data = self._cycle_log_partial + fp.read(size - self._cycle_log_offset)
        self._cycle_log_offset = size
        *lines, self._cycle_log_partial = data.split(b"\n")
        told = []
        for line in lines[-HISTORY:]:
            try:
                data = json.loads(line)
                txid = data.get("public_txid")
                record = Cycle.from_json(data)
            except (ValueError, TypeError, AttributeError):
                continue  # a line cut short by a crash
            if not isinstance(txid, int):
                continue
            self.cycles[txid] = record
            while len(self.cycles) > HISTORY:
                self.cycles.popitem(last=False)
            p = self.propagations.get(txid)
            if p is not None and p.cycle is None:
                p.cycle = record
                told.append(p)
        return told

    async def _follow_cycles(self, interval: float = 0.05) -> None:
        # The publisher appends one JSON line per cycle just after the commit
        # whose LiteFS event tells _follow_primary about it: either may come
        # first, and a record that comes second is sent again with it.
        while True:
            for p in self._read_cycles():
                await self._broadcast("propagation", p.as_dict(list(self.nodes)))
            await asyncio.sleep(interval)


# A read node's position, as its Datasette streams it (replica/stream.py).


async def _tx_events(url: str, reconnect: float):
    """Every ``tx`` event of a LiteFS node, reconnecting for ever."""
    async for line in _lines(f"{url}/events", reconnect):
        if (event := TxEvent.parse(line)) is not None:
            yield event


async def _lines(url: str, reconnect: float, on_connect=None, on_disconnect=None, read_timeout: float | None = None):
    """Every line of a streamed response, reconnecting for ever; one silent
    for ``read_timeout`` seconds counts as broken."""
    while True:
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=read_timeout)) as client:
                async with client.stream("GET", url) as response:
                    response.raise_for_status()
                    if on_connect:
                        await on_connect()
                    async for line in response.aiter_lines():
                        yield line
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        if on_disconnect:
            await on_disconnect()
        await asyncio.sleep(reconnect)
