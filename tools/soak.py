#!/usr/bin/env python
"""Soak a real streamcap server with several live streams and many websocket viewers.

For minutes: does memory grow, are messages lost?

It starts ``python -m streamcap.cli run`` (the same temporary config as tools/fuzz.py, tokens
included) with ``--streams`` live streams: ``synthetic:shapes`` with different seeds, one of them
replaced by a loopback RTSP camera (``tools/rtsp_server.py`` serving a rendered storyline) when
GStreamer's RTSP server is usable here (``--no-rtsp`` to skip it; the output says which ran). Then
``--clients`` viewers connect to ``/ws`` (every stream) and read everything for ``--minutes``.

Measured:
  rss      the server's VmRSS and thread count from /proc/PID/status every ``--sample-s``; growth is
           the median of the last ``--window-s`` against the median of the ``--window-s`` after
           warm-up (``--warmup-s``), in percent
  loss     per client and stream, gaps in caption ``seq`` after its replay (a ``ping`` sent on
           connect is answered after the replay: everything after the ``pong`` is live); captions
           some clients got and others, connected all along, did not; clients the server dropped
  spread   for each caption, the time between the first and the last client receiving it

Usage:
  python tools/soak.py                                  # 4 streams, 200 clients, 10 minutes
  python tools/soak.py --clients 50 --minutes 2 --warmup-s 30 --json soak.json

Exit status: 0 when RSS grew at most ``--max-growth-pct`` (5 %) and the server survived, 1 when
not, 2 when the server (or the RTSP camera) could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools import fuzz  # noqa: E402  (the server driver and /proc sampling are shared)

RTSP_CACHE = Path.home() / ".cache" / "streamcap-soak"


# ---------------------------------------------------------------- pure measures


def growth_pct(samples: list[tuple[float, float]], warmup_s: float, window_s: float) -> tuple[float, float, float]:
    """(baseline, end, growth %) from (seconds since start, RSS MB) samples: the median over
    ``[warmup_s, warmup_s + window_s]`` against the median over the last ``window_s``."""
    if not samples:
        return 0.0, 0.0, 0.0
    t_end = samples[-1][0]
    base = [v for t, v in samples if warmup_s <= t <= warmup_s + window_s] or [samples[0][1]]
    tail = [v for t, v in samples if t >= t_end - window_s] or [samples[-1][1]]
    b, e = statistics.median(base), statistics.median(tail)
    return b, e, (e - b) / b * 100 if b else 0.0


def seq_gaps(seqs: list[int]) -> int:
    """Captions missing from a strictly increasing ``seq`` run (duplicates and rewinds ignored)."""
    missing, last = 0, None
    for s in seqs:
        if last is not None and s > last + 1:
            missing += s - last - 1
        if last is None or s > last:
            last = s
    return missing


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# ---------------------------------------------------------------- viewers


@dataclass
class Viewer:
    id: int
    live_seqs: dict[str, list[int]] = field(default_factory=dict)  # stream -> seqs after the replay
    messages: int = 0
    live_since: float | None = None
    closed_by_server: str = ""
    ended_at: float | None = None


class Arrivals:
    """First and last arrival of each (stream, seq), and how many clients got it."""

    def __init__(self) -> None:
        self.first: dict[tuple[str, int], float] = {}
        self.last: dict[tuple[str, int], float] = {}
        self.count: dict[tuple[str, int], int] = {}

    def add(self, key: tuple[str, int], t: float) -> None:
        if key not in self.first:
            self.first[key] = t
            self.count[key] = 0
        self.last[key] = t
        self.count[key] += 1


async def view(url: str, viewer: Viewer, arrivals: Arrivals, stop: asyncio.Event) -> None:
    import websockets

    try:
        async with websockets.connect(url, max_size=None, open_timeout=30, ping_interval=None) as ws:
            await ws.send('{"type":"ping"}')
            while not stop.is_set():
                try:
                    raw = await asyncio.wait_for(ws.recv(), 1.0)
                except TimeoutError:
                    continue
                now = time.monotonic()
                viewer.messages += 1
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "pong" and viewer.live_since is None:
                    viewer.live_since = now
                elif kind == "caption" and viewer.live_since is not None:
                    viewer.live_seqs.setdefault(msg["stream"], []).append(msg["seq"])
                    arrivals.add((msg["stream"], msg["seq"]), now)
    except websockets.ConnectionClosed as e:
        viewer.closed_by_server = f"{e.rcvd.code if e.rcvd else 1006} {e.rcvd.reason if e.rcvd else ''}".strip()
    except (OSError, TimeoutError) as e:
        viewer.closed_by_server = f"{type(e).__name__}: {e}"
    viewer.ended_at = time.monotonic()


# ---------------------------------------------------------------- the run


@dataclass
class SoakReport:
    streams: dict[str, str]
    clients: int
    minutes: float
    rss_samples: list[tuple[float, float]] = field(default_factory=list)
    thread_samples: list[tuple[float, int]] = field(default_factory=list)
    rss_baseline_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_growth_pct: float = 0.0
    threads_min: int = 0
    threads_max: int = 0
    messages: int = 0
    captions_per_stream: dict[str, int] = field(default_factory=dict)
    seq_gaps: int = 0
    clients_with_gaps: int = 0
    missed_by_some: int = 0  # captions some connected clients did not get
    clients_dropped: int = 0
    drop_reasons: dict[str, int] = field(default_factory=dict)
    spread_p50_ms: float = 0.0
    spread_p95_ms: float = 0.0
    spread_max_ms: float = 0.0
    server_alive: bool = True
    exit_code: int | None = None
    log_errors: int = 0
    log_tracebacks: int = 0


def stream_sources(n: int, rtsp_url: str | None) -> dict[str, str]:
    streams = {f"syn{i}": f"synthetic:shapes?seed={i + 1}&scene_s=4" for i in range(n)}
    if rtsp_url and n:
        streams.pop(f"syn{n - 1}")
        streams["rtsp0"] = rtsp_url
    return streams


def soak_config(secrets: fuzz.Secrets, streams: dict[str, str], engine_threads: int, queue: int) -> str:
    tokens = ", ".join(f'{{scope = "{s}", token = "{t}"}}' for s, t in secrets.tokens.items())
    sources = "".join(f'\n[[sources]]\nid = "{sid}"\nurl = "{url}"\n' for sid, url in streams.items())
    return (f'[server]\nhost = "127.0.0.1"\nport = 0\nclient_queue_size = {queue}\n\n'
            f"[engine]\nthreads = {engine_threads}\n\n[auth]\ntokens = [{tokens}]\n{sources}")


def start_rtsp(minutes: float):
    """A loopback RTSP camera serving a storyline longer than the soak (a file does not loop)."""
    from tools import media
    from tools.rtsp import RtspServer, rtsp_server_available

    why = rtsp_server_available()
    if why:
        return None, why
    duration = int(minutes * 60 + 120)
    path = RTSP_CACHE / f"storyline-{duration}s.mp4"
    if not path.exists():
        media.render_storyline_file(path, seed=7, duration_s=duration, scene_s=4.0)
    server = RtspServer({"cam": path})
    server.start()
    return server, ""


async def soak(args: argparse.Namespace) -> SoakReport:
    secrets = fuzz.Secrets.from_seed(args.seed)
    rtsp = None
    note = ""
    if args.rtsp:
        rtsp, note = await asyncio.to_thread(start_rtsp, args.minutes)
    streams = stream_sources(args.streams, rtsp.url("cam") if rtsp else None)
    kinds = "synthetic" if rtsp is None else "synthetic + 1 loopback RTSP"
    print(f"soak: {len(streams)} streams ({kinds}{'; no RTSP: ' + note if note else ''}), {args.clients} clients, "
          f"{args.minutes:g} min", file=sys.stderr, flush=True)
    report = SoakReport(streams=streams, clients=args.clients, minutes=args.minutes)
    try:
        with tempfile.TemporaryDirectory(prefix="streamcap-soak-") as tmp:
            config = Path(tmp) / "soak.toml"
            config.write_text(soak_config(secrets, streams, args.engine_threads, args.client_queue))
            server = fuzz.Server(config)
            await server.start()
            port = int(server.base.rsplit(":", 1)[1])
            url = f"ws://127.0.0.1:{port}/ws?token={secrets.view}"
            stop = asyncio.Event()
            arrivals = Arrivals()
            viewers = [Viewer(i) for i in range(args.clients)]
            t0 = time.monotonic()
            tasks = [asyncio.create_task(view(url, v, arrivals, stop)) for v in viewers]
            end = t0 + args.minutes * 60
            next_print = t0
            while time.monotonic() < end and server.alive():
                now = time.monotonic()
                sample = fuzz.read_proc_status(server.pid)
                if sample:
                    report.rss_samples.append((round(now - t0, 2), sample[0]))
                    report.thread_samples.append((round(now - t0, 2), sample[1]))
                if now >= next_print:
                    next_print = now + 30
                    got = sum(v.messages for v in viewers)
                    print(f"soak: +{now - t0:.0f} s RSS {sample[0] if sample else 0:.0f} MB threads "
                          f"{sample[1] if sample else 0} messages {got}", file=sys.stderr, flush=True)
                await asyncio.sleep(args.sample_s)  # the sampling period, not synchronisation
            t_stop = time.monotonic()
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            report.server_alive = server.alive()
            report.exit_code, _ = await server.stop(15.0)
            for line in server.lines:
                seen = fuzz.scan_log_line(line.text, secrets)
                report.log_tracebacks += bool(seen["traceback"])
                report.log_errors += seen["level"] in ("ERROR", "CRITICAL")
    finally:
        if rtsp is not None:
            rtsp.close()
    summarise(report, viewers, arrivals, t_stop, args)
    return report


def summarise(report: SoakReport, viewers: list[Viewer], arrivals: Arrivals, t_stop: float,
              args: argparse.Namespace) -> None:
    report.rss_baseline_mb, report.rss_end_mb, report.rss_growth_pct = growth_pct(
        report.rss_samples, args.warmup_s, args.window_s)
    threads = [n for _, n in report.thread_samples if _ >= args.warmup_s] or [0]
    report.threads_min, report.threads_max = min(threads), max(threads)
    report.messages = sum(v.messages for v in viewers)
    for v in viewers:
        gaps = sum(seq_gaps(s) for s in v.live_seqs.values())
        report.seq_gaps += gaps
        report.clients_with_gaps += gaps > 0
        for stream, seqs in v.live_seqs.items():
            report.captions_per_stream[stream] = max(report.captions_per_stream.get(stream, 0), len(seqs))
        if v.closed_by_server:
            report.clients_dropped += 1
            report.drop_reasons[v.closed_by_server] = report.drop_reasons.get(v.closed_by_server, 0) + 1
    # a caption every client live since before it (and until after it) should have got
    steady = [v for v in viewers if v.live_since is not None and not v.closed_by_server]
    spreads = []
    for key, first in arrivals.first.items():
        if first > t_stop - 5:
            continue  # the last few seconds are still in flight
        expected = sum(1 for v in steady if v.live_since < first - 1.0)
        if arrivals.count[key] < expected:
            report.missed_by_some += 1
        spreads.append((arrivals.last[key] - first) * 1000)
    report.spread_p50_ms = percentile(spreads, 0.5)
    report.spread_p95_ms = percentile(spreads, 0.95)
    report.spread_max_ms = max(spreads, default=0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=60.0, help="RSS growth is measured from here")
    parser.add_argument("--window-s", type=float, default=20.0, help="median window at both ends")
    parser.add_argument("--sample-s", type=float, default=2.0)
    parser.add_argument("--max-growth-pct", type=float, default=5.0)
    parser.add_argument("--no-rtsp", dest="rtsp", action="store_false", help="every stream synthetic")
    parser.add_argument("--engine-threads", type=int, default=0, help="engine.threads (0 = all cores)")
    parser.add_argument("--client-queue", type=int, default=256, help="server.client_queue_size")
    parser.add_argument("--seed", type=int, default=1, help="seeds the tokens")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.minutes * 60 < args.warmup_s + 2 * args.window_s:
        parser.error("--minutes must leave room for --warmup-s and two --window-s")
    try:
        report = asyncio.run(soak(args))
    except (RuntimeError, TimeoutError, OSError) as e:
        print(f"soak: could not start: {e}", file=sys.stderr)
        return 2
    print(f"soak: {len(report.streams)} streams {sorted(report.streams)}, {report.clients} clients, "
          f"{report.minutes:g} min")
    print(f"  RSS {report.rss_baseline_mb:.1f} MB after {args.warmup_s:g} s warm-up -> {report.rss_end_mb:.1f} MB "
          f"at the end: {report.rss_growth_pct:+.2f} % (limit {args.max_growth_pct:g} %); threads "
          f"{report.threads_min}..{report.threads_max}")
    print(f"  messages received {report.messages}; captions per stream (one client) {report.captions_per_stream}")
    print(f"  lost: {report.seq_gaps} seq gaps in {report.clients_with_gaps} clients; {report.missed_by_some} "
          f"captions missed by some connected client; {report.clients_dropped} clients dropped "
          f"{report.drop_reasons or ''}")
    print(f"  delivery spread across clients: p50 {report.spread_p50_ms:.1f} ms, p95 {report.spread_p95_ms:.1f} ms, "
          f"max {report.spread_max_ms:.1f} ms")
    print(f"  server: alive at the end {report.server_alive}, SIGTERM -> {report.exit_code}; log "
          f"{report.log_errors} ERROR, {report.log_tracebacks} tracebacks")
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    ok = report.rss_growth_pct <= args.max_growth_pct and report.server_alive and report.exit_code == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
