"""Replay: a file or recorded frames through a :class:`StreamProcessor` on simulated time.

whisper_streaming's processor runs live, from a file or on a simulated clock; this is ours. The
driver feeds frames in order, captions every window the processor hands out at once with the
given engine (one window per call, as ``streamcap caption`` does, so a replay is deterministic),
and feeds the results back. The clock is the media: a frame's ``now_ns`` is its pts, a window's
result arrives at the time of the frame that made it due. No event loop, no threads of its own,
no sleeps: a replay runs as fast as the engine.

    frames = file_frames("clip.mp4", "cam", engine.preprocessing)
    run = replay(frames, StreamProcessor(settings), engine)
    run.events        # every event, in order (captions, statuses, drops, progress, alerts)

:func:`file_frames` decodes with the same source the live pipeline uses (so pts and frames are
the ones a live run would see), driving it on a private event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Mapping
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
           decode: Mapping[str, object] | None = None, epoch: object = "replay") -> Replay:
    """Run ``frames`` through ``processor``, captioning with ``engine``; see the module doc.
    Frame times are taken from pts (simulated clock); ``decode`` overrides the tracks' decoding."""
    out = Replay(processor)
    t0 = time.perf_counter()
    now = 0
    for frame in frames:
        now = int(frame.pts_s * _NS)
        if frame.capture_ns != now:
            frame = Frame(frame.stream, frame.seq, now, frame.pts_s, frame.image)
        out.frames += 1
        windows = processor.feed_frame(frame, now)
        out.events += processor.take_events()
        for w in windows:
            options = {**dict(processor.track(w.track).decoding), **dict(decode or {})}
            keys = [[(w.stream, epoch, f.seq) for f in w.frames]]
            result = engine.caption_batch([[f.image for f in w.frames]], keys=keys, **options)[0]
            out.results.append((w, result))
            out.events += processor.feed_result(w, result, now)
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
