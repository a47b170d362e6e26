"""Windowing: which windows of media time are ready, and which frames go into each.

:class:`WindowPlanner` owns the window grid of one stream. Window ``i`` covers
``[t0 + i*stride_s, t0 + i*stride_s + window_s]`` of media time, ``t0`` being the pts of the
first frame the planner sees. Starts and ends are computed from ``t0`` and ``i`` (never by
summing strides), so a stream that runs for days does not drift. With ``aligned`` sampling (the
caption models) window ``i`` is moved back, by less than one step, onto the stream's grid of
``window_s / (K-1)``: it ends on the last grid point at or before ``t0 + i*stride_s + window_s``,
so overlapping windows show the same frames. A window is due once a frame with pts >= its end has
arrived; each window is handed out once, in order.

A frame that arrives long after the previous one (a gap wider than a window: a container
timestamp jump, a stall) leaves windows wholly inside the gap with no frame to show. Those are
skipped in one step (counted: :attr:`WindowPlanner.last_gap_skipped`) instead of being captioned
from a stale picture, so the work per frame stays bounded whatever the jump. Media times beyond
:data:`MAX_MEDIA_S` are refused.

Live sources set ``max_backlog``: when more windows are due at once (a burst after a stall, an
engine that fell behind) the older ones are skipped and counted, so a live stream never falls
further behind. Files leave it at None and every window is captioned.

:func:`pick_frames` chooses, for each of the K evenly spaced target times of a window, the frame
nearest in pts. When the source is slower than K frames per window (or frames were dropped) the
same frame is picked for several targets, so a window always has exactly K frames.

Pure: no asyncio, clock or I/O; callers pass media times. Not thread-safe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from streamcap.core.ringbuffer import FrameRing, nearest_index
from streamcap.core.types import VIDEO_TRACK, Frame, Window

# Tolerance for "a frame at pts >= window end": pts derived from frame counters (n / fps) may
# land a few ulps below the nominal end and must still close the window.
PTS_EPSILON_S = 1e-6

#: how a window's K frames are placed: ``span`` (both ends included, ``window/(K-1)`` apart: the
#: caption models were trained so), ``aligned`` (the same spacing, but on a media-time grid of
#: ``window/(K-1)`` from the stream's first frame, the newest target on the last grid point at or
#: before the window's end: consecutive windows share frames whatever the stride, so a per-frame
#: cache hits; the caption models) or ``grid`` (``window/K`` apart, the newest at the window's end:
#: with the stride a multiple of the grid consecutive windows share frames; the scene describer)
SAMPLINGS = ("span", "aligned", "grid")

#: the largest media time (seconds) a planner accepts: ~317 years, far beyond any real stream and
#: still small enough that window starts stay exact to well under a microsecond
MAX_MEDIA_S = 1e10


@dataclass(frozen=True, slots=True)
class WindowSpec:
    index: int
    start_s: float
    end_s: float


class WindowPlanner:
    """Plans the windows of one stream from the pts of the frames it has received."""

    def __init__(
        self,
        window_s: float,
        stride_s: float,
        frames_per_window: int,
        *,
        max_backlog: int | None = None,
        sampling: str = "span",
    ) -> None:
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"window_s must be a finite number > 0, got {window_s!r}")
        if not (math.isfinite(stride_s) and stride_s > 0):
            raise ValueError(f"stride_s must be a finite number > 0, got {stride_s!r}")
        if int(frames_per_window) != frames_per_window or frames_per_window < 2:
            raise ValueError(f"frames_per_window must be an integer >= 2, got {frames_per_window!r}")
        if max_backlog is not None and (int(max_backlog) != max_backlog or max_backlog < 1):
            raise ValueError(f"max_backlog must be None or an integer >= 1, got {max_backlog!r}")
        self._window_s = float(window_s)
        self._stride_s = float(stride_s)
        self._k = int(frames_per_window)
        self._max_backlog = max_backlog
        # ``aligned``: the stream's grid, the trained spacing of the K frames (both ends included)
        self._grid_step_s = self._window_s / (self._k - 1)
        if sampling == "aligned" and stride_s < self._grid_step_s - PTS_EPSILON_S:
            # a stride shorter than the grid step would end consecutive windows on the same grid
            # point (the same frames captioned twice): such a planner samples the plain span
            sampling = "span"
        self._sampling = sampling
        self._t0_s: float | None = None
        self._next_index = 0
        self._skipped_total = 0
        self._last_skipped = 0
        self._gap_skipped_total = 0
        self._last_gap_skipped = 0
        self._last_pts_s: float | None = None

    @property
    def window_s(self) -> float:
        return self._window_s

    @property
    def stride_s(self) -> float:
        return self._stride_s

    @property
    def frames_per_window(self) -> int:
        return self._k

    @property
    def sampling(self) -> str:
        """The sampling in use (``aligned`` asked with a stride below its grid step gives ``span``)."""
        return self._sampling

    @property
    def max_backlog(self) -> int | None:
        return self._max_backlog

    @property
    def t0_s(self) -> float | None:
        """Media time of window 0's start; None until the first :meth:`due` call."""
        return self._t0_s

    @property
    def next_index(self) -> int:
        """Index of the next window that :meth:`due` will hand out or skip."""
        return self._next_index

    @property
    def skipped_total(self) -> int:
        """Windows skipped because of ``max_backlog`` since the planner was made."""
        return self._skipped_total

    @property
    def last_skipped(self) -> int:
        """Windows skipped by the latest :meth:`due` call."""
        return self._last_skipped

    @property
    def gap_skipped_total(self) -> int:
        """Windows skipped because they fell wholly inside a gap between frames."""
        return self._gap_skipped_total

    @property
    def last_gap_skipped(self) -> int:
        """Windows skipped as inside a gap by the latest :meth:`due` call."""
        return self._last_gap_skipped

    def spec(self, index: int) -> WindowSpec:
        if self._t0_s is None:
            raise ValueError("the planner has not seen a frame yet")
        if self._sampling == "aligned":
            n = self._grid_end(index)
            step = self._grid_step_s
            return WindowSpec(index, self._t0_s + (n - self._k + 1) * step, self._t0_s + n * step)
        start = self._t0_s + index * self._stride_s
        return WindowSpec(index, start, start + self._window_s)

    def _grid_end(self, index: int) -> int:
        """``aligned``: the grid point (in steps of ``window_s / (K-1)`` from ``t0``) window
        ``index`` ends on: the last one at or before its nominal end ``index*stride + window``."""
        return math.floor((index * self._stride_s + self._window_s) / self._grid_step_s + 1e-9)

    def due(self, latest_pts_s: float) -> list[WindowSpec]:
        """Windows that ended at or before ``latest_pts_s`` and were not handed out yet, oldest
        first. Call it after every stored frame; the first call fixes ``t0``. Windows wholly
        inside the gap since the previous call are skipped (see :attr:`last_gap_skipped`).
        With ``max_backlog`` set, only the newest ``max_backlog`` of the rest are returned and
        the older ones are skipped for good (see :attr:`last_skipped`)."""
        if not (math.isfinite(latest_pts_s) and abs(latest_pts_s) <= MAX_MEDIA_S):
            raise ValueError(f"latest_pts_s must be finite and within ±{MAX_MEDIA_S:g} s, "
                             f"got {latest_pts_s!r}")
        if self._t0_s is None:
            self._t0_s = float(latest_pts_s)
        previous_s, self._last_pts_s = self._last_pts_s, float(latest_pts_s)
        end_count = self._windows_ended_by(latest_pts_s)
        first = self._next_index
        self._last_skipped = 0
        self._last_gap_skipped = 0
        if end_count <= first:
            return []
        indices: list[int] | range = range(first, end_count)
        if previous_s is not None and latest_pts_s - previous_s > self._window_s:
            # windows starting after the previous frame and ending before this one saw nothing
            gap_lo = max(first, self._first_start_after(previous_s))
            gap_hi = min(end_count, self._windows_ended_by(latest_pts_s - 2 * PTS_EPSILON_S))
            if gap_hi > gap_lo:
                self._last_gap_skipped = gap_hi - gap_lo
                self._gap_skipped_total += self._last_gap_skipped
                indices = [*range(first, gap_lo), *range(gap_hi, end_count)]
        if self._max_backlog is not None and len(indices) > self._max_backlog:
            self._last_skipped = len(indices) - self._max_backlog
            self._skipped_total += self._last_skipped
            indices = indices[-self._max_backlog:]
        self._next_index = end_count
        return [self.spec(i) for i in indices]

    def sample_targets(self, spec: WindowSpec) -> list[float]:
        """K times evenly spaced over ``[start_s, end_s]``, both ends included (``span``, and
        ``aligned``, whose windows lie on the stream's grid of ``window_s / (K-1)``); or
        (``grid``) the K times ``end_s - j * window_s / K``: on a grid of ``window_s / K``, so
        when the stride is a multiple of it consecutive windows share their frames (and a
        per-frame cache hits), the newest target at the window's end."""
        span = spec.end_s - spec.start_s
        last = self._k - 1
        if self._sampling == "aligned":
            assert self._t0_s is not None
            # from grid indices (not by adding steps) so windows name a shared frame by one float
            n = self._grid_end(spec.index)
            return [self._t0_s + (n - last + j) * self._grid_step_s for j in range(self._k)]
        if self._sampling == "grid":
            step = span / self._k
            return [spec.end_s - step * (last - j) for j in range(self._k)]
        return [spec.start_s + span * j / last for j in range(self._k)]

    def release_pts(self) -> float:
        """Media time before which no future window needs frames (``-inf`` before the first
        frame). Release the ring with it after picking the frames of every due window."""
        if self._t0_s is None:
            return -math.inf
        return self.spec(self._next_index).start_s

    def _first_start_after(self, pts_s: float) -> int:
        """Index of the first window whose start is later than ``pts_s`` (beyond ``PTS_EPSILON_S``)."""
        assert self._t0_s is not None
        limit = pts_s + PTS_EPSILON_S
        i = max(math.floor((limit - self._t0_s) / self._stride_s), 0)
        while i > 0 and self.spec(i - 1).start_s > limit:
            i -= 1
        while self.spec(i).start_s <= limit:
            i += 1
        return i

    def _windows_ended_by(self, pts_s: float) -> int:
        """How many windows (0, 1, ...) have ``end <= pts_s`` (within ``PTS_EPSILON_S``)."""
        assert self._t0_s is not None
        limit = pts_s + PTS_EPSILON_S
        n = math.floor((limit - self._t0_s - self._window_s) / self._stride_s) + 1
        n = max(n, 0)
        # correct the float estimate against the exact per-window formula
        while n > 0 and self.spec(n - 1).end_s > limit:
            n -= 1
        while self.spec(n).end_s <= limit:
            n += 1
        return n


def pick_frames(source: FrameRing | Sequence[Frame], targets: Sequence[float]) -> list[Frame]:
    """For each target time, the frame nearest in pts (the earlier one on a tie).

    A frame may be picked for several targets when the source delivers fewer frames than
    targets over the window (slow source, dropped frames); the result always has one frame per
    target. From a ring the frames are copies; from a sequence they are the given objects.
    Raises ValueError when there are no frames to pick from.
    """
    if isinstance(source, FrameRing):
        frames = source.nearest_many(targets)
        if not frames and targets:
            raise ValueError("cannot pick frames from an empty ring")
        return frames
    ordered = sorted(source, key=lambda f: f.pts_s)
    if not ordered:
        if not targets:
            return []
        raise ValueError("cannot pick frames from an empty list")
    pts = [f.pts_s for f in ordered]
    return [ordered[nearest_index(pts, t)] for t in targets]


def build_window(stream: str, spec: WindowSpec, frames: Sequence[Frame], track: str = VIDEO_TRACK) -> Window:
    """The :class:`~streamcap.core.types.Window` of ``track`` for ``spec`` from its picked frames."""
    if not frames:
        raise ValueError(f"window {spec.index} of stream {stream!r} has no frames")
    return Window(stream=stream, index=spec.index, start_s=spec.start_s, end_s=spec.end_s,
                  frames=tuple(frames), track=track)


def min_frame_gap_s(max_fps: float) -> float:
    """Ingest sub-sampling: a frame closer than this (seconds of media time) to the last kept one
    is skipped, so at most ``max_fps`` frames a second are kept (1 ms of slack for timestamps
    rounded to the container's time base). The processor and the decoders apply the same rule."""
    if not max_fps > 0:
        raise ValueError(f"max_fps must be > 0, got {max_fps!r}")
    return 1.0 / max_fps - 1e-3


def min_ring_capacity(window_s: float, fps: float) -> int:
    """Smallest ring that can hold one whole window at ``fps`` plus the frame before it.

    A BLOCK ring smaller than this deadlocks: it fills before the window it waits on is due.
    """
    if not (window_s > 0 and fps > 0):
        raise ValueError(f"window_s and fps must be > 0, got {window_s!r}, {fps!r}")
    return math.ceil(window_s * fps) + 2
