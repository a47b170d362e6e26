import json
import re

import pytest

from streamcap.subtitles import (
    MAX_LINE_CHARS,
    Cue,
    cues_from_finals,
    format_srt_time,
    format_vtt_time,
    to_jsonl,
    to_srt,
    to_webvtt,
    wrap_text,
)
from streamcap.types import Caption, CaptionState
from streamcap.wire import encode_caption

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


def check_well_formed(cues):
    for start, end, lines in cues:
        assert end > start
        assert 1 <= len(lines) <= 2
        assert all(len(line) <= MAX_LINE_CHARS for line in lines)
    for (_, end, _), (start, _, _) in zip(cues, cues[1:]):
        assert end <= start, "cues overlap"


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
    assert [(s, e) for s, e, _ in parsed] == [(0, 3000), (3000, 7250), (3_725_500, 3_730_000)]
    assert [" ".join(lines) for _, _, lines in parsed] == [c.text for c in CUES]


def test_time_formats():
    assert format_vtt_time(3_725_042) == "01:02:05.042"
    assert format_srt_time(3_725_042) == "01:02:05,042"
    assert format_vtt_time(0) == "00:00:00.000"
    assert format_vtt_time(100 * 3_600_000) == "100:00:00.000"


def test_times_round_to_nearest_millisecond():
    (start, end, _), = parse_vtt(to_webvtt([Cue(1.2344, 2.0006, "x")]))
    assert (start, end) == (1234, 2001)


def test_cues_are_sorted_and_overlaps_clipped():
    cues = [Cue(5.0, 9.0, "second"), Cue(0.0, 6.0, "first"), Cue(4.0, 4.0, "no duration")]
    parsed = parse_srt(to_srt(cues))
    check_well_formed(parsed)
    assert parsed == [(0, 5000, ["first"]), (5000, 9000, ["second"])]


def test_cue_clipped_to_nothing_is_dropped():
    parsed = parse_vtt(to_webvtt([Cue(2.0, 4.0, "hidden"), Cue(2.0, 5.0, "shown")]))
    assert [lines for _, _, lines in parsed] == [["shown"]]


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
    text = " ".join([TWO, TWO, "and a blue square stays still"])
    parsed = parse_srt(to_srt([Cue(10.0, 20.0, text)]))
    check_well_formed(parsed)
    assert len(parsed) == 2
    assert parsed[0][0] == 10_000 and parsed[-1][1] == 20_000
    assert parsed[0][1] == parsed[1][0]
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
