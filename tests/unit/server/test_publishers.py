"""PushStreams on a simulated clock: per-token and total limits on streams publishers create,
idle expiry, removal of a stream whose WHIP session never connected; streams nobody created
through publishing are never counted nor expired."""

from __future__ import annotations

import pytest

from streamcap.core.errors import HttpError
from streamcap.runtime.config import IngestConfig
from streamcap.runtime.metrics import Metrics
from streamcap.server.publishers import PushStreams
from streamcap.sources.push import PushSource


class Clock:
    def __init__(self) -> None:
        self.ns = 10**9

    def __call__(self) -> int:
        return self.ns


class Pipeline:
    """The part of the pipeline PushStreams uses: push sources by id, and removal."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sources: dict[str, PushSource | str] = {}
        self.removed: list[str] = []

    def push_source(self, stream_id: str, *, create: bool = True) -> PushSource:
        source = self.sources.get(stream_id)
        if source is None:
            if not create:
                raise KeyError(stream_id)
            source = self.sources[stream_id] = PushSource(stream_id, clock=self.clock)
        if isinstance(source, str):
            raise ValueError(f"stream {stream_id!r} reads from {source}")
        return source

    def set_stream_decoding(self, stream_id: str, **overrides: object) -> None:
        pass

    async def remove_stream(self, stream_id: str) -> None:
        del self.sources[stream_id]
        self.removed.append(stream_id)


def _streams(**config) -> tuple[PushStreams, Pipeline, Clock, Metrics]:
    clock = Clock()
    pipeline, metrics = Pipeline(clock), Metrics()
    return PushStreams(pipeline, IngestConfig(**config), metrics, clock=clock), pipeline, clock, metrics


def _sample(metrics: Metrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(f"streamcap_{name}", labels) or 0.0


def test_a_token_may_create_so_many_streams_and_all_tokens_so_many_in_all():
    streams, pipeline, _, metrics = _streams(max_streams_per_token=2, max_push_streams=3)
    pipeline.sources["configured"] = PushSource("configured")  # from the config file: not counted
    streams.source_for("a1", "token-a")
    streams.source_for("a2", "token-a")
    assert streams.source_for("a1", "token-a") is pipeline.sources["a1"]  # an existing one: no new stream
    assert streams.source_for("configured", "token-a") is pipeline.sources["configured"]
    with pytest.raises(HttpError) as err:
        streams.source_for("a3", "token-a")
    assert err.value.status == 429 and err.value.code == "too_many_streams"
    streams.source_for("b1", "token-b")
    with pytest.raises(HttpError) as err:
        streams.source_for("b2", "token-b")
    assert err.value.status == 503 and "ingest.max_push_streams" in err.value.detail
    assert "a3" not in pipeline.sources and "b2" not in pipeline.sources
    # a stream removed elsewhere (DELETE /v1/streams) no longer counts
    del pipeline.sources["a1"]
    streams.source_for("a3", "token-a")
    assert _sample(metrics, "limit_refusals_total", limit="max_streams_per_token") == 1
    assert _sample(metrics, "limit_refusals_total", limit="max_push_streams") == 1
    assert _sample(metrics, "push_streams_created_total") == 4


async def test_only_created_streams_without_a_publisher_for_the_expiry_time_are_removed():
    streams, pipeline, clock, metrics = _streams(idle_expiry_s=10.0)
    pipeline.sources["configured"] = PushSource("configured", clock=clock)
    busy = streams.source_for("busy", "token-a")
    busy.publisher_joined("p1")
    streams.source_for("quiet", "token-a")
    clock.ns += 9 * 10**9
    assert await streams.expire_idle() == []
    clock.ns += 10**9
    assert await streams.expire_idle() == ["quiet"]
    busy.publisher_left("p1")  # idle from now on
    clock.ns += 9 * 10**9
    assert await streams.expire_idle() == []
    clock.ns += 10**9
    assert await streams.expire_idle() == ["busy"]
    assert pipeline.removed == ["quiet", "busy"] and "configured" in pipeline.sources
    assert _sample(metrics, "push_streams_removed_total", reason="idle") == 2


async def test_a_stream_whose_session_never_connected_goes_at_once_unless_it_got_frames():
    import numpy as np

    streams, pipeline, _, metrics = _streams()
    streams.source_for("ghost", "token-a")
    fed = streams.source_for("fed", "token-a")
    fed.push(np.zeros((4, 4, 3), np.uint8))
    shared = streams.source_for("shared", "token-a")
    shared.publisher_joined("someone else")
    assert [await streams.release_unused(s) for s in ("ghost", "fed", "shared")] == [True, False, False]
    assert pipeline.removed == ["ghost"]
    assert _sample(metrics, "push_streams_removed_total", reason="never_connected") == 1
    pipeline.sources["cam"] = "rtsp://camera"  # not a push stream (any more): left alone
    assert await streams.release_unused("cam") is False
