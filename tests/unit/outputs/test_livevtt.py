import bisect
import io
import itertools
import math
import random
import re

import pytest
import webvtt

from streamcap.outputs.livevtt import MPEGTS_AT_ZERO, LiveVttSegmenter
from streamcap.outputs.subtitles import SubtitleRules
from streamcap.core.types import Caption, CaptionState

GAP_MS = 80
MAP = f"X-TIMESTAMP-MAP=MPEGTS:{MPEGTS_AT_ZERO},LOCAL:00:00:00.000"


def final(seq, start, end, text, stream="cam1"):
    return Caption(stream, seq, CaptionState.FINAL, text, start, end)


def url(n: int) -> str:
    return f"subtitles/{n}.vtt"


def _ms(ts: str) -> int:
    h, m, s = ts.split(":")
    return round((int(h) * 3600 + int(m) * 60 + float(s)) * 1000)


def cues(text: str) -> list[tuple[int, int, str]]:
    """A segment's cues as (start_ms, end_ms, text), parsed by webvtt-py."""
    assert text.startswith(f"WEBVTT\n{MAP}\n\n") or text == f"WEBVTT\n{MAP}\n", text
    return [(_ms(c.start), _ms(c.end), " ".join(c.text.split()))
            for c in webvtt.from_buffer(io.StringIO(text)).captions]


def check_playlist(text: str, *, ended: bool = False) -> list[tuple[float, str]]:
    """Checks an HLS media playlist; returns its (duration, uri) entries."""
    assert text.endswith("\n")
    lines = text.splitlines()
    assert lines[:2] == ["#EXTM3U", "#EXT-X-VERSION:3"]
    target = int(re.fullmatch(r"#EXT-X-TARGETDURATION:(\d+)", lines[2]).group(1))
    assert re.fullmatch(r"#EXT-X-MEDIA-SEQUENCE:\d+", lines[3])
    body = lines[4:]
    assert (body[-1:] == ["#EXT-X-ENDLIST"]) == ended
    assert "#EXT-X-ENDLIST" not in body[:-1]
    if ended:
        body = body[:-1]
    assert len(body) % 2 == 0
    entries = []
    for info, uri in zip(body[::2], body[1::2]):
        m = re.fullmatch(r"#EXTINF:(\d+\.\d{3}),", info)
        assert m, info
        duration = float(m.group(1))
        assert 0 < duration and round(duration) <= target
        assert uri and not uri.startswith("#")
        entries.append((duration, uri))
    return entries


def sequence(text: str) -> int:
    return int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", text).group(1))


def test_a_segment_completes_when_media_time_reaches_its_end():
    seg = LiveVttSegmenter(segment_s=6.0)
    seg.add_final(final(0, 1.0, 4.0, "a red circle"))
    seg.advance(5.999)
    assert seg.segment(0) is None and check_playlist(seg.playlist(url)) == []
    seg.advance(6.0)
    assert check_playlist(seg.playlist(url)) == [(6.0, "subtitles/0.vtt")]
    assert cues(seg.segment(0)) == [(1000, 6000, "a red circle")]  # current caption: held to the end
    assert seg.segment(1) is None and seg.completed_segments == 1


def test_a_republished_final_updates_its_cue_and_is_not_duplicated():
    seg = LiveVttSegmenter()
    seg.add_final(final(0, 0.0, 2.0, "a red circle"))
    seg.add_final(final(0, 0.0, 4.0, "a red circle"))  # the same final, closed with its full span
    seg.add_final(final(0, 0.0, 3.0, "a red circle"))  # an older copy: the latest end wins
    seg.add_final(final(1, 4.0, 5.0, "a blue square"))
    seg.advance(6.0)
    assert cues(seg.segment(0)) == [(0, 3920, "a red circle"), (4000, 6000, "a blue square")]


def test_a_cue_spanning_a_boundary_appears_in_both_segments_with_its_full_times():
    seg = LiveVttSegmenter()
    seg.add_final(final(0, 4.0, 8.0, "a red circle"))
    seg.add_final(final(1, 8.0, 9.0, "a blue square"))
    seg.advance(12.0)
    assert cues(seg.segment(0)) == [(4000, 7920, "a red circle")]
    assert cues(seg.segment(1)) == [(4000, 7920, "a red circle"), (8000, 12000, "a blue square")]


def test_the_current_caption_continues_in_the_next_segment_until_replaced():
    seg = LiveVttSegmenter()
    seg.add_final(final(0, 1.0, 2.0, "a red circle"))
    seg.advance(6.0)
    seg.advance(12.0)
    seg.add_final(final(1, 14.0, 15.0, "a blue square"))
    seg.advance(18.0)
    assert cues(seg.segment(0)) == [(1000, 6000, "a red circle")]
    assert cues(seg.segment(1)) == [(6080, 12000, "a red circle")]
    assert cues(seg.segment(2)) == [(12080, 13920, "a red circle"), (14000, 18000, "a blue square")]


def test_a_late_final_is_shown_after_the_frozen_cues_and_an_ended_one_is_skipped():
    seg = LiveVttSegmenter()
    seg.add_final(final(0, 0.0, 3.0, "first"))
    seg.add_final(final(1, 3.0, 5.0, "second"))
    seg.advance(6.0)  # "second" is current: frozen up to 6 s
    seg.add_final(final(1, 3.0, 5.5, "second"))  # closed: it had ended before 6 s
    seg.add_final(final(2, 5.5, 7.0, "third"))  # late: it started before 6 s
    seg.advance(12.0)
    assert cues(seg.segment(1)) == [(6080, 12000, "third")]


def test_the_window_slides_and_old_segments_expire():
    seg = LiveVttSegmenter(segment_s=6.0, window_segments=3)
    seg.add_final(final(0, 0.0, 1.0, "a red circle"))
    seg.advance(30.0)
    entries = check_playlist(seg.playlist(url))
    assert [uri for _, uri in entries] == ["subtitles/2.vtt", "subtitles/3.vtt", "subtitles/4.vtt"]
    assert sequence(seg.playlist(url)) == 2
    assert seg.segment(1) is None and seg.segment(2) is not None and seg.segment(5) is None
    seg.advance(36.5)
    assert sequence(seg.playlist(url)) == 3 and seg.segment(5) is not None


def test_a_jump_in_media_time_skips_segments_nobody_can_fetch():
    seg = LiveVttSegmenter(segment_s=6.0, window_segments=2)
    seg.add_final(final(0, 0.0, 1.0, "a red circle"))
    seg.advance(1_000_000.0)
    assert [uri for _, uri in check_playlist(seg.playlist(url))] == ["subtitles/166664.vtt",
                                                                       "subtitles/166665.vtt"]
    assert cues(seg.segment(166665)) == [(999_990_080, 999_996_000, "a red circle")]


def test_end_completes_a_shorter_last_segment_and_closes_the_playlist():
    seg = LiveVttSegmenter()
    seg.add_final(final(0, 1.0, 4.0, "a red circle"))
    seg.advance(7.0)
    assert "#EXT-X-ENDLIST" not in seg.playlist(url)
    seg.end(8.5)
    seg.end()  # idempotent
    assert seg.ended
    entries = check_playlist(seg.playlist(url), ended=True)
    assert entries == [(6.0, "subtitles/0.vtt"), (2.5, "subtitles/1.vtt")]
    assert cues(seg.segment(1)) == [(6080, 8500, "a red circle")]
    with pytest.raises(RuntimeError):
        seg.add_final(final(1, 9.0, 10.0, "late"))
    with pytest.raises(RuntimeError):
        seg.advance(20.0)


def test_end_on_a_boundary_adds_no_empty_segment():
    seg = LiveVttSegmenter()
    seg.end(12.0)
    assert [uri for _, uri in check_playlist(seg.playlist(url), ended=True)] == ["subtitles/0.vtt",
                                                                                   "subtitles/1.vtt"]
    assert cues(seg.segment(0)) == [] and seg.segment(2) is None


def test_partials_are_ignored_and_other_streams_refused():
    seg = LiveVttSegmenter()
    seg.add_final(Caption("cam1", 0, CaptionState.PARTIAL, "maybe", 0.0, 1.0))
    seg.advance(6.0)
    assert cues(seg.segment(0)) == []
    seg.add_final(final(1, 6.0, 7.0, "x"))
    with pytest.raises(ValueError):
        seg.add_final(final(2, 7.0, 8.0, "y", stream="cam2"))
    with pytest.raises(ValueError):
        seg.add_final(final(2, 8.0, 7.0, "backwards"))


def test_segments_map_media_time_zero_to_the_chosen_mpegts_time():
    seg = LiveVttSegmenter(segment_s=2.5, mpegts_at_zero=0)
    seg.advance(2.5)
    assert seg.segment(0) == "WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:0,LOCAL:00:00:00.000\n"
    assert "#EXT-X-TARGETDURATION:3" in seg.playlist(url)
    assert "#EXTINF:2.500," in seg.playlist(url)


def test_rules_shape_live_cues():
    seg = LiveVttSegmenter(rules=SubtitleRules(max_line_chars=10, max_lines=1))
    seg.add_final(final(0, 0.0, 1.0, "a red circle moves"))
    seg.add_final(final(1, 5.0, 6.0, "x"))
    seg.advance(6.0)
    texts = [t for _, _, t in cues(seg.segment(0))]
    assert texts == ["a red", "circle", "moves", "x"]


@pytest.mark.parametrize("kwargs", [{"segment_s": 0}, {"segment_s": float("inf")}, {"window_segments": 0},
                                    {"mpegts_at_zero": -1}, {"mpegts_at_zero": 2 ** 33}])
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        LiveVttSegmenter(**kwargs)


def stabiliser_feed(rng: random.Random, total_s: float, durations, max_words: int) -> list[Caption]:
    words = ["a", "red", "circle", "moves", "left", "and", "green", "triangle", "x" * 50]
    finals: list[Caption] = []
    t = 0.0
    while t < total_s:
        t += rng.choice([0.0, 0.0, rng.uniform(0.0, 10.0)])  # sometimes nothing is said for a while
        duration = rng.choice(durations)()
        text = " ".join(rng.choices(words, k=rng.randint(1, max_words)))
        finals.append(final(len(finals), round(t, 3), round(t + duration, 3), text))
        t += duration
    return finals


def play(finals: list[Caption], total_s: int, *, lag_s: float = 1.5, settle_s: float = 2.0):
    """Feeds finals as the server would: each is published ``lag_s`` after it starts with a
    short span, and again with its full span when the next one is published; media time
    settles ``settle_s`` late. Checks the playlist every second and that complete segments
    never change. Returns the segmenter (ended), every segment's text and the most items held."""
    events = []  # (media time the server learns it, caption)
    for f, nxt in zip(finals, finals[1:] + [None]):
        events.append((f.start_s + lag_s, Caption(f.stream, f.seq, f.state, f.text, f.start_s,
                                                  min(f.end_s, f.start_s + lag_s))))
        events.append(((nxt.start_s if nxt else f.end_s) + lag_s, f))
    events.sort(key=lambda e: e[0])
    seg = LiveVttSegmenter(segment_s=6.0, window_segments=10)
    seen: dict[int, str] = {}
    most_held = i = 0
    for now in range(1, total_s + 1):
        while i < len(events) and events[i][0] <= now:
            seg.add_final(events[i][1])
            i += 1
        before = seg.completed_segments
        seg.advance(max(0.0, now - settle_s))
        most_held = max(most_held, seg.held_items)
        if seg.completed_segments == before and now % 60:
            continue
        playlist = seg.playlist(url)
        entries = check_playlist(playlist)
        assert len(entries) <= 10
        first = sequence(playlist)
        for n in range(first, first + len(entries)):
            assert seen.setdefault(n, seg.segment(n)) == seg.segment(n), "a complete segment changed"
    seg.end()
    check_playlist(seg.playlist(url), ended=True)
    seen[seg.completed_segments - 1] = seg.segment(seg.completed_segments - 1)  # the short last one
    return seg, seen, most_held


def timeline_of(seen: dict[int, str]) -> list[tuple[int, int, str]]:
    """Every segment parses; together they form one cue timeline that keeps the rules, and each
    segment holds exactly the timeline's cues that overlap it."""
    timeline: set[tuple[int, int, str]] = set()
    for text in seen.values():
        timeline.update(cues(text))
    ordered = sorted(timeline)
    for start, end, _ in ordered:
        assert 834 <= end - start <= 7000
    for (_, end, _), (start, _, _) in itertools.pairwise(ordered):
        assert start - end >= GAP_MS
    starts = [start for start, _, _ in ordered]
    for n, text in seen.items():
        near = ordered[max(0, bisect.bisect_left(starts, n * 6000 - 7000)):bisect.bisect_left(starts, (n + 1) * 6000)]
        assert cues(text) == [c for c in near if c[1] > n * 6000]
    return ordered


def test_ten_thousand_seconds_of_captions_stay_bounded_and_every_segment_is_valid():
    rng = random.Random(7)  # a harsh feed: many sub-second finals with up to 20 words
    durations = [lambda: rng.uniform(0.0, 1.0), lambda: rng.uniform(1.0, 8.0), lambda: rng.uniform(8.0, 40.0)]
    finals = stabiliser_feed(rng, 10_000, durations, max_words=20)
    seg, seen, most_held = play(finals, 10_050)
    assert most_held <= 40, most_held
    assert sorted(seen) == list(range(math.ceil((10_050 - 2.0) / 6.0)))
    timeline_of(seen)
    # more text than 17 characters per second can show: some finals are too stale to show, counted
    assert 0 < seg.late_finals < 0.1 * len(finals)


def test_a_realistic_feed_loses_no_caption():
    rng = random.Random(3)
    durations = [lambda: rng.uniform(1.5, 8.0), lambda: rng.uniform(8.0, 40.0)]
    finals = stabiliser_feed(rng, 2_000, durations, max_words=8)
    seg, seen, _ = play(finals, 2_050)
    shown = iter(w for _, _, text in timeline_of(seen) for w in text.split())
    assert seg.late_finals == 0
    # every word of every final is shown, in order (repeats of the current caption in between)
    assert all(word in shown for f in finals for word in f.text.split())
