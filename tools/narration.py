"""The demo stream's narration: a short text of ours about the shapes demo, spoken by espeak-ng.

``python -m tools.narration OUT.wav`` writes ``OUT.wav`` (16 kHz mono 16-bit PCM) and
``manifest.json`` beside it: the text of each line with its voice and its start/end in the
file, the tool (espeak-ng, GPL-3.0-or-later, run as a tool: the text and the audio are ours) and
the voices. The setup step puts it at ``engines/demo-narration/narration.wav``; the
``synthetic:shapes`` source loops it under the picture when opened with ``audio=True`` and
``narration=`` that path (:class:`~streamcap.sources.synthetic.SyntheticShapesSource`).

Blocking; deterministic (each voice's lines are synthesised in a fresh process, see
:mod:`tools.speech_media`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tools.media import MediaToolError
from tools.speech_media import RATE, espeak_version, synthesize_sentences, write_wav

#: (voice, rate in words per minute, text); "stream cap" is spelled so that espeak-ng says it well
LINES: tuple[tuple[str, int, str], ...] = (
    ("en-us", 160, "Welcome to the stream cap demo. This picture is a tiny world of red, green, "
                   "blue and yellow shapes."),
    ("en+f3", 155, "Circles, squares and triangles move left, right, up or down, or simply "
                      "stay still."),
    ("en-us", 160, "Every few seconds the scene changes, and the captioning model describes what "
                   "it sees, one short sentence at a time."),
    ("en+f3", 155, "The captions come from the picture. The words you hear now come from this "
                      "voice, and the speech track writes them down as they are spoken."),
)
LEAD_S = 0.3
PAUSE_S = 0.7  # between lines
TAIL_S = 0.3


def narration_text() -> str:
    return " ".join(text for _voice, _rate, text in LINES)


def synthesize(lines: Sequence[tuple[str, int, str]] = LINES) -> tuple[np.ndarray, list[dict]]:
    """The narration's samples at :data:`~tools.speech_media.RATE` and each line's timing."""
    spoken: dict[int, np.ndarray] = {}
    for voice, rate in dict.fromkeys((v, r) for v, r, _t in lines):
        indices = [i for i, (v, r, _t) in enumerate(lines) if (v, r) == (voice, rate)]
        made = synthesize_sentences([lines[i][2] for i in indices], voice, rate)
        spoken.update({i: audio for i, (audio, _starts) in zip(indices, made)})
    pieces = [np.zeros(round(LEAD_S * RATE), np.float32)]
    at = len(pieces[0])
    timing = []
    for i, (voice, rate, text) in enumerate(lines):
        if i:
            pieces.append(np.zeros(round(PAUSE_S * RATE), np.float32))
            at += len(pieces[-1])
        pieces.append(spoken[i])
        timing.append({"text": text, "voice": voice, "rate_wpm": rate,
                       "start_s": round(at / RATE, 3), "end_s": round((at + len(spoken[i])) / RATE, 3)})
        at += len(spoken[i])
    pieces.append(np.zeros(round(TAIL_S * RATE), np.float32))
    return np.concatenate(pieces), timing


def write_narration(wav_path: Path | str) -> dict:
    """Write the narration WAV and ``manifest.json`` in its folder; returns the manifest."""
    wav = Path(wav_path)
    samples, timing = synthesize()
    write_wav(wav, samples)
    manifest = {
        "name": "demo-narration",
        "audio": wav.name,
        "sample_rate": RATE,
        "duration_s": round(len(samples) / RATE, 3),
        "words": len(narration_text().split()),
        "text": narration_text(),
        "lines": timing,
        "voices": sorted({voice for voice, _rate, _text in LINES}),
        "tool": {"name": "espeak-ng", "version": espeak_version(), "licence": "GPL-3.0-or-later",
                 "use": "run as a tool to synthesise the audio; the text and the audio are "
                        "streamcap's own"},
        "generator": "tools/narration.py",
    }
    partial = wav.with_name(".manifest.json.partial")
    partial.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    partial.replace(wav.with_name("manifest.json"))
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.narration", description=__doc__.split("\n")[0])
    parser.add_argument("wav", type=Path, help="the WAV to write (manifest.json goes beside it)")
    args = parser.parse_args(argv)
    try:
        manifest = write_narration(args.wav)
    except MediaToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.wav} ({manifest['duration_s']:.1f} s, {manifest['words']} words, "
          f"voices {', '.join(manifest['voices'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
