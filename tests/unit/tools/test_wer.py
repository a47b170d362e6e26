"""tools/wer.py: our English normaliser, WER counts through jiwer, words emitted in quiet stretches."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tools.wer import (
    hallucinations_in_quiet,
    inserted_words,
    load_truth,
    normalize,
    number_words,
    ordinal_words,
    word_error_rate,
    words_in_quiet,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("Hello,  World!", "hello world"),
    ("Mr. Brown met Dr. Green & Mrs. White.", "mister brown met doctor green and missus white"),
    ("It\u2019s OK, isn't it?", "it's okay isn't it"),
    ("a well-known, half/half mix", "a well known half half mix"),
    ("Um, we walked uh home.", "we walked home"),
    ("10% of 1,200 is 120", "ten percent of one thousand two hundred is one hundred twenty"),
    ("the 1st, 2nd, 3rd and 21st", "the first second third and twenty first"),
    ("'quoted' words", "quoted words"),
    ("   ", ""),
])
def test_normalize_spells_out_what_whisper_writes_differently(text, expected):
    assert normalize(text) == expected


def test_number_words_cover_the_scales():
    assert number_words(0) == "zero"
    assert number_words(15) == "fifteen"
    assert number_words(40) == "forty"
    assert number_words(1_000_001) == "one million one"
    assert number_words(2_019) == "two thousand nineteen"
    assert ordinal_words(12) == "twelfth" and ordinal_words(90) == "ninetieth"
    with pytest.raises(ValueError):
        number_words(-1)


def test_wer_counts_substitutions_deletions_and_insertions():
    result = word_error_rate("the small cat sat on the mat", "so the big cat sat on mat")
    assert (result.substitutions, result.deletions, result.insertions) == (1, 1, 1)
    assert result.hits == 5
    assert result.reference_words == 7 and result.hypothesis_words == 7
    assert result.wer == pytest.approx(3 / 7)


def test_wer_is_zero_when_only_case_and_punctuation_differ():
    assert word_error_rate("The bus was late, again.", "the bus was late again").wer == 0.0


def test_wer_joins_a_sequence_of_sentences():
    result = word_error_rate(["One fine day.", "Rain later."], "one fine day rain later")
    assert result.wer == 0.0 and result.reference_words == 5


def test_wer_of_empty_sides():
    assert word_error_rate("", "").wer == 0.0
    only_inserted = word_error_rate("", "you")
    assert only_inserted.insertions == 1 and only_inserted.wer == 1.0
    nothing_heard = word_error_rate("a quiet day", "")
    assert nothing_heard.deletions == 3 and nothing_heard.wer == 1.0


@dataclass
class _Word:  # the shape of streamcap.core.types.SpeechWord shifted to media time
    text: str
    start_s: float
    end_s: float


def test_words_in_quiet_counts_words_whose_middle_falls_inside_a_shrunk_stretch():
    quiet = [{"kind": "silence", "start_s": 5.0, "end_s": 7.5},
             {"kind": "noise", "start_s": 12.0, "end_s": 14.5}]
    words = [
        _Word("edge", 4.8, 5.3),  # middle 5.05: inside the stretch but within the margin
        _Word("you", 6.0, 6.2),  # a hallucination in silence
        {"text": "thanks", "start_s": 13.0, "end_s": 13.4},  # in noise
        _Word("speech", 9.0, 9.5),
    ]
    found = words_in_quiet(words, quiet, margin_s=0.25)
    assert [(w.text, w.kind) for w in found] == [("you", "silence"), ("thanks", "noise")]
    assert len(words_in_quiet(words, quiet, margin_s=0.0)) == 3


def test_load_truth_reads_a_speech_media_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"schema": "streamcap-speech-truth/1", "clip": "c", "text": "Hi there.",
                                "duration_s": 3.0, "quiet": [{"kind": "noise", "start_s": 0.0,
                                                               "end_s": 2.0}],
                                "sentences": []}))
    truth = load_truth(path)
    assert truth.text == "Hi there." and truth.quiet[0]["kind"] == "noise"
    path.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ValueError):
        load_truth(path)


def test_inserted_words_are_those_nobody_said():
    words = [_Word("The", 0.0, 0.2), _Word("cat,", 0.2, 0.5), _Word("you", 3.0, 3.2),
             _Word("sat.", 5.0, 5.3), _Word("uh", 5.3, 5.4)]
    assert [w.text for w in inserted_words("The cat sat.", words)] == ["you"]
    assert inserted_words("The cat sat.", []) == []
    assert [w.text for w in inserted_words("", words[:2])] == ["The", "cat,"]


def test_hallucinations_in_quiet_leave_out_real_words_stretched_over_a_pause():
    quiet = [{"kind": "silence", "start_s": 2.0, "end_s": 4.5}]
    words = [
        _Word("Rain", 0.5, 1.0),
        _Word("again.", 1.0, 4.0),  # said before the pause, its end time stretched into it
        _Word("Thank", 3.0, 3.2), _Word("you.", 3.2, 3.4),  # said by nobody, in the silence
        _Word("Sun", 4.4, 5.0),
    ]
    assert [w.text for w in words_in_quiet(words, quiet)] == ["again.", "Thank", "you."]
    found = hallucinations_in_quiet("Rain again. Sun", words, quiet)
    assert [(w.text, w.kind) for w in found] == [("Thank", "silence"), ("you.", "silence")]
