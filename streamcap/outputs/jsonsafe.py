"""The one JSON loader for input from outside: every client message and request body goes through
:func:`loads`, so no input can make the parser itself fail in a way a handler does not expect.

Bounds, all checked before or while parsing (never after building a huge object):

* size: at most ``max_bytes`` of UTF-8;
* nesting: at most ``max_depth`` levels of arrays/objects (counted on the text with strings
  blanked, before parsing: the C decoder would otherwise recurse until ``RecursionError``);
* numbers: at most ``max_number_chars`` characters each (CPython refuses integers over 4,300
  digits with a bare ``ValueError``), and finite (``NaN``/``Infinity`` and overflowing floats
  are refused);
* no duplicate keys in an object (the last one silently winning hides mistakes).

Anything else wrong is malformed JSON. Every failure is a :class:`~streamcap.core.errors.ProtocolError`
with the caller's ``code`` (``bad_json`` for HTTP bodies, ``bad_message`` for websocket messages)
and a detail fit to send back. Pure: no I/O; safe to call from any thread.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamcap.core.errors import ErrorCode, ProtocolError

#: a JSON string, escapes included (an unrolled loop: no catastrophic backtracking)
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OPEN = (ord("["), ord("{"))
_CLOSE = (ord("]"), ord("}"))


@dataclass(frozen=True, slots=True)
class JsonLimits:
    """What one JSON input may hold (:func:`loads`)."""

    max_bytes: int | None = None  # UTF-8 bytes; None: the caller bounded the size already
    max_depth: int = 32  # nested arrays/objects
    max_number_chars: int = 64  # characters of one number literal

    def __post_init__(self) -> None:
        if self.max_depth < 1 or self.max_number_chars < 1:
            raise ValueError("max_depth and max_number_chars must be at least 1")


DEFAULT_LIMITS = JsonLimits()


def loads(text: str | bytes | bytearray, limits: JsonLimits = DEFAULT_LIMITS, *,
          code: str = ErrorCode.BAD_JSON) -> Any:
    """Parse ``text`` within ``limits``. Raises ProtocolError(``code``) with the reason."""
    if isinstance(text, bytes | bytearray):
        if limits.max_bytes is not None and len(text) > limits.max_bytes:
            raise ProtocolError(f"the JSON is {len(text)} bytes, which exceeds the {limits.max_bytes}-byte limit", code=code)
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"the JSON is not UTF-8 text (byte {exc.start})", code=code) from None
    elif limits.max_bytes is not None and len(text) > limits.max_bytes // 4:  # cheap bound first
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > limits.max_bytes:
            raise ProtocolError(f"the JSON is {size} bytes, which exceeds the {limits.max_bytes}-byte limit", code=code)
    depth = nesting_depth(text, stop_above=limits.max_depth)
    if depth > limits.max_depth:
        raise ProtocolError(f"the JSON is nested more than {limits.max_depth} levels deep", code=code)

    def number(literal: str, convert) -> Any:
        if len(literal) > limits.max_number_chars:
            raise ProtocolError(f"a number of {len(literal)} characters; the limit is "
                                f"{limits.max_number_chars}", code=code)
        value = convert(literal)
        if isinstance(value, float) and not math.isfinite(value):
            raise ProtocolError(f"the number {literal[:20]} is out of range", code=code)
        return value

    def constant(name: str) -> Any:
        raise ProtocolError(f"the non-finite number {name} is not allowed", code=code)

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                raise ProtocolError(f"duplicate key {key[:64]!r}", code=code)
            obj[key] = value
        return obj

    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=constant,
                          parse_int=lambda s: number(s, int), parse_float=lambda s: number(s, float))
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"malformed JSON: {exc}", code=code) from None
    except RecursionError:  # unreachable with a sane max_depth: the depth check came first
        raise ProtocolError("the JSON is nested too deeply", code=code) from None


def nesting_depth(text: str, *, stop_above: int | None = None) -> int:
    """The deepest nesting of arrays/objects in ``text`` (brackets inside strings do not count).
    With ``stop_above``, any answer above it may be returned as soon as that is certain; text
    with no more opening brackets than that is not scanned at all."""
    opens = text.count("[") + text.count("{")
    if stop_above is not None and opens <= stop_above:
        return opens  # an upper bound that is within the limit
    if opens == 0:
        return 0
    if '"' in text:
        text = _STRING.sub('""', text)
    codes = np.frombuffer(text.encode("utf-8", "surrogatepass"), np.uint8)
    steps = np.isin(codes, _OPEN).astype(np.int32) - np.isin(codes, _CLOSE).astype(np.int32)
    return int(np.cumsum(steps).max(initial=0))
