"""Websocket viewers for the fan-out benchmarks (tools/bench_gateway.py, tools/bench_fanout.py):
the parts both use, so each benchmark keeps only its own protocol (how a viewer subscribes, what
it records, what it sends back).

A benchmark starts processes of viewers with ``multiprocessing`` and ``viewer_process`` as their
target. Each process connects its viewers one after another (``connect_in_turn``: a viewer is
ready before the next connects, a steady and bounded connect rate), says ``ready`` to the parent,
measures between the parent's two commands with its own garbage collector frozen
(``quiet_collector``: the viewers are the instrument, their collector's pauses are not the
server's latency), samples its own event loop's lag (``LoopLag``), then waits for every viewer to
have what it expects (``drain``) and sends back its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import multiprocessing
import resource
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path


def raise_fd_limit() -> None:
    """As many open files as the hard limit allows (thousands of sockets per process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def viewer_process(conn: Connection, body: Callable[..., Awaitable[dict]], *args) -> None:
    """A process of viewers (a ``multiprocessing`` target): runs ``body(conn, *args)`` and sends its
    result to the parent as ``("result", dict)``, or why it failed as ``("error", text)``."""
    raise_fd_limit()
    try:
        result = asyncio.run(body(conn, *args))
    except EOFError:  # the parent closed the pipe: it stopped (an error, Ctrl-C) and needs nothing more
        return
    except BaseException as exc:  # boundary: the parent must hear why this process failed
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    conn.send(("result", result))
    conn.close()


@dataclass
class Viewer:
    """One websocket viewer's state the shared parts need; a benchmark adds what it records."""

    closed: str = ""  # why the connection ended before the viewer was done ("" while open)
    done: asyncio.Event = field(default_factory=asyncio.Event)


async def watch(viewer: Viewer, session, url: str, ready: asyncio.Event, failures: list[str],
                on_message: Callable[..., Awaitable[None] | None], stopping: Callable[[], bool]) -> None:
    """Connect ``viewer`` to ``url`` and hand every text message to ``on_message(ws, message,
    receive wall time)`` (parsed; it may be a coroutine function) until the server closes or the task is cancelled. ``ready`` is set
    when the viewer cannot connect or its connection ends (``on_message`` sets it on success);
    ``viewer.done`` is set at the end either way."""
    import aiohttp

    try:
        ws = await session.ws_connect(url, heartbeat=None, autoping=True, compress=0, max_msg_size=0)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        failures.append(f"{type(exc).__name__}: {exc}")
        viewer.closed = f"connect: {type(exc).__name__}"
        ready.set()
        viewer.done.set()
        return
    loads = json.loads
    try:
        async for msg in ws:
            now = time.time()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            pending = on_message(ws, loads(msg.data), now)
            if pending is not None:
                await pending
        if not stopping():
            viewer.closed = f"closed by the server: {ws.close_code}"
    finally:
        ready.set()
        viewer.done.set()
        await ws.close()


async def connect_in_turn(viewers: Sequence[Viewer],
                          start: Callable[[Viewer, asyncio.Event], Awaitable[None]]) -> list[asyncio.Task]:
    """Start ``start(viewer, ready)`` for each viewer, the next only once the last one is ready."""
    tasks = []
    for v in viewers:
        ready = asyncio.Event()
        tasks.append(asyncio.create_task(start(v, ready)))
        await ready.wait()
    return tasks


class LoopLag:
    """Samples this process's event-loop lag: a task sleeps ``period`` again and again; the
    overshoot of each sleep, while ``measuring``, is a sample (ms)."""

    def __init__(self, period_s: float = 0.02) -> None:
        self.period_s = period_s
        self.samples: list[float] = []
        self.measuring = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(self.period_s)  # measures the loop's lag: the overshoot is the figure
            if self.measuring:
                self.samples.append((loop.time() - t - self.period_s) * 1000)

    def summary(self) -> dict:
        lags = sorted(self.samples)
        return {"p99": round(percentile(lags, 99), 1), "max": round(lags[-1], 1)} if lags else {}


@contextlib.contextmanager
def quiet_collector() -> Iterator[None]:
    """This process's garbage collector frozen and off for the block (the viewers are the
    instrument: their own collector's pauses are not the server's latency)."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def recv_command(conn: Connection, expect: str) -> tuple:
    """The parent's next command, which must be ``expect``."""
    cmd = await asyncio.to_thread(conn.recv)
    if cmd[0] != expect:
        raise RuntimeError(f"viewer process: expected {expect!r} from the parent, got {cmd[0]!r}")
    return cmd


async def drain(viewers: Sequence[Viewer], drain_s: float) -> float:
    """Wait up to ``drain_s`` for every viewer to be done; the seconds it took."""
    t = time.monotonic()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(drain_s):
            await asyncio.gather(*(v.done.wait() for v in viewers))
    return time.monotonic() - t


async def stop(tasks: Sequence[asyncio.Task]) -> None:
    """Cancel the viewers' (and the lag sampler's) tasks and wait for them to end."""
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# --- the parent's side ----------------------------------------------------------------------------


class BenchError(RuntimeError):
    """A prerequisite is missing or a process did not start or answer; the message says which."""


@dataclass
class ServerProc:
    """A streamcap process the viewers watch (``streamcap run`` or ``streamcap gateway``), started
    through the benchmarks' GC bootstrap, which writes its collector's pauses to ``gc_log``."""

    proc: asyncio.subprocess.Process
    http_url: str  # http://127.0.0.1:PORT
    log_path: Path
    gc_log: Path | None

    def gc_pauses(self) -> list | None:
        """The server's collector pauses (generation, ms, wall time); None when not recorded
        (profiled, or killed before it exited)."""
        if self.gc_log is None or not self.gc_log.exists():
            return None
        return json.loads(self.gc_log.read_text())

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def ws_url(self) -> str:
        return self.http_url.replace("http://", "ws://", 1) + "/ws"


async def from_viewers(conn: Connection, timeout_s: float, proc: BaseProcess) -> tuple:
    """The next message of a viewer process; BenchError when it fails, dies or says nothing in time."""
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(conn.poll, 1.0):  # polls with a deadline: notices a dead process
        if not proc.is_alive():
            raise BenchError(f"a viewer process exited ({proc.exitcode}) without a word")
        if time.monotonic() > deadline:
            raise BenchError(f"a viewer process said nothing for {timeout_s:g} s")
    msg = await asyncio.to_thread(conn.recv)
    if msg[0] == "error":
        raise BenchError(f"a viewer process failed: {msg[1]}")
    return msg


def end_viewers(conns: Sequence[Connection], procs: Sequence[BaseProcess]) -> None:
    """Close the pipes (a viewer process still waiting for a command gets EOF and ends), then join
    each process, killing one that does not end."""
    for c in conns:
        c.close()
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join(5)


def start_viewers(target: Callable[..., None], ws_url: str, subscriptions: list, n_procs: int,
                  procs: list[BaseProcess], conns: list[Connection]) -> None:
    """Start ``n_procs`` viewer processes (spawned) running ``target(pipe, ws_url, their share of
    subscriptions)``; each process and the parent's end of its pipe are appended to ``procs`` and
    ``conns`` as it starts, so that the caller's cleanup (``end_viewers``) reaches every one."""
    ctx = multiprocessing.get_context("spawn")
    for p in range(n_procs):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=target, args=(child, ws_url, subscriptions[p::n_procs]), daemon=True)
        proc.start()
        child.close()
        procs.append(proc)
        conns.append(parent)


async def viewers_ready(conns: Sequence[Connection], procs: Sequence[BaseProcess], timeout_s: float,
                        progress: Callable[[str], None]) -> int:
    """Wait for every viewer process's ``ready``; how many viewers are connected in all (connect
    failures are reported through ``progress``)."""
    connected = 0
    for c, proc in zip(conns, procs):
        msg = await from_viewers(c, timeout_s, proc)
        connected += msg[1]
        if msg[2]:
            progress(f"connect failures: {msg[2]}")
    return connected
