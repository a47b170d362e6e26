"""Chapters: consecutive final captions merged into the parts of a long video. Pure.

Finals follow each other through a video; a chapter is a run of consecutive finals that talk
about the same thing. A final joins the open chapter when it starts within ``max_gap_s`` of the
chapter's end and is similar enough to the chapter's previous final (``similarity`` ≥
``min_similarity``; by default the overlap of their content words — :func:`word_overlap` — or any
similarity callable, such as the text embedder's cosine). The chapter's title is the text of its
final that lasted longest (the earliest on a tie). Chapters shorter than ``min_chapter_s`` are
folded into the chapter before them (a brief misreading does not make a chapter of its own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from streamcap.alerts.rules import words
from streamcap.core.types import Caption

STOPWORDS = frozenset("a an the and or of in on at to is are was were be it its this that with by for from "
                      "there here some".split())


@dataclass(frozen=True, slots=True)
class Chapter:
    start_s: float
    end_s: float
    title: str
    captions: int  # finals merged into it

    def to_dict(self) -> dict:
        return {"start": round(self.start_s, 3), "end": round(self.end_s, 3), "title": self.title,
                "captions": self.captions}


def word_overlap(a: str, b: str) -> float:
    """Jaccard overlap of the content words of two captions (0..1)."""
    wa = {w for w in words(a) if w not in STOPWORDS}
    wb = {w for w in words(b) if w not in STOPWORDS}
    if not wa and not wb:
        return 1.0
    return len(wa & wb) / len(wa | wb)


@dataclass
class _Open:
    start_s: float
    end_s: float
    last_text: str
    durations: dict[str, float]
    order: list[str]
    count: int

    def close(self) -> Chapter:
        title = max(self.order, key=lambda t: (self.durations[t], -self.order.index(t)))
        return Chapter(self.start_s, self.end_s, title, self.count)


def chapters_from_finals(finals: Iterable[Caption], *, min_similarity: float = 0.6, max_gap_s: float = 2.0,
                         min_chapter_s: float = 0.0,
                         similarity: Callable[[str, str], float] = word_overlap) -> list[Chapter]:
    """Chapters of ``finals`` (sorted by start here; empty texts skipped)."""
    chapters: list[Chapter] = []
    current: _Open | None = None
    for c in sorted((c for c in finals if c.text.strip()), key=lambda c: (c.start_s, c.seq)):
        length = max(0.0, c.end_s - c.start_s)
        if (current is not None and c.start_s - current.end_s <= max_gap_s
                and similarity(c.text, current.last_text) >= min_similarity):
            current.end_s = max(current.end_s, c.end_s)
            current.last_text = c.text
            if c.text not in current.durations:
                current.order.append(c.text)
            current.durations[c.text] = current.durations.get(c.text, 0.0) + length
            current.count += 1
            continue
        if current is not None:
            chapters.append(current.close())
        current = _Open(c.start_s, c.end_s, c.text, {c.text: length}, [c.text], 1)
    if current is not None:
        chapters.append(current.close())
    return _fold_short(chapters, min_chapter_s)


def _fold_short(chapters: list[Chapter], min_chapter_s: float) -> list[Chapter]:
    if min_chapter_s <= 0:
        return chapters
    out: list[Chapter] = []
    for ch in chapters:
        if out and ch.end_s - ch.start_s < min_chapter_s:
            prev = out[-1]
            out[-1] = Chapter(prev.start_s, max(prev.end_s, ch.end_s), prev.title, prev.captions + ch.captions)
        else:
            out.append(ch)
    return out


def chapters_since(chapters: list[Chapter], since_s: float) -> list[Chapter]:
    """The chapters still going on at or after ``since_s``."""
    return [ch for ch in chapters if ch.end_s > since_s]


def chapters_to_webvtt(chapters: list[Chapter]) -> str:
    """A WebVTT chapters track (``<track kind="chapters">``): one cue per chapter, its title."""
    from streamcap.outputs.subtitles import format_vtt_time

    parts = ["WEBVTT", ""]
    for i, ch in enumerate(chapters, 1):
        title = " ".join(ch.title.split()).replace("-->", "->")
        parts += [f"chapter-{i}", f"{format_vtt_time(round(ch.start_s * 1000))} --> "
                  f"{format_vtt_time(round(ch.end_s * 1000))}", title, ""]
    return "\n".join(parts)


def chapters_to_srt(chapters: list[Chapter]) -> str:
    from streamcap.outputs.subtitles import format_srt_time

    parts = []
    for i, ch in enumerate(chapters, 1):
        parts += [str(i), f"{format_srt_time(round(ch.start_s * 1000))} --> {format_srt_time(round(ch.end_s * 1000))}",
                  " ".join(ch.title.split()), ""]
    return "\n".join(parts)
