"""The fuzzer's pure parts (tools/fuzz.py): seeded probe generation, log scanning, the caption
gap and the invariant check, each fed by hand, no server."""

from __future__ import annotations

import functools
from collections import Counter

from tools import fuzz

CORPUS = fuzz.Corpus(jpeg=b"\xff\xd8\xff\xe0 tiny jpeg" * 4, png=b"\x89PNG\r\n\x1a\n tiny" * 4,
                     video=b"\x00\x00\x00\x1cftypisom" + b"m" * 300, sdp_offer=fuzz.SDP_OFFER, huge_png=b"HUGE")
SECRETS = fuzz.Secrets.from_seed(5)


@functools.lru_cache(maxsize=None)
def _probes(messages: int = 6000, seed: int = 5) -> list[fuzz.Probe]:
    return list(fuzz.generate(seed, messages, CORPUS, SECRETS))


def test_the_same_seed_gives_the_same_probes_and_another_seed_others():
    assert _probes(500) == _probes(500)
    assert _probes(500) != _probes(500, seed=6)


def test_a_probe_depends_only_on_seed_and_index_so_it_replays_alone():
    probes = _probes(800)
    for p in probes[::37]:
        assert fuzz.probe_at(5, p.index, CORPUS, SECRETS) == p
    assert list(fuzz.generate(5, 0, CORPUS, SECRETS, only=[probes[3].index])) == [probes[3]]


def test_the_messages_sent_add_up_to_the_number_asked_for():
    probes = _probes(3000)
    total = sum(p.messages for p in probes)
    assert 3000 <= total < 3000 + 3


def test_every_endpoint_and_the_hostile_kinds_of_the_issue_are_covered():
    kinds = Counter(p.kind for p in _probes(6000))
    endpoints = {k.split(".")[0] for k in kinds}
    assert endpoints == set(fuzz.ENDPOINTS)
    for kind in ["ws.nested", "ws.huge_int", "ws.bad_utf8", "ws.binary", "ws.huge", "ws.streams_control",
                 "ingest.fps_tiny", "ingest.fps_bad", "ingest.bad_base64", "ingest.huge_image", "ingest.odd_image",
                 "v1.add_stream.password", "v1.add_stream.system_file", "v1.captions_bad_boundary",
                 "v1.captions_multipart", "v1.bad_method", "v1.unknown", "whip.bad_sdp", "whip.content_type",
                 "whip.huge", "http.long_line", "http.big_header", "http.bad_target", "http.malformed"]:
        assert kinds[kind] > 0, kind
    assert any(k.endswith(("auth_none", "auth_wrong")) for k in kinds)


def test_excluded_kinds_are_skipped_without_renumbering_the_rest():
    everything = _probes(2000)
    kept = list(fuzz.generate(5, 2000, CORPUS, SECRETS, exclude=["ingest.fps_tiny", "whip"]))
    assert not any(p.kind == "ingest.fps_tiny" or p.endpoint == "whip" for p in kept)
    by_index = {p.index: p for p in everything}
    assert all(by_index[p.index] == p for p in kept if p.index in by_index)


def test_the_demo_stream_is_never_deleted_by_an_admin():
    for p in _probes(6000):
        if p.raw.startswith(b"DELETE /v1/streams/demo"):
            assert SECRETS.admin.encode() not in p.raw


def test_secrets_only_travel_as_credentials_or_stream_urls():
    """A token shows only in an Authorization header or a token= query (or the few requests built
    to leak it); a password only in a stream URL: any other echo would be a false alarm."""
    for p in _probes(4000):
        data = p.raw + p.target.encode() + b"".join(f.data for f in p.frames)
        for name in SECRETS.leaks(data):
            if name.endswith("token"):
                token = SECRETS.tokens[name.split()[0]].encode()
                assert (b"Bearer " + token in data or b"token=" + token in data
                        or any(token in v.encode() for _, v in p.headers)), (name, p.describe())
            else:
                assert p.kind.startswith(("v1.add_stream", "http.malformed", "v1.auth")), (name, p.describe())


def test_secrets_are_found_raw_or_quoted_and_by_either_half_of_a_password():
    pw = SECRETS.passwords[0]  # two markers joined by '?'
    left, right = pw.split("?")
    assert SECRETS.leaks(f"rtsp://u:{pw}@h/x") == ["password 0"]
    assert SECRETS.leaks(f"rtsp://***@{right}") == ["password 0"]
    assert SECRETS.leaks("rtsp://u:" + left + "%3F" + right + "@h") == ["password 0"]
    assert SECRETS.leaks(b"Bearer " + SECRETS.admin.encode()) == ["admin token"]
    assert SECRETS.leaks("rtsp://***@127.0.0.1:9/x") == []


def test_build_request_sets_length_and_closes():
    raw = fuzz.build_request("POST", "/v1/streams", [("X-A", "b")], b"{}")
    assert raw.startswith(b"POST /v1/streams HTTP/1.1\r\n")
    assert b"Connection: close\r\n" in raw and b"Content-Length: 2\r\n" in raw and raw.endswith(b"\r\n\r\n{}")


def test_an_http_answer_is_complete_by_length_or_last_chunk():
    assert fuzz.http_status(b"HTTP/1.1 404 Not Found\r\n\r\n") == 404
    assert fuzz.http_status(b"garbage") is None
    assert not fuzz.response_complete(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc")
    assert fuzz.response_complete(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabcde")
    assert fuzz.response_complete(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert not fuzz.response_complete(b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\n\r\nxx")


def test_only_1011_or_a_1000_after_a_client_message_is_an_abnormal_close():
    assert fuzz.abnormal_close(1011, False) and fuzz.abnormal_close(1000, True)
    assert not any(fuzz.abnormal_close(c, True) for c in (1001, 1007, 1008, 1009, 4401, 4403, None))
    assert not fuzz.abnormal_close(1000, False)


def _log(*texts: str, probe: int = 7) -> fuzz.Report:
    report = fuzz.Report(seed=5, messages_requested=1)
    fuzz.tally_log([fuzz.LogLine(t, probe, probe - 1) for t in texts], SECRETS, report)
    return report


def test_the_log_scan_finds_tracebacks_errors_secrets_forged_lines_and_nul():
    report = _log(
        "2026-11-29 15:55:00,286 ERROR streamcap.server.app: client 6 127.0.0.1: client-6-recv failed",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in f',
        "ValueError: Exceeds the limit (4300 digits)",
        f"2026-11-29 15:55:00,287 INFO aiohttp.access: GET /healthz?token={SECRETS.view} 200",
        f"{fuzz.FORGED_MARK} forged",
        "2026-11-29 15:55:00,288 INFO streamcap.server.routes.viewer: streams=a\x00b",
    )
    log = report.log
    assert (log.lines, log.tracebacks, log.secret_lines, log.forged_lines, log.nul_lines) == (7, 1, 1, 1, 1)
    assert sum(log.errors.values()) == 1
    trace = next(f for f in report.findings if f.invariant == "no_traceback")
    assert "ValueError" in trace.detail and "client-6-recv failed" in trace.detail
    assert (trace.probe, trace.previous) == (7, 6)
    assert {f.invariant for f in report.findings} == {"no_traceback", "no_secret", "no_forged_log_line"}


def test_a_clean_log_has_no_finding():
    report = _log("2026-11-29 15:55:00,286 INFO streamcap.runtime.pipeline: stream demo: live",
                  "2026-11-29 15:55:00,286 WARNING streamcap.sources.base: stream fz1: opening "
                  "rtsp://***@127.0.0.1:9/x")
    assert report.findings == [] and report.log.warnings == 1


def test_the_caption_gap_counts_the_edges_and_intervals_whole_ones_only():
    assert fuzz.caption_gaps([2.0, 5.0, 9.0], 0.0, 20.0) == 11.0
    assert fuzz.caption_gaps([], 0.0, 4.0) == 4.0
    assert fuzz.caption_gaps([1.0], 0.0, 2.0) == 1.0
    assert fuzz.interval_counts([1, 2, 11, 25, 31], 0.0, 30.0, 10.0) == [2, 1, 1]


def test_suspects_of_a_hang_start_with_the_probe_in_flight_at_the_last_answer():
    started = [(1, 0.0), (2, 1.0), (3, 2.0), (5, 3.0)]
    assert fuzz.suspects_since(started, 1.5) == [2, 3, 5]
    assert fuzz.suspects_since(started, 10.0) == [5]


def _clean() -> fuzz.Report:
    r = fuzz.Report(seed=1, messages_requested=10, messages_sent=10, health_polls=40, health_max_s=0.1,
                    captions=12, caption_max_gap_s=3.0, fuzz_span_s=20.0, rss_start_mb=150, rss_peak_mb=180,
                    exit_code=0, exit_s=0.2)
    return r


def test_a_clean_run_breaks_no_invariant():
    assert fuzz.check(_clean(), fuzz.Limits()) == {}


def test_each_invariant_can_fail():
    limits = fuzz.Limits()
    cases = {
        "no_500": lambda r: setattr(r.endpoints["v1"], "status_500", 1),
        "no_abnormal_close": lambda r: setattr(r.endpoints["ws"], "abnormal_closes", 2),
        "no_traceback": lambda r: setattr(r.log, "tracebacks", 1),
        "no_secret": lambda r: setattr(r.endpoints["http"], "secret_responses", 1),
        "no_forged_log_line": lambda r: setattr(r.log, "nul_lines", 1),
        "no_system_file": lambda r: r.findings.append(fuzz.Finding("no_system_file", 3, "accepted")),
        "healthz": lambda r: setattr(r, "health_max_s", limits.health_limit_s + 0.1),
        "captions": lambda r: setattr(r, "caption_max_gap_s", limits.caption_gap_s + 0.1),
        "rss": lambda r: setattr(r, "rss_peak_mb", r.rss_start_mb + limits.max_rss_growth_mb + 1),
        "server_alive": lambda r: setattr(r, "exit_code", None),
    }
    assert set(cases) == set(fuzz.INVARIANTS)
    for invariant, breaks in cases.items():
        report = _clean()
        breaks(report)
        assert set(fuzz.check(report, limits)) == {invariant}, invariant
    hung = _clean()
    hung.aborted = "the server hangs"
    assert "healthz" in fuzz.check(hung, limits)
    silent = _clean()
    silent.captions, silent.caption_max_gap_s = 0, 0.0
    assert "captions" in fuzz.check(silent, limits)


def test_the_report_serialises_to_plain_json():
    import json

    report = _clean()
    report.endpoints["ws"].closes["1007"] += 2
    report.findings.append(fuzz.Finding("no_500", 4, "x"))
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["endpoints"]["ws"]["closes"] == {"1007": 2} and doc["findings"][0]["probe"] == 4
