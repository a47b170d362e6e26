"""Token search on a scripted decoder (a bigram table): pure logic, milliseconds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamcap.engine.decoding import DecodeOptions, apply_repetition_penalty, decode

EOS, PAD, BOS = 0, 1, 2
V = 6


def bigram(table: dict[int, dict[int, float]]):
    """A decoder whose next-token probabilities depend only on the last token; returns the
    prefill logits for a batch of ``b`` rows and a step function that tracks cache rows."""

    def logits_after(tok: int) -> np.ndarray:
        p = np.full(V, 1e-6)
        for t, prob in table.get(int(tok), {}).items():
            p[t] = prob
        return np.log(p / p.sum())

    calls = []

    def step(tokens: np.ndarray, parents):
        calls.append((tokens.copy(), None if parents is None else parents.copy()))
        return np.stack([logits_after(t) for t in tokens])

    def first(b: int) -> np.ndarray:
        return np.stack([logits_after(BOS)] * b)

    return first, step, calls


def test_greedy_follows_the_argmax_and_stops_at_eos():
    first, step, _ = bigram({BOS: {3: 0.9, 4: 0.1}, 3: {4: 0.8, EOS: 0.2}, 4: {EOS: 1.0}})
    [h] = decode(first(1), [BOS], step, DecodeOptions(max_new_tokens=10), eos_id=EOS, pad_id=PAD)
    assert h.tokens == (3, 4) and h.finished
    assert h.score == pytest.approx((math.log(0.9) + math.log(0.8) + math.log(1.0)) / 3, abs=1e-4)


def test_greedy_stops_at_the_length_limit_unfinished():
    first, step, _ = bigram({BOS: {3: 1.0}, 3: {3: 1.0}})
    [h] = decode(first(1), [BOS], step, DecodeOptions(max_new_tokens=4), eos_id=EOS, pad_id=PAD)
    assert h.tokens == (3, 3, 3, 3) and not h.finished


def test_finished_rows_are_fed_padding_while_others_go_on():
    table = {BOS: {3: 1.0}, 3: {EOS: 1.0}, 4: {5: 1.0}, 5: {EOS: 1.0}}
    first, step, calls = bigram(table)
    logits = first(2)
    logits[1] = -50.0
    logits[1, 4] = 0.0  # row 1 starts with token 4
    hyps = decode(logits, [BOS], step, DecodeOptions(max_new_tokens=5), eos_id=EOS, pad_id=PAD)
    assert [h.tokens for h in hyps] == [(3,), (4, 5)]
    assert calls[1][0].tolist() == [PAD, 5]


def test_min_new_tokens_blocks_eos():
    first, step, _ = bigram({BOS: {EOS: 0.7, 3: 0.3}, 3: {EOS: 0.6, 4: 0.4}, 4: {EOS: 0.9, 3: 0.1}})
    [short] = decode(first(1), [BOS], step, DecodeOptions(max_new_tokens=6), eos_id=EOS, pad_id=PAD)
    [longer] = decode(first(1), [BOS], step, DecodeOptions(max_new_tokens=6, min_new_tokens=3),
                      eos_id=EOS, pad_id=PAD)
    assert short.tokens == ()
    assert longer.tokens == (3, 4, 3) and longer.finished


def test_repetition_penalty_follows_the_hugging_face_rule():
    scores = np.array([[2.0, -2.0, 1.0, 0.5]])
    out = apply_repetition_penalty(scores, [[0, 1, 1]], 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, 0.5]]
    assert scores.tolist() == [[2.0, -2.0, 1.0, 0.5]]  # input untouched


def test_repetition_penalty_changes_the_greedy_path():
    first, step, _ = bigram({BOS: {3: 0.6, 4: 0.4}, 3: {3: 0.55, 5: 0.45}, 5: {EOS: 1.0}, 4: {EOS: 1.0}})
    [plain] = decode(first(1), [BOS], step, DecodeOptions(max_new_tokens=3), eos_id=EOS, pad_id=PAD)
    [pen] = decode(first(1), [BOS], step, DecodeOptions(max_new_tokens=3, repetition_penalty=1.5),
                   eos_id=EOS, pad_id=PAD)
    assert plain.tokens == (3, 3, 3)
    assert pen.tokens == (3, 5)


def test_beam_search_finds_the_more_probable_sequence_greedy_misses():
    # greedy: 3 (0.6) then 0.4 at best; beam: 4 (0.4) then 1.0 → 0.4 > 0.24
    table = {BOS: {3: 0.6, 4: 0.4}, 3: {5: 0.4, 4: 0.3, EOS: 0.3}, 4: {EOS: 1.0}, 5: {EOS: 1.0}}
    first, step, calls = bigram(table)
    [g] = decode(first(1), [BOS], step, DecodeOptions(max_new_tokens=4), eos_id=EOS, pad_id=PAD)
    first, step, calls = bigram(table)
    [b] = decode(first(1), [BOS], step, DecodeOptions(max_new_tokens=4, num_beams=2), eos_id=EOS, pad_id=PAD)
    assert g.tokens == (3, 5)
    assert b.tokens == (4,) and b.finished
    assert b.score == pytest.approx(math.log(0.4) / 2, abs=1e-4)
    # the first step expands the one prefilled row into two beams
    assert calls[0][1].tolist() == [0, 0]


def test_beam_search_keeps_rows_of_a_batch_apart():
    table = {BOS: {3: 0.5, 4: 0.5}, 3: {EOS: 1.0}, 4: {5: 1.0}, 5: {EOS: 1.0}}
    first, step, calls = bigram(table)
    logits = first(2)
    logits[1] = np.log(np.array([1e-6, 1e-6, 1e-6, 1e-6, 1e-6, 1.0]))  # row 1 starts at 5
    hyps = decode(logits, [BOS], step, DecodeOptions(max_new_tokens=4, num_beams=2), eos_id=EOS, pad_id=PAD)
    assert hyps[0].tokens in ((3,), (4, 5))
    assert hyps[1].tokens == (5,)
    assert calls[0][1].tolist() == [0, 0, 1, 1]  # prefill row i → beams 2i, 2i+1
    for _, parents in calls[1:]:  # later reorders stay inside each row's own beams
        assert all(p // 2 == i // 2 for i, p in enumerate(parents))


@pytest.mark.parametrize("kw", [{"max_new_tokens": 0}, {"num_beams": 0}, {"repetition_penalty": 0.0},
                                {"min_new_tokens": 5, "max_new_tokens": 3}])
def test_bad_options_are_refused(kw):
    with pytest.raises(ValueError):
        DecodeOptions(**kw)
