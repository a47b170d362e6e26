"""Whisper's decoding rules and word timing on a toy vocabulary: text tokens 0–9, then EOT and
the specials, then 51 timestamp tokens (0.00 … 1.00 s)."""

from __future__ import annotations

import numpy as np
import pytest

from streamcap.engine.whisper_rules import (
    LogitRules,
    WhisperTokens,
    beam_search,
    greedy,
    prefix_tokens,
    words_from_tokens,
)

TB = 19
V = TB + 51
TOK = WhisperTokens(sot=11, eot=10, sot_prev=16, no_timestamps=18, no_speech=17, timestamp_begin=TB,
                    transcribe=15, translate=14, languages={"en": 12, "de": 13}, suppress=(3,),
                    begin_suppress=(0, 10), max_initial_timestamp_index=5, max_target_positions=32,
                    max_prompt_tokens=4)


def _allowed(scores: np.ndarray) -> set[int]:
    return set(np.flatnonzero(np.isfinite(scores)).tolist())


def test_prefix_has_prompt_sot_language_task_and_notimestamps():
    assert prefix_tokens(TOK, multilingual=True, language="de", task="translate", timestamps=False,
                         prompt_ids=[1, 2, 3, 4, 5, 6]) == [16, 3, 4, 5, 6, 11, 13, 14, 18]
    assert prefix_tokens(TOK, multilingual=True, language="en", task="transcribe", timestamps=True) == [11, 12, 15]
    assert prefix_tokens(TOK, multilingual=False, language="en", task="transcribe", timestamps=True) == [11]
    with pytest.raises(ValueError, match="language"):
        prefix_tokens(TOK, multilingual=True, language="fr", task="transcribe", timestamps=True)


def test_without_timestamps_only_suppression_applies():
    rules = LogitRules(TOK, V, timestamps=False)
    zeros = np.zeros(V)
    assert _allowed(rules.apply(zeros, [])) == set(range(V)) - {0, 10, 3}
    assert _allowed(rules.apply(zeros, [5])) == set(range(V)) - {3}


def test_first_token_is_a_timestamp_no_later_than_the_initial_limit():
    rules = LogitRules(TOK, V, timestamps=True)
    assert _allowed(rules.apply(np.zeros(V), [])) == set(range(TB, TB + 6))


def test_timestamps_come_in_pairs_and_never_go_back():
    rules = LogitRules(TOK, V, timestamps=True)
    scores = np.zeros(V)
    scores[:TB] = 5.0  # text is likelier than any one timestamp: no timestamp is forced
    # after text that followed <|0.04|>: text, or a timestamp later than 0.04
    assert _allowed(rules.apply(scores, [TB + 2, 7])) == (set(range(TB)) - {3, 18}) | set(range(TB + 3, V))
    # after a lone timestamp <|0.10|> closing text: its partner (>= itself) or EOT, no text (the
    # specials between EOT and the timestamps are left to suppress_tokens, as in generate)
    allowed = _allowed(rules.apply(scores, [TB + 2, 7, TB + 5]))
    assert not allowed & set(range(TB + 5)) - set(range(10, TB - 1))
    assert {10} | set(range(TB + 5, V)) <= allowed
    # after a pair: text only, no timestamp
    assert _allowed(rules.apply(scores, [TB + 2, 7, TB + 5, TB + 5])) == set(range(TB)) - {3, 18}


def test_timestamp_is_forced_when_their_total_probability_beats_the_best_text_token():
    rules = LogitRules(TOK, V, timestamps=True)
    scores = np.zeros(V)
    scores[4] = 2.0  # the best text token: e² against 51 timestamps at e⁰ each
    assert _allowed(rules.apply(scores, [TB, 4])) == set(range(TB + 1, V))
    scores[4] = 5.0  # e⁵ ≈ 148 > 50: text may win
    assert 4 in _allowed(rules.apply(scores, [TB, 4]))


class _Toy:
    """A 'decoder' whose next-token logits depend only on the last token: a fixed table."""

    def __init__(self, seed: int = 0) -> None:
        self.table = np.random.default_rng(seed).normal(0, 3, (V, V))
        self.calls = 0

    def step(self, tokens, parents):
        self.calls += 1
        return self.table[tokens]


def test_greedy_stops_at_eot_or_the_limit_and_reports_logprobs():
    toy = _Toy()
    rules = [LogitRules(TOK, V, timestamps=False)] * 2
    first = np.stack([toy.table[2], toy.table[5]])
    out = greedy(first, toy.step, rules, [4, 1], eot=TOK.eot)
    assert len(out[1].tokens) == 1 and not out[1].finished
    for d in out:
        assert len(d.tokens) <= 4 and len(d.logprobs) == len(d.tokens)
        assert d.avg_logprob <= 0 and all(lp <= 0 for lp in d.logprobs)
        assert 3 not in d.tokens


def test_greedy_follows_the_argmax_of_the_processed_scores():
    toy = _Toy(1)
    rules = LogitRules(TOK, V, timestamps=True)
    out = greedy(toy.table[[11]], toy.step, [rules], [8], eot=TOK.eot)[0]
    seq, logits = [], toy.table[11]
    for t in out.tokens:
        assert t == int(np.argmax(rules.apply(logits, seq)))
        seq.append(t)
        logits = toy.table[t]


def test_beam_search_score_is_at_least_greedys():
    toy = _Toy(2)
    rules = [LogitRules(TOK, V, timestamps=False)]
    g = greedy(toy.table[[11]], toy.step, rules, [6], eot=TOK.eot)[0]
    b = beam_search(toy.table[[11]], toy.step, rules, [6], eot=TOK.eot, num_beams=4)[0]
    assert b.sum_logprob / (len(b.tokens) + b.finished) >= g.sum_logprob / (len(g.tokens) + g.finished) - 1e-9


def test_words_split_at_leading_spaces_and_share_the_segment_by_characters():
    # tokens: 1 = " hello", 2 = " a", 5 = ",", in the segment <|0.00|> … <|0.60|>
    text = {1: " hello", 2: " a", 5: ","}
    toks = [TB, 1, 5, 2, TB + 30, TB + 30, 2]
    spans = words_from_tokens(TOK, toks, [-0.1] * len(toks), duration_s=2.0,
                              starts_word=lambda t: text[t].startswith(" "),
                              char_count=lambda ids: len("".join(text[i] for i in ids).strip()))
    assert [s.tokens for s in spans] == [(1, 5), (2,), (2,)]
    # "hello," (6 characters) and "a" (1) share 0.0–0.6 s; the unclosed last word runs to the end of the audio
    assert spans[0].start_s == 0.0 and spans[0].end_s == pytest.approx(0.6 * 6 / 7)
    assert spans[1].end_s == pytest.approx(0.6)
    assert (spans[2].start_s, spans[2].end_s) == (pytest.approx(0.6), 2.0)
    assert spans[0].prob == pytest.approx(np.exp(-0.1))


def _dtw_reference(x):
    """OpenAI's dtw_cpu + backtrace, cell by cell."""
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf)
    trace = -np.ones((n + 1, m + 1))
    cost[0, 0] = 0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            cost[i, j] = x[i - 1, j - 1] + c
            trace[i, j] = t
    i, j = n, m
    trace[0, :] = 2
    trace[:, 0] = 1
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        if trace[i, j] == 0:
            i, j = i - 1, j - 1
        elif trace[i, j] == 1:
            i -= 1
        else:
            j -= 1
    return np.array(path[::-1]).T


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_dtw_takes_the_reference_path(seed):
    from streamcap.engine.whisper_rules import dtw

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(int(rng.integers(1, 9)), int(rng.integers(1, 30))))
    if seed % 2:
        x = np.round(x)  # ties
    rows, cols = dtw(x)
    ref = _dtw_reference(x)
    assert np.array_equal(rows, ref[0]) and np.array_equal(cols, ref[1])


def test_aligned_word_times_follow_the_attention_diagonal():
    from streamcap.engine.whisper_rules import FRAMES_PER_S, aligned_word_times

    # 4 tokens + EOT; token k attends to frames around 10·k (0.2 s apart)
    n_rows, frames = 5, 1500
    qk = np.full((2, n_rows, frames), -5.0)
    for k in range(n_rows):
        qk[:, k, 10 * k:10 * k + 10] = 5.0
    times = aligned_word_times(qk, [[1, 2], [3], [4]], duration_s=1.2)
    starts = [a for a, _ in times]
    assert starts == sorted(starts) and starts[0] == 0.0
    assert starts[1] == pytest.approx(20 / FRAMES_PER_S, abs=0.05)
    assert starts[2] == pytest.approx(30 / FRAMES_PER_S, abs=0.05)
    assert all(a <= e for a, e in times) and times[-1][1] <= 1.2
