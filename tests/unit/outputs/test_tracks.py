"""Speech and picture finals merged into one subtitle stream, under the subtitle rules."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from streamcap.core.types import Caption, CaptionState, SpeechWord
from streamcap.outputs.subtitles import SubtitleRules, shape_cues
from streamcap.outputs.tracks import merge_tracks, speech_cues
from tests.unit.outputs.test_subtitles import check_rules

RULES = SubtitleRules()


def speech_final(seq: int, words: list[tuple[str, float, float]]) -> Caption:
    ws = tuple(SpeechWord(t, s, e) for t, s, e in words)
    return Caption("s", seq, CaptionState.FINAL, " ".join(w.text for w in ws), ws[0].start_s, ws[-1].end_s,
                   track="speech", words=ws)


def video_final(seq: int, text: str, start: float, end: float) -> Caption:
    return Caption("s", seq, CaptionState.FINAL, text, start, end, track="video")


def test_speech_fragments_are_packed_into_sentence_cues():
    finals = [speech_final(1, [("Good", 0.0, 0.3), ("morning", 0.4, 0.8)]),
              speech_final(2, [("everyone.", 0.9, 1.4)]),
              speech_final(3, [("Today", 3.5, 3.9), ("we", 4.0, 4.1), ("start.", 4.2, 4.6)])]
    cues = speech_cues(finals, RULES)
    assert [c.text for c in cues] == ["Good morning everyone.", "Today we start."]
    assert cues[0].start_s == 0.0 and cues[0].end_s == 1.4


def test_picture_cues_are_bracketed_and_only_where_nobody_speaks():
    finals = [video_final(1, "a person walks in", 0.0, 10.0),
              speech_final(2, [("Hello", 1.0, 1.5), ("there.", 1.6, 2.0)])]
    cues = merge_tracks(finals, RULES)
    scene = [c for c in cues if c.text.startswith("[")]
    assert [c.text for c in scene] == ["[a person walks in]"]
    assert scene[0].start_s >= 2.0 + RULES.min_gap_s  # after the speech cue's minimum display
    assert scene[0].end_s == 10.0


def test_a_picture_cue_with_no_room_between_speech_is_left_out():
    finals = [video_final(1, "a car", 1.0, 1.5), speech_final(2, [("Talking", 0.5, 2.5)])]
    assert [c.text for c in merge_tracks(finals, RULES)] == ["Talking"]


words_st = st.lists(st.tuples(st.sampled_from(["hello", "world.", "the", "cat", "sat", "x" * 30, "on?"]),
                              st.floats(0.05, 1.5), st.floats(0.0, 3.0)), min_size=1, max_size=40)
scenes_st = st.lists(st.tuples(st.sampled_from(["a dog runs", "a person walks left", "nothing moves"]),
                               st.floats(0, 100), st.floats(0.1, 20)), max_size=10)


@settings(max_examples=150, deadline=None)
@given(words_st, scenes_st)
def test_mixed_tracks_keep_every_subtitle_rule_and_every_spoken_word(spoken, scenes):
    t, seq, finals, said = 0.0, itertools.count(), [], []
    for text, dur, pause in spoken:
        t += pause
        finals.append(speech_final(next(seq), [(text, t, t + dur)]))
        said.append(text)
        t += dur
    finals += [video_final(next(seq), text, s, s + d) for text, s, d in scenes]
    cues = merge_tracks(finals, RULES)
    shaped = shape_cues(cues, RULES)
    check_rules(shaped, RULES)
    spoken_out = [w for c in shaped if not c.repeat for w in c.text.split() if not w.startswith("[")]
    scene_words = {w for text, _, _ in scenes for w in text.split()} | {w + "]" for text, _, _ in scenes
                                                                        for w in text.split()}
    assert [w for w in spoken_out if w not in scene_words] == said  # every spoken word, in order
