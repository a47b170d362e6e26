"""Drive the loopback RTSP server (``rtsp_server.py``) from tests and from tools/stability.py.

``RtspServer`` runs the server script under the system interpreter (GStreamer's Python bindings
are not in the venv) and gives the tests the failures they need to provoke: ``kill()``
(SIGKILL: the server vanishes, connections are reset), ``restart()`` (same port),
``pause()``/``resume()`` (SIGSTOP/SIGCONT: connections stay open but nothing is sent).
Blocking, synchronous: call it from tests, not from the event loop's hot path.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import tempfile
import time
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
PROBE = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
         "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
         "assert Gst.ElementFactory.find('x264enc') and Gst.ElementFactory.find('rtph264pay')")


class RtspServerError(RuntimeError):
    """The test RTSP server could not be started."""


def rtsp_server_available() -> str | None:
    """None when the server can run here, else the reason it cannot (for a skip message)."""
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} not found"
    proc = subprocess.run([SYSTEM_PYTHON, "-c", PROBE], capture_output=True, text=True,
                          timeout=60, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [""]
        return ("GStreamer RTSP server not usable from the system python (install python3-gi "
                "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-ugly "
                f"gstreamer1.0-libav): {tail[0]}")
    return None


class RtspServer:
    """Serve ``files`` ({name: path}) on ``rtsp://127.0.0.1:PORT/name``.

    ``port=None`` lets the server pick a free port on its first start; restarts reuse it.
    """

    def __init__(self, files: dict[str, Path | str], port: int | None = None,
                 *, start_timeout_s: float = 20.0) -> None:
        if not files:
            raise ValueError("serve at least one file")
        self.files = {name: Path(path) for name, path in files.items()}
        self.port = port
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # the server's stderr, shown when it fails

    def __enter__(self) -> RtspServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def url(self, name: str) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        if name not in self.files:
            raise KeyError(name)
        return f"rtsp://127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        """Start the server and wait until it listens (``READY <port>``)."""
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError("server already running")
        cmd = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(self.port or 0)]
        for name, path in self.files.items():
            cmd += ["--serve", f"{name}={path}"]
        self._log.seek(0)
        self._log.truncate()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log,
                                stdin=subprocess.DEVNULL)
        self._proc = proc
        assert proc.stdout is not None
        line = b""
        deadline = time.monotonic() + self.start_timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    self._abort(f"not READY within {self.start_timeout_s:.0f} s")
                chunk = os.read(proc.stdout.fileno(), 256)
                if not chunk:
                    self._abort(f"exited with {proc.wait()}")
                line += chunk
        words = line.split()
        if len(words) != 2 or words[0] != b"READY":
            self._abort(f"unexpected output {line!r}")
        self.port = int(words[1])

    def _abort(self, why: str) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._log.seek(0)
        stderr = self._log.read().decode("utf-8", "replace").strip()
        raise RtspServerError(f"RTSP test server {why}; stderr:\n{stderr[-2000:]}")

    def kill(self) -> None:
        """SIGKILL the server (no goodbye to clients) and reap it."""
        proc = self._running()
        proc.kill()
        proc.wait()

    def restart(self) -> None:
        """Start again on the same port (killing the server first if it still runs)."""
        if self._proc is not None and self._proc.poll() is None:
            self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing is sent."""
        self._running().send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._running().send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop for good (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()

    def close(self) -> None:
        self.stop()
        self._log.close()

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("server is not running")
        return self._proc
