"""What a human may see of a secret: URLs with credentials hidden, free text with tokens hidden,
client-supplied values made safe for one log line, and the sample tokens a deployment must replace.

* :func:`sanitize_url` is what every log line, status detail and HTTP document shows instead of a
  source URL. It errs on the side of hiding: everything before the *last* ``@`` after the scheme
  is treated as user info (passwords may hold ``/``, ``?``, ``#``, ``@`` or spaces unencoded),
  whatever the number of slashes after the scheme (``rtsp:/u:p@h``, ``rtsp:u:p@h``), and the
  values of password-like query parameters become ``***``. Surrounding whitespace is dropped and
  control characters are escaped. It never raises.
* :func:`redact_text` hides secrets inside arbitrary text (an exception message, a raw request
  line): user info of any ``scheme:`` URL, ``token=…``-like query values and ``Bearer …``.
* :func:`printable` escapes what a client sent (a path, a stream list, a name) so that it stays on
  one log line: no newline, NUL or other control character survives, and the length is bounded.
* :func:`is_sample_token` says whether a token is a placeholder shipped in an example.

Pure: no I/O, no state.
"""

from __future__ import annotations

import re

__all__ = ["SAMPLE_TOKENS", "escape_controls", "is_sample_token", "printable", "redact_text", "sanitize_url"]

HIDDEN = "***"

#: the longest sanitised URL shown (a URL added through the API can be megabytes long)
URL_LIMIT = 512

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*:)(.*)$", re.DOTALL)
# (pass|word: a name with one letter of "password" missing or wrong still holds one of the two)
_SECRET_NAME = re.compile(r"pass|word|pwd|secret|token|key|auth|sig|cred|session", re.IGNORECASE)
# a query pair: its name, then its value up to the next '&'/';' (a secret one may hold '#', '@')
_QUERY_NAME = re.compile(r"([?&;])([^=&;#]*)=([^&;]*)")
# a query segment that is not name=value (a mistyped '@' or ':' can turn a password into one)
_BARE_SEGMENT = re.compile(r"([?&;])([^=&;]+)(?=[&;]|$)")
# what an authority without user info must look like: host or [IPv6], then an optional port
_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]*\]|[^:@\[\]/?#\s]*)(?::\d{0,5})?")

# --- free text ---------------------------------------------------------------------------------
# the user info of a URL anywhere in a text: a scheme, up to three slashes (or backslashes), then
# everything up to the last '@' of the run of non-space characters
_TEXT_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*:[/\\]{0,3})(?:[^\s@]*@)+")
# name=value pairs whose name looks secret, after ?, &, ; or at a word start (a raw request line)
_TEXT_PAIR = re.compile(r"(?<![A-Za-z0-9_])([A-Za-z0-9_.\-]*(?:pass|word|pwd|secret|token|key|auth|sig|cred|session)"
                        r"[A-Za-z0-9_.\-]*)=([^&;\s\"'<>]*)", re.IGNORECASE)
_TEXT_BEARER = re.compile(r"(\bBearer)(\s+)[^\s\"',;]+", re.IGNORECASE)
_TEXT_AUTH_HEADER = re.compile(r"(\bAuthorization\s*[:=]\s*)(?!Bearer\b)[^\s\"',;]+(\s+[^\s\"',;]+)?",
                               re.IGNORECASE)


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if ch == "\n":
        return "\\n"
    if ch == "\r":
        return "\\r"
    if ch == "\t":
        return "\\t"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape_controls(text: str, keep: str = "") -> str:
    """``text`` with every non-printable character escaped (``\\n``, ``\\x00``, ``\\u2028``)
    except those in ``keep`` (a traceback keeps its newlines); no length limit."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch in keep else _escape_char(ch) for ch in text)


def printable(value: object, limit: int = 200) -> str:
    """``value`` as text for one log line: every non-printable character (newline, NUL, escape,
    U+2028, …) escaped as ``\\n``, ``\\x00``, ``\\u2028``; cut to ``limit`` characters with ``…``.
    Never raises."""
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # boundary: a value whose __str__ fails must still be loggable
        return f"<unprintable {type(value).__name__}>"
    text = text[: limit * 2 + 1]  # bound the work before escaping
    out = text if text.isprintable() else "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)
    return out if len(out) <= limit else out[:limit] + "…"


def sanitize_url(url: object, limit: int = URL_LIMIT) -> str:
    """``url`` with credentials hidden, on one line: ``user:pass@`` becomes ``***@`` and the values
    of password-like query parameters (``password``, ``token``, ``key``, …) become ``***``.

    In this order, each step hiding more rather than less:

    1. the value of every password-like query parameter is hidden up to the next ``&``/``;`` or
       the end, ``#`` and ``@`` included (``?password=pw@x#y`` hides ``pw@x#y``);
    2. everything before the last ``@`` left (after the scheme, if any) is hidden, whatever it
       holds (``?``, ``#``, ``/``, spaces, too few or no slashes): a password can hold any of them;
    3. in a URL with a scheme, a query segment that is not ``name=value`` is hidden
       (``rtsp://user?pw_host/x``: a mistyped ``:`` and ``@`` leave a password looking like one);
    4. a URL with a scheme and no ``@`` whose authority (up to the first ``/``, ``?`` or ``#``)
       is not ``host[:port]`` has everything up to the first ``/`` hidden
       (``rtsp://user:pw?x y/x``: a malformed URL may still carry a password).

    Never raises."""
    try:
        text = url if isinstance(url, str) else str(url)
    except Exception:  # boundary: never raise from a sanitiser
        return "<unprintable URL>"
    text = printable(text.strip(), limit * 4)  # one line; bounded before the regexes run
    match = _SCHEME.match(text)
    prefix, rest = (match[1], match[2]) if match else ("", text)
    slashes = len(rest) - len(rest.lstrip("/\\"))
    prefix, rest = prefix + rest[:slashes], rest[slashes:]
    rest = _QUERY_NAME.sub(_hide_secret_value, rest)
    at = rest.rfind("@")
    if at != -1:
        rest = HIDDEN + rest[at:]
    if match is not None:
        rest = _BARE_SEGMENT.sub(lambda m: f"{m[1]}{HIDDEN}", rest)
        if at == -1 and not _HOST_PORT.fullmatch(re.split(r"[/?#]", rest, maxsplit=1)[0]):
            _, slash, path = rest.partition("/")
            rest = HIDDEN + slash + path
    out = prefix + rest
    return out if len(out) <= limit else out[:limit] + "…"


def _hide_secret_value(m: re.Match[str]) -> str:
    name = m[2]
    if not _SECRET_NAME.search(name):
        return m[0]
    return f"{m[1]}{name}={HIDDEN}"


def redact_text(text: str) -> str:
    """``text`` with secrets hidden wherever they appear: the user info of URLs, the values of
    secret-looking ``name=value`` pairs (``token=``, ``password=``, …) and ``Bearer`` tokens or
    other ``Authorization`` credentials. For messages that may quote a URL or a request line."""
    if not text:
        return text
    text = _TEXT_USERINFO.sub(lambda m: f"{m[1]}{HIDDEN}@", text)
    text = _TEXT_PAIR.sub(lambda m: f"{m[1]}={HIDDEN}", text)
    text = _TEXT_BEARER.sub(lambda m: f"{m[1]}{m[2]}{HIDDEN}", text)
    return _TEXT_AUTH_HEADER.sub(lambda m: f"{m[1]}{HIDDEN}", text)


# --- sample tokens -----------------------------------------------------------------------------

#: the tokens of the shipped examples (deploy/), refused as they are
SAMPLE_TOKENS = frozenset({"change-me-publish-token", "change-me-admin-token", "change-me-view-token"})
_SAMPLE_PREFIXES = ("change-me", "changeme", "change_me", "replace-me", "replaceme")


def is_sample_token(token: str) -> bool:
    """Whether ``token`` is a placeholder from an example (``change-me…`` and the like)."""
    lowered = token.strip().lower()
    return lowered in SAMPLE_TOKENS or lowered.startswith(_SAMPLE_PREFIXES)
