"""Token search for encoder-decoder captioners: greedy and beam search over a cached decoder.

Pure numpy: no ONNX, no I/O. The engine hands in the first logits (from the prefill graph) and a
``step`` callable; this module decides which tokens to feed and which cache rows each new row
continues from. ``step(tokens, parents)`` must first reorder its cache rows as ``parents`` says
(row i continues from old row ``parents[i]``; ``None`` = keep the rows as they are), then run one
decoder step on ``tokens`` (N,) and return logits (N, V).

Semantics follow Hugging Face ``generate`` where it matters for parity: in greedy search the
logit processors (repetition penalty, minimum length) act on raw logits and finished rows are fed
the pad token; in beam search they act on log-probabilities and hypotheses are ranked by
``sum log p / n_tokens ** length_penalty``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Step = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


@dataclass(frozen=True)
class DecodeOptions:
    max_new_tokens: int = 20
    min_new_tokens: int = 0
    num_beams: int = 1
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError("min_new_tokens must be between 0 and max_new_tokens")
        if self.num_beams < 1:
            raise ValueError("num_beams must be at least 1")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be positive (1.0 = off)")


@dataclass(frozen=True)
class Hypothesis:
    tokens: tuple[int, ...]  # generated tokens, without the prompt, without EOS or padding
    score: float  # mean log-probability per generated token (EOS included when it was generated)
    finished: bool  # ended with EOS (False: stopped at max_new_tokens)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def apply_repetition_penalty(scores: np.ndarray, history: Sequence[Sequence[int]], penalty: float) -> np.ndarray:
    """Hugging Face's rule: every token already in the row's history (prompt included) has its
    score divided by ``penalty`` when positive, multiplied when negative."""
    if penalty == 1.0:
        return scores
    scores = scores.copy()
    for row, seen in enumerate(history):
        idx = np.fromiter(set(seen), dtype=np.int64)
        if idx.size:
            s = scores[row, idx]
            scores[row, idx] = np.where(s < 0, s * penalty, s / penalty)
    return scores


def _process(scores: np.ndarray, history: Sequence[Sequence[int]], n_new: int, opts: DecodeOptions,
             eos_id: int) -> np.ndarray:
    scores = apply_repetition_penalty(scores, history, opts.repetition_penalty)
    if n_new < opts.min_new_tokens:
        scores = scores.copy()
        scores[:, eos_id] = -np.inf
    return scores


def greedy(first_logits: np.ndarray, prompt: Sequence[int], step: Step, opts: DecodeOptions, *,
           eos_id: int, pad_id: int) -> list[Hypothesis]:
    """Greedy search for a batch whose rows share ``prompt`` (start token included)."""
    b = first_logits.shape[0]
    seqs: list[list[int]] = [[] for _ in range(b)]
    done = np.zeros(b, dtype=bool)
    logp = np.zeros(b, dtype=np.float64)
    logits = first_logits
    for t in range(opts.max_new_tokens):
        scores = _process(logits, [list(prompt) + s for s in seqs], t, opts, eos_id)
        nxt = scores.argmax(axis=-1)
        lp = log_softmax(scores)[np.arange(b), nxt]
        for i in np.flatnonzero(~done):
            seqs[i].append(int(nxt[i]))
            logp[i] += lp[i]
        done |= nxt == eos_id
        if done.all() or t == opts.max_new_tokens - 1:
            break
        feed = np.where(done, pad_id, nxt).astype(np.int64)
        logits = step(feed, None)
    out = []
    for s, total in zip(seqs, logp):
        finished = bool(s) and s[-1] == eos_id
        out.append(Hypothesis(tuple(s[:-1] if finished else s), float(total / max(1, len(s))), finished))
    return out


def beam_search(first_logits: np.ndarray, prompt: Sequence[int], step: Step, opts: DecodeOptions, *,
                eos_id: int, pad_id: int) -> list[Hypothesis]:
    """Beam search with ``opts.num_beams`` beams per row; returns the best hypothesis per row."""
    w = opts.num_beams
    b, v = first_logits.shape
    lp0 = _process(log_softmax(first_logits), [list(prompt)] * b, 0, opts, eos_id)
    # per row, up to w hypotheses (rank, tokens, sum log p, ended with EOS), best first
    finished: list[list[tuple[float, tuple[int, ...], float, bool]]] = [[] for _ in range(b)]

    def rank(total: float, n: int) -> float:
        return total / (max(1, n) ** opts.length_penalty)

    # beams: per row, w (sum logp, tokens) pairs; candidates ending in EOS become hypotheses
    beams: list[list[tuple[float, tuple[int, ...]]]] = []
    for i in range(b):
        order = np.argsort(-lp0[i], kind="stable")[: 2 * w]
        live = []
        for tok in order:
            total = float(lp0[i, tok])
            if tok == eos_id:
                if len(live) < w:
                    _add(finished[i], (rank(total, 1), (), total, True), w)
                continue
            live.append((total, (int(tok),)))
            if len(live) == w:
                break
        beams.append(live)
    parents = np.repeat(np.arange(b), w)
    for t in range(1, opts.max_new_tokens):
        if all(_row_done(finished[i], beams[i], w, t, rank) for i in range(b)):
            break
        tokens = np.array([bm[j][1][-1] if j < len(bm) else pad_id for bm in beams for j in range(w)],
                          dtype=np.int64)
        logits = step(tokens, parents)
        history = [list(prompt) + list(bm[j][1]) if j < len(bm) else list(prompt) for bm in beams for j in range(w)]
        lp = _process(log_softmax(logits), history, t, opts, eos_id)
        new_parents = np.zeros(b * w, dtype=np.int64)
        for i in range(b):
            cur = beams[i]
            if _row_done(finished[i], cur, w, t, rank):
                new_parents[i * w:(i + 1) * w] = i * w
                continue
            cand = np.full((w, v), -np.inf)
            for j, (total, _) in enumerate(cur):
                cand[j] = total + lp[i * w + j]
            flat = cand.reshape(-1)
            order = np.argsort(-flat, kind="stable")[: 2 * w]
            live, rows = [], []
            for c in order:
                j, tok = divmod(int(c), v)
                total = float(flat[c])
                if not np.isfinite(total):
                    break
                if tok == eos_id:
                    if len(live) < w:
                        _add(finished[i], (rank(total, t + 1), cur[j][1], total, True), w)
                    continue
                live.append((total, cur[j][1] + (tok,)))
                rows.append(i * w + j)
                if len(live) == w:
                    break
            beams[i] = live
            new_parents[i * w:i * w + len(rows)] = rows
            new_parents[i * w + len(rows):(i + 1) * w] = rows[0] if rows else i * w
        parents = new_parents
    out = []
    for i in range(b):
        for total, toks in beams[i]:  # stopped by the length limit: live beams compete too
            _add(finished[i], (rank(total, len(toks)), toks, total, False), w)
        _, toks, total, ended = finished[i][0]
        out.append(Hypothesis(toks, total / max(1, len(toks) + ended), ended))
    return out


def _add(hyps: list, hyp: tuple, w: int) -> None:
    hyps.append(hyp)
    hyps.sort(key=lambda h: -h[0])
    del hyps[w:]


def _row_done(finished: list, live: list, w: int, t: int, rank) -> bool:
    if not live:
        return True
    if len(finished) < w:
        return False
    best_live = max(rank(total, t) for total, _ in live)
    return best_live <= min(h[0] for h in finished)


def decode(first_logits: np.ndarray, prompt: Sequence[int], step: Step, opts: DecodeOptions, *,
           eos_id: int, pad_id: int) -> list[Hypothesis]:
    fn = greedy if opts.num_beams == 1 else beam_search
    return fn(first_logits, prompt, step, opts, eos_id=eos_id, pad_id=pad_id)
