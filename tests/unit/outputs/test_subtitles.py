import io
import itertools
import json
import re

import pytest
import srt
import webvtt
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcap.outputs.subtitles import (
    MAX_LINE_CHARS,
    Cue,
    SubtitleRules,
    cues_from_finals,
    format_srt_time,
    format_vtt_time,
    shape_cues,
    to_jsonl,
    to_srt,
    to_webvtt,
    wrap_text,
)
from streamcap.core.types import Caption, CaptionState
from streamcap.outputs.wire import encode_caption

TWO = "a red circle moves left and a green triangle moves up"  # 53 chars


# -- strict parsers (the subset of WebVTT / SRT the writers produce) --------------------------

VTT_TIME = r"(\d{2,}):([0-5]\d):([0-5]\d)\.(\d{3})"
SRT_TIME = r"(\d{2,}):([0-5]\d):([0-5]\d),(\d{3})"


def _ms(groups) -> int:
    h, m, s, ms = (int(g) for g in groups)
    return ((h * 60 + m) * 60 + s) * 1000 + ms


def parse_vtt(text: str) -> list[tuple[int, int, list[str]]]:
    assert text.startswith("WEBVTT\n\n"), "missing WEBVTT header and blank line"
    assert text.endswith("\n") and not text.endswith("\n\n\n")
    body = text[len("WEBVTT\n\n"):]
    cues = []
    for block in filter(None, body.split("\n\n")):
        timing, *lines = block.strip("\n").split("\n")
        m = re.fullmatch(VTT_TIME + " --> " + VTT_TIME, timing)
        assert m, f"bad VTT timing line {timing!r}"
        assert lines and all(line and "-->" not in line for line in lines)
        cues.append((_ms(m.groups()[:4]), _ms(m.groups()[4:]), lines))
    return cues


def parse_srt(text: str) -> list[tuple[int, int, list[str]]]:
    assert text.endswith("\n") and not text.endswith("\n\n\n")
    cues = []
    for number, block in enumerate(filter(None, text.split("\n\n")), start=1):
        index, timing, *lines = block.strip("\n").split("\n")
        assert index == str(number), f"SRT cue numbered {index!r}, expected {number}"
        m = re.fullmatch(SRT_TIME + " --> " + SRT_TIME, timing)
        assert m, f"bad SRT timing line {timing!r}"
        assert lines and all(lines)
        cues.append((_ms(m.groups()[:4]), _ms(m.groups()[4:]), lines))
    return cues


GAP_MS = 80  # 2 frames at 25 fps
MIN_MS = 834  # 5/6 s, rounded up


def check_well_formed(cues):
    for start, end, lines in cues:
        assert MIN_MS <= end - start <= 7000
        assert 1 <= len(lines) <= 2
        assert all(len(line) <= MAX_LINE_CHARS for line in lines)
    for (_, end, _), (start, _, _) in itertools.pairwise(cues):
        assert start - end >= GAP_MS, "cues overlap or are too close"


# -- tests ------------------------------------------------------------------------------------

CUES = [
    Cue(0.0, 3.0, "a red circle moves left"),
    Cue(3.0, 7.25, "a blue square stays still"),
    Cue(3725.5, 3730.0, TWO),
]


@pytest.mark.parametrize("writer, parser", [(to_webvtt, parse_vtt), (to_srt, parse_srt)])
def test_written_cues_parse_back_with_the_same_times_and_text(writer, parser):
    parsed = parser(writer(CUES))
    check_well_formed(parsed)
    # the first cue ends two frames before the second starts
    assert [(s, e) for s, e, _ in parsed] == [(0, 2920), (3000, 7250), (3_725_500, 3_730_000)]
    assert [" ".join(lines) for _, _, lines in parsed] == [c.text for c in CUES]


def test_time_formats():
    assert format_vtt_time(3_725_042) == "01:02:05.042"
    assert format_srt_time(3_725_042) == "01:02:05,042"
    assert format_vtt_time(0) == "00:00:00.000"
    assert format_vtt_time(100 * 3_600_000) == "100:00:00.000"


def test_times_round_to_nearest_millisecond():
    (start, end, _), = parse_vtt(to_webvtt([Cue(1.2344, 3.0006, "x")]))
    assert (start, end) == (1234, 3001)


def test_cues_are_sorted_and_overlaps_clipped_with_a_gap():
    cues = [Cue(5.0, 9.0, "second"), Cue(0.0, 6.0, "first"), Cue(4.0, 4.0, "no duration")]
    parsed = parse_srt(to_srt(cues))
    check_well_formed(parsed)
    # the zero-length cue is kept for the minimum duration (5/6 s)
    assert parsed == [(0, 3920, ["first"]), (4000, 4834, ["no duration"]), (5000, 9000, ["second"])]


def test_cue_with_no_room_before_the_next_is_merged_into_it():
    parsed = parse_vtt(to_webvtt([Cue(2.0, 4.0, "first"), Cue(2.0, 5.0, "second"), Cue(2.5, 3.0, "third")]))
    assert parsed == [(2000, 5000, ["first second third"])]


def test_empty_text_is_skipped():
    parsed = parse_vtt(to_webvtt([Cue(0, 1, "   "), Cue(1, 2, ""), Cue(2, 3, "kept")]))
    assert parsed == [(2000, 3000, ["kept"])]
    assert to_webvtt([]) == "WEBVTT\n"
    assert to_srt([]) == ""


def test_invalid_times_raise():
    with pytest.raises(ValueError):
        to_srt([Cue(2.0, 1.0, "backwards")])
    with pytest.raises(ValueError):
        to_webvtt([Cue(-1.0, 1.0, "negative")])
    with pytest.raises(ValueError):
        to_webvtt([Cue(0.0, float("inf"), "forever")])


def test_long_text_wraps_into_two_balanced_lines():
    (block,) = wrap_text(TWO)
    assert block == ["a red circle moves left and", "a green triangle moves up"]
    assert wrap_text("a red circle moves left") == [["a red circle moves left"]]
    assert wrap_text(" \n ") == []


def test_text_longer_than_two_lines_becomes_consecutive_cues():
    text = f"{TWO} {TWO} and a blue square stays still"
    parsed = parse_srt(to_srt([Cue(10.0, 20.0, text)]))
    check_well_formed(parsed)
    assert len(parsed) == 2
    assert parsed[0][0] == 10_000 and parsed[-1][1] == 20_000
    assert parsed[1][0] - parsed[0][1] == GAP_MS
    assert " ".join(line for _, _, lines in parsed for line in lines) == text


def test_vtt_escapes_markup_characters():
    (_, _, lines), = parse_vtt(to_webvtt([Cue(0, 1, "a <b> & c --> d")]))
    assert lines == ["a &lt;b&gt; &amp; c --&gt; d"]


def final(seq, start, end, text, state=CaptionState.FINAL):
    return Caption("cam1", seq, state, text, start, end)


def test_cues_from_finals_keeps_finals_only_with_their_widest_span():
    captions = [
        final(0, 0.0, 3.0, "a", CaptionState.PARTIAL),
        final(1, 0.0, 4.0, "a"),
        final(5, 10.0, 12.0, "b"),
        final(1, 0.0, 10.0, "a"),  # the same final, closed with its full span
    ]
    assert cues_from_finals(captions) == [Cue(0.0, 10.0, "a"), Cue(10.0, 12.0, "b")]


def test_jsonl_writes_one_wire_caption_per_line():
    captions = [final(0, 0.0, 3.0, "a", CaptionState.PARTIAL), final(1, 0.0, 4.0, "a é")]
    lines = to_jsonl(captions).splitlines()
    assert lines == [encode_caption(c) for c in captions]
    records = [json.loads(line) for line in lines]
    assert [(r["seq"], r["state"], r["text"]) for r in records] == [(0, "partial", "a"), (1, "final", "a é")]
    assert to_jsonl(captions, encode=lambda c: str(c.seq)) == "0\n1\n"


# -- subtitle rules -----------------------------------------------------------------------------

def times(cues):
    return [(c.start_ms, c.end_ms) for c in cues]


def test_short_cue_is_extended_into_free_time_for_its_reading_speed():
    text = "a red circle moves left and a green square"  # 42 chars: 2.471 s at 17 cps
    (cue,) = shape_cues([Cue(1.0, 1.5, text)])
    assert times([cue]) == [(1000, 3471)]


def test_extension_stops_two_frames_before_the_next_cue():
    text = "a red circle moves left and a green square"
    cues = shape_cues([Cue(1.0, 1.5, text), Cue(2.5, 4.0, "next")])
    assert times(cues) == [(1000, 2420), (2500, 4000)]  # no room for 17 cps: faster, not an error


def test_short_cue_gets_the_minimum_duration():
    assert times(shape_cues([Cue(1.0, 1.1, "hi")])) == [(1000, 1834)]
    assert times(shape_cues([Cue(1.0, 1.0, "hi")])) == [(1000, 1834)]


def test_cue_longer_than_the_maximum_repeats_its_text_in_equal_cues():
    cues = shape_cues([Cue(0.0, 30.0, "a dog runs")])
    assert times(cues) == [(0, 5936), (6016, 11952), (12032, 17968), (18048, 23984), (24064, 30000)]
    assert {c.text for c in cues} == {"a dog runs"}
    assert [c.repeat for c in cues] == [False, True, True, True, True]


def test_rules_are_configurable():
    rules = SubtitleRules(max_line_chars=10, max_lines=1, max_cps=10.0, min_duration_s=1.0,
                          max_duration_s=4.0, min_gap_frames=3, fps=30.0)
    cues = shape_cues([Cue(0.0, 1.0, "a red circle moves"), Cue(9.0, 9.5, "x")], rules)
    assert [c.lines for c in cues] == [("a red",), ("circle",), ("moves",), ("x",)]
    assert times(cues) == [(0, 1000), (1100, 2100), (2200, 3200), (9000, 10000)]


@pytest.mark.parametrize("kwargs", [
    {"max_line_chars": 0}, {"max_lines": 0}, {"max_cps": 0.0}, {"max_cps": float("nan")},
    {"min_duration_s": 0.0}, {"fps": 0.0}, {"min_gap_frames": -1}, {"max_lines": 1.5},
    {"min_duration_s": 4.0},  # more than half the maximum (7 s) less the gap
])
def test_invalid_rules_raise(kwargs):
    with pytest.raises(ValueError):
        SubtitleRules(**kwargs)


def test_writers_take_rules():
    rules = SubtitleRules(min_gap_frames=0)
    cues = [Cue(0.0, 3.0, "one"), Cue(3.0, 6.0, "two")]
    assert [(s, e) for s, e, _ in parse_vtt(to_webvtt(cues, rules))] == [(0, 3000), (3000, 6000)]
    assert [(s, e) for s, e, _ in parse_srt(to_srt(cues, rules))] == [(0, 3000), (3000, 6000)]


# -- properties over random caption streams ------------------------------------------------------

WORDS = ["a", "red", "circle", "moves", "left", "and", "the", "dog", "runs", "quickly", "across",
         "café", "don't", "&", "<b>", "x" * 43, "supercalifragilisticexpialidocious-and-then-some",
         "y" * 95]

texts = st.one_of(
    st.lists(st.sampled_from(WORDS), max_size=30).map(" ".join),
    st.sampled_from(["", "  ", "\n\t "]),
)
durations_ms = st.one_of(st.just(0), st.integers(1, 1500), st.integers(1500, 8000), st.integers(8000, 60_000))
captions = st.builds(lambda start, duration, text: Cue(start / 1000, (start + duration) / 1000, text),
                     st.integers(0, 120_000), durations_ms, texts)


@st.composite
def rules_strategy(draw):
    fps = draw(st.sampled_from([24.0, 25.0, 29.97, 30.0, 50.0]))
    gap_frames = draw(st.integers(0, 4))
    min_s = draw(st.floats(0.1, 2.0))
    max_s = 2 * min_s + gap_frames / fps + draw(st.floats(0.01, 8.0))
    return SubtitleRules(max_line_chars=draw(st.integers(5, 60)), max_lines=draw(st.integers(1, 3)),
                         max_cps=draw(st.floats(3.0, 40.0)), min_duration_s=min_s, max_duration_s=max_s,
                         min_gap_frames=gap_frames, fps=fps)


def check_rules(shaped, rules: SubtitleRules) -> None:
    for i, cue in enumerate(shaped):
        duration = cue.end_ms - cue.start_ms
        assert rules.min_duration_ms <= duration <= rules.max_duration_ms, cue
        assert 1 <= len(cue.lines) <= rules.max_lines, cue
        assert all(len(line) <= rules.max_line_chars or " " not in line for line in cue.lines), cue
        assert all(line and line == " ".join(line.split()) for line in cue.lines), cue
        if len(cue.text) * 1000 > rules.max_cps * duration + 1e-6:  # faster than max_cps: only with no room
            no_room = i + 1 < len(shaped) and shaped[i + 1].start_ms - cue.end_ms == rules.min_gap_ms
            assert no_room or cue.repeat or duration == rules.max_duration_ms, (cue, shaped[i + 1:i + 2])
        if cue.repeat:
            assert i > 0 and shaped[i - 1].lines == cue.lines
    for a, b in itertools.pairwise(shaped):
        assert b.start_ms - a.end_ms >= rules.min_gap_ms, (a, b)


def words_in_order(cues) -> list[str]:
    ordered = sorted(cues, key=lambda c: (round(c.start_s * 1000), round(c.end_s * 1000)))
    return [w for c in ordered for w in c.text.split()]


@settings(max_examples=200, deadline=None)
@given(st.lists(captions, max_size=30))
def test_shaped_cues_keep_every_rule_and_every_word(cues):
    shaped = shape_cues(cues)
    check_rules(shaped, SubtitleRules())
    assert [w for c in shaped if not c.repeat for w in c.text.split()] == words_in_order(cues)
    starts = {round(c.start_s * 1000) for c in cues if c.text.strip()}
    assert not shaped or shaped[0].start_ms == min(starts)  # nothing starts before its caption


@settings(max_examples=100, deadline=None)
@given(st.lists(captions, max_size=20), rules_strategy())
def test_shaped_cues_keep_every_rule_under_any_valid_rules(cues, rules):
    shaped = shape_cues(cues, rules)
    check_rules(shaped, rules)
    assert [w for c in shaped if not c.repeat for w in c.text.split()] == words_in_order(cues)


@settings(max_examples=100, deadline=None)
@given(st.lists(captions, max_size=30))
def test_written_subtitles_parse_back_with_real_parsers(cues):
    shaped = shape_cues(cues)
    vtt = webvtt.from_buffer(io.StringIO(to_webvtt(cues))).captions
    assert [(c.start, c.end) for c in vtt] == [(format_vtt_time(c.start_ms), format_vtt_time(c.end_ms))
                                               for c in shaped]
    subs = list(srt.parse(to_srt(cues)))
    assert [(round(s.start.total_seconds() * 1000), round(s.end.total_seconds() * 1000)) for s in subs] \
        == times(shaped)
    assert [s.content for s in subs] == ["\n".join(c.lines) for c in shaped]
