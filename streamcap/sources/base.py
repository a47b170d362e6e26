"""The one interface every source implements, and the status bookkeeping they share.

A :class:`Source` is one abstract ``async recv()`` returning the next
:class:`~streamcap.core.types.Frame` and an idempotent ``aclose()`` (aiortc's track shape). One
consumer task calls ``recv()``; concurrent ``recv()`` calls are not supported.

Audio: a source opened with ``audio=True`` also returns
:class:`~streamcap.core.types.AudioChunk` s from ``recv()`` (16 kHz mono float32, ``pts_s`` on the
same media clock as its frames), interleaved with the frames in about media-time order; a stream
without a picture may then deliver audio only. With ``audio=False`` (the default) ``recv()``
returns frames only, and a source never decodes audio. Kinds without sound (webcams through
OpenCV, ``synthetic:`` without a narration) accept ``audio=True`` and deliver frames only.

Threading contract: hooks (``on_status``, ``on_drop``, ``on_reconnect``) are always called on the
event loop thread, never from a decoder thread, so they may touch loop state directly.
``frame_transform`` is the exception: it runs in the decoder thread, on every decoded RGB frame,
and must be thread-safe (a pure function of its input).

Status follows the stream state machine of :mod:`streamcap.core.status` (:data:`TRANSITIONS`);
ENDED and ERROR are terminal. The source keeps its own last state only to refuse its own illegal
reports; the stream's status of record is the processor's.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable

import numpy as np

from streamcap.core.status import TRANSITIONS, can_transition  # noqa: F401  (re-exported)
from streamcap.core.types import AudioChunk, Frame, Status, StreamState

log = logging.getLogger(__name__)

StatusHook = Callable[[Status], None]
DropHook = Callable[[str], None]
ReconnectHook = Callable[[], None]
Clock = Callable[[], int]
FrameTransform = Callable[[np.ndarray], np.ndarray]

_S = StreamState


class Source(abc.ABC):
    """A stream of frames. Subclasses implement :meth:`recv` and :meth:`aclose` and report
    status through :meth:`_set_state`."""

    id: str
    live: bool
    #: whether ``recv()`` may return audio chunks (the ``audio`` keyword)
    audio: bool

    def __init__(
        self,
        stream_id: str,
        *,
        live: bool,
        on_status: StatusHook | None = None,
        on_drop: DropHook | None = None,
        on_reconnect: ReconnectHook | None = None,
        clock: Clock | None = None,
        frame_transform: FrameTransform | None = None,
        audio: bool = False,
    ) -> None:
        self.id = stream_id
        self.live = live
        self.audio = bool(audio)
        self._on_status = on_status
        self._on_drop = on_drop
        self._on_reconnect = on_reconnect
        self._clock: Clock = clock if clock is not None else time.monotonic_ns
        self._frame_transform = frame_transform
        self._state: StreamState | None = None

    @property
    def state(self) -> StreamState | None:
        """The last status reported (None before the source starts)."""
        return self._state

    @abc.abstractmethod
    async def recv(self) -> Frame | AudioChunk:
        """The next frame (or, with ``audio=True``, audio chunk). Raises :class:`~streamcap.core.errors.SourceEnded` once a finite source is
        done (or the source was closed) and :class:`~streamcap.core.errors.SourceError` when it failed
        for good."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop the source and release what it holds. Idempotent."""

    # ------------------------------------------------------------------ helpers for subclasses

    def _set_state(self, state: StreamState, detail: str = "", code: str | None = None,
                   **extra: object) -> bool:
        """Report a status change. Repeating the current state is a no-op; an illegal change is
        logged and refused. Returns whether the status was emitted. Call on the loop thread."""
        old = self._state
        if old is state:
            return False
        if not can_transition(old, state):
            log.warning("stream %s: refused status change %s -> %s (%s)", self.id,
                        old.value if old else None, state.value, detail)
            return False
        self._state = state
        level = (logging.ERROR if state is _S.ERROR
                 else logging.WARNING if state in (_S.STALLED, _S.RECONNECTING) else logging.INFO)
        log.log(level, "stream %s: %s%s", self.id, state.value, f" ({detail})" if detail else "")
        if self._on_status is not None:
            self._on_status(Status(self.id, state, detail, code, dict(extra)))
        return True

    def _drop(self, reason: str) -> None:
        if self._on_drop is not None:
            self._on_drop(reason)

    def _reconnecting(self) -> None:
        """Call before each reconnect attempt (``on_reconnect`` counts attempts)."""
        if self._on_reconnect is not None:
            self._on_reconnect()

    def _transform(self, image: np.ndarray) -> np.ndarray:
        return image if self._frame_transform is None else self._frame_transform(image)
