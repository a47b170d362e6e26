"""File and webcam sources through OpenCV, on real media."""

import logging
import threading

import cv2
import numpy as np
import pytest

from streamcap.core.errors import SourceEnded, SourceError
from streamcap.sources import open_source
from streamcap.core.types import StreamState
from tests.helpers import StatusLog

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
