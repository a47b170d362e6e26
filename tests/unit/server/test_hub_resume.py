"""The hub's resume from prefetched finals (a gateway's bus), the floors that keep live
duplicates out, seeding for replay and acknowledgements made elsewhere."""

from __future__ import annotations

import pytest

from streamcap.core.errors import ProtocolError
from streamcap.core.types import Alert, AlertPhase, Caption, CaptionState, Severity
from streamcap.outputs import wire
from streamcap.runtime.metrics import Metrics
from streamcap.server.hub import Hub, caption_of


def cap(seq: int, state=CaptionState.FINAL, stream="cam") -> Caption:
    return Caption(stream, seq, state, f"caption {seq}", seq * 1.0, seq + 1.0)


def drain(client) -> list:
    out = []
    while (text := client.get_nowait()) is not None:
        out.append(wire.decode_server_message(text))
    return out


def test_prefetched_resume_then_live_without_duplicates():
    hub = Hub(metrics=Metrics())
    resumed = {"cam": [wire.encode_caption(cap(s)) for s in (5, 6, 7)]}
    client = hub.add_client(["cam"], since={"cam": 4}, resumed=resumed)
    for seq in (6, 7, 8):  # the bus loop delivers what the resume already gave, then new ones
        hub.publish_caption(cap(seq))
    hub.publish_caption(cap(7, CaptionState.PARTIAL))  # stale partial: below the floor
    hub.publish_caption(cap(9, CaptionState.PARTIAL))
    assert [m.seq for m in drain(client)] == [5, 6, 7, 8, 9]


def test_prefetched_resume_over_the_limit_says_where_to_go_on():
    hub = Hub(metrics=Metrics(), max_resume_finals=2)
    client = hub.add_client(["cam"], since={"cam": 0},
                            resumed={"cam": [wire.encode_caption(cap(s)) for s in (1, 2, 3)]})
    got = drain(client)
    assert [m.seq for m in got[:2]] == [1, 2] and isinstance(got[2], wire.ErrorMsg) and "cam:2" in got[2].detail
    hub.publish_caption(cap(3))
    assert [m.seq for m in drain(client)] == [3]  # past the floor: live goes on


def test_subscribe_with_since_resumes_the_added_stream():
    hub = Hub(metrics=Metrics())
    client = hub.add_client(["other"])
    hub.set_subscription(client, ["other", "cam"], since={"cam": 1},
                         resumed={"cam": [wire.encode_caption(cap(2))]})
    hub.publish_caption(cap(2))
    hub.publish_caption(cap(3))
    assert [m.seq for m in drain(client) if isinstance(m, wire.CaptionMsg)] == [2, 3]


def test_seed_is_replayed_but_not_sent_and_acks_from_elsewhere_apply_once():
    hub = Hub(metrics=Metrics())
    watcher = hub.add_client(["cam"])
    alert = Alert("cam-1", "cam", "rule", AlertPhase.START, Severity.WARNING, 3, 1.0)
    hub.seed(cap(3))
    hub.seed(alert=alert)
    assert drain(watcher) == []
    newcomer = hub.add_client(["cam"])
    got = drain(newcomer)
    assert [type(m).__name__ for m in got] == ["CaptionMsg", "AlertMsg"]
    text = wire.encode_acked("cam-1", "ops", 10.0)
    assert hub.apply_ack("cam-1", "ops", 10.0, text) is True
    assert hub.apply_ack("cam-1", "ops", 10.0, text) is False
    assert hub.apply_ack("nope", "ops", 10.0, text) is False
    assert [type(m).__name__ for m in drain(newcomer)] == ["AckedMsg"]


def test_caption_of_round_trips_the_wire():
    c = cap(12)
    assert caption_of(wire.decode_server_message(wire.encode_caption(c))) == c


def test_subscribe_since_on_the_wire():
    msg = wire.decode_client_message(wire.encode_subscribe(["cam"], {"cam": 7}))
    assert msg.streams == ("cam",) and msg.since == {"cam": 7}
    for bad in ('{"type":"subscribe","streams":["cam"],"since":{"cam":-1}}',
                '{"type":"subscribe","streams":["cam"],"since":{"bad id!":1}}',
                '{"type":"subscribe","streams":["cam"],"since":[1]}'):
        with pytest.raises(ProtocolError):
            wire.decode_client_message(bad)


def test_subscriber_index_follows_subscriptions_and_removals():
    hub = Hub(metrics=Metrics())
    a, b, every = hub.add_client(["cam"]), hub.add_client(["cam", "door"]), hub.add_client(None)
    assert {c.id for c in hub.subscribers("cam")} == {a.id, b.id, every.id}
    assert hub.wanted_streams() is None
    hub.remove_client(every)
    assert hub.wanted_streams() == frozenset({"cam", "door"})
    hub.set_subscription(b, ["door"])
    assert {c.id for c in hub.subscribers("cam")} == {a.id}
    hub.remove_client(a)
    assert hub.subscribers("cam") == [] and hub.wanted_streams() == frozenset({"door"})
    assert hub.publish_caption(cap(1)) == 0 and hub.publish_caption(cap(2, stream="door")) == 1


def test_prime_stream_gives_existing_subscribers_a_new_streams_replay_once():
    hub = Hub(metrics=Metrics())
    every, other = hub.add_client(None), hub.add_client(["other"])
    hub.seed(cap(4))
    hub.seed(cap(5))
    hub.prime_stream("cam")
    assert [m.seq for m in drain(every)] == [4, 5] and drain(other) == []


def test_published_captions_carry_the_servers_send_time():
    hub = Hub(metrics=Metrics(), wall_clock=lambda: 1767225600.12345)
    client = hub.add_client(["cam"])
    hub.publish_caption(cap(1))
    (msg,) = drain(client)
    assert msg.sent == 1767225600.1234 or msg.sent == 1767225600.1235
    assert wire.decode_server_message(wire.encode_caption(cap(1))).sent is None  # files: no send time
