"""streamcap.server.hub: fan-out, replay, stream filtering and slow-client dropping, driven
synchronously (no event loop: ClientHandle.get_nowait stands in for the sender task)."""

from __future__ import annotations

import pytest

from streamcap.outputs import wire
from streamcap.runtime.metrics import Metrics
from streamcap.server.hub import ClientHandle, DisconnectReason, Hub
from streamcap.core.types import Caption, CaptionState, Status, StreamState


def caption(
    stream: str, seq: int, state: CaptionState = CaptionState.FINAL, text: str = ""
) -> Caption:
    return Caption(stream, seq, state, text or f"{stream} caption {seq}", float(seq), seq + 3.0)


def drain(client: ClientHandle) -> list[wire.ServerMessage]:
    out = []
    while (text := client.get_nowait()) is not None:
        out.append(wire.decode_server_message(text))
    return out


def seqs(messages: list[wire.ServerMessage]) -> list[tuple[str, int]]:
    return [(m.stream, m.seq) for m in messages if isinstance(m, wire.CaptionMsg)]


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(f"streamcap_{name}", labels)
    return 0.0 if value is None else value


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def test_new_client_gets_last_status_then_recent_finals_of_its_streams(metrics: Metrics) -> None:
    hub = Hub(metrics=metrics, replay_finals=3)
    hub.publish_status(Status("a", StreamState.STARTING))
    hub.publish_status(Status("a", StreamState.LIVE, "up"))
    for seq in range(5):
        hub.publish_caption(caption("a", seq))
    hub.publish_caption(caption("a", 5, CaptionState.PARTIAL))
    hub.publish_caption(caption("b", 0))

    replay = drain(hub.add_client({"a"}))

    assert replay[0] == wire.StatusMsg("a", StreamState.LIVE, "up")
    assert seqs(replay[1:]) == [("a", 2), ("a", 3), ("a", 4)]  # the last 3 finals, no partial
    assert len(replay) == 4


def test_client_of_all_streams_is_replayed_every_stream(metrics: Metrics) -> None:
    hub = Hub(metrics=metrics)
    hub.publish_caption(caption("b", 0))
    hub.publish_caption(caption("a", 0))
    hub.publish_status(Status("c", StreamState.STALLED))

    replay = drain(hub.add_client(None))

    assert replay[0] == wire.StatusMsg("c", StreamState.STALLED, "")
    assert seqs(replay) == [("a", 0), ("b", 0)]


def test_replay_uses_at_most_half_the_queue_keeping_the_newest_finals(metrics: Metrics) -> None:
    hub = Hub(metrics=metrics, replay_finals=20, client_queue_size=8)
    hub.publish_status(Status("a", StreamState.LIVE))
    for seq in range(10):
        hub.publish_caption(caption("a", seq))

    replay = drain(hub.add_client({"a"}))

    assert isinstance(replay[0], wire.StatusMsg)
    assert seqs(replay) == [("a", 7), ("a", 8), ("a", 9)]


def test_replay_is_disabled_with_zero_finals(metrics: Metrics) -> None:
    hub = Hub(metrics=metrics, replay_finals=0)
    hub.publish_caption(caption("a", 0))
    assert drain(hub.add_client(None)) == []
    assert hub.recent_finals("a") == ()


def test_clients_only_receive_their_streams(metrics: Metrics) -> None:
    hub = Hub(metrics=metrics)
    only_a, only_b, every = hub.add_client(["a"]), hub.add_client(["b"]), hub.add_client(None)

    hub.publish_caption(caption("a", 0, CaptionState.PARTIAL))
    hub.publish_status(Status("b", StreamState.LIVE))
    assert hub.publish_caption(caption("a", 1)) == 2

    assert seqs(drain(only_a)) == [("a", 0), ("a", 1)]
    assert drain(only_b) == [wire.StatusMsg("b", StreamState.LIVE, "")]
    assert len(drain(every)) == 3


def test_full_queue_drops_only_the_slow_client_while_the_other_gets_every_message(
    metrics: Metrics,
) -> None:
    hub = Hub(metrics=metrics, client_queue_size=3)
    slow, fast = hub.add_client(None), hub.add_client(None)
    received: list[wire.ServerMessage] = []

    for seq in range(10):
        hub.publish_caption(caption("a", seq))
        received += drain(fast)  # the fast client keeps up; the slow one never reads

    assert seqs(received) == [("a", seq) for seq in range(10)]
    assert slow.close_reason is DisconnectReason.SLOW_CLIENT
    assert slow.get_nowait() is None  # its backlog was discarded
    assert fast.close_reason is None
    assert hub.clients == (fast,)
    assert sample(metrics, "clients_dropped_total", reason="slow_client") == 1
    assert sample(metrics, "messages_dropped_total", reason="slow_client") == 4  # 3 queued + 1
    assert sample(metrics, "clients") == 1


def test_publishing_returns_how_many_clients_got_the_message(metrics: Metrics) -> None:
    hub = Hub(metrics=metrics, client_queue_size=1)
    hub.add_client(None)
    keeps_up = hub.add_client(None)
    assert hub.publish_caption(caption("a", 0)) == 2
    drain(keeps_up)
    assert hub.publish_caption(caption("a", 1)) == 1  # the other one overflowed and is gone
    drain(keeps_up)
    assert hub.publish_caption(caption("a", 2)) == 1


def test_a_reply_into_a_full_queue_drops_the_client_too(metrics: Metrics) -> None:
    hub = Hub(metrics=metrics, client_queue_size=1)
    client = hub.add_client(None)
    assert hub.send_to(client, wire.encode_pong())
    assert not hub.send_to(client, wire.encode_pong())
    assert client.close_reason is DisconnectReason.SLOW_CLIENT


def test_widening_the_subscription_replays_only_the_added_streams(metrics: Metrics) -> None:
    hub = Hub(metrics=metrics)
    for stream in ("a", "b", "c"):
        hub.publish_caption(caption(stream, 0))
    client = hub.add_client(["a"])
    drain(client)

    hub.set_subscription(client, ["a", "b"])
    assert seqs(drain(client)) == [("b", 0)]
    hub.set_subscription(client, None)
    assert seqs(drain(client)) == [("c", 0)]
    hub.set_subscription(client, ["c"])
    assert drain(client) == []

    hub.publish_caption(caption("a", 1))
    hub.publish_caption(caption("c", 1))
    assert seqs(drain(client)) == [("c", 1)]


def test_close_all_wakes_every_client_with_the_reason(metrics: Metrics) -> None:
    hub = Hub(metrics=metrics)
    clients = [hub.add_client(None) for _ in range(3)]
    hub.publish_caption(caption("a", 0))

    hub.close_all(DisconnectReason.SERVER_SHUTDOWN)

    assert all(c.close_reason is DisconnectReason.SERVER_SHUTDOWN for c in clients)
    assert all(c.get_nowait() is None for c in clients)
    assert hub.clients == ()
    assert sample(metrics, "clients_dropped_total", reason="slow_client") == 0


def test_removed_client_receives_nothing_and_removal_is_idempotent(metrics: Metrics) -> None:
    hub = Hub(metrics=metrics)
    client = hub.add_client(None)
    hub.remove_client(client)
    hub.remove_client(client)
    assert hub.publish_caption(caption("a", 0)) == 0
    assert client.get_nowait() is None
    assert sample(metrics, "clients") == 0


def test_publishing_updates_caption_counts_and_stream_up(metrics: Metrics) -> None:
    hub = Hub(metrics=metrics)
    hub.publish_caption(caption("a", 0, CaptionState.PARTIAL))
    hub.publish_caption(caption("a", 1, CaptionState.PARTIAL))
    hub.publish_caption(caption("a", 2))
    hub.publish_status(Status("a", StreamState.LIVE))
    assert sample(metrics, "captions_total", stream="a", state="partial") == 2
    assert sample(metrics, "captions_total", stream="a", state="final") == 1
    assert sample(metrics, "stream_up", stream="a") == 1
    hub.publish_status(Status("a", StreamState.STALLED, "no frames for 3 s"))
    assert sample(metrics, "stream_up", stream="a") == 0
    assert hub.last_status("a") == Status("a", StreamState.STALLED, "no frames for 3 s")
    assert [c.seq for c in hub.recent_finals("a")] == [2]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"replay_finals": -1}, "replay_finals"), ({"client_queue_size": 0}, "client_queue_size")],
)
def test_hub_rejects_nonsense_sizes(metrics: Metrics, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Hub(metrics=metrics, **kwargs)


def test_alerts_fan_out_replay_with_their_ack_and_stay_bounded():
    from streamcap.core.types import Alert, AlertPhase, Severity

    metrics = Metrics()
    hub = Hub(metrics=metrics, replay_alerts=2)
    watcher = hub.add_client(["cam"])
    other = hub.add_client(["door"])
    start = Alert("a1", "cam", "fall", AlertPhase.START, Severity.CRITICAL, 3, 10.0)
    assert hub.publish_alert(start) == 1
    assert wire.decode_server_message(watcher.get_nowait()).phase == AlertPhase.START
    assert other.get_nowait() is None
    record = hub.ack("a1", "maria", 1_700_000_000.0)
    assert (record.acked_by, record.acked_at) == ("maria", 1_700_000_000.0)
    assert wire.decode_server_message(watcher.get_nowait()) == wire.AckedMsg("a1", "maria", 1_700_000_000.0)
    assert hub.ack("a1", "joe", 1_700_000_001.0).acked_by == "maria"  # the first ack stands
    assert watcher.get_nowait() is None
    hub.publish_alert(Alert("a1", "cam", "fall", AlertPhase.END, Severity.CRITICAL, 5, 10.0, 20.0))
    late = hub.add_client(["cam"])
    replayed = []
    while (text := late.get_nowait()) is not None:
        replayed.append(wire.decode_server_message(text))
    assert [type(m).__name__ for m in replayed] == ["AlertMsg", "AckedMsg"]
    assert replayed[0].phase == AlertPhase.END  # the latest step only
    for i in range(3):
        hub.publish_alert(Alert(f"b{i}", "cam", "x", AlertPhase.START, Severity.INFO, None, 0.0))
    assert [r.alert.id for r in hub.recent_alerts()] == ["b1", "b2"]
    with pytest.raises(KeyError):
        hub.ack("a1", "maria", 0.0)
    assert metrics.registry.get_sample_value("streamcap_alerts_total", {"rule": "fall", "phase": "start"}) == 1.0
