"""Live WebVTT: one stream's final captions as an HLS subtitle playlist of WebVTT segments.

:class:`LiveVttSegmenter` owns the segment timeline of one stream. Finals come in with
:meth:`~LiveVttSegmenter.add_final` (the same ``seq`` again, with a later end, updates it);
:meth:`~LiveVttSegmenter.advance` says how far media time has got. Segment ``n`` covers
``[n * segment_s, (n + 1) * segment_s)`` of media time and is *complete* once media time reaches
its end: from then on its text never changes, so a player may fetch it once. The playlist lists
the last ``window_segments`` complete segments (a sliding window; older ones expire).

How captions become cues (docs/subtitles.md has the reasoning):

- cues are shaped by :func:`streamcap.outputs.subtitles.shape_groups` under the same
  :class:`~streamcap.outputs.subtitles.SubtitleRules` as subtitle files (line length, gap, minimum and
  maximum duration, reading speed);
- when a segment completes, every cue that starts before its end is *frozen*: its times are
  final and it is written, with its full times, in every segment it overlaps (a cue spanning a
  boundary appears in both segments, as HLS players expect; they drop the duplicate);
- the latest final is the stream's current caption: it is shown until a later final replaces it,
  so at each completed segment its cue is frozen up to the segment's end, and continued, with the
  same text, in the next segment (after the usual gap) until the next final starts;
- a final whose time was already frozen when it arrived (it came late, or an earlier cue was
  extended over it for its reading time) is shown late, from the first free time, merged with
  its neighbours when they are crowded; one that had ended more than ``max_duration_s`` before
  that time is dropped as stale and counted in :attr:`LiveVttSegmenter.late_finals`.

Cue times are media time; each segment maps media time 0 to MPEG-TS time ``mpegts_at_zero``
(90 kHz ticks, default 900000 = 10 s) with an ``X-TIMESTAMP-MAP`` header, so a player can align
the subtitles with a video rendition whose first frame has that timestamp.

Bounded: only the window's segment texts, the frozen cues that reach past the last complete
segment and the finals not yet shown are held — provided the caller keeps calling ``advance``.

Pure: no I/O, clock or asyncio. Not thread-safe (one owner, e.g. the event loop).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from streamcap.outputs.subtitles import Cue, ShapedCue, SubtitleRules, shape_groups, vtt_cue
from streamcap.core.types import Caption, CaptionState

#: MPEG-TS timestamp (90 kHz) of media time 0 in every segment's ``X-TIMESTAMP-MAP``: 10 s, the
#: offset HLS packagers commonly give the first video frame.
MPEGTS_AT_ZERO = 900_000


@dataclass(frozen=True, slots=True)
class _Segment:
    n: int
    duration_ms: int
    text: str


class LiveVttSegmenter:
    """HLS-style segmented WebVTT of one stream's finals (see the module docstring)."""

    def __init__(self, segment_s: float = 6.0, window_segments: int = 10, rules: SubtitleRules | None = None,
                 *, mpegts_at_zero: int = MPEGTS_AT_ZERO) -> None:
        if not (isinstance(segment_s, (int, float)) and math.isfinite(segment_s) and segment_s >= 0.001):
            raise ValueError(f"segment_s must be a finite number >= 0.001, got {segment_s!r}")
        if isinstance(window_segments, bool) or not isinstance(window_segments, int) or window_segments < 1:
            raise ValueError(f"window_segments must be an integer >= 1, got {window_segments!r}")
        if isinstance(mpegts_at_zero, bool) or not isinstance(mpegts_at_zero, int) \
                or not 0 <= mpegts_at_zero < 2 ** 33:
            raise ValueError(f"mpegts_at_zero must be an integer in [0, 2**33), got {mpegts_at_zero!r}")
        self._segment_ms = round(segment_s * 1000)
        self._window = window_segments
        self._rules = rules or SubtitleRules()
        self._mpegts_at_zero = mpegts_at_zero
        self._stream: str | None = None
        self._finals: dict[int, Cue] = {}  # seq -> the final with its latest end, not yet fully shown
        self._latest_seq = -1
        self._held_seq = -1  # the latest final when cues were last frozen: held until replaced
        self._shown: set[int] = set()  # seqs of held finals that are in a frozen cue
        self._late_finals = 0
        self._frozen: list[ShapedCue] = []  # fixed cues that reach past the last complete segment
        self._free_from_ms = 0  # cues not yet frozen start at or after this
        self._media_ms = 0
        self._completed = 0  # complete segments so far (the next one's number)
        self._segments: deque[_Segment] = deque(maxlen=window_segments)
        self._ended = False

    # -- input ---------------------------------------------------------------------------------

    def add_final(self, caption: Caption) -> None:
        """Take a FINAL caption (PARTIAL ones are ignored). A ``seq`` seen before updates that
        final (its latest end wins); it is never duplicated. Raises ValueError for another
        stream's caption or invalid times, RuntimeError after :meth:`end`."""
        if self._ended:
            raise RuntimeError("the stream has ended: no more captions")
        if caption.state is not CaptionState.FINAL:
            return
        if self._stream is None:
            self._stream = caption.stream
        elif caption.stream != self._stream:
            raise ValueError(f"caption of stream {caption.stream!r} given to the segmenter of {self._stream!r}")
        for t in (caption.start_s, caption.end_s):
            if not math.isfinite(t) or t < 0:
                raise ValueError(f"caption time must be finite and >= 0, got {t!r}")
        if caption.end_s < caption.start_s:
            raise ValueError(f"caption ends before it starts: {caption.start_s} > {caption.end_s}")
        seen = self._finals.get(caption.seq)
        if seen is None and caption.seq <= self._latest_seq:
            self._shown.add(caption.seq)  # an update of a final already shown (or skipped) and forgotten
        if seen is None or caption.end_s >= seen.end_s:
            self._finals[caption.seq] = Cue(caption.start_s, caption.end_s, caption.text)
        self._latest_seq = max(self._latest_seq, caption.seq)

    def advance(self, media_s: float) -> None:
        """Media time has reached ``media_s``: every segment ending at or before it is complete.

        Call it with the time up to which finals are settled — finals added later should not
        start before it (they would be late; see the module docstring). Going back is ignored.
        Raises ValueError for a negative or non-finite time, RuntimeError after :meth:`end`."""
        if self._ended:
            raise RuntimeError("the stream has ended")
        self._media_ms = max(self._media_ms, _to_ms(media_s))
        self._complete_until(self._media_ms // self._segment_ms)

    def end(self, media_s: float | None = None) -> None:
        """The stream ended at ``media_s`` (default: the latest time given to :meth:`advance`).

        Completes every segment up to it, plus a last, shorter segment when it falls inside one;
        the latest final is shown until the end. The playlist then carries ``#EXT-X-ENDLIST``.
        Idempotent."""
        if self._ended:
            return
        if media_s is not None:
            self._media_ms = max(self._media_ms, _to_ms(media_s))
        self._complete_until(self._media_ms // self._segment_ms)
        start_ms = self._completed * self._segment_ms
        if self._media_ms > start_ms:
            self._freeze(self._media_ms)
            self._segments.append(_Segment(self._completed, self._media_ms - start_ms,
                                           self._render(start_ms, self._media_ms)))
            self._completed += 1
        self._ended = True
        self._finals.clear()
        self._shown.clear()
        self._frozen.clear()

    # -- output --------------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def completed_segments(self) -> int:
        """Segments completed so far; the next one to complete has this number."""
        return self._completed

    @property
    def late_finals(self) -> int:
        """Finals dropped as stale: their time had been frozen before they could be shown and
        they had ended more than ``max_duration_s`` before the first free time. A growing count
        means ``advance`` runs ahead of the finals (give it a later settle time) or the finals
        carry more text than ``max_cps`` lets a viewer read."""
        return self._late_finals

    @property
    def held_items(self) -> int:
        """Finals, cues and segment texts held now (bounded; for tests and metrics)."""
        return len(self._finals) + len(self._frozen) + len(self._segments)

    def segment(self, n: int) -> str | None:
        """The WebVTT text of complete segment ``n``, or None when it is not complete yet or
        has left the window."""
        for seg in self._segments:
            if seg.n == n:
                return seg.text
        return None

    def playlist(self, segment_url: Callable[[int], str] = lambda n: f"subtitles/{n}.vtt") -> str:
        """The HLS media playlist of the window's complete segments; ``segment_url(n)`` gives
        each segment's URI (relative to the playlist, or absolute; default ``subtitles/N.vtt``).

        A URI never carries a query: whatever ``segment_url`` appends after ``?`` is cut, so no
        token given to the playlist request reaches a URL the server generated (players send
        the token as a header on every request; see docs/security.md)."""
        first = self._segments[0].n if self._segments else self._completed
        lines = ["#EXTM3U", "#EXT-X-VERSION:3",
                 f"#EXT-X-TARGETDURATION:{math.ceil(self._segment_ms / 1000)}",
                 f"#EXT-X-MEDIA-SEQUENCE:{first}"]
        for seg in self._segments:
            lines += [f"#EXTINF:{seg.duration_ms / 1000:.3f},", _without_query(segment_url(seg.n))]
        if self._ended:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"

    # -- internals -----------------------------------------------------------------------------

    def _complete_until(self, target: int) -> None:
        """Complete segments up to (not including) number ``target``."""
        new = target - self._completed
        if new <= 0:
            return
        expired = max(0, new - self._window)  # would leave the window at once: never rendered
        if expired:  # nobody will see these: skip their layout, start the window afresh
            self._completed += expired
            boundary_ms = self._completed * self._segment_ms
            self._free_from_ms = max(self._free_from_ms, boundary_ms)
            self._forget_shown()
            self._drop_frozen_before(boundary_ms)
        for n in range(self._completed, target):
            start_ms, end_ms = n * self._segment_ms, (n + 1) * self._segment_ms
            self._freeze(end_ms)
            self._segments.append(_Segment(n, self._segment_ms, self._render(start_ms, end_ms)))
            self._drop_frozen_before(end_ms)
            self._completed = n + 1

    def _freeze(self, boundary_ms: int) -> None:
        """Lay out the finals not yet shown and fix every cue group that starts before
        ``boundary_ms``; forget the finals that are then fully shown."""
        gap = self._rules.min_gap_ms
        pending = self._pending_cues(boundary_ms)
        self._shown.update(seq for seq, cue in pending if cue.start_s * 1000 < boundary_ms)
        groups = shape_groups([cue for _, cue in pending], self._rules)
        for group in groups:
            if group[0].start_ms >= boundary_ms:
                break
            self._frozen.extend(group)
            self._free_from_ms = group[-1].end_ms + gap
        self._held_seq = self._latest_seq
        self._forget_shown()

    def _forget_shown(self) -> None:
        """Drop the finals that end before the free time (the latest one is kept: it goes on)."""
        self._finals = {seq: cue for seq, cue in self._finals.items()
                        if seq in (self._latest_seq, self._held_seq) or _to_ms(cue.end_s) > self._free_from_ms}
        self._shown &= self._finals.keys()

    def _pending_cues(self, boundary_ms: int) -> list[tuple[int, Cue]]:
        """The finals' parts after the frozen cues. The latest final is held up to
        ``boundary_ms``; the one that was held last time, up to the start of its successor."""
        cues = []
        seqs = sorted(self._finals)
        for i, seq in enumerate(seqs):
            final = self._finals[seq]
            start, end = _to_ms(final.start_s), _to_ms(final.end_s)
            if seq == self._latest_seq:
                end = max(end, boundary_ms)
            elif seq == self._held_seq:
                end = max(end, min(boundary_ms, _to_ms(self._finals[seqs[i + 1]].start_s)))
            clipped = max(start, self._free_from_ms)
            if end > clipped or (end == clipped and start >= self._free_from_ms):
                cues.append((seq, Cue(clipped / 1000, end / 1000, final.text)))
            elif seq in self._shown or seq in (self._latest_seq, self._held_seq):
                continue  # already shown up to the free time
            elif self._free_from_ms - end <= self._rules.max_duration_ms:  # late but recent: show it now
                cues.append((seq, Cue(clipped / 1000, clipped / 1000, final.text)))
            else:  # too stale to show
                self._late_finals += 1
                self._shown.add(seq)  # counted once; forgotten below
        return cues

    def _render(self, start_ms: int, end_ms: int) -> str:
        header = f"WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:{self._mpegts_at_zero},LOCAL:00:00:00.000\n"
        cues = [c for c in self._frozen if c.start_ms < end_ms and c.end_ms > start_ms]
        return "\n".join([header, *(vtt_cue(c) for c in cues)])

    def _drop_frozen_before(self, t_ms: int) -> None:
        self._frozen = [c for c in self._frozen if c.end_ms > t_ms]


def _without_query(uri: str) -> str:
    """``uri`` without its query or fragment (and on one line)."""
    cut = min((i for i in (uri.find("?"), uri.find("#")) if i != -1), default=len(uri))
    return "".join(uri[:cut].split())


def _to_ms(t_s: float) -> int:
    if not (isinstance(t_s, (int, float)) and math.isfinite(t_s) and t_s >= 0):
        raise ValueError(f"media time must be a finite number >= 0, got {t_s!r}")
    return math.floor(t_s * 1000 + 0.5)
