"""The loopback RTSP server for tests: it lives in ``tools/rtsp.py`` (the stability tool uses it
too, and tools never import from tests). :func:`rtsp_audio_available` says whether the server can
also send sound (``tools/rtsp_server.py`` serves a file's audio as AAC by default)."""

import subprocess

from tools.rtsp import PROBE, SERVER_SCRIPT, SYSTEM_PYTHON, RtspServer, RtspServerError, rtsp_server_available

AUDIO_PROBE = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstPbutils', '1.0'); "
               "from gi.repository import Gst, GstPbutils; Gst.init(None); "
               "missing = [e for e in ('avenc_aac', 'rtpmp4gpay', 'opusenc', 'rtpopuspay') "
               "if not Gst.ElementFactory.find(e)]; "
               "assert not missing, 'missing GStreamer elements: ' + ', '.join(missing)")


def rtsp_audio_available() -> str | None:
    """None when the test RTSP server can serve sound (AAC and Opus), else why not."""
    reason = rtsp_server_available()
    if reason is not None:
        return reason
    proc = subprocess.run([SYSTEM_PYTHON, "-c", AUDIO_PROBE], capture_output=True, text=True, timeout=60,
                          check=False)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [""]
        return ("GStreamer cannot send sound over RTSP here (install gstreamer1.0-libav "
                f"gstreamer1.0-plugins-base gstreamer1.0-plugins-good): {tail[0]}")
    return None


__all__ = ["AUDIO_PROBE", "PROBE", "SERVER_SCRIPT", "SYSTEM_PYTHON", "RtspServer", "RtspServerError",
           "rtsp_audio_available", "rtsp_server_available"]
