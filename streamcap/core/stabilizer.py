"""Caption stabiliser: turns one engine result per window into PARTIAL and FINAL captions.

One :class:`CaptionStabilizer` per stream. It follows LocalAgreement (whisper_streaming's
``HypothesisBuffer``): a hypothesis is committed only once consecutive windows agree on it.
Here a hypothesis is a whole caption, compared after :func:`normalize_text`.

- Every window whose text differs from the previous partial yields a PARTIAL (live overlays);
  an unchanged scene does not repeat it. A scene describer's structured objects count as part of
  the partial: a window whose counts or motions changed (same text) yields one too.
- A text becomes FINAL when ``agree`` consecutive windows say it and it differs from the current
  final. A single odd window cannot flip the final (hysteresis), and a scene that stays the same
  never produces a second final.
- A final starts where the first window of its agreeing run starts (or where the previous final
  ends, if that is later: finals never overlap) and ends where the latest agreeing window ends.
  While windows keep agreeing with it its end is extended internally; once a final is closed
  (replaced by the next one, or by :meth:`CaptionStabilizer.flush`) its full span is available
  from :meth:`CaptionStabilizer.pop_closed_finals` — one subtitle cue per final.
- Scene cuts (optional): the caller may pass ``cut_s``, the media time of the latest picture cut
  at or before the window's start. A window that starts at or after a cut which happened during
  the current final holds no frame of the old scene, so it cannot be a blend of two scenes; once
  ``fresh_agree`` consecutive such windows agree, their text becomes final without waiting for
  ``agree`` (a window that straddles the cut is the usual reason a new scene needs one more
  window). Without cuts the rule is plain ``agree``.
- Windows agree when their normalised texts are equal, or, for results that carry one, their
  ``key`` (the scene describer's gist: coarse counts and main motion per kind of object); the
  final then shows the latest agreeing window's text. With ``refresh_s``, a final agreed by key
  that has lasted that long is followed by a new final (the same gist, the latest words) so a
  long steady scene is not one stale description.
- A result with empty text, or a score below ``min_score``, counts as disagreement: it breaks
  the agreeing run and yields no partial.
- ``seq`` is per stream and strictly increasing across partials and finals.

Pure: no asyncio, clock or I/O — times come in with each call, so replaying recorded or
simulated window results gives the same captions. Not thread-safe.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

from streamcap.core.types import VIDEO_TRACK, Caption, CaptionResult, CaptionState, SceneObject


def normalize_text(text: str) -> str:
    """The form captions are compared in: lowercase, whitespace collapsed, trimmed."""
    return " ".join(text.lower().split())


def objects_key(objects: tuple[SceneObject, ...]) -> tuple:
    """What of a window's objects a partial reports: labels, counts, motions (boxes move always)."""
    return tuple((o.label, o.count, o.motion) for o in objects)


@dataclass(slots=True)
class _Run:
    """Consecutive observed windows whose normalised texts are equal."""

    norm: str
    text: str  # raw text of the latest window of the run
    length: int
    start_s: float  # start of the first window of the run
    end_s: float  # end of the latest window of the run
    score_sum: float
    window_index: int
    capture_ns: int
    fresh: int = 0  # trailing windows of the run that start after a cut during the current final
    objects: tuple[SceneObject, ...] = ()  # the latest window's structured objects


class CaptionStabilizer:
    """Partial/final captions of one stream from per-window engine results."""

    def __init__(self, stream: str, agree: int, *, min_score: float = -math.inf,
                 fresh_agree: int | None = None, track: str = VIDEO_TRACK,
                 seq: Iterator[int] | None = None, refresh_s: float | None = None) -> None:
        if int(agree) != agree or agree < 1:
            raise ValueError(f"agree must be an integer >= 1, got {agree!r}")
        if fresh_agree is not None and (int(fresh_agree) != fresh_agree or not 1 <= fresh_agree <= agree):
            raise ValueError(f"fresh_agree must be an integer from 1 to agree, got {fresh_agree!r}")
        self._fresh_agree = None if fresh_agree is None else int(fresh_agree)
        if refresh_s is not None and not refresh_s > 0:
            raise ValueError(f"refresh_s must be None or > 0, got {refresh_s!r}")
        self._refresh_s = refresh_s
        if math.isnan(min_score):
            raise ValueError("min_score must not be NaN")
        self._stream = stream
        self._track = track
        # seq is per stream: the tracks of one stream share one counter
        self._seq: Iterator[int] = seq if seq is not None else itertools.count()
        self._agree = int(agree)
        self._min_score = float(min_score)
        self._last_window_index: int | None = None
        self._last_final_end_s = -math.inf  # finals never start before this
        self._closed: list[Caption] = []
        # a final published before a restart (see carry_over): the same words agreeing again
        # continue it instead of publishing it twice
        self._carried: Caption | None = None
        self._reset_segment()

    def _reset_segment(self) -> None:
        self._run: _Run | None = None
        self._final: Caption | None = None  # the open final, its span extended as windows agree
        self._final_norm: str | None = None
        self._last_partial_norm: tuple | None = None

    @property
    def stream(self) -> str:
        return self._stream

    @property
    def agree(self) -> int:
        return self._agree

    @property
    def track(self) -> str:
        return self._track

    @property
    def current_final(self) -> Caption | None:
        """The open final with its span extended to the latest window that agreed with it."""
        return self._final

    def carry_over(self, final: Caption) -> None:
        """Continue from ``final``, the last final an earlier run of this stream published (a
        stream worker restarted on another machine). Until another final is committed, a run of
        windows agreeing on the same words adopts it (same ``seq``, span from the new windows)
        and publishes nothing: viewers do not see the caption they already have again."""
        if final.stream != self._stream:
            raise ValueError(f"carry_over: a final of {final.stream!r}, not of {self._stream!r}")
        self._carried = final

    def observe(
        self, window_index: int, start_s: float, end_s: float, result: CaptionResult, capture_ns: int,
        cut_s: float | None = None,
    ) -> list[Caption]:
        """Feed one window's result; return the captions to publish now (partial first).

        Windows must come in increasing ``window_index`` order; gaps (skipped or failed
        windows) are allowed and do not break an agreeing run. ``cut_s``: the latest scene cut
        at or before ``start_s`` (see the module doc), or None.
        """
        if self._last_window_index is not None and window_index <= self._last_window_index:
            raise ValueError(
                f"stream {self._stream!r}: window {window_index} after window {self._last_window_index}"
            )
        if not end_s >= start_s:
            raise ValueError(f"stream {self._stream!r}: window {window_index} ends before it starts")
        self._last_window_index = window_index

        norm = result.key if result.key is not None else normalize_text(result.text)
        if not norm or not result.score >= self._min_score:
            self._run = None  # disagreement
            return []

        out: list[Caption] = []
        partial_key = (normalize_text(result.text), objects_key(result.objects))
        if partial_key != self._last_partial_norm:
            self._last_partial_norm = partial_key
            out.append(self._caption(CaptionState.PARTIAL, result.text, start_s, end_s, result.score,
                                     window_index, capture_ns, result.objects))

        fresh = (cut_s is not None and self._fresh_agree is not None and cut_s <= start_s + 1e-6
                 and (self._final is None or cut_s > self._final.start_s))
        run = self._run
        if run is not None and run.norm == norm:
            run.text, run.length, run.end_s = result.text, run.length + 1, end_s
            run.score_sum += result.score
            run.window_index, run.capture_ns = window_index, capture_ns
            run.fresh = run.fresh + 1 if fresh else 0
            run.objects = result.objects
        else:
            run = self._run = _Run(norm, result.text, 1, start_s, end_s, result.score, window_index,
                                   capture_ns, 1 if fresh else 0, result.objects)

        if (self._final is not None and norm == self._final_norm and self._refresh_s is not None
                and result.key is not None and end_s - self._final.start_s >= self._refresh_s
                and normalize_text(result.text) != normalize_text(self._final.text)):
            out.append(self._commit(run))  # the gist held, the words moved on: a new final
        elif self._final is not None and norm == self._final_norm:
            self._final = replace(self._final, end_s=max(self._final.end_s, end_s),
                                  window_index=window_index, capture_ns=capture_ns, objects=result.objects)
            self._last_final_end_s = self._final.end_s
        elif run.length >= self._agree or (self._fresh_agree is not None and run.fresh >= self._fresh_agree):
            carried, self._carried = self._carried, None
            if carried is not None and normalize_text(carried.text) == normalize_text(run.text):
                self._adopt(run, carried)
            else:
                out.append(self._commit(run))
        return out

    def flush(self, *, commit_pending: bool = False) -> list[Caption]:
        """End the segment (end of a file, or a stream restart): close the open final.

        With ``commit_pending`` a run of valid windows too short to agree yet (e.g. the last
        scene of a file) is committed as a final first, and returned. Afterwards the stabiliser
        starts afresh; ``seq`` keeps increasing and later finals still do not overlap earlier ones.
        """
        out: list[Caption] = []
        run = self._run
        if commit_pending and run is not None and run.norm != self._final_norm:
            out.append(self._commit(run))
        self._close_final()
        self._reset_segment()
        return out

    def pop_closed_finals(self) -> list[Caption]:
        """Finals closed since the last call, each with its full span, oldest first.

        They keep the ``seq`` they were published with: they are not new captions, they are
        the final span of captions already published (for subtitle cues).
        """
        closed, self._closed = self._closed, []
        return closed

    def _commit(self, run: _Run) -> Caption:
        self._close_final()
        start_s = min(max(run.start_s, self._last_final_end_s), run.end_s)
        final = self._caption(CaptionState.FINAL, run.text, start_s, run.end_s,
                              run.score_sum / run.length, run.window_index, run.capture_ns, run.objects)
        self._final, self._final_norm = final, run.norm
        self._last_final_end_s = final.end_s
        return final

    def _adopt(self, run: _Run, carried: Caption) -> None:
        """The carried final continues as the open one (nothing published)."""
        self._close_final()
        self._final = replace(carried, start_s=run.start_s, end_s=run.end_s, window_index=run.window_index,
                              capture_ns=run.capture_ns, objects=run.objects)
        self._final_norm = run.norm
        self._last_final_end_s = self._final.end_s

    def _close_final(self) -> None:
        if self._final is not None:
            self._closed.append(self._final)
        self._final, self._final_norm = None, None

    def _caption(self, state: CaptionState, text: str, start_s: float, end_s: float, score: float,
                 window_index: int, capture_ns: int, objects: tuple[SceneObject, ...] = ()) -> Caption:
        return Caption(stream=self._stream, seq=next(self._seq), state=state, text=text.strip(),
                       start_s=start_s, end_s=end_s, score=score, window_index=window_index,
                       capture_ns=capture_ns, track=self._track, objects=objects)
