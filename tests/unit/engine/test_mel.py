"""The numpy log-mel front end against ``transformers.WhisperFeatureExtractor`` (the reference)."""

from __future__ import annotations

import numpy as np
import pytest

from streamcap.engine.mel import N_FRAMES, N_SAMPLES, SAMPLE_RATE, log_mel_batch, log_mel_spectrogram, mel_filters


def _sweep_and_noise(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    sweep = 0.4 * np.sin(2 * np.pi * (80 * t + 600 * t ** 2 / seconds))  # 80 Hz → ~1.3 kHz
    noise = 0.03 * np.random.default_rng(seed).standard_normal(t.size)
    burst = np.where((t > 1.0) & (t < 1.3), 0.5 * np.sin(2 * np.pi * 3000 * t), 0.0)
    return (sweep + noise + burst).astype(np.float32)


@pytest.fixture(scope="module", params=[80, 128])
def extractor(request):
    transformers = pytest.importorskip("transformers")
    return transformers.WhisperFeatureExtractor(feature_size=request.param)


def test_filter_bank_equals_transformers(extractor):
    ours = mel_filters(extractor.feature_size)
    assert ours.shape == extractor.mel_filters.shape
    assert np.abs(ours - extractor.mel_filters).max() < 1e-12


@pytest.mark.parametrize("seconds", [0.7, 7.0, 30.0])
def test_log_mel_equals_whisper_feature_extractor(extractor, seconds):
    audio = _sweep_and_noise(seconds)
    want = extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
    got = log_mel_spectrogram(audio, extractor.feature_size)
    assert got.shape == want.shape == (extractor.feature_size, N_FRAMES) and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-4


def test_longer_audio_is_trimmed_to_30_s_and_batches_stack():
    long = _sweep_and_noise(31.0, seed=1)
    assert np.array_equal(log_mel_spectrogram(long), log_mel_spectrogram(long[:N_SAMPLES]))
    batch = log_mel_batch([long, long[:SAMPLE_RATE]])
    assert batch.shape == (2, 80, N_FRAMES)
    assert np.array_equal(batch[1], log_mel_spectrogram(long[:SAMPLE_RATE]))


def test_silence_is_finite_and_flat():
    x = log_mel_spectrogram(np.zeros(SAMPLE_RATE, np.float32))
    assert np.isfinite(x).all()
    assert np.allclose(x, (-10 + 4) / 4)  # log10 clamp at 1e-10, then (x + 4) / 4
