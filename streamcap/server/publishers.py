"""Push streams that publishers create: who created which, how many they may, and expiry.

WHIP (:mod:`.routes.whip`) and websocket ingest (:mod:`.routes.ingest`) publish into a stream's
:class:`~streamcap.sources.push.PushSource`; a stream id nobody configured becomes a new ``push:``
stream. :class:`PushStreams` is the one gate for that creation:

* a publish token may have created at most ``ingest.max_streams_per_token`` streams that still
  exist (429 ``too_many_streams``), all tokens together ``ingest.max_push_streams`` (503);
* a stream a publisher created is removed once it has had no publisher for
  ``ingest.idle_expiry_s`` (reason ``idle``), or at once when the WHIP session that created it
  never connected and no frame came (reason ``never_connected``).

Streams of the config file (and those an admin adds) are never counted nor expired. Refusals
are counted in ``streamcap_limit_refusals_total{limit}``, removals in
``streamcap_push_streams_removed_total{reason}``. Publishers are told apart by a short hash of
their token (:func:`publisher_key`), never the token itself. Runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from enum import Enum
from http import HTTPStatus
from typing import Protocol

from aiohttp import web

from streamcap.core.errors import ErrorCode, HttpError
from streamcap.runtime.config import IngestConfig
from streamcap.runtime.metrics import Metrics
from streamcap.server.auth import bearer_token
from streamcap.sources.push import PushSource

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"


class PushControl(Protocol):
    """What publishing needs from the pipeline."""

    def push_source(self, stream_id: str, *, create: bool = True) -> PushSource: ...

    def set_stream_decoding(self, stream_id: str, **overrides: object) -> None: ...

    async def remove_stream(self, stream_id: str) -> None: ...


class RemovalReason(str, Enum):
    IDLE = "idle"
    NEVER_CONNECTED = "never_connected"


def publisher_key(request: web.Request) -> str:
    """Who publishes, for per-token limits: ``token-<12 hex of sha256>`` or ``anonymous``."""
    token = bearer_token(dict(request.headers), {"token": request.query.getall("token", [])})
    if token is None:
        return ANONYMOUS
    return "token-" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:12]


class PushStreams:
    def __init__(self, control: PushControl, config: IngestConfig, metrics: Metrics, *,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.control = control
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.owners: dict[str, str] = {}  # stream id → publisher key, for streams publishers created
        self._task: asyncio.Task | None = None

    # ------------------------------------------------------------------ creation

    def source_for(self, stream: str, key: str, *, create: bool = True) -> PushSource:
        """The push source of ``stream``; an unknown id becomes a new push stream owned by ``key``
        when ``create`` and the limits allow. Raises KeyError (unknown, not ``create``), ValueError
        (the stream reads from a URL) or HttpError (429/503 ``too_many_streams``)."""
        try:
            return self.control.push_source(stream, create=False)
        except KeyError:
            if not create:
                raise
        self._forget_gone()
        mine = sum(1 for owner in self.owners.values() if owner == key)
        if mine >= self.config.max_streams_per_token:
            self._refuse("max_streams_per_token", stream, key)
            raise HttpError(HTTPStatus.TOO_MANY_REQUESTS, ErrorCode.TOO_MANY_STREAMS,
                            f"this publisher already has {mine} push streams (ingest.max_streams_per_token); "
                            "publish to one of them or wait until one expires")
        if len(self.owners) >= self.config.max_push_streams:
            self._refuse("max_push_streams", stream, key)
            raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, ErrorCode.TOO_MANY_STREAMS,
                            f"{len(self.owners)} push streams already (ingest.max_push_streams)")
        source = self.control.push_source(stream)
        self.owners[stream] = key
        self.metrics.push_streams_created_total.inc()
        log.info("stream %s: created by publisher %s", stream, key)
        return source

    def _refuse(self, limit: str, stream: str, key: str) -> None:
        self.metrics.limit_refusals_total.labels(limit=limit).inc()
        log.info("stream %s: publisher %s refused a new push stream (%s)", stream, key, limit)

    def _source(self, stream: str) -> PushSource | None:
        """The stream's push source while it is still the push stream a publisher created."""
        try:
            return self.control.push_source(stream, create=False)
        except (KeyError, ValueError):  # removed (through the API), or replaced by another kind
            self.owners.pop(stream, None)
            return None

    def _forget_gone(self) -> None:
        for stream in list(self.owners):
            self._source(stream)

    # ------------------------------------------------------------------ removal

    async def release_unused(self, stream: str) -> bool:
        """Remove ``stream`` now if a publisher created it, none is connected and no frame ever
        came (a WHIP session that never connected). Returns whether it was removed."""
        source = self._source(stream) if stream in self.owners else None
        if source is None or source.publishers or source.frames_pushed:
            return False
        await self._remove(stream, RemovalReason.NEVER_CONNECTED)
        return True

    async def expire_idle(self) -> list[str]:
        """Remove the publisher-created streams idle for ``ingest.idle_expiry_s``; returns their ids."""
        limit_ns = int(self.config.idle_expiry_s * 1e9)
        now = self.clock()
        expired = []
        for stream in list(self.owners):
            source = self._source(stream)
            if source is None or source.idle_since_ns is None or now - source.idle_since_ns < limit_ns:
                continue
            await self._remove(stream, RemovalReason.IDLE)
            expired.append(stream)
        return expired

    async def _remove(self, stream: str, reason: RemovalReason) -> None:
        self.owners.pop(stream, None)
        try:
            await self.control.remove_stream(stream)
        except KeyError:
            return  # removed meanwhile
        self.metrics.push_streams_removed_total.labels(reason=reason.value).inc()
        log.info("stream %s: removed (%s)", stream, reason.value)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the expiry watch (on the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="push-stream-expiry")

    async def _watch(self) -> None:
        period_s = max(0.05, min(self.config.idle_expiry_s / 4, 5.0))
        while True:
            await asyncio.sleep(period_s)
            try:
                await self.expire_idle()
            except asyncio.CancelledError:
                raise
            except Exception:  # boundary: one failed pass must not end expiry for good
                log.exception("push stream expiry failed; trying again in %.2f s", period_s)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # we are being cancelled ourselves
                    raise
            self._task = None
