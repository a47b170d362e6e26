"""Whisper's decoding rules and token search, pure numpy: no ONNX, no I/O.

- :class:`WhisperTokens`: the special token ids of one model (from the engine manifest);
- :func:`prefix_tokens`: ``[<|startofprev|> prompt…] <|startoftranscript|> <|lang|> <|task|>
  [<|notimestamps|>]`` as Whisper (and ``WhisperForConditionalGeneration.generate``) builds it;
- :class:`LogitRules`: the logit processors of ``generate`` in its order — begin-suppress (blank
  and EOT at the first step), suppress_tokens, then the timestamp rules: ``<|notimestamps|>``
  never; timestamps in pairs (after a lone timestamp only a timestamp or EOT, after a pair only
  text); never decreasing (a pair may repeat its time, a new segment starts strictly later); the
  first token a timestamp no later than ``max_initial_timestamp_index``; and a timestamp forced
  when the summed probability of the timestamps exceeds that of the likeliest text token;
- :func:`greedy` and :func:`beam_search` over a cached decoder ``step(tokens, parents)`` (the
  contract of ``streamcap.engine.decoding``: reorder the cache rows as ``parents`` says, run one
  step on ``tokens`` (N,), return logits (N, V)). Rows carry their own rules and length limits.
  Beam search ranks as ``generate`` does: rules act on log-probabilities (masked, not
  renormalised), hypotheses score ``sum log p / n_tokens`` (EOT counted);
- :func:`words_from_tokens`: words with times (see its docstring for the approximation).

Log-probabilities are float64. ``avg_logprob`` is the mean log-probability of the chosen tokens
(EOT included when generated): in greedy search under the processed, renormalised distribution (as
OpenAI's Whisper reports it); in beam search the ranking score's, i.e. before renormalisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Step = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]
NEG_INF = -np.inf


@dataclass(frozen=True)
class WhisperTokens:
    sot: int
    eot: int
    sot_prev: int
    no_timestamps: int
    no_speech: int
    timestamp_begin: int
    transcribe: int | None
    translate: int | None
    languages: dict[str, int]  # code → token id
    suppress: tuple[int, ...]
    begin_suppress: tuple[int, ...]
    max_initial_timestamp_index: int | None
    max_target_positions: int
    max_prompt_tokens: int
    time_precision_s: float = 0.02

    @classmethod
    def from_facts(cls, w: dict) -> WhisperTokens:
        mi = w.get("max_initial_timestamp_index")
        return cls(sot=int(w["sot"]), eot=int(w["eot"]), sot_prev=int(w["sot_prev"]),
                   no_timestamps=int(w["no_timestamps"]), no_speech=int(w["no_speech"]),
                   timestamp_begin=int(w["timestamp_begin"]),
                   transcribe=None if w.get("transcribe") is None else int(w["transcribe"]),
                   translate=None if w.get("translate") is None else int(w["translate"]),
                   languages={str(k): int(v) for k, v in w["languages"].items()},
                   suppress=tuple(int(t) for t in w.get("suppress_tokens") or ()),
                   begin_suppress=tuple(int(t) for t in w.get("begin_suppress_tokens") or ()),
                   max_initial_timestamp_index=None if mi is None else int(mi),
                   max_target_positions=int(w["max_target_positions"]),
                   max_prompt_tokens=int(w.get("max_prompt_tokens", int(w["max_target_positions"]) // 2 - 1)),
                   time_precision_s=float(w.get("time_precision_s", 0.02)))

    def is_timestamp(self, token: int) -> bool:
        return token >= self.timestamp_begin

    def time_of(self, token: int) -> float:
        return (token - self.timestamp_begin) * self.time_precision_s


def prefix_tokens(tok: WhisperTokens, *, multilingual: bool, language: str | None, task: str, timestamps: bool,
                  prompt_ids: Sequence[int] = ()) -> list[int]:
    """The decoder's forced start: the previous-text prompt (already tokenised, without
    ``<|startofprev|>``; the last ``max_prompt_tokens`` are kept), then SOT, language and task for
    multilingual models, and ``<|notimestamps|>`` when timestamps are off."""
    out: list[int] = []
    if prompt_ids:
        out += [tok.sot_prev, *list(prompt_ids)[-tok.max_prompt_tokens:]]
    out.append(tok.sot)
    if multilingual:
        if language is None or language not in tok.languages:
            raise ValueError(f"language {language!r} is not one of this model's languages")
        task_id = tok.transcribe if task == "transcribe" else tok.translate
        if task_id is None:
            raise ValueError(f"this model has no {task} task token")
        out += [tok.languages[language], task_id]
    if not timestamps:
        out.append(tok.no_timestamps)
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = x - m
    with np.errstate(divide="ignore"):
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class LogitRules:
    """The processors of one request: ``apply(scores, generated)`` on one row of scores (V,)
    (logits in greedy search, log-probabilities in beam search) given the tokens generated so far."""

    def __init__(self, tok: WhisperTokens, vocab_size: int, *, timestamps: bool) -> None:
        self.tok = tok
        self.timestamps = timestamps
        self.suppress = np.zeros(vocab_size, dtype=bool)
        self.suppress[[t for t in tok.suppress if t < vocab_size]] = True
        self.begin = np.zeros(vocab_size, dtype=bool)
        self.begin[[t for t in tok.begin_suppress if t < vocab_size]] = True

    def apply(self, scores: np.ndarray, generated: Sequence[int]) -> np.ndarray:
        tok = self.tok
        s = np.array(scores, dtype=np.float64)
        if not generated:
            s[self.begin] = NEG_INF
        s[self.suppress] = NEG_INF
        if not self.timestamps:
            return s
        tb, eot = tok.timestamp_begin, tok.eot
        s[tok.no_timestamps] = NEG_INF
        last_ts = len(generated) >= 1 and generated[-1] >= tb
        penult_ts = len(generated) < 2 or generated[-2] >= tb
        if last_ts:
            if penult_ts:
                s[tb:] = NEG_INF  # after a pair (or at the start): text
            else:
                s[:eot] = NEG_INF  # after a lone timestamp: its partner or EOT
        stamps = [t for t in generated if t >= tb]
        if stamps:
            floor = stamps[-1] if last_ts and not penult_ts else stamps[-1] + 1
            s[tb:floor] = NEG_INF
        if not generated:
            s[:tb] = NEG_INF
            if tok.max_initial_timestamp_index is not None:
                s[tb + tok.max_initial_timestamp_index + 1:] = NEG_INF
        lp = log_softmax(s)
        with np.errstate(invalid="ignore"):
            ts_lp = np.logaddexp.reduce(lp[tb:]) if lp.shape[0] > tb else NEG_INF
        if ts_lp > lp[:tb].max():
            s[:tb] = NEG_INF
        return s


@dataclass(frozen=True)
class Decoded:
    tokens: tuple[int, ...]  # generated tokens, EOT excluded
    logprobs: tuple[float, ...]  # log-probability of each token of ``tokens``
    sum_logprob: float  # EOT's included when it was generated
    finished: bool  # ended with EOT

    @property
    def avg_logprob(self) -> float:
        return self.sum_logprob / max(1, len(self.tokens) + self.finished)


def greedy(first_logits: np.ndarray, step: Step, rules: Sequence[LogitRules], max_new: Sequence[int], *,
           eot: int) -> list[Decoded]:
    """Greedy search; row ``i`` follows ``rules[i]`` and stops at EOT or ``max_new[i]`` tokens."""
    b = first_logits.shape[0]
    seqs: list[list[int]] = [[] for _ in range(b)]
    lps: list[list[float]] = [[] for _ in range(b)]
    total = np.zeros(b)
    done = np.array([m <= 0 for m in max_new])
    ended = np.zeros(b, dtype=bool)
    logits = first_logits
    while not done.all():
        nxt = np.full(b, eot, dtype=np.int64)
        for i in np.flatnonzero(~done):
            s = rules[i].apply(logits[i], seqs[i])
            t = int(np.argmax(s))
            lp = float(log_softmax(s)[t])
            nxt[i] = t
            total[i] += lp
            if t == eot:
                ended[i] = done[i] = True
                continue
            seqs[i].append(t)
            lps[i].append(lp)
            if len(seqs[i]) >= max_new[i]:
                done[i] = True
        if done.all():
            break
        logits = step(nxt, None)
    return [Decoded(tuple(s), tuple(p), float(t), bool(e)) for s, p, t, e in zip(seqs, lps, total, ended)]


def beam_search(first_logits: np.ndarray, step: Step, rules: Sequence[LogitRules], max_new: Sequence[int], *,
                eot: int, num_beams: int, length_penalty: float = 1.0) -> list[Decoded]:
    """Beam search, ``num_beams`` rows per request: the caller repeats each request's cache rows
    ``num_beams`` times; ``first_logits`` has one row per request. Returns the best per request.

    ``generate``'s algorithm step for step: running beams start at scores (0, -1e9, …); each step
    takes the top 2·w continuations of all w beams; the best w that did not hit a stop (EOT, or the
    length limit) run on; those among the top w that did are scored ``sum / n_tokens ** length_penalty``
    and merged into the w finished slots; a request stops when every slot is filled and its best
    running beam, scored at its current length, cannot beat the worst slot.
    """
    w = num_beams
    b, v = first_logits.shape
    big = 1e9
    run_score = [np.array([0.0] + [-big] * (w - 1)) for _ in range(b)]
    run_toks: list[list[tuple[int, ...]]] = [[()] * w for _ in range(b)]
    run_lps: list[list[tuple[float, ...]]] = [[()] * w for _ in range(b)]
    # per request, up to w finished: (rank, tokens, logprobs, sum logprob, ended with EOT), best first
    finished: list[list[tuple]] = [[] for _ in range(b)]
    open_ = [m > 0 for m in max_new]
    parents: np.ndarray | None = None  # the caller's rows i*w .. i*w+w-1 start as copies of request i
    n = 0
    logits = np.repeat(first_logits, w, axis=0)
    while True:
        new_parents = np.arange(b * w)
        for i in range(b):
            if not open_[i]:
                continue
            cand = np.stack([run_score[i][j] + rules[i].apply(log_softmax(logits[i * w + j]), run_toks[i][j])
                             for j in range(w)])
            flat = cand.reshape(-1)
            top = _top(flat, 2 * w)
            at_limit = n + 1 >= max_new[i]
            hits = np.array([int(c) % v == eot or at_limit for c in top])
            keep = top[np.argsort(-(flat[top] - big * hits), kind="stable")[:w]]
            added = []
            for pos, c in enumerate(top[:w]):
                if not hits[pos] or not np.isfinite(flat[c]):
                    continue
                j, tok = divmod(int(c), v)
                total = float(flat[c])
                ended = tok == eot
                toks = run_toks[i][j] + (() if ended else (tok,))
                lps = run_lps[i][j] + (() if ended else (total - float(run_score[i][j]),))
                added.append((total / (n + 1) ** length_penalty, toks, lps, total, ended))
            merged = finished[i] + added
            merged.sort(key=lambda h: -h[0])
            finished[i] = merged[:w]
            scores, toks_, lps_ = [], [], []
            for c in keep:
                j, tok = divmod(int(c), v)
                hit = tok == eot or at_limit
                scores.append(float(flat[c]) - big * hit)
                toks_.append(run_toks[i][j] + (tok,))
                lps_.append(run_lps[i][j] + (float(flat[c]) - float(run_score[i][j]),))
                new_parents[i * w + len(scores) - 1] = i * w + j
            run_score[i], run_toks[i], run_lps[i] = np.array(scores), toks_, lps_
            if at_limit:
                open_[i] = False
            elif len(finished[i]) == w and not scores[0] / (n + 1) ** length_penalty > finished[i][-1][0]:
                open_[i] = False
        n += 1
        if not any(open_):
            break
        parents = new_parents
        tokens = np.array([run_toks[i][j][-1] for i in range(b) for j in range(w)], dtype=np.int64)
        logits = step(tokens, parents)
    out = []
    for i in range(b):
        if not finished[i]:
            out.append(Decoded((), (), 0.0, False))
            continue
        _, toks, lps, total, ended = finished[i][0]
        out.append(Decoded(tuple(toks), tuple(lps), float(total), bool(ended)))
    return out


def _top(flat: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values, largest first (ties: lower index first)."""
    if k < flat.shape[0]:
        part = np.argpartition(-flat, k - 1)[:k]
        kth = flat[part].min()
        # every index tied with the k-th value competes, so ties break by index as a stable sort would
        part = np.flatnonzero(flat >= kth)
    else:
        part = np.arange(flat.shape[0])
    return part[np.argsort(-flat[part], kind="stable")][:k]


@dataclass(frozen=True)
class WordSpan:
    tokens: tuple[int, ...]
    start_s: float
    end_s: float
    prob: float


def words_from_tokens(tok: WhisperTokens, tokens: Sequence[int], logprobs: Sequence[float], *, duration_s: float,
                      starts_word: Callable[[int], bool],
                      char_count: Callable[[Sequence[int]], int]) -> list[WordSpan]:
    """Split the generated ``tokens`` into words and give each a time.

    Segments are the spans between timestamp tokens (``<|t0|> text <|t1|>``); text before the first
    timestamp, or with timestamps off, starts at 0, and text not closed by a timestamp ends at
    ``duration_s``; times are clamped to [0, ``duration_s``]. A word starts at a token that
    ``starts_word`` (a leading space); tokens without one (punctuation, word pieces) join the word
    before. **Approximation:** within its segment each
    word gets a share of the segment's time proportional to its number of characters
    (``char_count`` of its tokens, at least 1) — not a forced alignment. ``prob`` is the mean
    probability of the word's tokens.
    """
    spans: list[WordSpan] = []
    seg: list[tuple[int, float]] = []
    seg_start = 0.0

    def flush(end: float) -> None:
        words: list[list[tuple[int, float]]] = []
        for t, lp in seg:
            if not words or starts_word(t):
                words.append([])
            words[-1].append((t, lp))
        start = min(seg_start, duration_s)
        end = min(max(end, start), duration_s)
        weights = np.array([max(1, char_count([t for t, _ in w])) for w in words], dtype=np.float64)
        edges = start + (end - start) * np.concatenate([[0.0], np.cumsum(weights)]) / weights.sum()
        for k, w in enumerate(words):
            probs = np.exp([lp for _, lp in w])
            spans.append(WordSpan(tuple(t for t, _ in w), float(edges[k]), float(edges[k + 1]), float(probs.mean())))

    for t, lp in zip(tokens, logprobs):
        if tok.is_timestamp(t):
            time = tok.time_of(t)
            if seg:
                flush(time)
                seg = []
            seg_start = time
            continue
        if t >= tok.eot:
            continue  # other specials carry no text
        seg.append((t, lp))
    if seg:
        flush(duration_s)
    return spans


FRAMES_PER_S = 50  # encoder positions per second (1500 in 30 s)
MEDIAN_WIDTH = 7


def median_filter(x: np.ndarray, width: int = MEDIAN_WIDTH) -> np.ndarray:
    """Median over a sliding window of ``width`` (odd) along the last axis, reflect-padded."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.median(windows, axis=-1)


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dynamic time warping through ``cost`` (N, M), from (0, 0) to (N-1, M-1) by steps that
    advance the row, the column or both; returns (rows, cols) of the path. Ties break as OpenAI's
    ``dtw_cpu``: the diagonal only when strictly cheapest, then the row step, else the column step.
    Computed one anti-diagonal at a time (vectorised)."""
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    trace = np.full((n + 1, m + 1), -1, dtype=np.int8)
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        c0, c1, c2 = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
        t = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        acc[i, j] = cost[i - 1, j - 1] + np.choose(t, [c0, c1, c2])
        trace[i, j] = t
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j = n, m
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        t = trace[i, j]
        if t == 0:
            i, j = i - 1, j - 1
        elif t == 1:
            i -= 1
        else:
            j -= 1
    arr = np.array(path[::-1])
    return arr[:, 0], arr[:, 1]


def split_words(text_tokens: Sequence[int], starts_word: Callable[[int], bool]) -> list[list[int]]:
    """Text tokens grouped into words: a word starts at a token with a leading space."""
    words: list[list[int]] = []
    for t in text_tokens:
        if not words or starts_word(t):
            words.append([])
        words[-1].append(t)
    return words


def aligned_word_times(qk: np.ndarray, words: Sequence[Sequence[int]], *, duration_s: float,
                       medfilt_width: int = MEDIAN_WIDTH) -> list[tuple[float, float]]:
    """Word (start, end) times from the alignment heads' cross-attention logits, OpenAI's
    ``find_alignment``: ``qk`` (A, n + 1, 1500) are the rows of the positions that predict each of
    the n text tokens and then EOT (the decoder ran on ``sot… <|notimestamps|> text… EOT``). Softmax
    over the frames of the audio, normalised per frame over tokens, median-filtered along time,
    averaged over heads; dynamic time warping assigns each token a first frame; a word runs from
    its first token's frame to the next word's."""
    n_frames = int(min(qk.shape[-1], max(1, round(duration_s * FRAMES_PER_S))))
    w = qk[:, :, :n_frames].astype(np.float64)
    w = np.exp(w - w.max(axis=-1, keepdims=True))
    w /= w.sum(axis=-1, keepdims=True)
    mean, std = w.mean(axis=-2, keepdims=True), w.std(axis=-2, keepdims=True)
    w = (w - mean) / np.where(std > 0, std, 1.0)
    matrix = median_filter(w, medfilt_width).mean(axis=0)
    rows, cols = dtw(-matrix)
    jumps = np.pad(np.diff(rows), (1, 0), constant_values=1).astype(bool)
    jump_times = cols[jumps] / FRAMES_PER_S
    bounds = np.pad(np.cumsum([len(t) for t in words]), (1, 0))
    return [(float(jump_times[bounds[k]]), float(jump_times[min(bounds[k + 1], len(jump_times) - 1)]))
            for k in range(len(words))]


__all__ = ["Decoded", "LogitRules", "WhisperTokens", "WordSpan", "aligned_word_times", "beam_search", "dtw",
           "greedy", "log_softmax", "median_filter", "prefix_tokens", "split_words", "words_from_tokens"]
