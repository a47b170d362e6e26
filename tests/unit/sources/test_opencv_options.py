"""OpenCV's FFmpeg capture options: set when a capture is about to be opened, never at import,
and never over a value the user set."""

import os
import subprocess
import sys

import pytest

from streamcap.core.errors import SourceError
from streamcap.sources import opencv
from streamcap.sources.url import parse_source_url

ENV = opencv.FFMPEG_CAPTURE_OPTIONS_ENV


def test_importing_the_module_leaves_the_environment_alone():
    code = f"import os, streamcap.sources.opencv; print({ENV!r} in os.environ)"
    env = {k: v for k, v in os.environ.items() if k != ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_capture_options_are_set_when_missing(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    opencv.ensure_capture_options()
    assert os.environ[ENV] == opencv.FFMPEG_CAPTURE_OPTIONS


def test_a_users_capture_options_win(monkeypatch):
    monkeypatch.setenv(ENV, "rtsp_transport;udp")
    opencv.ensure_capture_options()
    assert os.environ[ENV] == "rtsp_transport;udp"


async def test_opening_a_capture_sets_the_options_first(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV, raising=False)
    source = opencv.OpenCVSource("cam1", parse_source_url(str(tmp_path / "missing.mp4")))
    try:
        with pytest.raises(SourceError, match="no such file"):
            await source.recv()
    finally:
        await source.aclose()
    assert os.environ[ENV] == opencv.FFMPEG_CAPTURE_OPTIONS
