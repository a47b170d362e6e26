"""The live ``synthetic:shapes`` source, through ``open_source``."""

import threading

import numpy as np
import pytest

from streamcap.core.errors import SourceEnded
from streamcap.sources import open_source
from streamcap.sources.synthetic import SyntheticShapesSource
from streamcap.core.types import StreamState
from tests.helpers import StatusLog

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


async def test_unpaced_synthetic_source_renders_the_storyline_then_ends():
    statuses = StatusLog()
    source = open_source("demo", "synthetic:shapes?seed=3&fps=10&size=96x64&realtime=0"
                                 "&duration_s=1.5", on_status=statuses)
    assert isinstance(source, SyntheticShapesSource) and not source.live
    frames = []
    with pytest.raises(SourceEnded):
        while True:
            frames.append(await source.recv())
    assert [f.seq for f in frames] == list(range(15))
    assert [f.pts_s for f in frames] == pytest.approx([i / 10 for i in range(15)])
    truth = source.storyline.render(frames[7].pts_s, 96, 64, 7)
    np.testing.assert_array_equal(frames[7].image, truth)
    assert statuses.states == [StreamState.STARTING, StreamState.LIVE, StreamState.ENDED]
    await source.aclose()


async def test_realtime_synthetic_source_is_paced_by_pts():
    source = open_source("demo", "synthetic:shapes?fps=20&size=64x48")
    assert source.live
    try:
        frames = [await source.recv() for _ in range(11)]
    finally:
        await source.aclose()
    span_s = (frames[-1].capture_ns - frames[0].capture_ns) / 1e9
    assert frames[-1].pts_s - frames[0].pts_s == pytest.approx(0.5)
    assert 0.45 <= span_s <= 0.8  # paced at 20 fps, not as fast as possible
    assert [f.seq for f in frames] == list(range(11))


async def test_synthetic_transform_runs_off_the_loop_thread():
    threads: set[int] = set()

    def half(image: np.ndarray) -> np.ndarray:
        threads.add(threading.get_ident())
        return image[::2, ::2]

    source = open_source("demo", "synthetic:shapes?size=64x48&realtime=0", frame_transform=half)
    frame = await source.recv()
    await source.aclose()
    assert frame.image.shape == (24, 32, 3)
    assert threads and threading.get_ident() not in threads


async def test_closed_synthetic_source_ends_and_close_is_idempotent():
    statuses = StatusLog()
    source = open_source("demo", "synthetic:shapes?realtime=0&size=64x48", on_status=statuses)
    await source.recv()
    await source.aclose()
    await source.aclose()
    with pytest.raises(SourceEnded):
        await source.recv()
    assert statuses.states == [StreamState.STARTING, StreamState.LIVE, StreamState.ENDED]
