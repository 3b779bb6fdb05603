"""The benchmarks still run (a quick smoke run; no timing is asserted)."""

import json
import subprocess
import sys

import pytest


@pytest.mark.cluster  # starts LiteFS itself
def test_quick_benchmark_run_prints_a_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    only = ["propagation", "publish", "writes", "fanout"]
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", *(f"--only={name}" for name in only), "--output", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "propagation" in result.stdout and "baseline" in result.stdout
    report = json.loads(out.read_text())
    names = {r["name"] for r in report["results"]}
    assert names == {"propagation", "publish flights", "writes", "fan-out", "memory"}
    # Each node's peak memory was sampled while the benchmarks ran.
    memory = {r["metric"]: r["value"] for r in report["results"] if r["name"] == "memory"}
    assert set(memory) == {"primary peak RSS (all its processes)", "read node peak RSS (all its processes)"}
    assert all(value > 10 for value in memory.values()), memory
    for r in report["results"]:
        assert r["value"] >= 0 and (r["baseline"] is None or r["baseline"] > 0)
    # Every headline figure has a same-run baseline (memory is a reading
    # for sizing machines, with nothing to compare it to).
    headline = [r for r in report["results"] if not r["metric"].startswith("  ") and r["name"] != "memory"]
    assert all(r["baseline"] > 0 for r in headline)
    # (A node may apply a one-row transaction within the clock's resolution
    # of the public commit: fan-out times may be 0.)
    assert all(r["value"] > 0 for r in headline if r["name"] != "fan-out")
    # Each write request is one data.db commit: any other in the window is
    # the publisher's change-log trim (at most one here: under 10,000 rows,
    # or after 30 s idle).
    commits = next(r for r in report["results"] if "data.db commits per write" in r["metric"])
    details = commits["details"]
    assert commits["value"] == 1 and commits["met"]
    assert details["data_db_commits"] - details["publisher_commits"] == details["requests"]
    assert details["publisher_commits"] in (0, 1)
    # A publish is timed in parts, each within the whole.
    publish = next(r for r in report["results"] if r["name"] == "publish flights" and "rows" in r["details"])
    cluster = publish["details"]["cluster"]
    assert 0 < cluster["flip_to_public_commit_s"] < cluster["total_s"] == publish["value"]
    assert publish["details"]["publisher_on_local_files"]["cycle_s"] > 0
    # Fan-out is timed at LiteFS level, from every node's own event stream.
    fanout = [r for r in report["results"] if r["name"] == "fan-out"]
    assert [r["details"]["nodes"] for r in fanout] == [1, 2]
    assert all(len(r["details"]["per_node_p50_ms"]) == r["details"]["nodes"] for r in fanout)
