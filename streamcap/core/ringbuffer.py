"""A fixed-capacity, preallocated ring of frames: one per source, between decode and windowing.

The ring owns the frames a source has decoded and windowing has not yet finished with. Its
storage is allocated once (a ``(capacity, H, W, 3)`` uint8 array plus ``seq``/``capture_ns``/
``pts_s`` arrays), so memory stays the same however long a stream runs. When it is full the
:class:`~streamcap.core.types.DropPolicy` decides: ``DROP_OLDEST`` (live) overwrites the oldest
frame and counts a ``"ring_full"`` drop; ``BLOCK`` (files) refuses the push and the caller
waits until :meth:`FrameRing.release_before` frees room — nothing is lost, nothing counted.

Frames are kept in pts order; a frame whose pts goes backwards is not stored and is counted
as a ``"pts_regression"`` drop. Every frame handed out is a copy, never a view of a slot that
a later push may overwrite.

Pure: no asyncio, clock or I/O. Not thread-safe: one owner (the pipeline task of its source)
calls every method.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

import numpy as np

from streamcap.core.types import DropPolicy, Frame

DROP_RING_FULL = "ring_full"
DROP_PTS_REGRESSION = "pts_regression"


class PushOutcome(str, Enum):
    STORED = "stored"
    REPLACED_OLDEST = "replaced_oldest"  # stored; the oldest frame was overwritten (a drop)
    REFUSED_FULL = "refused_full"  # BLOCK policy: not stored, push again after a release
    DISCARDED = "discarded"  # not stored, counted as a drop (``reason`` says why)


@dataclass(frozen=True, slots=True)
class PushResult:
    outcome: PushOutcome
    reason: str | None = None  # drop/refusal reason, e.g. "ring_full"
    dropped_seq: int | None = None  # seq of the frame that was lost, if one was

    @property
    def stored(self) -> bool:
        return self.outcome in (PushOutcome.STORED, PushOutcome.REPLACED_OLDEST)

    @property
    def dropped(self) -> bool:
        """A frame was lost (counted in :attr:`FrameRing.drops`)."""
        return self.dropped_seq is not None


class FrameRing:
    """Fixed-capacity ring of same-shape frames of one stream, ordered by pts."""

    def __init__(self, capacity: int, frame_shape: tuple[int, int, int], policy: DropPolicy) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        shape = tuple(int(d) for d in frame_shape)
        if len(shape) != 3 or shape[2] != 3 or min(shape) < 1:
            raise ValueError(f"frame_shape must be (H, W, 3) with H, W >= 1, got {frame_shape!r}")
        self._capacity = capacity
        self._frame_shape: tuple[int, int, int] = shape  # type: ignore[assignment]
        self._policy = DropPolicy(policy)
        self._images = np.zeros((capacity, *shape), dtype=np.uint8)
        self._seq = np.zeros(capacity, dtype=np.int64)
        self._capture_ns = np.zeros(capacity, dtype=np.int64)
        self._pts_s = np.zeros(capacity, dtype=np.float64)
        self._head = 0  # slot of the oldest frame
        self._count = 0
        self._stream: str | None = None
        self._drops: dict[str, int] = {}

    # -- properties ---------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return self._frame_shape

    @property
    def policy(self) -> DropPolicy:
        return self._policy

    @property
    def stream(self) -> str | None:
        """The stream id of the frames held (set by the first push)."""
        return self._stream

    @property
    def is_full(self) -> bool:
        return self._count == self._capacity

    @property
    def drops(self) -> dict[str, int]:
        """Frames lost so far, by reason (a copy)."""
        return dict(self._drops)

    @property
    def latest_pts_s(self) -> float | None:
        return None if self._count == 0 else float(self._pts_s[self._slot(self._count - 1)])

    @property
    def oldest_pts_s(self) -> float | None:
        return None if self._count == 0 else float(self._pts_s[self._head])

    @property
    def latest_capture_ns(self) -> int | None:
        return None if self._count == 0 else int(self._capture_ns[self._slot(self._count - 1)])

    def __len__(self) -> int:
        return self._count

    # -- writing ------------------------------------------------------------------------------

    def push(self, frame: Frame) -> PushResult:
        """Copy ``frame`` in. Raises ValueError for a frame of another shape, dtype or stream."""
        image = frame.image
        if image.shape != self._frame_shape:
            raise ValueError(
                f"frame of shape {image.shape} pushed into a ring of {self._frame_shape}; resize first"
            )
        if image.dtype != np.uint8:
            raise ValueError(f"frame image must be uint8, got {image.dtype}")
        if not math.isfinite(frame.pts_s):
            raise ValueError(f"frame pts must be finite, got {frame.pts_s!r}")
        if self._stream is None:
            self._stream = frame.stream
        elif frame.stream != self._stream:
            raise ValueError(f"frame of stream {frame.stream!r} pushed into the ring of {self._stream!r}")

        latest = self.latest_pts_s
        if latest is not None and frame.pts_s < latest:
            self._count_drop(DROP_PTS_REGRESSION)
            return PushResult(PushOutcome.DISCARDED, DROP_PTS_REGRESSION, frame.seq)

        outcome, dropped_seq = PushOutcome.STORED, None
        if self._count == self._capacity:
            if self._policy is DropPolicy.BLOCK:
                return PushResult(PushOutcome.REFUSED_FULL, DROP_RING_FULL)
            dropped_seq = int(self._seq[self._head])
            self._head = (self._head + 1) % self._capacity
            self._count -= 1
            self._count_drop(DROP_RING_FULL)
            outcome = PushOutcome.REPLACED_OLDEST

        slot = self._slot(self._count)
        np.copyto(self._images[slot], image)
        self._seq[slot] = frame.seq
        self._capture_ns[slot] = frame.capture_ns
        self._pts_s[slot] = frame.pts_s
        self._count += 1
        if outcome is PushOutcome.REPLACED_OLDEST:
            return PushResult(outcome, DROP_RING_FULL, dropped_seq)
        return PushResult(outcome)

    def release_before(self, pts_s: float) -> int:
        """Free the frames no lookup at or after ``pts_s`` can return; return how many.

        That is every frame older than ``pts_s`` except the newest of them, which may still be
        the nearest frame to ``pts_s`` (a frame at exactly ``pts_s`` frees all older ones).
        """
        if math.isnan(pts_s):
            raise ValueError("release_before(nan)")
        idx = self._ordered_slots()
        pts = self._pts_s[idx]
        older = int(np.searchsorted(pts, pts_s, side="left"))  # frames with pts < pts_s
        exact = older < len(pts) and pts[older] == pts_s
        freed = older if exact else max(older - 1, 0)
        self._head = (self._head + freed) % self._capacity
        self._count -= freed
        return freed

    def clear(self) -> None:
        """Forget every frame (e.g. when a source restarts its media clock). Drops are kept."""
        self._head = 0
        self._count = 0

    # -- reading (copies) ---------------------------------------------------------------------

    def frames_between(self, start_s: float, end_s: float) -> list[Frame]:
        """Copies of the frames with ``start_s <= pts <= end_s``, oldest first."""
        idx = self._ordered_slots()
        pts = self._pts_s[idx]
        lo = int(np.searchsorted(pts, start_s, side="left"))
        hi = int(np.searchsorted(pts, end_s, side="right"))
        return [self._frame_at(int(s)) for s in idx[lo:hi]]

    def nearest(self, pts_s: float) -> Frame | None:
        """A copy of the frame nearest in pts to ``pts_s`` (the earlier on a tie); None if empty."""
        found = self.nearest_many([pts_s])
        return found[0] if found else None

    def nearest_many(self, targets: Iterable[float]) -> list[Frame]:
        """For each target, a copy of the nearest frame (see :meth:`nearest`); [] if empty.

        A frame nearest to several targets is returned once per target (each a separate copy).
        """
        targets = list(targets)
        if self._count == 0:
            return []
        idx = self._ordered_slots()
        pts = self._pts_s[idx].tolist()
        return [self._frame_at(int(idx[nearest_index(pts, t)])) for t in targets]

    # -- internals ----------------------------------------------------------------------------

    def _slot(self, offset: int) -> int:
        return (self._head + offset) % self._capacity

    def _ordered_slots(self) -> np.ndarray:
        return (self._head + np.arange(self._count)) % self._capacity

    def _frame_at(self, slot: int) -> Frame:
        return Frame(
            stream=self._stream or "",
            seq=int(self._seq[slot]),
            capture_ns=int(self._capture_ns[slot]),
            pts_s=float(self._pts_s[slot]),
            image=self._images[slot].copy(),
        )

    def _count_drop(self, reason: str) -> None:
        self._drops[reason] = self._drops.get(reason, 0) + 1


def nearest_index(sorted_pts: list[float], target: float) -> int:
    """Index of the value nearest ``target`` in a non-empty ascending list; earlier on a tie."""
    i = bisect.bisect_left(sorted_pts, target)
    if i == 0:
        return 0
    if i == len(sorted_pts):
        return i - 1
    before, after = sorted_pts[i - 1], sorted_pts[i]
    return i - 1 if target - before <= after - target else i
