"""The caption store on a real SQLite file: finals after a seq, caption numbers that go on across
reopening, retention, alerts with their acknowledgement; the hub's resume from it."""

from __future__ import annotations

import pytest

from streamcap.core.types import Alert, AlertPhase, Caption, CaptionState, Severity
from streamcap.outputs import wire
from streamcap.runtime.metrics import Metrics
from streamcap.runtime.store import CaptionStore, SeqAllocator
from streamcap.server.hub import Hub
from streamcap.server.routes.viewer import parse_since


def final(seq: int, stream: str = "cam", text: str = "a person walks left") -> Caption:
    return Caption(stream, seq, CaptionState.FINAL, text, seq * 0.5, seq * 0.5 + 2.0)


def test_finals_after_a_seq_oldest_first_and_seq_numbers_go_on_after_reopening(tmp_path) -> None:
    store = CaptionStore(tmp_path)
    for seq in (3, 7, 9, 12):
        store.add_final(final(seq), wire.encode_caption(final(seq)))
    store.add_final(final(2, "other"), wire.encode_caption(final(2, "other")))
    got = [wire.decode_server_message(m).seq for m in store.finals_after("cam", 7, 10)]
    assert got == [9, 12]
    assert [wire.decode_server_message(m).seq for m in store.finals_after("cam", 0, 2)] == [3, 7]
    numbers = SeqAllocator(store, "cam", block=4)
    first = [next(numbers) for _ in range(6)]  # two blocks reserved on disk
    assert first == [0, 1, 2, 3, 4, 5]
    store.close()
    store = CaptionStore(tmp_path)  # a restart: the numbers start above every reserved one
    again = SeqAllocator(store, "cam", block=4)
    assert next(again) == 8 and next(SeqAllocator(store, "other", block=4)) == 0
    assert store.count_finals("cam") == 4


def test_retention_by_count_and_age(tmp_path) -> None:
    now = [1000.0]
    store = CaptionStore(tmp_path, clock=lambda: now[0])
    for seq in range(10):
        now[0] += 10
        store.add_final(final(seq), "m")
    assert store.prune(max_age_s=None, max_finals=4) == 6
    assert store.count_finals("cam") == 4
    assert store.prune(max_age_s=15, max_finals=None) == 2  # now 1100: those stored at 1090, 1100 stay
    assert store.count_finals("cam") == 2


def test_alerts_and_acks_survive_a_restart_of_the_hub(tmp_path) -> None:
    store = CaptionStore(tmp_path)
    hub = Hub(metrics=Metrics(), store=store)
    alert = Alert("a1", "cam", "someone", AlertPhase.START, Severity.WARNING, 3, 1.0)
    hub.publish_alert(alert)
    hub.ack("a1", "maria", 123.0)
    again = Hub(metrics=Metrics(), store=store)  # a new process on the same store
    [record] = again.recent_alerts()
    assert record.alert == alert and record.acked_by == "maria" and record.acked_at == 123.0
    client = again.add_client(["cam"])
    messages = [wire.decode_server_message(client.get_nowait()) for _ in range(client.queued)]
    assert [type(m).__name__ for m in messages] == ["AlertMsg", "AckedMsg"]


def test_a_resuming_client_gets_every_stored_final_after_since_then_live(tmp_path) -> None:
    store = CaptionStore(tmp_path)
    hub = Hub(metrics=Metrics(), store=store, replay_finals=2, client_queue_size=8, max_resume_finals=20)
    for seq in range(1, 13):
        hub.publish_caption(final(seq))  # stored before it goes out
    plain = hub.add_client(["cam"])  # no since: the 2 recent finals
    resumed = hub.add_client(["cam"], since={"cam": 4})  # more than its queue's half: it grows
    hub.publish_caption(final(13))

    def seqs(client):
        return [wire.decode_server_message(client.get_nowait()).seq for _ in range(client.queued)]

    assert seqs(plain) == [11, 12, 13]
    assert seqs(resumed) == list(range(5, 14))
    other = hub.add_client(["door"], since={"cam": 4})  # since for a stream it did not subscribe to
    assert other.queued == 0


def test_a_resume_over_the_limit_says_where_to_go_on(tmp_path) -> None:
    store = CaptionStore(tmp_path)
    hub = Hub(metrics=Metrics(), store=store, max_resume_finals=3)
    for seq in range(1, 8):
        hub.publish_caption(final(seq))
    client = hub.add_client(["cam"], since={"cam": 1})
    messages = [wire.decode_server_message(client.get_nowait()) for _ in range(client.queued)]
    assert [m.seq for m in messages[:3]] == [2, 3, 4]
    assert isinstance(messages[3], wire.ErrorMsg) and messages[3].code == "resume_truncated"
    assert "since=cam:4" in messages[3].detail


@pytest.mark.parametrize("value, streams, expected", [
    ("12", ("cam",), {"cam": 12}), ("cam:3,door:40", None, {"cam": 3, "door": 40}), ("", None, {}),
])
def test_since_is_parsed(value, streams, expected) -> None:
    assert parse_since(value, streams) == expected


@pytest.mark.parametrize("value, streams", [("12", None), ("cam:-1", None), ("cam:x", None), ("../x:1", None),
                                            (",".join(f"s{i}:1" for i in range(101)), None)])
def test_bad_since_is_refused_with_a_reason(value, streams) -> None:
    with pytest.raises(ValueError):
        parse_since(value, streams)


def test_recent_finals_are_the_newest_oldest_first(tmp_path) -> None:
    store = CaptionStore(tmp_path)
    for seq in range(1, 6):
        store.add_final(final(seq), wire.encode_caption(final(seq)))
    got = [wire.decode_server_message(t).seq for t in store.recent_finals("cam", 3)]
    assert got == [3, 4, 5]
    assert store.recent_finals("other", 3) == []
