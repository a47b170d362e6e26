"""File sources through PyAV and webcams through OpenCV, on real media: every frame with honest
media time, files whose timestamps lie (jumps, rewinds) and files that cannot be read, each with
its own message."""

import logging
import subprocess
import threading

import cv2
import numpy as np
import pytest

from streamcap.core.errors import SourceEnded, SourceError
from streamcap.sources import open_source
from streamcap.sources.pyav import probe_video
from streamcap.core.types import StreamState
from tests.helpers import StatusLog
from tests.helpers import timestamps

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_file_source_reads_every_frame_with_monotonic_pts_then_ends(storyline_video):
    statuses = StatusLog()
    drops: list[str] = []
    source = open_source("story", str(storyline_video.path), on_status=statuses,
                         on_drop=drops.append)
    assert not source.live
    frames = []
    with pytest.raises(SourceEnded):
        while True:
            frames.append(await source.recv())
    expected = round(storyline_video.duration_s * storyline_video.fps)
    assert len(frames) == expected
    assert [f.seq for f in frames] == list(range(expected))
    pts = np.array([f.pts_s for f in frames])
    assert np.all(np.diff(pts) > 0)
    np.testing.assert_allclose(pts, np.arange(expected) / storyline_video.fps, atol=1e-3)
    assert all(b.capture_ns >= a.capture_ns for a, b in zip(frames, frames[1:], strict=False))
    assert drops == []  # files block the reader: nothing is lost
    assert statuses.states == [StreamState.STARTING, StreamState.LIVE, StreamState.ENDED]
    with pytest.raises(SourceEnded):
        await source.recv()
    await source.aclose()
    await source.aclose()  # idempotent


async def test_file_frames_are_rgb_and_match_the_rendered_storyline(storyline_video):
    source = open_source("story", str(storyline_video.path))
    try:
        frames = [await source.recv() for _ in range(31)]
    finally:
        await source.aclose()
    w, h = storyline_video.size
    frame = frames[30]
    assert frame.image.shape == (h, w, 3) and frame.image.dtype == np.uint8
    truth = storyline_video.storyline.render(frame.pts_s, w, h, 30).astype(np.int16)
    error = np.abs(frame.image.astype(np.int16) - truth).mean()
    swapped = np.abs(frame.image[..., ::-1].astype(np.int16) - truth).mean()
    assert error < 8.0, f"decoded frame differs from the render by {error:.1f} on average"
    assert swapped > error + 4.0  # channel order is RGB, not OpenCV's BGR


async def test_frame_transform_runs_in_the_reader_thread(storyline_video):
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    def shrink(image: np.ndarray) -> np.ndarray:
        threads.add(threading.get_ident())
        return cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA)

    source = open_source("story", str(storyline_video.path), frame_transform=shrink)
    try:
        frames = [await source.recv() for _ in range(5)]
    finally:
        await source.aclose()
    assert all(f.image.shape == (64, 64, 3) for f in frames)
    assert threads and loop_thread not in threads


async def test_closing_a_file_source_midway_stops_it(storyline_video):
    statuses = StatusLog()
    source = open_source("story", str(storyline_video.path), on_status=statuses)
    await source.recv()
    await source.aclose()
    assert statuses.states[-1] is StreamState.ENDED
    with pytest.raises(SourceEnded):
        await source.recv()


async def test_missing_file_reports_error_status_and_log_line(tmp_path, caplog):
    missing = tmp_path / "nope.mp4"
    statuses = StatusLog()
    source = open_source("gone", str(missing), on_status=statuses)
    with caplog.at_level(logging.WARNING), pytest.raises(SourceError, match="no such file"):
        await source.recv()
    _, status = await statuses.wait_for(StreamState.ERROR, timeout_s=5)
    assert status.code == "source_error"
    assert str(missing) in status.detail and "no such file" in status.detail
    assert statuses.states == [StreamState.STARTING, StreamState.ERROR]
    assert any(r.levelno >= logging.ERROR and "gone" in r.getMessage() for r in caplog.records)
    await source.aclose()


async def test_corrupt_file_reports_error_status(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 200_000, np.uint8).tobytes())
    statuses = StatusLog()
    source = open_source("bad", str(corrupt), on_status=statuses)
    with pytest.raises(SourceError):
        await source.recv()
    _, status = await statuses.wait_for(StreamState.ERROR, timeout_s=5)
    assert str(corrupt) in status.detail
    await source.aclose()


async def test_webcam_without_device_reports_clear_error_status():
    statuses = StatusLog()
    source = open_source("cam", "webcam:7", on_status=statuses)
    with pytest.raises(SourceError, match="webcam 7"):
        await source.recv()
    _, status = await statuses.wait_for(StreamState.ERROR, timeout_s=10)
    assert "cannot open webcam 7" in status.detail
    await source.aclose()


async def read_all(source):
    frames = []
    with pytest.raises(SourceEnded):
        while True:
            frames.append(await source.recv())
    await source.aclose()
    return frames


@pytest.fixture(scope="module")
def lying_files(tmp_path_factory, require_system):
    """Files whose container timestamps jump forward (1e9 s, one day) or rewind (8 s, then 4 s)."""
    d = tmp_path_factory.mktemp("lying")
    try:
        return {
            "fmp4_jump_1e9_s": timestamps.fmp4_with_jump(d / "jump.mp4"),
            "mpegts_jump_1_day": timestamps.mpegts_segments(d / "jump.ts", [(3, 0), (3, 86400)]),
            "mpegts_rewind_8_to_4_s": timestamps.mpegts_segments(d / "rewind.ts", [(8, 0), (4, 4)]),
        }
    except timestamps.MediaError as exc:
        require_system(str(exc))


@pytest.mark.parametrize(("name", "frames", "reason"), [
    ("fmp4_jump_1e9_s", 60, "pts_jump"), ("mpegts_jump_1_day", 60, "pts_jump"),
    ("mpegts_rewind_8_to_4_s", 120, "pts_rewind")])
async def test_a_timestamp_jump_or_rewind_keeps_every_frame_on_the_frame_clock_and_is_counted(
        lying_files, name, frames, reason):
    drops: list[str] = []
    got = await read_all(open_source("lies", str(lying_files[name]), on_drop=drops.append))
    assert len(got) == frames  # nothing dropped silently (defect 13)
    pts = np.array([f.pts_s for f in got])
    # media time advances one frame interval per frame across the discontinuity (defect 2: not
    # a billion seconds; defect 13: not squeezed into a millisecond or dropped)
    np.testing.assert_allclose(np.diff(pts), 1 / timestamps.FPS, atol=1e-3)
    assert drops == [reason]


def _write_truncated_mp4(path, *, faststart: bool) -> None:
    """An mp4 cut short: with its index (moov) at the end, cut in half (no index); with the index
    first, cut just after the index (frames' data missing)."""
    full = path.with_suffix(".full.mp4")
    flags = ["-movflags", "+faststart"] if faststart else []
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=3",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", *flags, str(full)], check=True, timeout=60)
    data = full.read_bytes()
    moov, mdat = data.index(b"moov"), data.index(b"mdat")
    assert (moov < mdat) == faststart
    path.write_bytes(data[:mdat + 64] if faststart else data[:len(data) // 2])


@pytest.mark.parametrize(("kind", "expected"), [
    ("zero_bytes", "empty file"),
    ("text", "not a media file (no container format recognised)"),
    ("audio_only", "no video stream (audio only)"),
    ("truncated_mp4_index_at_end", "truncated/corrupt MP4/QuickTime file"),
    ("truncated_mp4_index_first", "truncated/corrupt: no frame could be decoded"),
])
async def test_each_unreadable_file_gets_its_own_clear_error(tmp_path, kind, expected):
    path = tmp_path / f"{kind}.mp4"
    if kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("these are notes, not a video\n" * 20)
    elif kind == "audio_only":
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=1", str(path)],
                       check=True, timeout=60)
    elif kind == "truncated_mp4_index_at_end":
        _write_truncated_mp4(path, faststart=False)
    else:
        _write_truncated_mp4(path, faststart=True)
    statuses = StatusLog()
    source = open_source("bad", str(path), on_status=statuses)
    with pytest.raises(SourceError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        await source.recv()
    _, status = await statuses.wait_for(StreamState.ERROR, timeout_s=10)
    assert expected in status.detail and str(path) in status.detail
    assert "OpenCV" not in status.detail
    await source.aclose()
    assert expected in probe_video(str(path))  # the same words before any source is opened


async def test_probe_video_passes_a_readable_file(storyline_video):
    assert probe_video(str(storyline_video.path)) is None
