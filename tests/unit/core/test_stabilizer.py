import pytest

from streamcap.core.stabilizer import CaptionStabilizer, normalize_text
from streamcap.core.types import Caption, CaptionResult, CaptionState

WINDOW_S, STRIDE_S = 3.0, 1.0
A = "a red circle moves left"
B = "a blue square stays still"


def replay(stab: CaptionStabilizer, texts: list[str], *, scores=None, first_index: int = 0):
    """Feed one window result per text on a simulated media clock; return all captions."""
    out: list[Caption] = []
    for offset, text in enumerate(texts):
        i = first_index + offset
        score = -0.1 if scores is None else scores[offset]
        start = i * STRIDE_S
        out += stab.observe(i, start, start + WINDOW_S, CaptionResult(text, score), capture_ns=i * 10**9)
    return out


def finals(captions):
    return [c for c in captions if c.state is CaptionState.FINAL]


def partials(captions):
    return [c for c in captions if c.state is CaptionState.PARTIAL]


def test_scripted_scenes_give_one_final_each_and_ignore_the_odd_window():
    stab = CaptionStabilizer("cam1", agree=2)
    script = [A] * 5 + ["a green triangle moves up"] + [A] * 2 + [B] * 4
    captions = replay(stab, script)
    captions += stab.flush()

    emitted = finals(captions)
    assert [c.text for c in emitted] == [A, B]
    assert (emitted[0].window_index, emitted[0].start_s, emitted[0].end_s) == (1, 0.0, 4.0)
    # B's run starts with window 8 (8..11 s) but A's final reaches window 7's end (10 s)
    assert (emitted[1].window_index, emitted[1].start_s, emitted[1].end_s) == (9, 10.0, 12.0)

    closed = stab.pop_closed_finals()
    assert [(c.seq, c.text, c.start_s, c.end_s) for c in closed] == [
        (emitted[0].seq, A, 0.0, 10.0),  # extended through window 7 across the odd window
        (emitted[1].seq, B, 10.0, 14.0),
    ]
    assert stab.pop_closed_finals() == []

    assert [c.text for c in partials(captions)] == [A, "a green triangle moves up", A, B]
    seqs = [c.seq for c in captions]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_unchanged_scene_emits_one_partial_and_one_final():
    stab = CaptionStabilizer("cam1", agree=2)
    captions = replay(stab, [A] * 20)
    assert [(c.state, c.window_index) for c in captions] == [
        (CaptionState.PARTIAL, 0),
        (CaptionState.FINAL, 1),
    ]


def test_final_needs_agree_consecutive_windows():
    stab = CaptionStabilizer("cam1", agree=3)
    assert finals(replay(stab, [A, A, B, A, A])) == []
    (final,) = finals(replay(stab, [A], first_index=5))
    assert (final.start_s, final.end_s) == (3.0, 8.0)


def test_alternating_texts_never_flip_the_final():
    stab = CaptionStabilizer("cam1", agree=2)
    captions = replay(stab, [A, A] + [B, A] * 5)
    assert [c.text for c in finals(captions)] == [A]


def test_texts_agree_after_normalisation():
    stab = CaptionStabilizer("cam1", agree=2)
    captions = replay(stab, ["A red  circle moves left", " a RED circle moves left "])
    assert len(partials(captions)) == 1
    assert len(finals(captions)) == 1
    assert normalize_text("  A  Red\tcircle ") == "a red circle"


def test_low_score_counts_as_disagreement_and_yields_no_partial():
    stab = CaptionStabilizer("cam1", agree=2, min_score=-1.0)
    captions = replay(stab, [A, A, A], scores=[-0.2, -3.0, -0.2])
    assert finals(captions) == []
    assert [c.window_index for c in partials(captions)] == [0]
    assert len(finals(replay(stab, [A], first_index=3))) == 1


def test_empty_text_counts_as_disagreement():
    stab = CaptionStabilizer("cam1", agree=2)
    captions = replay(stab, [A, "  ", A])
    assert finals(captions) == []


def test_final_text_and_score_come_from_the_agreeing_run():
    stab = CaptionStabilizer("cam1", agree=2)
    (final,) = finals(replay(stab, [A, A], scores=[-0.2, -0.4]))
    assert final.text == A
    assert final.score == pytest.approx(-0.3)
    assert final.capture_ns == 1 * 10**9
    assert final.stream == "cam1"


def test_flush_closes_open_final_and_commits_pending_only_when_asked():
    stab = CaptionStabilizer("cam1", agree=2)
    replay(stab, [A, A, B])
    assert stab.flush() == []
    assert [c.text for c in stab.pop_closed_finals()] == [A]

    stab = CaptionStabilizer("cam1", agree=2)
    replay(stab, [A, A, B])
    (pending,) = stab.flush(commit_pending=True)
    assert (pending.text, pending.start_s, pending.end_s) == (B, 4.0, 5.0)
    assert [c.text for c in stab.pop_closed_finals()] == [A, B]


def test_current_final_tracks_extended_span():
    stab = CaptionStabilizer("cam1", agree=2)
    assert stab.current_final is None
    replay(stab, [A] * 4)
    assert stab.current_final is not None
    assert (stab.current_final.start_s, stab.current_final.end_s) == (0.0, 6.0)


def test_windows_out_of_order_raise():
    stab = CaptionStabilizer("cam1", agree=2)
    replay(stab, [A], first_index=4)
    with pytest.raises(ValueError, match="window 4 after window 4"):
        stab.observe(4, 4.0, 7.0, CaptionResult(A, -0.1), 0)


def test_skipped_windows_do_not_break_agreement():
    stab = CaptionStabilizer("cam1", agree=2)
    captions = stab.observe(0, 0.0, 3.0, CaptionResult(A, -0.1), 0)
    captions += stab.observe(5, 5.0, 8.0, CaptionResult(A, -0.1), 0)
    assert [(c.start_s, c.end_s) for c in finals(captions)] == [(0.0, 8.0)]


def test_invalid_agree_raises():
    with pytest.raises(ValueError, match="agree"):
        CaptionStabilizer("cam1", agree=0)


def test_replay_is_deterministic():
    script = [A, A, B, B, B, A, A]
    first = replay(CaptionStabilizer("cam1", agree=2), script)
    second = replay(CaptionStabilizer("cam1", agree=2), script)
    assert first == second


def _res(text: str) -> CaptionResult:
    return CaptionResult(text, -0.1)


def test_after_a_cut_two_fresh_windows_make_a_final_when_the_straddling_window_misread():
    s = CaptionStabilizer("cam", agree=3, fresh_agree=2)
    out = []
    ends = [2.0 + 0.5 * k for k in range(20)]  # windows of 2 s; a cut at 6.0
    texts = {e: ("old" if e < 7.0 else "blend" if e == 7.5 else "new") for e in ends}
    for i, e in enumerate(ends):
        out += s.observe(i, e - 2.0, e, _res(texts[e]), 0, cut_s=6.0 if e - 2.0 >= 6.0 - 1e-9 else None)
    finals = [(c.text, c.end_s) for c in out if c.state is CaptionState.FINAL]
    # without the cut rule "new" would need windows 8.0, 8.5, 9.0 (3 s after the cut)
    assert finals == [("old", 3.0), ("new", 8.5)]


def test_fresh_windows_need_a_cut_during_the_current_final_and_still_agree():
    s = CaptionStabilizer("cam", agree=3, fresh_agree=2)
    out = []
    for i, (e, text) in enumerate([(2.0, "a"), (2.5, "a"), (3.0, "a"), (3.5, "b"), (4.0, "b")]):
        # a cut before the current final began does not count
        out += s.observe(i, e - 2.0, e, _res(text), 0, cut_s=0.0)
    assert [c.text for c in out if c.state is CaptionState.FINAL] == ["a"]
    with pytest.raises(ValueError):
        CaptionStabilizer("cam", agree=2, fresh_agree=3)


def test_a_final_agreed_by_key_is_renewed_after_refresh_s_with_the_latest_words() -> None:
    from streamcap.core.types import CaptionResult

    stab = CaptionStabilizer("cam", 2, refresh_s=3.0)
    texts = ["three people walk left", "four people walk left", "three people walk left", "four people walk left",
             "four people walk left", "three people walk left", "three people walk left", "three people walk left"]
    finals = []
    for i, text in enumerate(texts):  # one gist throughout ("people:3-4:left"), the words flicker
        out = stab.observe(i, 0.5 * i, 0.5 * i + 2.0, CaptionResult(text, -0.1, key="person:left"), 0)
        finals += [c for c in out if c.state is CaptionState.FINAL]
    # the first final after two agreeing windows; a renewal once it has lasted 3 s, only when the
    # words differ; spans never overlap
    assert [f.text for f in finals] == ["four people walk left", "three people walk left"]
    assert finals[1].start_s >= finals[0].end_s - 1e-9
    plain = CaptionStabilizer("cam", 2)  # no refresh: one final per gist
    got = [c for i, t in enumerate(texts)
           for c in plain.observe(i, 0.5 * i, 0.5 * i + 2.0, CaptionResult(t, -0.1, key="person:left"), 0)
           if c.state is CaptionState.FINAL]
    assert len(got) == 1


def test_a_carried_final_is_continued_not_published_again_and_other_words_still_commit():
    stab = CaptionStabilizer("cam", agree=2)
    before = Caption("cam", 41, CaptionState.FINAL, A, 100.0, 103.0)
    stab.carry_over(before)
    out = replay(stab, [A, A, A])  # the same scene after a worker restart
    assert finals(out) == []  # viewers already have it
    assert stab.current_final is not None and stab.current_final.seq == 41 and stab.current_final.text == A
    assert stab.current_final.start_s == 0.0  # its span comes from the new windows
    out = replay(stab, [B, B], first_index=3)
    assert [f.text for f in finals(out)] == [B]


def test_a_carried_final_with_other_words_is_forgotten():
    stab = CaptionStabilizer("cam", agree=2)
    stab.carry_over(Caption("cam", 41, CaptionState.FINAL, A, 100.0, 103.0))
    out = replay(stab, [B, B, A, A])
    assert [f.text for f in finals(out)] == [B, A]  # A after B is a new final


def test_carry_over_refuses_another_streams_final():
    with pytest.raises(ValueError):
        CaptionStabilizer("cam", agree=2).carry_over(Caption("other", 1, CaptionState.FINAL, A, 0.0, 1.0))
