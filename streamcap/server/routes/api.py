"""The HTTP API under ``/v1``: stream management, whole-clip captioning, chapters, live WebVTT
and alerts. The scope each route needs is its row in :data:`streamcap.server.access.ROUTE_ACCESS`
(checked before a handler runs); the JSON bodies come from :mod:`streamcap.outputs.documents`.

* ``GET /v1/streams`` (view): every stream with its health.
* ``POST /v1/streams`` (admin): ``{"id": "cam2", "url": "rtsp://..."}`` adds a stream → 201, when
  the ``[admission]`` policy allows its URL scheme and, for a file, its folder (403
  ``source_not_allowed`` otherwise, saying nothing about whether a path exists).
* ``DELETE /v1/streams/{id}`` (admin): stops and removes it → 204.
* ``POST /v1/captions`` (publish): a whole video, as JSON ``{"video": "<base64>", "max_length": 30}``
  or a multipart upload (a ``video`` file field, optional ``max_length`` field) → timed captions:
  JSON by default, ``?format=vtt|srt|jsonl`` for subtitle files. The clip runs through the live
  pipeline as a hidden file stream (sharing the engine, losing nothing), at most
  ``ingest.max_clip_jobs`` at once. The upload is stored in the streamcap upload folder
  (:mod:`streamcap.server.uploads`); no answer ever names that file.
* ``GET /v1/streams/{id}/chapters?since=S`` (view): the stream's chapters from media second S.
* ``GET /v1/streams/{id}/subtitles.m3u8`` and ``.../subtitles/{n}.vtt`` (view): live WebVTT (HLS);
  ``?track=speech`` for the speech track's (also on ``.../chapters``).
* ``GET /v1/streams/{id}/snapshot.jpg`` (view): the stream's latest picture as a JPEG;
  ``?boxes=1`` draws the newest captioned window's object boxes with their labels, ``?width=N``
  (64-1920) scales it. 404 for an unknown stream and for one without a picture yet. Encoded in a
  worker thread, at most :data:`MAX_SNAPSHOT_JOBS` at once (:mod:`streamcap.server.snapshot`).
* ``GET /v1/alerts`` (view): recent alerts; ``POST /v1/alerts/{id}/ack`` (view) acknowledges one.

Errors are ``{"error": {"code": ..., "detail": ...}}`` with a 4xx status: 400 bad JSON (parsed by
:func:`streamcap.outputs.jsonsafe.loads`: bounded depth and number length), a malformed multipart
body, bad base64 or a bad field, 403 a source the admission policy refuses, 409 a stream id in
use, 413 too large, 415 an unknown content type, 422 a body that is not a decodable video. Each
handler runs inside :func:`~streamcap.server.responses.guarded`: an unexpected failure is a 500
for that request only, logged, with no internal detail in the body.
"""

from __future__ import annotations

import asyncio
import logging
import os
import urllib.parse
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import Protocol

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from streamcap.core.errors import BadSourceURL, ConfigError, ErrorCode, HttpError, ProtocolError, SourceError
from streamcap.core.secrets import printable
from streamcap.core.types import SPEECH_TRACK, Caption
from streamcap.outputs import documents, jsonsafe
from streamcap.outputs.chapters import Chapter
from streamcap.outputs.livevtt import LiveVttSegmenter
from streamcap.outputs.subtitles import SubtitleRules, cues_from_finals, to_jsonl, to_srt, to_webvtt
from streamcap.outputs.tracks import merge_tracks
from streamcap.outputs.wire import encode_caption
from streamcap.runtime.config import AdmissionConfig, IngestConfig, is_valid_stream_id
from streamcap.server.app import Server
from streamcap.server.responses import error_response, guarded, json_response, response
from streamcap.server.snapshot import MAX_WIDTH, MIN_WIDTH, render_snapshot
from streamcap.server.uploads import UploadFolder
from streamcap.sources.pyav import probe_media
from streamcap.sources.ingest import MAX_LENGTH_LIMIT, b64decode
from streamcap.sources.url import SourceKind, SourceSpec, parse_source_url

log = logging.getLogger(__name__)

FORMATS = {"json": "application/json", "vtt": "text/vtt", "srt": "application/x-subrip", "jsonl": "application/x-ndjson"}
_CHUNK = 1 << 16
#: request bodies are flat objects: a little nesting room, no more
API_JSON_LIMITS = jsonsafe.JsonLimits(max_depth=8, max_number_chars=64)
UPLOADED = "the uploaded file"
#: a live WebVTT segment number has at most this many digits (more is no segment)
MAX_SEGMENT_DIGITS = 18
#: snapshots encoded at once (each a worker thread for a few milliseconds); more wait their turn
MAX_SNAPSHOT_JOBS = 2


class StreamControl(Protocol):
    """What the API needs from the pipeline."""

    def stream_ids(self) -> list[str]: ...

    def health(self) -> dict: ...

    def add_stream(self, stream_id: str, url: str, *, engine: str | None = None) -> object: ...

    async def remove_stream(self, stream_id: str) -> None: ...

    async def caption_clip(self, path: str, *, decode: dict | None = None,
                           tracks: tuple[str, ...] | None = None) -> list[Caption]: ...

    def chapters(self, stream_id: str, since_s: float = 0.0, track: str = "video") -> list[Chapter]: ...

    def live_subtitles(self, stream_id: str, track: str = "video") -> LiveVttSegmenter | None: ...

    def picture(self, stream_id: str, track: str = "video") -> tuple: ...


class ApiRoutes:
    def __init__(self, server: Server, control: StreamControl, config: IngestConfig, *, max_body_bytes: int,
                 subtitle_rules=None, admission: AdmissionConfig | None = None,
                 uploads: UploadFolder | None = None, want_audio: bool = False) -> None:
        self.subtitle_rules = subtitle_rules
        #: uploads are captioned with a speech track too: a file with sound but no picture is taken
        self.want_audio = want_audio
        self.admission = admission or AdmissionConfig()
        self.uploads = uploads or UploadFolder(config.upload_dir)
        self.server = server
        self.control = control
        self.config = config
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = int(config.max_upload_mb * (1 << 20))
        self._jobs = asyncio.Semaphore(config.max_clip_jobs)
        self._snapshot_jobs = asyncio.Semaphore(MAX_SNAPSHOT_JOBS)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/streams", guarded(self.list_streams)), web.post("/v1/streams", guarded(self.add_stream)),
                web.delete("/v1/streams/{stream}", guarded(self.remove_stream)),
                web.post("/v1/captions", guarded(self.captions)),
                web.get("/v1/streams/{stream}/chapters", guarded(self.chapters)),
                web.get("/v1/streams/{stream}/subtitles.m3u8", guarded(self.live_playlist)),
                web.get("/v1/streams/{stream}/subtitles/{n:\\d+}.vtt", guarded(self.live_segment)),
                web.get("/v1/streams/{stream}/snapshot.jpg", guarded(self.snapshot)),
                web.get("/v1/alerts", guarded(self.list_alerts)),
                web.post("/v1/alerts/{alert}/ack", guarded(self.ack_alert))]

    async def aclose(self) -> None:
        await asyncio.to_thread(self.uploads.remove_own)

    # ------------------------------------------------------------------ streams

    async def list_streams(self, request: web.Request) -> web.Response:
        health = self.control.health()
        return json_response(HTTPStatus.OK, documents.stream_list(self.control.stream_ids(), health))

    async def add_stream(self, request: web.Request) -> web.Response:
        doc = await self._json(request, self.max_body_bytes)
        extra = sorted(set(doc) - {"id", "url", "engine"})
        if extra:
            raise HttpError(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST, f"unexpected field(s): {', '.join(extra)}")
        sid, url = doc.get("id"), doc.get("url")
        if not isinstance(sid, str) or not is_valid_stream_id(sid):
            raise HttpError(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_STREAM_ID,
                            "'id' must be 1-64 of letters, digits, '_', '.', '-'")
        if not isinstance(url, str):
            raise HttpError(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_SOURCE_URL, "'url' must be a string")
        engine = doc.get("engine")
        if engine is not None and engine not in ("auto", "caption", "describer"):
            raise HttpError(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST,
                            "'engine' must be auto, caption or describer")
        try:
            spec = parse_source_url(url)
        except BadSourceURL as exc:
            raise HttpError(HTTPStatus.BAD_REQUEST, exc.code, exc.detail) from exc
        refusal = admission_refusal(spec, self.admission)
        if refusal is not None:
            limit, detail = refusal
            self.server.metrics.limit_refusals_total.labels(limit=limit).inc()
            raise HttpError(HTTPStatus.FORBIDDEN, ErrorCode.SOURCE_NOT_ALLOWED, detail)
        if spec.kind is SourceKind.FILE and not Path(spec.location).is_file():  # under an allowed root
            raise HttpError(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_SOURCE_URL,
                            "no such file in the folders of admission.file_roots")
        if sid in self.control.stream_ids():
            raise HttpError(HTTPStatus.CONFLICT, ErrorCode.STREAM_EXISTS, f"stream {sid!r} already exists")
        try:
            self.control.add_stream(sid, url, engine=engine)
        except ConfigError as exc:  # the describer asked for and not loaded
            raise HttpError(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST, exc.detail) from exc
        log.info("stream %s: added through the API", sid)
        return json_response(HTTPStatus.CREATED, documents.stream(sid, self.control.health().get(sid, {})),
                             {"Location": f"/v1/streams/{sid}"})

    async def remove_stream(self, request: web.Request) -> web.Response:
        sid = request.match_info["stream"]
        if sid not in self.control.stream_ids():
            return error_response(HTTPStatus.NOT_FOUND, ErrorCode.NOT_FOUND, f"no stream {sid!r}")
        await self.control.remove_stream(sid)
        return web.Response(status=204)

    async def chapters(self, request: web.Request) -> web.Response:
        sid = request.match_info["stream"]
        try:
            since = float(request.query.get("since", "0"))
            if not since >= 0 or since == float("inf"):
                raise ValueError
        except ValueError:
            return error_response(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST, "since must be media seconds >= 0")
        if sid not in self.control.stream_ids():
            return error_response(HTTPStatus.NOT_FOUND, ErrorCode.NOT_FOUND, f"no stream {sid!r}")
        chapters = self.control.chapters(sid, since, _track(request))
        return json_response(HTTPStatus.OK, documents.chapters(sid, since, chapters))

    def _live_vtt(self, request: web.Request):
        sid = request.match_info["stream"]
        track = _track(request)
        segmenter = self.control.live_subtitles(sid, track) if sid in self.control.stream_ids() else None
        if segmenter is None:
            raise HttpError(HTTPStatus.NOT_FOUND, ErrorCode.NOT_FOUND,
                            f"no live subtitles for stream {sid!r}" + (f" (track {track})" if track != "video" else ""))
        return segmenter

    async def live_playlist(self, request: web.Request) -> web.Response:
        """The HLS media playlist of the stream's live WebVTT segments (players poll it)."""
        segmenter = self._live_vtt(request)
        query = "" if _track(request) == "video" else f"?track={_track(request)}"
        # never a token in the segment URLs: clients send it as a header
        text = segmenter.playlist(lambda n: f"subtitles/{n}.vtt{query}")
        return response(HTTPStatus.OK, text, "application/vnd.apple.mpegurl", {"Cache-Control": "no-cache"})

    async def live_segment(self, request: web.Request) -> web.Response:
        segmenter = self._live_vtt(request)
        digits = request.match_info["n"]
        n = int(digits) if len(digits) <= MAX_SEGMENT_DIGITS else None  # int() refuses 4,300+ digits
        text = None if n is None else segmenter.segment(n)
        if text is None:
            return error_response(HTTPStatus.NOT_FOUND, ErrorCode.NOT_FOUND,
                                  f"segment {digits[:MAX_SEGMENT_DIGITS]} is not (or no longer) available")
        # a complete segment never changes
        return response(HTTPStatus.OK, text, "text/vtt", {"Cache-Control": "private, max-age=3600"})

    async def snapshot(self, request: web.Request) -> web.Response:
        """The stream's latest frame as a JPEG (``?boxes=1``: with the newest window's object boxes)."""
        sid = request.match_info["stream"]
        boxes = request.query.get("boxes", "0")
        if boxes not in ("0", "1"):
            raise HttpError(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST, "boxes must be 0 or 1")
        width = None
        if "width" in request.query:
            text = request.query["width"]
            if not (text.isdigit() and len(text) <= 5 and MIN_WIDTH <= int(text) <= MAX_WIDTH):
                raise HttpError(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST,
                                f"width must be whole pixels from {MIN_WIDTH} to {MAX_WIDTH}")
            width = int(text)
        if sid not in self.control.stream_ids():
            return error_response(HTTPStatus.NOT_FOUND, ErrorCode.NOT_FOUND, f"no stream {sid!r}")
        frame, seen, aspect = self.control.picture(sid)  # on the loop, like every read of a stream
        if frame is None:
            return error_response(HTTPStatus.NOT_FOUND, ErrorCode.NOT_FOUND,
                                  f"stream {sid!r} has no picture yet (no frame received, or no video track)")
        objects = seen[1] if boxes == "1" and seen is not None else ()
        async with self._snapshot_jobs:
            data = await asyncio.to_thread(render_snapshot, frame.image, objects, width=width, aspect=aspect)
        headers = {"X-Frame-Pts": f"{frame.pts_s:.3f}"}
        if boxes == "1" and seen is not None:
            headers["X-Objects-Window-End"] = f"{seen[0]:.3f}"
        return response(HTTPStatus.OK, data, "image/jpeg", headers)

    # ------------------------------------------------------------------ alerts

    async def list_alerts(self, request: web.Request) -> web.Response:
        return json_response(HTTPStatus.OK, documents.alert_list(self.server.hub.recent_alerts()))

    async def ack_alert(self, request: web.Request) -> web.Response:
        by = None
        if request.can_read_body:
            doc = await self._json(request, self.max_body_bytes)
            by = doc.get("by")
            if set(doc) - {"by"} or (by is not None and (not isinstance(by, str) or not 0 < len(by) <= 200)):
                return error_response(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST,
                                      "the body is optional: {\"by\": \"who acknowledges\"} (1-200 characters)")
        alert_id = request.match_info["alert"]
        try:
            record = self.server.hub.ack(alert_id, by or f"http {request.remote or '?'}", self.server.wall_clock())
        except KeyError:
            return error_response(HTTPStatus.NOT_FOUND, ErrorCode.UNKNOWN_ALERT, f"no recent alert {alert_id!r}")
        log.info("alert %s acknowledged by %s", alert_id, printable(record.acked_by, 100))
        return json_response(HTTPStatus.OK, documents.alert(record))

    # ------------------------------------------------------------------ captions

    async def captions(self, request: web.Request) -> web.Response:
        fmt = request.query.get("format", "json")
        if fmt not in FORMATS:
            return error_response(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_FORMAT,
                                  f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        tracks = _tracks(request.query.get("tracks"))
        path = str(await asyncio.to_thread(self.uploads.new_file))
        try:
            max_length = await self._receive_video(request, path)
            # sound alone is enough when the clip is heard (a speech track asked for, or configured)
            want_audio = self.want_audio if tracks is None else SPEECH_TRACK in tracks
            await asyncio.to_thread(_check_video, path, want_audio)
            decode = {} if max_length is None else {"max_new_tokens": max_length}
            async with self._jobs:
                try:
                    finals = await self.control.caption_clip(path, decode=decode, tracks=tracks)
                except SourceError as exc:
                    return error_response(HTTPStatus.UNPROCESSABLE_ENTITY, ErrorCode.UNDECODABLE_VIDEO,
                                          f"the video could not be read: {self._without_paths(exc.detail, path)}")
        finally:
            await asyncio.to_thread(Path(path).unlink, missing_ok=True)
        return _render(finals, fmt, self.subtitle_rules)

    def _without_paths(self, detail: str, path: str) -> str:
        """``detail`` with the upload's file name (and folder) replaced by words."""
        return detail.replace(path, UPLOADED).replace(str(self.uploads.path), "the upload folder")

    async def _receive_video(self, request: web.Request, path: str) -> int | None:
        """Store the request's video in ``path``; returns ``max_length`` when given."""
        if request.content_length is not None and request.content_length > self._body_limit(request):
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, ErrorCode.TOO_LARGE,
                           f"the body is {request.content_length} bytes; the limit is {self._body_limit(request)}")
        if request.content_type == "application/json":
            doc = await self._json(request, self._body_limit(request))
            extra = sorted(set(doc) - {"video", "max_length"})
            if extra:
                raise HttpError(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST, f"unexpected field(s): {', '.join(extra)}")
            video = doc.get("video")
            if not isinstance(video, str) or not video:
                raise HttpError(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST, "'video' must be a base64 string")
            try:
                data = b64decode(video, "'video'")
            except ProtocolError as exc:
                raise HttpError(HTTPStatus.BAD_REQUEST, exc.code, exc.detail) from exc
            if len(data) > self.max_upload_bytes:
                raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, ErrorCode.TOO_LARGE,
                               f"the video is {len(data)} bytes; the limit is {self.max_upload_bytes}")
            await asyncio.to_thread(Path(path).write_bytes, data)
            return _max_length(doc.get("max_length"))
        if request.content_type == "multipart/form-data":
            return await self._multipart(request, path)
        raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, ErrorCode.BAD_CONTENT_TYPE,
                       "send application/json ({\"video\": base64}) or multipart/form-data (a 'video' file)")

    def _body_limit(self, request: web.Request) -> int:
        # base64 in JSON is 4/3 of the video, plus a little for the rest of the document
        return self.max_upload_bytes * 4 // 3 + 4096 if request.content_type == "application/json" \
            else self.max_upload_bytes + 65536

    async def _multipart(self, request: web.Request, path: str) -> int | None:
        try:
            return await self._read_multipart(request, path)
        except (ValueError, BadHttpMessage) as exc:  # aiohttp's words for a malformed body or part header
            raise HttpError(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST,
                            "the multipart body is malformed (no or a wrong boundary, or a bad part header)") from exc

    async def _read_multipart(self, request: web.Request, path: str) -> int | None:
        reader = await request.multipart()
        max_length = None
        got_video = False
        while (part := await reader.next()) is not None:
            if part.name == "video" and not got_video:
                size = 0
                out = await asyncio.to_thread(open, path, "wb")  # file I/O off the event loop
                try:
                    while chunk := await part.read_chunk(_CHUNK):
                        size += len(chunk)
                        if size > self.max_upload_bytes:
                            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, ErrorCode.TOO_LARGE,
                                           f"the video is over the {self.max_upload_bytes}-byte limit")
                        await asyncio.to_thread(out.write, chunk)
                finally:
                    await asyncio.to_thread(out.close)
                got_video = True
            elif part.name == "max_length":
                text = (await part.read(decode=True))[:16].decode("ascii", "replace").strip()
                try:
                    max_length = _max_length(int(text))
                except ValueError as exc:
                    raise HttpError(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST,
                                   f"max_length must be an integer from 1 to {MAX_LENGTH_LIMIT}") from exc
            else:
                raise HttpError(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST,
                               f"unexpected form field {part.name!r} (expected 'video' and 'max_length')")
        if not got_video:
            raise HttpError(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST, "no 'video' file in the form")
        return max_length

    async def _json(self, request: web.Request, limit: int) -> dict:
        if request.content_type != "application/json":
            raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, ErrorCode.BAD_CONTENT_TYPE, "send application/json")
        body = bytearray()
        async for chunk in request.content.iter_chunked(_CHUNK):
            body += chunk
            if len(body) > limit:
                raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, ErrorCode.TOO_LARGE,
                               f"the body is over the {limit}-byte limit")
        try:
            doc = jsonsafe.loads(body, API_JSON_LIMITS, code=ErrorCode.BAD_JSON)
        except ProtocolError as exc:
            raise HttpError(HTTPStatus.BAD_REQUEST, exc.code, exc.detail) from exc
        if not isinstance(doc, dict):
            raise HttpError(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_JSON, "expected a JSON object")
        return doc


def _max_length(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LENGTH_LIMIT:
        raise HttpError(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST, f"max_length must be an integer from 1 to {MAX_LENGTH_LIMIT}")
    return value


def admission_refusal(spec: SourceSpec, policy: AdmissionConfig) -> tuple[str, str] | None:
    """Why a stream added at run time may not read ``spec`` under ``policy``: ``(limit, detail)``,
    or None when it may. The detail never depends on whether a file exists."""
    if spec.kind in (SourceKind.RTSP, SourceKind.HTTP):
        scheme = urllib.parse.urlsplit(spec.location).scheme.lower()
    else:
        scheme = spec.kind.value
    allowed = policy.allowed_schemes
    if scheme not in allowed:
        return ("allowed_schemes", f"{scheme} sources may not be added through the API "
                                   f"(admission.allowed_schemes: {', '.join(allowed) or 'none'})")
    if spec.kind is SourceKind.FILE:
        real = os.path.realpath(spec.location)  # symlinks and '..' resolved: where it really is
        roots = [os.path.realpath(root) for root in policy.file_roots]
        if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots):
            return ("file_roots", "files added through the API must be in a folder of admission.file_roots"
                                  if roots else "no files may be added through the API (admission.file_roots is empty)")
    return None


def _check_video(path: str, want_audio: bool = False) -> None:
    """Raise HttpError unless ``path`` holds a video stream with a decodable frame (or, with
    ``want_audio``, sound when it has no picture); the error says what is wrong (empty, not a
    media file, audio only, neither video nor audio, truncated) without naming the file."""
    problem = probe_media(path, want_audio=want_audio)
    if problem is None:
        return
    words = problem.replace(path, UPLOADED)
    if Path(path).stat().st_size == 0:
        raise HttpError(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST, f"the video is empty ({words})")
    raise HttpError(HTTPStatus.UNPROCESSABLE_ENTITY, ErrorCode.UNDECODABLE_VIDEO, words)


def _track(request: web.Request) -> str:
    """``?track=video|speech`` (default video): which caption track's live WebVTT or chapters."""
    track = request.query.get("track", "video")
    if track not in ("video", "speech"):
        raise HttpError(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST, "track must be video or speech")
    return track


def _tracks(value: str | None) -> tuple[str, ...] | None:
    """``?tracks=speech,video`` (None: the configured tracks)."""
    if value is None:
        return None
    tracks = tuple(t.strip() for t in value.split(",") if t.strip())
    if not tracks or len(tracks) > 2 or any(t not in ("video", "speech") for t in tracks) or len(set(tracks)) != len(tracks):
        raise HttpError(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST,
                        "tracks must be video and/or speech, comma-separated")
    return tracks


def _render(finals: list[Caption], fmt: str, rules) -> web.Response:
    if fmt == "json":
        return json_response(HTTPStatus.OK, documents.caption_list(finals))
    if fmt == "jsonl":
        return response(HTTPStatus.OK, to_jsonl(finals, partial(encode_caption, with_track=True)), FORMATS[fmt])
    rules = rules or SubtitleRules()
    # one subtitle stream: speech as text, the picture as [bracketed] cues where nobody speaks
    cues = merge_tracks(finals, rules) if any(c.track == SPEECH_TRACK for c in finals) else cues_from_finals(finals)
    return response(HTTPStatus.OK, to_webvtt(cues, rules) if fmt == "vtt" else to_srt(cues, rules), FORMATS[fmt])
