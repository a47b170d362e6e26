"""The outbox of one export destination (an MQTT broker, a webhook): alerts waiting to be delivered.

What it owns: a bounded FIFO of pending :class:`OutboxMessage` s, the retry schedule of the
destination, and the counts of what became of them. Delivery is at-least-once and in order: the
shell takes the head with :meth:`Outbox.due` (it is then *in flight*), and reports back with
:meth:`Outbox.delivered` (acknowledged by the peer: a PUBACK, a 2xx), :meth:`Outbox.failed` (the
peer is down or answered "try again": the head stays, the next attempt waits
:meth:`RetrySchedule.delay_s`) or :meth:`Outbox.rejected` (the peer refused this message for good:
it leaves, counted). A message leaves the outbox only by one of these, by :data:`FullPolicy`, or
when the shell gives up at shutdown (:meth:`Outbox.abandon`).

When the outbox is full a new message costs one message, chosen by the named
:class:`FullPolicy`: ``drop_oldest`` (the default: the newest alerts matter most) drops the oldest
message that is not in flight; ``drop_newest`` refuses the new one. Either is reported as a
:class:`Dropped` with reason ``outbox_full``.

Pure: no asyncio, no I/O, no clock (the caller passes ``now_s``, any monotonic seconds). Not
thread-safe: one owner (the destination's task on the event loop) calls it.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

__all__ = ["Dropped", "DropReason", "FullPolicy", "Outbox", "OutboxMessage", "Outcome", "RetrySchedule"]


class FullPolicy(str, Enum):
    """Which message a full outbox gives up for a new one."""

    DROP_OLDEST = "drop_oldest"
    DROP_NEWEST = "drop_newest"


class DropReason(str, Enum):
    """Why a message left the outbox undelivered."""

    OUTBOX_FULL = "outbox_full"  # the outbox was full (see FullPolicy)
    REJECTED = "rejected"  # the peer refused it for good (an HTTP 4xx)
    SHUTDOWN = "shutdown"  # still pending when the exporter closed


class Outcome(str, Enum):
    """What one delivery attempt came to (the ``outcome`` label of the export metric)."""

    DELIVERED = "delivered"
    RETRY = "retry"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Delay after the ``n``-th consecutive failure (1-based): ``min(cap_s, initial_s * factor**(n-1))``
    (0.5, 1, 2, 4, … 30 s by default). No jitter: one process, one peer per destination."""

    initial_s: float = 0.5
    factor: float = 2.0
    cap_s: float = 30.0

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.cap_s < self.initial_s:
            raise ValueError("need 0 < initial_s <= cap_s")
        if self.factor < 1:
            raise ValueError("factor must be >= 1")

    def delay_s(self, failures: int) -> float:
        if failures < 1:
            return 0.0
        delay = self.initial_s
        for _ in range(failures - 1):  # no float overflow however many failures
            delay *= self.factor
            if delay >= self.cap_s:
                return self.cap_s
        return delay


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One message to deliver: ``payload`` (wire JSON text) about ``stream``, of ``kind``
    (``alerts`` or ``finals``: the MQTT topic's last level). ``seq`` numbers the messages of one
    outbox from 1, in the order they were put."""

    seq: int
    stream: str
    kind: str
    payload: str
    enqueued_s: float


@dataclass(frozen=True, slots=True)
class Dropped:
    """``message`` left the outbox undelivered, for ``reason``."""

    message: OutboxMessage
    reason: DropReason


class Outbox:
    """A bounded in-order outbox with at-least-once delivery; see the module docstring."""

    def __init__(self, capacity: int, *, policy: FullPolicy = FullPolicy.DROP_OLDEST,
                 retry: RetrySchedule = RetrySchedule()) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.policy = FullPolicy(policy)
        self.retry = retry
        self._queue: deque[OutboxMessage] = deque()
        self._in_flight: OutboxMessage | None = None
        self._next_seq = 1
        self._failures = 0  # consecutive failed attempts of this destination
        self._next_attempt_s: float | None = None  # None: no wait
        self.attempts: Counter[Outcome] = Counter()
        self.dropped: Counter[DropReason] = Counter()

    # --- state -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[OutboxMessage]:
        return iter(tuple(self._queue))

    @property
    def depth(self) -> int:
        """Messages not yet delivered, the one in flight included."""
        return len(self._queue)

    @property
    def in_flight(self) -> OutboxMessage | None:
        return self._in_flight

    @property
    def failures(self) -> int:
        """Consecutive failed attempts (0 after a success or a rejection)."""
        return self._failures

    def wait_s(self, now_s: float) -> float | None:
        """Seconds until the next attempt may start: 0 = now; None = nothing to send or a message
        is already in flight (wait for a new message or for the attempt's outcome)."""
        if not self._queue or self._in_flight is not None:
            return None
        return self.backoff_s(now_s)

    def backoff_s(self, now_s: float) -> float:
        """Seconds left of the wait after the last failure (0 when none), whatever is queued: the
        shell also waits this long before reconnecting to a peer with nothing to send."""
        if self._next_attempt_s is None:
            return 0.0
        return max(0.0, self._next_attempt_s - now_s)

    # --- putting ---------------------------------------------------------------------------

    def put(self, stream: str, kind: str, payload: str, now_s: float) -> list[Dropped]:
        """Queue a message; returns what the full policy dropped for it (empty when there was room)."""
        message = OutboxMessage(self._next_seq, stream, kind, payload, now_s)
        self._next_seq += 1
        if len(self._queue) < self.capacity:
            self._queue.append(message)
            return []
        victim = None
        if self.policy is FullPolicy.DROP_OLDEST:
            victim = next((m for m in self._queue if m is not self._in_flight), None)
        if victim is None:  # drop_newest, or every queued message is in flight
            return [self._drop(message, DropReason.OUTBOX_FULL)]
        self._queue.remove(victim)
        self._queue.append(message)
        return [self._drop(victim, DropReason.OUTBOX_FULL)]

    # --- delivering --------------------------------------------------------------------------

    def due(self, now_s: float) -> OutboxMessage | None:
        """The head, now in flight, if an attempt may start (see :meth:`wait_s`); else None."""
        if self.wait_s(now_s) != 0.0:
            return None
        self._in_flight = self._queue[0]
        return self._in_flight

    def delivered(self, message: OutboxMessage) -> None:
        """The peer acknowledged ``message`` (the one in flight): it leaves; the backoff resets."""
        self._settle(message)
        self._queue.popleft()
        self._failures = 0
        self._next_attempt_s = None
        self.attempts[Outcome.DELIVERED] += 1

    def rejected(self, message: OutboxMessage) -> Dropped:
        """The peer refused ``message`` for good: it leaves, counted; the peer is up, so no backoff."""
        self._settle(message)
        self._queue.popleft()
        self._failures = 0
        self._next_attempt_s = None
        self.attempts[Outcome.REJECTED] += 1
        return self._drop(message, DropReason.REJECTED)

    def failed(self, now_s: float, message: OutboxMessage | None = None) -> float:
        """An attempt failed: of ``message`` (in flight; it stays at the head, a retry), or of the
        connection with no message in flight (``None``). The next attempt waits the schedule's
        delay for the consecutive failures so far; returns that delay."""
        if message is not None:
            self._settle(message)
            self.attempts[Outcome.RETRY] += 1
        self._failures += 1
        delay = self.retry.delay_s(self._failures)
        self._next_attempt_s = now_s + delay
        return delay

    def abandon(self) -> list[Dropped]:
        """Give up on everything pending (shutdown): each one reported with reason ``shutdown``."""
        gone = [self._drop(m, DropReason.SHUTDOWN) for m in self._queue]
        self._queue.clear()
        self._in_flight = None
        return gone

    def _settle(self, message: OutboxMessage) -> None:
        if self._in_flight is None or message.seq != self._in_flight.seq:
            raise ValueError(f"message {message.seq} is not the one in flight")
        self._in_flight = None

    def _drop(self, message: OutboxMessage, reason: DropReason) -> Dropped:
        self.dropped[reason] += 1
        return Dropped(message, reason)
