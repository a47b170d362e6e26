"""WebRTC ingest via WHIP (the WebRTC-HTTP ingestion protocol, RFC 9725), with ``aiortc``.

``POST /whip/{stream}`` with an SDP offer (``Content-Type: application/sdp``, ``publish`` scope,
checked with the stream id by the access middleware before a handler runs) answers ``201 Created`` with the SDP answer and a ``Location`` naming the session; ``DELETE`` on
that Location ends it. Candidates are gathered before answering (no trickle ICE: ``PATCH`` is
405). OBS 30+ ("WHIP" output) and the ``/publish`` page speak this.

The session's video track feeds the stream's :class:`~streamcap.sources.push.PushSource`, the
same path as websocket ingest: frames beyond ``windows.max_ingest_fps`` are skipped before
conversion, so are frames over ``ingest.max_pixels`` (counted in
``streamcap_limit_refusals_total{limit="max_pixels"}``); each kept frame is converted to RGB and resized off the event loop, so resolution
changes mid-stream need nothing special. No STUN/TURN server is contacted unless
``webrtc.ice_servers`` lists one.

An audio track (the publisher's microphone) is always read — an unread aiortc track would queue
its decoded frames without bound — and, when the stream's push source takes audio (opened with
``audio=True``: a speech track), each decoded frame is mixed to mono and resampled to 16 kHz
(:class:`~streamcap.sources.audio.Resampler`; 20 ms of sound, cheap enough for the loop) and pushed
with :meth:`~streamcap.sources.push.PushSource.push_audio`. Its media time is the push source's
clock (arrival since the stream's first frame or sound), the clock the video frames are placed on,
followed smoothly by the track's RTP time (:class:`~streamcap.sources.push.AudioAnchor`): picture
and sound of one publisher line up within the jitter of their arrival (tens of ms).

Limits: ``webrtc.max_sessions`` sessions at once (503) and ``webrtc.max_sessions_per_token`` per
publish token (429), both ``too_many_sessions``; a new stream only within the limits of
:class:`~streamcap.server.publishers.PushStreams`. A session whose peer connection has not
connected ``webrtc.connect_timeout_s`` after the answer is closed (its slot freed, reason
``connect_timeout``) and a stream it created that never got a frame is removed. Closed sessions
are counted in ``streamcap_whip_sessions_closed_total{reason}``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from dataclasses import dataclass, field
from http import HTTPStatus

import numpy as np
from aiohttp import web

from streamcap.core.errors import ErrorCode, HttpError
from streamcap.core.secrets import printable
from streamcap.core.types import AUDIO_RATE
from streamcap.core.windowing import min_frame_gap_s
from streamcap.runtime.config import WebRTCConfig
from streamcap.server.app import Server
from streamcap.server.responses import error_response, guarded
from streamcap.server.publishers import PushControl, PushStreams, publisher_key
from streamcap.sources.audio import Resampler
from streamcap.sources.push import AudioAnchor, PushSource

log = logging.getLogger(__name__)

WHIP_PATH = "/whip/{stream}"
SESSION_PATH = "/whip/{stream}/{session}"
SDP = "application/sdp"


def allow_loopback_candidates() -> None:
    """Make aioice offer 127.0.0.1 host candidates too (it leaves loopback out), so a publisher
    on the same machine — a test, a local OBS — can connect without any network interface.
    Process-wide and idempotent."""
    import aioice.ice

    original = aioice.ice.get_host_addresses
    if getattr(original, "streamcap_loopback", False):
        return

    def with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = original(use_ipv4, use_ipv6)
        if use_ipv4 and "127.0.0.1" not in addresses:
            addresses = [*addresses, "127.0.0.1"]
        return addresses

    with_loopback.streamcap_loopback = True  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = with_loopback


@dataclass
class WhipSession:
    id: str
    stream: str
    publisher: str
    pc: object  # RTCPeerConnection
    key: str = ""  # who publishes (publisher_key): per-token limits
    source: PushSource | None = None  # set once the offer is accepted, before any media flows
    tasks: set[asyncio.Task] = field(default_factory=set)
    frames: int = 0
    audio_s: float = 0.0  # seconds of sound pushed (16 kHz)
    refused_frames: int = 0  # over ingest.max_pixels
    sizes: set[tuple[int, int]] = field(default_factory=set)  # picture sizes received (they may change)
    connected: bool = False  # the peer connection reached "connected" once
    deadline: asyncio.Task | None = None  # closes the session unless it connects in time
    closed: bool = False


class WhipRoutes:
    def __init__(self, server: Server, control: PushControl, config: WebRTCConfig, *, max_ingest_fps: float,
                 streams: PushStreams, max_pixels: int | None = None) -> None:
        self.server = server
        self.max_pixels = max_pixels
        self.control = control
        self.streams = streams
        self.config = config
        self.min_gap_s = min_frame_gap_s(max_ingest_fps)
        self.sessions: dict[str, WhipSession] = {}
        self._ids = itertools.count(1)
        if config.loopback_candidates:
            allow_loopback_candidates()

    def routes(self) -> list[web.RouteDef]:
        return [web.post(WHIP_PATH, guarded(self.offer)), web.delete(SESSION_PATH, guarded(self.end)),
                web.patch(SESSION_PATH, guarded(self.patch)), web.options(WHIP_PATH, guarded(self.options))]

    async def aclose(self) -> None:
        await asyncio.gather(*(self._close(s, "server shutting down", "shutdown") for s in list(self.sessions.values())))

    # ------------------------------------------------------------------ HTTP

    async def options(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"Accept-Post": SDP})

    async def patch(self, request: web.Request) -> web.Response:
        return error_response(HTTPStatus.METHOD_NOT_ALLOWED, ErrorCode.METHOD_NOT_ALLOWED,
                              "trickle ICE is not supported: send every candidate in the offer")

    async def offer(self, request: web.Request) -> web.StreamResponse:
        from aiortc import (
            RTCConfiguration,
            RTCIceServer,
            RTCPeerConnection,
            RTCSessionDescription,
        )

        stream = request.match_info["stream"]  # a valid id: the access middleware checked it
        if request.content_type != SDP:
            return error_response(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, ErrorCode.BAD_CONTENT_TYPE,
                                  f"a WHIP offer is {SDP}, not {request.content_type or 'nothing'}")
        if len(self.sessions) >= self.config.max_sessions:
            self.server.metrics.limit_refusals_total.labels(limit="max_sessions").inc()
            return error_response(HTTPStatus.SERVICE_UNAVAILABLE, ErrorCode.TOO_MANY_SESSIONS,
                                  f"{len(self.sessions)} WHIP sessions already (webrtc.max_sessions)")
        key = publisher_key(request)
        mine = sum(1 for s in self.sessions.values() if s.key == key)
        if mine >= self.config.max_sessions_per_token:
            self.server.metrics.limit_refusals_total.labels(limit="max_sessions_per_token").inc()
            return error_response(HTTPStatus.TOO_MANY_REQUESTS, ErrorCode.TOO_MANY_SESSIONS,
                                  f"this publisher already has {mine} WHIP sessions (webrtc.max_sessions_per_token)")
        try:
            sdp = (await request.read()).decode("utf-8")
        except UnicodeDecodeError:
            return error_response(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_SDP, "the offer is not UTF-8 text")
        problem = _sdp_problem(sdp)
        if problem:
            return error_response(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_SDP, problem)
        try:  # a new stream is made only once the offer is good
            source: PushSource | None = self.streams.source_for(stream, key, create=False)
        except KeyError:
            source = None
        except ValueError as exc:
            return error_response(HTTPStatus.CONFLICT, ErrorCode.NOT_A_PUSH_STREAM, str(exc))

        ice = [RTCIceServer(urls=u) for u in self.config.ice_servers]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        session = WhipSession(secrets.token_urlsafe(12), stream, f"whip-{next(self._ids)} {request.remote}", pc, key)

        @pc.on("track")
        def on_track(track) -> None:
            consume = {"video": self._consume, "audio": self._consume_audio}.get(track.kind)
            if consume is not None:
                task = asyncio.create_task(consume(session, track), name=f"whip-{session.id}-{track.kind}")
                session.tasks.add(task)
                task.add_done_callback(session.tasks.discard)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            log.info("stream %s: %s: connection %s", stream, session.publisher, pc.connectionState)
            if pc.connectionState == "connected":
                session.connected = True
            if pc.connectionState in ("failed", "closed"):
                await self._close(session, f"connection {pc.connectionState}", pc.connectionState)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except Exception as exc:  # boundary: aiortc raises many kinds on a bad offer
            await _abandon(pc, session)
            log.info("stream %s: refused a WHIP offer: %s", stream, printable(exc))
            return error_response(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_SDP,
                                  f"could not use the SDP offer: {type(exc).__name__}: {exc}")
        if source is None:
            try:
                source = self.streams.source_for(stream, key)
            except HttpError:  # over a limit on streams: no session then
                await _abandon(pc, session)
                raise
            except ValueError as exc:  # made meanwhile, reading from a URL
                await _abandon(pc, session)
                return error_response(HTTPStatus.CONFLICT, ErrorCode.NOT_A_PUSH_STREAM, str(exc))
        session.source = source
        self.sessions[session.id] = session
        source.publisher_joined(session.publisher)
        session.deadline = asyncio.create_task(self._connect_deadline(session), name=f"whip-{session.id}-deadline")
        location = f"/whip/{stream}/{session.id}"
        log.info("stream %s: %s started WHIP session %s", stream, session.publisher, session.id)
        return web.Response(status=201, text=pc.localDescription.sdp, content_type=SDP,
                            headers={"Location": location, "Cache-Control": "no-store"})

    async def end(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["session"])
        if session is None or session.stream != request.match_info["stream"]:
            return error_response(HTTPStatus.NOT_FOUND, ErrorCode.NOT_FOUND, "no such WHIP session")
        await self._close(session, "ended by the publisher", "ended")
        return web.Response(status=200)

    async def _connect_deadline(self, session: WhipSession) -> None:
        """Close the session unless its peer connection connects within ``webrtc.connect_timeout_s``
        (a publisher that sent an offer and went away must not hold a slot)."""
        await asyncio.sleep(self.config.connect_timeout_s)
        if session.connected or session.closed:
            return
        log.info("stream %s: %s: WHIP session %s not connected after %.1f s; closing it", session.stream,
                 session.publisher, session.id, self.config.connect_timeout_s)
        await self._close(session, "never connected", "connect_timeout")

    # ------------------------------------------------------------------ media

    async def _consume(self, session: WhipSession, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        last_kept: float | None = None
        try:
            while True:
                frame = await track.recv()
                session.sizes.add((frame.width, frame.height))
                t = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else None
                if t is not None and last_kept is not None and 0 <= t - last_kept < self.min_gap_s:
                    continue  # more frames than the windows need: skip before converting
                last_kept = t
                if self.max_pixels is not None and frame.width * frame.height > self.max_pixels:
                    # never converted; counted once per kept interval
                    self.server.metrics.limit_refusals_total.labels(limit="max_pixels").inc()
                    session.refused_frames += 1
                    continue
                assert session.source is not None
                image = await asyncio.to_thread(_to_rgb, frame, session.source)
                if not session.source.push(image, publisher=session.publisher):
                    break  # the stream was removed
                session.frames += 1
        except MediaStreamError:
            pass  # the track ended
        finally:
            log.info("stream %s: %s: video ended after %d frames", session.stream, session.publisher, session.frames)

    async def _consume_audio(self, session: WhipSession, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        resampler: Resampler | None = None
        anchor = AudioAnchor()
        ignored = False
        try:
            while True:
                frame = await track.recv()
                source = session.source
                if source is None or not source.wants_audio:
                    if not ignored and source is not None:
                        log.info("stream %s: %s: the stream takes no audio; its sound is ignored",
                                 session.stream, session.publisher)
                        ignored = True
                    continue  # read and let go: an unread track queues without bound
                resampler = resampler or Resampler()
                pieces = resampler.resample(frame)
                if not pieces:
                    continue
                samples = pieces[0][1] if len(pieces) == 1 else np.concatenate([p for _, p in pieces])
                clock_s = (float(frame.pts * frame.time_base)
                           if frame.pts is not None and frame.time_base else None)
                duration_s = len(samples) / AUDIO_RATE
                pts_s = anchor.media_s(clock_s, source.arrival_s(duration_s))
                if not source.push_audio(samples, pts_s, publisher=session.publisher):
                    break  # the stream was removed
                session.audio_s += duration_s
        except MediaStreamError:
            pass  # the track ended
        finally:
            log.info("stream %s: %s: audio ended after %.1f s", session.stream, session.publisher, session.audio_s)

    async def _close(self, session: WhipSession, why: str, reason: str) -> None:
        """End a session (idempotent): free its slot, leave its stream, stop its tasks and peer
        connection; a stream it created that never got a frame is removed."""
        if session.closed:
            return
        session.closed = True
        self.sessions.pop(session.id, None)
        self.server.metrics.whip_sessions_closed_total.labels(reason=reason).inc()
        if session.source is not None:
            session.source.publisher_left(session.publisher)
        tasks = [*session.tasks, *([session.deadline] if session.deadline is not None else [])]
        tasks = [t for t in tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.pc.close()
        log.info("stream %s: WHIP session %s closed (%s)", session.stream, session.id, why)
        if reason != "shutdown" and not session.connected:
            await self.streams.release_unused(session.stream)


def _to_rgb(frame, source: PushSource):
    return source.prepare(frame.to_ndarray(format="rgb24"))


async def _abandon(pc: object, session: WhipSession) -> None:
    """Close a connection an offer only half made: its track tasks cancelled, and aiortc's own
    close failing (a transceiver left without a transport) logged, not raised."""
    for task in list(session.tasks):
        task.cancel()
    try:
        await pc.close()
    except Exception as exc:  # boundary: aiortc cannot always close what it only half made
        log.warning("stream %s: %s: closing a refused connection failed: %s", session.stream,
                    session.publisher, printable(repr(exc)))


def _sdp_problem(sdp: str) -> str | None:
    """A cheap check before aiortc sees the offer: the reason it is not a usable WHIP offer."""
    lines = [line.strip() for line in sdp.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("v=0"):
        return "not an SDP offer (it must start with v=0)"
    if not any(line.startswith("m=video") for line in lines):
        return "the offer has no video (m=video) section"
    # aiortc asserts (in a task nobody awaits) that every transport has a DTLS fingerprint: a
    # section without one, at session level or its own, would fail later with a traceback
    session_fp, section_fp, sections_without = False, False, 0
    in_media = False
    for line in lines:
        if line.startswith("m="):
            sections_without += in_media and not (session_fp or section_fp)
            in_media, section_fp = True, False
        elif line.startswith("a=fingerprint:"):
            if len(line[len("a=fingerprint:"):].split()) != 2:
                return "a=fingerprint must be 'a=fingerprint:ALGORITHM VALUE'"
            if in_media:
                section_fp = True
            else:
                session_fp = True
    sections_without += in_media and not (session_fp or section_fp)
    if sections_without:
        return "the offer has a media section without a DTLS fingerprint (a=fingerprint)"
    # a BUNDLE group naming a mid no section has leaves aiortc a transceiver without a transport
    mids = {line[len("a=mid:"):] for line in lines if line.startswith("a=mid:")}
    for line in lines:
        if line.startswith("a=group:BUNDLE"):
            unknown = [mid for mid in line[len("a=group:BUNDLE"):].split() if mid not in mids]
            if unknown:
                return f"a=group:BUNDLE names {printable(unknown[0], 32)!r}, the mid of no media section"
    return None
