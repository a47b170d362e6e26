"""Streaming speech recognition for one stream's speech track: audio in, speech windows out;
transcripts in, partial and final speech captions out. Pure (no clock, no I/O, no asyncio).

The policy is whisper_streaming's (``OnlineASRProcessor`` + ``HypothesisBuffer``), gated by a
voice-activity detector:

- Audio (with the VAD's speech probability of each chunk) goes into a buffer that starts at
  ``buffer_start_s`` on the stream's media time; while nobody speaks only the last ``pad_s`` is
  kept, so silence and noise never reach Whisper (and Whisper never says "you" to them).
- While speech goes on, every ``min_chunk_s`` of new audio the whole buffer (at most
  ``max_window_s``) becomes one :class:`~streamcap.core.types.Window` with ``audio`` and the
  initial prompt (text committed before the buffer). One window per stream is in flight at a time:
  each window depends on what the previous one committed; the next is planned by the next chunk.
- **LocalAgreement-2**: a word is committed (FINAL) once two successive hypotheses agree on it
  (the longest common prefix of the new hypothesis and the previous one's uncommitted tail) and
  it ends at least ``commit_margin_s`` before the audio heard (a word at the very end may be cut
  off, and two windows a short chunk apart can agree on the same wrong guess); the rest stays
  tentative (PARTIAL). With ``agree_gap_s`` > 0 the new hypothesis is compared with the latest one
  whose audio ended at least that long before, so windows may come every short chunk (quick
  partials) while agreement still needs two clearly different hearings. Words from before the committed end are dropped, and an n-gram
  (1–5 words) repeating the committed tail at the seam is removed.
- **End of an utterance**: once the VAD has heard ``end_silence_s`` of silence after speech, one
  last window (``final_pass``) covers the utterance and all its words are committed at once — the
  speaker stopped, nothing later can change them. This is what keeps final latency low.
- **No-speech gating**: a transcript whose ``no_speech_prob`` is above ``no_speech_threshold``
  and whose ``avg_logprob`` is below ``logprob_threshold`` (Whisper's own rule), or whose
  ``no_speech_prob`` alone reaches ``no_speech_alone`` (measured: ≥ 0.79 on silence and noise,
  ≤ 0.22 on speech; Whisper's "you" on silence has an avg_logprob near -0.8), counts as silence.
- **Trimming**: once the buffer is longer than ``trim_s`` it is cut at the end of the last
  committed sentence (else the last committed word); a (nearly) full buffer is heard at once and,
  if two hypotheses still do not agree, commits what it heard up to a second before its end.
- **Bounded**: the buffer holds ``max_window_s`` of audio. A live stream whose buffer is full
  drops its oldest audio (counted in :attr:`SpeechPolicy.dropped_s`, reason ``speech_overflow``);
  a file's reader is told to wait (:meth:`SpeechPolicy.room_s`) and nothing is lost.

Each caption carries its words with start/end on media time (``Caption.words``), kept inside
the speech the VAD heard (:func:`clamp_to_speech` for cross-attention-aligned times,
:func:`warp_onto_speech` for coarse ones); its ``seq`` comes from the stream's shared counter. Not thread-safe: one owner calls every method.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from streamcap.core.types import (
    AUDIO_RATE,
    SPEECH_TRACK,
    AudioChunk,
    Caption,
    CaptionState,
    SpeechWord,
    Transcript,
    Window,
)

_SENTENCE_END = re.compile(r"[.!?…。！？]['\")\]]*$")
_WORD_CHARS = re.compile(r"[^\w']+")


@dataclass(frozen=True, slots=True)
class SpeechSettings:
    """The speech track's policy (built from ``[speech]`` in the config, the only defaults)."""

    min_chunk_s: float  # new audio between two windows while someone speaks
    max_window_s: float  # the most audio one window holds (Whisper: 30 s); the buffer's bound
    trim_s: float  # a buffer longer than this is cut at the last committed sentence end
    vad_threshold: float  # a chunk whose speech probability reaches this is speech
    end_silence_s: float  # silence after speech that ends an utterance
    pad_s: float  # audio kept before speech starts
    no_speech_threshold: float
    logprob_threshold: float
    no_speech_alone: float  # a no-speech probability this high is silence whatever the log-prob
    prompt_chars: int
    commit_margin_s: float = 0.0  # a word ending this close to its window's end is never committed
    # by agreement (it may be cut off: two windows a short chunk apart agree on the same wrong word)
    agree_gap_s: float = 0.0  # > 0: agree with the latest hypothesis whose audio ended at least this
    # long before (windows can come every short chunk for quick partials while agreement still
    # compares hypotheses that heard clearly different audio)  # committed text given as the initial prompt

    def __post_init__(self) -> None:
        if not 0 < self.min_chunk_s < self.max_window_s:
            raise ValueError("speech: min_chunk_s must be above 0 and below max_window_s")
        if not self.min_chunk_s <= self.trim_s <= self.max_window_s:
            raise ValueError("speech: trim_s must lie between min_chunk_s and max_window_s")
        if not 0 <= self.pad_s < self.min_chunk_s + self.max_window_s:
            raise ValueError("speech: pad_s out of range")


_SPAN_BRIDGE_S = 0.3  # speech chunks closer than this are one stretch of speech
_SPAN_PAD_S = 0.15  # the VAD hears a word's edges late: each stretch is widened this much
_UNHEARD_S = 0.5  # speech after an utterance's last committed word that makes it heard again


def warp_onto_speech(words: Sequence[SpeechWord], spans: Sequence[tuple[float, float]]) -> list[SpeechWord]:
    """Move word times onto the stretches of speech the VAD heard.

    Whisper's times are coarse (segment timestamps, words placed by length inside them), and a
    segment often runs on into the silence after it. Between the first word's start and the
    last word's end, time is mapped so that it advances only where there was speech: a word at
    a fraction ``f`` of that span lands at fraction ``f`` of the speech heard in it. Without
    speech in the span the words are returned as they are."""
    if not words or not spans:
        return list(words)
    first, last = words[0].start_s, max(w.end_s for w in words)
    clipped = sorted((max(a, first), min(b, last)) for a, b in spans if b > first and a < last)
    merged: list[list[float]] = []
    for a, b in clipped:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        elif b > a:
            merged.append([a, b])
    total = sum(b - a for a, b in merged)
    if total <= 0 or last <= first:
        return list(words)

    def warp(t: float) -> tuple[float, int]:
        x = (min(max(t, first), last) - first) / (last - first) * total
        for i, (a, b) in enumerate(merged):
            if x <= b - a:
                return a + x, i
            x -= b - a
        return merged[-1][1], len(merged) - 1

    out = []
    for w in words:
        start, i = warp(w.start_s)
        end, j = warp(w.end_s)
        if j != i:  # a word does not run across a silence: it ends with the speech it starts in
            end = merged[i][1]
        out.append(replace(w, start_s=start, end_s=max(start, end)))
    return out


def clamp_to_speech(words: Sequence[SpeechWord], spans: Sequence[tuple[float, float]]) -> list[SpeechWord]:
    """Keep aligned word times inside the speech the VAD heard.

    Cross-attention alignment is good inside a sentence but stretches the word before a pause
    into the silence after it, and starts the word after a pause too early. A word overlapping
    stretches of speech is cut to the one it overlaps most; a word overlapping none is left as is."""
    out = []
    for w in words:
        best, most = None, 0.0
        for a, b in spans:
            overlap = min(b, w.end_s) - max(a, w.start_s)
            if overlap > most or (overlap == most == 0.0 and best is None and a <= w.start_s <= b):
                best, most = (a, b), overlap
        if best is None:
            out.append(w)
            continue
        start = min(max(w.start_s, best[0]), best[1])
        out.append(replace(w, start_s=start, end_s=max(start, min(w.end_s, best[1]))))
    return out


def word_key(text: str) -> str:
    """The form words are compared in: lowercase, punctuation dropped ("Hello," == "hello")."""
    return _WORD_CHARS.sub("", text.lower())


def common_prefix(a: Sequence[SpeechWord], b: Sequence[SpeechWord]) -> int:
    """How many leading words ``a`` and ``b`` agree on (compared by :func:`word_key`)."""
    n = 0
    for x, y in zip(a, b):
        if word_key(x.text) != word_key(y.text):
            break
        n += 1
    return n


def drop_seam_repeat(committed_tail: Sequence[SpeechWord], new: Sequence[SpeechWord], max_n: int = 5) -> int:
    """How many leading words of ``new`` repeat the end of the committed text (the longest
    n-gram, n ≤ ``max_n``, that is both the committed tail and the start of ``new``)."""
    for n in range(min(max_n, len(committed_tail), len(new)), 0, -1):
        if [word_key(w.text) for w in committed_tail[-n:]] == [word_key(w.text) for w in new[:n]]:
            return n
    return 0


class SpeechPolicy:
    """One stream's streaming recogniser state; see the module docstring."""

    def __init__(self, stream: str, settings: SpeechSettings, *, live: bool, seq: Iterator[int],
                 track: str = SPEECH_TRACK) -> None:
        self.stream = stream
        self.track = track
        self.settings = settings
        self.live = live
        self._seq = seq
        self._capacity = int(round(settings.max_window_s * AUDIO_RATE))
        self._audio = np.zeros(self._capacity, dtype=np.float32)
        self._n = 0
        self._start_s: float | None = None  # media time of self._audio[0]
        self._capture_ns = 0
        self._index = 0
        self._in_flight: Window | None = None
        self._last_request_end_s = -math.inf
        # voice activity
        self._utterance_open = False
        self._last_speech_end_s = -math.inf
        self._speech_spans: list[list[float]] = []  # [start, end] media times the VAD heard speech
        self._retried = False  # an utterance's final pass was repeated once for words it missed
        # LocalAgreement state
        self._committed: list[SpeechWord] = []  # every committed word still needed (tail + prompt)
        self._recent: deque[SpeechWord] = deque(maxlen=8)  # the last committed words, for repeats
        self._history: deque[tuple[float, list[SpeechWord]]] = deque(maxlen=16)  # (window end, words)
        self._committed_end_s = -math.inf
        self._hypothesis: list[SpeechWord] = []  # the previous hypothesis' uncommitted tail
        self._last_partial = ""
        self._prompt_words: list[str] = []  # committed text that left the buffer, newest last
        #: seconds of audio dropped because a live buffer was full (the caller counts them)
        self.dropped_s = 0.0

    # ------------------------------------------------------------------ reading

    @property
    def in_flight(self) -> bool:
        return self._in_flight is not None

    @property
    def buffer_start_s(self) -> float | None:
        return self._start_s

    @property
    def buffered_s(self) -> float:
        return self._n / AUDIO_RATE

    @property
    def end_s(self) -> float | None:
        return None if self._start_s is None else self._start_s + self.buffered_s

    @property
    def tentative(self) -> tuple[SpeechWord, ...]:
        return tuple(self._hypothesis)

    def room_s(self) -> float:
        """Audio the buffer can still take without dropping (a file's reader waits below a chunk)."""
        return (self._capacity - self._n) / AUDIO_RATE

    def prompt(self) -> str:
        text = " ".join(self._prompt_words)
        return text[-self.settings.prompt_chars:].lstrip() if self.settings.prompt_chars > 0 else ""

    # ------------------------------------------------------------------ audio in

    def feed(self, chunk: AudioChunk, speech_prob: float) -> Window | None:
        """Append one chunk (with the VAD's speech probability over it); return the window due
        now, if any (at most one is in flight)."""
        samples = np.asarray(chunk.samples, dtype=np.float32).reshape(-1)
        if not len(samples) or not math.isfinite(chunk.pts_s):
            return None
        self._append(chunk.pts_s, samples)
        self._capture_ns = max(self._capture_ns, chunk.capture_ns)
        end_s = self.end_s
        assert end_s is not None
        if speech_prob >= self.settings.vad_threshold:
            if not self._utterance_open and not self._hypothesis and self._in_flight is None:
                assert self._start_s is not None  # the first window after min_chunk_s of buffer
                self._last_request_end_s = self._start_s
            self._last_speech_end_s = end_s
            self._utterance_open = True
            start_s = end_s - len(samples) / AUDIO_RATE
            spans = self._speech_spans
            if spans and start_s - spans[-1][1] <= _SPAN_BRIDGE_S:
                spans[-1][1] = end_s
            else:
                spans.append([start_s, end_s])
        return self._plan()

    def _append(self, pts_s: float, samples: np.ndarray) -> None:
        if self._start_s is None:
            self._start_s = pts_s
        end_s = self._start_s + self.buffered_s
        gap = int(round((pts_s - end_s) * AUDIO_RATE))
        if gap < 0:  # overlap with what we have (a re-sent chunk): keep only the new part
            samples = samples[-gap:]
        elif gap > 0:
            if gap >= self._capacity or (not self._utterance_open and not self._hypothesis):
                # a long gap (or one in silence): start the buffer afresh at the new audio
                self._trim_to(end_s)
                self._start_s = pts_s - self.buffered_s
            else:  # a short gap inside speech: silence keeps the timeline
                samples = np.concatenate([np.zeros(gap, dtype=np.float32), samples])
        if not len(samples):
            return
        if len(samples) > self._capacity:  # more than a whole buffer at once: only the newest fits
            self._drop_oldest(self._n + len(samples) - self._capacity)
            samples = samples[-self._capacity:]
        over = self._n + len(samples) - self._capacity
        if over > 0:
            self._drop_oldest(over)
        self._audio[self._n:self._n + len(samples)] = samples
        self._n += len(samples)

    def _drop_oldest(self, count: int) -> None:
        count = min(count, self._n)
        if count <= 0:
            return
        self.dropped_s += count / AUDIO_RATE
        self._shift(count)

    def _shift(self, count: int) -> None:
        assert self._start_s is not None
        self._audio[:self._n - count] = self._audio[count:self._n]
        self._n -= count
        self._start_s += count / AUDIO_RATE

    def _trim_to(self, t_s: float) -> None:
        """Forget the audio before media time ``t_s``; committed words before it become prompt."""
        if self._start_s is None:
            return
        count = min(self._n, max(0, int(math.floor((t_s - self._start_s) * AUDIO_RATE))))
        if count:
            self._shift(count)
        self._speech_spans = [sp for sp in self._speech_spans if sp[1] > self._start_s]
        keep = []
        for w in self._committed:
            if w.end_s <= self._start_s + 1e-6:
                self._prompt_words.append(w.text)
            else:
                keep.append(w)
        self._committed = keep
        if len(self._prompt_words) > 4 * self.settings.prompt_chars:
            del self._prompt_words[:len(self._prompt_words) - self.settings.prompt_chars]

    # ------------------------------------------------------------------ planning

    def _plan(self) -> Window | None:
        if self._in_flight is not None or self._start_s is None:
            return None
        s = self.settings
        end_s = self.end_s
        assert end_s is not None
        if not self._utterance_open and not self._hypothesis:
            self._trim_to(end_s - s.pad_s)  # silence: keep only the lead-in of the next words
            return None
        ended = end_s - self._last_speech_end_s >= s.end_silence_s
        if ended:
            return self._window(final_pass=True)
        if end_s - self._last_request_end_s >= s.min_chunk_s or self._is_full(self._n):
            return self._window(final_pass=False)  # (a full buffer must be heard to be trimmed)
        return None

    def _is_full(self, samples: int) -> bool:
        return samples >= self._capacity - AUDIO_RATE // 10

    def plan(self) -> Window | None:
        """The window due now, if any (after a result: the audio that came meanwhile)."""
        return self._plan()

    def flush(self) -> Window | None:
        """The source ended: one last window committing every word heard, or None."""
        if self._in_flight is not None or self._start_s is None or not self._n:
            return None
        if not self._utterance_open and not self._hypothesis:
            return None
        return self._window(final_pass=True)

    def _window(self, *, final_pass: bool) -> Window:
        assert self._start_s is not None
        end_s = self._start_s + self.buffered_s
        w = Window(stream=self.stream, index=self._index, start_s=self._start_s, end_s=end_s, frames=(),
                   track=self.track, audio=self._audio[:self._n].copy(), prompt=self.prompt(),
                   audio_capture_ns=self._capture_ns, final_pass=final_pass)
        self._index += 1
        self._in_flight = w
        self._last_request_end_s = end_s
        return w

    def dropped(self, window: Window) -> None:
        """A window will get no result (engine busy or failed): the next chunk plans it again."""
        if self._in_flight is window:
            self._in_flight = None
            self._last_request_end_s = -math.inf

    # ------------------------------------------------------------------ results

    def result(self, window: Window, transcript: Transcript) -> list[Caption]:
        """The transcript of the window in flight: the captions to publish now (FINAL before
        PARTIAL). The next window is planned by the next :meth:`feed` (or :meth:`flush`)."""
        if self._in_flight is not window:
            raise ValueError(f"stream {self.stream!r}: result for window {window.index} that is not in flight")
        self._in_flight = None
        s = self.settings
        silent = ((transcript.no_speech_prob > s.no_speech_threshold and transcript.avg_logprob < s.logprob_threshold)
                  or transcript.no_speech_prob >= s.no_speech_alone)
        words = [] if silent else self._placed(window, transcript)
        words = [w for w in words if w.start_s >= self._committed_end_s - 0.1]
        if words:
            # the committed text said again at the start (a seam, or Whisper echoing its prompt at
            # the start of the next utterance): a single word only right at the seam
            repeat = drop_seam_repeat(list(self._recent), words)
            if repeat >= 2 or (repeat == 1 and abs(words[0].start_s - self._committed_end_s) < 1.0):
                del words[:repeat]
        if window.final_pass:
            commit, self._hypothesis = words, []
            self._history.clear()
        else:
            if s.agree_gap_s > 0:
                ref = next((ws for end, ws in reversed(self._history) if end <= window.end_s - s.agree_gap_s + 1e-9),
                           None)
                ref_words = [] if ref is None else [w for w in ref if w.start_s >= self._committed_end_s - 0.1]
                n = common_prefix(words, ref_words)
                self._history.append((window.end_s, list(words)))
            else:
                n = common_prefix(words, self._hypothesis)
            while n and words[n - 1].end_s > window.end_s - s.commit_margin_s:
                n -= 1  # too close to the end of what was heard
            commit, self._hypothesis = words[:n], words[n:]
            if not commit and window.audio is not None and self._is_full(len(window.audio)):
                # a full buffer that never agrees: commit what is older than its last second
                cut = window.end_s - 1.0
                commit = [w for w in self._hypothesis if w.end_s <= cut]
                self._hypothesis = self._hypothesis[len(commit):]
        out: list[Caption] = []
        if commit:
            out.append(self._final(commit, window))
        partial = " ".join(w.text for w in self._hypothesis)
        if partial and partial != self._last_partial:
            out.append(self._caption(CaptionState.PARTIAL, self._hypothesis, window))
        self._last_partial = partial
        self._after_result(window)
        return out

    def _placed(self, window: Window, transcript: Transcript) -> list[SpeechWord]:
        """The transcript's words on media time, inside the window; words timed only coarsely
        (not ``aligned``) are moved onto the speech the VAD heard (:func:`warp_onto_speech`)."""
        words = self._placed_raw(window, transcript)
        spans = [(a - _SPAN_PAD_S, b + _SPAN_PAD_S) for a, b in self._speech_spans]
        if transcript.aligned:
            return clamp_to_speech(words, spans)
        return warp_onto_speech(words, spans)

    def _placed_raw(self, window: Window, transcript: Transcript) -> list[SpeechWord]:
        out = []
        for w in transcript.words:
            text = w.text.strip()
            if not text or not word_key(text):
                if text and out:  # lone punctuation joins the word before it
                    out[-1] = replace(out[-1], text=out[-1].text + text)
                continue
            start = window.start_s + max(0.0, w.start_s)
            end = min(window.end_s, window.start_s + max(w.end_s, w.start_s))
            if start >= window.end_s:
                continue  # beyond the audio: a hallucination
            out.append(SpeechWord(text, start, max(start, end), w.prob))
        return out

    def _final(self, words: list[SpeechWord], window: Window) -> Caption:
        self._committed.extend(words)
        self._recent.extend(words)
        self._committed_end_s = max(self._committed_end_s, words[-1].end_s)
        return self._caption(CaptionState.FINAL, words, window)

    def _caption(self, state: CaptionState, words: Sequence[SpeechWord], window: Window) -> Caption:
        score = float(np.mean([math.log(max(w.prob, 1e-9)) for w in words])) if words else 0.0
        return Caption(stream=self.stream, seq=next(self._seq), state=state,
                       text=" ".join(w.text for w in words), start_s=words[0].start_s,
                       end_s=max(w.end_s for w in words), score=min(0.0, score), window_index=window.index,
                       capture_ns=window.audio_capture_ns, track=self.track, words=tuple(words))

    def _after_result(self, window: Window) -> None:
        s = self.settings
        end_s = self.end_s
        assert end_s is not None and self._start_s is not None
        if window.final_pass:
            heard_to = max(self._committed_end_s, window.start_s)
            unheard_s = sum(max(0.0, min(b, window.end_s) - max(a, heard_to + _SPAN_PAD_S))
                            for a, b in self._speech_spans)
            if unheard_s >= _UNHEARD_S and not self._retried:
                # Whisper stopped before the end of what was said (it may end a window at a
                # timestamp): hear the rest once more from the last committed word
                self._retried = True
                self._trim_to(max(heard_to - s.pad_s, self._start_s))
                self._last_request_end_s = -math.inf
                return
            self._retried = False
            if self._last_speech_end_s <= window.end_s:  # nobody spoke since: the utterance is over
                self._utterance_open = False
            cut = max(self._committed_end_s, window.end_s - s.pad_s)
            self._trim_to(min(cut, end_s))
            return
        if self.buffered_s <= s.trim_s:
            return
        sentence_ends = [w.end_s for w in self._committed if _SENTENCE_END.search(w.text)]
        if sentence_ends:
            self._trim_to(sentence_ends[-1])
        elif self._committed:
            self._trim_to(self._committed[-1].end_s)

    def finish(self) -> list[Caption]:
        """The stream ended and no window is coming back: commit the tentative words left."""
        if not self._hypothesis:
            return []
        words, self._hypothesis = self._hypothesis, []
        self._utterance_open = False
        dummy = Window(self.stream, self._index, words[0].start_s, words[-1].end_s, (), self.track,
                       audio_capture_ns=self._capture_ns)
        return [self._final(words, dummy)]


__all__ = ["SpeechPolicy", "SpeechSettings", "clamp_to_speech", "common_prefix", "drop_seam_repeat",
           "warp_onto_speech", "word_key"]
