"""Failures in the shell: a sink that raises is isolated and counted; a pipeline that dies is
reported by /healthz (503, over real HTTP on loopback) and by ``streamcap run``'s exit code.

The engine is the fake one (these tests are about the async shell, not captions); the source is
the real synthetic renderer, the server and the HTTP client are real."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from streamcap import cli
from streamcap.core.events import CaptionEvent, StatusEvent
from streamcap.core.types import CaptionState, StreamState
from streamcap.engine.fake import FakeEngine
from streamcap.runtime.config import load_config
from streamcap.runtime.metrics import Metrics
from streamcap.runtime.pipeline import Pipeline
from streamcap.runtime.service import Service

pytestmark = pytest.mark.integration

FILE_LIKE = "synthetic:shapes?seed=5&fps=10&size=64x64&scene_s=3&realtime=0&duration_s=9"
LIVE = "synthetic:shapes?seed=5&fps=10&size=64x64&scene_s=3"
TIMEOUT_S = 30.0


class Fatal(BaseException):
    """Not an Exception: no boundary catches it, so it takes the pipeline down."""


def _config(url: str = FILE_LIKE):
    return load_config(None, environ={}, overrides={"server": {"port": 0},
                                                    "sources": [{"id": "cam", "url": url}]})


def _metric(metrics: Metrics, name: str, **labels) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_a_sink_that_raises_does_not_stop_the_stream_or_the_other_sinks():
    metrics = Metrics()
    seen: list = []

    def broken(event) -> None:
        if isinstance(event, CaptionEvent):
            raise RuntimeError("this sink is broken")

    pipeline = Pipeline(_config(), FakeEngine(frames_per_window=4, image_size=64), metrics=metrics,
                        sinks={"broken": broken, "good": seen.append})
    runner = pipeline.add_stream("cam", FILE_LIKE)
    await asyncio.wait_for(pipeline.run(stop_when_idle=True), TIMEOUT_S)

    captions = [e.caption for e in seen if isinstance(e, CaptionEvent)]
    finals = [c for c in captions if c.state is CaptionState.FINAL]
    errors = _metric(metrics, "streamcap_sink_errors_total", sink="broken")
    assert finals, "the good sink got no final caption"
    assert errors == len(captions)  # every caption failed in the broken sink, and was counted
    assert _metric(metrics, "streamcap_sink_errors_total", sink="good") == 0
    assert [e.status.state for e in seen if isinstance(e, StatusEvent)][-1] is StreamState.ENDED
    assert runner.state is StreamState.ENDED
    assert runner.processor.counters.windows_captioned >= 10  # the stream went on to the end


async def test_a_dead_pipeline_makes_healthz_answer_503_with_the_reason():
    async with Service(_config(LIVE), engine=FakeEngine(frames_per_window=4, image_size=64)) as svc:
        async with aiohttp.ClientSession() as http:
            async with http.get(svc.url("/healthz")) as resp:
                assert resp.status == 200

            def fatal(event) -> None:
                raise Fatal("a bug outside every boundary")

            assert svc.pipeline is not None
            svc.pipeline.sinks.add("fatal", fatal)
            with pytest.raises(BaseException):
                await asyncio.wait_for(svc.wait(), TIMEOUT_S)
            async with http.get(svc.url("/healthz")) as resp:
                body = await resp.json()
                assert resp.status == 503, body
            assert body["status"] == "error" and "Fatal" in body["detail"]


async def test_streamcap_run_exits_non_zero_when_the_pipeline_dies(monkeypatch, capsys):
    start = Service.start

    async def start_then_break(self: Service) -> None:
        await start(self)

        def fatal(event) -> None:
            raise Fatal("a bug outside every boundary")

        assert self.pipeline is not None
        self.pipeline.sinks.add("fatal", fatal)

    monkeypatch.setattr(Service, "start", start_then_break)
    monkeypatch.setattr("streamcap.runtime.service.load_engine_from_config",
                        lambda cfg: FakeEngine(frames_per_window=4, image_size=64))
    rc = await asyncio.wait_for(cli._run(_config(LIVE)), TIMEOUT_S)
    assert rc == 1
    assert "pipeline stopped" in capsys.readouterr().err


async def test_jobs_share_one_metric_label_and_a_removed_stream_leaves_no_series():
    metrics = Metrics()
    pipeline = Pipeline(_config(), FakeEngine(frames_per_window=4, image_size=64), metrics=metrics,
                        sinks={"none": lambda e: None})
    pipeline.add_stream("clip-7", FILE_LIKE, hidden=True)
    pipeline.add_stream("cam", FILE_LIKE)
    await asyncio.wait_for(pipeline.run(stop_when_idle=True), TIMEOUT_S)

    def streams_labelled() -> set[str]:
        return {s.labels["stream"] for m in metrics.registry.collect() for s in m.samples if "stream" in s.labels}

    assert _metric(metrics, "streamcap_windows_captioned_total", stream="job") >= 10
    assert streams_labelled() == {"job", "cam"}
    await pipeline.remove_stream("cam")
    assert streams_labelled() == {"job"}
