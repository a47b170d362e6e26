"""How many live streams one machine carries, per engine: the shapes caption model, the scene
describer and speech.

``python -m tools.bench_capacity [--kinds shapes,describer,speech] [--shapes 8,12,16,20]
[--describer 8,12,16,20] [--speech 1,2,4] [--seconds 40] [--warmup 12] [--json OUT]
[--plot docs/img/capacity.png]``

Each point is the real live pipeline (``streamcap.runtime.pipeline.Pipeline``, the same one
``streamcap run`` serves, default configuration, engines on their shared threads) carrying N
streams for ``--seconds`` of wall time, measured over the part after ``--warmup``:

- **shapes**: N ``synthetic:shapes`` streams (the demo world, 320x240 at 10 fps, each its own
  seed) through the bundled caption model ``engines/shapes-git``. The synthetic renderer's cost is
  in the figure, as a camera's decoding would be.
- **describer**: N push streams (as WHIP and websocket ingest feed them), each sent vtest.avi's
  768x576 frames at 10 fps from its own offset (``tools.bench_describer``'s feeder).
- **speech**: N ``synthetic:shapes`` streams that speak the demo narration, speech track only
  (VAD + Whisper, the default speech engine).

A picture stream is **carried** when, in the measured span, every stream gets at least 95 % of
its windows (2 per second at the 0.5 s stride) and nothing is dropped (frames, windows or audio,
any reason). A speech stream is carried when no audio is dropped and every stream's speech
track keeps pace: every stream has speech results and their glass-to-result p95 (newest audio
chunk in → its words out) is at most ``--speech-lag-s`` (default 2 s: two of the track's 1 s
chunks; past it a call for all N streams takes longer than the audio it covers).

Reported per kind and N: windows (or speech results) per stream per second (min and median),
drops by reason, process CPU in cores, the pipeline overhead p50/p95 (glass-to-result minus the
engine call) and glass-to-result p95 (the newest frame of a window or the end of a speech chunk to
its result; these two over the whole run, warm-up included, as bucket upper bounds), and carried
or not; the most streams carried per kind.
``--plot`` draws the share of each stream's windows delivered (min over streams; for speech the
pace kept: the bound ÷ the glass-to-result p95, at most 1) against N.
All figures from one run; the load average is recorded at the start and end. Blocking.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STRIDE_S = 0.5
KINDS = ("shapes", "describer", "speech")
DEFAULT_STREAMS = {"shapes": "8,12,16,20", "describer": "8,12,16,20", "speech": "1,2,4"}


def _load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


async def live_point(kind: str, n: int, seconds: float, warmup_s: float, *, frames: list | None = None,
                     speech_lag_s: float = 2.0, queue_per_stream: int | None = None) -> dict:
    """One measured point: ``n`` live streams of ``kind`` for ``seconds``."""
    from streamcap.core.events import DropEvent, ProgressEvent
    from streamcap.core.types import SPEECH_TRACK, VIDEO_TRACK
    from streamcap.engine.base import load_describer_from_config, load_engine_from_config
    from streamcap.runtime.config import DEMO_SOURCE_URL, load_config
    from streamcap.runtime.metrics import Metrics
    from streamcap.runtime.pipeline import Pipeline

    overrides: dict = {"windows": {"stride_s": STRIDE_S},
                       "pipeline": {"video_engine": "describer" if kind == "describer" else "caption"}}
    if kind == "speech":
        overrides["speech"] = {"enabled": True}
    if queue_per_stream is not None:
        overrides["pipeline"]["engine_queue_per_stream"] = queue_per_stream
    cfg = load_config(None, environ={}, overrides=overrides)
    engine = await asyncio.to_thread(load_engine_from_config, cfg.engine)
    describer = (await asyncio.to_thread(load_describer_from_config, cfg.describer, cfg.engine)
                 if kind == "describer" else None)
    speech_engine = vad_factory = None
    if kind == "speech":
        from streamcap.runtime.speechmodels import load_speech

        speech_engine, vad_factory = await asyncio.to_thread(load_speech, cfg)
    drops: list[DropEvent] = []
    progress: list[tuple[float, ProgressEvent]] = []

    def sink(event) -> None:
        if isinstance(event, DropEvent):
            drops.append(event)
        elif isinstance(event, ProgressEvent):
            progress.append((time.monotonic(), event))

    metrics = Metrics()
    pipeline = Pipeline(cfg, engine, metrics=metrics, describer=describer, speech_engine=speech_engine,
                        vad_factory=vad_factory)
    pipeline.sinks.add("bench", sink)
    ids = [f"{kind}{i}" for i in range(n)]
    base = DEMO_SOURCE_URL.replace("seed=7", "seed={seed}")
    for i, sid in enumerate(ids):
        if kind == "describer":
            pipeline.add_stream(sid, "push:")
        elif kind == "shapes":
            pipeline.add_stream(sid, base.format(seed=100 + i), tracks=(VIDEO_TRACK,))
        else:
            pipeline.add_stream(sid, base.format(seed=100 + i) + "&narration=demo", tracks=(SPEECH_TRACK,))
    run = asyncio.ensure_future(pipeline.run())
    stop = asyncio.Event()
    feeders = []
    if kind == "describer":
        from tools.bench_describer import publish

        assert frames is not None
        feeders = [asyncio.ensure_future(publish(pipeline, sid, frames, (i * len(frames)) // max(n, 1), stop))
                   for i, sid in enumerate(ids)]
    try:
        await asyncio.sleep(warmup_s)  # a benchmark's pacing, not a test's synchronisation
        t0, c0, d0, p0 = time.monotonic(), time.process_time(), len(drops), len(progress)
        h0 = pipeline.health()
        await asyncio.sleep(seconds - warmup_s)
        t1, c1, d1, p1 = time.monotonic(), time.process_time(), len(drops), len(progress)
        h1 = pipeline.health()
    finally:
        stop.set()
        await asyncio.gather(*feeders, return_exceptions=True)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        for e in (engine, describer, speech_engine):
            close = getattr(e, "close", None)
            if close is not None:
                close()
    span = t1 - t0
    track = SPEECH_TRACK if kind == "speech" else VIDEO_TRACK
    label = "describer" if kind == "describer" else "speech" if kind == "speech" else "caption"
    counts: dict[str, int] = defaultdict(int)
    for _, ev in progress[p0:p1]:
        if ev.track == track:
            counts[ev.stream] += 1
    rates = [counts[s] / span for s in ids]
    reasons: dict[str, int] = defaultdict(int)
    for d in drops[d0:d1]:
        reasons[f"{d.unit}:{d.reason.value}"] += d.count
    point = {"kind": kind, "streams": n, "seconds_measured": round(span, 1),
             "per_stream_s_min": round(min(rates), 2), "per_stream_s_median": round(statistics.median(rates), 2),
             "dropped": dict(reasons), "cpu_cores_used": round((c1 - c0) / span, 2),
             "glass_to_result_p95_s": _quantile(metrics.registry, label),
             "overhead_p50_s": _quantile(metrics.registry, label, 0.5, "streamcap_pipeline_overhead_seconds"),
             "overhead_p95_s": _quantile(metrics.registry, label, 0.95, "streamcap_pipeline_overhead_seconds")}
    if kind == "speech":
        g95 = point["glass_to_result_p95_s"]
        # the pace kept: 1 while results come within the bound, less as they fall behind
        point["share_delivered"] = (round(min(1.0, speech_lag_s / g95), 3) if g95 and all(counts[s] for s in ids)
                                    else 0.0)
        point["carried"] = (not reasons and all(counts[s] for s in ids) and g95 is not None
                            and g95 <= speech_lag_s + 1e-9)
    else:
        wanted = 1.0 / STRIDE_S
        point["share_delivered"] = round(min(1.0, min(rates) / wanted), 3)
        point["carried"] = min(rates) >= 0.95 * wanted and not reasons
    point["windows_in_measured_span"] = sum((h1[s]["windows_captioned"] - h0[s]["windows_captioned"]) for s in ids)
    return point


def _quantile(registry, engine: str, q: float = 0.95,
              metric_name: str = "streamcap_window_glass_to_result_seconds") -> float | None:
    """A quantile of a per-engine histogram of the run's registry (its bucket's upper bound)."""
    buckets: list[tuple[float, float]] = []
    for metric in registry.collect():
        if metric.name != metric_name:
            continue
        for s in metric.samples:
            if s.name.endswith("_bucket") and s.labels.get("engine") == engine:
                buckets.append((float(s.labels["le"]), s.value))
    if not buckets:
        return None
    buckets.sort()
    total = buckets[-1][1]
    if total <= 0:
        return None
    for le, count in buckets:
        if count >= q * total:
            return le
    return None


def plot(report: dict, out: Path, width: int = 900, height: int = 480) -> None:
    """Share of each stream's windows delivered (min over streams) against the number of streams."""
    import cv2

    font = cv2.FONT_HERSHEY_SIMPLEX
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, 170, 50, 60
    points = report["points"]
    n_max = max(p["streams"] for p in points) * 1.1

    def xy(n: float, share: float) -> tuple[int, int]:
        return (int(left + n / n_max * (width - left - right)),
                int(height - bottom - share / 1.1 * (height - top - bottom)))

    cv2.line(img, xy(0, 0), xy(n_max, 0), (120, 120, 120), 1)
    cv2.line(img, xy(0, 0), xy(0, 1.1), (120, 120, 120), 1)
    for share in (0.25, 0.5, 0.75, 1.0):
        cv2.line(img, xy(0, share), xy(n_max, share), (232, 232, 232), 1)
        cv2.putText(img, f"{share:.0%}", (18, xy(0, share)[1] + 4), font, 0.4, (90, 90, 90), 1, cv2.LINE_AA)
    x0, y95 = xy(0, 0.95)
    for xx in range(x0, xy(n_max, 0)[0], 12):
        cv2.line(img, (xx, y95), (xx + 6, y95), (0, 0, 0), 1)
    cv2.putText(img, "95 %: carried", (x0 + 6, y95 + 14), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    ticks = sorted({p["streams"] for p in points})
    for n in ticks:
        cv2.putText(img, str(n), (xy(n, 0)[0] - 6, height - bottom + 18), font, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.putText(img, "streams", (width // 2 - 30, height - 15), font, 0.5, (40, 40, 40), 1, cv2.LINE_AA)
    colours = {"shapes": (200, 120, 40), "describer": (40, 150, 40), "speech": (60, 60, 200)}
    for i, kind in enumerate(k for k in KINDS if any(p["kind"] == k for p in points)):
        pts = sorted((p for p in points if p["kind"] == kind), key=lambda p: p["streams"])
        colour = colours[kind]
        prev = None
        for p in pts:
            here = xy(p["streams"], p["share_delivered"])
            if p["carried"]:
                cv2.circle(img, here, 5, colour, -1, cv2.LINE_AA)
            else:  # a cross: not carried
                cv2.line(img, (here[0] - 6, here[1] - 6), (here[0] + 6, here[1] + 6), colour, 2, cv2.LINE_AA)
                cv2.line(img, (here[0] - 6, here[1] + 6), (here[0] + 6, here[1] - 6), colour, 2, cv2.LINE_AA)
            if prev is not None:
                cv2.line(img, prev, here, colour, 2, cv2.LINE_AA)
            prev = here
        best = report["carried"].get(kind, 0)
        cv2.putText(img, f"{kind}: {best} carried", (width - right + 10, top + 20 + 20 * i), font, 0.45, colour, 1,
                    cv2.LINE_AA)
    m = report["machine"]
    cv2.putText(img, "share of each stream's windows delivered, min over streams (dot: carried, cross: not)",
                (left, 22), font, 0.5, (30, 30, 30), 1, cv2.LINE_AA)
    cv2.putText(img, f"{m['cpu_count']} cores, load {m['load_average_start'][0]}-{m.get('load_average_end', ['?'])[0]}; "
                     f"stride {STRIDE_S} s; speech: pace kept ({report.get('speech_lag_s', 2.0):g} s / glass-to-result p95)",
                (left, 40), font, 0.4, (90, 90, 90), 1, cv2.LINE_AA)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), img)


def _ms(bound: float | None) -> str:
    return "–" if bound is None else f"≤ {bound * 1000:g} ms"


def markdown(report: dict) -> str:
    lines = ["| engine | streams | per stream / s (min / median) | dropped | CPU cores | overhead p50 / p95 | "
             "glass-to-result p95 | carried |",
             "|---|---:|---|---|---:|---|---:|---|"]
    for p in report["points"]:
        dropped = ", ".join(f"{v} {k}" for k, v in p["dropped"].items()) or "0"
        g = p["glass_to_result_p95_s"]
        lines.append(f"| {p['kind']} | {p['streams']} | {p['per_stream_s_min']} / {p['per_stream_s_median']} | "
                     f"{dropped} | {p['cpu_cores_used']} | {_ms(p['overhead_p50_s'])} / {_ms(p['overhead_p95_s'])} | "
                     f"{'–' if g is None else f'≤ {g:g} s'} | "
                     f"{'yes' if p['carried'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench_capacity", description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated: shapes, describer, speech")
    for kind in KINDS:
        ap.add_argument(f"--{kind}", default=DEFAULT_STREAMS[kind], help=f"stream counts for {kind}")
    ap.add_argument("--seconds", type=float, default=40.0, help="wall seconds per point (default 40)")
    ap.add_argument("--warmup", type=float, default=12.0, help="seconds before measuring (default 12)")
    ap.add_argument("--speech-lag-s", type=float, default=2.0, help="speech glass-to-result p95 bound (s)")
    ap.add_argument("--queue-per-stream", type=int, help="override pipeline.engine_queue_per_stream")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in kinds if k not in KINDS]
    if bad or args.warmup >= args.seconds:
        print(f"bench_capacity: unknown kinds {bad}" if bad else "bench_capacity: --warmup must be < --seconds",
              file=sys.stderr)
        return 2
    frames = None
    if "describer" in kinds:
        from tools import media
        from tools.bench_describer import load_frames

        frames = load_frames(media.fetch_vtest(Path.home() / ".cache" / "streamcap-test-media"), 40.0)
    report: dict = {"tool": "tools/bench_capacity.py", "stride_s": STRIDE_S, "queue_per_stream": args.queue_per_stream,
                    "speech_lag_s": args.speech_lag_s, "seconds": args.seconds,
                    "warmup_s": args.warmup,
                    "machine": {"cpu_count": os.cpu_count(), "load_average_start": _load_avg()}, "points": []}
    for kind in kinds:
        for n in [int(x) for x in getattr(args, kind).split(",") if x]:
            print(f"bench_capacity: {kind} × {n} for {args.seconds:g} s ...", file=sys.stderr, flush=True)
            point = asyncio.run(live_point(kind, n, args.seconds, args.warmup, frames=frames,
                                           speech_lag_s=args.speech_lag_s,
                                           queue_per_stream=args.queue_per_stream))
            print(json.dumps(point), file=sys.stderr, flush=True)
            report["points"].append(point)
    report["machine"]["load_average_end"] = _load_avg()
    report["carried"] = {k: max((p["streams"] for p in report["points"] if p["kind"] == k and p["carried"]), default=0)
                         for k in kinds}
    table = markdown(report)
    print(table)
    print("most streams carried: " + ", ".join(f"{k} {v}" for k, v in report["carried"].items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(table)
    if args.plot:
        plot(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
