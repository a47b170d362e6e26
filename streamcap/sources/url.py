"""Source URLs: parse them into a :class:`SourceSpec`, sanitise them for humans, open them.

Accepted forms::

    /path/to/video.mp4   file:///path/to/video.mp4
    rtsp://[user:pass@]host[:port]/path   (also rtsps://)
    http(s)://host/stream
    webcam:N
    synthetic:shapes[?seed=1&fps=10&size=320x240&scene_s=6&realtime=1&duration_s=60]

Parsing is pure. :func:`sanitize_url` (from :mod:`streamcap.core.secrets`, re-exported) is what
every log line, status detail and error message shows instead of the URL itself: it never raises
and hides credentials; no error raised here quotes any part of a URL unsanitised.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from streamcap.core.errors import BadSourceURL
from streamcap.core.secrets import printable
from streamcap.core.types import MAX_FPS, MIN_FPS
from streamcap.core.secrets import sanitize_url as _sanitize_url

if TYPE_CHECKING:
    from streamcap.sources.base import Source


class SourceKind(str, Enum):
    FILE = "file"
    RTSP = "rtsp"
    HTTP = "http"
    WEBCAM = "webcam"
    SYNTHETIC = "synthetic"
    PUSH = "push"  # frames pushed in by WHIP or websocket ingest publishers


#: kinds whose frames come in real time and are lost when not taken (drop-oldest handoff)
LIVE_KINDS = frozenset({SourceKind.RTSP, SourceKind.HTTP, SourceKind.WEBCAM, SourceKind.PUSH})


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A parsed source URL.

    ``location`` is what the backend opens: a file path, the full network URL (credentials
    included — never log it, log :func:`sanitize_url` of it), the webcam index as text, or the
    synthetic world's name. ``options`` holds typed, validated options (synthetic sources and
    the webcam ``index``).
    """

    kind: SourceKind
    location: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        if self.kind is SourceKind.SYNTHETIC:
            return bool(self.options.get("realtime", True))
        return self.kind in LIVE_KINDS


# --------------------------------------------------------------------------- sanitising

# the one sanitiser lives in streamcap.core.secrets; re-exported here for existing callers
sanitize_url = _sanitize_url


# --------------------------------------------------------------------------- parsing

_NETWORK_SCHEMES = {"rtsp": SourceKind.RTSP, "rtsps": SourceKind.RTSP,
                    "http": SourceKind.HTTP, "https": SourceKind.HTTP}
_KNOWN_PREFIXES = ("file", "rtsp", "rtsps", "http", "https", "webcam", "synthetic")
_SYNTHETIC_WORLDS = ("shapes",)
_SIZE = re.compile(r"^(\d{1,5})[xX](\d{1,5})$")


def _bad(url: str, why: str) -> BadSourceURL:
    return BadSourceURL(f"bad source URL {sanitize_url(url)!r}: {why}")


def _parse_int(url: str, name: str, value: str, lo: int, hi: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise _bad(url, f"option {name}={value!r} is not an integer") from None
    if not lo <= number <= hi:
        raise _bad(url, f"option {name}={number} is outside [{lo}, {hi}]")
    return number


def _parse_float(url: str, name: str, value: str, lo: float, hi: float) -> float:
    """A number in ``[lo, hi]`` (both meaningful limits: ``lo`` > 0 keeps 1e-300 out)."""
    try:
        number = float(value)
    except ValueError:
        raise _bad(url, f"option {name}={value!r} is not a number") from None
    if not lo <= number <= hi:  # also rejects nan
        raise _bad(url, f"option {name}={value} is outside [{lo:g}, {hi:g}]")
    return number


def _parse_size(url: str, name: str, value: str) -> tuple[int, int]:
    match = _SIZE.match(value)
    if match is None:
        raise _bad(url, f"option {name}={value!r} is not WIDTHxHEIGHT (e.g. 320x240)")
    width, height = int(match[1]), int(match[2])
    if not (16 <= width <= 4096 and 16 <= height <= 4096):
        raise _bad(url, f"option {name}={value} is outside 16..4096 pixels per side")
    return width, height


def _parse_bool(url: str, name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise _bad(url, f"option {name}={value!r} is not a boolean (use 1 or 0)")


#: narrations a synthetic stream may speak: ``narration=NAME`` is ``engines/NAME-narration/narration.wav``
#: (a name, never a path: a client adding a stream cannot make the server read a file of its choosing)
NARRATIONS_DIR = Path(__file__).resolve().parents[2] / "engines"
_NARRATION_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")


def _parse_narration(url: str, name: str, value: str) -> str:
    if not _NARRATION_NAME.fullmatch(value):
        raise _bad(url, f"option {name} must be a narration name (like 'demo'), not a path")
    path = NARRATIONS_DIR / f"{value}-narration" / "narration.wav"
    if not path.is_file():
        raise _bad(url, f"narration {value!r} is not installed (tools/setup.sh cpu,export makes the demo's)")
    return str(path)


_SYNTHETIC_OPTIONS: dict[str, Callable[[str, str, str], Any]] = {
    "narration": _parse_narration,
    "seed": lambda u, n, v: _parse_int(u, n, v, 0, 2**31 - 1),
    "fps": lambda u, n, v: _parse_float(u, n, v, MIN_FPS, MAX_FPS),
    "size": _parse_size,
    "scene_s": lambda u, n, v: _parse_float(u, n, v, 0.1, 86_400.0),
    "realtime": _parse_bool,
    "duration_s": lambda u, n, v: _parse_float(u, n, v, 0.01, 1e9),
}
SYNTHETIC_DEFAULTS: Mapping[str, Any] = {
    "seed": 1, "fps": 10.0, "size": (320, 240), "scene_s": 6.0, "realtime": True,
    "duration_s": None,
}


def _parse_synthetic(url: str, rest: str) -> SourceSpec:
    world, _, query = rest.partition("?")
    if world not in _SYNTHETIC_WORLDS:
        known = ", ".join(_SYNTHETIC_WORLDS)
        raise _bad(url, f"unknown synthetic world {world!r} (known: {known})")
    options = dict(SYNTHETIC_DEFAULTS)
    seen: set[str] = set()
    if query:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise _bad(url, "malformed query string (expected name=value&…)") from None
        for name, value in pairs:
            parser = _SYNTHETIC_OPTIONS.get(name)
            if parser is None:
                raise _bad(url, f"unknown option {name!r} (known: {', '.join(_SYNTHETIC_OPTIONS)})")
            if name in seen:
                raise _bad(url, f"option {name!r} given twice")
            seen.add(name)
            options[name] = parser(url, name, value)
    return SourceSpec(SourceKind.SYNTHETIC, world, options)


def _parse_network(url: str, scheme: str) -> SourceSpec:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError:  # its message quotes the netloc, credentials included: not shown
        raise _bad(url, "invalid host or port") from None
    if not parts.hostname:
        raise _bad(url, "no host")
    del port
    return SourceSpec(_NETWORK_SCHEMES[scheme], url)


def _parse_file_url(url: str) -> SourceSpec:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise _bad(url, "file URLs must be local (file:///path), not name a host")
    path = unquote(parts.path)
    if not path:
        raise _bad(url, "no path")
    return SourceSpec(SourceKind.FILE, path)


def parse_source_url(url: str) -> SourceSpec:
    """Parse a source URL or file path. Raises :class:`BadSourceURL` with the reason."""
    if not isinstance(url, str) or not url.strip():
        raise BadSourceURL("bad source URL: empty")
    url = url.strip()
    scheme_match = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*):", url)
    if scheme_match is None:
        return SourceSpec(SourceKind.FILE, url)
    scheme = scheme_match[1].lower()
    rest = url[scheme_match.end():]
    if scheme == "webcam":
        if not re.fullmatch(r"\d{1,3}", rest):
            raise _bad(url, "expected webcam:N with a device index N (e.g. webcam:0)")
        return SourceSpec(SourceKind.WEBCAM, rest, {"index": int(rest)})
    if scheme == "synthetic":
        return _parse_synthetic(url, rest)
    if scheme == "push":
        if rest.strip("/"):
            raise _bad(url, "push: takes no location (publishers send frames via WHIP or /ingest)")
        return SourceSpec(SourceKind.PUSH, "")
    if scheme in _KNOWN_PREFIXES and not rest.startswith("//"):
        raise _bad(url, f"expected {scheme}://…")
    if scheme == "file":
        return _parse_file_url(url)
    if scheme in _NETWORK_SCHEMES:
        return _parse_network(url, scheme)
    if rest.startswith("//"):
        # not quoted, even sanitised: with an unknown scheme nothing says where a password sits
        raise BadSourceURL(f"bad source URL: unknown scheme {printable(scheme, 32)!r} (known: file, rtsp, "
                           "rtsps, http, https, webcam:N, synthetic:shapes, push:)")
    return SourceSpec(SourceKind.FILE, url)  # a relative path that happens to contain ':'


#: options of decoding sources (:class:`~streamcap.sources.reader.ReaderSource`) that do not
#: apply to synthetic or push ones
NETWORK_TUNING = frozenset({"stall_timeout_s", "open_timeout_s", "read_timeout_s", "backoff", "rng",
                            "max_failures", "end_on_eof"})
#: options only PyAV's decoder takes (the webcam, synthetic and push sources have no use for them)
DECODER_OPTIONS = frozenset({"max_fps", "min_side"})
#: handoff sizes: decoding and synthetic sources take them, push sources have their own queues
HANDOFF_OPTIONS = frozenset({"handoff_size", "audio_handoff_size"})


def open_source(stream_id: str, url: str | SourceSpec, **kwargs: Any) -> Source:
    """Open the source for ``url`` (not started yet: it starts on the first ``recv()``).

    Files, RTSP(S) and HTTP(S) are read by :class:`~streamcap.sources.pyav.PyAVSource`, webcams
    by :class:`~streamcap.sources.opencv.OpenCVSource`. ``kwargs`` go to the source class: the
    hooks of :class:`~streamcap.sources.base.Source` (``on_status``, ``on_drop``,
    ``on_reconnect``, ``clock``, ``frame_transform``, ``audio``), ``handoff_size`` and
    ``audio_handoff_size``, and the tuning of :class:`~streamcap.sources.reader.ReaderSource`
    (``stall_timeout_s``, ``open_timeout_s``, ``read_timeout_s``, ``backoff``, ``rng``,
    ``max_failures``, ``end_on_eof``), which a synthetic source, having no decoder, ignores, and
    a push source ignores along with the handoff sizes — so one set of options,
    ``streamcap.runtime.config.source_options(config)``, can be passed for every stream.

    ``audio=True`` (default False): ``recv()`` also returns the stream's sound as
    :class:`~streamcap.core.types.AudioChunk` s on the frames' media clock, and a file or
    RTSP/HTTP stream with audio but no video is read (see :mod:`streamcap.sources.base`). A push
    source takes ``max_queued_audio`` (chunks) as well.
    """
    spec = url if isinstance(url, SourceSpec) else parse_source_url(url)
    if spec.kind is SourceKind.SYNTHETIC:
        from streamcap.sources.synthetic import SyntheticShapesSource

        own = {k: v for k, v in kwargs.items() if k not in NETWORK_TUNING and k not in DECODER_OPTIONS}
        return SyntheticShapesSource(stream_id, **{**spec.options, **own})
    if spec.kind is SourceKind.PUSH:
        from streamcap.sources.push import PushSource

        # no decoder handoff either: publishers push into the source's own bounded queue
        own = {k: v for k, v in kwargs.items()
               if k not in NETWORK_TUNING and k not in HANDOFF_OPTIONS and k not in DECODER_OPTIONS}
        return PushSource(stream_id, **own)
    if spec.kind is SourceKind.WEBCAM:
        from streamcap.sources.opencv import OpenCVSource

        return OpenCVSource(stream_id, spec, **{k: v for k, v in kwargs.items() if k not in DECODER_OPTIONS})
    from streamcap.sources.pyav import PyAVSource

    return PyAVSource(stream_id, spec, **kwargs)
