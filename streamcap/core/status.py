"""A stream's status: one state machine per stream, the only record of it.

Sources report what they see (connected, stalled, reconnecting, ended); the
:class:`~streamcap.core.processor.StreamProcessor` feeds those reports, and its own verdicts
(ended after the last window, error), to its :class:`StreamStatus`. Illegal changes are refused
(returned as None) and a repeated state is not a change; ENDED and ERROR are terminal. The hub,
``/healthz`` and the stream list all read this one record. Pure: no clock, no I/O.
"""

from __future__ import annotations

from streamcap.core.types import Status, StreamState

_S = StreamState
#: legal status changes; anything else is refused
TRANSITIONS: dict[StreamState, frozenset[StreamState]] = {
    _S.STARTING: frozenset({_S.LIVE, _S.RECONNECTING, _S.ENDED, _S.ERROR}),
    _S.LIVE: frozenset({_S.STALLED, _S.RECONNECTING, _S.ENDED, _S.ERROR}),
    _S.STALLED: frozenset({_S.LIVE, _S.RECONNECTING, _S.ENDED, _S.ERROR}),
    _S.RECONNECTING: frozenset({_S.LIVE, _S.ENDED, _S.ERROR}),
    _S.ENDED: frozenset(),
    _S.ERROR: frozenset(),
}
TERMINAL = frozenset({_S.ENDED, _S.ERROR})


def can_transition(old: StreamState | None, new: StreamState) -> bool:
    """Whether a stream may move from ``old`` (None: not started) to ``new``."""
    if old is None:
        return new in (_S.STARTING, _S.ERROR)
    return new in TRANSITIONS[old]


class StreamStatus:
    """The current status of one stream and the rule for changing it."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self._status = Status(stream, StreamState.STARTING, "")

    @property
    def current(self) -> Status:
        return self._status

    @property
    def state(self) -> StreamState:
        return self._status.state

    @property
    def terminal(self) -> bool:
        return self._status.state in TERMINAL

    def change(self, state: StreamState, detail: str = "", code: str | None = None,
               extra: dict | None = None, *, force: bool = False) -> Status | None:
        """Move to ``state``; returns the new :class:`Status` to publish, or None when the change
        is refused (illegal) or no change. ``force``: the stream is going away — publish this
        terminal status even over another terminal one."""
        old = self._status.state
        if force:
            if state not in TERMINAL:
                raise ValueError("only a terminal state can be forced")
        elif state is old:
            # a repeat is no change, except the source's own first "starting" detail (the machine
            # starts in STARTING with none, before the source has said what it is doing)
            if not (state is StreamState.STARTING and detail and not self._status.detail):
                return None
        elif not can_transition(old, state):
            return None
        self._status = Status(self.stream, state, detail, code, dict(extra or {}))
        return self._status
