"""Subtitle writers: final captions to WebVTT, SRT and JSON Lines text, shaped into
subtitle-grade cues.

Writers take :class:`Cue` values (``cues_from_finals`` makes them from the stabiliser's closed
finals) and return the whole document as a string; the caller writes it. Before writing, cues
are shaped the same way for every format by :func:`shape_cues`, under :class:`SubtitleRules`
(defaults in brackets; docs/subtitles.md has the reasoning):

1. *Tidy.* Times are rounded to whole milliseconds (half up); a negative or non-finite time, or
   an end before the start, raises ValueError. Whitespace is collapsed; a cue with no text is
   skipped. A cue with text but no duration is kept (it gets the minimum duration below). Cues
   are sorted by (start, end), ties kept in input order. Cue starts never move earlier.
2. *Make room.* Consecutive cues keep a gap of at least ``min_gap_frames`` frames at ``fps``
   [2 at 25 fps = 80 ms]: an earlier cue is ended that long before the next one starts. A cue
   whose text cannot get its minimum display time before the next cue starts is **merged** into
   the next one: one cue from the earlier start to the later end, the texts joined in order.
   Nothing with text is ever dropped.
3. *Wrap.* The text is wrapped to lines of at most ``max_line_chars`` [42] characters, at most
   ``max_lines`` [2] lines per cue (two lines are balanced, see :func:`wrap_text`); a single word
   longer than a line stays whole on its own line. A longer text becomes consecutive cues.
4. *Time.* Each block of lines needs ``len(text) / max_cps`` seconds [17 characters per second],
   at least ``min_duration_s`` [5/6 s] and at most ``max_duration_s`` [7 s]. A cue shorter than
   its blocks need is extended into the free time after it, never closer than the gap to the next
   cue; with no room it stays faster than ``max_cps`` (but never shorter than the minimum, thanks
   to step 2). The cue's time is shared among its blocks in proportion to what each needs, none
   below the minimum duration.
5. *Split long cues.* A block that would stay on screen longer than ``max_duration_s`` is shown
   as several consecutive cues of equal length (≤ the maximum, the gap between them) repeating
   the same text; every cue after the first has ``repeat=True``.

Pure: no I/O. Thread-safe (no shared state).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from streamcap.core.types import Caption, CaptionState
from streamcap.outputs.wire import encode_caption

MAX_LINE_CHARS = 42
MAX_LINES = 2


@dataclass(frozen=True, slots=True)
class Cue:
    """One caption to show from ``start_s`` to ``end_s`` (seconds of media time)."""

    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True, slots=True)
class SubtitleRules:
    """How cues are shaped (see the module docstring). Frozen; validated on construction."""

    max_line_chars: int = MAX_LINE_CHARS
    max_lines: int = MAX_LINES
    max_cps: float = 17.0
    min_duration_s: float = 5 / 6
    max_duration_s: float = 7.0
    min_gap_frames: int = 2
    fps: float = 25.0

    def __post_init__(self) -> None:
        for name in ("max_line_chars", "max_lines"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.min_gap_frames, bool) or not isinstance(self.min_gap_frames, int) \
                or self.min_gap_frames < 0:
            raise ValueError(f"min_gap_frames must be an integer >= 0, got {self.min_gap_frames!r}")
        for name in ("max_cps", "min_duration_s", "max_duration_s", "fps"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        # a cue longer than the maximum is cut into pieces of at least (max - gap) / 2
        if self.min_duration_ms > (self.max_duration_ms - self.min_gap_ms) // 2:
            raise ValueError(f"min_duration_s ({self.min_duration_s}) must be at most half of "
                             f"max_duration_s ({self.max_duration_s}) less the gap ({self.min_gap_s:.3f} s)")

    @property
    def min_gap_s(self) -> float:
        return self.min_gap_frames / self.fps

    @property
    def min_gap_ms(self) -> int:
        return math.ceil(self.min_gap_frames * 1000 / self.fps - 1e-9)

    @property
    def min_duration_ms(self) -> int:
        return max(1, math.ceil(self.min_duration_s * 1000 - 1e-9))

    @property
    def max_duration_ms(self) -> int:
        return math.floor(self.max_duration_s * 1000 + 1e-9)


DEFAULT_RULES = SubtitleRules()


@dataclass(frozen=True, slots=True)
class ShapedCue:
    """A cue ready to write: whole milliseconds of media time and its wrapped lines.

    ``repeat`` is True when the cue repeats the previous cue's text because the text stays on
    screen longer than ``max_duration_s``.
    """

    start_ms: int
    end_ms: int
    lines: tuple[str, ...]
    repeat: bool = False

    @property
    def text(self) -> str:
        return " ".join(self.lines)


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


def to_webvtt(cues: Iterable[Cue], rules: SubtitleRules | None = None) -> str:
    """A WebVTT document of the shaped cues (``WEBVTT`` alone when there are none)."""
    return "\n".join(["WEBVTT\n", *(vtt_cue(c) for c in shape_cues(cues, rules))])


def to_srt(cues: Iterable[Cue], rules: SubtitleRules | None = None) -> str:
    """An SRT document of the shaped cues, numbered from 1 (empty when there are none)."""
    parts = []
    for number, cue in enumerate(shape_cues(cues, rules), start=1):
        text = "\n".join(cue.lines)
        parts.append(f"{number}\n{format_srt_time(cue.start_ms)} --> {format_srt_time(cue.end_ms)}\n{text}\n")
    return "\n".join(parts)


def vtt_cue(cue: ShapedCue) -> str:
    """One WebVTT cue block (timing line, escaped text lines, a final newline; no blank line)."""
    text = "\n".join(_escape_vtt(line) for line in cue.lines)
    return f"{format_vtt_time(cue.start_ms)} --> {format_vtt_time(cue.end_ms)}\n{text}\n"


def to_jsonl(captions: Iterable[Caption], encode: Callable[[Caption], str] = encode_caption) -> str:
    """One JSON object per caption, one per line, in the given order.

    By default each line is the caption's wire message (:func:`streamcap.outputs.wire.encode_caption`),
    so a JSONL file and a websocket session can be read by the same decoder.
    """
    return "".join(encode(c) + "\n" for c in captions)


def format_vtt_time(ms: int) -> str:
    """Milliseconds → ``HH:MM:SS.mmm`` (hours grow past two digits if needed)."""
    return _format_time(ms, ".")


def format_srt_time(ms: int) -> str:
    """Milliseconds → ``HH:MM:SS,mmm``."""
    return _format_time(ms, ",")


def wrap_text(text: str, max_chars: int = MAX_LINE_CHARS, max_lines: int = MAX_LINES) -> list[list[str]]:
    """Collapse whitespace and wrap into blocks of at most ``max_lines`` lines of at most
    ``max_chars`` characters each; a word longer than ``max_chars`` stays whole on its own line.
    Lines are filled greedily; a block of exactly two lines is then re-split at the space that
    balances the two lines best (the top line the shorter on a tie). Returns [] for empty text."""
    words = text.split()
    if not words:
        return []
    lines: list[str] = []
    for word in words:  # greedy fill
        if lines and len(lines[-1]) + 1 + len(word) <= max_chars:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    blocks = [lines[i:i + max_lines] for i in range(0, len(lines), max_lines)]
    return [_balance(" ".join(block).split(), max_chars) if len(block) == 2 else block
            for block in blocks]


def shape_cues(cues: Iterable[Cue], rules: SubtitleRules | None = None) -> list[ShapedCue]:
    """The cues as they are written: sorted, never overlapping, the rules applied (see the
    module docstring). Raises ValueError for invalid times."""
    return [cue for group in shape_groups(cues, rules) for cue in group]


def shape_groups(cues: Iterable[Cue], rules: SubtitleRules | None = None) -> list[tuple[ShapedCue, ...]]:
    """Like :func:`shape_cues`, grouped by the input cue (or merged input cues) each output cue
    comes from: a group is the consecutive cues of one text. Every group is non-empty."""
    rules = rules or DEFAULT_RULES
    spans = _tidy(cues)
    return [_layout(start, end, blocks, rules) for start, end, blocks in _make_room(spans, rules)]


# -- shaping steps ------------------------------------------------------------------------------

_Span = tuple[int, int, str]  # start_ms, end_ms, text with whitespace collapsed


def _tidy(cues: Iterable[Cue]) -> list[_Span]:
    spans: list[_Span] = []
    for cue in cues:
        for t in (cue.start_s, cue.end_s):
            if not math.isfinite(t) or t < 0:
                raise ValueError(f"cue time must be finite and >= 0, got {t!r} in {cue!r}")
        if cue.end_s < cue.start_s:
            raise ValueError(f"cue ends before it starts: {cue!r}")
        text = " ".join(cue.text.split())
        if text:
            spans.append((_to_ms(cue.start_s), _to_ms(cue.end_s), text))
    spans.sort(key=lambda s: (s[0], s[1]))  # stable: ties stay in input order
    return spans


def _make_room(spans: Sequence[_Span], rules: SubtitleRules) -> list[tuple[int, int, list[list[str]]]]:
    """Merge cues that cannot get their minimum time before the next one; end each cue where
    its reading time says (within the free time before the next cue, less the gap)."""
    out: list[tuple[int, int, list[list[str]]]] = []
    if not spans:
        return out
    start, end, text = spans[0]
    for next_start, next_end, next_text in spans[1:]:
        limit = next_start - rules.min_gap_ms
        blocks = _wrap(text, rules)
        if limit - start < _min_span_ms(len(blocks), rules):
            end, text = max(end, next_end), f"{text} {next_text}"
            continue
        out.append((start, _fit_end(start, end, blocks, limit, rules), blocks))
        start, end, text = next_start, next_end, next_text
    blocks = _wrap(text, rules)
    out.append((start, _fit_end(start, end, blocks, None, rules), blocks))
    return out


def _fit_end(start: int, end: int, blocks: list[list[str]], limit: int | None, rules: SubtitleRules) -> int:
    needed = sum(_reading_ms(block, rules) for block in blocks) + (len(blocks) - 1) * rules.min_gap_ms
    end = max(end, start + needed)
    return end if limit is None else min(end, limit)


def _layout(start: int, end: int, blocks: list[list[str]], rules: SubtitleRules) -> tuple[ShapedCue, ...]:
    """Share ``[start, end]`` among the blocks (gap between them); split over-long ones."""
    gap = rules.min_gap_ms
    available = end - start - (len(blocks) - 1) * gap
    shares = _share(available, [_reading_ms(block, rules) for block in blocks], rules.min_duration_ms)
    out: list[ShapedCue] = []
    t = start
    for block, share in zip(blocks, shares):
        for i, duration in enumerate(_repeat_split(share, rules)):
            out.append(ShapedCue(t, t + duration, tuple(block), repeat=i > 0))
            t += duration + gap
    return tuple(out)


def _share(total: int, weights: list[int], floor: int) -> list[int]:
    """Integers summing to ``total``, in proportion to ``weights``, none below ``floor``
    (water-filling: a share under the floor is fixed at it and the rest re-shared).
    Requires ``total >= floor * len(weights)``."""
    fixed = [False] * len(weights)
    while True:
        free = total - floor * sum(fixed)
        weight = sum(w for w, f in zip(weights, fixed) if not f)
        exact = [float(floor) if f else free * w / weight for w, f in zip(weights, fixed)]
        under = [i for i, (x, f) in enumerate(zip(exact, fixed)) if not f and x < floor]
        if not under:
            break
        for i in under:
            fixed[i] = True
    shares = [math.floor(x) for x in exact]
    by_fraction = sorted(range(len(exact)), key=lambda i: shares[i] - exact[i])
    for i in by_fraction[:total - sum(shares)]:
        shares[i] += 1
    return shares


def _repeat_split(duration: int, rules: SubtitleRules) -> list[int]:
    """``duration`` as the fewest equal pieces of at most ``max_duration_ms``, with the gap
    between consecutive pieces (the pieces and gaps add up to ``duration``)."""
    longest, gap = rules.max_duration_ms, rules.min_gap_ms
    if duration <= longest:
        return [duration]
    count = -(-(duration + gap) // (longest + gap))
    q, r = divmod(duration - (count - 1) * gap, count)
    return [q + 1] * r + [q] * (count - r)


def _wrap(text: str, rules: SubtitleRules) -> list[list[str]]:
    return wrap_text(text, rules.max_line_chars, rules.max_lines)


def _reading_ms(block: list[str], rules: SubtitleRules) -> int:
    """Time a block needs on screen: its characters (spaces included) at ``max_cps``, within
    the minimum and maximum duration."""
    chars = len(" ".join(block))
    reading = math.ceil(chars * 1000 / rules.max_cps - 1e-9)
    return min(rules.max_duration_ms, max(rules.min_duration_ms, reading))


def _min_span_ms(blocks: int, rules: SubtitleRules) -> int:
    return blocks * rules.min_duration_ms + (blocks - 1) * rules.min_gap_ms


def _balance(words: list[str], max_chars: int) -> list[str]:
    """Split words (two or more) into two lines: both ≤ max_chars if possible, the longer as
    short as possible, the top line the shorter on a tie."""

    def badness(i: int) -> tuple[bool, int, bool]:
        top, bottom = len(" ".join(words[:i])), len(" ".join(words[i:]))
        return max(top, bottom) > max_chars, max(top, bottom), top > bottom

    split = min(range(1, len(words)), key=badness)
    return [" ".join(words[:split]), " ".join(words[split:])]


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
