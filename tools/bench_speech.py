"""How many speech streams a CPU carries in real time: Whisper (fp32 and int8) under the streaming
policy's load, on the speech clips of :mod:`tools.speech_media`.

``python -m tools.bench_speech --out DIR [--media DIR] [--engines A,B] [--streams 1,2,4]
[--steps 10] [--threads 2]`` writes ``DIR/bench_speech.json`` and ``DIR/bench_speech.md``.

The load simulated is the speech track's while someone speaks (:mod:`streamcap.core.speech`):
every ``step_s`` (1.0 s, ``[speech] min_chunk_s``) of new audio each stream sends the whole buffer
to the engine; the buffer grows by a step per call and, past ``max_buffer_s`` (10 s), is cut back
to the newest step (as trimming at a committed sentence does), with the text heard before the
cut as the prompt. The N streams' requests of one step go into one ``transcribe_batch`` call (one
encoder call, as the engine worker batches them). Each stream hears continuous speech: the
clips' sentences end to end, each stream starting at a different sentence, so a batch never
holds the same audio twice. Silence and noise are left out: the VAD keeps them from Whisper, so
continuous speech is the heaviest load.

A stream is carried in real time when a step's call returns within ``step_s``. Reported per
engine and N: the median call time over the steps, the real-time factor per stream (call time ÷
(N × step_s)), and the most streams carried: measured (the largest N whose median call is within
``step_s``) and fitted (a line ``a + b·N`` through the medians). Also each engine's whole-clip WER
(:mod:`tools.wer`), the words it timed inside silence or noise, and of those the ones nobody said
(WER insertions), on every clip (one call per clip).

Blocking; all numbers come from one run (medians). Other load on the machine inflates wall
times (the load average at the start and end is recorded), so the process CPU time of each call
is recorded too: CPU time ÷ threads estimates the wall time on cores nobody else uses (ONNX
Runtime's worker threads spin while they wait, so an unloaded call burns about threads × wall).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tools.speech_media import RATE, generate, read_wav
from tools.wer import hallucinations_in_quiet, word_error_rate, words_in_quiet

DEFAULT_ENGINES = ("engines/whisper-base", "engines/whisper-base-int8")
PROMPT_CHARS = 200


# ------------------------------------------------------------------------------------ pure parts

def buffer_schedule(steps: int, step_s: float = 1.0, max_buffer_s: float = 10.0
                    ) -> list[tuple[float, float, bool]]:
    """Each call's buffer ``(start_s, end_s, cut)`` for ``steps`` calls: the buffer ends at the
    step's end and grows by ``step_s`` a call; a buffer that would exceed ``max_buffer_s`` starts
    over at the newest step (``cut`` True: the text heard before becomes the prompt)."""
    if step_s <= 0 or max_buffer_s < step_s:
        raise ValueError("need 0 < step_s <= max_buffer_s")
    out = []
    start = 0.0
    for k in range(1, steps + 1):
        end = round(k * step_s, 9)
        cut = end - start > max_buffer_s + 1e-9
        if cut:
            start = round(end - step_s, 9)
        out.append((start, end, cut))
    return out


def speech_streams(speech: np.ndarray, sentence_starts: Sequence[int], n: int, samples: int
                   ) -> list[np.ndarray]:
    """``n`` streams of ``samples`` of continuous speech, stream ``i`` starting at sentence
    ``i × len(starts) // n`` and wrapping around."""
    if not len(speech):
        raise ValueError("no speech")
    out = []
    for i in range(n):
        offset = sentence_starts[(i * len(sentence_starts)) // n] if sentence_starts else 0
        out.append(np.take(speech, np.arange(offset, offset + samples) % len(speech)))
    return out


@dataclass(frozen=True)
class Capacity:
    measured: int  # largest N measured whose median call fits in a step (0: not even one)
    fitted: float  # (step_s - a) / b for the line a + b·N through the medians (inf when flat)
    per_stream_s: float  # b: the cost of one more stream per step
    fixed_s: float  # a


def capacity(medians: dict[int, float], step_s: float = 1.0) -> Capacity:
    """The streams carried in real time, from median call times per N."""
    fits = [n for n, t in medians.items() if t <= step_s]
    ns = sorted(medians)
    if len(ns) >= 2:
        b, a = np.polyfit(np.array(ns, float), np.array([medians[n] for n in ns]), 1)
    else:
        a, b = 0.0, medians[ns[0]] / ns[0]
    fitted = (step_s - a) / b if b > 1e-9 else float("inf")  # flat: no per-stream cost measured
    return Capacity(max(fits, default=0), round(float(fitted), 2), round(float(b), 4), round(float(a), 4))


# --------------------------------------------------------------------------------------- running

def _load_media(media: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    index = json.loads((media / "index.json").read_text())
    truths, audio = [], {}
    for clip in index["clips"]:
        truths.append(json.loads((media / f"{clip['clip']}.json").read_text()))
        samples, rate = read_wav(media / clip["audio"])
        if rate != RATE:
            raise ValueError(f"{clip['audio']}: {rate} Hz, expected {RATE}")
        audio[clip["clip"]] = samples
    return truths, audio


def _continuous_speech(truths: list[dict], audio: dict[str, np.ndarray]) -> tuple[np.ndarray, list[int]]:
    pieces, starts, at = [], [], 0
    for truth in truths:
        if truth.get("snr_db") is not None:
            continue  # the noisy clip's sentences carry noise: clean speech only here
        for sentence in truth["sentences"]:
            piece = audio[truth["clip"]][round(sentence["start_s"] * RATE):round(sentence["end_s"] * RATE)]
            pieces.append(piece)
            starts.append(at)
            at += len(piece)
    return np.concatenate(pieces), starts


def _load_avg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def bench_engine(path: str, truths: list[dict], audio: dict[str, np.ndarray], *, streams: Sequence[int],
                 steps: int, step_s: float, max_buffer_s: float, threads: int) -> dict:
    from streamcap.engine.whisper import SpeechRequest, load_speech_engine

    engine = load_speech_engine(path, intra_op_threads=threads)
    speech, sentence_starts = _continuous_speech(truths, audio)
    schedule = buffer_schedule(steps, step_s, max_buffer_s)
    total = round(schedule[-1][1] * RATE)
    # warm-up: the first calls of a session are slower (allocations)
    engine.transcribe_batch([SpeechRequest(audio=speech[:RATE * 2], language="en")])
    load: dict[str, dict] = {}
    for n in streams:
        sources = speech_streams(speech, sentence_starts, n, total)
        prompts = [""] * n
        last_text = [""] * n
        times, cpu, words = [], [], []
        for start_s, end_s, cut in schedule:
            if cut:
                prompts = [t[-PROMPT_CHARS:] for t in last_text]
            requests = [SpeechRequest(audio=s[round(start_s * RATE):round(end_s * RATE)], prompt=p,
                                      language="en") for s, p in zip(sources, prompts)]
            t0, c0 = time.perf_counter(), time.process_time()
            transcripts = engine.transcribe_batch(requests)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            words.append(sum(len(t.words) for t in transcripts) / n)
            last_text = [t.text for t in transcripts]
        median = statistics.median(times)
        load[str(n)] = {"median_call_s": round(median, 4), "max_call_s": round(max(times), 4),
                        "median_cpu_s": round(statistics.median(cpu), 4),
                        "rtf_per_stream": round(median / (n * step_s), 4),
                        "real_time": median <= step_s, "mean_words_per_call": round(float(np.mean(words)), 1),
                        "calls": len(times)}
    cap = capacity({int(n): v["median_call_s"] for n, v in load.items()}, step_s)
    # what the same work needs on `threads` cores nobody else uses: CPU time ÷ threads (ONNX
    # Runtime's threads spin while waiting, so an unloaded run burns about threads × wall time)
    dedicated = capacity({int(n): v["median_cpu_s"] / threads for n, v in load.items()}, step_s)
    clips = []
    for truth in truths:
        samples = audio[truth["clip"]]
        t0 = time.perf_counter()
        (transcript,) = engine.transcribe_batch([SpeechRequest(audio=samples, language="en")])
        elapsed = time.perf_counter() - t0
        wer = word_error_rate(truth["text"], transcript.text)
        quiet = words_in_quiet(transcript.words, truth["quiet"])
        invented = hallucinations_in_quiet(truth["text"], transcript.words, truth["quiet"])
        clips.append({"clip": truth["clip"], "voice": truth["voice"], "snr_db": truth["snr_db"],
                      "wer": round(wer.wer, 4), "substitutions": wer.substitutions,
                      "deletions": wer.deletions, "insertions": wer.insertions,
                      "reference_words": wer.reference_words, "words_in_quiet": len(quiet),
                      "quiet_words": [w.text for w in quiet],
                      "hallucinations_in_quiet": [w.text for w in invented], "call_s": round(elapsed, 3),
                      "hypothesis": transcript.text})
    ref = sum(c["reference_words"] for c in clips)
    errors = sum(c["substitutions"] + c["deletions"] + c["insertions"] for c in clips)
    result = {"engine": path, "name": engine.name, "precision": engine.manifest.precision,
              "word_timing": engine.word_timing, "load": load,
              "capacity": cap.__dict__, "capacity_dedicated_cores": dedicated.__dict__, "clips": clips, "wer": round(errors / ref, 4) if ref else None,
              "words_in_quiet": sum(c["words_in_quiet"] for c in clips),
              "hallucinations_in_quiet": sum(len(c["hallucinations_in_quiet"]) for c in clips)}
    engine.close()
    return result


def markdown(report: dict) -> str:
    lines = [f"Speech streams in real time on {report['threads']} CPU thread(s) "
             f"(one call per {report['step_s']:g} s of new audio, buffer up to "
             f"{report['max_buffer_s']:g} s, N streams per encoder call; medians of "
             f"{report['steps']} calls; load average {report['load_average_start']} → "
             f"{report['load_average_end']})", "",
             "| engine | N streams | median call (s) | RTF per stream | real time | median CPU time ÷ "
             "threads (s) |", "|---|---|---|---|---|---|"]
    for e in report["engines"]:
        for n, v in e["load"].items():
            lines.append(f"| {e['name']} | {n} | {v['median_call_s']:.3f} | {v['rtf_per_stream']:.3f} | "
                         f"{'yes' if v['real_time'] else 'no'} | "
                         f"{v['median_cpu_s'] / report['threads']:.3f} |")
    lines += ["", "| engine | streams carried (measured) | streams carried (fitted a + b·N) | "
              "per stream (s) | on dedicated cores, from CPU time (fitted) | WER, whole clips | "
              "words timed in silence/noise (word timing) | of them said by nobody |",
              "|---|---|---|---|---|---|---|---|"]
    for e in report["engines"]:
        c, d = e["capacity"], e["capacity_dedicated_cores"]
        lines.append(f"| {e['name']} | {c['measured']} | {c['fitted']:.2f} | {c['per_stream_s']:.3f} | "
                     f"{d['measured']} ({d['fitted']:.2f}) | "
                     f"{100 * e['wer']:.1f} % | {e['words_in_quiet']} ({e['word_timing']}) | "
                     f"{e['hallucinations_in_quiet']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_speech", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for bench_speech.json and .md")
    parser.add_argument("--media", type=Path, help="tools.speech_media output (default: made in a temp folder)")
    parser.add_argument("--engines", default=",".join(DEFAULT_ENGINES), help="comma-separated engine folders")
    parser.add_argument("--streams", default="1,2,4", help="comma-separated stream counts N")
    parser.add_argument("--steps", type=int, default=10, help="calls per N (10: one growth of the buffer)")
    parser.add_argument("--step-s", type=float, default=1.0, help="new audio per call")
    parser.add_argument("--max-buffer-s", type=float, default=10.0, help="buffer length before a cut")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    args = parser.parse_args(argv)
    streams = [int(n) for n in args.streams.split(",")]
    with tempfile.TemporaryDirectory(prefix="streamcap-speech-media-") as tmp:
        media = args.media
        if media is None:
            media = Path(tmp)
            generate(media)
        truths, audio = _load_media(media)
    report = {"tool": "tools/bench_speech.py", "threads": args.threads, "step_s": args.step_s,
              "max_buffer_s": args.max_buffer_s, "steps": args.steps, "streams": streams,
              "cpu_count": os.cpu_count(), "load_average_start": _load_avg(), "engines": []}
    for path in args.engines.split(","):
        print(f"benchmarking {path} ...", file=sys.stderr, flush=True)
        report["engines"].append(bench_engine(path, truths, audio, streams=streams, steps=args.steps,
                                              step_s=args.step_s, max_buffer_s=args.max_buffer_s,
                                              threads=args.threads))
    report["load_average_end"] = _load_avg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_speech.json").write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report)
    (args.out / "bench_speech.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
