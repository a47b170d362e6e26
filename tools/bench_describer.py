"""What the scene describer costs per window, and how many live streams one machine carries.

``python -m tools.bench_describer [--out DIR] [--streams 4,8,12,16] [--seconds 25] [--threads 0]``
writes ``DIR/bench_describer.json`` and prints a Markdown summary (docs/benchmarks.md).

1. **Per window** (the engine alone, vtest.avi's first 40 s at 416x416, windows every 0.5 s of
   2 s with 4 frames 0.5 s apart as the pipeline samples them, frames named by their index as the pipeline names them): wall and process
   CPU milliseconds per window with the frame-detection cache and without it (every frame
   detected again), median over the windows, and the cache's hit rate.
2. **Live streams** (the real pipeline: N push streams, as WHIP and websocket ingest feed them,
   each sent vtest.avi's 768x576 frames at 10 fps of wall time from its own offset in the clip;
   each frame resized off the event loop as the server does): for each N, over the last
   ``seconds - warm-up`` seconds, windows described per stream per second (2.0 at stride 0.5 is
   keeping up), windows dropped (any reason), and process CPU. A stream count is carried when
   every stream gets at least 95 % of its windows and nothing is dropped. Decoding the camera's
   video is not in it (push streams come decoded): PyAV decodes vtest.avi at about 1-2 ms a
   frame here, 1-2 % of a core per 10 fps stream, measured in the same run.

All figures come from one run; the machine's load average is recorded at the start and end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FPS = 10.0
STRIDE_S = 0.5
WINDOW_S = 2.0


def load_frames(clip: Path, seconds: float) -> list[np.ndarray]:
    """The clip's first ``seconds`` as RGB frames at their own size."""
    cap = cv2.VideoCapture(str(clip))
    frames = []
    while len(frames) < seconds * FPS:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


def decode_ms_per_frame(clip: Path) -> float:
    """PyAV decoding (and converting to RGB) of the clip: median ms per frame."""
    import av

    times = []
    with av.open(str(clip)) as container:
        it = container.decode(video=0)
        while True:
            t0 = time.perf_counter()
            try:
                frame = next(it)
            except StopIteration:
                break
            frame.to_ndarray(format="rgb24")
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def per_window(engine, frames: list[np.ndarray], *, cache: bool) -> dict:
    from streamcap.engine.preprocess import resize_frame

    small = [resize_frame(f, engine.preprocessing) for f in frames]
    k = engine.frames_per_window
    engine.cache.clear()
    capacity = engine.cache.capacity
    if not cache:
        engine.cache.capacity = 0
    hits0, misses0 = engine.cache.hits, engine.cache.misses
    walls, cpus = [], []
    start = 0.0
    try:
        while start + WINDOW_S <= len(frames) / FPS:
            # the pipeline's grid sampling (streamcap.core.windowing): the newest frame at the end
            idx = [min(len(frames) - 1, round((start + WINDOW_S - (k - 1 - i) * WINDOW_S / k) * FPS)) for i in range(k)]
            t0, c0 = time.perf_counter(), time.process_time()
            engine.caption_batch([[small[i] for i in idx]], keys=[[("bench", i) for i in idx]], aspect=4 / 3)
            walls.append((time.perf_counter() - t0) * 1000)
            cpus.append((time.process_time() - c0) * 1000)
            start += STRIDE_S
    finally:
        engine.cache.capacity = capacity
    hits, misses = engine.cache.hits - hits0, engine.cache.misses - misses0
    return {"cache": cache, "windows": len(walls), "wall_ms_median": round(statistics.median(walls), 1),
            "cpu_ms_median": round(statistics.median(cpus), 1),
            "hit_rate": round(hits / (hits + misses), 3) if cache and hits + misses else 0.0}


async def publish(pipeline, sid: str, frames: list[np.ndarray], offset: int, stop: asyncio.Event) -> None:
    """Push ``frames`` into stream ``sid``'s push source at ``FPS`` of wall time from ``offset``,
    each resized off the event loop as the server does, until ``stop`` is set."""
    source = pipeline.push_source(sid, create=False)
    t0 = time.monotonic()
    j = 0
    while not stop.is_set():
        image = await asyncio.to_thread(source.prepare, frames[(offset + j) % len(frames)])
        source.push(image, pts_s=j / FPS, publisher="bench")
        j += 1
        delay = t0 + j / FPS - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass


async def live_streams(n: int, frames: list[np.ndarray], seconds: float, warmup_s: float, threads: int) -> dict:
    from streamcap.core.events import DropEvent
    from streamcap.engine.base import load_describer_from_config, load_engine_from_config
    from streamcap.runtime.config import load_config
    from streamcap.runtime.metrics import Metrics
    from streamcap.runtime.pipeline import Pipeline

    cfg = load_config(None, environ={}, overrides={
        "windows": {"stride_s": STRIDE_S}, "pipeline": {"video_engine": "describer"},
        "describer": {"threads": threads}, "engine": {"threads": threads}})
    engine = await asyncio.to_thread(load_engine_from_config, cfg.engine)
    describer = await asyncio.to_thread(load_describer_from_config, cfg.describer, cfg.engine)
    drops: list = []
    pipeline = Pipeline(cfg, engine, metrics=Metrics(), describer=describer)
    pipeline.sinks.add("drops", lambda e: drops.append(e) if isinstance(e, DropEvent) else None)
    ids = [f"cam{i}" for i in range(n)]
    for sid in ids:
        pipeline.add_stream(sid, "push:")
    run = asyncio.ensure_future(pipeline.run())
    stop = asyncio.Event()

    publishers = [asyncio.ensure_future(publish(pipeline, sid, frames, (i * len(frames)) // max(n, 1), stop))
                  for i, sid in enumerate(ids)]
    try:
        await asyncio.sleep(warmup_s)  # a benchmark's pacing, not a test's synchronisation
        h0 = pipeline.health()
        d0, t0, c0 = len(drops), time.monotonic(), time.process_time()
        await asyncio.sleep(seconds - warmup_s)
        h1 = pipeline.health()
        d1, t1, c1 = len(drops), time.monotonic(), time.process_time()
    finally:
        stop.set()
        await asyncio.gather(*publishers, return_exceptions=True)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    span = t1 - t0
    rates = [(h1[s]["windows_captioned"] - h0[s]["windows_captioned"]) / span for s in ids]
    reasons: dict[str, int] = {}
    for d in drops[d0:d1]:
        reasons[d.reason.value] = reasons.get(d.reason.value, 0) + d.count
    wanted = 1.0 / STRIDE_S
    return {"streams": n, "seconds_measured": round(span, 1),
            "windows_per_stream_s_min": round(min(rates), 2), "windows_per_stream_s_median": round(statistics.median(rates), 2),
            "dropped": reasons, "cpu_cores_used": round((c1 - c0) / span, 2),
            "carried": min(rates) >= 0.95 * wanted and not reasons}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_describer")
    ap.add_argument("--clip", type=Path, help="default: vtest.avi from Debian's opencv-doc")
    ap.add_argument("--streams", default="4,8,12,16")
    ap.add_argument("--seconds", type=float, default=25.0)
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = all cores)")
    args = ap.parse_args()
    clip = args.clip
    if clip is None:
        from tools import media

        clip = media.fetch_vtest(Path.home() / ".cache" / "streamcap-test-media")
    from streamcap.engine.base import load_engine
    from streamcap.runtime.config import DEFAULT_DESCRIBER

    load0 = os.getloadavg()
    frames = load_frames(clip, 40.0)
    engine = load_engine(DEFAULT_DESCRIBER, intra_op_threads=args.threads or (os.cpu_count() or 1), frame_cache_size=1024)
    result: dict = {"cores": os.cpu_count(), "clip": clip.name, "frames_per_window": engine.frames_per_window,
                    "stride_s": STRIDE_S, "decode_ms_per_frame": round(decode_ms_per_frame(clip), 2)}
    result["per_window"] = [per_window(engine, frames, cache=True), per_window(engine, frames, cache=False)]
    print(json.dumps(result["per_window"]), file=sys.stderr)
    engine.close()
    result["live"] = []
    for n in [int(x) for x in args.streams.split(",") if x]:
        r = asyncio.run(live_streams(n, frames, args.seconds, args.warmup, args.threads))
        print(json.dumps(r), file=sys.stderr)
        result["live"].append(r)
    result["load_average"] = {"start": [round(x, 2) for x in load0], "end": [round(x, 2) for x in os.getloadavg()]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_describer.json").write_text(json.dumps(result, indent=2) + "\n")
    pw = {r["cache"]: r for r in result["per_window"]}
    print(f"per window (median of {pw[True]['windows']}): with the frame cache {pw[True]['wall_ms_median']} ms wall, "
          f"{pw[True]['cpu_ms_median']} ms CPU, hit rate {pw[True]['hit_rate']:.0%}; without it "
          f"{pw[False]['wall_ms_median']} ms wall, {pw[False]['cpu_ms_median']} ms CPU; "
          f"decode {result['decode_ms_per_frame']} ms/frame")
    print("\n| streams | windows/stream/s (min / median) | dropped | CPU cores | carried |\n|---|---|---|---|---|")
    for r in result["live"]:
        print(f"| {r['streams']} | {r['windows_per_stream_s_min']} / {r['windows_per_stream_s_median']} | "
              f"{r['dropped'] or 0} | {r['cpu_cores_used']} | {'yes' if r['carried'] else 'no'} |")
    print(f"\nload average start {result['load_average']['start']}, end {result['load_average']['end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
