"""Access control: bearer tokens with scopes, and allowed browser origins.

Pure: no I/O, no clock. The HTTP/websocket layer extracts the token (``Authorization: Bearer``
header, or ``?token=`` where a browser cannot set headers) and the ``Origin``/``Host`` headers, and
asks :meth:`AccessPolicy.check` for a decision; the decision carries the HTTP status and a reason
to send back (401 no or unknown token, 403 token without the scope or origin not allowed).

Scopes are ordered: ``admin`` can do what ``publish`` can, ``publish`` what ``view`` can.
With no token configured, publishing and admin refuse everyone unless the config explicitly
allows anonymous publishing; viewing is public unless a view-capable token exists or the config
says ``public_view = false``. The health details (``/healthz``) and the metrics need what viewing
needs unless ``public_status`` / ``public_metrics`` open them to everyone. A policy refuses a
token shorter than 8 characters or a sample placeholder (``change-me…``,
:func:`streamcap.core.secrets.is_sample_token`); neither message quotes the token.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus
from urllib.parse import urlsplit

from streamcap.core.secrets import is_sample_token


class Scope(str, Enum):
    VIEW = "view"
    PUBLISH = "publish"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Scope.VIEW: 0, Scope.PUBLISH: 1, Scope.ADMIN: 2}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    status: HTTPStatus = HTTPStatus.OK
    reason: str = ""
    scope: Scope | None = None  # the scope the token carries, when one matched


ALLOW = Decision(True)


def bearer_token(headers: Mapping[str, str], query: Mapping[str, Sequence[str]] | None = None) -> str | None:
    """The client's token: ``Authorization: Bearer T`` first, else ``?token=T``."""
    auth = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
    if auth:
        kind, _, value = auth.strip().partition(" ")
        if kind.lower() == "bearer" and value.strip():
            return value.strip()
    values = (query or {}).get("token") or []
    return values[0] if values and values[0] else None


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else url.lower()


@dataclass(frozen=True)
class AccessPolicy:
    tokens: Mapping[str, Scope]  # token → scope
    public_view: bool | None = None  # None: public unless some token can view
    anonymous_publish: bool = False  # explicit opt-in only
    allowed_origins: tuple[str, ...] = ()  # browser origins besides the server's own; "*" = any
    public_status: bool = False  # /healthz details (stream URLs, details, captions) for anyone
    public_metrics: bool = False  # /metrics for anyone

    def __post_init__(self) -> None:
        for token in self.tokens:
            if len(token) < 8:
                raise ValueError("tokens must be at least 8 characters long")
            if is_sample_token(token):
                raise ValueError("a configured token is a sample placeholder (change-me…): replace it with "
                                 "a secret of your own (e.g. openssl rand -hex 24)")

    def is_open(self, switch: str | None) -> bool:
        """Whether the switch named ``switch`` (``public_status``, ``public_metrics``) is on."""
        if switch not in ("public_status", "public_metrics"):
            return False
        return bool(getattr(self, switch))

    def _scope_of(self, token: str | None) -> Scope | None:
        if not token:
            return None
        found = None
        for known, scope in self.tokens.items():  # compare every token, in constant time each
            if hmac.compare_digest(known.encode(), token.encode()):
                found = scope
        return found

    @property
    def viewing_is_public(self) -> bool:
        if self.public_view is not None:
            return self.public_view
        return not self.tokens

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """Non-browser clients send no Origin and are allowed; a browser's origin must be the
        server's own (same host) or listed."""
        if not origin:
            return True
        if "*" in self.allowed_origins:
            return True
        o = _origin_of(origin)
        if host and urlsplit(o).netloc == host.lower():
            return True
        return o in {_origin_of(a) for a in self.allowed_origins}

    def check(self, need: Scope, token: str | None, *, origin: str | None = None,
              host: str | None = None) -> Decision:
        if not self.origin_allowed(origin, host):
            return Decision(False, HTTPStatus.FORBIDDEN, f"origin {origin} is not allowed")
        scope = self._scope_of(token)
        if token and scope is None:
            return Decision(False, HTTPStatus.UNAUTHORIZED, "unknown token")
        if scope is not None:
            if scope.rank >= need.rank:
                return Decision(True, scope=scope)
            return Decision(False, HTTPStatus.FORBIDDEN, f"a {scope.value} token cannot {need.value}", scope)
        if need is Scope.VIEW and self.viewing_is_public:
            return ALLOW
        if need is Scope.PUBLISH and self.anonymous_publish:
            return ALLOW
        if need is not Scope.VIEW and not self.tokens:
            return Decision(False, HTTPStatus.UNAUTHORIZED,
                            f"{need.value} needs a token and none is configured (add one with --token "
                            f"{need.value}=TOKEN or [auth] in the config)")
        return Decision(False, HTTPStatus.UNAUTHORIZED, f"{need.value} needs a token (Authorization: Bearer TOKEN)")
