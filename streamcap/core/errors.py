"""One exception tree for streamcap. Each error has a stable ``code`` that is also used on
the wire (``error`` and ``status`` messages), so clients can switch on it."""

from __future__ import annotations


class StreamcapError(Exception):
    """Root of every streamcap error."""

    code = "internal_error"

    def __init__(self, detail: str = "", *, code: str | None = None) -> None:
        super().__init__(detail)
        if code is not None:
            self.code = code

    @property
    def detail(self) -> str:
        return str(self)


class ConfigError(StreamcapError):
    code = "bad_config"


class SourceError(StreamcapError):
    """A source could not be opened or read."""

    code = "source_error"


class BadSourceURL(SourceError):
    code = "bad_source_url"


class SourceEnded(SourceError):
    """A finite source (a file) has no more frames."""

    code = "source_ended"


class EngineError(StreamcapError):
    code = "engine_error"


class EngineLoadError(EngineError):
    code = "engine_load_error"


class ProtocolError(StreamcapError):
    """A client sent something the wire schema does not allow."""

    code = "bad_message"
