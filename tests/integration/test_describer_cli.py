"""`streamcap caption` on a real clip with no --engine: the scene describer writes subtitles and
JSON Lines with structured objects; --all-windows gives one line per window for evaluation."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

import webvtt
from tools.describer_eval import match_directions, person_motions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clip(vtest_path, media_cache_dir):
    out = media_cache_dir / "vtest-first-10s.avi"
    if not out.is_file():
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(vtest_path), "-t", "10",
                        "-c", "copy", str(out)], check=True)
    return out


def _seconds(stamp: str) -> float:
    h, m, s = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def _caption(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamcap.cli", "caption", *args, "--no-progress"],
                          capture_output=True, text=True, timeout=300)


def test_caption_with_no_engine_describes_the_people_in_a_real_clip(clip, tmp_path) -> None:
    vtt = tmp_path / "out.vtt"
    proc = _caption(str(clip), "-o", str(vtt))
    assert proc.returncode == 0, proc.stderr
    cues = webvtt.from_buffer(io.StringIO(vtt.read_text())).captions
    assert cues, vtt.read_text()
    text = " ".join(c.text for c in cues)
    assert "people" in text and "walk" in text, text
    assert "square" not in text and "triangle" not in text  # not the shapes model
    times = [(_seconds(c.start), _seconds(c.end)) for c in cues]
    assert all(b[0] >= a[1] - 1e-6 for a, b in zip(times, times[1:]))


def test_jsonl_carries_objects_and_all_windows_gives_one_line_per_window(clip, tmp_path) -> None:
    finals, windows = tmp_path / "finals.jsonl", tmp_path / "windows.jsonl"
    proc = _caption(str(clip), "--format", "jsonl", "-o", str(finals))
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in finals.read_text().splitlines()]
    assert lines and all(line["type"] == "caption" and line["track"] == "video" for line in lines)
    assert any(o["label"] == "person" and o["count"] >= 1 for line in lines for o in line.get("objects", []))
    proc = _caption(str(clip), "--format", "jsonl", "--all-windows", "-o", str(windows))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in windows.read_text().splitlines()]
    # 10 s, 2 s windows every 0.5 s: windows ending at 2.0, 2.5, ... 9.9 (the last frame)
    assert len(rows) == 16, [r["start"] for r in rows]
    assert [r["start"] for r in rows] == [0.5 * i for i in range(16)]
    assert all(r["type"] == "window" and r["end"] - r["start"] == pytest.approx(2.0) for r in rows)
    assert all(person_motions(r["objects"]) for r in rows)  # people in every window of vtest's start
    proc = _caption(str(clip), "--all-windows", "--format", "vtt")
    assert proc.returncode == 2 and "--all-windows" in proc.stderr


def test_direction_matching_gives_each_described_person_to_one_labelled_person() -> None:
    assert match_directions(["left", "left"], ["left"]) == 1
    assert match_directions(["left|away", "away"], ["away", "left"]) == 2  # the diagonal walker takes left
    assert match_directions(["right"], ["left", "still"]) == 0
    assert person_motions([{"label": "person", "count": 2, "motion": "left"},
                           {"label": "car", "count": 1, "motion": "still"}]) == ["left", "left"]
