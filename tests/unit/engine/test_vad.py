"""``SileroVad`` on the installed model (``streamcap models install silero-vad``; tools/setup.sh
installs it for the speech flag): low probabilities on silence and noise, high on espeak-ng speech,
the same numbers however the samples are cut into pieces, and a folder that does not match its
manifest refused. Without the model or espeak-ng these tests skip locally and fail under CI=true."""

from __future__ import annotations

import json
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from streamcap.core.errors import EngineLoadError
from streamcap.engine.vad import CHUNK_SAMPLES, SAMPLE_RATE, SileroVad

VAD_DIR = Path(__file__).resolve().parents[3] / "engines" / "silero-vad"


@pytest.fixture(scope="module")
def vad_dir(require_system) -> Path:
    if not (VAD_DIR / "engine.json").is_file():
        require_system(f"Silero VAD is not installed at {VAD_DIR} (streamcap models install silero-vad)")
    return VAD_DIR


@pytest.fixture
def vad(vad_dir) -> SileroVad:
    return SileroVad(vad_dir)


def espeak(text: str, voice: str, tmp: Path, require_system) -> np.ndarray:
    """``text`` spoken by espeak-ng, as float32 at 16 kHz (espeak writes 22050 Hz: linear resampling)."""
    if shutil.which("espeak-ng") is None:
        require_system("espeak-ng is not installed (apt-get install espeak-ng)")
    out = tmp / f"{voice}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(out), text], check=True, capture_output=True)
    with wave.open(str(out)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
    t = np.arange(int(len(x) * SAMPLE_RATE / rate)) / SAMPLE_RATE
    return np.interp(t, np.arange(len(x)) / rate, x).astype(np.float32)


def test_silence_is_not_speech(vad):
    p = vad.probabilities(np.zeros(3 * SAMPLE_RATE, np.float32))
    assert len(p) == 3 * SAMPLE_RATE // CHUNK_SAMPLES
    assert p.max() < 0.1


@pytest.mark.parametrize("amplitude", [0.003, 0.03, 0.1])
def test_white_noise_is_not_speech(vad, amplitude):
    noise = np.random.default_rng(1).standard_normal(3 * SAMPLE_RATE).astype(np.float32) * amplitude
    assert vad.probabilities(noise).max() < 0.3


@pytest.mark.parametrize("voice", ["en-us", "en+f3", "en-gb-x-rp"])
def test_espeak_speech_is_speech(vad, voice, tmp_path, require_system):
    speech = espeak("Voice activity detection should find every word of this sentence.", voice, tmp_path,
                    require_system)
    gap = np.zeros(SAMPLE_RATE, np.float32)
    p = vad.probabilities(np.concatenate([gap, speech, gap]))
    chunk_s = CHUNK_SAMPLES / SAMPLE_RATE
    t = (np.arange(len(p)) + 0.5) * chunk_s
    inside = p[(t > 1.2) & (t < 1.0 + len(speech) / SAMPLE_RATE - 0.2)]
    before = p[t < 0.9]
    after = p[t > 1.0 + len(speech) / SAMPLE_RATE + 0.6]
    assert np.mean(inside > 0.5) > 0.8, np.round(p, 2)
    assert before.max() < 0.1 and after.max() < 0.5


def test_pieces_of_any_length_give_the_same_probabilities(vad, vad_dir):
    x = np.random.default_rng(2).standard_normal(40 * CHUNK_SAMPLES + 300).astype(np.float32) * 0.05
    whole = SileroVad(vad_dir).probabilities(x)
    rng = np.random.default_rng(3)
    got: list[float] = []
    i = 0
    while i < len(x):
        n = int(rng.integers(1, 3 * CHUNK_SAMPLES))
        got.extend(vad.probabilities(x[i:i + n]))
        i += n
    assert np.array_equal(np.asarray(got, np.float32), whole)
    assert vad.pending_samples == 300


def test_reset_forgets_the_state_context_and_pending_samples(vad, vad_dir):
    x = np.random.default_rng(4).standard_normal(10 * CHUNK_SAMPLES).astype(np.float32) * 0.05
    vad.probabilities(np.ones(CHUNK_SAMPLES + 7, np.float32) * 0.2)
    vad.reset()
    assert vad.pending_samples == 0
    assert np.array_equal(vad.probabilities(x), SileroVad(vad_dir).probabilities(x))


def test_fewer_samples_than_a_chunk_give_no_probability(vad):
    assert vad.probabilities(np.zeros(CHUNK_SAMPLES - 1, np.float32)).size == 0
    assert vad.probabilities(np.zeros(1, np.float32)).size == 1


def test_stereo_input_is_refused(vad):
    with pytest.raises(ValueError, match="mono"):
        vad.probabilities(np.zeros((2, CHUNK_SAMPLES), np.float32))


def test_a_tampered_model_is_refused(vad_dir, tmp_path):
    folder = shutil.copytree(vad_dir, tmp_path / "vad")
    with open(folder / "silero_vad.onnx", "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(EngineLoadError, match="sha256"):
        SileroVad(folder)


def test_a_manifest_for_another_chunk_size_is_refused(vad_dir, tmp_path):
    folder = shutil.copytree(vad_dir, tmp_path / "vad")
    manifest = json.loads((folder / "engine.json").read_text())
    manifest["chunk_samples"] = 256
    (folder / "engine.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineLoadError, match="chunk_samples"):
        SileroVad(folder)
