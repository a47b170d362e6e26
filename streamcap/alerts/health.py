"""Stream-health alerts from the pipeline itself: pure, fed by the async shell.

One :class:`HealthMonitor` per stream watches what the pipeline sees and raises alerts a
surveillance operator needs before any caption rule can help:

=======================  ==========================================================  ========
rule                     starts when                                                 severity
=======================  ==========================================================  ========
``health:stalled``       no frame for ``stalled_frames`` × the stream's frame         critical
                         interval (at least ``min_stalled_s``), or the source
                         reports stalled/reconnecting; ends with the next frame
``health:frozen``        the picture has not changed (mean abs difference of a        warning
                         small grey thumbnail below ``frozen_diff``) for ``frozen_s``
                         of media time
``health:black``         the picture is black (mean luma below ``black_luma``) or     warning
                         blank (luma spread below ``blank_std``) for ``blank_s`` of
                         media time
``health:reconnects``    more than ``storm_reconnects`` reconnects within             warning
                         ``storm_window_s`` (a flapping source)
``health:behind``        more than ``max_drops_per_min`` frames/windows dropped in    warning
                         the last minute (the machine cannot keep up)
=======================  ==========================================================  ========

Each condition ends with hysteresis (the picture changes; the rate falls to half the limit).
No clock of its own: the caller passes monotonic ``now_ns`` with every event (stalls, rates) and
the frame's media time (picture conditions), and calls :meth:`HealthMonitor.tick` periodically, so tests replay it on simulated time. Alert times
(``start_s``/``end_s``) are the stream's media time (the newest frame's pts).
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from streamcap.core.types import Alert, AlertPhase, Severity, StreamState

STALLED, FROZEN, BLACK, RECONNECTS, BEHIND = (
    "health:stalled", "health:frozen", "health:black", "health:reconnects", "health:behind")
SEVERITY = {STALLED: Severity.CRITICAL, FROZEN: Severity.WARNING, BLACK: Severity.WARNING,
            RECONNECTS: Severity.WARNING, BEHIND: Severity.WARNING}
_NS = 1_000_000_000


@dataclass(frozen=True, kw_only=True)
class HealthLimits:
    """The limits of :class:`HealthMonitor`; no defaults here: they come from the config
    (``[alerts.health]``, :class:`streamcap.runtime.config.HealthAlertConfig`)."""

    stalled_frames: float
    min_stalled_s: float
    frozen_s: float
    frozen_diff: float
    black_luma: float
    blank_std: float
    blank_s: float
    storm_reconnects: int
    storm_window_s: float
    max_drops_per_min: float


class HealthMonitor:
    """Health alerts of one stream; every method returns the alert events it caused."""

    def __init__(self, stream: str, limits: HealthLimits, make_id: Callable[[], str]) -> None:
        self.stream = stream
        self.limits = limits
        self._make_id = make_id
        self._open: dict[str, Alert] = {}
        self._last_frame_ns: int | None = None
        self._gaps_ns: deque[int] = deque(maxlen=21)
        self._media_s = 0.0
        self._prev_pts_s: float | None = None
        self._source_down = False
        self._still_since_s: float | None = None  # media time (frozen and black are about the picture)
        self._dark_since_s: float | None = None
        self._dark_kind = ""
        self._reconnects: deque[int] = deque()
        self._drops: deque[tuple[int, int]] = deque()  # (now_ns, count)
        self._drop_total = 0

    @property
    def open_alerts(self) -> dict[str, Alert]:
        return dict(self._open)

    # ------------------------------------------------------------------ inputs

    def frame(self, now_ns: int, pts_s: float, luma_mean: float, luma_std: float,
              change: float | None) -> list[Alert]:
        """A frame was kept. ``change``: mean abs difference to the previous kept frame's
        thumbnail (None for the first)."""
        out: list[Alert] = []
        if self._last_frame_ns is not None:
            self._gaps_ns.append(max(0, now_ns - self._last_frame_ns))
        self._last_frame_ns = now_ns
        self._media_s = pts_s
        if self._prev_pts_s is None:
            self._prev_pts_s = pts_s
        if not self._source_down:
            out += self._end(STALLED)
        lim = self.limits
        dark = luma_mean < lim.black_luma or luma_std < lim.blank_std
        if dark:
            if self._dark_since_s is None:
                self._dark_since_s = pts_s
            self._dark_kind = "black picture" if luma_mean < lim.black_luma else "blank (uniform) picture"
            if pts_s - self._dark_since_s >= lim.blank_s:
                out += self._start(BLACK, f"{self._dark_kind} for {lim.blank_s:g} s or more", self._dark_since_s)
        else:
            self._dark_since_s = None
            out += self._end(BLACK)
        still = change is not None and change < lim.frozen_diff
        if still and not dark:  # a black picture is reported as black, not as frozen too
            if self._still_since_s is None:
                self._still_since_s = self._prev_pts_s  # the still run began at the previous frame
            if pts_s - self._still_since_s >= lim.frozen_s:
                out += self._start(FROZEN, f"the picture has not changed for {lim.frozen_s:g} s or more",
                                   self._still_since_s)
        else:
            self._still_since_s = None
            out += self._end(FROZEN)
        self._prev_pts_s = pts_s
        return out

    def audio(self, now_ns: int) -> list[Alert]:
        """Audio arrived on a stream that shows no picture: the source is alive (no picture checks)."""
        out: list[Alert] = []
        if self._last_frame_ns is not None:
            self._gaps_ns.append(max(0, now_ns - self._last_frame_ns))
        self._last_frame_ns = now_ns
        if not self._source_down:
            out += self._end(STALLED)
        return out

    def status(self, state: StreamState, now_ns: int) -> list[Alert]:
        down = state in (StreamState.STALLED, StreamState.RECONNECTING)
        self._source_down = down
        if down:
            return self._start(STALLED, f"source {state.value}")
        if state in (StreamState.ENDED, StreamState.ERROR):
            return self.close()
        return []

    def reconnect(self, now_ns: int) -> list[Alert]:
        self._reconnects.append(now_ns)
        return self._check_reconnects(now_ns)

    def drop(self, now_ns: int, count: int = 1) -> list[Alert]:
        self._drops.append((now_ns, count))
        self._drop_total += count
        return self._check_drops(now_ns)

    def tick(self, now_ns: int) -> list[Alert]:
        """Periodic check (the shell calls it every fraction of a second)."""
        out = self._check_reconnects(now_ns) + self._check_drops(now_ns)
        if self._last_frame_ns is not None and STALLED not in self._open:
            interval_ns = statistics.median(self._gaps_ns) if len(self._gaps_ns) >= 3 else 0
            limit_ns = max(self.limits.stalled_frames * interval_ns, self.limits.min_stalled_s * _NS)
            silent_ns = now_ns - self._last_frame_ns
            if silent_ns >= limit_ns:
                out += self._start(STALLED, f"no frame for {silent_ns / _NS:.1f} s")
        return out

    def close(self) -> list[Alert]:
        """The stream ended or was removed: every open alert ends."""
        return [a for rule in list(self._open) for a in self._end(rule)]

    # ------------------------------------------------------------------ conditions

    def _check_reconnects(self, now_ns: int) -> list[Alert]:
        lim = self.limits
        while self._reconnects and now_ns - self._reconnects[0] > lim.storm_window_s * _NS:
            self._reconnects.popleft()
        n = len(self._reconnects)
        if n > lim.storm_reconnects:
            return self._start(RECONNECTS, f"{n} reconnects in the last {lim.storm_window_s:g} s")
        if n <= lim.storm_reconnects // 2:
            return self._end(RECONNECTS)
        return []

    def _check_drops(self, now_ns: int) -> list[Alert]:
        while self._drops and now_ns - self._drops[0][0] > 60 * _NS:
            self._drop_total -= self._drops.popleft()[1]
        limit = self.limits.max_drops_per_min
        if self._drop_total > limit:
            return self._start(BEHIND, f"{self._drop_total} frames/windows dropped in the last minute")
        if self._drop_total <= limit / 2:
            return self._end(BEHIND)
        return []

    def _start(self, rule: str, detail: str, since_s: float | None = None) -> list[Alert]:
        if rule in self._open:
            return []
        alert = Alert(self._make_id(), self.stream, rule, AlertPhase.START, SEVERITY[rule], None,
                      self._media_s if since_s is None else since_s, None, detail)
        self._open[rule] = alert
        return [alert]

    def _end(self, rule: str) -> list[Alert]:
        alert = self._open.pop(rule, None)
        if alert is None:
            return []
        return [Alert(alert.id, self.stream, rule, AlertPhase.END, alert.severity, None, alert.start_s,
                      max(alert.start_s, self._media_s), alert.detail)]
