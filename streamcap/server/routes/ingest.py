"""Websocket frame ingest: ``/ingest/{stream}`` (needs a ``publish`` token; the access middleware
checks it, and the stream id, before :meth:`IngestRoutes.ingest` runs).

Simple clients push frames (binary JPEG/PNG, or JSON with base64 frames — :mod:`streamcap.sources.ingest`)
into the stream's :class:`~streamcap.sources.push.PushSource`; an unknown stream id becomes a new
``push:`` stream, within the per-token and total limits of :class:`~streamcap.server.publishers.PushStreams`
(a refusal is the HTTP answer to the upgrade: 429/503 ``too_many_streams``). The same connection receives what a viewer of that stream would: ``hello``,
then its captions and status, plus an ``ingested`` acknowledgement per message and an ``error``
(codes ``bad_message``, ``bad_frame``, ``too_large``, ``too_many_pixels``) for a message it could
not use — after which the connection stays usable. Frames are checked against ``ingest.max_pixels``
from their header before they are decoded. Any other failure on one message is logged, answered
with ``internal_error`` and counted; the connection goes on.

Audio: a binary message that starts with ``SCA1`` is PCM16 sound
(:func:`streamcap.sources.audio.parse_pcm16_message`: a 12-byte header — magic, sample rate u32 LE,
channels u16 LE, 0 u16 — then interleaved signed 16-bit little-endian samples). It is checked
(rate 8–192 kHz, 1–8 channels, whole samples, at most 5 s and ``ingest.max_frame_kb``), mixed to
mono and resampled to 16 kHz off the event loop (one resampler per connection, so consecutive
messages join without clicks) and pushed with
:meth:`~streamcap.sources.push.PushSource.push_audio`; acknowledged with ``ingested`` ``frames: 0``.
A malformed one gets ``bad_message`` (``too_large`` over a limit); a stream that takes no audio
(opened without ``audio=True``: no speech track) answers ``bad_message`` saying so.

Messages are handled one at a time, so a client that sends faster than frames decode is slowed
by TCP rather than queued in memory; decoded frames then wait in the push source's bounded queue.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from http import HTTPStatus

from aiohttp import WSMsgType, web

from streamcap.core.errors import ErrorCode, ProtocolError
from streamcap.core.secrets import printable
from streamcap.outputs import wire
from streamcap.runtime.config import IngestConfig
from streamcap.server.app import Server
from streamcap.server.responses import error_response
from streamcap.server.hub import ClientHandle
from streamcap.server.publishers import PushControl, PushStreams, publisher_key
from streamcap.sources.audio import StreamResampler, is_audio_message, parse_pcm16_message, pcm16_to_float
from streamcap.sources.ingest import check_frame, decode_image, parse_text_message
from streamcap.sources.push import PushSource

log = logging.getLogger(__name__)

INGEST_PATH = "/ingest/{stream}"


__all__ = ["INGEST_PATH", "IngestRoutes", "PushControl"]


class IngestRoutes:
    def __init__(self, server: Server, control: PushControl, config: IngestConfig, *, default_fps: float,
                 streams: PushStreams | None = None) -> None:
        self.server = server
        self.control = control
        self.config = config
        self.streams = streams or PushStreams(control, config, server.metrics)
        self.default_fps = default_fps
        self._ids = itertools.count(1)

    def routes(self) -> list[web.RouteDef]:
        return [web.get(INGEST_PATH, self.ingest)]

    async def aclose(self) -> None:
        pass  # connections are hub clients: the server's shutdown closes them

    async def ingest(self, request: web.Request) -> web.StreamResponse:
        stream = request.match_info["stream"]  # a valid id: the access middleware checked it
        max_msg = int(self.config.max_message_mb * (1 << 20))
        ws = web.WebSocketResponse(heartbeat=20.0, compress=False, max_msg_size=max_msg,
                                   timeout=self.server.close_timeout_s)
        if not ws.can_prepare(request).ok:
            return error_response(HTTPStatus.UPGRADE_REQUIRED, ErrorCode.UPGRADE_REQUIRED,
                                  "this path needs a websocket upgrade")
        try:
            source = self.streams.source_for(stream, publisher_key(request))
        except ValueError as exc:
            return error_response(HTTPStatus.CONFLICT, ErrorCode.NOT_A_PUSH_STREAM, str(exc))
        await ws.prepare(request)
        publisher = f"ingest-{next(self._ids)} {request.remote}"
        source.publisher_joined(publisher)
        log.info("stream %s: %s connected", stream, publisher)
        with self.server.track():
            try:
                await self.server.serve_hub_client(
                    request, ws, (stream,),
                    lambda client: self._receive(ws, client, source, stream, publisher))
            finally:
                source.publisher_left(publisher)
                log.info("stream %s: %s disconnected (code %s)", stream, publisher, ws.close_code)
        return ws

    async def _receive(self, ws: web.WebSocketResponse, client: ClientHandle, source: PushSource, stream: str,
                       publisher: str) -> None:
        hub = self.server.hub
        total = 0
        resampler = StreamResampler()  # this connection's audio, continuous across messages
        async for msg in ws:
            if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                return  # close or error: the connection is over
            try:
                if msg.type is WSMsgType.BINARY and is_audio_message(msg.data):
                    samples = await self._audio_of(msg.data, source, stream, resampler)
                    if not source.push_audio(samples, publisher=publisher):
                        return  # the stream was removed
                    hub.send_to(client, wire.encode_ingested(stream, 0, total))
                    continue
                images, spacing = await self._frames_of(msg, source, stream)
            except ProtocolError as exc:
                log.info("stream %s: %s: %s", stream, publisher, printable(exc.detail))
                self.server.metrics.bad_requests_total.labels(code=exc.code).inc()
                if exc.code == ErrorCode.TOO_MANY_PIXELS:
                    self.server.metrics.limit_refusals_total.labels(limit="max_pixels").inc()
                hub.send_to(client, wire.encode_error(exc.code, exc.detail))
                continue
            except asyncio.CancelledError:
                raise
            except Exception:  # boundary: one message's unexpected failure is that message's error
                log.exception("stream %s: %s: a message failed", stream, publisher)
                self.server.metrics.bad_requests_total.labels(code=ErrorCode.INTERNAL_ERROR).inc()
                hub.send_to(client, wire.encode_error(ErrorCode.INTERNAL_ERROR, "the message could not be handled"))
                continue
            for image in images:
                if not source.push(image, source.next_pts_s(spacing) if spacing else None, publisher):
                    return  # the stream was removed
            total += len(images)
            hub.send_to(client, wire.encode_ingested(stream, len(images), total))

    async def _audio_of(self, data: bytes, source: PushSource, stream: str, resampler: StreamResampler):
        """The 16 kHz mono samples of one binary audio message. Raises ProtocolError."""
        message = parse_pcm16_message(data, max_bytes=self.config.max_frame_kb * 1024)
        if not source.wants_audio:
            raise ProtocolError(f"stream {stream} takes no audio (it has no speech track)",
                                code=ErrorCode.BAD_MESSAGE)
        # mixing and resampling up to 5 s of sound is CPU work: off the event loop
        return await asyncio.to_thread(lambda: resampler.resample(pcm16_to_float(message), message.rate))

    async def _frames_of(self, msg, source: PushSource, stream: str) -> tuple[list, float]:
        """The decoded, prepared frames of one message and their spacing in media seconds (0: arrival
        time). Raises ProtocolError."""
        max_frame = self.config.max_frame_kb * 1024
        max_pixels = self.config.max_pixels
        if msg.type is WSMsgType.BINARY:
            data = check_frame(msg.data, max_frame, max_pixels=max_pixels)
            return [await asyncio.to_thread(self._decode, data, source, "frame", max_pixels)], 0.0
        # parsing (base64 of up to max_message_mb) and decoding are CPU work: off the event loop
        batch = await asyncio.to_thread(parse_text_message, msg.data, max_frames=self.config.max_frames_per_message,
                                        max_frame_bytes=max_frame, max_pixels=max_pixels)
        images = await asyncio.to_thread(self._decode_all, batch.frames, source, max_pixels)
        if batch.max_length is not None:
            self.control.set_stream_decoding(stream, max_new_tokens=batch.max_length)
        return images, 1.0 / (batch.fps or self.default_fps)

    @staticmethod
    def _decode(data: bytes, source: PushSource, where: str, max_pixels: int):
        return source.prepare(decode_image(data, where, max_pixels=max_pixels))

    def _decode_all(self, frames: tuple[bytes, ...], source: PushSource, max_pixels: int) -> list:
        return [self._decode(f, source, f"frames[{i}]", max_pixels) for i, f in enumerate(frames)]
