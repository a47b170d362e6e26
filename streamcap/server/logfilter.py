"""No secret in a log line: the filter the server installs on aiohttp's loggers and ours.

:class:`RedactingFilter` rewrites every record that passes the loggers it sits on: the formatted
message and the exception text go through :func:`streamcap.core.secrets.redact_text` (``token=…``
query values, ``Bearer …``, URL user info), so a token a client put in a URL or a header never
reaches a handler, whatever logged it. Control characters in a message (a NUL, a newline a peer put in a value that a library logs, as
aioice does with a remote ICE candidate) are escaped, so no record forges a line or writes a NUL;
a traceback keeps its newlines. A request line aiohttp cannot parse (longer than its
8190-byte limit, an unencoded space, not HTTP at all) is logged by aiohttp at ERROR with a
traceback quoting the raw line; the filter turns it into one WARNING naming the peer and the
parse error's kind, without the line.

:func:`install` puts one filter on aiohttp's loggers and on every ``streamcap`` logger that exists
(a logger's filters see only the records logged on it, not those of its children), and on the
root logger's handlers, which see every record that propagates; it is idempotent. Logging filters
run on whichever thread logs; the filter keeps no state.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

from streamcap.core.secrets import escape_controls, printable, redact_text

#: aiohttp's loggers (aiohttp.log) whose records can quote a request
AIOHTTP_LOGGERS = ("aiohttp.access", "aiohttp.client", "aiohttp.internal", "aiohttp.server", "aiohttp.web",
                   "aiohttp.websocket")
OUR_NAMESPACE = "streamcap"


class RedactingFilter(logging.Filter):
    """Hides secrets in every record it sees and demotes aiohttp's unparseable-request errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and record.name.startswith("aiohttp"):
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
            record.msg = "unparseable HTTP request from %s: %s (status %s; request line not logged)"
            record.args = (printable(peer, 64), type(exc).__name__, getattr(exc, "code", "?"))
            record.exc_info, record.exc_text, record.stack_info = None, None, None
            return True
        try:
            message = record.getMessage()
        except Exception:  # boundary: a record whose arguments do not format is left for logging to report
            return True
        redacted = escape_controls(redact_text(message))  # one line: a NUL or newline forges nothing
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = escape_controls(redact_text(record.exc_text), keep="\n")
        if record.stack_info:
            record.stack_info = escape_controls(redact_text(record.stack_info), keep="\n")
        return True


def _has_filter(filterer: logging.Filterer) -> bool:
    return any(isinstance(f, RedactingFilter) for f in filterer.filters)


def install(extra_loggers: tuple[str, ...] = ()) -> None:
    """Put a :class:`RedactingFilter` on aiohttp's loggers, every existing ``streamcap.*`` logger,
    ``extra_loggers`` and the root logger's handlers (each once)."""
    names = {*AIOHTTP_LOGGERS, OUR_NAMESPACE, *extra_loggers}
    names.update(name for name in list(logging.root.manager.loggerDict)
                 if name == OUR_NAMESPACE or name.startswith(OUR_NAMESPACE + "."))
    for name in sorted(names):
        logger = logging.getLogger(name)
        if not _has_filter(logger):
            logger.addFilter(RedactingFilter())
    for handler in logging.root.handlers:
        if not _has_filter(handler):
            handler.addFilter(RedactingFilter())
