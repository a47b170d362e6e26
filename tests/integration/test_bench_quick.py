"""`tools/bench.py --quick` runs end to end and writes a well-formed report. Speed ratios are not
asserted (speed targets are measured by the benchmark itself, never gated in tests)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REQUIRED = ("naive_windows_per_s", "fp32_windows_per_s", "int8_windows_per_s", "raw_ort_windows_per_s",
            "fp32_vs_naive", "int8_vs_naive", "raw_ort_vs_fp32")


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.timeout(600)
def test_quick_benchmark_writes_a_complete_report(tmp_path):
    pytest.importorskip("torch", reason="the benchmark's naive variant and the export need torch + transformers")
    pytest.importorskip("transformers")
    out, table, png = tmp_path / "bench.json", tmp_path / "bench.md", tmp_path / "bench.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "bench.py"), "--quick", "--cache", str(tmp_path / "cache"),
         "--json", str(out), "--markdown", str(table), "--plot", str(png)],
        capture_output=True, text=True, timeout=540, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    for key in REQUIRED:
        assert _positive(report.get(key)), f"{key} = {report.get(key)!r}"
    variants = report["variants"]
    for name, r in variants.items():
        for key in ("windows_per_s", "p50_ms", "p95_ms", "peak_rss_mb", "cpu_ms_per_window",
                    "best_round_ms_per_window", "best_round_cpu_ms_per_window"):
            assert _positive(r[key]), f"{name}.{key} = {r[key]!r}"
        assert r["p50_ms"] <= r["p95_ms"]
        # the best round is no slower than the pooled mean
        assert r["best_round_ms_per_window"] <= 1000 / r["windows_per_s"] + 1e-6
    for key in ("fp32_vs_naive", "int8_vs_naive"):
        assert _positive(report[f"{key}_cpu"]) and _positive(report[f"{key}_best_round"])
    n = variants["naive"]["windows"]
    assert n == report["config"]["windows"]
    assert variants["fp32"]["windows"] == variants["int8"]["windows"] == n
    # the frame cache is doing its job: on the live grid 1, 1, 2, 1 new frames in the 4 measured
    # windows (after 2 warm-up windows), naive re-encodes all 6
    assert report["config"]["stream"] == "live"
    assert variants["naive"]["frames_encoded_per_window"] == 6
    assert variants["fp32"]["frames_encoded_per_window"] == variants["int8"]["frames_encoded_per_window"] == 1.25
    assert _positive(report["fp32_peak_rss_vs_naive"]) and "fp32_peak_rss_vs_naive" in report["targets_met"]
    assert "| naive |" in table.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
