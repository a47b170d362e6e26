"""`python -m tools.bench_fanout --quick` runs end to end against a real `streamcap run` process and
writes a complete report. No latency is asserted (the benchmark measures the target; tests never
gate on speed): only that every viewer got every caption of the window and the counts agree."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
def test_quick_fanout_benchmark_delivers_every_caption_and_reports_latencies(tmp_path):
    out, md = tmp_path / "bench_fanout.json", tmp_path / "bench_fanout.md"
    proc = subprocess.run([sys.executable, "-m", "tools.bench_fanout", "--quick", "--json", str(out),
                           "--markdown", str(md)],
                          cwd=ROOT, capture_output=True, text=True, timeout=210, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    (r,) = report["rounds"]
    assert r["connected"] == r["clients"] == 20
    assert r["client_procs"] == 2
    # the window held captions, finals among them, and every viewer got every one of them
    assert r["finals_in_window"] > 0
    assert r["captions_in_window"] >= r["finals_in_window"]
    assert r["expected_deliveries"] == r["captions_in_window"] * r["clients"]  # every viewer: all streams
    assert r["received"] == r["expected_deliveries"]
    assert r["received_per_viewer"]["min"] == r["received_per_viewer"]["max"] == r["captions_in_window"]
    assert r["lost"] == 0 and r["lost_finals"] == 0 and r["viewers_with_loss"] == 0
    assert r["duplicates"] == 0 and r["closed_early"] == 0
    assert r["dropped_clients"] == {} and r["dropped_messages"] == {}
    assert r["clients_gauge_end"] == 20
    assert r["server_exit"] == 0
    assert r["server_gc"] is not None and r["server_gc"]["count"] >= r["server_gc"]["full"] >= 0
    lat = r["latency_ms"]
    assert lat["n"] == r["received"]
    for q in ("p50", "p95", "p99", "max"):
        assert isinstance(lat[q], float) and math.isfinite(lat[q]), f"{q} = {lat[q]!r}"
    assert lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert r["first_viewer_ms"]["n"] == r["fanout_spread_ms"]["n"] == r["captions_in_window"]
    assert r["server_rss_mb"]["end"] > 0 and r["server_rss_mb"]["peak"] >= r["server_rss_mb"]["end"]
    assert r["server_cpu_pct"] >= r["server_loop_cpu_pct"] >= 0
    assert len(r["viewer_cpu_pct"]) == 2
    assert len(r["load_average"]["start"]) == 3
    table = md.read_text()
    assert "| 20 | " in table and "| 20 | " in proc.stdout
