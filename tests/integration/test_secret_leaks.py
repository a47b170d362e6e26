"""No secret leaves the server, through the real service on loopback with real HTTP and websocket
clients (issue 11, defects 4-7 and 15): camera passwords added through the admin API appear in no
document, status or log line; anonymous callers learn only whether the server is ok; tokens in a
request line aiohttp cannot parse are not logged; client-supplied values cannot forge log lines;
tokens and camera URLs can come from files; sample tokens stop the server from starting."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
import jsonschema
import pytest

from streamcap.cli import main as cli_main
from streamcap.outputs import wire
from streamcap.runtime.config import load_config
from streamcap.runtime.service import Service
from tests.helpers.cli import base_url, start_run
from tests.helpers.wsclient import WireClient

pytestmark = pytest.mark.integration

VIEW, ADMIN = "view-secret-8d1c", "admin-secret-51fa"
TOKENS = [{"scope": "view", "token": VIEW}, {"scope": "admin", "token": ADMIN}]
PASSWORD = "Qx9-hunter2"
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "schema" / "http-v1.json").read_text())


def _config(**auth):
    return load_config(None, environ={}, overrides={"server": {"port": 0}, "auth": {"tokens": TOKENS, **auth}})


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _ws(svc: Service, query: str) -> str:
    return svc.server.ws_url(f"/ws?{query}")


async def _raw_request(port: int, head: bytes) -> bytes:
    """Send ``head`` as is on a fresh connection; the server's answer (it closes after an error)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


# --- defect 4: one sanitiser for every document, status and log line ------------------------------


# accepted (201): the password sits where urlsplit does not see user info, or behind whitespace
ACCEPTED = {
    "sp": f" rtsp://admin:{PASSWORD}@127.0.0.1:1/live",
    "nl": f"\nrtsp://admin:{PASSWORD}@127.0.0.1:1/live\n",
    "q": f"rtsp://admin:554?{PASSWORD}@127.0.0.1:1/live",  # host 'admin', port 554, the rest a query
    "h": f"rtsp://admin:554#{PASSWORD}@127.0.0.1:1/live",
    "at": f"rtsp://admin:p@{PASSWORD}@127.0.0.1:1/live",
}
# refused (400): the error must not quote the password either
REFUSED = [f"rtsp:/admin:{PASSWORD}@127.0.0.1/live", f"rtsp:admin:{PASSWORD}@127.0.0.1/live",
           f"rtsp://admin:pa?{PASSWORD}@127.0.0.1/live", f"rtsp://admin:pa#{PASSWORD}@127.0.0.1/live",
           f"rtsps://admin:{PASSWORD}@127.0.0.1:99999/live", f"file://admin:{PASSWORD}@host/x.mp4"]


async def test_a_camera_password_added_through_the_api_appears_in_no_document_status_or_log(caplog):
    caplog.set_level(logging.DEBUG)
    async with Service(_config()) as svc, aiohttp.ClientSession() as http, \
            WireClient(_ws(svc, f"token={VIEW}")) as viewer:
        for url in REFUSED:
            async with http.post(svc.url("/v1/streams"), json={"id": "bad", "url": url}, headers=_auth(ADMIN)) as r:
                body = await r.text()
                assert r.status == 400, body
                assert PASSWORD not in body and "***" in body
        for sid, url in ACCEPTED.items():
            async with http.post(svc.url("/v1/streams"), json={"id": sid, "url": url}, headers=_auth(ADMIN)) as r:
                body = await r.text()
                assert r.status == 201, body
                assert PASSWORD not in body
        # every stream has told the viewers at least its opening status, the refused port its failure
        await viewer.wait_for(lambda: set(ACCEPTED) <= {m.stream for m in viewer.of(wire.StatusMsg)}, 30,
                              "a status of every added stream")
        await viewer.wait_for(lambda: any(m.state.value in ("reconnecting", "error")
                                          for m in viewer.of(wire.StatusMsg, "sp")), 60, "the refused connect")
        async with http.get(svc.url("/healthz"), headers=_auth(VIEW)) as r:
            healthz = await r.text()
            assert r.status == 200 and set(ACCEPTED) <= set(json.loads(healthz)["streams"])
        async with http.get(svc.url("/v1/streams"), headers=_auth(VIEW)) as r:
            listed = await r.text()
            assert r.status == 200
        details = [m.detail for m in viewer.of(wire.StatusMsg)]
        assert any("***@" in d for d in details)  # the statuses do show the (sanitised) URL
        for shown in [healthz, listed, *details]:
            assert PASSWORD not in shown
        assert json.loads(listed)["streams"][1]["url"] == "rtsp://***@127.0.0.1:1/live"
    assert "rtsp://***@" in caplog.text  # the opening log lines were written, sanitised
    assert PASSWORD not in caplog.text


# --- defect 5: anonymous callers learn only ok or not ----------------------------------------------


async def test_anonymous_healthz_says_only_ok_and_metrics_and_index_need_view():
    async with Service(_config()) as svc, aiohttp.ClientSession() as http:
        async with http.get(svc.url("/healthz")) as r:
            doc = await r.json()
            assert (r.status, doc) == (200, {"status": "ok"})
            jsonschema.validate(doc, SCHEMA)
        async with http.get(svc.url("/healthz"), headers=_auth("not-a-token-at-all")) as r:
            assert (r.status, await r.json()) == (200, {"status": "ok"})  # a wrong token: the summary too
        async with http.get(svc.url("/healthz"), headers=_auth(VIEW)) as r:
            doc = await r.json()
            assert r.status == 200 and doc["streams"]["demo"]["url"].startswith("synthetic:")
            assert r.headers["Cache-Control"].startswith("private")
            jsonschema.validate(doc, SCHEMA)
        for path in ("/metrics", "/"):
            async with http.get(svc.url(path)) as r:
                assert r.status == 401, path
            async with http.get(svc.url(path), headers=_auth(VIEW)) as r:
                assert r.status == 200, path
                assert "public" not in r.headers["Cache-Control"]
        async with http.get(svc.url("/metrics"), headers=_auth(VIEW)) as r:  # the bad token, /metrics, /
            assert 'streamcap_requests_refused_total{status="401"} 3.0' in await r.text()
        async with http.get(svc.url(f"/overlay?stream=demo&token={VIEW}")) as r:  # its URL holds the token
            assert r.status == 200 and r.headers["Referrer-Policy"] == "no-referrer"


async def test_public_status_and_public_metrics_switches_open_them_to_everyone():
    async with Service(_config(public_status=True, public_metrics=True)) as svc, aiohttp.ClientSession() as http:
        async with http.get(svc.url("/healthz")) as r:
            assert r.status == 200 and "demo" in (await r.json())["streams"]
        async with http.get(svc.url("/metrics")) as r:
            assert r.status == 200 and "streamcap_clients" in await r.text()
        async with http.get(svc.url("/")) as r:
            assert r.status == 401  # the index still follows the view rule


# --- defect 6: tokens never logged, never in generated URLs, never in ps --------------------------


async def test_an_unparseable_request_line_is_one_warning_without_the_token(caplog):
    caplog.set_level(logging.DEBUG)
    async with Service(_config()) as svc:
        port = svc.server.port
        long_line = b"GET /ws?token=" + ADMIN.encode() + b"&pad=" + b"x" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n"
        space = b"GET /v1/streams?token=" + ADMIN.encode() + b" and more HTTP/1.1\r\nHost: h\r\n\r\n"
        for head in (long_line, space):
            answer = await _raw_request(port, head)
            assert answer.split(b" ", 2)[1] == b"400"
            assert ADMIN.encode() not in answer  # aiohttp's own answer used to echo the raw line
            assert b"could not be parsed" in answer
        logging.getLogger("aiohttp.web").error("probe Authorization: Bearer %s ?token=%s", ADMIN, VIEW)
    assert ADMIN not in caplog.text and VIEW not in caplog.text
    unparseable = [r for r in caplog.records if "unparseable HTTP request" in r.getMessage()]
    assert len(unparseable) == 2 and all(r.levelno == logging.WARNING for r in unparseable)
    assert not [r for r in caplog.records if r.name.startswith("aiohttp") and r.levelno >= logging.ERROR
                and "probe" not in r.getMessage()]


async def test_tokens_and_camera_urls_come_from_files_and_not_from_the_command_line(tmp_path):
    token_file, source_file = tmp_path / "admin.token", tmp_path / "cam.url"
    token_file.write_text(f"{ADMIN}\n")
    source_file.write_text(f"synthetic:shapes?seed=3&fps=5&token={PASSWORD}\n")
    proc = await start_run("--port", "0", "--token-file", f"admin={token_file}", "--source-file",
                           f"cam={source_file}")
    try:
        base = await base_url(proc, "cam")
        args = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        assert ADMIN not in args and PASSWORD not in args
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/v1/streams", headers=_auth(ADMIN)) as r:  # the file's token works
                doc = await r.json()
                assert r.status == 200 and [s["id"] for s in doc["streams"]] == ["cam"]
                assert PASSWORD not in json.dumps(doc)
            async with http.get(base + "/v1/streams", headers=_auth("x" * 12)) as r:
                assert r.status == 401
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert PASSWORD not in err.decode() and ADMIN not in err.decode()


# --- defect 7: client-supplied values cannot forge log lines --------------------------------------


async def test_client_supplied_values_are_escaped_in_log_lines(caplog):
    caplog.set_level(logging.DEBUG)
    async with Service(_config()) as svc, aiohttp.ClientSession() as http:
        forged = "x%0A2026-01-01 00:00:00 INFO streamcap: FORGED%00"
        async with http.get(svc.url(f"/v1/streams/{forged}/chapters")) as r:  # refused: logged with its path
            assert r.status == 401
        async with http.get(svc.url(f"/v1/streams/{forged}/chapters"), headers=_auth(VIEW)) as r:
            assert r.status in (400, 404)
        async with WireClient(_ws(svc, f"token={VIEW}&streams=demo")) as viewer:
            await viewer.send(json.dumps({"type": "ack", "id": "a\nFORGED\x00", "by": "me\nFORGED"}))
            await viewer.send(json.dumps({"type": "subscribe", "streams": ["demo\nFORGED"]}))
            await viewer.wait_for(lambda: len(viewer.of(wire.ErrorMsg)) >= 2, 10, "two error replies")
        async with http.get(svc.url(f"/ws?token={VIEW}&streams=a%0AFORGED%00")) as r:
            assert r.status == 400
    lines = [r.getMessage() for r in caplog.records]
    assert any("FORGED" in line for line in lines)  # the values were logged ...
    assert not [line for line in lines if "\n" in line or "\x00" in line]  # ... escaped, on one line


# --- defect 15: sample tokens refuse to start ------------------------------------------------------


def test_a_sample_token_from_the_example_config_stops_the_server_from_starting(tmp_path, capsys):
    config = tmp_path / "streamcap.toml"
    config.write_text('[[auth.tokens]]\nscope = "publish"\ntoken = "change-me-publish-token"\n')
    assert cli_main(["run", "--config", str(config), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "auth.tokens.0.token" in err and "sample token" in err
    assert "change-me-publish-token" not in err
    assert cli_main(["run", "--token", "admin=change-me-admin-token", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "auth.tokens.0.token" in err and "change-me-admin-token" not in err
