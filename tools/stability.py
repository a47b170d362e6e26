#!/usr/bin/env python
"""Caption stability through the whole pipeline, scored against scripted ground truth.

Synthetic storylines (``streamcap.demo.synthetic.Storyline``: a new scene every ``scene_s`` seconds,
ground-truth captions known) are rendered to H.264 files with ``tools.media.render_storyline_file``
and captioned by the demo engine (``engines/shapes-git``) in ONNX Runtime, from two kinds of source:

  file   the mp4 itself, replayed through the pure per-stream core on simulated time
         (:mod:`streamcap.runtime.replay`: the live pipeline's own decoder, ring, windows,
         cuts and stabiliser; one window per engine call, deterministic, no event loop)
  rtsp   the same kind of file served by the loopback GStreamer RTSP server of
         ``tools/rtsp.py`` (real time: keep it short) through the real live
         :class:`~streamcap.runtime.pipeline.Pipeline`, with the live defaults

Both record the processor's events (a sink for the live run): each window's raw text comes with
its progress event, so the stabiliser's finals can be compared with showing raw per-window
captions. Scores (definitions in
docs/stability.md): ``final_accuracy``, ``spurious_per_min``, ``change_delay_s_p95`` (and
median), ``raw_spurious_per_min``, per run, per source and overall; PASS/FAIL against the targets.

Usage:
  python tools/stability.py                              # file: seeds 11-16 × 240 s; rtsp: 90 s (~10 min)
  python tools/stability.py --quick --json out.json      # file only, one 120 s storyline (~15 s CPU)
  python tools/stability.py --source rtsp --rtsp-duration-s 60
  python tools/stability.py --json stability.json --markdown stability.md

Exit status: 0 when every run completed (targets missed are reported, not an error), 2 when a
prerequisite (ffmpeg, the GStreamer RTSP server, the engine folder) is missing or a run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamcap.runtime.config import Config, load_config
from streamcap.core.stabilizer import normalize_text
from streamcap.demo.synthetic import Storyline
from streamcap.core.types import CaptionState, StreamState

SOURCES = ("file", "rtsp")
DEFAULT_SEEDS = "11,12,13,14,15,16"
#: Targets: final accuracy, spurious final changes per minute, change delay (p95 ≤ window + stride),
#: and the stabiliser must show fewer spurious changes than raw per-window captions.
TARGET_FINAL_ACCURACY = 0.95
TARGET_SPURIOUS_PER_MIN = 0.5
RENDER_FPS = 10.0
RENDER_SIZE = (320, 240)
RTSP_TAIL_S = 10.0  # the served file runs this much past the measured span (a file does not loop)
RTSP_SLACK_S = 60.0  # wall time allowed beyond the media span before an RTSP run is given up
EPS = 1e-6


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class PrerequisiteError(RuntimeError):
    """Something the measurement needs is missing; the message says what to install."""


# ---------------------------------------------------------------- capture


@dataclass(frozen=True)
class RawWindow:
    """One window's engine text, as if it were shown the moment the window was captioned."""

    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class PublishedFinal:
    """A FINAL as the stabiliser published it: ``publish_s`` is the media time of the end of the
    window that made it final; ``start_s``/``end_s`` is its full span once closed."""

    seq: int
    text: str
    publish_s: float
    start_s: float
    end_s: float
    lag_s: float  # wall time from decoding the window's newest frame to publishing (live only)


@dataclass
class Capture:
    stream: str
    raw: list[RawWindow] = field(default_factory=list)
    finals: list[PublishedFinal] = field(default_factory=list)
    windows_dropped: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    interruptions: list[str] = field(default_factory=list)  # stalls and reconnects (live)
    wall_s: float = 0.0


def replay_run(engine, config: Config, path: str, stream: str, *, progress_total_s: float,
               show_progress: bool, desc: str) -> Capture:
    """Caption a file through a :class:`~streamcap.core.processor.StreamProcessor` on simulated time
    (:mod:`streamcap.runtime.replay`): deterministic, no event loop, as fast as the engine goes."""
    from streamcap.core.processor import StreamProcessor
    from streamcap.runtime.replay import file_frames, replay
    from streamcap.runtime.settings import processor_settings

    processor = StreamProcessor(processor_settings(config, stream, engine, live=False, collect_finals=True,
                                                   health=False))
    bar = _bar(progress_total_s, desc) if show_progress else None

    def frames():
        for frame in file_frames(path, stream, engine.preprocessing):
            if bar is not None:
                bar.update(max(0.0, min(frame.pts_s, progress_total_s) - bar.n))
            yield frame

    try:
        run = replay(frames(), processor, engine)
    finally:
        if bar is not None:
            bar.close()
    cap = Capture(stream)
    _record(cap, run.events, lags=None)
    _close_spans(cap, processor)
    cap.wall_s = run.wall_s
    return cap


def _bar(total_s: float, desc: str):
    from tqdm import tqdm

    return tqdm(total=round(total_s, 1), unit="s", desc=desc, file=sys.stderr, leave=False,
                bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} media s [{elapsed}<{remaining}]")


def _record(cap: Capture, events, lags: dict[int, float] | None) -> None:
    """Raw windows, published finals, drops, errors and interruptions from processor events."""
    from streamcap.core.events import CaptionEvent, DropEvent, ProgressEvent, StatusEvent

    for e in events:
        if isinstance(e, ProgressEvent):
            cap.raw.append(RawWindow(e.start_s, e.media_s, e.text))
        elif isinstance(e, CaptionEvent) and e.caption.state is CaptionState.FINAL:
            c = e.caption
            lag = 0.0 if lags is None else lags.get(c.seq, 0.0)
            cap.finals.append(PublishedFinal(c.seq, c.text, c.end_s, c.start_s, c.end_s, lag))
        elif isinstance(e, DropEvent) and e.unit == "window":
            cap.windows_dropped[e.reason.value] = cap.windows_dropped.get(e.reason.value, 0) + e.count
        elif isinstance(e, StatusEvent):
            s = e.status
            if s.state is StreamState.ERROR:
                cap.errors.append(s.detail)
            elif s.state in (StreamState.STALLED, StreamState.RECONNECTING):
                # a new connection restarts the served file while media time keeps counting: the
                # ground truth no longer lines up, so the run is reported as interrupted
                cap.interruptions.append(f"{s.state.value}: {s.detail}")


def _close_spans(cap: Capture, processor) -> None:
    """Each published final's full span, once closed (or as far as it got, if still open)."""
    spans = {c.seq: c for c in processor.finals()}
    open_final = processor.current_final()
    if open_final is not None:
        spans[open_final.seq] = open_final
    cap.finals = [PublishedFinal(f.seq, f.text, f.publish_s, spans.get(f.seq, f).start_s,
                                 spans.get(f.seq, f).end_s, f.lag_s) for f in cap.finals]


async def live_run(engine, config: Config, url: str, stream: str, *, until_s: float, timeout_s: float,
                   progress_total_s: float, show_progress: bool, desc: str) -> Capture:
    """Caption a live URL through the real :class:`~streamcap.runtime.pipeline.Pipeline` until a
    window ending at or after ``until_s`` has been captioned (or the stream fails, or ``timeout_s``
    passes); events are recorded by a sink. The final still open keeps the span it reached."""
    from streamcap.core.events import CaptionEvent, ProgressEvent, StatusEvent
    from streamcap.runtime.metrics import Metrics
    from streamcap.runtime.pipeline import Pipeline

    cap = Capture(stream)
    events: list = []
    lags: dict[int, float] = {}
    done = asyncio.Event()
    bar = _bar(progress_total_s, desc) if show_progress else None

    def record(e) -> None:
        events.append(e)
        if isinstance(e, CaptionEvent) and e.caption.state is CaptionState.FINAL:
            lags[e.caption.seq] = max(0.0, (time.monotonic_ns() - e.caption.capture_ns) / 1e9)
        elif isinstance(e, StatusEvent) and e.status.state in (StreamState.ERROR, StreamState.ENDED):
            done.set()
        elif isinstance(e, ProgressEvent):
            if bar is not None:
                bar.update(max(0.0, min(e.media_s, progress_total_s) - bar.n))
            if e.media_s >= until_s - EPS:
                done.set()

    pipeline = Pipeline(config, engine, metrics=Metrics(), sinks={"stability": record}, collect_finals=True)
    runner = pipeline.add_stream(stream, url)
    t0 = time.perf_counter()
    try:
        task = asyncio.create_task(pipeline.run(), name=f"pipeline-{stream}")
        waiter = asyncio.create_task(done.wait())
        await asyncio.wait({task, waiter}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        if bar is not None:
            bar.close()
    cap.wall_s = time.perf_counter() - t0
    _record(cap, events, lags)
    _close_spans(cap, runner.processor)
    return cap


# ---------------------------------------------------------------- scoring (pure)


def scene_of_window(story: Storyline, end_s: float, window_s: float) -> int:
    """The scene a change published at window end ``end_s`` is attributed to: the scene playing at
    the middle of that window, i.e. the one covering most of it (ties: the later)."""
    return story.index_at(end_s - window_s / 2 + EPS)


def majority_scene(story: Storyline, start_s: float, end_s: float) -> int:
    """The scene covering the largest part of ``[start_s, end_s]`` (ties: the later)."""
    s = story.scene_s
    first, last = story.index_at(start_s + EPS), story.index_at(max(start_s, end_s - EPS))
    best, best_overlap = first, -1.0
    for i in range(first, last + 1):
        overlap = min(end_s, (i + 1) * s) - max(start_s, i * s)
        if overlap >= best_overlap - EPS:
            best, best_overlap = i, overlap
    return best


def scene_truth(story: Storyline, index: int) -> str:
    # consecutive scenes always differ, and objects never swap left/right within a scene, so one
    # caption holds for the whole scene
    return story.scene(index).caption(0.0)


def count_changes(events: list[tuple[float, str]], story: Storyline, window_s: float
                  ) -> tuple[int, int, list[tuple[float, str]]]:
    """``events``: (publish media time, normalised text) in publish order. A change is an event
    whose text differs from the one before. Returns (changes, spurious, the spurious ones):
    per scene, the first change of a scene that starts with a cut is explained by it; every
    other change (a second change in the scene, or any change in the first scene) is spurious."""
    per_scene: dict[int, int] = {}
    spurious: list[tuple[float, str]] = []
    changes = 0
    for (_, before), (t, text) in itertools.pairwise(events):
        if text == before:
            continue
        changes += 1
        i = scene_of_window(story, t, window_s)
        per_scene[i] = per_scene.get(i, 0) + 1
        if i == 0 or per_scene[i] > 1:
            spurious.append((t, text))
    return changes, len(spurious), spurious


def nearest_rank(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value that at least ``q`` % of ``values`` do not exceed."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def score_run(cap: Capture, story: Storyline, *, window_s: float, stride_s: float,
              media_end_s: float | None = None) -> dict:
    """Score one capture against its storyline over media ``[0, media_end_s]`` (default: the end
    of the last captioned window)."""
    raw_all = cap.raw
    media_s = media_end_s if media_end_s is not None else (raw_all[-1].end_s if raw_all else 0.0)
    if raw_all:
        media_s = min(media_s, raw_all[-1].end_s)
    raw = [w for w in raw_all if w.end_s <= media_s + EPS]
    finals = [f for f in cap.finals if f.publish_s <= media_s + EPS]
    minutes = media_s / 60.0
    s = story.scene_s

    # final accuracy: each final's full span → the scene covering most of it → its caption
    rows = []
    for f in finals:
        end = min(f.end_s, media_s)
        i = majority_scene(story, f.start_s, end)
        truth = scene_truth(story, i)
        rows.append({"seq": f.seq, "text": f.text, "publish_s": round(f.publish_s, 3),
                     "start_s": round(f.start_s, 3), "end_s": round(end, 3), "scene": i, "truth": truth,
                     "correct": normalize_text(f.text) == normalize_text(truth)})
    correct = sum(r["correct"] for r in rows)

    # spurious changes, for finals and for raw windows
    final_events = [(f.publish_s, normalize_text(f.text)) for f in finals]
    changes, spurious, spurious_list = count_changes(final_events, story, window_s)
    raw_events = [(w.end_s, normalize_text(w.text)) for w in raw]
    raw_changes, raw_spurious, _ = count_changes(raw_events, story, window_s)
    raw_correct = sum(normalize_text(w.text) == normalize_text(story.caption_for_window(w.start_s, w.end_s))
                      for w in raw)

    # change delay: cut → first final with the new scene's caption (publish media time)
    delays: list[float | None] = []
    cuts = [c for c in story.scene_changes(media_s) if c + 2 * (window_s + stride_s) <= media_s + EPS]
    for c in cuts:
        i = story.index_at(c + EPS)
        truth = normalize_text(scene_truth(story, i))
        horizon = c + s + window_s  # past this, windows are mostly the next scene's
        hit = next((f.publish_s for f in finals
                    if c < f.publish_s <= horizon and normalize_text(f.text) == truth), None)
        delays.append(None if hit is None else round(hit - c, 3))
    found = [d for d in delays if d is not None]
    lags = [f.lag_s for f in finals]
    return {
        "media_s": round(media_s, 3),
        "media_min": round(minutes, 4),
        "scenes": story.index_at(max(0.0, media_s - EPS)) + 1,
        "cuts_scored": len(cuts),
        "windows": len(raw),
        "windows_dropped": dict(cap.windows_dropped),
        "finals": len(finals),
        "finals_correct": correct,
        "final_accuracy": correct / len(finals) if finals else None,
        "final_changes": changes,
        "spurious_changes": spurious,
        "spurious_per_min": spurious / minutes if minutes else None,
        "spurious_finals": [{"publish_s": round(t, 3), "text": x} for t, x in spurious_list],
        "change_delays_s": delays,
        "changes_missed": len(delays) - len(found),
        "change_delay_s_median": nearest_rank(found, 50) if found else None,
        "change_delay_s_p95": nearest_rank(found, 95) if found else None,
        "change_delay_s_max": max(found) if found else None,
        "raw_changes": raw_changes,
        "raw_spurious_changes": raw_spurious,
        "raw_spurious_per_min": raw_spurious / minutes if minutes else None,
        "raw_window_accuracy": raw_correct / len(raw) if raw else None,
        "final_publish_lag_s_median": nearest_rank(lags, 50) if lags else None,
        "final_publish_lag_s_p95": nearest_rank(lags, 95) if lags else None,
        "final_rows": rows,
    }


def pool(scores: list[dict]) -> dict:
    """Pool runs: counts add up, rates are total events over total minutes, delays are pooled."""
    minutes = sum(r["media_min"] for r in scores)
    finals = sum(r["finals"] for r in scores)
    correct = sum(r["finals_correct"] for r in scores)
    windows = sum(r["windows"] for r in scores)
    raw_correct = sum(round(r["raw_window_accuracy"] * r["windows"]) for r in scores if r["windows"])
    spurious = sum(r["spurious_changes"] for r in scores)
    raw_spurious = sum(r["raw_spurious_changes"] for r in scores)
    delays = [d for r in scores for d in r["change_delays_s"]]
    found = [d for d in delays if d is not None]
    dropped: dict[str, int] = {}
    for r in scores:
        for k, v in r["windows_dropped"].items():
            dropped[k] = dropped.get(k, 0) + v
    return {
        "runs": len(scores),
        "media_min": round(minutes, 3),
        "scenes": sum(r["scenes"] for r in scores),
        "cuts_scored": len(delays),
        "windows": windows,
        "windows_dropped": dropped,
        "finals": finals,
        "finals_correct": correct,
        "final_accuracy": correct / finals if finals else None,
        "spurious_changes": spurious,
        "spurious_per_min": spurious / minutes if minutes else None,
        "changes_missed": sum(r["changes_missed"] for r in scores),
        "change_delay_s_median": nearest_rank(found, 50) if found else None,
        "change_delay_s_p95": nearest_rank(found, 95) if found else None,
        "change_delay_s_max": max(found) if found else None,
        "raw_spurious_changes": raw_spurious,
        "raw_spurious_per_min": raw_spurious / minutes if minutes else None,
        "raw_window_accuracy": raw_correct / windows if windows else None,
    }


def check_targets(summary: dict, window_s: float, stride_s: float) -> dict[str, bool]:
    acc, spm, p95, raw = (summary["final_accuracy"], summary["spurious_per_min"],
                          summary["change_delay_s_p95"], summary["raw_spurious_per_min"])
    return {
        "final_accuracy": acc is not None and acc >= TARGET_FINAL_ACCURACY,
        "spurious_per_min": spm is not None and spm <= TARGET_SPURIOUS_PER_MIN + EPS,
        "change_delay_s_p95": p95 is not None and p95 <= window_s + stride_s + EPS,
        "fewer_spurious_than_raw": spm is not None and raw is not None and spm < raw,
    }


# ---------------------------------------------------------------- runs


def check_prerequisites(sources: list[str], engine_path: str) -> None:
    if shutil.which("ffmpeg") is None:
        raise PrerequisiteError("ffmpeg not found on PATH (renders the storylines): install the Debian "
                                "package 'ffmpeg' (tools/system-deps.sh installs everything the tests need)")
    if not (Path(engine_path) / "engine.json").is_file():
        raise PrerequisiteError(f"no engine at {engine_path} (engine.json missing)")
    if "rtsp" in sources:
        from tools.rtsp import rtsp_server_available

        why = rtsp_server_available()
        if why is not None:
            raise PrerequisiteError(f"--source rtsp needs the loopback RTSP server: {why}")


def build_config(engine_path: str, *, stride_s: float | None, agree: int | None, file: bool,
                 beams: int | None = None) -> Config:
    overrides: dict = {"engine": {"path": engine_path}}
    if beams is not None:
        overrides["engine"]["num_beams"] = beams
    if file:  # as `streamcap caption`: one window per call, so a file always gives the same captions
        overrides["engine"]["max_batch"] = 1
    if stride_s is not None:
        overrides["windows"] = {"stride_s": stride_s}
    if agree is not None:
        overrides["stabilizer"] = {"agree": agree}
    return load_config(None, environ={}, overrides=overrides)


def storyline_file(cache: Path, seed: int, duration_s: float, scene_s: float) -> tuple[Path, Storyline, bool]:
    """The rendered storyline (from the cache when the renderer, the encoder settings and the
    parameters are unchanged) and its ground truth; the flag says whether it was rendered now."""
    from tools.media import MediaToolError, render_storyline_file

    digest = hashlib.sha256()
    for part in ("streamcap/demo/synthetic.py", "tools/media.py"):
        digest.update((ROOT / part).read_bytes())
    digest.update(repr((seed, duration_s, RENDER_FPS, RENDER_SIZE, scene_s)).encode())
    path = cache / f"storyline-s{seed}-{duration_s:g}s-{digest.hexdigest()[:12]}.mp4"
    w, h = RENDER_SIZE
    if path.is_file():
        return path, Storyline(seed, scene_s, aspect=w / h), False
    try:
        story = render_storyline_file(path, seed=seed, duration_s=duration_s, fps=RENDER_FPS,
                                      size=RENDER_SIZE, scene_s=scene_s)
    except MediaToolError as e:
        raise PrerequisiteError(str(e)) from e
    return path, story, True


def run_one(source: str, seed: int, duration_s: float, args: argparse.Namespace, engine, run_no: int) -> dict:
    cfg = build_config(args.engine, stride_s=args.stride_s, agree=args.agree, file=source == "file",
                       beams=args.beams)
    window_s = cfg.windows.window_s or engine.window_s
    stride_s = cfg.windows.stride_s
    stream = f"{source}-s{seed}-{run_no}"  # unique per run: the frame cache is keyed by stream id
    render_s = duration_s + (RTSP_TAIL_S if source == "rtsp" else 0.0)
    t0 = time.perf_counter()
    media_path, story, rendered = storyline_file(args.cache, seed, render_s, args.scene_s)
    how = f"rendered in {time.perf_counter() - t0:.1f} s" if rendered else "cached"
    log(f"[{stream}] storyline seed {seed}, {render_s:g} s ({how}); captioning "
        f"({'in real time' if source == 'rtsp' else 'as fast as the engine goes'}) ...")
    common = {"progress_total_s": duration_s, "show_progress": args.progress, "desc": stream}
    if source == "file":
        cap = replay_run(engine, cfg, str(media_path), stream, **common)
    else:
        from tools.rtsp import RtspServer, RtspServerError

        server = RtspServer({"story": media_path})
        try:
            try:
                server.start()
            except RtspServerError as e:
                raise PrerequisiteError(str(e)) from e
            cap = asyncio.run(live_run(engine, cfg, server.url("story"), stream, until_s=duration_s,
                                       timeout_s=duration_s + RTSP_SLACK_S, **common))
        finally:
            server.close()
    if cap.errors:
        raise RuntimeError(f"[{stream}] the stream failed: {cap.errors[0]}")
    if not cap.raw:
        raise RuntimeError(f"[{stream}] no window was captioned")
    if cap.interruptions:
        raise RuntimeError(f"[{stream}] the stream was interrupted ({cap.interruptions[0]}): its media "
                           "time no longer matches the storyline; run again on a less busy machine")
    if source == "rtsp" and cap.raw[-1].end_s < duration_s - EPS:
        raise RuntimeError(f"[{stream}] reached only {cap.raw[-1].end_s:.1f} of {duration_s:.0f} media s "
                           f"in {cap.wall_s:.0f} s")
    score = score_run(cap, story, window_s=window_s, stride_s=stride_s,
                      media_end_s=duration_s if source == "rtsp" else None)
    if source == "file":  # a file is decoded ahead of the engine: wall-clock lag means nothing there
        score["final_publish_lag_s_median"] = score["final_publish_lag_s_p95"] = None
    acc = score["final_accuracy"]
    log(f"[{stream}] {score['media_s']:.0f} media s in {cap.wall_s:.1f} s: {score['finals']} finals, accuracy "
        f"{acc:.3f}, spurious {score['spurious_changes']} ({score['spurious_per_min']:.2f}/min, raw "
        f"{score['raw_spurious_per_min']:.2f}/min), delay p95 {_fmt_s(score['change_delay_s_p95'])}, "
        f"missed {score['changes_missed']}, windows dropped {sum(score['windows_dropped'].values())}")
    return {"source": source, "seed": seed, "duration_s": duration_s, "scene_s": args.scene_s,
            "window_s": window_s, "stride_s": stride_s, "agree": cfg.stabilizer.agree,
            "max_batch": cfg.engine.max_batch, "wall_s": round(cap.wall_s, 2), **score}


# ---------------------------------------------------------------- report


def _fmt_s(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f} s"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _num(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown(report: dict) -> str:
    w, st = report["window_s"], report["stride_s"]
    limit = w + st
    groups = [("overall", report)] + [(src, report["sources"][src]) for src in report["sources"]]
    per_source = ", ".join(f"{src}: {g['media_min']:.1f} min" for src, g in report["sources"].items())
    lines = [
        (f"Window {w:g} s, stride {st:g} s, agree {report['agree']}, scenes of {report['scene_s']:g} s; "
         f"{report['media_min']:.1f} min of media in {report['runs']} run(s) ({per_source})."),
        "",
        "| target | goal | " + " | ".join(name for name, _ in groups) + " |",
        "|---|---|" + "---|" * len(groups),
    ]
    rows = [
        ("final accuracy", f"≥ {100 * TARGET_FINAL_ACCURACY:.0f} %", "final_accuracy",
         lambda g: f"{_pct(g['final_accuracy'])} ({g['finals_correct']}/{g['finals']})"),
        ("spurious final changes", f"≤ {TARGET_SPURIOUS_PER_MIN:g} / min", "spurious_per_min",
         lambda g: f"{_num(g['spurious_per_min'])} / min ({g['spurious_changes']})"),
        ("change delay p95", f"≤ {limit:g} s (window + stride)", "change_delay_s_p95",
         lambda g: f"{_fmt_s(g['change_delay_s_p95'])} (median {_fmt_s(g['change_delay_s_median'])}, "
                   f"correct final after {g['cuts_scored'] - g['changes_missed']}/{g['cuts_scored']} cuts)"),
        ("stabiliser vs raw windows", "fewer spurious changes", "fewer_spurious_than_raw",
         lambda g: f"{_num(g['spurious_per_min'])} vs {_num(g['raw_spurious_per_min'])} / min"),
    ]
    for label, goal, key, cell in rows:
        cells = [f"{cell(g)} **{'PASS' if g['targets_met'][key] else 'FAIL'}**" for _, g in groups]
        lines.append(f"| {label} | {goal} | " + " | ".join(cells) + " |")
    lines += [
        "",
        ("| run | media min | scenes | finals | final accuracy | spurious / min | delay median | delay p95 | "
         "missed cuts | raw spurious / min | raw window accuracy | windows dropped | publish lag p95 | wall s |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["runs_detail"]:
        dropped = sum(r["windows_dropped"].values())
        lines.append(
            f"| {r['source']} seed {r['seed']} | {r['media_min']:.2f} | {r['scenes']} | {r['finals']} | "
            f"{_pct(r['final_accuracy'])} | {_num(r['spurious_per_min'])} | {_fmt_s(r['change_delay_s_median'])} | "
            f"{_fmt_s(r['change_delay_s_p95'])} | {r['changes_missed']} | {_num(r['raw_spurious_per_min'])} | "
            f"{_pct(r['raw_window_accuracy'])} | {dropped} | {_fmt_s(r['final_publish_lag_s_p95'])} | "
            f"{r['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def machine_info() -> dict:
    return {"cpu_count": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "os": platform.platform(), "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=["file", "rtsp", "both"], help="default both (file with --quick)")
    ap.add_argument("--duration-s", type=float, help="media seconds per file storyline (default 240; 120 with --quick)")
    ap.add_argument("--rtsp-duration-s", type=float, default=90.0,
                    help="media seconds of the RTSP run (real time; default 90)")
    ap.add_argument("--seeds", help=f"storyline seeds for the file runs, comma-separated (default {DEFAULT_SEEDS}; 11 with "
                                    "--quick); the RTSP run uses the first")
    ap.add_argument("--scene-s", type=float, default=6.0, help="seconds per scene (default 6)")
    ap.add_argument("--stride-s", type=float, help="windows.stride_s (default: the config's, 0.5)")
    ap.add_argument("--agree", type=int, help="stabilizer.agree (default: the config's, 3)")
    ap.add_argument("--beams", type=int, help="engine.num_beams (default: the config's, 1 = greedy)")
    ap.add_argument("--engine", default=str(ROOT / "engines" / "shapes-git"), help="engine folder")
    ap.add_argument("--quick", action="store_true", help="file only, one 120 s storyline (a test's smoke run)")
    ap.add_argument("--cache", type=Path, default=Path("~/.cache/streamcap-stability"),
                    help="where rendered storylines are kept between runs (keyed by renderer and parameters)")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write the full report here")
    ap.add_argument("--markdown", type=Path, metavar="OUT", help="write the markdown tables here")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    a = ap.parse_args(argv)
    a.cache = a.cache.expanduser()
    a.source = a.source or ("file" if a.quick else "both")
    a.sources = list(SOURCES) if a.source == "both" else [a.source]
    a.duration_s = a.duration_s or (120.0 if a.quick else 240.0)
    try:
        a.seed_list = [int(x) for x in (a.seeds or ("11" if a.quick else DEFAULT_SEEDS)).split(",") if x.strip()]
    except ValueError:
        ap.error(f"--seeds must be comma-separated integers, got {a.seeds!r}")
    if not a.seed_list:
        ap.error("--seeds is empty")
    if a.scene_s <= 0 or a.duration_s <= 0 or a.rtsp_duration_s <= 0:
        ap.error("--scene-s, --duration-s and --rtsp-duration-s must be positive")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        check_prerequisites(a.sources, a.engine)
    except PrerequisiteError as e:
        log(f"stability: error: {e}")
        return 2
    t_start = time.perf_counter()
    from streamcap.engine.base import load_engine_from_config

    engine = load_engine_from_config(build_config(a.engine, stride_s=a.stride_s, agree=a.agree, file=True,
                                                  beams=a.beams).engine)
    plan = [("file", seed, a.duration_s) for seed in a.seed_list if "file" in a.sources]
    if "rtsp" in a.sources:
        plan.append(("rtsp", a.seed_list[0], a.rtsp_duration_s))
    log(f"stability: {len(plan)} run(s): " + ", ".join(f"{s} seed {seed} ({d:g} s)" for s, seed, d in plan))
    runs = []
    try:
        a.cache.mkdir(parents=True, exist_ok=True)
        for n, (source, seed, duration) in enumerate(plan):
            runs.append(run_one(source, seed, duration, a, engine, n))
    except (PrerequisiteError, RuntimeError, OSError) as e:
        log(f"stability: error: {e}")
        return 2
    finally:
        engine.close()

    window_s, stride_s = runs[0]["window_s"], runs[0]["stride_s"]
    overall = pool(runs)
    overall["targets_met"] = check_targets(overall, window_s, stride_s)
    by_source = {}
    for src in SOURCES:
        these = [r for r in runs if r["source"] == src]
        if these:
            by_source[src] = pool(these)
            by_source[src]["targets_met"] = check_targets(by_source[src], window_s, stride_s)
    for r in runs:
        r["targets_met"] = check_targets(r, window_s, stride_s)
    report = {
        **overall,
        "window_s": window_s, "stride_s": stride_s, "agree": runs[0]["agree"], "scene_s": a.scene_s,
        "targets": {"final_accuracy_min": TARGET_FINAL_ACCURACY, "spurious_per_min_max": TARGET_SPURIOUS_PER_MIN,
                    "change_delay_s_p95_max": window_s + stride_s, "fewer_spurious_than_raw": True},
        "sources": by_source,
        "runs_detail": runs,
        "config": {"quick": a.quick, "seeds": a.seed_list, "duration_s": a.duration_s,
                   "rtsp_duration_s": a.rtsp_duration_s if "rtsp" in a.sources else None, "engine": a.engine},
        "machine": machine_info(),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    table = markdown(report)
    log("\n" + table)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=1) + "\n")
    if a.markdown:
        a.markdown.parent.mkdir(parents=True, exist_ok=True)
        a.markdown.write_text(table)
    log(f"stability: done in {report['wall_s']:.0f} s; targets met overall: "
        + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in overall["targets_met"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
