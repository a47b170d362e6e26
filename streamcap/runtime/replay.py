"""Replay: a file or recorded frames through a :class:`StreamProcessor` on simulated time.

whisper_streaming's processor runs live, from a file or on a simulated clock; this is ours. The
driver feeds frames in order, captions every window the processor hands out at once with the
given engine (one window per call, as ``streamcap caption`` does, so a replay is deterministic),
and feeds the results back in order. The clock is the media: a frame's ``now_ns`` is its pts. No
event loop and no sleeps; the engine runs in one worker thread so decoding and feeding overlap
with it, and a replay runs as fast as the engine.

    frames = file_frames("clip.mp4", "cam", engine.preprocessing)
    run = replay(frames, StreamProcessor(settings), engine)
    run.events        # every event, in order (captions, statuses, drops, progress, alerts)

:func:`file_frames` decodes with the same source the live pipeline uses (so pts and frames are
the ones a live run would see), driving it on a private event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from streamcap.core.errors import SourceEnded
from streamcap.core.events import Event
from streamcap.core.processor import StreamProcessor
from streamcap.core.types import CaptionResult, Frame, Window
from streamcap.engine.preprocess import Preprocessing, resize_frame

_NS = 1_000_000_000


@dataclass
class Replay:
    """What a replay produced: every event and every (window, raw result), in order."""

    processor: StreamProcessor
    events: list[Event] = field(default_factory=list)
    results: list[tuple[Window, CaptionResult]] = field(default_factory=list)
    frames: int = 0
    wall_s: float = 0.0


def replay(frames: Iterable[Frame], processor: StreamProcessor, engine, *,
           decode: Mapping[str, object] | None = None, epoch: object = "replay",
           max_in_flight: int = 4) -> Replay:
    """Run ``frames`` through ``processor``, captioning with ``engine``; see the module doc.
    Frame times are taken from pts (simulated clock); ``decode`` overrides the tracks' decoding.

    The engine runs in one worker thread while the next frames are decoded and fed (as the live
    pipeline overlaps them). Results are fed back strictly in the order the windows were handed
    out, once ``max_in_flight`` more windows are waiting (at the end, all), at the simulated time
    of the frame being fed then; captions do not depend on that delay (a window's cut and its
    stabiliser input are fixed when it is handed out). Nothing is dropped."""
    out = Replay(processor)
    t0 = time.perf_counter()
    now = 0
    pending: deque[tuple[Window, Future]] = deque()

    def caption(w: Window) -> CaptionResult:
        options = {**dict(processor.track(w.track).decoding), **dict(decode or {})}
        keys = [[(w.stream, epoch, f.seq) for f in w.frames]]
        return engine.caption_batch([[f.image for f in w.frames]], keys=keys, **options)[0]

    def settle(*, wait_for: int) -> None:
        """Feed back results in order until at most ``wait_for`` windows are pending. It never
        asks whether a result happens to be ready, so the order of events does not depend on
        thread timing: a replay gives the same events every time."""
        while len(pending) > wait_for:
            w, future = pending.popleft()
            result = future.result()
            out.results.append((w, result))
            out.events.extend(processor.feed_result(w, result, now))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-engine") as pool:
        for frame in frames:
            now = int(frame.pts_s * _NS)
            if frame.capture_ns != now:
                frame = Frame(frame.stream, frame.seq, now, frame.pts_s, frame.image)
            out.frames += 1
            windows = processor.feed_frame(frame, now)
            out.events += processor.take_events()
            pending.extend((w, pool.submit(caption, w)) for w in windows)
            settle(wait_for=max_in_flight)
        settle(wait_for=0)
    out.events += processor.finish(now)
    out.wall_s = time.perf_counter() - t0
    return out


def file_frames(url: str, stream: str, preprocessing: Preprocessing, **source_options) -> Iterator[Frame]:
    """The frames of a finite source (a file path or URL), resized for the engine, decoded by the
    pipeline's own source classes on a private event loop; times from pts."""
    from streamcap.sources.url import open_source, parse_source_url

    spec = parse_source_url(url)
    if spec.live:
        raise ValueError(f"{url}: only a finite source can be replayed (it is live)")
    loop = asyncio.new_event_loop()
    source = open_source(stream, spec, frame_transform=lambda img: resize_frame(img, preprocessing),
                         **source_options)
    try:
        while True:
            try:
                frame = loop.run_until_complete(source.recv())
            except SourceEnded:
                return
            yield frame
    finally:
        loop.run_until_complete(source.aclose())
        loop.close()
