"""The benchmarks still run (a quick smoke run; no timing is asserted)."""

import json
import subprocess
import sys


def test_quick_benchmark_run_prints_a_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--only", "propagation", "--only", "writes", "--output", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "propagation" in result.stdout and "baseline" in result.stdout
    report = json.loads(out.read_text())
    names = {r["name"] for r in report["results"]}
    assert names == {"propagation", "writes"}
    for r in report["results"]:
        assert r["value"] > 0 and r["baseline"] > 0
