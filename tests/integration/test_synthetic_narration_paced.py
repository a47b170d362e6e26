"""The paced ``synthetic:shapes`` source with narration: audio chunks arrive when their sound is
over, in step with the frames, on the same media clock (through ``open_source``)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from streamcap.core.types import AUDIO_RATE, AudioChunk, Frame
from streamcap.sources import open_source
from tools.speech_media import write_wav

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


async def test_paced_narration_arrives_in_step_with_the_frames(tmp_path):
    t = np.arange(AUDIO_RATE) / AUDIO_RATE
    path = write_wav(tmp_path / "n.wav", (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32))
    drops: list[str] = []
    source = open_source("demo", "synthetic:shapes?fps=20&size=64x48", audio=True, narration=path,
                         on_drop=drops.append)
    loop = asyncio.get_running_loop()
    arrivals: list[tuple[float, Frame | AudioChunk]] = []
    started = loop.time()  # the source's clock starts at the first recv(): not before this
    try:
        while True:
            item = await source.recv()
            arrivals.append((loop.time(), item))
            if isinstance(item, Frame) and item.pts_s >= 0.6:
                break
    finally:
        await source.aclose()
    first_frame = arrivals[0][0]  # frame 0 is due at once: the clock started before this
    assert isinstance(arrivals[0][1], Frame)
    chunks = [(at, c) for at, c in arrivals if isinstance(c, AudioChunk)]
    assert [c.pts_s for _, c in chunks] == pytest.approx([k * 0.05 for k in range(12)])
    for at, chunk in chunks:  # not before its sound is over, and not much later
        assert at - started >= chunk.end_s - 0.005
        assert at - first_frame <= chunk.end_s + 0.25
    pts = [round(i.end_s if isinstance(i, AudioChunk) else i.pts_s, 6) for _, i in arrivals]
    assert pts == sorted(pts)  # one clock: chunk ends and frame pts in order
    assert drops == []
