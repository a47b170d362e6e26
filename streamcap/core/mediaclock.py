"""The media clock: turns what a container says about a frame's time into media time we can trust.

Pure (no I/O, no clock of its own, no asyncio): the source tells it, for each decoded frame, the
container's presentation time (seconds, or None when there is none) and the wall/capture time the
frame was received; it answers with the media time to use and, when the container's time was not
believable, the discontinuity it saw. One clock per stream, driven from one thread.

Rules
-----
- Media time starts at 0 with the stream's first frame and is strictly increasing.
- Within a *segment* media time follows the container: ``base + (pts - segment's first pts)``.
- A **forward jump** is bounded by what was actually received. Live: a frame may not move media
  time further than the wall time elapsed since the previous frame plus ``live_slack_s`` (a burst
  of frames after a network hiccup still passes; a camera clock that leaps an hour does not).
  Files (decoded as fast as we like, so wall time says nothing): a step larger than ``max_jump_s``
  (default ``max(2 s, 10 frame intervals)``). Either way the frame starts a new segment one frame
  interval after the previous one and the jump is reported (:attr:`DropReason.PTS_JUMP`).
- A **rewind** (the container's time going back by a frame interval or more, e.g. a restart at 4 s
  after 8 s) starts a new segment one frame interval after the previous frame, reported as
  :attr:`DropReason.PTS_REWIND`: the frames are kept, not silently dropped. A smaller step back or
  a repeated pts is nudged just past the previous frame (``min_step_s``) without a report.
- A frame without pts: files advance by one frame interval; live streams by the wall time elapsed
  (at least ``min_step_s``).
- A new connection (:meth:`new_segment`): a file restarts nowhere (files have one connection);
  a live stream's next frame starts at the wall time elapsed since the stream's first frame, and
  at least one frame interval after the previous frame, so media time keeps pace with real time
  across an outage.

Reports are discontinuities, not lost frames; they are counted on the drop counters anyway
(``streamcap_frames_dropped_total{reason="pts_jump"|"pts_rewind"}``), one per discontinuity, so
that every gap and rewind is visible in ``/metrics`` and in the stream's drop events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from streamcap.core.types import DropReason

_NS = 1_000_000_000
#: the frame interval assumed when the container gives no frame rate
DEFAULT_STEP_S = 0.04


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a frame lands: its media time, and the discontinuity it revealed (None: none)."""

    media_s: float
    discontinuity: DropReason | None = None
    #: what the container claimed the step was (seconds; negative for a rewind), when reported
    claimed_step_s: float = 0.0


class MediaClock:
    """Media time for one stream; see the module docstring for the rules."""

    def __init__(self, *, live: bool, nominal_fps: float = 0.0, max_jump_s: float | None = None,
                 live_slack_s: float = 0.5, min_step_s: float = 1e-3) -> None:
        if live_slack_s < 0 or min_step_s <= 0:
            raise ValueError("live_slack_s must be >= 0 and min_step_s > 0")
        if max_jump_s is not None and not max_jump_s > 0:
            raise ValueError("max_jump_s must be positive")
        self.live = live
        self.live_slack_s = live_slack_s
        self.min_step_s = min_step_s
        self._max_jump_s = max_jump_s
        self._step_s = DEFAULT_STEP_S
        self.set_fps(nominal_fps)
        self._last_s: float | None = None  # media time of the previous frame
        self._last_wall_ns = 0
        self._first_wall_ns: int | None = None
        self._seg_pts_s: float | None = None  # container time at the segment's origin
        self._seg_media_s = 0.0  # media time at the segment's origin
        self._new_segment = True
        self.discontinuities = 0

    # ------------------------------------------------------------------ settings

    def set_fps(self, fps: float) -> None:
        """The container's nominal frame rate (0 or nonsense: unknown)."""
        ok = math.isfinite(fps) and 0 < fps <= 1000
        self._step_s = 1.0 / fps if ok else DEFAULT_STEP_S

    @property
    def step_s(self) -> float:
        """One frame interval (seconds)."""
        return self._step_s

    @property
    def max_jump_s(self) -> float:
        """A file's largest believable forward step."""
        if self._max_jump_s is not None:
            return self._max_jump_s
        return max(2.0, 10 * self._step_s)

    @property
    def last_s(self) -> float | None:
        """The media time of the previous frame (None before the first)."""
        return self._last_s

    # ------------------------------------------------------------------ frames

    def new_segment(self) -> None:
        """The next frame comes from a new connection."""
        self._new_segment = True

    def place(self, pts_s: float | None, wall_ns: int) -> Placement:
        """The media time of a frame with container time ``pts_s`` received at ``wall_ns``."""
        if pts_s is not None and not math.isfinite(pts_s):
            pts_s = None
        if self._last_s is None:
            self._first_wall_ns = wall_ns
            return self._start_segment(0.0, pts_s, wall_ns)
        last = self._last_s
        if self._new_segment:
            start = last + self._step_s
            if self.live and self._first_wall_ns is not None:
                start = max(start, (wall_ns - self._first_wall_ns) / _NS)
            return self._start_segment(start, pts_s, wall_ns)
        wall_step_s = max(0.0, (wall_ns - self._last_wall_ns) / _NS)
        if pts_s is None or self._seg_pts_s is None:
            if pts_s is not None:  # the segment had no pts so far: it starts here
                return self._start_segment(last + self._advance_without_pts(wall_step_s), pts_s,
                                           wall_ns)
            return self._accept(last + self._advance_without_pts(wall_step_s), wall_ns)
        media = self._seg_media_s + (pts_s - self._seg_pts_s)
        step = media - last
        if step <= -self._step_s + 1e-9:
            return self._rebase(DropReason.PTS_REWIND, step, pts_s, wall_ns)
        limit = wall_step_s + self.live_slack_s if self.live else self.max_jump_s
        if step > limit:
            return self._rebase(DropReason.PTS_JUMP, step, pts_s, wall_ns)
        if step < self.min_step_s:  # a repeated pts or a little step back: nudge it forward
            media = last + self.min_step_s
        return self._accept(media, wall_ns)

    # ------------------------------------------------------------------ internals

    def _advance_without_pts(self, wall_step_s: float) -> float:
        return max(self.min_step_s, wall_step_s) if self.live else self._step_s

    def _start_segment(self, media_s: float, pts_s: float | None, wall_ns: int,
                       reason: DropReason | None = None, claimed_step_s: float = 0.0) -> Placement:
        self._new_segment = False
        self._seg_pts_s = pts_s
        self._seg_media_s = media_s
        placed = self._accept(media_s, wall_ns)
        if reason is None:
            return placed
        self.discontinuities += 1
        return Placement(placed.media_s, reason, claimed_step_s)

    def _rebase(self, reason: DropReason, step_s: float, pts_s: float, wall_ns: int) -> Placement:
        assert self._last_s is not None
        return self._start_segment(self._last_s + self._step_s, pts_s, wall_ns, reason, step_s)

    def _accept(self, media_s: float, wall_ns: int) -> Placement:
        if self._last_s is not None and media_s <= self._last_s:
            media_s = self._last_s + self.min_step_s
        self._last_s = media_s
        self._last_wall_ns = wall_ns
        return Placement(media_s)


__all__ = ["DEFAULT_STEP_S", "MediaClock", "Placement"]
