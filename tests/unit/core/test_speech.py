"""The streaming speech policy on simulated audio and scripted transcripts (pure logic)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from streamcap.core.speech import (
    SpeechPolicy,
    SpeechSettings,
    common_prefix,
    clamp_to_speech,
    drop_seam_repeat,
    warp_onto_speech,
    word_key,
)
from streamcap.core.types import AUDIO_RATE, AudioChunk, CaptionState, SpeechWord, Transcript

CHUNK_S = 0.1


def settings(**kw) -> SpeechSettings:
    base = dict(min_chunk_s=1.0, max_window_s=30.0, trim_s=15.0, vad_threshold=0.5, end_silence_s=0.5,
                pad_s=0.2, no_speech_threshold=0.6, logprob_threshold=-1.0, no_speech_alone=0.8,
                prompt_chars=200)
    base.update(kw)
    return SpeechSettings(**base)


def policy(live: bool = True, **kw) -> SpeechPolicy:
    return SpeechPolicy("cam", settings(**kw), live=live, seq=itertools.count())


def chunk(t: float, dur: float = CHUNK_S) -> AudioChunk:
    return AudioChunk("cam", 0, int(t * 1e9), t, np.full(int(round(dur * AUDIO_RATE)), 0.01, np.float32))


def feed_span(p: SpeechPolicy, t0: float, t1: float, prob: float):
    """Feed chunks from t0 to t1; return (time, window) for each window planned."""
    out = []
    t = t0
    while t < t1 - 1e-9:
        w = p.feed(chunk(t), prob)
        if w is not None:
            out.append((t, w))
        t = round(t + CHUNK_S, 6)
    return out


def transcript(words: list[tuple[str, float, float]], *, no_speech: float = 0.05, logprob: float = -0.2):
    ws = tuple(SpeechWord(t, s, e, 0.9) for t, s, e in words)
    return Transcript(" ".join(w.text for w in ws), ws, "en", no_speech, logprob)


def rel(window, words):
    """Words given on media time → relative to the window's audio."""
    return [(t, s - window.start_s, e - window.start_s) for t, s, e in words]


def test_silence_and_noise_never_make_a_window_and_keep_only_the_pad():
    p = policy()
    assert feed_span(p, 0.0, 20.0, prob=0.1) == []
    assert p.buffered_s <= 0.2 + CHUNK_S + 1e-6


def test_speech_makes_one_window_per_chunk_and_only_one_in_flight():
    p = policy()
    planned = feed_span(p, 0.0, 3.0, prob=0.9)
    assert len(planned) == 1  # the first is still in flight
    t, w = planned[0]
    assert w.audio is not None and w.track == "speech" and not w.final_pass
    assert w.end_s == pytest.approx(1.0, abs=0.11)
    assert len(w.audio) == pytest.approx((w.end_s - w.start_s) * AUDIO_RATE, abs=2)


def test_local_agreement_commits_the_prefix_two_hypotheses_share():
    p = policy()
    (_, w1), = feed_span(p, 0.0, 1.0, prob=0.9)
    caps = p.result(w1, transcript(rel(w1, [("Hello", 0.1, 0.4), ("wide", 0.5, 0.8)])))
    assert [c.state for c in caps] == [CaptionState.PARTIAL] and caps[0].text == "Hello wide"
    (_, w2), = feed_span(p, 1.0, 2.0, prob=0.9)
    caps = p.result(w2, transcript(rel(w2, [("Hello,", 0.1, 0.4), ("world", 0.5, 0.8), ("out", 1.2, 1.5)])))
    final, partial = caps
    assert final.state is CaptionState.FINAL and final.text == "Hello,"
    assert [w.text for w in final.words] == ["Hello,"] and final.words[0].end_s == pytest.approx(0.4, abs=0.01)
    assert partial.state is CaptionState.PARTIAL and partial.text == "world out"
    assert final.seq < partial.seq


def test_utterance_end_commits_every_word_in_a_final_pass():
    p = policy()
    (_, w1), = feed_span(p, 0.0, 1.0, prob=0.9)
    p.result(w1, transcript(rel(w1, [("Good", 0.1, 0.4)])))
    assert feed_span(p, 1.0, 1.4, prob=0.9) == []
    planned = feed_span(p, 1.4, 2.2, prob=0.05)
    assert len(planned) == 1
    _, w2 = planned[0]
    assert w2.final_pass
    caps = p.result(w2, transcript(rel(w2, [("Good", 0.1, 0.4), ("morning.", 0.5, 1.2)])))
    assert [(c.state, c.text) for c in caps] == [(CaptionState.FINAL, "Good morning.")]
    assert p.tentative == ()
    # silence afterwards: nothing more, the buffer shrinks back to the pad
    assert feed_span(p, 2.2, 6.0, prob=0.05) == []
    assert p.buffered_s <= 0.2 + CHUNK_S + 1e-6
    assert "morning." in p.prompt()


@pytest.mark.parametrize("no_speech, logprob, silent", [(0.9, -1.5, True), (0.93, -0.8, True),
                                                      (0.7, -1.2, True), (0.7, -0.5, False), (0.2, -1.5, False)])
def test_whisper_no_speech_verdict_emits_nothing(no_speech, logprob, silent):
    p = policy()
    (_, w1), = feed_span(p, 0.0, 1.0, prob=0.9)
    caps = p.result(w1, transcript(rel(w1, [("you", 0.1, 0.4)]), no_speech=no_speech, logprob=logprob))
    assert (caps == []) is silent


def test_words_repeated_at_the_seam_are_not_committed_twice():
    a = [SpeechWord(x, i, i + 0.5) for i, x in enumerate(["the", "cat", "sat"])]
    b = [SpeechWord(x, 2 + i, 2.5 + i) for i, x in enumerate(["Sat", "on", "the", "mat"])]
    assert drop_seam_repeat(a, b) == 1
    assert common_prefix(a, [SpeechWord("The", 0, 1), SpeechWord("dog", 1, 2)]) == 1
    assert word_key("Hello,") == "hello"


def test_full_live_buffer_drops_oldest_audio_and_counts_it():
    p = policy(max_window_s=3.0, trim_s=2.0, min_chunk_s=0.5)
    planned = feed_span(p, 0.0, 5.0, prob=0.9)  # the first window never comes back
    assert len(planned) == 1
    assert p.buffered_s == pytest.approx(3.0, abs=1e-6)
    assert p.dropped_s == pytest.approx(2.0, abs=0.01)


def test_a_file_buffer_reports_its_room_so_the_reader_can_wait():
    p = policy(live=False, max_window_s=3.0, trim_s=2.0, min_chunk_s=0.5)
    feed_span(p, 0.0, 2.5, prob=0.9)
    assert p.room_s() == pytest.approx(0.5, abs=1e-6)
    assert p.dropped_s == 0


def test_long_speech_is_trimmed_at_the_last_committed_sentence_end_and_becomes_prompt():
    p = policy(trim_s=4.0)
    said: list[tuple[str, float, float]] = [("One", 0.2, 0.5), ("two.", 0.6, 1.0), ("Three", 1.5, 1.9),
                                             ("four", 2.0, 2.4), ("five", 3.0, 3.4), ("six", 4.0, 4.4)]
    t = 0.0
    while t < 5.0:
        for when, w in feed_span(p, t, t + 1.0, prob=0.9):
            heard = [x for x in said if x[2] <= w.end_s]
            p.result(w, transcript(rel(w, heard)))
        t += 1.0
    assert p.buffer_start_s is not None and p.buffer_start_s >= 1.0 - 1e-6
    assert p.prompt().startswith("One two.")


def test_a_dropped_window_is_planned_again():
    p = policy()
    (_, w1), = feed_span(p, 0.0, 1.0, prob=0.9)
    p.dropped(w1)
    (_, again), = feed_span(p, 1.0, 1.1, prob=0.9)
    assert again.start_s == w1.start_s and again.index == w1.index + 1 and again.end_s > w1.end_s


def test_flush_commits_what_is_left_at_the_end_of_a_file():
    p = policy(live=False)
    (_, w1), = feed_span(p, 0.0, 1.0, prob=0.9)
    p.result(w1, transcript(rel(w1, [("Bye", 0.2, 0.6)])))
    w2 = p.flush()
    assert w2 is not None and w2.final_pass
    caps = p.result(w2, transcript(rel(w2, [("Bye", 0.2, 0.6)])))
    assert [c.text for c in caps] == ["Bye"] and caps[0].state is CaptionState.FINAL
    assert p.flush() is None


def test_result_for_a_window_not_in_flight_is_refused():
    p = policy()
    (_, w1), = feed_span(p, 0.0, 1.0, prob=0.9)
    p.result(w1, transcript([]))
    with pytest.raises(ValueError):
        p.result(w1, transcript([]))


def test_a_full_file_buffer_is_heard_at_once_and_commits_all_but_its_last_chunk():
    p = policy(live=False, max_window_s=3.0, trim_s=2.5, min_chunk_s=2.5)
    planned = feed_span(p, 0.0, 2.9, prob=0.9)
    assert [w.end_s for _, w in planned] == [pytest.approx(2.5)]
    p.result(planned[0][1], transcript([]))
    (_, full), = feed_span(p, 2.9, 3.0, prob=0.9)  # full: planned before min_chunk_s of new audio
    heard = [("one", 0.2, 0.6), ("two.", 0.7, 1.2), ("three", 2.6, 2.9)]
    caps = p.result(full, transcript(heard))
    assert [c.text for c in caps if c.state is CaptionState.FINAL] == ["one two."]
    assert p.room_s() > 1.0 and p.dropped_s == 0


def test_word_times_are_moved_onto_the_speech_the_vad_heard():
    words = [SpeechWord(t, i * 2.0, i * 2.0 + 1.5) for i, t in enumerate(["a", "b", "c", "d", "e"])]  # 0..9.5
    spans = [(2.0, 4.0), (6.0, 8.0)]
    warped = warp_onto_speech(words, spans)
    assert all(any(a - 1e-9 <= w.start_s <= w.end_s <= b + 1e-9 for a, b in spans) for w in warped)
    assert [w.text for w in warped] == ["a", "b", "c", "d", "e"]
    assert warped[0].start_s == 2.0 and warped[-1].end_s == 8.0
    assert all(x.start_s <= y.start_s for x, y in zip(warped, warped[1:]))
    assert warp_onto_speech(words, []) == words


def test_a_sentence_ending_in_silence_keeps_its_words_in_the_speech():
    p = policy()
    feed_span(p, 0.0, 1.0, prob=0.05)
    final = None
    for t, prob in [(1.0 + i * 0.1, 0.9) for i in range(20)] + [(3.0 + i * 0.1, 0.05) for i in range(10)]:
        w = p.feed(chunk(round(t, 6)), prob)
        if w is not None and w.final_pass:
            final = w
            break
        if w is not None:
            p.result(w, transcript([]))
    assert final is not None
    # Whisper lets the sentence run on to the window's end (into the silence)
    caps = p.result(final, transcript(rel(final, [("It", final.start_s, 1.8), ("rains.", 1.8, final.end_s)])))
    words = caps[0].words
    assert words[0].start_s >= 1.0 - 0.2 and words[-1].end_s <= 3.0 + 0.2


def test_a_final_pass_that_stopped_early_is_heard_again_from_the_last_committed_word():
    p = policy()
    planned = feed_span(p, 0.0, 4.0, prob=0.9) + feed_span(p, 4.0, 4.6, prob=0.05)
    first = planned[0][1]
    p.result(first, transcript([]))
    planned = feed_span(p, 4.6, 4.7, prob=0.05)
    (_, fin), = planned
    assert fin.final_pass
    caps = p.result(fin, transcript(rel(fin, [("One", 0.1, 0.5), ("two", 0.6, 1.0)])))
    assert [c.text for c in caps] == ["One two"]
    (_, again), = feed_span(p, 4.7, 4.8, prob=0.05)
    assert again.final_pass and again.start_s >= 0.6
    caps = p.result(again, transcript(rel(again, [("three", 2.0, 3.0), ("four.", 3.1, 3.9)])))
    assert [c.text for c in caps] == ["three four."]
    assert feed_span(p, 4.8, 6.0, prob=0.05) == []  # heard out: no third pass


def test_aligned_words_stretched_over_a_pause_are_cut_back_to_their_speech():
    spans = [(0.5, 5.1), (7.4, 12.0)]
    words = [SpeechWord("comes", 4.2, 4.6), SpeechWord("up.", 4.66, 6.34), SpeechWord("She", 6.01, 7.9),
             SpeechWord("sets", 7.9, 8.2), SpeechWord("hm", 6.2, 6.4)]
    got = clamp_to_speech(words, spans)
    assert [(w.text, w.start_s, w.end_s) for w in got] == [
        ("comes", 4.2, 4.6), ("up.", 4.66, 5.1), ("She", 7.4, 7.9), ("sets", 7.9, 8.2), ("hm", 6.2, 6.4)]


def test_a_word_at_the_very_end_of_the_audio_is_not_committed_by_agreement():
    p = policy(commit_margin_s=0.4)
    (_, w1), = feed_span(p, 0.0, 1.0, prob=0.9)
    p.result(w1, transcript(rel(w1, [("Good", 0.1, 0.4), ("mor", 0.7, 1.0)])))
    (_, w2), = feed_span(p, 1.0, 2.0, prob=0.9)
    caps = p.result(w2, transcript(rel(w2, [("Good", 0.1, 0.4), ("mor", 0.7, 1.0)])))
    assert [c.text for c in caps if c.state is CaptionState.FINAL] == ["Good mor"]  # 1 s before the end
    p2 = policy(commit_margin_s=0.4, min_chunk_s=0.1)
    v1 = [w for _, w in feed_span(p2, 0.0, 0.1, prob=0.9)][0]
    p2.result(v1, transcript([]))
    v1 = [w for _, w in feed_span(p2, 0.1, 1.0, prob=0.9)][0]  # planned with the first chunk after the result
    assert v1.end_s == pytest.approx(0.2)
    p2.result(v1, transcript([]))
    planned = [w for _, w in feed_span(p2, 0.2, 1.0, prob=0.9)]
    w_a = planned[0]
    p2.result(w_a, transcript(rel(w_a, [("Good", 0.0, 0.2), ("mor", 0.2, w_a.end_s)])))
    (_, w_b), = feed_span(p2, 1.0, 1.1, prob=0.9)
    caps = p2.result(w_b, transcript(rel(w_b, [("Good", 0.0, 0.2), ("mor", 0.2, w_b.end_s - 0.1)])))
    assert [c.text for c in caps if c.state is CaptionState.FINAL] == ["Good"]  # "mor" ends at the edge


def test_whisper_echoing_the_last_words_at_the_next_utterance_is_not_committed_again():
    p = policy()
    planned = feed_span(p, 0.0, 2.0, prob=0.9) + feed_span(p, 2.0, 2.6, prob=0.05)
    p.result(planned[0][1], transcript([]))
    (_, fin), = feed_span(p, 2.6, 2.7, prob=0.05)
    p.result(fin, transcript(rel(fin, [("the", 0.2, 0.4), ("park", 0.5, 0.9), ("fills", 1.0, 1.4)])))
    feed_span(p, 2.7, 5.0, prob=0.05)  # a pause: the buffer is cut, the words become prompt
    planned = feed_span(p, 5.0, 7.0, prob=0.9) + feed_span(p, 7.0, 7.6, prob=0.05)
    p.result(planned[0][1], transcript([]))
    (_, fin2), = feed_span(p, 7.6, 7.7, prob=0.05)
    echo = [("the", 5.0, 5.1), ("park", 5.1, 5.2), ("fills", 5.2, 5.3), ("A", 5.4, 5.5), ("dog", 5.6, 6.0)]
    caps = p.result(fin2, transcript(rel(fin2, echo)))
    assert [c.text for c in caps] == ["A dog"]


def test_with_an_agree_gap_a_word_is_committed_only_against_a_hearing_far_enough_before():
    p = policy(min_chunk_s=0.5, agree_gap_s=0.9, commit_margin_s=0.0)
    heard = [("Good", 0.1, 0.4), ("morning", 0.5, 0.9)]
    finals = []
    t = 0.0
    while t < 3.0:
        for _, w in feed_span(p, t, t + 0.1, prob=0.9):
            finals += [c for c in p.result(w, transcript(rel(w, [x for x in heard if x[2] <= w.end_s])))
                       if c.state is CaptionState.FINAL]
            if finals:
                assert w.end_s >= 0.5 + 0.9 - 1e-6  # the first hearing with the word ended at 0.5 s or later
        t = round(t + 0.1, 6)
    assert [c.text for c in finals] == ["Good", "morning"] or [c.text for c in finals] == ["Good morning"]
