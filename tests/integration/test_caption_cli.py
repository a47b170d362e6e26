"""``streamcap caption`` on a rendered storyline file writes subtitles that real parsers read back,
with captions that match the storyline's ground truth; files (and uploads) whose timestamps jump
are captioned in normal time with bounded memory; a finite RTSP stream ends; Ctrl-C writes what
was captioned."""

from __future__ import annotations

import io
import subprocess
import sys
import time

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


#: storyline (shapes) clips are captioned by the caption model, not the scene describer
SHAPES = ["--video-engine", "caption"]


def _caption(path, out, fmt) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamcap.cli", "caption", str(path), "--format", fmt,
                           "-o", str(out), "--no-progress", *SHAPES], capture_output=True, text=True, timeout=300)


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


# ---------------------------------------------------------------- lying timestamps (defect 2)

#: the caption child may map this much address space (onnxruntime maps ~1 GB); a runaway fails
#: fast with MemoryError instead of taking the machine's memory
_ADDRESS_SPACE_LIMIT = 4 << 30

_MEASURED_RUN = """
import json, resource, subprocess, sys, time
def limit():
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
t0 = time.monotonic()
try:
    proc = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout={timeout}, preexec_fn=limit)
    rc, err = proc.returncode, proc.stderr[-2000:]
except subprocess.TimeoutExpired:
    rc, err = "timeout", ""
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({{"rc": rc, "wall_s": time.monotonic() - t0, "peak_mb": peak_kb / 1024, "stderr": err}}))
"""


def _caption_measured(path, out, timeout_s: float) -> dict:
    """Run ``streamcap caption`` in a child with an address-space cap; its exit status, wall time
    and peak RSS (the only grandchild of a small wrapper, so RUSAGE_CHILDREN is its own)."""
    import json

    code = _MEASURED_RUN.format(limit=_ADDRESS_SPACE_LIMIT, timeout=timeout_s)
    cmd = [sys.executable, "-c", code, sys.executable, "-m", "streamcap.cli", "caption", str(path),
           "--format", "jsonl", "-o", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 30, check=True)
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def jumping_files(tmp_path_factory, require_system):
    from tests.helpers import timestamps

    d = tmp_path_factory.mktemp("jumps")
    try:
        return {"fmp4_jump_1e9_s": timestamps.fmp4_with_jump(d / "jump.mp4", jump_s=1e9),
                "mpegts_jump_1_day": timestamps.mpegts_segments(d / "jump.ts", [(3, 0), (3, 86400)])}
    except timestamps.MediaError as exc:
        require_system(str(exc))


@pytest.mark.timeout(200)
@pytest.mark.parametrize("name", ["fmp4_jump_1e9_s", "mpegts_jump_1_day"])
def test_caption_of_a_file_whose_timestamps_jump_runs_in_normal_time_with_bounded_memory(
        jumping_files, tmp_path, name):
    path = jumping_files[name]
    out = tmp_path / "out.jsonl"
    run = _caption_measured(path, out, timeout_s=120)
    print(f"\n{name} ({path.stat().st_size} bytes): exit {run['rc']}, {run['wall_s']:.1f} s, "
          f"peak RSS {run['peak_mb']:.0f} MB")
    assert run["rc"] == 0, run["stderr"]
    assert run["wall_s"] < 60  # a 6 s clip; before: an hour (1 day) or MemoryError (1e9 s)
    assert run["peak_mb"] < 1024
    msgs = [wire.decode_server_message(line) for line in out.read_text().splitlines()]
    assert msgs, "no caption"
    assert max(m.end for m in msgs) <= 6.5  # media time is the 6 s that were received
    assert "pts_jump" in run["stderr"]  # the discontinuity is reported, not hidden


@pytest.mark.timeout(120)
async def test_an_upload_whose_timestamps_jump_is_captioned_in_normal_time_and_the_jump_counted(
        jumping_files):
    import aiohttp

    from streamcap.runtime.config import load_config
    from streamcap.runtime.service import Service

    token = "jump-test-publish-token-0123"
    cfg = load_config(None, environ={}, overrides={"server": {"port": 0},
                                                   "auth": {"tokens": [{"scope": "publish", "token": token}]}})
    rss_before_mb = _rss_mb()
    async with Service(cfg) as svc, aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60), headers={"Authorization": f"Bearer {token}"}) as http:
        form = aiohttp.FormData()
        form.add_field("video", jumping_files["fmp4_jump_1e9_s"].read_bytes(), filename="jump.mp4",
                       content_type="video/mp4")
        t0 = time.monotonic()
        async with http.post(svc.url("/v1/captions"), data=form) as r:
            assert r.status == 200, await r.text()
            doc = await r.json()
        took_s = time.monotonic() - t0
        async with http.get(svc.url("/healthz")) as r:
            assert r.status == 200  # the server still answers
        async with http.get(svc.url("/metrics")) as r:
            metrics = await r.text()
    grown_mb = _rss_mb() - rss_before_mb
    print(f"\nPOST /v1/captions of a 6 s fmp4 with a 1e9 s jump: {took_s:.2f} s, RSS +{grown_mb:.0f} MB")
    caps = doc["captions"]
    assert caps and max(c["end"] for c in caps) <= 6.5
    assert took_s < 30
    assert grown_mb < 500
    jumps = [line for line in metrics.splitlines()
             if line.startswith("streamcap_frames_dropped_total{") and 'reason="pts_jump"' in line]
    assert jumps and float(jumps[0].rsplit(" ", 1)[1]) >= 1, metrics


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


# ---------------------------------------------------------------- RTSP and Ctrl-C (defect 11)


@pytest.fixture(scope="module")
def story_14s(storyline_video, tmp_path_factory):
    """The storyline's first 14 s (two full scenes and a bit), for a finite RTSP stream."""
    out = tmp_path_factory.mktemp("story") / "story14.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(storyline_video.path), "-t", "14", "-c", "copy",
                    str(out)], check=True, timeout=60)
    return out


@pytest.mark.timeout(120)
def test_caption_of_a_finite_rtsp_stream_ends_when_the_stream_does(rtsp_server, story_14s, storyline_video,
                                                                   tmp_path):
    server = rtsp_server({"story": story_14s})
    out = tmp_path / "out.jsonl"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "streamcap.cli", "caption", server.url("story"), "--format",
                           "jsonl", "-o", str(out), "--no-progress", *SHAPES], capture_output=True, text=True,
                          timeout=60)
    took_s = time.monotonic() - t0
    print(f"\ncaption of a 14 s RTSP stream: exit {proc.returncode} after {took_s:.1f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ended" in proc.stderr
    msgs = [wire.decode_server_message(line) for line in out.read_text().splitlines()]
    story = storyline_video.storyline
    assert [m.text for m in msgs][:1] == [story.caption_at(1.0)]
    assert max(m.end for m in msgs) <= 15.0


@pytest.mark.timeout(120)
def test_ctrl_c_during_caption_writes_what_was_captioned_and_exits_130(rtsp_server, storyline_video, tmp_path):
    import queue
    import re
    import signal
    import threading

    server = rtsp_server({"story": storyline_video.path})  # 75 s: still going when interrupted
    out = tmp_path / "out.vtt"
    proc = subprocess.Popen([sys.executable, "-m", "streamcap.cli", "caption", server.url("story"), "-o", str(out),
                             *SHAPES], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    chunks: queue.Queue[bytes] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        while chunk := proc.stderr.read1(4096):
            chunks.put(chunk)
        chunks.put(b"")

    threading.Thread(target=pump, daemon=True).start()
    seen = b""
    progress_s = 0.0
    try:
        while progress_s < 9.0:  # the first scene (6 s) has been captioned and closed
            chunk = chunks.get(timeout=60)
            assert chunk, f"caption exited early: {seen.decode(errors='replace')[-2000:]}"
            seen += chunk
            found = re.findall(rb"\| (\d+\.\d)/", seen)
            progress_s = float(found[-1]) if found else 0.0
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    while (chunk := chunks.get(timeout=10)):
        seen += chunk
    stderr = seen.decode(errors="replace")
    print(f"\nCtrl-C after {progress_s:.1f} s of media: exit {rc}")
    assert rc == 130, stderr[-3000:]
    assert "interrupted" in stderr
    cues = webvtt.from_buffer(io.StringIO(out.read_text())).captions
    assert cues, "nothing written"
    assert cues[0].text == storyline_video.storyline.caption_at(1.0)
    assert _secs(cues[-1].end) <= progress_s + 10.0  # what was read, not the whole 75 s
