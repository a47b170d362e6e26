"""Real servers the cluster and export tests start on loopback: redis-server (Debian's)."""

from __future__ import annotations

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
    """Read ``proc``'s (text) stdout until a line holds ``marker``; RuntimeError when it exits or
    ``timeout_s`` passes first. The rest of its output is drained by a thread (never blocks it)."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise RuntimeError(f"{what} not ready within {timeout_s:g} s: {''.join(seen[-5:])}")
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{what} exited ({proc.wait()}): {''.join(seen[-5:])}")
            seen.append(line)
            if marker in line:
                break
    finally:
        sel.close()
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()


class RedisServer:
    """``redis-server`` on a free loopback port with AOF (appendfsync everysec) in ``folder``."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            unavailable("redis-server is not installed (Debian package redis-server; tools/system-deps.sh)")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--appendonly", "yes", "--dir", str(self.folder),
             "--save", "", "--protected-mode", "yes"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for_line(self.proc, "Ready to accept connections", timeout_s, f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
