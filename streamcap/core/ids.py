"""The stream id rule: the one definition, shared by configuration, the HTTP API and the wire.

A stream id is 1 to :data:`STREAM_ID_MAX_CHARS` ASCII letters, digits, ``_``, ``.`` or ``-``,
starting with a letter or digit — safe in URLs, file names, log lines and metric labels
without escaping. Pure: no I/O.
"""

from __future__ import annotations

import re

#: Longest stream id, in characters.
STREAM_ID_MAX_CHARS = 64
#: A whole stream id (use ``fullmatch``: ``$`` would also accept a trailing newline).
STREAM_ID_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{STREAM_ID_MAX_CHARS - 1}}}")
#: The rule in words, for error messages.
STREAM_ID_RULE = (f"1-{STREAM_ID_MAX_CHARS} of letters, digits, '_', '.', '-', "
                  "starting with a letter or digit")


def is_valid_stream_id(value: object) -> bool:
    """Whether ``value`` is a string that is a valid stream id."""
    return isinstance(value, str) and STREAM_ID_RE.fullmatch(value) is not None
