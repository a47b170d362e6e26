"""Subtitle writers: final captions to WebVTT, SRT and JSON Lines text.

Writers take :class:`Cue` values (``cues_from_finals`` makes them from the stabiliser's closed
finals) and return the whole document as a string; the caller writes it. Before writing,
cues are tidied the same way for every format:

- times are rounded to whole milliseconds; a negative or non-finite time, or an end before
  the start, raises ValueError;
- cues with empty text, or no duration, are skipped;
- cues are sorted by start, and an overlap is clipped by ending the earlier cue where the
  later one starts (a cue clipped to nothing is dropped);
- whitespace is collapsed, and the text is wrapped to lines of at most ``MAX_LINE_CHARS``
  characters, at most ``MAX_LINES`` lines per cue. A text that fits in two lines but not one
  is split at the space that balances the two lines best (the top line the shorter on a tie).
  A longer text is split into consecutive cues of up to two lines each, the cue's time shared
  among them in proportion to their length. Words are never broken: a single word longer
  than a line stays whole on its own line.

Pure: no I/O. Thread-safe (no shared state).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from streamcap.types import Caption, CaptionState
from streamcap.wire import encode_caption

MAX_LINE_CHARS = 42
MAX_LINES = 2


@dataclass(frozen=True, slots=True)
class Cue:
    start_s: float
    end_s: float
    text: str


def cues_from_finals(finals: Iterable[Caption]) -> list[Cue]:
    """One cue per FINAL caption (partials are ignored), sorted by start.

    When the same final (same stream and seq) appears more than once — as published and
    again as closed with its full span — the one with the latest end wins.
    """
    latest: dict[tuple[str, int], Caption] = {}
    for c in finals:
        if c.state is not CaptionState.FINAL:
            continue
        seen = latest.get((c.stream, c.seq))
        if seen is None or c.end_s > seen.end_s:
            latest[(c.stream, c.seq)] = c
    ordered = sorted(latest.values(), key=lambda c: (c.start_s, c.end_s, c.seq))
    return [Cue(c.start_s, c.end_s, c.text) for c in ordered]


def to_webvtt(cues: Iterable[Cue]) -> str:
    parts = ["WEBVTT\n"]
    for start_ms, end_ms, lines in _prepare(cues):
        text = "\n".join(_escape_vtt(line) for line in lines)
        parts.append(f"{format_vtt_time(start_ms)} --> {format_vtt_time(end_ms)}\n{text}\n")
    return "\n".join(parts)


def to_srt(cues: Iterable[Cue]) -> str:
    parts = []
    for number, (start_ms, end_ms, lines) in enumerate(_prepare(cues), start=1):
        text = "\n".join(lines)
        parts.append(f"{number}\n{format_srt_time(start_ms)} --> {format_srt_time(end_ms)}\n{text}\n")
    return "\n".join(parts)


def to_jsonl(captions: Iterable[Caption], encode: Callable[[Caption], str] = encode_caption) -> str:
    """One JSON object per caption, one per line, in the given order.

    By default each line is the caption's wire message (:func:`streamcap.wire.encode_caption`),
    so a JSONL file and a websocket session can be read by the same decoder.
    """
    return "".join(encode(c) + "\n" for c in captions)


def format_vtt_time(ms: int) -> str:
    """Milliseconds → ``HH:MM:SS.mmm`` (hours grow past two digits if needed)."""
    return _format_time(ms, ".")


def format_srt_time(ms: int) -> str:
    """Milliseconds → ``HH:MM:SS,mmm``."""
    return _format_time(ms, ",")


def wrap_text(text: str, max_chars: int = MAX_LINE_CHARS) -> list[list[str]]:
    """Collapse whitespace and wrap into blocks of at most two lines of ≤ ``max_chars`` each
    (see the module docstring). Returns [] for empty text."""
    words = text.split()
    if not words:
        return []
    lines: list[str] = []
    for word in words:  # greedy fill
        if lines and len(lines[-1]) + 1 + len(word) <= max_chars:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    blocks = [lines[i:i + MAX_LINES] for i in range(0, len(lines), MAX_LINES)]
    return [_balance(" ".join(block).split(), max_chars) if len(block) == 2 else block
            for block in blocks]


def _balance(words: list[str], max_chars: int) -> list[str]:
    """Split words (two or more) into two lines: both ≤ max_chars if possible, the longer as
    short as possible, the top line the shorter on a tie."""

    def badness(i: int) -> tuple[bool, int, bool]:
        top, bottom = len(" ".join(words[:i])), len(" ".join(words[i:]))
        return max(top, bottom) > max_chars, max(top, bottom), top > bottom

    split = min(range(1, len(words)), key=badness)
    return [" ".join(words[:split]), " ".join(words[split:])]


def _prepare(cues: Iterable[Cue]) -> list[tuple[int, int, list[str]]]:
    timed: list[tuple[int, int, str]] = []
    for cue in cues:
        for t in (cue.start_s, cue.end_s):
            if not math.isfinite(t) or t < 0:
                raise ValueError(f"cue time must be finite and >= 0, got {t!r} in {cue!r}")
        if cue.end_s < cue.start_s:
            raise ValueError(f"cue ends before it starts: {cue!r}")
        if cue.text.strip() and _to_ms(cue.end_s) > _to_ms(cue.start_s):
            timed.append((_to_ms(cue.start_s), _to_ms(cue.end_s), cue.text))
    timed.sort(key=lambda c: (c[0], c[1]))

    clipped: list[tuple[int, int, str]] = []
    for i, (start, end, text) in enumerate(timed):
        if i + 1 < len(timed):
            end = min(end, timed[i + 1][0])
        if end > start:
            clipped.append((start, end, text))

    out: list[tuple[int, int, list[str]]] = []
    for start, end, text in clipped:
        blocks = wrap_text(text)
        if len(blocks) == 1 or end - start < len(blocks):
            out.append((start, end, [line for block in blocks for line in block]))
            continue
        weights = [sum(len(line) for line in block) for block in blocks]
        total, acc, t = sum(weights), 0, start
        for block, weight in zip(blocks, weights):
            acc += weight
            block_end = start + round((end - start) * acc / total)
            block_end = max(block_end, t + 1)
            out.append((t, block_end, block))
            t = block_end
    return out


def _format_time(ms: int, sep: str) -> str:
    hours, rest = divmod(int(ms), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{sep}{millis:03d}"


def _escape_vtt(line: str) -> str:
    # "&" first; escaping ">" also keeps "-->" out of cue text
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _to_ms(t_s: float) -> int:
    return math.floor(t_s * 1000 + 0.5)  # half up, not Python's half-to-even
