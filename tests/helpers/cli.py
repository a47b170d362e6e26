"""``streamcap run`` as a subprocess: start it and read the overlay URL it prints."""

from __future__ import annotations

import asyncio
import re
import signal
import sys


async def start_run(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamcap.cli", "run", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def base_url(proc: asyncio.subprocess.Process, stream: str = "demo", timeout: float = 60) -> str:
    """The server's http://host:port from the overlay line ``streamcap run`` prints for ``stream``."""
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout)).decode()
        assert line, "streamcap run exited before printing its URLs"
        m = re.search(rf"overlay for {re.escape(stream)}: (http://\S+)", line)
        if m:
            return m.group(1).split("/overlay")[0]


async def stop_run(proc: asyncio.subprocess.Process, timeout: float = 20) -> int:
    """Stop ``streamcap run`` as Ctrl-C does (SIGINT); kill it if it has not ended within
    ``timeout``. Returns its exit status."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    return proc.returncode
