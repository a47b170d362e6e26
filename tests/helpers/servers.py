"""Real servers the cluster and export tests start on loopback: redis-server (Debian's)."""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from tests.conftest import unavailable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_line(proc: subprocess.Popen, marker: str, timeout_s: float, what: str) -> None:
    """Read ``proc``'s stdout (a binary pipe) until it holds ``marker``; RuntimeError when it exits
    or ``timeout_s`` passes first. The rest of its output is drained by a thread (never blocks it)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    seen = b""
    try:
        while marker.encode() not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise RuntimeError(f"{what} not ready within {timeout_s:g} s: {seen[-500:]!r}")
            chunk = os.read(fd, 65536)  # unbuffered: select and the data agree
            if not chunk:
                raise RuntimeError(f"{what} exited ({proc.wait()}): {seen[-500:]!r}")
            seen += chunk
    finally:
        sel.close()
    threading.Thread(target=lambda: [None for _ in iter(lambda: os.read(fd, 65536), b"")], daemon=True).start()


class RedisServer:
    """``redis-server`` on a free loopback port with AOF (appendfsync everysec) in ``folder``."""

    def __init__(self, folder: Path, port: int | None = None, password: str | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.password = password
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            unavailable("redis-server is not installed (Debian package redis-server; tools/system-deps.sh)")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--appendonly", "yes", "--dir", str(self.folder),
             "--save", "", "--protected-mode", "yes", *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_for_line(self.proc, "Ready to accept connections", timeout_s, f"redis-server on port {self.port}")
        except BaseException:
            self.stop()  # never leave a server behind a failed start
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
