"""The bounded fuzz run of issue 11 in CI: ``tools/fuzz.py``'s driver against a real
``streamcap run`` subprocess on loopback, a fixed seed, 2,500 hostile messages over ``/ws``,
``/ingest``, ``/v1/*``, ``/whip`` and raw HTTP (about 20 s on two cores when the server holds).

One run per module; each test asserts one invariant and, when it fails, prints the offending probes
and the command that replays them (``tools/fuzz.py --seed S --only I``). A server that hangs stops
the run after ``hang_s`` (no ``/healthz`` answer), so a hang fails these tests in bounded time.
"""

from __future__ import annotations

import asyncio

import pytest

from tools import fuzz

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

SEED = 11
MESSAGES = 2500
LIMITS = fuzz.Limits(health_limit_s=5.0, caption_gap_s=10.0, max_rss_growth_mb=1000.0, exit_limit_s=15.0)


@pytest.fixture(scope="module")
def run() -> tuple[fuzz.Report, dict[str, str], str]:
    opts = fuzz.Options(seed=SEED, messages=MESSAGES, limits=LIMITS, hang_s=15.0, progress=False)
    report = asyncio.run(fuzz.run(opts))
    text = fuzz.summary(report, LIMITS, opts)
    print(text)
    return report, fuzz.check(report, LIMITS), text


def _explain(run, invariant: str) -> str:
    report, broken, text = run
    return f"{broken.get(invariant)} (seed {report.seed})\n{text}"


def test_every_message_was_sent(run):
    report, _, text = run
    assert not report.aborted and report.messages_sent >= MESSAGES, text
    assert all(report.endpoints[e].probes > 0 for e in fuzz.ENDPOINTS), text


def test_no_request_is_answered_500(run):
    assert "no_500" not in run[1], _explain(run, "no_500")


def test_no_websocket_is_closed_with_an_internal_error(run):
    assert "no_abnormal_close" not in run[1], _explain(run, "no_abnormal_close")


def test_the_server_log_has_no_traceback(run):
    assert "no_traceback" not in run[1], _explain(run, "no_traceback")


def test_no_token_or_password_in_the_log_or_any_answer(run):
    assert "no_secret" not in run[1], _explain(run, "no_secret")


def test_no_log_line_is_forged_by_a_request(run):
    assert "no_forged_log_line" not in run[1], _explain(run, "no_forged_log_line")


def test_no_system_file_is_accepted_as_a_stream(run):
    assert "no_system_file" not in run[1], _explain(run, "no_system_file")


def test_healthz_answers_in_time_throughout(run):
    assert "healthz" not in run[1], _explain(run, "healthz")


def test_the_demo_stream_is_captioned_throughout(run):
    assert run[0].captions > 0, run[2]
    assert "captions" not in run[1], _explain(run, "captions")


def test_memory_stays_bounded(run):
    assert "rss" not in run[1], _explain(run, "rss")


def test_the_server_survives_and_stops_cleanly_on_sigterm(run):
    assert "server_alive" not in run[1], _explain(run, "server_alive")
