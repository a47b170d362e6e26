"""The export outbox on simulated time: in-order at-least-once delivery (a message leaves only when
acknowledged), retries on a capped exponential schedule, a bounded size with a named full policy
whose drops are counted, rejections that are not retried."""

from __future__ import annotations

import pytest

from streamcap.alerts.outbox import DropReason, FullPolicy, Outbox, Outcome, RetrySchedule


def _fill(box: Outbox, n: int, now_s: float = 0.0) -> None:
    for i in range(n):
        assert box.put("cam", "alerts", f"m{i}", now_s) == []


def _payloads(box: Outbox) -> list[str]:
    return [m.payload for m in box]


def test_retry_schedule_doubles_from_half_a_second_up_to_the_cap():
    schedule = RetrySchedule(initial_s=0.5, factor=2.0, cap_s=30.0)
    assert [schedule.delay_s(n) for n in range(0, 9)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert schedule.delay_s(10_000) == 30.0  # no overflow however long the peer stays down


@pytest.mark.parametrize("kwargs", [{"initial_s": 0}, {"initial_s": 2, "cap_s": 1}, {"factor": 0.5}])
def test_retry_schedule_refuses_nonsense(kwargs):
    with pytest.raises(ValueError):
        RetrySchedule(**kwargs)


def test_messages_are_delivered_in_order_and_leave_only_when_acknowledged():
    box = Outbox(10)
    _fill(box, 3)
    first = box.due(0.0)
    assert first is not None and first.payload == "m0" and first.seq == 1
    assert box.due(0.0) is None and box.wait_s(0.0) is None  # one in flight at a time: order kept
    assert box.depth == 3  # in flight is still pending
    box.delivered(first)
    sent = []
    while (m := box.due(0.0)) is not None:
        sent.append(m.payload)
        box.delivered(m)
    assert sent == ["m1", "m2"] and box.depth == 0 and box.attempts[Outcome.DELIVERED] == 3
    assert box.wait_s(0.0) is None  # nothing to send


def test_a_failed_attempt_keeps_the_message_at_the_head_and_backs_off_exponentially():
    box = Outbox(10, retry=RetrySchedule(initial_s=0.5, cap_s=4.0))
    _fill(box, 2)
    now = 0.0
    waits = []
    for _ in range(5):
        m = box.due(now)
        assert m is not None and m.payload == "m0"  # the same message again: nothing skipped
        waits.append(box.failed(now, m))
        assert box.due(now + waits[-1] - 0.01) is None  # not before the delay
        assert box.wait_s(now) == pytest.approx(waits[-1])
        now += waits[-1]
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0] and box.attempts[Outcome.RETRY] == 5
    m = box.due(now)
    box.delivered(m)
    assert box.failures == 0 and box.wait_s(now) == 0.0  # success resets the backoff
    assert box.due(now).payload == "m1"


def test_a_connection_failure_with_nothing_in_flight_backs_off_without_counting_a_retry():
    box = Outbox(10, retry=RetrySchedule(initial_s=1.0, cap_s=8.0))
    assert box.failed(0.0) == 1.0 and box.failed(1.0) == 2.0
    assert box.backoff_s(2.0) == 1.0 and box.attempts[Outcome.RETRY] == 0
    box.put("cam", "alerts", "late", 2.5)
    assert box.due(2.5) is None and box.due(3.0).payload == "late"


def test_drop_oldest_counts_outbox_full_and_keeps_the_newest_in_order():
    box = Outbox(3, policy=FullPolicy.DROP_OLDEST)
    _fill(box, 3)
    dropped = box.put("cam", "alerts", "m3", 1.0)
    assert [(d.message.payload, d.reason) for d in dropped] == [("m0", DropReason.OUTBOX_FULL)]
    assert _payloads(box) == ["m1", "m2", "m3"] and box.dropped[DropReason.OUTBOX_FULL] == 1


def test_drop_oldest_never_drops_the_message_in_flight():
    box = Outbox(3)
    _fill(box, 3)
    in_flight = box.due(0.0)
    dropped = box.put("cam", "alerts", "m3", 1.0)
    assert [d.message.payload for d in dropped] == ["m1"]
    assert _payloads(box) == ["m0", "m2", "m3"]
    box.delivered(in_flight)  # its acknowledgement still settles it
    assert _payloads(box) == ["m2", "m3"]


def test_a_one_message_outbox_with_its_message_in_flight_drops_the_new_one():
    box = Outbox(1)
    _fill(box, 1)
    box.due(0.0)
    assert [d.message.payload for d in box.put("cam", "alerts", "new", 0.0)] == ["new"]


def test_drop_newest_refuses_the_new_message():
    box = Outbox(2, policy=FullPolicy.DROP_NEWEST)
    _fill(box, 2)
    dropped = box.put("cam", "alerts", "m2", 0.0)
    assert [(d.message.payload, d.reason) for d in dropped] == [("m2", DropReason.OUTBOX_FULL)]
    assert _payloads(box) == ["m0", "m1"]


def test_a_rejected_message_leaves_counted_and_is_not_retried():
    box = Outbox(10)
    _fill(box, 2)
    m = box.due(0.0)
    box.failed(0.0, m)  # a 5xx first
    m = box.due(0.5)
    dropped = box.rejected(m)  # then a 4xx: given up
    assert dropped.reason is DropReason.REJECTED and dropped.message.payload == "m0"
    assert box.attempts[Outcome.REJECTED] == 1 and box.dropped[DropReason.REJECTED] == 1
    assert box.failures == 0 and box.due(0.5).payload == "m1"  # the peer is up: no backoff


def test_settling_a_message_that_is_not_in_flight_is_a_bug():
    box = Outbox(10)
    _fill(box, 2)
    first = box.due(0.0)
    box.delivered(first)
    with pytest.raises(ValueError):
        box.delivered(first)


def test_abandon_reports_everything_left_as_shutdown():
    box = Outbox(10)
    _fill(box, 3)
    box.due(0.0)
    gone = box.abandon()
    assert [(d.message.payload, d.reason) for d in gone] == [(f"m{i}", DropReason.SHUTDOWN) for i in range(3)]
    assert box.depth == 0 and box.in_flight is None and box.dropped[DropReason.SHUTDOWN] == 3


def test_sequence_numbers_follow_the_order_of_put():
    box = Outbox(2)
    for i in range(4):  # two dropped on the way
        box.put("cam", "alerts", f"m{i}", 0.0)
    assert [m.seq for m in box] == [3, 4]
