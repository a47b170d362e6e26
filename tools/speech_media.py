"""Speech test media with ground truth: our own script spoken by espeak-ng, between silence and noise.

``python -m tools.speech_media --out DIR [--with-video]`` writes, for every clip of :data:`CLIPS`:

- ``DIR/<clip>.wav``: 16 kHz mono 16-bit PCM;
- ``DIR/<clip>.json``: its ground truth (:data:`TRUTH_SCHEMA`): the reference text, every sentence
  with its start/end and every word with its start/end in clip time, and the ``quiet`` stretches
  (inserted silence or noise with no speech: no word may be emitted there);
- with ``--with-video``, ``DIR/<clip>.mp4``: H.264 (a shapes storyline, 320×240, 10 fps) + AAC;

and ``DIR/talk.wav`` + ``DIR/talk.json`` (all clips end to end, times shifted), with
``--with-video`` also ``DIR/talk.mp4``, and ``DIR/index.json`` (clips, words, voices, durations).

The script is :file:`tools/speech_script.txt` (ours). Each clip is a few sentences in one voice
at one rate; between sentences lie stretches of silence and of pink noise (``GAP_S`` each); one
clip has pink noise under everything at ``snr_db`` (speech power over the sentences' span ÷ noise
power). Everything is deterministic: noise comes from a seeded ``numpy.random.Generator`` and
espeak-ng's output does not vary between runs of the same version.

Word times come from espeak-ng's own word events, read through our ctypes binding of
``libespeak-ng`` (:class:`Espeak`: ``AUDIO_OUTPUT_SYNCHRONOUS``, ``espeak_SetSynthCallback``,
``espeakEVENT_WORD`` with ``audio_position`` in ms): a word starts at its event and ends at the
last loud 10 ms frame before the next word starts (:func:`word_times`). When the library cannot
be loaded the ``espeak-ng`` command is used instead and the truth says
``"word_timing": "sentence"``: sentences are timed, words are not (their times are null).

Blocking. espeak-ng's library keeps global state (:class:`Espeak` holds a lock) and its output
varies by a few samples with what it spoke before in the same process, so each clip's sentences
are synthesised in a fresh process: a clip is the same whether made alone or in a full run.
A missing tool raises :class:`~tools.media.MediaToolError` with the package to install.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import io
import json
import logging
import multiprocessing
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import wave
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tools.media import MediaToolError, render_storyline_file

log = logging.getLogger(__name__)

RATE = 16_000  # every file written here: 16 kHz mono (streamcap.core.types.AUDIO_RATE)
SCRIPT_PATH = Path(__file__).with_name("speech_script.txt")
TRUTH_SCHEMA = "streamcap-speech-truth/1"

GAP_S = 2.5  # each silence or noise stretch between sentences (the tests need >= 2 s)
LEAD_S = 0.5  # silence before the first sentence
TAIL_S = 0.8  # silence after the last
SPEECH_RMS = 0.08  # every sentence is scaled to this RMS (about -22 dBFS)
NOISE_RMS = 0.025  # pink noise of the noise-only stretches: 10 dB under the speech
FADE_S = 0.02  # noise stretches fade in and out (no clicks)
SEED = 12


@dataclass(frozen=True)
class ClipPlan:
    """One clip: which sentences of the script, in which voice and rate, and what lies between
    consecutive sentences (``"silence"`` or ``"noise"``; one entry fewer than sentences). With
    ``snr_db`` pink noise runs under the whole clip at that SNR and every gap is noise."""

    name: str
    voice: str
    rate_wpm: int
    sentences: tuple[int, ...]
    gaps: tuple[str, ...]
    snr_db: float | None = None

    def __post_init__(self) -> None:
        if len(self.gaps) != len(self.sentences) - 1:
            raise ValueError(f"{self.name}: {len(self.sentences)} sentences need "
                             f"{len(self.sentences) - 1} gaps, got {len(self.gaps)}")
        if any(g not in ("silence", "noise") for g in self.gaps):
            raise ValueError(f"{self.name}: a gap is 'silence' or 'noise', got {self.gaps}")


_SNS = ("silence", "noise", "silence")
CLIPS: tuple[ClipPlan, ...] = (
    ClipPlan("c1-en-us", "en-us", 160, (0, 1, 2, 3), _SNS),
    ClipPlan("c2-en-gb", "en-gb", 150, (4, 5, 6, 7), ("noise", "silence", "noise")),
    ClipPlan("c3-en-us-f3", "en-us+f3", 170, (8, 9, 10, 11), _SNS),
    ClipPlan("c4-en-gb-x-rp", "en-gb-x-rp", 155, (12, 13, 14), ("noise", "silence")),
    ClipPlan("c5-en-m3", "en+m3", 175, (15, 16, 17), ("silence", "noise")),
    ClipPlan("c6-en-us-f2", "en-us+f2", 165, (18, 19, 20), ("noise", "silence")),
    ClipPlan("c7-noisy-en-us", "en-us", 160, (21, 22, 23, 24), ("noise", "noise", "noise"),
             snr_db=10.0),
)


# ------------------------------------------------------------------------------------ the script

def load_script(path: Path | str = SCRIPT_PATH) -> list[str]:
    """The script's sentences (comment and blank lines skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


_WORD = re.compile(r"[A-Za-z']+")


def word_spans(sentence: str) -> list[tuple[str, int, int]]:
    """The words of a sentence with their character span ``[start, end)``, punctuation left out."""
    return [(m.group(0).strip("'"), m.start(), m.end()) for m in _WORD.finditer(sentence)]


# ------------------------------------------------------------------------- espeak-ng via ctypes

class _EspeakEvent(ctypes.Structure):
    # espeak_EVENT of speak_lib.h; the trailing union (number / name / string[8]) as 8 bytes
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character position in the text
        ("length", ctypes.c_int),  # word length in characters
        ("audio_position", ctypes.c_int),  # ms from the start of this synthesis
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


class _EspeakVoice(ctypes.Structure):
    # espeak_VOICE of speak_lib.h (for espeak_SetVoiceByProperties: a language such as "en-gb")
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.POINTER(_EspeakEvent))
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_PARAM_RATE = 1
_POS_CHARACTER = 1
_CHARS_UTF8 = 1


@dataclass(frozen=True)
class Spoken:
    """One synthesised sentence: samples at ``rate`` and espeak-ng's word events as
    ``(text_position, length, start_s)`` (empty when timed by the command instead)."""

    samples: np.ndarray  # float32 in [-1, 1]
    rate: int
    word_events: tuple[tuple[int, int, float], ...]


class Espeak:
    """Our binding of ``libespeak-ng`` (synchronous mode, one synthesis at a time)."""

    def __init__(self, library: str, data_path: str | None = None) -> None:
        self.library = library
        self._lib = ctypes.CDLL(library)
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_EspeakVoice)]
        lib.espeak_SetVoiceByProperties.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        path = data_path.encode() if data_path is not None else None
        self.rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, path, _INITIALIZE_DONT_EXIT)
        if self.rate <= 0:
            raise MediaToolError(f"espeak_Initialize failed ({self.rate}): is espeak-ng-data installed?")
        self._lock = threading.Lock()
        self._pcm: list[bytes] = []
        self._events: list[tuple[int, int, float]] = []
        self._callback = _SYNTH_CALLBACK(self._on_synth)  # kept: the library holds a raw pointer
        lib.espeak_SetSynthCallback(self._callback)

    def _on_synth(self, wav: ctypes._Pointer, n_samples: int, events: ctypes._Pointer) -> int:
        if n_samples > 0:
            self._pcm.append(ctypes.string_at(wav, n_samples * 2))
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == _EVENT_WORD:
                self._events.append((event.text_position, event.length,
                                     event.audio_position / 1000.0))
            i += 1
        return 0  # 0: go on

    def _set_voice(self, voice: str) -> bool:
        """By voice name or file (``en-us``, ``en-us+f3``), else by language (``en-gb``), as the
        ``espeak-ng -v`` command does."""
        if self._lib.espeak_SetVoiceByName(voice.encode()) == 0:
            return True
        if "+" in voice:
            return False
        wanted = _EspeakVoice(languages=voice.encode())
        return self._lib.espeak_SetVoiceByProperties(ctypes.byref(wanted)) == 0

    def speak(self, text: str, voice: str, rate_wpm: int) -> Spoken:
        data = text.encode("utf-8")
        with self._lock:
            if not self._set_voice(voice):
                raise MediaToolError(f"espeak-ng has no voice {voice!r}")
            self._lib.espeak_SetParameter(_PARAM_RATE, int(rate_wpm), 0)
            self._pcm, self._events = [], []
            err = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                         None, None)
            self._lib.espeak_Synchronize()
            if err != 0:
                raise MediaToolError(f"espeak_Synth failed ({err}) on {text[:40]!r}")
            pcm = np.frombuffer(b"".join(self._pcm), dtype="<i2")
            events = tuple(self._events)
        return Spoken((pcm.astype(np.float32) / 32768.0), self.rate, events)


def find_espeak_library() -> tuple[str, str | None] | None:
    """libespeak-ng and its data folder (None: the library's own default): the system's
    (Debian's ``libespeak-ng1``, the same version as the ``espeak-ng`` command, so clips match
    across machines set up by ``tools/system-deps.sh``), else the ``espeakng-loader`` wheel's."""
    system = ctypes.util.find_library("espeak-ng")
    if system is not None:
        return system, None
    try:
        import espeakng_loader  # type: ignore[import-not-found]  # optional (PyPI)
    except ImportError:
        return None
    return str(espeakng_loader.get_library_path()), str(espeakng_loader.get_data_path())


@functools.cache
def _espeak() -> Espeak | None:
    found = find_espeak_library()
    if found is None:
        return None
    library, data = found
    try:
        return Espeak(library, data)
    except OSError as exc:  # boundary: an unloadable library means the command fallback
        log.warning("cannot load %s (%s): timing sentences only", library, exc)
        return None


def speak_with_command(text: str, voice: str, rate_wpm: int) -> Spoken:
    """The fallback: the ``espeak-ng`` command (no word events)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise MediaToolError("espeak-ng not found on PATH: install the Debian package 'espeak-ng'")
    proc = subprocess.run([exe, "--stdout", "-v", voice, "-s", str(int(rate_wpm)), text],
                          capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise MediaToolError(f"espeak-ng failed: {proc.stderr.decode('utf-8', 'replace')[-300:]}")
    # --stdout writes a WAV whose header sizes are unset (0xFFFFFFFF): read the header by hand
    data = proc.stdout
    pos = 12
    rate = 22_050
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if chunk == b"fmt ":
            rate = int.from_bytes(data[pos + 12:pos + 16], "little")
        if chunk == b"data":
            pcm = np.frombuffer(data[pos + 8:len(data) - (len(data) - pos - 8) % 2], dtype="<i2")
            return Spoken(pcm.astype(np.float32) / 32768.0, rate, ())
        pos += 8 + size
    raise MediaToolError("espeak-ng --stdout wrote no WAV data")


def speak(text: str, voice: str, rate_wpm: int) -> Spoken:
    """Synthesise one sentence, with word events when the library is available."""
    engine = _espeak()
    if engine is not None:
        return engine.speak(text, voice, rate_wpm)
    return speak_with_command(text, voice, rate_wpm)


# ------------------------------------------------------------------------------- pure signal parts

def resample(samples: np.ndarray, rate_in: int, rate_out: int = RATE) -> np.ndarray:
    """Band-limited resampling by FFT (the signal is padded with silence so the wrap-around is
    silent); float32 out, ``round(n * rate_out / rate_in)`` samples."""
    if rate_in == rate_out:
        return samples.astype(np.float32, copy=True)
    n = len(samples)
    n_out = round(n * rate_out / rate_in)
    pad = round(0.05 * rate_in)
    x = np.concatenate([samples.astype(np.float64), np.zeros(pad)])
    n_pad_out = round(len(x) * rate_out / rate_in)
    spectrum = np.fft.rfft(x)
    bins = n_pad_out // 2 + 1
    if bins <= len(spectrum):
        spectrum = spectrum[:bins]
    else:
        spectrum = np.concatenate([spectrum, np.zeros(bins - len(spectrum), complex)])
    y = np.fft.irfft(spectrum, n_pad_out) * (n_pad_out / len(x))
    return y[:n_out].astype(np.float32)


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of pink (1/f power) noise at unit RMS, float32, from ``rng``."""
    if n <= 0:
        return np.zeros(0, np.float32)
    white = rng.standard_normal(n)
    spectrum = np.fft.rfft(white)
    freqs = np.arange(len(spectrum), dtype=np.float64)
    freqs[0] = 1.0  # no DC boost
    spectrum /= np.sqrt(freqs)
    spectrum[0] = 0.0
    pink = np.fft.irfft(spectrum, n)
    level = rms(pink)
    return (pink / level if level > 0 else pink).astype(np.float32)


def fade(samples: np.ndarray, fade_s: float = FADE_S, rate: int = RATE) -> np.ndarray:
    """Linear fade-in and fade-out of ``fade_s`` (a copy)."""
    out = samples.astype(np.float32, copy=True)
    k = min(round(fade_s * rate), len(out) // 2)
    if k > 0:
        ramp = np.linspace(0.0, 1.0, k, endpoint=False, dtype=np.float32)
        out[:k] *= ramp
        out[len(out) - k:] *= ramp[::-1]
    return out


def snr_db(signal: np.ndarray, noise: np.ndarray) -> float:
    """10·log10(signal power ÷ noise power)."""
    return 10.0 * float(np.log10(rms(signal) ** 2 / rms(noise) ** 2))


def noise_for_snr(signal: np.ndarray, noise: np.ndarray, target_db: float) -> np.ndarray:
    """``noise`` scaled so that ``snr_db(signal, scaled) == target_db``."""
    level = rms(noise)
    if level == 0:
        raise ValueError("noise is silent")
    return (noise * (rms(signal) / level / 10.0 ** (target_db / 20.0))).astype(np.float32)


def word_times(samples: np.ndarray, starts_s: Sequence[float], rate: int = RATE, *,
               frame_s: float = 0.01, threshold_db: float = -30.0) -> list[tuple[float, float]]:
    """Word ``(start_s, end_s)`` from word start times and the sentence's audio: a word ends at the
    end of the last 10 ms frame before the next word's start (the sentence's end for the last word)
    whose RMS is within ``threshold_db`` of the loudest frame; a word with no loud frame ends
    where it starts plus one frame. Starts must be non-decreasing."""
    if any(b < a for a, b in zip(starts_s, starts_s[1:])):
        raise ValueError("word starts must be non-decreasing")
    hop = max(1, round(frame_s * rate))
    n_frames = len(samples) // hop
    if n_frames == 0:
        return [(s, s) for s in starts_s]
    frames = samples[:n_frames * hop].astype(np.float64).reshape(n_frames, hop)
    energy = np.sqrt(np.mean(frames ** 2, axis=1))
    loud = energy >= energy.max() * 10.0 ** (threshold_db / 20.0)
    duration_s = len(samples) / rate
    out = []
    for i, start in enumerate(starts_s):
        stop = starts_s[i + 1] if i + 1 < len(starts_s) else duration_s
        first, last = int(start / frame_s + 1e-9), min(n_frames, int(np.ceil(stop / frame_s - 1e-9)))
        idx = np.flatnonzero(loud[first:last])
        end = (first + idx[-1] + 1) * frame_s if len(idx) else start + frame_s
        out.append((round(start, 3), round(min(max(end, start), max(stop, start)), 3)))
    return out


def assign_events(sentence: str, events: Sequence[tuple[int, int, float]], duration_s: float
                  ) -> list[tuple[float, bool]]:
    """Each word's start time and whether it was interpolated, from espeak-ng's word events
    (``text_position`` 1-based).

    An event belongs to the word whose span holds its position (or the next word, when it falls
    between words). espeak-ng joins some short words to their neighbour ("on the corner" gives
    no event for "the") and, after some words, reports a position still inside the previous
    word ("too much" gives two events inside "too"): an event that lands on an already timed
    word goes to the next word when no event names that word. Words still without an event are
    placed between their timed neighbours in proportion to their length in characters
    (interpolated: True)."""
    spans = word_spans(sentence)
    n = len(spans)
    if n == 0:
        return []

    def word_at(position: int) -> int | None:
        char = position - 1
        for i, (_w, _a, b) in enumerate(spans):
            if char < b:  # inside the word, or in the space or punctuation before it
                return i
        return None

    ordered = sorted(events, key=lambda e: e[2])
    named = {word_at(p) for p, _l, _t in ordered}
    starts: list[float | None] = [None] * n
    last = -1
    for position, _length, start_s in ordered:
        i = word_at(position)
        if i is None:
            continue
        if i <= last:
            i = last + 1
            if i >= n or i in named:
                continue
        starts[i] = start_s
        last = i
    timed = [i for i, s in enumerate(starts) if s is not None]
    out: list[tuple[float, bool]] = []
    for i in range(n):
        start = starts[i]
        if start is not None:
            out.append((start, False))
            continue
        before = max((j for j in timed if j < i), default=None)
        after = min((j for j in timed if j > i), default=None)
        t0 = starts[before] if before is not None else 0.0
        t1 = starts[after] if after is not None else duration_s
        lo = before if before is not None else 0
        hi = after if after is not None else n
        weights = [len(spans[j][0]) + 1 for j in range(lo, hi)]
        done = sum(weights[:i - lo])
        assert t0 is not None and t1 is not None
        out.append((round(t0 + (t1 - t0) * done / sum(weights), 3), True))
    for k in range(1, n):  # interpolation never reorders, but keep starts monotonic regardless
        if out[k][0] < out[k - 1][0]:
            out[k] = (out[k - 1][0], True)
    return out


@dataclass(frozen=True)
class Segment:
    """A stretch of a clip in samples ``[start, end)``: ``"speech"`` (``sentence`` = its position
    in the clip), ``"silence"`` or ``"noise"``."""

    kind: str
    start: int
    end: int
    sentence: int | None = None


def build_schedule(speech_lengths: Sequence[int], gaps: Sequence[str], *, rate: int = RATE,
                   gap_s: float = GAP_S, lead_s: float = LEAD_S, tail_s: float = TAIL_S
                   ) -> list[Segment]:
    """Lay out a clip: lead silence, sentence, gap, sentence, …, tail silence; contiguous."""
    if len(gaps) != len(speech_lengths) - 1:
        raise ValueError("one gap between each two sentences")
    segments: list[Segment] = []
    t = 0

    def add(kind: str, n: int, sentence: int | None = None) -> None:
        nonlocal t
        if n > 0:
            segments.append(Segment(kind, t, t + n, sentence))
            t += n

    add("silence", round(lead_s * rate))
    for i, n in enumerate(speech_lengths):
        add("speech", n, i)
        if i < len(gaps):
            add(gaps[i], round(gap_s * rate))
    add("silence", round(tail_s * rate))
    return segments


def assemble_clip(plan: ClipPlan, sentences: Sequence[str], speech: Sequence[np.ndarray],
                  word_starts: Sequence[list[tuple[float, bool]] | None],
                  rng: np.random.Generator, *,
                  rate: int = RATE) -> tuple[np.ndarray, dict]:
    """Mix one clip from its sentences' audio (``rate``, already levelled) and each sentence's
    word start times (``None``: not timed). Returns the samples and the ground truth dict."""
    schedule = build_schedule([len(s) for s in speech], plan.gaps, rate=rate)
    total = schedule[-1].end
    clip = np.zeros(total, np.float32)
    speech_only = np.zeros(total, np.float32)
    truth_sentences = []
    quiet = []
    for seg in schedule:
        if seg.kind == "speech":
            assert seg.sentence is not None
            audio = speech[seg.sentence]
            speech_only[seg.start:seg.end] = audio
            start_s = seg.start / rate
            starts = word_starts[seg.sentence]
            spans = word_spans(sentences[seg.sentence])
            if starts is None:
                words = [{"text": w, "start_s": None, "end_s": None} for w, _a, _b in spans]
            else:
                times = word_times(audio, [t for t, _ in starts], rate)
                words = [{"text": w, "start_s": round(start_s + a, 3), "end_s": round(start_s + b, 3),
                          **({"interpolated": True} if guessed else {})}
                         for (w, _x, _y), (a, b), (_t, guessed) in zip(spans, times, starts)]
            truth_sentences.append({
                "index": plan.sentences[seg.sentence], "text": sentences[seg.sentence],
                "start_s": round(start_s, 3), "end_s": round(seg.end / rate, 3), "words": words})
        else:
            if seg.kind == "noise" and plan.snr_db is None:
                clip[seg.start:seg.end] = fade(pink_noise(seg.end - seg.start, rng) * NOISE_RMS,
                                               rate=rate)
            quiet.append({"kind": "noise" if plan.snr_db is not None else seg.kind,
                          "start_s": round(seg.start / rate, 3), "end_s": round(seg.end / rate, 3)})
    clip += speech_only
    measured_snr = None
    if plan.snr_db is not None:
        spoken = np.concatenate([speech_only[s.start:s.end] for s in schedule if s.kind == "speech"])
        noise = pink_noise(total, rng)
        span = np.concatenate([noise[s.start:s.end] for s in schedule if s.kind == "speech"])
        scaled = noise_for_snr(spoken, span, plan.snr_db)  # the level is set over the speech span
        noise *= rms(scaled) / rms(span)
        clip += fade(noise, rate=rate)
        measured_snr = round(snr_db(spoken, scaled), 2)
    peak = float(np.max(np.abs(clip))) if total else 0.0
    if peak > 0.99:
        clip *= 0.99 / peak
    all_timed = all(s is not None for s in word_starts)
    truth = {
        "schema": TRUTH_SCHEMA,
        "clip": plan.name,
        "sample_rate": rate,
        "duration_s": round(total / rate, 3),
        "voice": plan.voice,
        "rate_wpm": plan.rate_wpm,
        "snr_db": measured_snr,
        "noise": "pink",
        "word_timing": "espeak-word-events" if all_timed else "sentence",
        "text": " ".join(sentences),
        "words": sum(len(s["words"]) for s in truth_sentences),
        "sentences": truth_sentences,
        "quiet": quiet,
    }
    return clip, truth


def shift_truth(truth: dict, offset_s: float) -> dict:
    """A copy of a clip's truth with every time moved by ``offset_s`` (for concatenations)."""
    def move(t: float | None) -> float | None:
        return None if t is None else round(t + offset_s, 3)

    return {
        **truth,
        "sentences": [{**s, "start_s": move(s["start_s"]), "end_s": move(s["end_s"]),
                       "words": [{**w, "start_s": move(w["start_s"]), "end_s": move(w["end_s"])}
                                 for w in s["words"]]} for s in truth["sentences"]],
        "quiet": [{**q, "start_s": move(q["start_s"]), "end_s": move(q["end_s"])}
                  for q in truth["quiet"]],
    }


def concat_truths(name: str, truths: Sequence[dict]) -> dict:
    """One truth for clips played end to end (the first at 0)."""
    offset = 0.0
    sentences, quiet, voices = [], [], []
    for truth in truths:
        moved = shift_truth(truth, offset)
        sentences += [{**s, "clip": truth["clip"]} for s in moved["sentences"]]
        quiet += moved["quiet"]
        voices.append(truth["voice"])
        offset = round(offset + truth["duration_s"], 3)
    timed = all(t["word_timing"] == "espeak-word-events" for t in truths)
    return {
        "schema": TRUTH_SCHEMA, "clip": name, "sample_rate": truths[0]["sample_rate"],
        "duration_s": offset, "voice": sorted(set(voices)), "rate_wpm": None, "snr_db": None,
        "noise": "pink", "word_timing": "espeak-word-events" if timed else "sentence",
        "text": " ".join(t["text"] for t in truths),
        "words": sum(t["words"] for t in truths), "sentences": sentences, "quiet": quiet,
        "clips": [{"clip": t["clip"], "start_s": s} for t, s in
                  zip(truths, np.cumsum([0.0] + [t["duration_s"] for t in truths])[:-1].tolist())],
    }


# ------------------------------------------------------------------------------------------ files

def write_wav(path: Path | str, samples: np.ndarray, rate: int = RATE) -> Path:
    """16-bit PCM mono WAV, written to a temporary name and renamed into place."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    partial = out.with_name(f".{out.name}.partial")
    partial.write_bytes(buf.getvalue())
    partial.replace(out)
    return out


def read_wav(path: Path | str) -> tuple[np.ndarray, int]:
    """A 16-bit PCM mono WAV as float32 samples and its rate."""
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit mono PCM")
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0, rate


def _write_json(path: Path, data: dict) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    partial.replace(path)


def synthesize_sentence(text: str, voice: str, rate_wpm: int
                        ) -> tuple[np.ndarray, list[tuple[float, bool]] | None]:
    """One sentence at :data:`RATE`, levelled to :data:`SPEECH_RMS`, and its words' start times
    with their interpolated flag (:func:`assign_events`; ``None`` without word events)."""
    spoken = speak(text, voice, rate_wpm)
    audio = resample(spoken.samples, spoken.rate, RATE)
    level = rms(audio)
    if level > 0:
        audio = (audio * (SPEECH_RMS / level)).astype(np.float32)
    if not spoken.word_events:
        return audio, None
    return audio, assign_events(text, spoken.word_events, len(audio) / RATE)


def synthesize_sentences(texts: Sequence[str], voice: str, rate_wpm: int
                         ) -> list[tuple[np.ndarray, list[tuple[float, bool]] | None]]:
    """:func:`synthesize_sentence` for each text, in a fresh process: libespeak-ng's output
    depends slightly (a few samples) on what it spoke before in the same process, so a clip
    made alone equals the same clip made in a full run."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_synthesize_all, list(texts), voice, rate_wpm).result()


def _synthesize_all(texts: list[str], voice: str, rate_wpm: int
                    ) -> list[tuple[np.ndarray, list[tuple[float, bool]] | None]]:
    return [synthesize_sentence(text, voice, rate_wpm) for text in texts]


def make_clip(plan: ClipPlan, script: Sequence[str], seed: int = SEED) -> tuple[np.ndarray, dict]:
    """One clip and its truth (its speech synthesised in a fresh process)."""
    sentences = [script[i] for i in plan.sentences]
    made = synthesize_sentences(sentences, plan.voice, plan.rate_wpm)
    rng = np.random.default_rng([seed, CLIPS.index(plan) if plan in CLIPS else 0])
    return assemble_clip(plan, sentences, [a for a, _ in made], [w for _, w in made], rng)


def mux_video(wav: Path, out: Path, *, seed: int, duration_s: float) -> Path:
    """An mp4: a shapes storyline (H.264, 320×240, 10 fps) with ``wav`` as AAC audio."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise MediaToolError("ffmpeg not found on PATH: install the Debian package 'ffmpeg'")
    with tempfile.TemporaryDirectory(prefix="streamcap-speech-") as tmp:
        video = Path(tmp) / "video.mp4"
        render_storyline_file(video, seed=seed, duration_s=duration_s, crf=28)
        partial = out.with_name(f".{out.stem}.partial.mp4")
        proc = subprocess.run(
            [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-i", str(video), "-i", str(wav),
             "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", "-b:a", "96k",
             "-movflags", "+faststart", str(partial)], capture_output=True, check=False)
        if proc.returncode != 0:
            partial.unlink(missing_ok=True)
            raise MediaToolError(f"ffmpeg could not mux {out.name}: "
                                 f"{proc.stderr.decode('utf-8', 'replace')[-300:]}")
        partial.replace(out)
    return out


def espeak_version() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        return "unknown"
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.strip()


def generate(out_dir: Path | str, *, with_video: bool = False, seed: int = SEED,
             clips: Sequence[ClipPlan] = CLIPS) -> dict:
    """Write every clip, its truth, ``talk.*`` and ``index.json`` into ``out_dir``; returns the index."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    script = load_script()
    truths, audios = [], []
    for number, plan in enumerate(clips):
        audio, truth = make_clip(plan, script, seed)
        write_wav(out / f"{plan.name}.wav", audio)
        truth["audio"] = f"{plan.name}.wav"
        _write_json(out / f"{plan.name}.json", truth)
        if with_video:
            mux_video(out / f"{plan.name}.wav", out / f"{plan.name}.mp4", seed=seed + number,
                      duration_s=truth["duration_s"])
        truths.append(truth)
        audios.append(audio)
        log.info("%s: %.1f s, %d words, %s", plan.name, truth["duration_s"], truth["words"],
                 truth["word_timing"])
    talk = concat_truths("talk", truths)
    talk["audio"] = "talk.wav"
    write_wav(out / "talk.wav", np.concatenate(audios))
    _write_json(out / "talk.json", talk)
    if with_video:
        mux_video(out / "talk.wav", out / "talk.mp4", seed=seed, duration_s=talk["duration_s"])
    index = {
        "schema": "streamcap-speech-index/1",
        "generator": "tools/speech_media.py",
        "tts": espeak_version(),
        "tts_library": (find_espeak_library() or ("none: the espeak-ng command", None))[0],
        "tts_licence": "espeak-ng is GPL-3.0, run as a tool; the script and the audio are ours",
        "sample_rate": RATE,
        "word_timing": talk["word_timing"],
        "clips": [{"clip": t["clip"], "audio": t["audio"], "duration_s": t["duration_s"],
                   "words": t["words"], "sentences": len(t["sentences"]), "voice": t["voice"],
                   "rate_wpm": t["rate_wpm"], "snr_db": t["snr_db"],
                   "quiet_s": round(sum(q["end_s"] - q["start_s"] for q in t["quiet"]), 3),
                   **({"video": f"{t['clip']}.mp4"} if with_video else {})} for t in truths],
        "talk": {"audio": "talk.wav", "truth": "talk.json", "duration_s": talk["duration_s"],
                 "words": talk["words"], **({"video": "talk.mp4"} if with_video else {})},
        "words": talk["words"],
        "duration_s": talk["duration_s"],
    }
    _write_json(out / "index.json", index)
    return index


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.speech_media", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--with-video", action="store_true",
                        help="also write an mp4 per clip and talk.mp4 (H.264 + AAC)")
    parser.add_argument("--seed", type=int, default=SEED, help="noise and video seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        index = generate(args.out, with_video=args.with_video, seed=args.seed)
    except MediaToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(index['clips'])} clips, {index['words']} words, {index['duration_s']:.1f} s "
          f"({index['word_timing']}) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
