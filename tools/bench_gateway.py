"""One cluster gateway fanning captions out from Redis to many websocket viewers: delivery latency,
loss and what it costs.

``python -m tools.bench_gateway [--clients 100,1000] [--streams 50] [--rate 2] [--seconds 20]
[--subscribe one|all] [--client-procs 2] [--repeat 1] [--quick] [--json OUT] [--profile DIR]`` prints
a Markdown table (docs/benchmarks.md; with ``--repeat N`` the median of N interleaved runs of each
viewer count) and, with ``--json``, writes every figure of every run.

For each client count it starts, all on loopback:

- its own ``redis-server`` (a free port, a temporary folder, no persistence; started once and
  flushed between client counts),
- one real ``streamcap gateway --bus redis://… --port 0`` process (a fresh one per client count),
- C websocket viewers (``/ws?streams=ID``: stream ``i mod S`` for viewer ``i``, or all streams with
  ``--subscribe all``) in ``--client-procs`` processes of their own (asyncio + aiohttp), all
  connected and greeted (``hello``) before anything is published,
- a producer writing S streams onto the bus exactly as a stream worker does: through
  :class:`streamcap.runtime.bus.BusWriter` itself (finals on ``sc:{ID}:finals`` with entry ID
  ``SEQ-0``, partials on ``sc:{ID}:live``), every other caption a final, ``--rate`` captions per
  stream per second paced from one start time, streams staggered evenly over the period.

Captions carry no server timestamp, so the producer puts its wall clock (unix s) in the caption's
text just before handing the caption to the writer; a viewer's delivery latency is its receive wall
time minus that (one machine, one clock). It includes the writer's queue and batch, Redis, the
gateway's XREAD loop, hub fan-out, the websocket send and the viewer process's own event loop.
A ``bus hop`` probe (an XREAD in the producer's process on one stream) measures the Redis part alone.

Lost: per viewer, the finals of its streams it never received (by seq), after every viewer has had
up to ``--drain`` seconds to receive the last one. Dropped: the gateway's own
``streamcap_clients_dropped_total`` and ``streamcap_messages_dropped_total`` (slow clients).
Cost over the publishing period: CPU of the gateway, redis-server, producer and viewer processes (%
of one core), the whole machine's busy share, the gateway's resident memory at the end and at its
peak, and each viewer process's event-loop lag (a 20 ms ticker's overshoot: when it is large the
viewers, not the gateway, add the latency). Where the time goes: per caption, the latency of its
first viewer (bus, the gateway's read loop, one send) and the spread to its last (the fan-out);
the latency per second of publishing; the gateway's garbage-collector pauses (it runs the real CLI
through a small bootstrap that notes them). The viewers' own collector is frozen and off while
they measure: their pauses are not the gateway's. ``--freeze-gateway-gc`` (an experiment) makes the
gateway call ``gc.freeze()`` once its viewers are connected; ``--heartbeat-s`` sets its websocket
ping interval; ``--no-timeout-ceil`` (an experiment) stops its aiohttp server rounding the heartbeat's
deadlines up to the whole second. ``--profile DIR`` runs the gateway
under cProfile instead and prints its top functions. The load average is recorded at the start
and end of every client count.

``--quick`` (20 viewers, 3 streams, 3 s) is what the integration test runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from tools.viewers import (
    BenchError,
    LoopLag,
    ServerProc,
    Viewer,
    connect_in_turn,
    drain,
    end_viewers,
    from_viewers,
    quiet_collector,
    recv_command,
    start_viewers,
    stop,
    viewer_process,
    viewers_ready,
    watch,
)
from tools.viewers import percentile as _percentile
from tools.viewers import raise_fd_limit as _raise_fd_limit

TARGET_P99_MS = 100.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# The gateway runs as ``python -c GC_BOOT gateway …``: the real CLI (runpy), with the pauses of its
# garbage collector noted (generation, ms, wall time) and written to $BENCH_GC_LOG when it exits.
GC_BOOT = """
import atexit, gc, json, os, runpy, signal, sys, time
pauses, began = [], [0.0]
def note(phase, info):
    if phase == "start":
        began[0] = time.perf_counter()
    else:
        pauses.append((info["generation"], (time.perf_counter() - began[0]) * 1000, time.time()))
gc.callbacks.append(note)
signal.signal(signal.SIGUSR1, lambda *_: gc.freeze())  # --freeze-gateway-gc: an experiment, not streamcap's
def dump():
    with open(os.environ["BENCH_GC_LOG"], "w") as f:
        json.dump(pauses, f)
atexit.register(dump)
sys.argv = ["streamcap"] + sys.argv[1:]
runpy.run_module("streamcap.cli", run_name="__main__")
"""


# --no-timeout-ceil (an experiment): prepended to GC_BOOT, the gateway's aiohttp server stops rounding
# timeouts of 5 s and more (the websocket heartbeat) up to the whole second.
NO_CEIL_BOOT = """
import aiohttp.web as _web
_runner_init = _web.AppRunner.__init__
def _init(self, app, **kw):
    kw.setdefault("timeout_ceil_threshold", 1e9)
    _runner_init(self, app, **kw)
_web.AppRunner.__init__ = _init
"""


def gc_summary(pauses: list, t0: float, t1: float) -> dict:
    """Garbage-collector pauses between wall times t0 and t1: how many, their total and the longest (ms),
    and how many were full (generation 2) collections."""
    inside = [(gen, ms) for gen, ms, at in pauses if t0 <= at <= t1]
    return {"count": len(inside), "full": sum(1 for gen, _ in inside if gen == 2),
            "total_ms": round(sum(ms for _, ms in inside), 1), "max_ms": round(max((ms for _, ms in inside), default=0.0), 1)}


def _progress(msg: str) -> None:
    print(f"[bench_gateway {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _latency_summary(values_ms: list[float]) -> dict:
    s = sorted(values_ms)
    if not s:
        return {"n": 0}
    return {"n": len(s), "p50": round(_percentile(s, 50), 2), "p95": round(_percentile(s, 95), 2),
            "p99": round(_percentile(s, 99), 2), "max": round(s[-1], 2)}


# --- /proc --------------------------------------------------------------------------------------


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (its own threads, not its children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _proc_mem_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) / 1024
    return round(out.get("VmRSS", 0.0), 1), round(out.get("VmHWM", 0.0), 1)


def _machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all cores from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return total - idle, total


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- redis-server and the gateway ---------------------------------------------------------------


class RedisProc:
    """``redis-server`` on a free loopback port, data in a temporary folder, nothing persisted."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20.0) -> RedisProc:
        exe = shutil.which("redis-server")
        if exe is None:
            raise BenchError("redis-server is not installed: the benchmark needs Debian's redis-server package "
                             "(apt-get install redis-server; tools/system-deps.sh)")
        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / "redis.log", "w")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), "--save", "",
             "--appendonly", "no", "--protected-mode", "yes", "--maxclients", "10000"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"redis-server exited ({self.proc.returncode}): "
                                 f"{(self.folder / 'redis.log').read_text()[-1000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"redis-server not ready on port {self.port} within {timeout_s:g} s")
            time.sleep(0.05)  # polling a starting process, not a synchronisation

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


GatewayProc = ServerProc  # a gateway process: the same handle as a `streamcap run` one


async def start_gateway(bus_url: str, folder: Path, *, profile: Path | None = None, heartbeat_s: float | None = None,
                        no_ceil: bool = False, timeout_s: float = 60.0) -> GatewayProc:
    config = folder / "gateway.toml"
    config.write_text("[server]\nhost = \"127.0.0.1\"\nport = 0\n"
                      + (f"heartbeat_s = {heartbeat_s!r}\n" if heartbeat_s is not None else ""))
    log_path = folder / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMCAP_")}
    gc_log = None
    if profile is not None:
        cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "streamcap.cli"]
    else:
        gc_log = folder / "gateway-gc.json"
        gc_log.unlink(missing_ok=True)
        env["BENCH_GC_LOG"] = str(gc_log)
        cmd = [sys.executable, "-c", (NO_CEIL_BOOT if no_ceil else "") + GC_BOOT]
    cmd += ["gateway", "--bus", bus_url, "--port", "0", "--config", str(config)]
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=log, env=env,
                                                    cwd=str(Path(__file__).resolve().parents[1]))
    assert proc.stdout is not None
    async with asyncio.timeout(timeout_s):
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                await proc.wait()
                raise BenchError(f"streamcap gateway exited ({proc.returncode}) before serving: "
                                 f"{log_path.read_text()[-1500:]}")
            m = re.search(r"serving on (http://\S+?)/?$", line.strip())
            if m:
                return GatewayProc(proc, m.group(1).rstrip("/"), log_path, gc_log)


async def stop_gateway(gw: GatewayProc) -> None:
    if gw.proc.returncode is None:
        gw.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(gw.proc.wait(), 60)
        except TimeoutError:
            tail = gw.log_path.read_text(errors="replace").splitlines()[-8:]
            _progress(f"gateway pid {gw.pid} still running 60 s after SIGTERM: killed; its log ends:\n  "
                      + "\n  ".join(tail))
            gw.proc.kill()
            await gw.proc.wait()


async def gateway_metrics(http_url: str) -> dict:
    """The drop counters and client gauge from the gateway's /metrics (summed over labels)."""
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(http_url + "/metrics") as resp:
        text = await resp.text()
    out = {"clients_dropped": 0.0, "messages_dropped": 0.0, "clients": None}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        value = float(line.rsplit(" ", 1)[1])
        if name == "streamcap_clients_dropped_total":
            out["clients_dropped"] += value
        elif name == "streamcap_messages_dropped_total":
            out["messages_dropped"] += value
        elif name == "streamcap_clients":
            out["clients"] = value
    return {k: (int(v) if v is not None else None) for k, v in out.items()}


# --- the viewer processes -----------------------------------------------------------------------


def _client_proc(conn: Connection, ws_url: str, subscriptions: list[str | None]) -> None:
    """A process of viewers (run by multiprocessing): connect all, say ready, collect until told to
    stop, then send back latencies and each viewer's final seqs."""
    viewer_process(conn, _clients, ws_url, subscriptions)


@dataclass
class _Viewer(Viewer):
    stream: str | None = None
    # (stream, seq, producer send wall time, receive wall time) of every caption while measuring
    received: list[tuple[str, int, float, float]] = field(default_factory=list)
    finals: dict[str, list[int]] = field(default_factory=dict)
    expected: dict[str, set[int]] | None = None

    def check_done(self) -> None:
        if self.expected is not None and all(set(self.finals.get(s, ())) >= seqs
                                             for s, seqs in self.expected.items()):
            self.done.set()


async def _clients(conn: Connection, ws_url: str, subscriptions: list[str | None]) -> dict:
    import aiohttp

    viewers = [_Viewer(stream=s) for s in subscriptions]
    connected = 0
    failures: list[str] = []
    measuring = stopping = False

    pauses: list[tuple[int, float, float]] = []
    began = [0.0]

    def note_gc(phase: str, info: dict) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], (time.perf_counter() - began[0]) * 1000, time.time()))

    gc.callbacks.append(note_gc)
    lag = LoopLag()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def begin(v: _Viewer, ready: asyncio.Event) -> None:
            def on_message(ws, m: dict, now: float) -> None:
                nonlocal connected
                kind = m.get("type")
                if kind == "caption":
                    if measuring:
                        v.received.append((m["stream"], m["seq"], float(m["text"].split(" ", 2)[1]), now))
                    if m["state"] == "final":
                        v.finals.setdefault(m["stream"], []).append(m["seq"])
                        if v.expected is not None:
                            v.check_done()
                elif kind == "hello":
                    connected += 1
                    ready.set()

            url = ws_url if v.stream is None else f"{ws_url}?streams={v.stream}"
            await watch(v, session, url, ready, failures, on_message, lambda: stopping)

        tasks = await connect_in_turn(viewers, begin)
        tick = asyncio.create_task(lag.run())
        conn.send(("ready", connected, failures[:5]))
        await recv_command(conn, "measure")
        with quiet_collector():
            measuring = lag.measuring = True
            cpu0, wall0, t0 = time.process_time(), time.monotonic(), time.time()
            cmd = await recv_command(conn, "stop")
            cpu1, wall1, t1 = time.process_time(), time.monotonic(), time.time()
            measuring = lag.measuring = False
        expected: dict[str, set[int]] = {k: set(v) for k, v in cmd[1].items()}
        drain_s: float = cmd[2]
        for v in viewers:
            v.expected = expected if v.stream is None else {v.stream: expected.get(v.stream, set())}
            v.check_done()
        drained_s = await drain(viewers, drain_s)
        stopping = True
        await stop([*tasks, tick])
    return {
        "connected": connected, "failures": failures[:5],
        "received": [x for v in viewers for x in v.received],
        "viewers": [(v.stream, v.finals, bool(v.closed)) for v in viewers],
        "cpu_pct": round(100 * (cpu1 - cpu0) / max(1e-9, wall1 - wall0), 1),
        "loop_lag_ms": lag.summary(),
        "drained_s": round(drained_s, 2), "gc": gc_summary(pauses, t0, t1),
    }


# --- the producer -------------------------------------------------------------------------------


async def produce(bus_url: str, streams: list[str], rate_hz: float, seconds: float, final_every: int,
                  hop_ms: list[float]) -> dict[str, list[int]]:
    """Write ``rate_hz`` captions per stream per second for ``seconds`` through a BusWriter, as
    a stream worker does; returns each stream's final seqs. ``hop_ms``: the bus-hop probe's figures."""
    from streamcap.core.events import CaptionEvent
    from streamcap.core.types import Caption, CaptionState
    from streamcap.runtime import bus
    from streamcap.runtime.metrics import Metrics

    r = bus.connect(bus_url)
    probe = bus.connect(bus_url)
    writer = bus.BusWriter(r, Metrics())
    await bus.register_streams(r, streams)
    writer.start()
    finals: dict[str, list[int]] = {s: [] for s in streams}
    seqs = dict.fromkeys(streams, 0)

    async def hop() -> None:
        keys = {bus.finals_key(streams[0]): "$", bus.live_key(streams[0]): "$"}
        while True:
            replies = await probe.xread(keys, block=1000)
            now = time.time()
            for key, entries in replies or ():
                for entry, fields in entries:
                    keys[key] = entry
                    text = json.loads(fields["m"])["text"]
                    hop_ms.append((now - float(text.split(" ", 2)[1])) * 1000)

    probe_task = asyncio.create_task(hop())
    await asyncio.sleep(0.05)  # let the probe's first XREAD (from "$") reach Redis before anything is written
    loop = asyncio.get_running_loop()
    period = 1.0 / (rate_hz * len(streams))
    total = int(round(seconds * rate_hz)) * len(streams)
    t0 = loop.time()
    try:
        for k in range(total):
            delay = t0 + k * period - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing from one start time, not summed sleeps
            stream = streams[k % len(streams)]
            seq = seqs[stream] = seqs[stream] + 1
            state = CaptionState.FINAL if seq % final_every == 0 else CaptionState.PARTIAL
            media_s = seq / rate_hz
            caption = Caption(stream, seq, state, f"bench {time.time():.6f} a person walks by",
                              max(0.0, media_s - 2.0), media_s, 0.9, seq)
            writer(CaptionEvent(caption, 0.5))
            if state is CaptionState.FINAL:
                finals[stream].append(seq)
        if not await writer.drain(10.0):
            _progress(f"producer: {writer.queued} captions still queued after 10 s")
        await asyncio.sleep(0.2)  # the probe's last XREAD reply
    finally:
        probe_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe_task
        await writer.aclose()
        await r.aclose()
        await probe.aclose()
    return finals


# --- one client count ---------------------------------------------------------------------------


async def run_round(redis: RedisProc, folder: Path, *, clients: int, streams: int, rate_hz: float,
                    seconds: float, subscribe: str, client_procs: int, final_every: int, drain_s: float,
                    profile: Path | None, freeze_gc: bool = False, heartbeat_s: float | None = None,
                    no_ceil: bool = False) -> dict:
    import redis as redis_py

    from streamcap.runtime.bus import STREAMS_KEY

    stream_ids = [f"cam{i:03d}" for i in range(streams)]
    r = redis_py.Redis.from_url(redis.url)
    r.flushall()
    r.sadd(STREAMS_KEY, *stream_ids)  # the streams exist before the viewers come, as their workers would
    r.close()
    load0 = _loadavg()
    gw = await start_gateway(redis.url, folder, profile=profile, heartbeat_s=heartbeat_s, no_ceil=no_ceil)
    rss_idle, _ = _proc_mem_mb(gw.pid)
    _progress(f"{clients} viewers: gateway pid {gw.pid} on {gw.http_url} ({rss_idle} MB idle)")
    procs: list = []
    conns: list[Connection] = []
    try:
        subs = [None if subscribe == "all" else stream_ids[i % streams] for i in range(clients)]
        start_viewers(_client_proc, gw.ws_url, subs, max(1, min(client_procs, clients)), procs, conns)
        t_connect = time.monotonic()
        connected = await viewers_ready(conns, procs, 300, _progress)
        connect_s = time.monotonic() - t_connect
        _progress(f"{connected}/{clients} viewers connected in {connect_s:.1f} s; publishing {streams} streams x "
                  f"{rate_hz:g}/s for {seconds:g} s")
        rss_connected, _ = _proc_mem_mb(gw.pid)
        if freeze_gc and profile is None:
            os.kill(gw.pid, signal.SIGUSR1)  # gc.freeze() in the gateway: its connected state is never scanned again
        for c in conns:
            c.send(("measure",))
        gw_cpu0, redis_cpu0, self_cpu0 = _proc_cpu_s(gw.pid), _proc_cpu_s(redis.proc.pid), time.process_time()
        busy0, total0 = _machine_cpu()
        wall0 = time.monotonic()
        hop_ms: list[float] = []
        publish_t0 = time.time()
        finals = await produce(redis.url, stream_ids, rate_hz, seconds, final_every, hop_ms)
        publish_t1 = time.time()
        wall = time.monotonic() - wall0
        gw_cpu = _proc_cpu_s(gw.pid) - gw_cpu0
        redis_cpu = _proc_cpu_s(redis.proc.pid) - redis_cpu0
        self_cpu = time.process_time() - self_cpu0
        busy1, total1 = _machine_cpu()
        rss, hwm = _proc_mem_mb(gw.pid)
        for c in conns:
            c.send(("stop", finals, drain_s))
        results = [(await from_viewers(c, drain_s + 120, p))[1] for c, p in zip(conns, procs)]
        metrics = await gateway_metrics(gw.http_url)
    finally:
        await stop_gateway(gw)
        end_viewers(conns, procs)
    load1 = _loadavg()
    gateway_pauses = gw.gc_pauses()
    received = [x for res in results for x in res["received"]]
    lat = [(recv - sent) * 1000 for _, _, sent, recv in received]
    breakdown = _breakdown(received)
    lost = duplicates = closed_early = 0
    expected_finals = 0
    for res in results:
        for stream, got, early in res["viewers"]:
            closed_early += bool(early)
            want = finals if stream is None else {stream: finals.get(stream, [])}
            for s, seqs in want.items():
                received = got.get(s, [])
                expected_finals += len(seqs)
                lost += len(set(seqs) - set(received))
                duplicates += len(received) - len(set(received))
    lat_summary = _latency_summary(lat)
    published = sum(int(round(seconds * rate_hz)) for _ in stream_ids)
    per_viewer = published if subscribe == "all" else published / streams
    out = {
        "clients": clients, "connected": connected, "streams": streams, "rate_hz": rate_hz, "seconds": seconds,
        "subscribe": subscribe, "client_procs": len(procs), "freeze_gateway_gc": freeze_gc,
        "heartbeat_s": heartbeat_s, "no_timeout_ceil": no_ceil, "connect_s": round(connect_s, 1),
        "published": published, "expected_deliveries": int(round(per_viewer * clients)),
        "delivered": len(lat), "latency_ms": lat_summary, "bus_hop_ms": _latency_summary(hop_ms), **breakdown,
        "expected_finals": expected_finals, "lost": lost, "duplicates": duplicates, "closed_early": closed_early,
        "dropped_clients": metrics["clients_dropped"], "dropped_messages": metrics["messages_dropped"],
        "publish_wall_s": round(wall, 2),
        "gateway_cpu_pct": round(100 * gw_cpu / wall, 1), "redis_cpu_pct": round(100 * redis_cpu / wall, 1),
        "producer_cpu_pct": round(100 * self_cpu / wall, 1),
        "viewer_cpu_pct": [res["cpu_pct"] for res in results],
        "viewer_loop_lag_ms": [res["loop_lag_ms"] for res in results],
        "viewer_gc": [res["gc"] for res in results],
        "gateway_gc": None if gateway_pauses is None else gc_summary(gateway_pauses, publish_t0, publish_t1),
        "drain_s": [res["drained_s"] for res in results],
        "machine_busy_pct": round(100 * (busy1 - busy0) / max(1, total1 - total0), 1),
        "gateway_rss_mb": {"idle": rss_idle, "connected": rss_connected, "end": rss, "peak": hwm},
        "load_average": {"start": load0, "end": load1},
        "target_p99_ms": TARGET_P99_MS,
        "target_met": bool(lat) and lat_summary["p99"] <= TARGET_P99_MS and lost == 0,
    }
    return out


def _breakdown(received: list[tuple[str, int, float, float]]) -> dict:
    """Per caption: how long until its first viewer had it (bus, gateway read loop, the first send)
    and how much later its last viewer did (the fan-out's spread); and the latency per second of
    publishing (p50 / p99), which grows when something cannot keep up."""
    by_msg: dict[tuple[str, int], list[float]] = {}
    for stream, seq, sent, recv in received:
        by_msg.setdefault((stream, seq), [sent]).append(recv)
    first, spread = [], []
    for times in by_msg.values():
        recvs = times[1:]
        first.append((min(recvs) - times[0]) * 1000)
        spread.append((max(recvs) - min(recvs)) * 1000)
    t0 = min((sent for _, _, sent, _ in received), default=0.0)
    per_s: dict[int, list[float]] = {}
    for _, _, sent, recv in received:
        per_s.setdefault(int(sent - t0), []).append((recv - sent) * 1000)
    timeline = []
    for sec in sorted(per_s):
        v = sorted(per_s[sec])
        timeline.append([sec, round(_percentile(v, 50), 1), round(_percentile(v, 99), 1)])
    return {"first_viewer_ms": _latency_summary(first), "fanout_spread_ms": _latency_summary(spread),
            "latency_by_second_ms": timeline}


def profile_top(path: Path, n: int = 25) -> str:
    import io
    import pstats

    buf = io.StringIO()
    pstats.Stats(str(path), stream=buf).strip_dirs().sort_stats("tottime").print_stats(n)
    return buf.getvalue()


def summarize(rounds: list[dict]) -> list[dict]:
    """Per viewer count: the median of each figure over its repeats (p99's range too); lost and
    dropped summed over them."""
    import statistics

    out = []
    for n in sorted({r["clients"] for r in rounds}):
        rs = [r for r in rounds if r["clients"] == n]

        def med(get) -> float:
            return round(statistics.median(get(r) for r in rs), 1)

        p99s = [r["latency_ms"].get("p99", float("nan")) for r in rs]
        out.append({
            "clients": n, "repeats": len(rs),
            "delivered": sum(r["delivered"] for r in rs), "expected_deliveries": sum(r["expected_deliveries"] for r in rs),
            "latency_ms": {q: med(lambda r, q=q: r["latency_ms"].get(q, float("nan")))
                           for q in ("p50", "p95", "p99", "max")},
            "p99_range_ms": [round(min(p99s), 1), round(max(p99s), 1)],
            "first_viewer_ms": {q: med(lambda r, q=q: r["first_viewer_ms"].get(q, float("nan"))) for q in ("p50", "p99")},
            "fanout_spread_ms": {q: med(lambda r, q=q: r["fanout_spread_ms"].get(q, float("nan"))) for q in ("p50", "p99")},
            "bus_hop_ms": {q: med(lambda r, q=q: r["bus_hop_ms"].get(q, float("nan"))) for q in ("p50", "p99")},
            "lost": sum(r["lost"] for r in rs), "duplicates": sum(r["duplicates"] for r in rs),
            "dropped_clients": sum(r["dropped_clients"] for r in rs),
            "dropped_messages": sum(r["dropped_messages"] for r in rs),
            "gateway_cpu_pct": med(lambda r: r["gateway_cpu_pct"]),
            "gateway_rss_mb": {"idle": med(lambda r: r["gateway_rss_mb"]["idle"]),
                               "end": med(lambda r: r["gateway_rss_mb"]["end"]),
                               "peak": med(lambda r: r["gateway_rss_mb"]["peak"])},
            "viewer_cpu_pct": med(lambda r: sum(r["viewer_cpu_pct"])),
            "viewer_loop_lag_p99_ms": med(lambda r: max(x.get("p99", 0.0) for x in r["viewer_loop_lag_ms"])),
            "machine_busy_pct": med(lambda r: r["machine_busy_pct"]),
            "load_average_1min": [min(r["load_average"]["start"][0] for r in rs),
                                  max(r["load_average"]["end"][0] for r in rs)],
            "target_met": all(r["target_met"] for r in rs),
        })
    return out


def markdown(summary: list[dict]) -> str:
    lines = ["| viewers | runs | delivered | latency p50 / p95 / p99 / max ms | p99 range | first viewer p50 / p99 "
             "| lost | dropped (clients / msgs) | gateway CPU % | gateway RSS MB (idle → end) | viewers' CPU % "
             "| machine busy % | load avg 1 min |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        lm, fv = r["latency_ms"], r["first_viewer_ms"]
        lines.append(
            f"| {r['clients']} | {r['repeats']} | {r['delivered']} / {r['expected_deliveries']} | {lm['p50']} / "
            f"{lm['p95']} / {lm['p99']} / {lm['max']} | {r['p99_range_ms'][0]}–{r['p99_range_ms'][1]} | "
            f"{fv['p50']} / {fv['p99']} | {r['lost']} | {r['dropped_clients']} / {r['dropped_messages']} | "
            f"{r['gateway_cpu_pct']} | {r['gateway_rss_mb']['idle']} → {r['gateway_rss_mb']['end']} | "
            f"{r['viewer_cpu_pct']} | {r['machine_busy_pct']} | "
            f"{r['load_average_1min'][0]}–{r['load_average_1min'][1]} |")
    return "\n".join(lines)


async def _main(args: argparse.Namespace, counts: list[int]) -> dict:
    result: dict = {"cores": os.cpu_count(), "python": sys.version.split()[0], "rounds": [],
                    "config": {"clients": counts, "repeat": args.repeat, "streams": args.streams, "rate_hz": args.rate,
                               "seconds": args.seconds, "subscribe": args.subscribe,
                               "client_procs": args.client_procs, "final_every": args.final_every},
                    "load_average_start": _loadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        folder = Path(tmp)
        redis = RedisProc(folder / "redis").start()
        _progress(f"redis-server on {redis.url}")
        try:
            for n in [n for _ in range(args.repeat) for n in counts]:
                prof = None
                if args.profile is not None:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    prof = args.profile / f"gateway-{n}.prof"
                r = await run_round(redis, folder, clients=n, streams=args.streams, rate_hz=args.rate,
                                    seconds=args.seconds, subscribe=args.subscribe, client_procs=args.client_procs,
                                    final_every=args.final_every, drain_s=args.drain, profile=prof,
                                    freeze_gc=args.freeze_gateway_gc, heartbeat_s=args.heartbeat_s,
                                    no_ceil=args.no_timeout_ceil)
                _progress(json.dumps({k: r[k] for k in ("clients", "delivered", "latency_ms", "bus_hop_ms",
                                                         "first_viewer_ms", "fanout_spread_ms",
                                                         "latency_by_second_ms", "lost",
                                                         "dropped_clients", "gateway_cpu_pct", "viewer_cpu_pct",
                                                         "viewer_loop_lag_ms", "viewer_gc", "gateway_gc",
                                                         "machine_busy_pct")}))
                if prof is not None and prof.exists():
                    r["profile"] = str(prof)
                    print(f"\n### gateway profile, {n} viewers (tottime)\n```\n{profile_top(prof)}```", file=sys.stderr)
                r["run"] = sum(1 for x in result["rounds"] if x["clients"] == n) + 1
                result["rounds"].append(r)
        finally:
            redis.stop()
    result["load_average_end"] = _loadavg()
    result["summary"] = summarize(result["rounds"])
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="100,1000", help="viewer counts, comma-separated (one run each)")
    ap.add_argument("--streams", type=int, default=50, help="streams published")
    ap.add_argument("--rate", type=float, default=2.0, metavar="HZ", help="captions per stream per second")
    ap.add_argument("--seconds", type=float, default=20.0, help="publishing time per viewer count")
    ap.add_argument("--subscribe", choices=["one", "all"], default="one",
                    help="each viewer subscribes to one stream (round robin) or to all of them")
    ap.add_argument("--client-procs", type=int, default=2, help="viewer processes")
    ap.add_argument("--final-every", type=int, default=2, help="every Nth caption of a stream is a final")
    ap.add_argument("--drain", type=float, default=15.0, help="seconds the viewers get to receive the last finals")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each viewer count (interleaved); the "
                    "table gives medians")
    ap.add_argument("--quick", action="store_true", help="20 viewers, 3 streams, 3 s (the integration test)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--freeze-gateway-gc", action="store_true",
                    help="experiment: gc.freeze() in the gateway once the viewers are connected (SIGUSR1)")
    ap.add_argument("--heartbeat-s", type=float, metavar="S",
                    help="the gateway's websocket ping interval (server.heartbeat_s; default: streamcap's)")
    ap.add_argument("--no-timeout-ceil", action="store_true",
                    help="experiment: the gateway's aiohttp server does not round heartbeat deadlines up to the "
                         "whole second (AppRunner timeout_ceil_threshold)")
    ap.add_argument("--profile", type=Path, metavar="DIR", help="run the gateway under cProfile, stats here")
    args = ap.parse_args(argv)
    if args.quick:
        args.clients, args.streams, args.seconds = "20", 3, 3.0
    counts = [int(x) for x in args.clients.split(",") if x.strip()]
    if args.repeat < 1 or args.streams < 1 or args.rate <= 0 or args.seconds <= 0 or args.final_every < 1 or not counts:
        ap.error("--streams, --rate, --seconds, --final-every, --repeat and --clients must be positive")
    _raise_fd_limit()
    try:
        result = asyncio.run(_main(args, counts))
    except BenchError as exc:
        print(f"bench_gateway: {exc}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    c = result["config"]
    print(f"One gateway, {c['streams']} streams x {c['rate_hz']:g} captions/s ({'every viewer all streams' if c['subscribe'] == 'all' else 'each viewer one stream'}), "
          f"{c['seconds']:g} s, {result['cores']} cores\n")
    print(markdown(result["summary"]))
    for r in result["rounds"]:
        print(f"\n{r['clients']} viewers, run {r['run']}: p99 {r['latency_ms'].get('p99')} ms (target ≤ {TARGET_P99_MS:g}) → "
              f"{'met' if r['target_met'] else 'MISSED'}; bus hop p50/p99 {r['bus_hop_ms'].get('p50')} / "
              f"{r['bus_hop_ms'].get('p99')} ms; first viewer p50/p99 {r['first_viewer_ms'].get('p50')} / "
              f"{r['first_viewer_ms'].get('p99')} ms, fan-out spread p50/p99 {r['fanout_spread_ms'].get('p50')} / "
              f"{r['fanout_spread_ms'].get('p99')} ms; redis {r['redis_cpu_pct']} %, producer {r['producer_cpu_pct']} %; "
              f"viewer loop lag {r['viewer_loop_lag_ms']}; gateway GC {r['gateway_gc'] or 'not recorded'}; "
              f"peak RSS {r['gateway_rss_mb']['peak']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
