"""tools/speech_media.py's pure parts: the script, clip schedules, noise at a given SNR, resampling,
word timing from espeak-ng's word events, and a whole clip assembled from stand-in speech."""

from __future__ import annotations

import numpy as np
import pytest

from tools import speech_media as sm

RATE = sm.RATE


def test_script_is_ours_long_enough_and_plain():
    script = sm.load_script()
    assert len(script) >= 25
    words = [w for s in script for w, _a, _b in sm.word_spans(s)]
    assert len(words) >= 320
    assert not any(ch.isdigit() for s in script for ch in s)
    assert all(s.endswith(".") for s in script)


def test_every_clip_uses_each_sentence_once_and_has_long_silence_and_noise():
    used = [i for plan in sm.CLIPS for i in plan.sentences]
    assert sorted(used) == list(range(len(sm.load_script())))
    assert len({plan.voice for plan in sm.CLIPS}) >= 4
    assert all(150 <= plan.rate_wpm <= 175 for plan in sm.CLIPS)
    clean = [p for p in sm.CLIPS if p.snr_db is None]
    assert all({"silence", "noise"} <= set(p.gaps) for p in clean)
    assert [p.snr_db for p in sm.CLIPS if p.snr_db is not None] == [10.0]
    assert sm.GAP_S >= 2.0


def test_clip_plan_refuses_a_wrong_number_of_gaps():
    with pytest.raises(ValueError):
        sm.ClipPlan("x", "en-us", 160, (0, 1), ())
    with pytest.raises(ValueError):
        sm.ClipPlan("x", "en-us", 160, (0, 1), ("music",))


def test_schedule_is_contiguous_with_lead_gaps_and_tail():
    schedule = sm.build_schedule([RATE * 3, RATE * 2, RATE], ["silence", "noise"], gap_s=2.5,
                                 lead_s=0.5, tail_s=1.0)
    assert [s.kind for s in schedule] == ["silence", "speech", "silence", "speech", "noise",
                                          "speech", "silence"]
    assert schedule[0].start == 0
    assert all(a.end == b.start for a, b in zip(schedule, schedule[1:]))
    assert [s.sentence for s in schedule if s.kind == "speech"] == [0, 1, 2]
    assert schedule[2].end - schedule[2].start == round(2.5 * RATE)
    assert schedule[-1].end == RATE * 6 + round(0.5 * RATE) + 2 * round(2.5 * RATE) + RATE
    with pytest.raises(ValueError):
        sm.build_schedule([RATE], ["silence"])


def test_noise_scaled_for_an_snr_measures_back_at_that_snr():
    rng = np.random.default_rng(3)
    t = np.arange(RATE * 2) / RATE
    speech = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    noise = sm.pink_noise(len(speech), rng)
    for target in (0.0, 10.0, 20.0):
        scaled = sm.noise_for_snr(speech, noise, target)
        assert sm.snr_db(speech, scaled) == pytest.approx(target, abs=1e-3)
        mixture = speech + scaled
        assert sm.snr_db(speech, mixture - speech) == pytest.approx(target, abs=1e-2)


def test_pink_noise_is_seeded_unit_rms_and_falls_with_frequency():
    a = sm.pink_noise(RATE * 4, np.random.default_rng(1))
    b = sm.pink_noise(RATE * 4, np.random.default_rng(1))
    assert np.array_equal(a, b)
    assert sm.rms(a) == pytest.approx(1.0, rel=1e-4)
    power = np.abs(np.fft.rfft(a)) ** 2
    freqs = np.fft.rfftfreq(len(a), 1 / RATE)
    low = power[(freqs > 100) & (freqs < 200)].mean()
    high = power[(freqs > 3200) & (freqs < 6400)].mean()
    # 1/f power: the mean over an octave falls 3 dB per octave, 5 octaves from 100 Hz to 3200 Hz
    assert 10 * np.log10(low / high) == pytest.approx(15.0, abs=1.5)


def test_fade_ramps_both_ends():
    faded = sm.fade(np.ones(RATE, np.float32), fade_s=0.01)
    assert faded[0] == 0.0 and faded[-1] < 0.01 and faded[RATE // 2] == 1.0


def test_resample_keeps_a_tone_and_gives_the_exact_length():
    rate_in = 22_050
    t = np.arange(rate_in) / rate_in
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = sm.resample(tone, rate_in, RATE)
    assert len(out) == RATE
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) == pytest.approx(440, abs=1)
    assert sm.rms(out[1000:-1000]) == pytest.approx(sm.rms(tone), rel=0.02)


def test_events_are_assigned_to_words_by_character_position():
    sentence = "Rain falls, then stops."
    events = [(1, 4, 0.0), (6, 5, 0.4), (13, 4, 0.9), (18, 5, 1.3)]
    assert sm.assign_events(sentence, events, 2.0) == [(0.0, False), (0.4, False), (0.9, False),
                                                        (1.3, False)]


def test_a_word_espeak_joins_to_its_neighbour_is_interpolated_by_length():
    # "on the corner": espeak-ng gives "the" no event of its own
    sentence = "sat on the corner"
    events = [(1, 3, 0.0), (5, 2, 0.5), (12, 6, 0.8)]
    starts = sm.assign_events(sentence, events, 1.5)
    assert starts[:2] == [(0.0, False), (0.5, False)]
    assert starts[2] == (pytest.approx(0.5 + 0.3 * 3 / 7, abs=1e-3), True)  # "on " 3 of "on the " 7
    assert starts[3] == (0.8, False)


def test_an_event_left_inside_the_previous_word_goes_to_the_next_one():
    # "too much": espeak-ng reports the second event at a position still inside "too"
    sentence = "far too much tea"
    events = [(1, 3, 0.0), (5, 3, 0.3), (6, 3, 0.55), (14, 3, 0.9)]
    assert [t for t, _ in sm.assign_events(sentence, events, 1.4)] == [0.0, 0.3, 0.55, 0.9]
    assert not any(guessed for _, guessed in sm.assign_events(sentence, events, 1.4))


def test_trailing_words_without_events_share_the_rest_of_the_sentence():
    starts = sm.assign_events("one two three", [(1, 3, 0.0)], 1.2)
    assert [g for _, g in starts] == [False, True, True]
    # by length in characters plus a space: "one " 4, "two " 4, "three " 6 of 14
    assert starts[1][0] == pytest.approx(1.2 * 4 / 14, abs=1e-3)
    assert starts[2][0] == pytest.approx(1.2 * 8 / 14, abs=1e-3)


def test_word_ends_at_its_last_loud_frame_before_the_next_word():
    samples = np.zeros(RATE * 2, np.float32)
    samples[int(0.1 * RATE):int(0.6 * RATE)] = 0.5  # word one: 0.1–0.6 s, then a pause
    samples[int(1.0 * RATE):int(1.5 * RATE)] = 0.5  # word two: 1.0–1.5 s
    times = sm.word_times(samples, [0.1, 1.0], RATE)
    assert times == [(0.1, 0.6), (1.0, 1.5)]
    with pytest.raises(ValueError):
        sm.word_times(samples, [1.0, 0.1], RATE)


def _stand_in_speech(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (sm.SPEECH_RMS * np.sqrt(2) * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_assembled_clip_truth_places_words_inside_sentences_and_quiet_between_them():
    plan = sm.ClipPlan("t", "en-us", 160, (0, 1, 2), ("silence", "noise"))
    sentences = ["one two", "three four five", "six"]
    speech = [_stand_in_speech(1.0, 200), _stand_in_speech(1.5, 300), _stand_in_speech(0.5, 400)]
    starts = [[(0.0, False), (0.5, False)], [(0.0, False), (0.5, True), (1.0, False)],
              [(0.0, False)]]
    clip, truth = sm.assemble_clip(plan, sentences, speech, starts, np.random.default_rng(0))
    assert len(clip) == round(truth["duration_s"] * RATE)
    assert truth["words"] == 6 and truth["word_timing"] == "espeak-word-events"
    assert truth["text"] == "one two three four five six"
    assert [q["kind"] for q in truth["quiet"]] == ["silence", "silence", "noise", "silence"]
    words = [w for s in truth["sentences"] for w in s["words"]]
    assert [w["text"] for w in words] == "one two three four five six".split()
    assert words[0]["start_s"] == sm.LEAD_S
    assert words[3].get("interpolated") is True
    for q in truth["quiet"]:
        assert not any(q["start_s"] < (w["start_s"] + w["end_s"]) / 2 < q["end_s"] for w in words)
        stretch = clip[round(q["start_s"] * RATE):round(q["end_s"] * RATE)]
        if q["kind"] == "silence":
            assert not stretch.any()
        else:
            assert q["end_s"] - q["start_s"] >= 2.0
            assert sm.rms(stretch) == pytest.approx(sm.NOISE_RMS, rel=0.1)


def test_noisy_clip_mixes_noise_under_everything_at_its_snr():
    plan = sm.ClipPlan("n", "en-us", 160, (0, 1), ("noise",), snr_db=10.0)
    speech = [_stand_in_speech(1.0, 250), _stand_in_speech(1.0, 350)]
    clip, truth = sm.assemble_clip(plan, ["a", "b"], speech, [None, None], np.random.default_rng(4))
    assert truth["snr_db"] == pytest.approx(10.0, abs=0.01)
    assert truth["word_timing"] == "sentence"
    assert truth["sentences"][0]["words"] == [{"text": "a", "start_s": None, "end_s": None}]
    assert {q["kind"] for q in truth["quiet"]} == {"noise"}
    first = truth["sentences"][0]
    span = slice(round(first["start_s"] * RATE), round(first["end_s"] * RATE))
    assert sm.snr_db(speech[0], clip[span] - speech[0]) == pytest.approx(10.0, abs=1.5)


def test_concatenated_truth_shifts_every_time():
    plan = sm.ClipPlan("t", "en-us", 160, (0,), ())
    _clip, truth = sm.assemble_clip(plan, ["hello"], [_stand_in_speech(1.0, 200)],
                                    [[(0.0, False)]], np.random.default_rng(0))
    talk = sm.concat_truths("talk", [truth, truth])
    assert talk["duration_s"] == pytest.approx(2 * truth["duration_s"])
    assert talk["words"] == 2
    second = talk["sentences"][1]["words"][0]["start_s"]
    assert second == pytest.approx(truth["duration_s"] + sm.LEAD_S)
    assert [c["start_s"] for c in talk["clips"]] == [0.0, truth["duration_s"]]


def test_wav_round_trip(tmp_path):
    samples = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)
    path = sm.write_wav(tmp_path / "x.wav", samples)
    back, rate = sm.read_wav(path)
    assert rate == RATE and np.allclose(back, samples, atol=1 / 16384)
