"""One subtitle stream from several caption tracks: speech as text, the picture as bracketed cues.

:func:`merge_tracks` turns the finals of a stream's tracks into :class:`~streamcap.outputs.subtitles.Cue`
values that :func:`~streamcap.outputs.subtitles.shape_cues` then shapes under the usual rules
(42 characters × 2 lines, 17 cps, 5/6–7 s):

- **Speech** finals are committed fragments with word times (``Caption.words``). Their words are
  packed again into readable cues: a cue ends at a sentence end once it holds half a line, at a
  pause of ``pause_s``, before it would exceed ``max_lines`` × ``max_line_chars`` characters or
  span more than ``max_duration_s``. A final without word times is one cue.
- **Picture** finals (any other track) become ``[text]`` cues, shown only where nobody speaks:
  each keeps the longest stretch of its span that no speech cue (with the gap and the minimum
  display of speech) covers; one that finds no stretch of ``min_duration_s`` is left out of the
  subtitle document (it stays on the wire and in JSON Lines). Speech is never displaced.

Pure, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from streamcap.core.types import SPEECH_TRACK, Caption, CaptionState, SpeechWord
from streamcap.outputs.subtitles import Cue, SubtitleRules, cues_from_finals

_SENTENCE_END = re.compile(r"[.!?…]['\")\]]*$")


def speech_cues(finals: Iterable[Caption], rules: SubtitleRules, pause_s: float = 1.2) -> list[Cue]:
    """Speech finals' words packed into cues (see the module docstring)."""
    words: list[SpeechWord] = []
    plain: list[Cue] = []
    for c in finals:
        if c.state is not CaptionState.FINAL or not c.text.strip():
            continue
        if c.words:
            words.extend(w for w in c.words if w.text.strip())
        else:
            plain.append(Cue(c.start_s, c.end_s, c.text))
    words.sort(key=lambda w: (w.start_s, w.end_s))
    limit = rules.max_line_chars * rules.max_lines
    cues: list[Cue] = []
    group: list[SpeechWord] = []

    def close() -> None:
        if group:
            cues.append(Cue(group[0].start_s, max(w.end_s for w in group), " ".join(w.text.strip() for w in group)))
            group.clear()

    for w in words:
        if group:
            text_len = sum(len(x.text.strip()) + 1 for x in group) + len(w.text.strip())
            prev = group[-1]
            if (text_len > limit or w.end_s - group[0].start_s > rules.max_duration_s
                    or w.start_s - prev.end_s > pause_s
                    or (_SENTENCE_END.search(prev.text.strip()) and text_len - len(w.text) > rules.max_line_chars // 2)):
                close()
        group.append(w)
    close()
    return sorted(cues + plain, key=lambda c: (c.start_s, c.end_s))


def _free_stretches(start: float, end: float, busy: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    out, t = [], start
    for b0, b1 in busy:
        if b1 <= t or b0 >= end:
            continue
        if b0 > t:
            out.append((t, b0))
        t = max(t, b1)
    if t < end:
        out.append((t, end))
    return out


def merge_tracks(finals: Iterable[Caption], rules: SubtitleRules) -> list[Cue]:
    """Cues of every track in one subtitle stream (speech text, ``[picture]`` cues in between)."""
    finals = list(finals)
    speech = speech_cues((c for c in finals if c.track == SPEECH_TRACK), rules)
    margin = rules.min_gap_s
    # what a speech cue occupies once shaped: at least the minimum display, then the gap
    busy = sorted((c.start_s - margin, max(c.end_s, c.start_s + rules.min_duration_s) + margin) for c in speech)
    scene: list[Cue] = []
    for c in cues_from_finals(f for f in finals if f.track != SPEECH_TRACK):
        free = _free_stretches(c.start_s, c.end_s, busy)
        best = max(free, key=lambda s: s[1] - s[0], default=None)
        if best is not None and best[1] - best[0] >= rules.min_duration_s and c.text.strip():
            scene.append(Cue(best[0], best[1], f"[{c.text.strip()}]"))
    return sorted(speech + scene, key=lambda c: (c.start_s, c.end_s))


__all__ = ["merge_tracks", "speech_cues"]
