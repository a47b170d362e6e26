"""ONNX Runtime Whisper engine: speech (≤ 30 s of 16 kHz mono audio per request) → :class:`Transcript`.

An engine folder from ``streamcap export`` of a ``WhisperForConditionalGeneration`` checkpoint
(``engine.json`` with ``"kind": "speech"``; see ``streamcap.export.whisper`` for the graphs).
One ``transcribe_batch`` call runs the log-mel front end (numpy, ``streamcap.engine.mel``), **one
encoder call** for every request, then a batched decode: the requests' decoder prefixes
(``[<|startofprev|> prompt] <|startoftranscript|> <|lang|> <|task|> [<|notimestamps|>]``) are
left-padded to one length, so requests with different prompts share every decoder call. Requests
with the same ``num_beams`` decode together (greedy, or beam search with each request's rows
repeated); the rules are Whisper's (``streamcap.engine.whisper_rules``).

``language=None`` detects the language first (one decoder call on ``<|startoftranscript|>``
alone, the likeliest language token, as ``generate`` does); English-only models always use "en".
``no_speech_prob`` is P(``<|nospeech|>``) at the position after ``<|startoftranscript|>`` in the
prefill. Word times: when the engine's decoder outputs the alignment heads' cross-attention
(``cross_qk``; ``engine.json`` ``"word_timing": "cross-attention"``) one more batched decoder call
on each transcript's text gives them by dynamic time warping, as OpenAI's ``word_timestamps``
(``aligned_word_times``); otherwise by the character-length approximation of
``words_from_tokens`` (``word_timing`` says which this engine does).

No torch, no transformers: ``tokenizers`` decodes text. Blocking; not thread-safe: one caller at a
time (an executor thread).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from streamcap.core.errors import EngineLoadError
from streamcap.core.types import AUDIO_RATE, SpeechWord, Transcript
from streamcap.engine.manifest import load_speech_manifest
from streamcap.engine.mel import N_SAMPLES, log_mel_batch
from streamcap.engine.whisper_rules import (
    Decoded,
    LogitRules,
    WhisperTokens,
    WordSpan,
    aligned_word_times,
    beam_search,
    greedy,
    log_softmax,
    prefix_tokens,
    words_from_tokens,
)

log = logging.getLogger(__name__)

TASKS = ("transcribe", "translate")


@dataclass(frozen=True, slots=True)
class SpeechRequest:
    audio: np.ndarray  # float32 mono 16 kHz, at most 30 s (longer: ValueError)
    prompt: str = ""  # previous committed text: becomes <|startofprev|> + its last tokens (≤ 223)
    language: str | None = None  # None: detect (multilingual models); English-only models: "en"
    task: str = "transcribe"  # or "translate"
    timestamps: bool = True
    num_beams: int = 1
    max_new_tokens: int = 224

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.num_beams < 1:
            raise ValueError("num_beams must be at least 1")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")


class WhisperEngine:
    """A Whisper speech engine on ONNX Runtime (CPU by default)."""

    sample_rate = AUDIO_RATE

    def __init__(self, path: str | os.PathLike, *, provider: str = "cpu", providers: Sequence[str] | None = None,
                 intra_op_threads: int | None = None, verify_hashes: bool = True,
                 provider_options: dict | None = None, trt_cache_dir: str | os.PathLike | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise EngineLoadError("ONNX Runtime is not installed: pip install 'streamcap[cpu]' "
                                  "(or 'streamcap[gpu]' on an NVIDIA GPU)") from e
        from tokenizers import Tokenizer

        from streamcap.engine.onnx import session_setup

        self.manifest = m = load_speech_manifest(path, verify_hashes=verify_hashes)
        self.name = m.name
        self.tokens = WhisperTokens.from_facts(m.whisper)
        self.multilingual = bool(m.whisper.get("is_multilingual", len(self.tokens.languages) > 1))
        self.languages: tuple[str, ...] = tuple(self.tokens.languages) if self.multilingual else ("en",)
        opts, providers, chosen = session_setup(m, provider=provider, providers=providers,
                                                intra_op_threads=intra_op_threads,
                                                provider_options=provider_options, trt_cache_dir=trt_cache_dir)
        try:
            self._encoder = ort.InferenceSession(str(m.path(m.graphs["encoder"])), opts, providers=chosen)
            self._decoder = ort.InferenceSession(str(m.path(m.graphs["decoder"])), opts, providers=chosen)
            self._tok = Tokenizer.from_file(str(m.path(m.tokenizer)))
        except Exception as e:  # boundary: onnxruntime/tokenizers raise their own types; one load error
            raise EngineLoadError(f"could not load engine {path}: {e}") from e
        self.providers = providers
        n = m.num_layers
        self._kv = [f"{k}_{i}" for i in range(n) for k in ("key", "value")]
        self._has_qk = "cross_qk" in {o.name for o in self._decoder.get_outputs()}
        self.word_timing = "cross-attention" if self._has_qk else "approximate"
        self._vocab = m.vocab_size
        self._starts_word = np.zeros(self._vocab, dtype=bool)
        for i in range(min(self._vocab, self.tokens.eot)):
            piece = self._tok.id_to_token(i)
            self._starts_word[i] = bool(piece) and piece[0] in ("Ġ", " ", "▁")
        self.debug_logits: list[np.ndarray] | None = None  # a list collects every decoder call's logits (tests)
        log.info("speech engine %s loaded from %s (%s, %s, %d languages)", self.name, path, ",".join(providers),
                 m.precision, len(self.languages))

    # ------------------------------------------------------------------ graphs

    def _encode(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        feats = log_mel_batch(list(audios), self.manifest.n_mels)
        return self._encoder.run(None, {"input_features": feats})

    def _decode_call(self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, index: np.ndarray,
                     past: list[np.ndarray], cross: list[np.ndarray],
                     with_qk: bool = False) -> tuple[np.ndarray, list[np.ndarray]] | tuple[np.ndarray, np.ndarray]:
        """One decoder call → (logits, present K/V), or (logits, cross_qk) when ``with_qk``."""
        feed = {"input_ids": ids.astype(np.int64), "positions": positions.astype(np.int64),
                "attention_mask": mask.astype(np.int64), "logit_index": index.astype(np.int64)}
        feed.update({f"past_{n}": a for n, a in zip(self._kv, past)})
        feed.update({f"cross_{n}": a for n, a in zip(self._kv, cross)})
        out = self._decoder.run(None, feed)
        if with_qk:
            return out[0], out[-1]
        return out[0], out[1:1 + len(self._kv)]

    def _empty_past(self, b: int) -> list[np.ndarray]:
        m = self.manifest
        return [np.zeros((b, m.num_heads, 0, m.head_dim), np.float32) for _ in self._kv]

    # ------------------------------------------------------------------ public

    def _check(self, r: SpeechRequest) -> np.ndarray:
        audio = np.asarray(r.audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"audio must be mono (1-D), got shape {audio.shape}")
        if audio.shape[0] > N_SAMPLES:
            raise ValueError(f"audio is {audio.shape[0] / AUDIO_RATE:.2f} s; a request takes at most "
                             f"{N_SAMPLES / AUDIO_RATE:.0f} s")
        if not self.multilingual:
            if r.language not in (None, "en"):
                raise ValueError(f"{self.name} is an English-only model; language {r.language!r} is not possible")
            if r.task == "translate":
                raise ValueError(f"{self.name} is an English-only model; it cannot translate")
        elif r.language is not None and r.language not in self.tokens.languages:
            raise ValueError(f"language {r.language!r} is not one of {self.name}'s languages")
        return audio

    def _detect(self, cross: list[np.ndarray]) -> np.ndarray:
        """Log-probabilities over the language tokens (B, n_languages), from SOT alone."""
        b = cross[0].shape[0]
        logits, _ = self._decode_call(np.full((b, 1), self.tokens.sot), np.zeros((b, 1)), np.ones((b, 1)),
                                      np.zeros((b, 1)), self._empty_past(b), cross)
        lang_ids = list(self.tokens.languages.values())
        return log_softmax(logits[:, 0, lang_ids])

    def detect_language(self, audio: np.ndarray) -> dict[str, float]:
        """P(language) for one clip (≤ 30 s), likeliest first. English-only models: {"en": 1.0}."""
        audio = self._check(SpeechRequest(audio))
        if not self.multilingual:
            return {"en": 1.0}
        probs = np.exp(self._detect(self._encode([audio]))[0])
        codes = list(self.tokens.languages)
        return {codes[i]: float(probs[i]) for i in np.argsort(-probs, kind="stable")}

    def transcribe_batch(self, requests: Sequence[SpeechRequest]) -> list[Transcript]:
        """Transcribe each request's audio; one encoder call for all of them."""
        if not requests:
            return []
        audios = [self._check(r) for r in requests]
        cross = self._encode(audios)
        languages = [r.language if self.multilingual else "en" for r in requests]
        undecided = [i for i, lang in enumerate(languages) if lang is None]
        if undecided:
            lp = self._detect([c[undecided] for c in cross])
            codes = list(self.tokens.languages)
            for row, i in enumerate(undecided):
                languages[i] = codes[int(np.argmax(lp[row]))]
        results: list[Transcript | None] = [None] * len(requests)
        for beams in sorted({r.num_beams for r in requests}):
            rows = [i for i, r in enumerate(requests) if r.num_beams == beams]
            for i, t in zip(rows, self._decode_group([requests[i] for i in rows], [languages[i] for i in rows],
                                                     [c[rows] for c in cross], beams)):
                results[i] = t
        return results  # type: ignore[return-value]

    def _decode_group(self, reqs: list[SpeechRequest], languages: list[str], cross: list[np.ndarray],
                      beams: int) -> list[Transcript]:
        tok = self.tokens
        prefixes = []
        for r, lang in zip(reqs, languages):
            text = r.prompt.strip()
            prompt_ids = self._tok.encode(" " + text, add_special_tokens=False).ids if text else []
            prefixes.append(prefix_tokens(tok, multilingual=self.multilingual, language=lang, task=r.task,
                                          timestamps=r.timestamps, prompt_ids=prompt_ids))
        b = len(reqs)
        width = max(len(p) for p in prefixes)
        ids = np.full((b, width), tok.eot, dtype=np.int64)
        mask = np.zeros((b, width), dtype=np.int64)
        sot_at = np.zeros(b, dtype=np.int64)
        for i, p in enumerate(prefixes):
            ids[i, width - len(p):] = p
            mask[i, width - len(p):] = 1
            sot_at[i] = width - len(p) + p.index(tok.sot)
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        index = np.stack([sot_at, np.full(b, width - 1)], axis=1)
        logits, past = self._decode_call(ids, positions, mask, index, self._empty_past(b), cross)
        if self.debug_logits is not None:
            self.debug_logits.append(logits[:, 1])
        no_speech = np.exp(log_softmax(logits[:, 0])[:, tok.no_speech])
        rules = [LogitRules(tok, self._vocab, timestamps=r.timestamps) for r in reqs]
        max_new = [max(0, min(r.max_new_tokens, tok.max_target_positions - len(p))) for r, p in zip(reqs, prefixes)]
        next_pos = positions[:, -1] + 1
        if beams > 1:
            rep = np.repeat(np.arange(b), beams)
            past = [a[rep] for a in past]
            cross = [c[rep] for c in cross]
            mask, next_pos = mask[rep], next_pos[rep]
        state = {"past": past, "mask": mask, "pos": next_pos}

        def step(tokens: np.ndarray, parents: np.ndarray | None) -> np.ndarray:
            if parents is not None:
                state["past"] = [a[parents] for a in state["past"]]
                state["mask"] = state["mask"][parents]
                state["pos"] = state["pos"][parents]
            n = tokens.shape[0]
            state["mask"] = np.concatenate([state["mask"], np.ones((n, 1), np.int64)], axis=1)
            out, state["past"] = self._decode_call(tokens.reshape(n, 1), state["pos"].reshape(n, 1), state["mask"],
                                                   np.zeros((n, 1)), state["past"], cross)
            state["pos"] = state["pos"] + 1
            if self.debug_logits is not None:
                self.debug_logits.append(out[:, 0])
            return out[:, 0]

        first = logits[:, 1]
        cross0 = cross if beams == 1 else [c[::beams] for c in cross]
        if beams == 1:
            decoded = greedy(first, step, rules, max_new, eot=tok.eot)
        else:
            decoded = beam_search(first, step, rules, max_new, eot=tok.eot, num_beams=beams)
        spans = [self._spans(d, r) for d, r in zip(decoded, reqs)]
        if self._has_qk:
            spans = self._align(decoded, spans, languages, reqs, cross0)
        return [self._transcript(d, sp, lang, float(ns))
                for d, sp, lang, ns in zip(decoded, spans, languages, no_speech)]

    def _spans(self, d: Decoded, r: SpeechRequest) -> list[WordSpan]:
        """Words with the character-length approximation of their times."""

        def chars(ids: Sequence[int]) -> int:
            return len(self._tok.decode(list(ids), skip_special_tokens=False).strip())

        return words_from_tokens(self.tokens, d.tokens, d.logprobs, duration_s=len(r.audio) / AUDIO_RATE,
                                 starts_word=lambda t: bool(self._starts_word[t]), char_count=chars)

    def _align(self, decoded: list[Decoded], spans: list[list[WordSpan]], languages: list[str],
               reqs: list[SpeechRequest], cross: list[np.ndarray]) -> list[list[WordSpan]]:
        """The words' times by DTW on the alignment heads: one decoder call for the whole group on
        ``sot lang task <|notimestamps|> text… EOT`` (no prompt, as OpenAI's find_alignment)."""
        tok = self.tokens
        seqs = []
        for d, lang, r in zip(decoded, languages, reqs):
            pre = prefix_tokens(tok, multilingual=self.multilingual, language=lang, task=r.task, timestamps=False)
            seqs.append((pre, [t for t in d.tokens if t < tok.eot]))
        b = len(seqs)
        width = max(len(p) + len(t) + 1 for p, t in seqs)
        ids = np.full((b, width), tok.eot, dtype=np.int64)
        mask = np.zeros((b, width), dtype=np.int64)
        for i, (p, t) in enumerate(seqs):
            full = [*p, *t, tok.eot]
            ids[i, width - len(full):] = full
            mask[i, width - len(full):] = 1
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        _, qk = self._decode_call(ids, positions, mask, np.full((b, 1), width - 1), self._empty_past(b), cross,
                                  with_qk=True)
        out = []
        for i, ((p, t), r, sp) in enumerate(zip(seqs, reqs, spans)):
            if not t or sum(len(s.tokens) for s in sp) != len(t):
                out.append(sp)
                continue
            first = width - (len(p) + len(t) + 1) + len(p) - 1  # the <|notimestamps|> row predicts text[0]
            duration = len(r.audio) / AUDIO_RATE
            times = aligned_word_times(qk[i, :, first:first + len(t) + 1], [s.tokens for s in sp], duration_s=duration)
            out.append([replace(s, start_s=min(a, duration), end_s=min(max(a, e), duration))
                        for s, (a, e) in zip(sp, times)])
        return out

    def _transcript(self, d: Decoded, spans: list[WordSpan], language: str, no_speech: float) -> Transcript:
        text_ids = [t for t in d.tokens if t < self.tokens.eot]
        words = tuple(SpeechWord(self._tok.decode(list(s.tokens), skip_special_tokens=False).strip(),
                                 round(s.start_s, 3), round(s.end_s, 3), s.prob) for s in spans)
        return Transcript(text=self._tok.decode(text_ids, skip_special_tokens=False).strip(),
                          words=tuple(w for w in words if w.text), language=language, no_speech_prob=no_speech,
                          avg_logprob=d.avg_logprob, tokens=tuple(d.tokens),
                          aligned=self.word_timing == "cross-attention")

    def close(self) -> None:
        self._encoder = self._decoder = None  # type: ignore[assignment]


def load_speech_engine(path: str | os.PathLike, *, provider: str = "cpu",
                       intra_op_threads: int | None = None, **options) -> WhisperEngine:
    """Load a speech engine folder (``engine.json`` with ``"kind": "speech"``). ``provider``:
    ``cpu``, ``cuda`` or ``tensorrt`` (ONNX Runtime execution providers)."""
    return WhisperEngine(path, provider=provider, intra_op_threads=intra_op_threads, **options)


__all__ = ["SpeechRequest", "WhisperEngine", "load_speech_engine"]
