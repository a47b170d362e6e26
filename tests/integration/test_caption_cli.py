"""``streamcap caption`` on a rendered storyline file writes subtitles that real parsers read back,
with captions that match the storyline's ground truth."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import srt
import webvtt

from streamcap.outputs import wire

pytestmark = pytest.mark.integration

#: Issue #2: >= 0.90 of finals match the ground truth (the committed model: 15 of 15 here).
FINAL_ACCURACY_TARGET = 0.90
FINAL_ACCURACY_FLOOR = FINAL_ACCURACY_TARGET


def _secs(ts: str) -> float:
    """WebVTT timestamp → seconds (webvtt-py's *_in_seconds truncate to whole seconds)."""
    h, m, s = ts.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def _caption(path, out, fmt) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamcap.cli", "caption", str(path), "--format", fmt,
                           "-o", str(out), "--no-progress"], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def vtt_and_srt(storyline_video, tmp_path_factory):
    d = tmp_path_factory.mktemp("cap")
    results = {}
    for fmt in ("vtt", "srt", "jsonl"):
        out = d / f"out.{fmt}"
        proc = _caption(storyline_video.path, out, fmt)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[fmt] = out.read_text()
    return results


def test_caption_writes_webvtt_that_parses_back(vtt_and_srt, storyline_video):
    text = vtt_and_srt["vtt"]
    assert text.startswith("WEBVTT")
    cues = webvtt.from_buffer(io.StringIO(text)).captions
    assert len(cues) >= storyline_video.duration_s / storyline_video.storyline.scene_s - 2
    starts = [_secs(c.start) for c in cues]
    assert starts == sorted(starts)
    for a, b in zip(cues, cues[1:]):
        assert _secs(a.start) < _secs(a.end) <= _secs(b.start) + 1e-3
    assert all(c.text.strip() for c in cues)


def test_caption_writes_srt_that_parses_back_with_the_same_cues(vtt_and_srt):
    subs = list(srt.parse(vtt_and_srt["srt"]))
    cues = webvtt.from_buffer(io.StringIO(vtt_and_srt["vtt"])).captions
    assert len(subs) == len(cues)
    for s, c in zip(subs, cues):
        assert abs(s.start.total_seconds() - _secs(c.start)) < 1e-3
        assert abs(s.end.total_seconds() - _secs(c.end)) < 1e-3
        assert " ".join(s.content.split()) == " ".join(c.text.split())


def test_caption_finals_match_the_storyline_ground_truth(vtt_and_srt, storyline_video):
    story = storyline_video.storyline
    msgs = [wire.decode_server_message(line) for line in vtt_and_srt["jsonl"].splitlines()]
    assert msgs and all(m.state == "final" for m in msgs)
    seqs = [m.seq for m in msgs]
    assert seqs == sorted(set(seqs))
    # each final is judged against the scene that covers most of its span
    correct = 0
    for m in msgs:
        mid = (m.start + m.end) / 2
        correct += m.text == story.caption_at(mid)
    accuracy = correct / len(msgs)
    # the file's end is captioned too (every queued window is in before the last final is closed),
    # and no final repeats the one before it
    assert msgs[-1].end >= storyline_video.duration_s - 1.0, msgs[-1]
    assert all(a.text != b.text for a, b in zip(msgs, msgs[1:])), [m.text for m in msgs]
    print(f"file captioning: {len(msgs)} finals, accuracy {accuracy:.3f} (issue target {FINAL_ACCURACY_TARGET})")
    assert accuracy >= FINAL_ACCURACY_FLOOR, [(m.start, m.end, m.text, story.caption_at((m.start + m.end) / 2))
                                              for m in msgs]


def test_caption_of_a_missing_file_fails_with_a_clear_message(tmp_path):
    proc = _caption(tmp_path / "nope.mp4", tmp_path / "x.vtt", "vtt")
    assert proc.returncode == 2
    assert "no such file" in proc.stderr
    assert not (tmp_path / "x.vtt").exists()
