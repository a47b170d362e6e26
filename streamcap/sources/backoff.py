"""Capped exponential backoff with jitter for reconnecting live sources.

Pure: no clock, no sleeping. The caller counts failed attempts and sleeps for
:meth:`Backoff.delay_s`; the random generator is injected so tests (and replays) are
deterministic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before reconnect attempt ``n`` (0-based): ``min(cap_s, initial_s * factor**n)``,
    then shortened by up to ``jitter`` of itself ("equal jitter"), so the delay never exceeds
    ``cap_s`` and sources that failed together do not retry in lockstep.

    The defaults keep the cap small (1 s): a camera that comes back is picked up within about a
    second, and a dead one costs one cheap connection attempt per second. They equal the
    ``backoff_*`` keys of ``[network]`` in :mod:`streamcap.runtime.config` (the only source of
    defaults), whose :meth:`~streamcap.runtime.config.NetworkConfig.backoff` builds the one the
    service uses.
    """

    initial_s: float = 0.1
    factor: float = 2.0
    cap_s: float = 1.0
    jitter: float = 0.3

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.cap_s <= 0:
            raise ValueError("initial_s and cap_s must be positive")
        if self.initial_s > self.cap_s:
            raise ValueError("initial_s must not exceed cap_s")
        if self.factor < 1:
            raise ValueError("factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")

    def base_s(self, attempt: int) -> float:
        """The delay before ``attempt`` without jitter."""
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        delay = self.initial_s
        for _ in range(attempt):  # no float overflow however many attempts
            delay *= self.factor
            if delay >= self.cap_s:
                return self.cap_s
        return delay

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        """The jittered delay before ``attempt``, within ``[base*(1-jitter), base]``."""
        base = self.base_s(attempt)
        return base * (1.0 - self.jitter * rng.random())
