"""`python -m tools.bench_capacity` runs a short point per engine kind end to end through the real
live pipeline and writes a complete report and its plot. No speed is asserted (the benchmark
measures capacity; tests never gate on it): only that windows flowed and the report is whole."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
def test_capacity_benchmark_measures_live_streams_and_draws_the_curve(tmp_path):
    out, png = tmp_path / "capacity.json", tmp_path / "capacity.png"
    proc = subprocess.run([sys.executable, "-m", "tools.bench_capacity", "--kinds", "shapes,describer",
                           "--shapes", "1,2", "--describer", "1", "--seconds", "9", "--warmup", "4",
                           "--json", str(out), "--plot", str(png)],
                          cwd=ROOT, capture_output=True, text=True, timeout=220, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(p["kind"], p["streams"]) for p in report["points"]] == [("shapes", 1), ("shapes", 2), ("describer", 1)]
    for p in report["points"]:
        assert p["windows_in_measured_span"] > 0  # windows flowed through the engine in the measured span
        assert p["per_stream_s_min"] > 0 and p["per_stream_s_median"] >= p["per_stream_s_min"]
        assert isinstance(p["carried"], bool) and isinstance(p["dropped"], dict)
        if p["carried"]:
            assert p["share_delivered"] >= 0.95 and not p["dropped"]
        if p["dropped"]:
            assert not p["carried"]
        assert p["glass_to_result_p95_s"] is not None and p["overhead_p95_s"] is not None
    assert set(report["carried"]) == {"shapes", "describer"}
    assert "| shapes | 2 |" in proc.stdout
    image = cv2.imread(str(png))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100


def test_capacity_benchmark_refuses_an_unknown_kind():
    proc = subprocess.run([sys.executable, "-m", "tools.bench_capacity", "--kinds", "teleport"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "teleport" in proc.stderr
