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
    cfg = load_config(None, environ={}, overrides={"server": {"port": 0}, "auth": {"tokens": TOKENS},
                                                   "ingest": {"max_upload_mb": 4.0}})
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
    assert caps[0]["start"] == 0.0 and caps[-1]["end"] == pytest.approx(CLIP_S, abs=0.6)
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
    for kwargs, status, code in cases:
        headers = {**_auth(PUBLISH), **kwargs.pop("headers", {})}
        async with http.post(url, headers=headers, **kwargs) as r:
            doc = await r.json()
            assert (r.status, doc["error"]["code"]) == (status, code), doc
            assert doc["error"]["detail"]
    form = aiohttp.FormData()
    form.add_field("video", b"\x00" * 1000, filename="x.mp4")
    async with http.post(url, data=form, headers=_auth(PUBLISH)) as r:
        assert r.status == 422 and (await r.json())["error"]["code"] == "undecodable_video"
    async with http.post(url + "?format=doc", json={"video": "AAAA"}, headers=_auth(PUBLISH)) as r:
        assert r.status == 400 and (await r.json())["error"]["code"] == "bad_format"
    async with http.get(svc.url("/metrics")) as r:
        metrics = await r.text()
    for code, count in [("bad_base64", 1), ("undecodable_video", 2), ("too_large", 1), ("bad_format", 1)]:
        assert f'streamcap_bad_requests_total{{code="{code}"}} {count}.0' in metrics, code
    # nothing was left behind, and the demo stream went on being captioned
    assert svc.pipeline.stream_ids() == ["demo"]
    async with http.get(svc.url("/healthz")) as r:
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
    for bad, code in [({"id": "cam3", "url": "rtsp:/nohost"}, "bad_source_url"),
                      ({"id": "cam3", "url": "/no/such/file.mp4"}, "bad_source_url"),
                      ({"id": "../x", "url": "synthetic:shapes"}, "bad_stream_id"),
                      ({"id": "cam3", "url": "synthetic:shapes", "extra": 1}, "bad_request")]:
        async with http.post(svc.url("/v1/streams"), json=bad, headers=_auth(ADMIN)) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == code
    async with http.get(svc.url("/v1/streams"), headers=_auth(VIEW)) as r:
        listed = {s["id"]: s for s in (await r.json())["streams"]}
    assert set(listed) == {"demo", "cam2"} and listed["cam2"]["url"].startswith("synthetic:")
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
