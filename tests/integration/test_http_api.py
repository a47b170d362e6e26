"""The /v1 HTTP API against the real service with a real HTTP client (aiohttp): whole clips
captioned from JSON base64 and multipart uploads (JSON, WebVTT and SRT that parse back), stream
management with admin tokens, and clear 4xx errors that leave the server and its streams running."""

from __future__ import annotations

import base64
import io

import aiohttp
import pytest
import pytest_asyncio
import srt
import webvtt

from streamcap.runtime.config import load_config
from streamcap.runtime.service import Service
from tests.helpers.wsclient import WireClient
from tools import media

pytestmark = pytest.mark.integration

VIEW, PUBLISH, ADMIN = "view-secret-123", "publish-secret-123", "admin-secret-123"
TOKENS = [{"scope": "view", "token": VIEW}, {"scope": "publish", "token": PUBLISH}, {"scope": "admin", "token": ADMIN}]
CLIP_S = 12.0
SCENE_S = 6.0


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def clip(tmp_path_factory, require_system):
    """A 12 s storyline (two 6 s scenes) as H.264 mp4, with its ground truth."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    try:
        story = media.render_storyline_file(path, seed=21, duration_s=CLIP_S, scene_s=SCENE_S)
    except media.MediaToolError as exc:
        require_system(f"cannot render a clip: {exc}")
    return path, story


@pytest_asyncio.fixture
async def svc():
    # the uploads are storyline (shapes) clips: the caption model, not the scene describer
    cfg = load_config(None, environ={}, overrides={"server": {"port": 0}, "auth": {"tokens": TOKENS},
                                                   "ingest": {"max_upload_mb": 4.0},
                                                   "pipeline": {"video_engine": "caption"}})
    async with Service(cfg) as service:
        yield service


@pytest_asyncio.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=240)) as session:
        yield session


async def test_a_clip_posted_as_base64_json_is_captioned_with_the_ground_truth(svc, http, clip):
    path, story = clip
    body = {"video": base64.b64encode(path.read_bytes()).decode(), "max_length": 30}
    async with http.post(svc.url("/v1/captions"), json=body, headers=_auth(PUBLISH)) as r:
        assert r.status == 200, await r.text()
        doc = await r.json()
    caps = doc["captions"]
    assert [c["text"] for c in caps] == [story.caption_at(0.0), story.caption_at(SCENE_S)]
    # the last window ends by the last frame, on the caption model's 0.4 s frame grid at or before
    # its nominal end: within a stride and a grid step of the clip's end
    assert caps[0]["start"] == 0.0 and CLIP_S - 0.9 <= caps[-1]["end"] <= CLIP_S
    assert abs(caps[1]["start"] - SCENE_S) <= 2.5
    assert "clip-1" not in svc.pipeline.stream_ids()  # the job stream is gone, never listed


@pytest.mark.parametrize("fmt", ["vtt", "srt"])
async def test_a_multipart_upload_gives_subtitles_that_parse_back(svc, http, clip, fmt):
    path, story = clip
    form = aiohttp.FormData()
    form.add_field("video", path.read_bytes(), filename="clip.mp4", content_type="video/mp4")
    form.add_field("max_length", "30")
    async with http.post(svc.url(f"/v1/captions?format={fmt}"), data=form, headers=_auth(PUBLISH)) as r:
        assert r.status == 200, await r.text()
        text = await r.text()
    if fmt == "vtt":
        assert r.content_type == "text/vtt"
        cues = [" ".join(c.text.split()) for c in webvtt.from_buffer(io.StringIO(text)).captions]
    else:
        cues = [" ".join(c.content.split()) for c in srt.parse(text)]
    assert cues == [story.caption_at(0.0), story.caption_at(SCENE_S)]


async def test_bad_uploads_get_clear_errors_and_the_server_keeps_captioning(svc, http, tmp_path):
    before = svc.pipeline.health()["demo"]["windows_captioned"]
    url = svc.url("/v1/captions")
    cases = [
        ({"json": {"video": "this is *not* base64!"}}, 400, "bad_base64"),
        ({"json": {"video": base64.b64encode(b"hello, I am a text file, not a video\n" * 50).decode()}},
         422, "undecodable_video"),
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "bad_json"),
        ({"json": {"video": base64.b64encode(b"x" * (6 << 20)).decode()}}, 413, "too_large"),  # limit 4 MB
        ({"data": b"raw bytes", "headers": {"Content-Type": "video/mp4"}}, 415, "bad_content_type"),
        ({"json": {"video": "AAAA", "max_length": "long"}}, 400, "bad_request"),
    ]
    details = []
    for kwargs, status, code in cases:
        headers = {**_auth(PUBLISH), **kwargs.pop("headers", {})}
        async with http.post(url, headers=headers, **kwargs) as r:
            doc = await r.json()
            assert (r.status, doc["error"]["code"]) == (status, code), doc
            assert doc["error"]["detail"]
            details.append(doc["error"]["detail"])
    assert "not a media file" in details[1] and "the uploaded file" in details[1]  # the source's own words
    form = aiohttp.FormData()
    form.add_field("video", b"\x00" * 1000, filename="x.mp4")
    async with http.post(url, data=form, headers=_auth(PUBLISH)) as r:
        assert r.status == 422 and (await r.json())["error"]["code"] == "undecodable_video"
    async with http.post(url + "?format=doc", json={"video": "AAAA"}, headers=_auth(PUBLISH)) as r:
        assert r.status == 400 and (await r.json())["error"]["code"] == "bad_format"
    async with http.get(svc.url("/metrics"), headers=_auth(VIEW)) as r:  # /metrics needs view
        metrics = await r.text()
    for code, count in [("bad_base64", 1), ("undecodable_video", 2), ("too_large", 1), ("bad_format", 1)]:
        assert f'streamcap_bad_requests_total{{code="{code}"}} {count}.0' in metrics, code
    # nothing was left behind, and the demo stream went on being captioned
    assert svc.pipeline.stream_ids() == ["demo"]
    async with http.get(svc.url("/healthz"), headers=_auth(VIEW)) as r:  # the details need view
        assert r.status == 200 and (await r.json())["streams"]["demo"]["state"] == "live"
    async with WireClient(svc.url(f"/ws?streams=demo&token={VIEW}").replace("http://", "ws://", 1)) as viewer:
        await viewer.wait_for(lambda: svc.pipeline.health()["demo"]["windows_captioned"] > before, 60,
                              "the demo stream to caption another window")


async def test_captions_and_stream_management_need_the_right_scope(svc, http):
    async with http.post(svc.url("/v1/captions"), json={"video": "AAAA"}) as r:
        assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    async with http.post(svc.url("/v1/captions"), json={"video": "AAAA"}, headers=_auth(VIEW)) as r:
        assert r.status == 403
    new = {"id": "cam2", "url": "synthetic:shapes?seed=4&fps=10&size=320x240"}
    for token, status in [(None, 401), (VIEW, 403), (PUBLISH, 403)]:
        async with http.post(svc.url("/v1/streams"), json=new, headers=_auth(token) if token else {}) as r:
            assert r.status == status
            assert "admin" in (await r.json())["error"]["detail"] or status == 401
        async with http.delete(svc.url("/v1/streams/demo"), headers=_auth(token) if token else {}) as r:
            assert r.status == status
    assert svc.pipeline.stream_ids() == ["demo"]


async def test_streams_are_added_listed_and_removed_at_runtime(svc, http):
    new = {"id": "cam2", "url": "synthetic:shapes?seed=4&fps=10&size=320x240"}
    async with http.post(svc.url("/v1/streams"), json=new, headers=_auth(ADMIN)) as r:
        assert r.status == 201 and r.headers["Location"] == "/v1/streams/cam2"
        assert (await r.json())["id"] == "cam2"
    async with http.post(svc.url("/v1/streams"), json=new, headers=_auth(ADMIN)) as r:
        assert r.status == 409 and (await r.json())["error"]["code"] == "stream_exists"
    for bad, status, code in [({"id": "cam3", "url": "rtsp:/nohost"}, 400, "bad_source_url"),
                              ({"id": "cam3", "url": "/no/such/file.mp4"}, 403, "source_not_allowed"),
                              ({"id": "../x", "url": "synthetic:shapes"}, 400, "bad_stream_id"),
                              ({"id": "cam3", "url": "synthetic:shapes", "extra": 1}, 400, "bad_request"),
                              ({"id": "cam3", "url": "synthetic:shapes", "engine": "gpt"}, 400, "bad_request")]:
        async with http.post(svc.url("/v1/streams"), json=bad, headers=_auth(ADMIN)) as r:
            assert (r.status, (await r.json())["error"]["code"]) == (status, code)
    async with http.get(svc.url("/v1/streams"), headers=_auth(VIEW)) as r:
        listed = {s["id"]: s for s in (await r.json())["streams"]}
    assert set(listed) == {"demo", "cam2"} and listed["cam2"]["url"].startswith("synthetic:")
    assert listed["cam2"]["engine"] == "caption"  # this server's pipeline.video_engine
    # a stream's own engine: the scene describer watches this one, the caption model the others
    async with http.post(svc.url("/v1/streams"), json={**new, "id": "cam4", "engine": "describer"},
                         headers=_auth(ADMIN)) as r:
        assert r.status == 201 and (await r.json())["engine"] == "describer"
    assert svc.pipeline.runners["cam4"].engine_key == "describer"
    async with http.delete(svc.url("/v1/streams/cam4"), headers=_auth(ADMIN)) as r:
        assert r.status == 204
    runner = svc.pipeline.runners["cam2"]
    async with http.delete(svc.url("/v1/streams/cam2"), headers=_auth(ADMIN)) as r:
        assert r.status == 204
    assert runner.task.done() and runner.source.state.value == "ended"
    async with http.delete(svc.url("/v1/streams/cam2"), headers=_auth(ADMIN)) as r:
        assert r.status == 404
    async with http.get(svc.url("/v1/streams"), headers=_auth(VIEW)) as r:
        assert [s["id"] for s in (await r.json())["streams"]] == ["demo"]
    # an id can be used again once removed: a fresh stream
    async with http.post(svc.url("/v1/streams"), json=new, headers=_auth(ADMIN)) as r:
        assert r.status == 201
    assert svc.pipeline.runners["cam2"] is not runner


async def test_unknown_paths_and_methods_get_json_errors(svc, http):
    async with http.get(svc.url("/v1/nothing")) as r:
        assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
    async with http.put(svc.url("/v1/streams"), headers=_auth(ADMIN)) as r:
        assert r.status == 405


async def _error_of(r) -> tuple[int, str, str]:
    doc = await r.json()
    return r.status, doc["error"]["code"], doc["error"]["detail"]


async def test_hostile_bodies_get_400_and_never_500(svc, http):
    deep = "[" * 100_000 + "]" * 100_000
    big_int = '{"id": "cam9", "url": ' + "1" * 5000 + "}"
    json_headers = {"Content-Type": "application/json"}
    for path, token in [("/v1/streams", ADMIN), ("/v1/captions", PUBLISH), ("/v1/alerts/x/ack", VIEW)]:
        for body, words in [(deep, "nested more than"), (big_int, "characters; the limit is"),
                            ('{"id": "a", "id": "b"}', "duplicate key"), ('{"video": NaN}', "non-finite")]:
            async with http.post(svc.url(path), data=body, headers={**_auth(token), **json_headers}) as r:
                status, code, detail = await _error_of(r)
                assert (status, code) == (400, "bad_json") and words in detail, (path, detail)
    for content_type, body in [("multipart/form-data", b"--x\r\nnothing"),
                               ('multipart/form-data; boundary=""', b"--x\r\n"),
                               ("multipart/form-data; boundary=zz", b"no boundary in here at all"),
                               ("multipart/form-data; boundary=zz", b"--zz\r\nContent-Disposition: form-data\r\n"),
                               ("multipart/form-data; boundary=zz",  # a NUL in a part header
                                b'--zz\r\nContent-Disposition: form-data; name="video"; filename="x\x00.mp4"\r\n'
                                b"Content-Type: video/mp4\r\n\r\n\x00\x00\x00\x1cftypisom\r\n--zz--\r\n")]:
        async with http.post(svc.url("/v1/captions"), data=body,
                             headers={**_auth(PUBLISH), "Content-Type": content_type}) as r:
            status, code, detail = await _error_of(r)
            assert status == 400 and code in ("bad_request", "bad_json"), (content_type, body, detail)
    async with http.get(svc.url("/v1/streams/demo/subtitles/" + "9" * 5000 + ".vtt"), headers=_auth(VIEW)) as r:
        assert (await _error_of(r))[:2] == (404, "not_found")
    async with http.get(svc.url("/metrics"), headers=_auth(VIEW)) as r:
        metrics = await r.text()
    assert 'code="internal_error"' not in metrics
    async with http.get(svc.url("/v1/streams"), headers=_auth(VIEW)) as r:
        assert r.status == 200 and [s["id"] for s in (await r.json())["streams"]] == ["demo"]


async def test_a_stream_named_like_an_upload_job_does_not_break_uploads(svc, http, clip):
    path, story = clip
    for n in (1, 2):  # the first two job ids the old scheme (clip-N) would take
        async with http.post(svc.url("/v1/streams"), json={"id": f"clip-{n}", "url": "push:"},
                             headers=_auth(ADMIN)) as r:
            assert r.status == 201, await r.text()
    body = {"video": base64.b64encode(path.read_bytes()).decode()}
    async with http.post(svc.url("/v1/captions"), json=body, headers=_auth(PUBLISH)) as r:
        assert r.status == 200, await r.text()
        assert [c["text"] for c in (await r.json())["captions"]][0] == story.caption_at(0.0)
    assert set(svc.pipeline.stream_ids()) == {"demo", "clip-1", "clip-2"}  # the user's streams are untouched
    assert svc.pipeline.runners["clip-1"].url == "push:"


async def test_the_admin_api_only_adds_sources_the_admission_policy_allows(http, tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    (root / "ok.mp4").write_bytes(b"not really a video, but a file")
    (root / "passwd").symlink_to("/etc/passwd")
    cfg = load_config(None, environ={}, overrides={"server": {"port": 0}, "auth": {"tokens": TOKENS},
                                                   "admission": {"allowed_schemes": ["synthetic", "file"],
                                                                 "file_roots": [str(root)]}})
    async with Service(cfg) as svc:
        async def add(url: str) -> tuple[int, str, str]:
            async with http.post(svc.url("/v1/streams"), json={"id": "x1", "url": url}, headers=_auth(ADMIN)) as r:
                if r.status == 201:
                    await svc.pipeline.remove_stream("x1")
                    return 201, "", ""
                return await _error_of(r)

        outside = {}
        for url in ["/etc/passwd", "/etc/no-such-file", "file:///etc/passwd", f"{root}/../../etc/passwd",
                    str(root / "passwd"), str(tmp_path / "elsewhere.mp4")]:
            status, code, detail = await add(url)
            assert (status, code) == (403, "source_not_allowed"), (url, detail)
            outside[url] = detail
        # the same answer whether the file exists or not: nothing to learn about the server's files
        assert len(set(outside.values())) == 1 and "admission.file_roots" in outside["/etc/passwd"]
        for url in ["rtsp://camera.example/stream", "webcam:0", "push:"]:
            status, code, detail = await add(url)
            assert (status, code) == (403, "source_not_allowed") and "admission.allowed_schemes" in detail, url
        assert (await add(str(root / "ok.mp4")))[0] == 201
        assert (await add(f"file://{root}/ok.mp4"))[0] == 201
        assert (await add("synthetic:shapes?seed=4&fps=10&size=320x240"))[0] == 201
        status, code, _ = await add(str(root / "missing.mp4"))  # inside a root: it may say so
        assert (status, code) == (400, "bad_source_url")
        async with http.get(svc.url("/metrics"), headers=_auth(VIEW)) as r:
            metrics = await r.text()
        assert 'streamcap_limit_refusals_total{limit="file_roots"} 6.0' in metrics
        assert 'streamcap_limit_refusals_total{limit="allowed_schemes"} 3.0' in metrics


async def test_by_default_no_file_and_no_webcam_can_be_added_but_configured_ones_run(http, tmp_path, clip):
    path, _ = clip
    cfg = load_config(None, environ={}, overrides={"server": {"port": 0}, "auth": {"tokens": TOKENS},
                                                   "sources": [{"id": "trusted", "url": str(path)}]})
    async with Service(cfg) as svc:
        assert "trusted" in svc.pipeline.stream_ids()  # the config file is trusted
        for url in [str(path), "webcam:0"]:
            async with http.post(svc.url("/v1/streams"), json={"id": "x1", "url": url}, headers=_auth(ADMIN)) as r:
                assert (await _error_of(r))[:2] == (403, "source_not_allowed"), url


class _FailingClips:
    """A pipeline stand-in whose clip job fails reading the file, naming it (as a busy source's
    "opening ... timed out" does)."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def stream_ids(self) -> list[str]:
        return []

    def health(self) -> dict:
        return {}

    async def caption_clip(self, path: str, *, decode: dict | None = None, tracks: tuple[str, ...] | None = None):
        from pathlib import Path

        from streamcap.core.errors import SourceError

        assert Path(path).is_file()
        self.paths.append(path)
        raise SourceError(f"opening {path} timed out after 5.0 s (in {Path(path).parent})")


async def test_uploads_live_in_streamcaps_folder_and_no_answer_names_them(http, tmp_path, clip):
    import os

    from streamcap.runtime.config import IngestConfig
    from streamcap.runtime.metrics import Metrics
    from streamcap.server.app import Server
    from streamcap.server.auth import AccessPolicy, Scope
    from streamcap.server.hub import Hub
    from streamcap.server.routes.api import ApiRoutes
    from streamcap.server.uploads import UploadFolder

    path, _ = clip
    folder = tmp_path / "uploads"
    folder.mkdir()
    stale = folder / "clip-999999999-left.video"  # no such pid: a process killed during an upload
    stale.write_bytes(b"x" * 1000)
    cfg = load_config(None, environ={}, overrides={"server": {"port": 0}, "auth": {"tokens": TOKENS},
                                                   "ingest": {"upload_dir": str(folder)}})
    async with Service(cfg) as svc:  # start-up removes what dead processes left
        assert not stale.exists()
        body = {"video": base64.b64encode(path.read_bytes()).decode()}
        async with http.post(svc.url("/v1/captions"), json=body, headers=_auth(PUBLISH)) as r:
            assert r.status == 200, await r.text()
        assert list(folder.iterdir()) == []  # the request removed its file
        own = folder / f"clip-{os.getpid()}-inflight.video"
        own.write_bytes(b"x")  # as if a request were cut short at exit
    assert not own.exists()  # stopping removed this process's files

    metrics = Metrics()
    clips = _FailingClips()
    server = Server(Hub(metrics=metrics), metrics, host="127.0.0.1", port=0, health=dict, streams=list,
                    access=AccessPolicy({PUBLISH: Scope.PUBLISH}))
    server.extensions.append(ApiRoutes(server, clips, IngestConfig(upload_dir=str(folder)), max_body_bytes=1 << 20,
                                       uploads=UploadFolder(folder)))
    async with server:
        body = {"video": base64.b64encode(path.read_bytes()).decode()}
        async with http.post(server.url("/v1/captions"), json=body, headers=_auth(PUBLISH)) as r:
            status, code, detail = await _error_of(r)
    assert (status, code) == (422, "undecodable_video")
    assert clips.paths and clips.paths[0].startswith(str(folder))  # the upload was in streamcap's folder
    assert str(folder) not in detail and "clip-" not in detail and "/tmp" not in detail, detail
    assert "the uploaded file" in detail
    assert list(folder.iterdir()) == []
