"""What the cluster controller must do to make the running stream workers match the wanted set.

Pure: the wanted streams (id → a fingerprint of what the worker is given: URL and settings)
and the running ones (id → the fingerprint it was started with, None when unknown) in, a
:class:`Plan` out. A worker whose fingerprint changed is replaced (stopped, then started); one
whose fingerprint is unknown is asked for it by the shell first, never replaced blindly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Plan:
    start: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()
    replace: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.start or self.stop or self.replace)


def fingerprint(spec: Mapping) -> str:
    """A short stable digest of a worker's spec (any JSON-able mapping)."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan(wanted: Mapping[str, str], running: Mapping[str, str | None], *, max_starts: int | None = None) -> Plan:
    """Start the wanted streams not running, stop the running ones not wanted, replace the ones
    whose fingerprint changed; at most ``max_starts`` starts (and replacements) per round, in
    stream-id order, so a big config does not start everything at once."""
    start = sorted(set(wanted) - set(running))
    stop = sorted(set(running) - set(wanted))
    replace = sorted(s for s in set(wanted) & set(running)
                     if running[s] is not None and running[s] != wanted[s])
    if max_starts is not None:
        replace = replace[:max_starts]
        start = start[: max(0, max_starts - len(replace))]
    return Plan(tuple(start), tuple(stop), tuple(replace))
