"""tools/speech_media.py with the real espeak-ng (word events through our ctypes binding) and
ffmpeg: a clip's files, its word timing and its video."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from tools import speech_media as sm
from tools.wer import words_in_quiet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

_PLAN = sm.ClipPlan("t-en-gb", "en-gb", 160, (0, 4), ("noise",))


def test_espeak_library_gives_word_events_for_every_script_word():
    assert sm.find_espeak_library() is not None, "libespeak-ng missing: install espeak-ng"
    text = sm.load_script()[4]
    audio, starts = sm.synthesize_sentence(text, "en-us+f3", 170)
    assert starts is not None and len(starts) == len(sm.word_spans(text))
    assert sum(guessed for _, guessed in starts) <= 2
    assert 2.0 < len(audio) / sm.RATE < 8.0
    assert sm.rms(audio) == pytest.approx(sm.SPEECH_RMS, rel=1e-3)


def test_command_fallback_speaks_without_word_events():
    spoken = sm.speak_with_command("A short test.", "en-gb", 160)
    assert spoken.word_events == () and spoken.rate == 22_050
    assert 0.5 < len(spoken.samples) / spoken.rate < 3.0 and sm.rms(spoken.samples) > 0.01


def test_generate_writes_a_clip_its_truth_and_a_video(tmp_path):
    index = sm.generate(tmp_path, with_video=True, clips=(_PLAN,))
    truth = json.loads((tmp_path / "t-en-gb.json").read_text())
    audio, rate = sm.read_wav(tmp_path / "t-en-gb.wav")
    assert rate == 16_000 and abs(len(audio) - truth["duration_s"] * rate) <= 8  # ms precision
    assert truth["word_timing"] == "espeak-word-events" and index["words"] == truth["words"]
    words = [w for s in truth["sentences"] for w in s["words"]]
    assert [w["text"] for w in words] == [w for s in truth["text"].split(".") for w in
                                          s.replace(",", "").split()]
    assert all(w["start_s"] <= w["end_s"] for w in words)
    assert words_in_quiet(words, truth["quiet"], margin_s=0.0) == []
    noise = [q for q in truth["quiet"] if q["kind"] == "noise"]
    assert len(noise) == 1 and noise[0]["end_s"] - noise[0]["start_s"] >= 2.0
    # the first word starts with sound: its first 100 ms is louder than the lead silence
    first = words[0]
    onset = audio[round(first["start_s"] * rate):round((first["start_s"] + 0.1) * rate)]
    assert sm.rms(onset) > 0.01 and not audio[:round(0.4 * rate)].any()
    ffprobe = shutil.which("ffprobe")
    assert ffprobe is not None
    probe = json.loads(subprocess.run(
        [ffprobe, "-v", "error", "-show_entries", "stream=codec_name,sample_rate,duration",
         "-of", "json", str(tmp_path / "talk.mp4")], capture_output=True, text=True,
        check=True).stdout)
    codecs = sorted(s["codec_name"] for s in probe["streams"])
    assert codecs == ["aac", "h264"]
    durations = [float(s["duration"]) for s in probe["streams"]]
    assert np.allclose(durations, truth["duration_s"], atol=0.15)


def test_a_clip_made_twice_is_identical():
    a = sm.make_clip(_PLAN, sm.load_script())
    b = sm.make_clip(_PLAN, sm.load_script())
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]


def test_narration_is_a_16k_wav_with_its_manifest(tmp_path):
    from streamcap.sources.synthetic import load_narration
    from tools import narration

    manifest = narration.write_narration(tmp_path / "demo-narration" / "narration.wav")
    samples = load_narration(tmp_path / "demo-narration" / "narration.wav")
    on_disk = json.loads((tmp_path / "demo-narration" / "manifest.json").read_text())
    assert on_disk == manifest
    assert 60 <= manifest["words"] <= 90 and len(manifest["voices"]) >= 2
    assert manifest["tool"]["name"] == "espeak-ng" and manifest["tool"]["licence"].startswith("GPL-3.0")
    assert len(samples) / 16_000 == pytest.approx(manifest["duration_s"], abs=1e-3)
    lines = manifest["lines"]
    assert all(a["end_s"] < b["start_s"] for a, b in zip(lines, lines[1:]))
    assert lines[-1]["end_s"] <= manifest["duration_s"]


def test_the_espeakng_loader_wheel_library_works_with_its_data_folder():
    loader = pytest.importorskip("espeakng_loader")  # optional: the system library comes first
    engine = sm.Espeak(str(loader.get_library_path()), str(loader.get_data_path()))
    text = sm.load_script()[2]
    spoken = engine.speak(text, "en-us", 160)
    assert spoken.rate == 22_050 and len(spoken.samples) > spoken.rate
    starts = sm.assign_events(text, spoken.word_events, len(spoken.samples) / spoken.rate)
    assert len(starts) == len(sm.word_spans(text))
