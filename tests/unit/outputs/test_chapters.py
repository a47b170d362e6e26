"""Chapters from finals: merging similar consecutive finals, titles, gaps, short chapters."""

from __future__ import annotations

from streamcap.outputs.chapters import Chapter, chapters_from_finals, chapters_since, word_overlap
from streamcap.core.types import Caption, CaptionState


def _f(seq: int, text: str, start: float, end: float) -> Caption:
    return Caption("cam", seq, CaptionState.FINAL, text, start, end)


def test_word_overlap_ignores_stopwords_and_order():
    assert word_overlap("a man walks in the street", "the street, a man walks") == 1.0
    assert word_overlap("a red circle moves left", "a blue square stays still") == 0.0
    assert 0.3 < word_overlap("a man walks in the street", "a man runs in the street") < 1.0


def test_similar_consecutive_finals_merge_and_the_longest_names_the_chapter():
    finals = [_f(0, "a man walks in the street", 0, 4), _f(1, "a man walks down the street", 4, 14),
              _f(2, "a red car is parked", 14, 20), _f(3, "a red car is parked outside", 20, 22)]
    assert chapters_from_finals(finals) == [Chapter(0, 14, "a man walks down the street", 2),
                                            Chapter(14, 22, "a red car is parked", 2)]


def test_a_gap_or_a_different_caption_starts_a_new_chapter_and_short_ones_fold():
    finals = [_f(0, "a dog runs", 0, 10), _f(1, "a dog runs", 15, 20), _f(2, "a cat sleeps", 20, 21),
              _f(3, "a bird sings", 21, 30)]
    assert [c.title for c in chapters_from_finals(finals)] == ["a dog runs", "a dog runs", "a cat sleeps",
                                                               "a bird sings"]
    folded = chapters_from_finals(finals, min_chapter_s=2.0)
    assert [(c.start_s, c.end_s, c.title, c.captions) for c in folded] == [
        (0, 10, "a dog runs", 1), (15, 21, "a dog runs", 2), (21, 30, "a bird sings", 1)]
    assert [c.title for c in chapters_since(folded, 21.0)] == ["a bird sings"]
    assert chapters_from_finals([]) == []


def test_a_similarity_callable_replaces_word_overlap():
    finals = [_f(0, "someone lies on the ground", 0, 5), _f(1, "a person is lying on the floor", 5, 9)]
    assert len(chapters_from_finals(finals)) == 2
    assert len(chapters_from_finals(finals, similarity=lambda a, b: 0.8)) == 1
