"""``tools/stability.py --quick`` captions a rendered storyline file through the whole pipeline (the
demo engine in ONNX Runtime, windows, stabiliser) and writes a report whose numbers meet the
stability targets of docs/stability.md.

The quick run is the first 120 s of storyline seed 11 (20 scenes, 19 cuts) from a file; a file is
captioned deterministically (one window per engine call), so these numbers are the same every run
on a machine. Measured here: 19 of 20 finals correct (the one wrong final: the model names the
wrong shape throughout scene 12, so that cut has no correct final), no spurious final change (raw
windows: about 10 a minute), change delay median and p95 2.5 s = window + stride (with the
stabiliser's cut-aware agreement; without it, 2 of the 18 cuts took one more window, 3.0 s).
The accuracy assertion holds 0.90, not the 0.95 it measures, so that one borderline window read
differently on another CPU does not fail CI; the full run's figures are in docs/stability.md.
A second test pins the scoring rules on hand-made captions.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamcap.demo.synthetic import Storyline
from tools.stability import Capture, PublishedFinal, RawWindow, scene_truth, score_run

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "stability.py"

REQUIRED = ("final_accuracy", "spurious_per_min", "change_delay_s_p95", "change_delay_s_median",
            "raw_spurious_per_min", "window_s", "stride_s", "media_min", "scenes", "finals", "runs_detail",
            "sources", "targets_met")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.mark.timeout(300)
def test_quick_stability_run_on_a_storyline_file_meets_the_stability_targets(tmp_path, media_cache_dir,
                                                                              require_system):
    if shutil.which("ffmpeg") is None:
        require_system("ffmpeg not found: the stability tool renders its storyline with it")
    out, table = tmp_path / "stability.json", tmp_path / "stability.md"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--quick", "--no-progress", "--cache", str(media_cache_dir / "stability"),
         "--json", str(out), "--markdown", str(table)],
        capture_output=True, text=True, timeout=280, check=False)
    took_s = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for key in REQUIRED:
        assert key in report, key

    # sane values: one file run of 120 s at the engine's 2 s window and the default 0.5 s stride
    window_s, stride_s = report["window_s"], report["stride_s"]
    assert (window_s, stride_s) == (2.0, 0.5)
    assert list(report["sources"]) == ["file"] and report["runs"] == 1
    run = report["runs_detail"][0]
    assert run["source"] == "file" and run["seed"] == 11
    assert 1.9 < report["media_min"] <= 2.0
    assert report["scenes"] == 20 and report["cuts_scored"] == 19
    # every window captioned: the last one's nominal end lies within one frame-grid step (window /
    # (K-1) = 0.4 s for the demo model) after its true end, media_s
    step = window_s / 5
    assert (round((run["media_s"] - window_s) / stride_s) + 1 <= run["windows"]
            <= math.floor((run["media_s"] + step - 1e-6 - window_s) / stride_s) + 1)
    assert run["windows_dropped"] == {}  # a file loses nothing
    assert report["scenes"] - 1 <= report["finals"] <= 2 * report["scenes"]
    for key in ("final_accuracy", "spurious_per_min", "change_delay_s_p95", "change_delay_s_median",
                "raw_spurious_per_min", "raw_window_accuracy"):
        assert _number(report[key]), f"{key} = {report[key]!r}"
    assert 0 <= report["final_accuracy"] <= 1 and 0 <= report["raw_window_accuracy"] <= 1
    assert report["change_delay_s_median"] <= report["change_delay_s_p95"]
    # no final can change before the window that mostly shows the new scene has ended
    assert min(d for d in run["change_delays_s"] if d is not None) >= window_s / 2
    print(f"quick stability run: {took_s:.1f} s wall; accuracy {report['final_accuracy']:.3f}, spurious "
          f"{report['spurious_per_min']:.2f}/min (raw {report['raw_spurious_per_min']:.2f}/min), change delay "
          f"median {report['change_delay_s_median']:.2f} s p95 {report['change_delay_s_p95']:.2f} s, "
          f"missed {report['changes_missed']} of {report['cuts_scored']} cuts")

    # the targets (accuracy: 19 of 20 here, exactly the 0.95 target; the test holds 0.90 so that
    # one borderline window read differently on another CPU does not fail CI — the full run's
    # figure, below the target, is reported in docs/stability.md)
    assert report["final_accuracy"] >= 0.90
    assert report["spurious_per_min"] <= 0.5
    assert report["spurious_per_min"] < report["raw_spurious_per_min"]
    assert report["change_delay_s_median"] <= window_s + stride_s + 1e-6
    assert report["change_delay_s_p95"] <= window_s + stride_s + 1e-6
    md = table.read_text()
    assert "| final accuracy |" in md and ("PASS" in md or "FAIL" in md)


def test_scoring_attributes_changes_to_scenes_and_times_each_cut_to_its_first_correct_final():
    story = Storyline(11, 6.0, aspect=320 / 240)
    truth = [scene_truth(story, i) for i in range(4)]
    ends = [2.0 + 0.5 * k for k in range(45)]  # windows of 2 s every 0.5 s up to 24 s: 4 scenes
    # raw: the scene at each window's middle, with one flicker inside scene 1 (to "x" and back)
    raw = [RawWindow(e - 2.0, e, "x" if e == 9.0 else truth[story.index_at(e - 1.0)]) for e in ends]
    finals = [PublishedFinal(0, truth[0], 3.0, 0.0, 6.5, 0.0),
              PublishedFinal(1, truth[1], 8.5, 6.5, 12.5, 0.0),
              PublishedFinal(2, "a wrong caption", 14.5, 12.5, 14.0, 0.0),  # scene 2, wrong
              PublishedFinal(3, truth[2], 15.5, 14.0, 18.5, 0.0),  # its second change: spurious
              PublishedFinal(4, truth[3], 20.5, 18.5, 24.0, 0.0)]
    score = score_run(Capture("s", raw=raw, finals=finals), story, window_s=2.0, stride_s=0.5)
    assert score["media_s"] == 24.0 and score["scenes"] == 4 and score["cuts_scored"] == 3
    assert (score["finals_correct"], score["finals"]) == (4, 5)
    assert score["spurious_changes"] == 1 and score["spurious_per_min"] == 1 / 0.4
    assert [f["publish_s"] for f in score["spurious_finals"]] == [15.5]
    assert score["change_delays_s"] == [2.5, 3.5, 2.5] and score["changes_missed"] == 0
    assert (score["change_delay_s_median"], score["change_delay_s_p95"]) == (2.5, 3.5)
    # raw: a change per cut (explained) plus the flicker's two changes in scene 1
    assert score["raw_changes"] == 5 and score["raw_spurious_changes"] == 2
