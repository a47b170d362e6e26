"""streamcap.server.logfilter: a record's message, arguments and traceback lose every token and
URL credential; aiohttp's unparseable-request error becomes one warning without the line. Real
loggers and a real handler; no socket."""

from __future__ import annotations

import io
import logging

from aiohttp.http_exceptions import LineTooLong

from streamcap.server.logfilter import RedactingFilter, install

TOKEN = "tok-3e9a51c7"


def _logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addFilter(RedactingFilter())
    return logger, out


def test_tokens_and_credentials_are_hidden_in_messages_arguments_and_tracebacks():
    logger, out = _logger("streamcap.test.logfilter")
    logger.info("GET /ws?streams=a&token=%s from %s", TOKEN, "1.2.3.4")
    logger.info("header Authorization: Bearer %s", TOKEN)
    try:
        raise ConnectionError(f"cannot open rtsp://admin:{TOKEN}@cam/live")
    except ConnectionError:
        logger.exception("stream cam: reader failed")
    text = out.getvalue()
    assert TOKEN not in text
    assert "streams=a&token=***" in text and "Bearer ***" in text and "rtsp://***@cam/live" in text
    assert "Traceback" in text and "ConnectionError" in text  # the traceback is kept, redacted


def test_control_characters_a_library_logs_are_escaped_so_no_line_is_forged():
    logger, out = _logger("aioice.test-ice")
    # found by tools/fuzz.py (seed 8): aioice quotes a peer's ICE candidate address as sent
    logger.info('Remote candidate "%s" is not valid', "12\x007.0.0.1\nINFO streamcap: forged")
    try:
        raise ValueError("bad\x00value")
    except ValueError:
        logger.exception("failed")
    text = out.getvalue()
    assert "\x00" not in text
    assert 'Remote candidate "12\\x007.0.0.1\\nINFO streamcap: forged" is not valid' in text
    assert "bad\\x00value" in text and "Traceback (most recent call last):\n" in text
    assert not any(line.startswith("INFO streamcap: forged") for line in text.splitlines())


def test_an_unparseable_request_is_one_warning_without_the_line():
    logger, out = _logger("aiohttp.test-server")
    exc = LineTooLong(f"GET /ws?token={TOKEN}".encode() + b"x" * 9000, "8190")
    logger.error("Error handling request from %s", "10.0.0.9", exc_info=exc)
    text = out.getvalue()
    assert text.startswith("WARNING aiohttp.test-server unparseable HTTP request from 10.0.0.9: LineTooLong")
    assert TOKEN not in text and "Traceback" not in text and "xxxx" not in text


def test_install_is_idempotent_and_covers_aiohttp_and_our_loggers():
    logging.getLogger("streamcap.test.installed")
    install()
    install()
    for name in ("aiohttp.server", "aiohttp.access", "aiohttp.web", "streamcap", "streamcap.test.installed"):
        filters = [f for f in logging.getLogger(name).filters if isinstance(f, RedactingFilter)]
        assert len(filters) == 1, name
