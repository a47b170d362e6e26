"""`python -m tools.bench_gateway --quick` runs end to end against a real redis-server and a real
`streamcap gateway` process and writes a complete report. No latency is asserted (the benchmark
measures the target; tests never gate on speed): only that every viewer got every final."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.mark.timeout(180)
def test_quick_gateway_benchmark_delivers_every_final_and_reports_latencies(tmp_path):
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed (Debian package redis-server; tools/system-deps.sh)")
    out = tmp_path / "bench_gateway.json"
    proc = subprocess.run([sys.executable, "-m", "tools.bench_gateway", "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=150, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    (r,) = report["rounds"]
    assert r["connected"] == r["clients"] == 20
    assert r["delivered"] > 0
    assert r["lost"] == 0 and r["duplicates"] == 0 and r["closed_early"] == 0
    assert r["expected_finals"] > 0
    assert r["dropped_clients"] == 0
    lat = r["latency_ms"]
    assert lat["n"] == r["delivered"]
    for q in ("p50", "p95", "p99", "max"):
        assert isinstance(lat[q], float) and math.isfinite(lat[q]), f"{q} = {lat[q]!r}"
    assert lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert r["gateway_rss_mb"]["end"] > 0
    (s,) = report["summary"]
    assert s["clients"] == 20 and s["lost"] == 0
    assert "| 20 | 1 |" in proc.stdout
