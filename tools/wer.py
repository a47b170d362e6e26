"""Scoring speech transcripts against :mod:`tools.speech_media` ground truth.

- :func:`normalize`: our small English normaliser, applied to reference and hypothesis alike:
  lowercase, curly quotes straightened, ``&``/``%`` and the abbreviations Whisper writes
  (``Mr.``, ``Dr.``, ``OK`` …) spelled out, numbers written in digits (``10``, ``1,200``) spelled
  out in words (``21st`` as an ordinal), hyphens and slashes split words, other punctuation
  dropped (an apostrophe inside a word stays: ``don't``), hesitations (``um``, ``uh``) dropped,
  whitespace collapsed.
- :func:`word_error_rate`: WER with substitutions, deletions and insertions, computed by
  ``jiwer`` (its Levenshtein alignment) on normalised text.
- :func:`words_in_quiet`: emitted words whose media time falls inside a stretch of the truth
  where nothing is said (inserted silence or noise). Whisper's word times stretch a sentence's
  first and last words across the pause next to them, so this also counts real words;
  :func:`hallucinations_in_quiet` counts only the words the WER alignment calls insertions.

Pure functions, no I/O except :func:`load_truth`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jiwer

_SPELLED = {
    "mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint", "vs": "versus",
    "etc": "et cetera", "ok": "okay", "&": "and", "%": "percent",
}
_HESITATIONS = frozenset({"um", "umm", "uh", "uhh", "er", "erm", "ah", "hmm", "mm"})
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((1_000_000_000, "billion"), (1_000_000, "million"), (1_000, "thousand"))


def number_words(n: int) -> str:
    """A non-negative integer in English words, without "and": ``121`` → ``one hundred twenty one``."""
    if n < 0:
        raise ValueError("non-negative integers only")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {number_words(rest)}" if rest else "")
    for scale, name in _SCALES:
        if n >= scale:
            high, rest = divmod(n, scale)
            return f"{number_words(high)} {name}" + (f" {number_words(rest)}" if rest else "")
    raise AssertionError("unreachable")


_ORDINAL_ENDINGS = {"one": "first", "two": "second", "three": "third", "five": "fifth",
                    "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}


def ordinal_words(n: int) -> str:
    """``21`` → ``twenty first``; ``40`` → ``fortieth``."""
    *head, last = number_words(n).split()
    if last in _ORDINAL_ENDINGS:
        last = _ORDINAL_ENDINGS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join([*head, last])


_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                         "\u2013": "-", "\u2014": "-"})
_NUMBER = re.compile(r"(\d{1,3}(?:,\d{3})+|\d+)(st|nd|rd|th)?\b")


def _spell_number(match: re.Match[str]) -> str:
    n = int(match.group(1).replace(",", ""))
    return f" {ordinal_words(n) if match.group(2) else number_words(n)} "


def normalize(text: str) -> str:
    """Our normalised form of English text (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES).lower()
    text = re.sub(r"[&%]", lambda m: f" {_SPELLED[m.group(0)]} ", text)
    text = _NUMBER.sub(_spell_number, text)
    text = re.sub(r"[-/]", " ", text)
    words = []
    for raw in text.split():
        word = re.sub(r"[^\w']", "", raw).strip("'").replace("_", "")
        if not word or word in _HESITATIONS:
            continue
        words.extend(_SPELLED.get(word, word).split())
    return " ".join(words)


@dataclass(frozen=True)
class WerResult:
    wer: float  # (S + D + I) / reference words
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    reference_words: int
    hypothesis_words: int


def word_error_rate(reference: str | Sequence[str], hypothesis: str | Sequence[str]) -> WerResult:
    """WER of ``hypothesis`` against ``reference`` after :func:`normalize`; a sequence of texts is
    scored as one text (joined by spaces). An empty reference scores every hypothesis word as an
    insertion (``wer`` is then the insertion count, or 0.0 when both are empty)."""
    ref = normalize(reference if isinstance(reference, str) else " ".join(reference))
    hyp = normalize(hypothesis if isinstance(hypothesis, str) else " ".join(hypothesis))
    ref_n, hyp_n = len(ref.split()), len(hyp.split())
    if ref_n == 0:
        return WerResult(float(hyp_n), 0, 0, hyp_n, 0, 0, hyp_n)
    if hyp_n == 0:
        return WerResult(1.0, 0, ref_n, 0, 0, ref_n, 0)
    out = jiwer.process_words(ref, hyp)
    return WerResult(float(out.wer), out.substitutions, out.deletions, out.insertions, out.hits,
                     ref_n, hyp_n)


@dataclass(frozen=True)
class QuietWord:
    text: str
    start_s: float
    end_s: float
    kind: str  # the stretch it fell in: "silence" or "noise"


def words_in_quiet(words: Iterable[Any], quiet: Iterable[Any], *, margin_s: float = 0.25
                   ) -> list[QuietWord]:
    """The emitted ``words`` whose media time (the middle of ``start_s``–``end_s``) lies inside a
    quiet stretch shrunk by ``margin_s`` at each end (timestamps of a word at a stretch's edge
    are allowed that much slack). Words and stretches are objects with ``start_s``/``end_s``
    attributes (a :class:`~streamcap.core.types.SpeechWord` in media time) or dicts with those
    keys; a stretch's ``kind`` defaults to ``"silence"``."""
    def get(item: Any, key: str, default: Any = None) -> Any:
        return item.get(key, default) if isinstance(item, dict) else getattr(item, key, default)

    stretches = [(float(get(q, "start_s")) + margin_s, float(get(q, "end_s")) - margin_s,
                  str(get(q, "kind", "silence"))) for q in quiet]
    found = []
    for word in words:
        start, end = float(get(word, "start_s")), float(get(word, "end_s"))
        middle = (start + end) / 2.0
        for lo, hi, kind in stretches:
            if lo <= middle <= hi:
                found.append(QuietWord(str(get(word, "text", "")), start, end, kind))
                break
    return found


def inserted_words(reference: str, words: Sequence[Any]) -> list[Any]:
    """The emitted ``words`` (objects or dicts with ``text``) that the WER alignment against
    ``reference`` counts as insertions: words nobody said. A word that normalises to several
    tokens is inserted when any of its tokens is; one that normalises to nothing never is."""
    def text_of(item: Any) -> str:
        return str(item.get("text", "") if isinstance(item, dict) else getattr(item, "text", ""))

    owner: list[int] = []  # the word index of each normalised token
    for i, word in enumerate(words):
        owner += [i] * len(normalize(text_of(word)).split())
    ref = normalize(reference)
    if not owner:
        return []
    if not ref:
        return list(words)
    hyp = " ".join(normalize(text_of(w)) for w in words).split()
    out = jiwer.process_words(ref, " ".join(hyp))
    hit = sorted({owner[j] for chunk in out.alignments[0] if chunk.type == "insert"
                  for j in range(chunk.hyp_start_idx, chunk.hyp_end_idx)})
    return [words[i] for i in hit]


def hallucinations_in_quiet(reference: str, words: Sequence[Any], quiet: Iterable[Any], *,
                            margin_s: float = 0.25) -> list[QuietWord]:
    """Words nobody said (:func:`inserted_words`) whose media time falls in a quiet stretch
    (:func:`words_in_quiet`). Unlike :func:`words_in_quiet` alone, a real word whose timestamps
    spread into the silence next to it (Whisper's word times stretch the first and last words of
    a sentence across a pause) is not counted."""
    return words_in_quiet(inserted_words(reference, words), quiet, margin_s=margin_s)


@dataclass(frozen=True)
class Truth:
    """What :func:`load_truth` reads from a ``tools.speech_media`` JSON."""

    clip: str
    text: str
    duration_s: float
    quiet: tuple[dict, ...]
    sentences: tuple[dict, ...]


def load_truth(path: Path | str) -> Truth:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("schema") != "streamcap-speech-truth/1":
        raise ValueError(f"{path}: not a streamcap speech truth file")
    return Truth(data["clip"], data["text"], float(data["duration_s"]), tuple(data["quiet"]),
                 tuple(data["sentences"]))
