"""Streaming speech evaluation: WER, words in silence and latency of the speech track, live.

``python -m tools.speech_eval [--media DIR] [--clip talk] [--engine engines/whisper-base] [--json OUT]``

1. The media (:mod:`tools.speech_media`, made in ``--media`` when missing): our own script
   spoken by espeak-ng in several voices, with stretches of silence and of noise, one clip under
   noise, muxed with a shapes video (H.264 + AAC), with word-level ground truth.
2. The clip is served by the real loopback RTSP server (:mod:`tools.rtsp`, GStreamer) in real
   time, and captioned by a :class:`~streamcap.runtime.pipeline.Pipeline` with a ``speech``
   track (and the ``video`` track) reading ``rtsp://127.0.0.1:PORT/NAME``, exactly as
   ``streamcap run`` would.
3. Scored against the truth:

   - **streaming WER**: the speech finals, in order, against the script (:func:`tools.wer.word_error_rate`);
     beside it the **offline WER** of the same engine on the whole clip (30 s windows, greedy,
     each going on from the last word of the one before, as Whisper's own ``transcribe`` seeks).
   - **words in quiet stretches**: final words whose media time falls inside inserted silence or
     noise (:func:`tools.wer.words_in_quiet`).
   - **latency**: for each reference word heard (a caption word with the same spelling within
     ±1 s of it), the time from the moment its last sample reached streamcap to the moment the
     first PARTIAL (or FINAL) containing it, and the first FINAL containing it, was published.
     "Reached" is the wall time of the window's newest audio (``Caption.capture_ns``) moved back by
     the media time between the word's end and the window's end (the RTSP server sends in real time).

Blocking; prints a JSON report (``--json`` writes it too) and a markdown summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamcap.core.events import CaptionEvent, ProgressEvent
from streamcap.core.speech import word_key
from streamcap.core.types import SPEECH_TRACK, CaptionState
from tools.wer import load_truth, word_error_rate, words_in_quiet

MATCH_SLACK_S = 1.0


@dataclass
class Heard:
    """One published speech caption with the wall time its words' audio arrived."""

    caption: object
    published_ns: int
    window_end_s: float | None = None


@dataclass
class Recorder:
    """Event sink: speech captions with their arrival, matched to their window by the progress
    event that follows them in the same dispatch."""

    pending: list[Heard] = field(default_factory=list)
    heard: list[Heard] = field(default_factory=list)

    def __call__(self, event) -> None:
        if isinstance(event, CaptionEvent) and event.caption.track == SPEECH_TRACK:
            self.pending.append(Heard(event.caption, time.monotonic_ns()))
        elif isinstance(event, ProgressEvent) and event.track == SPEECH_TRACK:
            for h in self.pending:
                h.window_end_s = event.media_s
            self.heard += self.pending
            self.pending = []

    def finish(self) -> None:
        self.heard += self.pending  # captions of the end of the stream (no window after them)
        self.pending = []


def reference_words(truth) -> list[dict]:
    return [w for s in truth.sentences for w in s["words"] if w.get("end_s") is not None]


def latencies(truth, heard: list[Heard]) -> dict:
    """Per reference word, seconds from its audio's arrival to the first caption with it."""
    partial_s, final_s, missed, per_word = [], [], 0, []
    for ref in reference_words(truth):
        key = word_key(ref["text"])
        lo, hi = ref["start_s"] - MATCH_SLACK_S, ref["end_s"] + MATCH_SLACK_S
        first_any = first_final = None
        for h in heard:
            c = h.caption
            if h.window_end_s is None:
                continue
            if any(word_key(w.text) == key and w.end_s >= lo and w.start_s <= hi for w in c.words):
                # when the word's last sample arrived: the window's newest audio less the media after it
                arrived_ns = c.capture_ns - (h.window_end_s - ref["end_s"]) * 1e9
                delay = (h.published_ns - arrived_ns) / 1e9
                if first_any is None:
                    first_any = delay
                if c.state is CaptionState.FINAL:
                    first_final = delay
                    break
        if first_final is None:
            missed += 1
            continue
        partial_s.append(first_any)
        final_s.append(first_final)
        per_word.append({"w": ref["text"], "end_s": ref["end_s"], "first_s": round(first_any, 3),
                         "final_s": round(first_final, 3)})

    def summary(xs: list[float]) -> dict:
        if not xs:
            return {"n": 0}
        q = np.percentile(xs, [50, 95])
        return {"n": len(xs), "median_s": round(float(q[0]), 3), "p95_s": round(float(q[1]), 3),
                "max_s": round(max(xs), 3)}

    return {"first_caption": summary(partial_s), "final": summary(final_s), "words_not_matched": missed,
            "words": per_word}


def offline_wer(engine, wav: Path, truth) -> dict:
    """The engine on the whole clip: consecutive 30 s chunks, greedy, each prompted with the text before."""
    from streamcap.engine.whisper import SpeechRequest
    from tools.speech_media import read_wav

    audio, rate = read_wav(wav)
    assert rate == 16_000
    texts, prompt, start = [], "", 0
    t0 = time.perf_counter()
    while start < len(audio) - rate // 10:
        piece = audio[start:start + 30 * rate]
        out = engine.transcribe_batch([SpeechRequest(audio=piece, prompt=prompt[-200:], language="en")])[0]
        texts.append(out.text)
        prompt += " " + out.text
        # Whisper's own seek: a window whose words end well before its end goes on from the last word
        last_s = max((w.end_s for w in out.words), default=0.0)
        full = len(piece) == 30 * rate
        start += int(last_s * rate) if full and out.words and last_s < 29.0 else len(piece)
    w = word_error_rate(truth.text, " ".join(texts))
    return {"wer": round(w.wer, 4), "substitutions": w.substitutions, "deletions": w.deletions,
            "insertions": w.insertions, "reference_words": w.reference_words,
            "seconds": round(time.perf_counter() - t0, 1)}


async def stream_through_rtsp(url: str, engine_path: str, *, language: str | None, timeout_s: float,
                              speech: dict | None = None) -> Recorder:
    from streamcap.engine.base import load_engine_from_config
    from streamcap.runtime.config import Config
    from streamcap.runtime.metrics import Metrics
    from streamcap.runtime.pipeline import Pipeline
    from streamcap.runtime.speechmodels import load_speech

    cfg = Config.model_validate({"speech": {"enabled": True, "engine_path": engine_path, "language": language,
                                            **(speech or {})},
                                 "network": {"end_on_eof": True}})
    engine = await asyncio.to_thread(load_engine_from_config, cfg.engine)
    speech_engine, vad_factory = await asyncio.to_thread(load_speech, cfg)
    rec = Recorder()
    pipeline = Pipeline(cfg, engine, metrics=Metrics(), sinks={"eval": rec}, speech_engine=speech_engine,
                        vad_factory=vad_factory)
    pipeline.add_stream("talk", url)
    await asyncio.wait_for(pipeline.run(stop_when_idle=True), timeout_s)
    rec.finish()
    return rec


def evaluate(media: Path, clip: str, engine_path: str, *, language: str | None = "en",
             speech: dict | None = None) -> dict:
    """Serve ``clip`` over RTSP, caption it live and score it; ``speech``: ``[speech]`` settings."""
    from streamcap.engine.whisper import load_speech_engine
    from tools.rtsp import RtspServer

    mp4, wav, truth_path = media / f"{clip}.mp4", media / f"{clip}.wav", media / f"{clip}.json"
    if not mp4.is_file():
        from tools.speech_media import generate

        print(f"making the speech media in {media} ...", file=sys.stderr, flush=True)
        generate(media, with_video=True)
    truth = load_truth(truth_path)
    print(f"serving {mp4.name} ({truth.duration_s:.0f} s) over RTSP and captioning it live ...", file=sys.stderr,
          flush=True)
    with RtspServer({clip: mp4}) as server:
        rec = asyncio.run(stream_through_rtsp(f"rtsp://127.0.0.1:{server.port}/{clip}", engine_path,
                                              language=language, timeout_s=truth.duration_s * 3 + 120,
                                              speech=speech))
    finals = sorted((h.caption for h in rec.heard if h.caption.state is CaptionState.FINAL), key=lambda c: c.seq)
    streaming = word_error_rate(truth.text, [c.text for c in finals])
    quiet = words_in_quiet([w for c in finals for w in c.words], truth.quiet)
    print("offline whole-clip WER of the same engine ...", file=sys.stderr, flush=True)
    offline = offline_wer(load_speech_engine(engine_path), wav, truth)
    return {
        "clip": clip, "engine": Path(engine_path).name, "duration_s": truth.duration_s, "speech": speech or {},
        "reference_words": streaming.reference_words,
        "streaming_wer": round(streaming.wer, 4),
        "streaming_errors": {"substitutions": streaming.substitutions, "deletions": streaming.deletions,
                             "insertions": streaming.insertions},
        "offline": offline,
        "quiet_stretches": len(truth.quiet),
        "words_in_quiet": [{"text": q.text, "start_s": round(q.start_s, 2), "kind": q.kind} for q in quiet],
        "latency": latencies(truth, rec.heard),
        "finals": len(finals),
        "finals_text": " ".join(c.text for c in finals),
        "partials": sum(1 for h in rec.heard if h.caption.state is CaptionState.PARTIAL),
    }


def markdown(r: dict) -> str:
    lat = r["latency"]
    return "\n".join([
        f"| clip | engine | words | streaming WER | offline WER | words in {r['quiet_stretches']} quiet stretches "
        "| first caption p50 / p95 | final p50 / p95 |",
        "|---|---|---|---|---|---|---|---|",
        f"| {r['clip']} ({r['duration_s']:.0f} s) | {r['engine']} | {r['reference_words']} | "
        f"{r['streaming_wer'] * 100:.1f} % | {r['offline']['wer'] * 100:.1f} % | {len(r['words_in_quiet'])} | "
        f"{lat['first_caption'].get('median_s')} / {lat['first_caption'].get('p95_s')} s | "
        f"{lat['final'].get('median_s')} / {lat['final'].get('p95_s')} s |",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--media", default=str(Path.home() / ".cache" / "streamcap" / "speech-media"),
                    help="folder of tools.speech_media output (made when missing)")
    ap.add_argument("--clip", default="talk", help="which clip (default: talk, every clip end to end)")
    ap.add_argument("--engine", help="Whisper engine folder (default: speech.engine_path, whisper-base-int8)")
    ap.add_argument("--language", default="en", help="spoken language given to Whisper ('' = detect)")
    ap.add_argument("--min-chunk", type=float, help="speech.min_chunk_s (default: the config's)")
    ap.add_argument("--margin", type=float, help="speech.commit_margin_s (default: the config's)")
    ap.add_argument("--agree-gap", type=float, help="speech.agree_gap_s (default: the config's)")
    ap.add_argument("--json", help="also write the report here")
    args = ap.parse_args(argv)
    speech = {k: v for k, v in (("min_chunk_s", args.min_chunk), ("commit_margin_s", args.margin),
                                ("agree_gap_s", args.agree_gap)) if v is not None}
    if args.engine is None:
        from streamcap.runtime.config import Config

        args.engine = Config().speech.engine_path
    report = evaluate(Path(args.media), args.clip, args.engine, language=args.language or None,
                      speech=speech or None)
    text = json.dumps(report, indent=1)
    print(text)
    print(markdown(report))
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
