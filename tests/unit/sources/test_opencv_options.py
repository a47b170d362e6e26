"""Which decoder reads which source, and what importing or first use changes in the process:
OpenCV only for webcams (no FFmpeg capture options any more), PyAV for files, RTSP and HTTP,
its interrupt check installed on first use, never at import."""

import subprocess
import sys
import threading
import time

import pytest

from streamcap.sources import open_source
from streamcap.sources.opencv import OpenCVSource
from streamcap.sources.pyav import PyAVSource, install_interrupt_check
from streamcap.sources.reader import ReaderThread
from streamcap.sources.url import parse_source_url


def test_importing_the_sources_changes_neither_pyav_nor_the_environment():
    code = ("import os, time, av.container.core as core, streamcap.sources.pyav, "
            "streamcap.sources.opencv; "
            "print(core.time is time, 'OPENCV_FFMPEG_CAPTURE_OPTIONS' in os.environ)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


@pytest.mark.parametrize(("url", "cls"), [
    ("/tmp/clip.mp4", PyAVSource), ("file:///tmp/clip.mp4", PyAVSource),
    ("rtsp://cam.local/stream", PyAVSource), ("rtsps://cam.local/stream", PyAVSource),
    ("http://cam.local/video.mjpg", PyAVSource), ("webcam:0", OpenCVSource),
])
def test_open_source_routes_webcams_to_opencv_and_everything_else_to_pyav(url, cls):
    assert type(open_source("s", url)) is cls


def test_each_reader_refuses_the_kinds_it_does_not_read():
    with pytest.raises(ValueError, match="does not read file"):
        OpenCVSource("s", parse_source_url("/tmp/clip.mp4"))
    with pytest.raises(ValueError, match="does not read webcam"):
        PyAVSource("s", parse_source_url("webcam:0"))


def test_interrupt_check_gives_real_time_except_to_an_abandoned_reader():
    import av.container.core as core

    assert install_interrupt_check() and install_interrupt_check()  # idempotent
    seen: dict[str, float] = {}

    def read_clock(key: str) -> None:
        seen[key] = core.time.monotonic()

    before = time.monotonic()
    read_clock("loop")
    live = ReaderThread(target=read_clock, args=("live",))
    abandoned = ReaderThread(target=read_clock, args=("abandoned",))
    abandoned.abort_io = True
    plain = threading.Thread(target=read_clock, args=("plain",))
    for t in (live, abandoned, plain):
        t.start()
        t.join(5)
    after = time.monotonic()
    assert before <= seen["loop"] <= after
    assert before <= seen["live"] <= after and before <= seen["plain"] <= after
    assert seen["abandoned"] > after + 1e6  # every FFmpeg timeout has passed for it
    assert core.time.sleep is time.sleep  # the rest of the module is the real one
