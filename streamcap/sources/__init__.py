"""Frame (and, with ``audio=True``, audio) sources: one :class:`Source` interface (``async recv()``,
idempotent ``aclose()``) and one module per kind; :mod:`.audio` holds the pure audio helpers. :func:`open_source` turns a URL into a source; :func:`sanitize_url` is what logs
and status details show of a URL."""

from streamcap.sources.backoff import Backoff
from streamcap.sources.base import Source
from streamcap.sources.url import (
    SourceKind,
    SourceSpec,
    open_source,
    parse_source_url,
    sanitize_url,
)

__all__ = [
    "Backoff",
    "Source",
    "SourceKind",
    "SourceSpec",
    "open_source",
    "parse_source_url",
    "sanitize_url",
]
