"""What decoding a 1080p30 H.264 stream costs streamcap, with and without converting only the
frames the pipeline keeps (issue 15: decode only what is sampled).

``python -m tools.bench_decode [--seconds 20] [--json F]``

Makes a 1080p30 H.264 clip with FFmpeg (``testsrc2``, moving content, x264 ``veryfast``, a
keyframe every 2 s, no B-frames, as IP cameras send), then measures process CPU seconds per
second of video, all on one thread (``-threads 1`` / PyAV's default single decoder thread):

- ``ffmpeg -f null``: FFmpeg decoding every frame and nothing else (the floor);
- PyAV decode only: every frame decoded, none converted;
- streamcap before: :class:`~streamcap.sources.pyav.PyAVSource` converting every frame to RGB
  and resizing it for the engine (416 px, the scene describer's input);
- thinned: the same source with ``max_fps = 10`` (``windows.max_ingest_fps``): every frame
  decoded, only the kept third converted and resized;
- streamcap now: thinned, and each kept frame scaled (area) to a shorter side of 416 by FFmpeg
  as it converts to RGB (``min_side``), then resized for the engine.

The clip is read as a file (as fast as it decodes), so CPU per second of video is the figure, not
wall time. One run; the load average is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_clip(path: Path, seconds: int) -> None:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise SystemExit("ffmpeg is not installed (Debian package ffmpeg)")
    subprocess.run([ffmpeg, "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=1920x1080:rate=30:duration={seconds}", "-c:v", "libx264",
                    "-preset", "veryfast", "-g", "60", "-bf", "0", "-pix_fmt", "yuv420p", str(path)], check=True)


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def ffmpeg_null(path: Path) -> float:
    before = _child_cpu()
    subprocess.run(["ffmpeg", "-loglevel", "error", "-threads", "1", "-i", str(path), "-f", "null", "-"], check=True)
    return _child_cpu() - before


def pyav_decode_only(path: Path) -> float:
    import av

    start = time.process_time()
    with av.open(str(path)) as c:
        for _ in c.decode(video=0):
            pass
    return time.process_time() - start


def streamcap_source(path: Path, max_fps: float | None, min_side: int | None = None) -> tuple[float, int]:
    from streamcap.core.errors import SourceEnded
    from streamcap.engine.preprocess import Preprocessing, resize_frame
    from streamcap.sources.pyav import PyAVSource
    from streamcap.sources.url import parse_source_url

    pre = Preprocessing(image_size=416, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize="stretch")

    async def run() -> int:
        src = PyAVSource("bench", parse_source_url(str(path)), max_fps=max_fps, min_side=min_side,
                         frame_transform=lambda img: resize_frame(img, pre), handoff_size=8)
        n = 0
        try:
            while True:
                await src.recv()
                n += 1
        except SourceEnded:
            pass
        finally:
            await src.aclose()
        return n

    start = time.process_time()
    frames = asyncio.run(run())
    return time.process_time() - start, frames


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=20, help="clip length")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    out: dict = {"clip": f"1920x1080 30 fps H.264, {args.seconds} s", "cores": os.cpu_count(),
                 "load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        print("making the clip ...", file=sys.stderr)
        make_clip(clip, args.seconds)
        s = args.seconds
        out["ffmpeg_null_cpu_per_s"] = round(ffmpeg_null(clip) / s, 3)
        out["pyav_decode_only_cpu_per_s"] = round(pyav_decode_only(clip) / s, 3)
        cpu, frames = streamcap_source(clip, None)
        out["streamcap_every_frame_cpu_per_s"], out["streamcap_every_frame_frames"] = round(cpu / s, 3), frames
        cpu, frames = streamcap_source(clip, 10.0)
        out["streamcap_10fps_cpu_per_s"], out["streamcap_10fps_frames"] = round(cpu / s, 3), frames
        cpu, frames = streamcap_source(clip, 10.0, 416)
        out["streamcap_10fps_scaled_cpu_per_s"], out["streamcap_10fps_scaled_frames"] = round(cpu / s, 3), frames
    every = out["streamcap_every_frame_cpu_per_s"]
    out["ratio_10fps_vs_every_frame"] = round(out["streamcap_10fps_cpu_per_s"] / every, 3)
    out["ratio_now_vs_every_frame"] = round(out["streamcap_10fps_scaled_cpu_per_s"] / every, 3)
    out["ratio_now_vs_ffmpeg_null"] = round(out["streamcap_10fps_scaled_cpu_per_s"] / out["ffmpeg_null_cpu_per_s"], 3)
    out["load_after"] = os.getloadavg()[0]
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
