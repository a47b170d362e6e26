"""The loopback RTSP server for tests: it lives in ``tools/rtsp.py`` (the stability tool uses it
too, and tools never import from tests)."""

from tools.rtsp import PROBE, SERVER_SCRIPT, SYSTEM_PYTHON, RtspServer, RtspServerError, rtsp_server_available

__all__ = ["PROBE", "SERVER_SCRIPT", "SYSTEM_PYTHON", "RtspServer", "RtspServerError", "rtsp_server_available"]
