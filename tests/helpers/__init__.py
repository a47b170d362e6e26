"""Test helpers: real media (see ``tools.media``) and a loopback RTSP server."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from streamcap.core.errors import StreamcapError
from streamcap.sources.base import Source
from streamcap.demo.synthetic import Storyline
from streamcap.core.types import Frame, Status, StreamState


@dataclass(frozen=True)
class StorylineVideo:
    """A rendered storyline file and its ground truth: frame ``i`` is media time ``i / fps``."""

    path: Path
    storyline: Storyline
    fps: float
    duration_s: float
    size: tuple[int, int]


class StatusLog:
    """An ``on_status`` hook that records statuses with their arrival time and lets a test wait
    for a state (on the event loop; no sleeps)."""

    def __init__(self) -> None:
        self.entries: list[tuple[float, Status]] = []
        self._changed = asyncio.Event()

    def __call__(self, status: Status) -> None:
        self.entries.append((time.monotonic(), status))
        self._changed.set()

    @property
    def states(self) -> list[StreamState]:
        return [status.state for _, status in self.entries]

    def mark(self) -> int:
        """An index to pass as ``since``: only statuses after this call count."""
        return len(self.entries)

    async def wait_for(self, *states: StreamState, since: int = 0,
                       timeout_s: float = 10.0) -> tuple[float, Status]:
        """The first status in ``states`` at or after index ``since``: (monotonic time, status).
        Fails the test with what arrived instead when it does not come within ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    for when, status in self.entries[since:]:
                        if status.state in states:
                            return when, status
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            seen = [(s.state.value, s.detail) for _, s in self.entries[since:]]
            raise AssertionError(f"no {[s.value for s in states]} status within {timeout_s} s; "
                                 f"got {seen}") from None


class FrameCollector:
    """Pulls frames from a source in a background task; a test waits for counts."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.frames: list[Frame] = []
        self.arrivals: list[float] = []  # monotonic time each frame was received
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> FrameCollector:
        self._task = asyncio.create_task(self._pull(), name=f"collect-{self.source.id}")
        return self

    async def _pull(self) -> None:
        try:
            while True:
                frame = await self.source.recv()
                self.frames.append(frame)
                self.arrivals.append(time.monotonic())
                self._changed.set()
        except StreamcapError as exc:  # SourceEnded or SourceError: the source is done
            self.error = exc
        finally:
            self._changed.set()

    async def wait_for_count(self, count: int, timeout_s: float = 10.0) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                while len(self.frames) < count:
                    if self._task is not None and self._task.done():
                        raise AssertionError(f"source {self.source.id} stopped after "
                                             f"{len(self.frames)} frames: {self.error!r}")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"source {self.source.id}: {len(self.frames)} of {count} "
                                 f"frames within {timeout_s} s") from None

    async def aclose(self) -> None:
        """Close the source and stop pulling (idempotent)."""
        await self.source.aclose()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def health_limits(**overrides):
    """The config's default health limits (``runtime.settings.health_limits``) with ``overrides``."""
    from dataclasses import replace

    from streamcap.runtime.config import Config
    from streamcap.runtime.settings import health_limits as from_config

    limits = from_config(Config())
    assert limits is not None  # health alerts are on by default
    return replace(limits, **overrides)
