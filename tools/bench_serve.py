"""Cluster mode's caption model: in each stream's worker, or one Ray Serve deployment batching
across streams? Measured on the same machine in one run (docs/scale-out.md records the choice).

``python -m tools.bench_serve [--streams 4] [--windows 60] [--engine engines/shapes-git] [--json F]``

Both modes caption the same windows (``frames_per_window`` frames of 64x64 RGB, the pipeline's
resized frames, distinct per stream and window so no frame-feature cache hit flatters either):

- **in-worker**: ``--streams`` Ray actors, each with its own engine (1 ORT thread), each
  captioning its windows one after another, all at once — what a stream worker does.
- **serve**: one Serve deployment (one replica, ``@serve.batch`` up to 4 windows, 5 ms wait,
  ORT threads = the machine's cores) called by ``--streams`` actors at once through a
  deployment handle — windows of different streams batched into one engine call.

Reported per mode: median and p95 latency per window (ms, as the caller sees it), windows per
second over all streams, and the load average. Needs the cluster extra (ray[serve]).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _windows(stream: int, count: int, k: int, size: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(1000 + stream)
    return [[rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(k)] for _ in range(count)]


def _engine(path: str, threads: int):
    from streamcap.runtime.config import EngineConfig
    from streamcap.engine.base import load_engine_from_config

    return load_engine_from_config(EngineConfig(path=path, threads=threads))


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def run(streams: int, windows: int, engine_path: str) -> dict:
    import ray
    from ray import serve

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    probe = _engine(engine_path, 1)
    k, size = probe.frames_per_window, probe.preprocessing.image_size
    probe.close()

    @ray.remote(num_cpus=0)
    class InWorker:
        def __init__(self, stream: int) -> None:
            self.engine = _engine(engine_path, 1)
            self.windows = _windows(stream, windows, k, size)
            self.engine.caption_batch([self.windows[0]])  # warm-up

        def go(self) -> tuple[list[float], float]:
            lat = []
            start = time.perf_counter()
            for w in self.windows:
                t = time.perf_counter()
                self.engine.caption_batch([w])
                lat.append((time.perf_counter() - t) * 1000)
            return lat, time.perf_counter() - start

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
    class Captioner:
        def __init__(self) -> None:
            self.engine = _engine(engine_path, os.cpu_count() or 1)

        @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.005)
        async def __call__(self, batch: list[list[np.ndarray]]) -> list[str]:
            return [r.text for r in self.engine.caption_batch(batch)]

    @ray.remote(num_cpus=0)
    class Caller:
        def __init__(self, stream: int, handle) -> None:
            self.handle = handle
            self.windows = _windows(stream, windows, k, size)

        async def go(self) -> tuple[list[float], float]:
            await self.handle.remote(self.windows[0])  # warm-up
            lat = []
            start = time.perf_counter()
            for w in self.windows:
                t = time.perf_counter()
                await self.handle.remote(w)
                lat.append((time.perf_counter() - t) * 1000)
            return lat, time.perf_counter() - start

    out: dict = {"streams": streams, "windows_per_stream": windows, "engine": engine_path,
                 "frames_per_window": k, "frame_size": size, "cores": os.cpu_count(),
                 "load_before": os.getloadavg()[0]}
    actors = [InWorker.remote(i) for i in range(streams)]
    results = ray.get([a.go.remote() for a in actors])
    out["in_worker"] = _summary(results, streams * windows)
    for a in actors:
        ray.kill(a)
    handle = serve.run(Captioner.bind(), name="bench", route_prefix=None)
    callers = [Caller.remote(i, handle) for i in range(streams)]
    results = ray.get([c.go.remote() for c in callers])
    out["serve"] = _summary(results, streams * windows)
    out["load_after"] = os.getloadavg()[0]
    serve.shutdown()
    ray.shutdown()
    return out


def _summary(results: list[tuple[list[float], float]], total: int) -> dict:
    lat = [x for r, _ in results for x in r]
    wall = max(w for _, w in results)
    return {"median_ms": round(statistics.median(lat), 1), "p95_ms": round(_pct(lat, 0.95), 1),
            "windows_per_s": round(total / wall, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--windows", type=int, default=60, help="windows per stream")
    ap.add_argument("--engine", default=str(ROOT / "engines" / "shapes-git"))
    ap.add_argument("--json", type=Path, help="write the result here too")
    args = ap.parse_args(argv)
    print(f"captioning {args.streams}x{args.windows} windows in-worker, then through Ray Serve ...", file=sys.stderr)
    out = run(args.streams, args.windows, args.engine)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    a, b = out["in_worker"], out["serve"]
    print(f"\n| mode | median ms/window | p95 ms | windows/s |\n|---|---|---|---|\n"
          f"| in-worker ({args.streams} engines, 1 thread each) | {a['median_ms']} | {a['p95_ms']} | "
          f"{a['windows_per_s']} |\n| Ray Serve (1 replica, batch ≤ 4) | {b['median_ms']} | {b['p95_ms']} | "
          f"{b['windows_per_s']} |", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
