"""One ``streamcap run`` server fanning its live captions out to many websocket viewers: delivery
latency, loss, drops and what it costs.

``python -m tools.bench_fanout [--clients 100,1000,5000] [--streams 4] [--duration-s 60]
[--subscribe all|one] [--client-procs 4] [--quick] [--json OUT] [--markdown OUT]`` prints a
Markdown table (docs/benchmarks.md) and, with ``--json``, writes every figure.

For each viewer count it starts, all on loopback:

- one real ``streamcap run --port 0 --no-speech`` process (a fresh one per viewer count, its own
  temporary ``--data-dir``) captioning ``--streams`` synthetic streams
  (``--source sI=synthetic:shapes?seed=I&scene_s=S``) with the bundled demo engine, exactly as the
  demo runs; a ``--config`` TOML in the temporary folder sets only what the measurement needs
  (``server.max_resume_finals``, so the loss check can read every stored final back, and
  ``server.client_queue_size`` when ``--client-queue`` is given; streamcap has no client limit),
- N websocket viewers in ``--client-procs`` processes of their own (asyncio + aiohttp). Each
  connects to ``/ws``, waits for ``hello``, sends ``subscribe`` (every stream, or stream
  ``i mod S`` for viewer ``i`` with ``--subscribe one``) and then ``ping``: its ``pong`` comes after
  the subscription has taken effect. A viewer is connected when it has its pong; the next one
  connects then (a steady, bounded connect rate per process).

Once every viewer has its pong the window opens (T0, the tool's wall clock) and stays open for
``--duration-s`` (T1). Latency is each caption message's receive wall time minus its ``sent`` (the
server's wall clock when the hub published it: one machine, one clock). It covers the hub's
fan-out, the per-client queue and sender task, the websocket write and the viewer process's own
event loop, but not the engine (a caption is ``sent`` once the engine has made it).

Lost: the server's finals are read back after T1 from its caption store (a websocket with
``?since=ID:0`` per stream, answered from SQLite), those ``sent`` in [T0, T1] are what the server
published. Every viewer waits (up to ``--drain-s``) until it has every one of them for its
streams. Per stream, a viewer must then have every caption (partial or final) ``sent`` between T0
and that stream's last final in the window: the server sends a client's messages in order, so
anything published before that final is in front of it in the queue. What it must have is the
union of what every viewer got in that span, plus the stored finals; lost is the sum over viewers
of what they lack. Partials nobody received cannot be seen this way, so the server's own
``streamcap_captions_total`` over the window is reported beside it (its edges are the instants
/metrics was read, so it may differ by a caption or two per stream). Dropped: the server's
``streamcap_clients_dropped_total`` and ``streamcap_messages_dropped_total`` by reason (slow
clients), and viewers the server closed.

Cost over the window: the server process's CPU (% of one core; it includes the engine's threads,
which caption the streams whatever the viewer count) and that of its event-loop thread alone (the
main thread: the hub, the senders, the websocket writes, the pipeline's bookkeeping), VmRSS at T0
(viewers connected) and at T1 and VmHWM, the viewer processes' CPU and event-loop lag (a 20 ms
ticker's overshoot: when it is large the viewers, not the server, add latency), the machine's busy
share, and the server's garbage-collector pauses in the window (it runs the real CLI through
``tools.bench_gateway``'s bootstrap, which notes them). ``--freeze-server-gc`` (an experiment)
makes the server call ``gc.freeze()`` once its viewers are connected. Connect time: from starting
the viewer processes to the last pong. Per caption, the latency
of its first viewer and the spread to its last (``tools/soak.py``'s "delivery spread"); the latency
per second of the window. The load average is recorded at the start and end of every viewer count.

``--quick`` (20 viewers, 2 streams, 10 s) is what the integration test runs. Exit status 2 (with a
message) when the server or a viewer process cannot start or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from tools.bench_gateway import (
    CLK_TCK,
    GC_BOOT,
    _latency_summary,
    _loadavg,
    _machine_cpu,
    _proc_cpu_s,
    _proc_mem_mb,
    gc_summary,
)
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
ROOT = Path(__file__).resolve().parents[1]


def _progress(msg: str) -> None:
    print(f"[bench_fanout {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _thread_cpu_s(pid: int, tid: int) -> float:
    """User + system CPU seconds of one thread of a process."""
    with open(f"/proc/{pid}/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --- the server ---------------------------------------------------------------------------------


def stream_sources(streams: int, scene_s: float) -> dict[str, str]:
    return {f"s{i}": f"synthetic:shapes?seed={i + 1}&scene_s={scene_s:g}" for i in range(streams)}


def server_config(client_queue: int | None) -> str:
    lines = ["[server]", 'host = "127.0.0.1"', "port = 0", "max_resume_finals = 100000"]
    if client_queue is not None:
        lines.append(f"client_queue_size = {client_queue}")
    return "\n".join(lines) + "\n"


async def start_server(folder: Path, sources: dict[str, str], *, client_queue: int | None = None,
                       timeout_s: float = 120.0) -> ServerProc:
    """``streamcap run`` on a free loopback port; returns once it says where it serves."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "fanout.toml"
    config.write_text(server_config(client_queue))
    log_path = folder / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMCAP_")}
    gc_log = folder / "server-gc.json"
    gc_log.unlink(missing_ok=True)
    env["BENCH_GC_LOG"] = str(gc_log)
    # the real CLI through bench_gateway's bootstrap, which notes the collector's pauses
    cmd = [sys.executable, "-c", GC_BOOT, "run", "--port", "0", "--host", "127.0.0.1", "--no-speech",
           "--data-dir", str(folder / "data"), "--config", str(config)]
    for sid, url in sources.items():
        cmd += ["--source", f"{sid}={url}"]
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=log, env=env,
                                                    cwd=str(ROOT))
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    await proc.wait()
                    raise BenchError(f"streamcap run exited ({proc.returncode}) before serving: "
                                     f"{log_path.read_text(errors='replace')[-1500:]}")
                m = re.search(r"serving on (http://\S+?)/?$", line.strip())
                if m:
                    return ServerProc(proc, m.group(1).rstrip("/"), log_path, gc_log)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BenchError(f"streamcap run did not say where it serves within {timeout_s:g} s: "
                         f"{log_path.read_text(errors='replace')[-1500:]}") from None
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise


async def stop_server(srv: ServerProc) -> int | None:
    """SIGTERM, then SIGKILL after 60 s; returns the exit status."""
    if srv.proc.returncode is None:
        srv.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(srv.proc.wait(), 60)
        except TimeoutError:
            tail = srv.log_path.read_text(errors="replace").splitlines()[-8:]
            _progress(f"server pid {srv.pid} still running 60 s after SIGTERM: killed; its log ends:\n  "
                      + "\n  ".join(tail))
            srv.proc.kill()
            await srv.proc.wait()
    return srv.proc.returncode


async def server_metrics(http_url: str) -> dict:
    """The drop counters (by reason), the client gauge and captions published (by state) from /metrics."""
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(http_url + "/metrics") as resp:
        if resp.status != 200:
            raise BenchError(f"GET /metrics answered {resp.status}")
        text = await resp.text()
    out: dict = {"clients_dropped": {}, "messages_dropped": {}, "clients": None, "captions": {}}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        value = float(line.rsplit(" ", 1)[1])
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0])) if "{" in line else {}
        if name == "streamcap_clients_dropped_total":
            out["clients_dropped"][labels.get("reason", "")] = int(value)
        elif name == "streamcap_messages_dropped_total":
            out["messages_dropped"][labels.get("reason", "")] = int(value)
        elif name == "streamcap_clients":
            out["clients"] = int(value)
        elif name == "streamcap_captions_total":
            key = labels.get("state", "")
            out["captions"][key] = out["captions"].get(key, 0) + int(value)
    return out


async def stored_finals(ws_url: str, streams: list[str], timeout_s: float = 60.0) -> dict[str, list[tuple[int, float]]]:
    """Every final the server stored, per stream: (seq, sent), read back with ``?since=ID:0``
    (answered from the caption store) up to the ``pong`` that follows the replay."""
    import aiohttp

    since = ",".join(f"{s}:0" for s in streams)
    out: dict[str, list[tuple[int, float]]] = {s: [] for s in streams}
    async with asyncio.timeout(timeout_s), aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{ws_url}?streams={','.join(streams)}&since={since}",
                                      max_msg_size=0) as ws:
            await ws.send_str('{"type":"ping"}')
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    raise BenchError(f"the store read-back websocket ended: {msg.type}")
                m = json.loads(msg.data)
                kind = m.get("type")
                if kind == "caption" and m["state"] == "final":
                    out[m["stream"]].append((m["seq"], m["sent"]))
                elif kind == "error":
                    raise BenchError(f"the store read-back got an error: {m}")
                elif kind == "pong":
                    break
    return out


# --- the viewer processes -----------------------------------------------------------------------


def _client_proc(conn: Connection, ws_url: str, subscriptions: list[list[str] | None]) -> None:
    """A process of viewers (run by multiprocessing): connect and subscribe all, say ready, collect
    until told to drain, then send back what the parent needs."""
    viewer_process(conn, _clients, ws_url, subscriptions)


@dataclass
class _Viewer(Viewer):
    streams: list[str] | None = None  # None: every stream
    # (stream, seq, state is final, sent, received) of every live caption after the pong
    received: list[tuple[str, int, bool, float, float]] = field(default_factory=list)
    finals: dict[str, set[int]] = field(default_factory=dict)
    live: bool = False
    expected: dict[str, set[int]] | None = None

    def check_done(self) -> None:
        if self.expected is not None and all(self.finals.get(s, set()) >= seqs for s, seqs in self.expected.items()):
            self.done.set()


async def _clients(conn: Connection, ws_url: str, subscriptions: list[list[str] | None]) -> dict:
    import aiohttp

    viewers = [_Viewer(streams=s) for s in subscriptions]
    failures: list[str] = []
    stopping = False
    lag = LoopLag()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def begin(v: _Viewer, ready: asyncio.Event) -> None:
            async def on_message(ws, m: dict, now: float) -> None:
                kind = m.get("type")
                if kind == "caption":
                    if v.live:
                        final = m["state"] == "final"
                        v.received.append((m["stream"], m["seq"], final, m["sent"], now))
                        if final:
                            v.finals.setdefault(m["stream"], set()).add(m["seq"])
                            if v.expected is not None:
                                v.check_done()
                elif kind == "hello":
                    await ws.send_str(json.dumps({"type": "subscribe", "streams": v.streams}))
                    await ws.send_str('{"type":"ping"}')
                elif kind == "pong":
                    v.live = True
                    ready.set()
                elif kind == "error":
                    failures.append(f"error message: {m}")

            await watch(v, session, ws_url, ready, failures, on_message, lambda: stopping)

        tasks = await connect_in_turn(viewers, begin)  # subscribed (pong) before the next connects
        tick = asyncio.create_task(lag.run())
        conn.send(("ready", sum(v.live for v in viewers), failures[:5]))
        await recv_command(conn, "measure")
        with quiet_collector():
            lag.measuring = True
            cpu0, wall0 = time.process_time(), time.monotonic()
            _, t0, finals, drain_s = await recv_command(conn, "drain")
            cpu1, wall1 = time.process_time(), time.monotonic()
            lag.measuring = False
        expected = {s: {seq for seq, _ in items} for s, items in finals.items()}
        for v in viewers:
            v.expected = {s: seqs for s, seqs in expected.items() if v.streams is None or s in v.streams}
            v.check_done()
        drained_s = await drain(viewers, drain_s)
        stopping = True
        await stop([*tasks, tick])
    # per stream, the window ends at its last final sent in [T0, T1] (everything sent before it
    # is in front of it in a viewer's queue)
    ends = {s: max(sent for _, sent in items) for s, items in finals.items() if items}
    lat: list[float] = []
    per_caption: dict[tuple[str, int], list] = {}  # (stream, seq) -> [sent, first recv, last recv, count]
    per_viewer: list[tuple[list[str] | None, dict[str, list[int]], str]] = []
    for v in viewers:
        got: dict[str, list[int]] = {}
        for stream, seq, _final, sent, recv in v.received:
            end = ends.get(stream)
            if end is None or not (t0 <= sent <= end):
                continue
            lat.append((recv - sent) * 1000)
            got.setdefault(stream, []).append(seq)
            pc = per_caption.get((stream, seq))
            if pc is None:
                per_caption[(stream, seq)] = [sent, recv, recv, 1]
            else:
                pc[1] = min(pc[1], recv)
                pc[2] = max(pc[2], recv)
                pc[3] += 1
        per_viewer.append((v.streams, got, v.closed))
    return {
        "connected": sum(v.live for v in viewers), "failures": failures[:5], "latency_ms": lat,
        "per_caption": per_caption, "viewers": per_viewer,
        "cpu_pct": round(100 * (cpu1 - cpu0) / max(1e-9, wall1 - wall0), 1),
        "loop_lag_ms": lag.summary(),
        "drained_s": round(drained_s, 2), "not_done": sum(not v.done.is_set() or bool(v.closed) for v in viewers),
    }


# --- one viewer count ---------------------------------------------------------------------------


def _dropped_delta(before: dict, after: dict) -> dict[str, int]:
    keys = set(before) | set(after)
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(keys) if after.get(k, 0) - before.get(k, 0)}


async def run_round(folder: Path, *, clients: int, streams: int, scene_s: float, duration_s: float, subscribe: str,
                    client_procs: int, drain_s: float, client_queue: int | None, freeze_gc: bool = False) -> dict:
    sources = stream_sources(streams, scene_s)
    stream_ids = list(sources)
    load0 = _loadavg()
    srv = await start_server(folder, sources, client_queue=client_queue)
    rss_idle, _ = _proc_mem_mb(srv.pid)
    _progress(f"{clients} viewers: streamcap run pid {srv.pid} on {srv.http_url} ({rss_idle} MB), "
              f"{streams} synthetic streams")
    procs: list = []
    conns: list[Connection] = []
    results: list[dict] = []
    exit_code = None
    try:
        subs = [None if subscribe == "all" else [stream_ids[i % streams]] for i in range(clients)]
        t_connect = time.monotonic()
        start_viewers(_client_proc, srv.ws_url, subs, max(1, min(client_procs, clients)), procs, conns)
        connected = await viewers_ready(conns, procs, 600, _progress)
        connect_s = time.monotonic() - t_connect
        if srv.proc.returncode is not None:
            raise BenchError(f"streamcap run exited ({srv.proc.returncode}) while viewers connected")
        _progress(f"{connected}/{clients} viewers connected and subscribed in {connect_s:.1f} s; measuring "
                  f"{duration_s:g} s")
        if freeze_gc:
            os.kill(srv.pid, signal.SIGUSR1)  # gc.freeze() in the server: its connected state is never scanned again
        m0 = await server_metrics(srv.http_url)
        for c in conns:
            c.send(("measure",))
        t0 = time.time()
        rss0, _ = _proc_mem_mb(srv.pid)
        cpu0, loop_cpu0 = _proc_cpu_s(srv.pid), _thread_cpu_s(srv.pid, srv.pid)
        busy0, total0 = _machine_cpu()
        wall0 = time.monotonic()
        await asyncio.sleep(duration_s)  # the measuring window itself, not a synchronisation
        wall = time.monotonic() - wall0
        t1 = time.time()
        cpu = _proc_cpu_s(srv.pid) - cpu0
        loop_cpu = _thread_cpu_s(srv.pid, srv.pid) - loop_cpu0
        busy1, total1 = _machine_cpu()
        rss1, hwm = _proc_mem_mb(srv.pid)
        m1 = await server_metrics(srv.http_url)
        stored = await stored_finals(srv.ws_url, stream_ids)
        finals = {s: [(seq, sent) for seq, sent in items if t0 <= sent <= t1] for s, items in stored.items()}
        _progress(f"window closed: {sum(map(len, finals.values()))} finals stored in it; viewers draining")
        for c in conns:
            c.send(("drain", t0, finals, drain_s))
        for c, proc in zip(conns, procs):
            results.append((await from_viewers(c, drain_s + 300, proc))[1])
        m2 = await server_metrics(srv.http_url)
    finally:
        exit_code = await stop_server(srv)
        end_viewers(conns, procs)
    load1 = _loadavg()
    pauses = srv.gc_pauses()
    return summarise_round(
        results, finals, stream_ids, subscribe, t0=t0, t1=t1,
        base={"clients": clients, "connected": connected, "streams": streams, "scene_s": scene_s,
              "duration_s": duration_s, "subscribe": subscribe, "client_procs": len(procs),
              "client_queue": client_queue, "freeze_server_gc": freeze_gc,
              "server_gc": None if pauses is None else gc_summary(pauses, t0, t1),
              "connect_s": round(connect_s, 1), "window_s": round(wall, 2),
              "server_cpu_pct": round(100 * cpu / wall, 1), "server_loop_cpu_pct": round(100 * loop_cpu / wall, 1),
              "server_rss_mb": {"idle": rss_idle, "connected": rss0, "end": rss1, "peak": hwm},
              "machine_busy_pct": round(100 * (busy1 - busy0) / max(1, total1 - total0), 1),
              "captions_published_counter": {k: m1["captions"].get(k, 0) - m0["captions"].get(k, 0)
                                             for k in ("partial", "final")},
              "dropped_clients": _dropped_delta({}, m2["clients_dropped"]),
              "dropped_messages": _dropped_delta({}, m2["messages_dropped"]),
              "clients_gauge_end": m1["clients"], "server_exit": exit_code,
              "load_average": {"start": load0, "end": load1}})


def summarise_round(results: list[dict], finals: dict[str, list[tuple[int, float]]], stream_ids: list[str],
                    subscribe: str, *, t0: float, t1: float, base: dict) -> dict:
    lat = [x for res in results for x in res["latency_ms"]]
    # what the server published in the window, per stream: its stored finals, and every caption
    # some viewer got between T0 and the stream's last final in the window
    published: dict[str, set[int]] = {s: {seq for seq, _ in items} for s, items in finals.items()}
    per_caption: dict[tuple[str, int], list] = {}
    for res in results:
        for key, (sent, first, last, count) in res["per_caption"].items():
            published.setdefault(key[0], set()).add(key[1])
            pc = per_caption.get(key)
            if pc is None:
                per_caption[key] = [sent, first, last, count]
            else:
                pc[1], pc[2], pc[3] = min(pc[1], first), max(pc[2], last), pc[3] + count
    final_seqs = {(s, seq) for s, items in finals.items() for seq, _ in items}
    lost = lost_finals = duplicates = closed = viewers_with_loss = 0
    expected = 0
    per_viewer_received = []
    for res in results:
        for streams, got, why in res["viewers"]:
            closed += bool(why)
            n = 0
            missing = 0
            for s in (stream_ids if streams is None else streams):
                want = published.get(s, set())
                have = got.get(s, [])
                n += len(have)
                expected += len(want)
                miss = want - set(have)
                missing += len(miss)
                lost_finals += sum(1 for seq in miss if (s, seq) in final_seqs)
                duplicates += len(have) - len(set(have))
            lost += missing
            viewers_with_loss += missing > 0
            per_viewer_received.append(n)
    # seq gaps in the union: a caption no viewer got (numbers may also be skipped by the server)
    union_gaps = 0
    for seqs in published.values():
        if seqs:
            union_gaps += (max(seqs) - min(seqs) + 1) - len(seqs)
    first = [(pc[1] - pc[0]) * 1000 for pc in per_caption.values()]
    spread = [(pc[2] - pc[1]) * 1000 for pc in per_caption.values()]
    timeline = []
    by_sec: dict[int, list[float]] = {}
    for (_s, _seq), pc in per_caption.items():
        by_sec.setdefault(int(pc[0] - t0), []).append((pc[2] - pc[0]) * 1000)
    for sec in sorted(by_sec):
        v = sorted(by_sec[sec])
        timeline.append([sec, round(_percentile(v, 50), 1), round(_percentile(v, 99), 1)])
    lat_summary = _latency_summary(lat)
    dropped_clients = sum(base["dropped_clients"].values())
    dropped_messages = sum(base["dropped_messages"].values())
    received_min = min(per_viewer_received, default=0)
    out = {
        **base,
        "captions_in_window": sum(len(s) for s in published.values()),
        "finals_in_window": len(final_seqs),
        "union_seq_gaps": union_gaps,
        "expected_deliveries": expected, "received": len(lat),
        "received_per_viewer": {"min": received_min, "max": max(per_viewer_received, default=0),
                                "mean": round(sum(per_viewer_received) / max(1, len(per_viewer_received)), 1)},
        "latency_ms": lat_summary,
        "first_viewer_ms": _latency_summary(first), "fanout_spread_ms": _latency_summary(spread),
        "last_viewer_by_second_ms": timeline,
        "lost": lost, "lost_finals": lost_finals, "viewers_with_loss": viewers_with_loss,
        "duplicates": duplicates, "closed_early": closed,
        "viewer_cpu_pct": [res["cpu_pct"] for res in results],
        "viewer_loop_lag_ms": [res["loop_lag_ms"] for res in results],
        "drain_s": [res["drained_s"] for res in results],
        "viewer_failures": [f for res in results for f in res["failures"]][:5],
        "target_p99_ms": TARGET_P99_MS,
    }
    out["target_met"] = (bool(lat) and lat_summary["p99"] <= TARGET_P99_MS and lost == 0
                         and dropped_clients == 0 and dropped_messages == 0 and closed == 0)
    return out


# --- report -------------------------------------------------------------------------------------


def markdown(rounds: list[dict]) -> str:
    lines = ["| viewers | connect s | received (per viewer min) | latency p50 / p99 / max ms "
             "| first viewer p50 / p99 ms | spread first→last p99 ms | lost | dropped (clients / msgs) "
             "| server CPU % (loop thread) "
             "| server RSS MB (connected → end, peak) | viewers' CPU % | machine busy % | load avg 1 min |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rounds:
        lm, fv, sp = r["latency_ms"], r["first_viewer_ms"], r["fanout_spread_ms"]
        rss = r["server_rss_mb"]
        lines.append(
            f"| {r['clients']} | {r['connect_s']} | {r['received']:,} / {r['expected_deliveries']:,} "
            f"({r['received_per_viewer']['min']}) | {lm.get('p50')} / {lm.get('p99')} / {lm.get('max')} | "
            f"{fv.get('p50')} / {fv.get('p99')} | {sp.get('p99')} | {r['lost']} | "
            f"{sum(r['dropped_clients'].values())} / {sum(r['dropped_messages'].values())} | "
            f"{r['server_cpu_pct']} ({r['server_loop_cpu_pct']}) | "
            f"{rss['connected']} → {rss['end']}, {rss['peak']} | "
            f"{round(sum(r['viewer_cpu_pct']), 1)} | {r['machine_busy_pct']} | "
            f"{r['load_average']['start'][0]}–{r['load_average']['end'][0]} |")
    return "\n".join(lines)


async def _main(args: argparse.Namespace, counts: list[int]) -> dict:
    result: dict = {"cores": os.cpu_count(), "python": sys.version.split()[0], "rounds": [],
                    "config": {"clients": counts, "streams": args.streams, "scene_s": args.scene_s,
                               "duration_s": args.duration_s, "subscribe": args.subscribe,
                               "client_procs": args.client_procs, "client_queue": args.client_queue,
                               "freeze_server_gc": args.freeze_server_gc},
                    "load_average_start": _loadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        for i, n in enumerate(counts):
            r = await run_round(Path(tmp) / f"round{i}", clients=n, streams=args.streams, scene_s=args.scene_s,
                                duration_s=args.duration_s, subscribe=args.subscribe,
                                client_procs=args.client_procs, drain_s=args.drain_s,
                                client_queue=args.client_queue, freeze_gc=args.freeze_server_gc)
            _progress(json.dumps({k: r[k] for k in ("clients", "connected", "received", "latency_ms",
                                                     "first_viewer_ms", "fanout_spread_ms", "lost",
                                                     "dropped_clients", "dropped_messages", "closed_early",
                                                     "server_cpu_pct", "server_loop_cpu_pct", "server_rss_mb",
                                                     "server_gc",
                                                     "viewer_cpu_pct", "viewer_loop_lag_ms", "machine_busy_pct")}))
            result["rounds"].append(r)
    result["load_average_end"] = _loadavg()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="100,1000,5000", help="viewer counts, comma-separated (one server each)")
    ap.add_argument("--streams", type=int, default=4, help="synthetic:shapes streams the server captions")
    ap.add_argument("--scene-s", type=float, default=3.0, help="seconds per scene of the synthetic streams")
    ap.add_argument("--duration-s", type=float, default=60.0, help="measuring window per viewer count")
    ap.add_argument("--subscribe", choices=["all", "one"], default="all",
                    help="each viewer subscribes to every stream (as the demo's viewers) or to one (round robin)")
    ap.add_argument("--client-procs", type=int, default=4, help="viewer processes")
    ap.add_argument("--client-queue", type=int, metavar="N",
                    help="server.client_queue_size (default: streamcap's, 256)")
    ap.add_argument("--drain-s", type=float, default=30.0,
                    help="seconds the viewers get to receive the window's last finals")
    ap.add_argument("--freeze-server-gc", action="store_true",
                    help="experiment: gc.freeze() in the server once the viewers are connected (SIGUSR1)")
    ap.add_argument("--quick", action="store_true", help="20 viewers, 2 streams, 10 s (the integration test)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--markdown", type=Path, help="write the table here")
    args = ap.parse_args(argv)
    if args.quick:
        args.clients, args.streams, args.duration_s, args.client_procs = "20", 2, 10.0, 2
    try:
        counts = [int(x) for x in args.clients.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--clients must be whole numbers, comma-separated, not {args.clients!r}")
    if (args.streams < 1 or args.duration_s <= 0 or args.client_procs < 1 or args.scene_s <= 0 or args.drain_s <= 0
            or not counts or min(counts) < 1):
        ap.error("--clients, --streams, --duration-s, --scene-s, --drain-s and --client-procs must be positive")
    if args.client_queue is not None and args.client_queue < 4:
        ap.error("--client-queue must be at least 4 (server.client_queue_size)")
    if importlib.util.find_spec("aiohttp") is None:  # the viewers' client
        print("bench_fanout: aiohttp is not installed (pip install -e .)", file=sys.stderr)
        return 2
    _raise_fd_limit()
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < max(counts) + 200:
        print(f"bench_fanout: {max(counts)} viewers need more open files than the limit ({soft}): raise ulimit -n",
              file=sys.stderr)
        return 2
    try:
        result = asyncio.run(_main(args, counts))
    except BenchError as exc:
        print(f"bench_fanout: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench_fanout: interrupted (the server and the viewer processes were stopped)", file=sys.stderr)
        return 130
    c = result["config"]
    head = (f"One `streamcap run`, {c['streams']} synthetic streams (scene {c['scene_s']:g} s), "
            f"{'every viewer all streams' if c['subscribe'] == 'all' else 'each viewer one stream'}, "
            f"{c['duration_s']:g} s window, {result['cores']} cores, load average "
            f"{result['load_average_start'][0]}–{result['load_average_end'][0]}")
    table = markdown(result["rounds"])
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(head + "\n\n" + table + "\n")
    print(head + "\n")
    print(table)
    for r in result["rounds"]:
        print(f"\n{r['clients']} viewers: p99 {r['latency_ms'].get('p99')} ms (target ≤ {TARGET_P99_MS:g}), "
              f"lost {r['lost']}, dropped {r['dropped_clients'] or 0} / {r['dropped_messages'] or 0}, "
              f"closed early {r['closed_early']} → {'met' if r['target_met'] else 'MISSED'}; "
              f"{r['captions_in_window']} captions in the window ({r['finals_in_window']} finals; the server's "
              f"counter: {r['captions_published_counter']}), union seq gaps {r['union_seq_gaps']}; viewer loop lag "
              f"{r['viewer_loop_lag_ms']}; server GC in the window {r['server_gc'] or 'not recorded'}; "
              f"RSS idle {r['server_rss_mb']['idle']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
