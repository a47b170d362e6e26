"""Whisper's log-mel spectrogram in numpy alone (no torch, no librosa at serve time).

The same numbers as ``transformers.WhisperFeatureExtractor`` (and OpenAI's ``log_mel_spectrogram``):
audio padded with zeros (or trimmed) to 30 s, a centred STFT (reflect padding, periodic Hann window,
``n_fft`` 400, hop 160), power spectrum, Slaney-normalised mel filters on the Slaney mel scale
(0–8 kHz), ``log10`` clamped at 1e-10, the dynamic range limited to 8 (per clip) below its maximum,
then ``(x + 4) / 4``. The last STFT frame is dropped, so 30 s gives 3000 frames. Pure functions;
the filter bank is cached per (n_mels, n_fft, rate).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_S = 30
N_SAMPLES = SAMPLE_RATE * CHUNK_S
N_FRAMES = N_SAMPLES // HOP_LENGTH

_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = 15.0
_LOGSTEP = 27.0 / np.log(6.4)


def hertz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    mels = 3.0 * freq / 200.0
    return np.where(freq >= _MIN_LOG_HZ, _MIN_LOG_MEL + np.log(np.maximum(freq, 1e-12) / _MIN_LOG_HZ) * _LOGSTEP, mels)


def mel_to_hertz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    freq = 200.0 * mels / 3.0
    return np.where(mels >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp((mels - _MIN_LOG_MEL) / _LOGSTEP), freq)


@lru_cache(maxsize=8)
def mel_filters(n_mels: int = 80, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Triangular Slaney-normalised mel filters, shape (n_fft // 2 + 1, n_mels), float64 (read-only)."""
    n_bins = 1 + n_fft // 2
    mel_freqs = np.linspace(hertz_to_mel(0.0), hertz_to_mel(sample_rate / 2), n_mels + 2)
    edges = mel_to_hertz(mel_freqs)
    fft_freqs = np.linspace(0, sample_rate // 2, n_bins)
    diff = np.diff(edges)
    slopes = edges[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up))
    fb *= (2.0 / (edges[2:n_mels + 2] - edges[:n_mels]))[None, :]
    fb.setflags(write=False)
    return fb


@lru_cache(maxsize=4)
def _hann(n_fft: int) -> np.ndarray:
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic, as torch.hann_window
    w.setflags(write=False)
    return w


def pad_or_trim(audio: np.ndarray, n_samples: int = N_SAMPLES) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if audio.shape[0] >= n_samples:
        return audio[:n_samples]
    return np.pad(audio, (0, n_samples - audio.shape[0]))


def log_mel_spectrogram(audio: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """One clip of mono 16 kHz float audio → float32 (n_mels, 3000), padded or trimmed to 30 s."""
    x = pad_or_trim(audio).astype(np.float64)
    half = N_FFT // 2
    x = np.pad(x, (half, half), mode="reflect")
    n = 1 + (x.shape[0] - N_FFT) // HOP_LENGTH
    frames = np.lib.stride_tricks.as_strided(x, shape=(n, N_FFT), strides=(x.strides[0] * HOP_LENGTH, x.strides[0]))
    spec = np.fft.rfft(frames * _hann(N_FFT), axis=-1)[:-1]  # the last frame is dropped, as Whisper does
    power = spec.real ** 2 + spec.imag ** 2
    mel = power @ mel_filters(n_mels)  # (frames, n_mels)
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).T.astype(np.float32)


def log_mel_batch(clips: list[np.ndarray], n_mels: int = 80) -> np.ndarray:
    """Several clips → float32 (B, n_mels, 3000)."""
    return np.stack([log_mel_spectrogram(c, n_mels) for c in clips]) if clips else np.zeros((0, n_mels, N_FRAMES),
                                                                                          np.float32)


__all__ = ["CHUNK_S", "HOP_LENGTH", "N_FFT", "N_FRAMES", "N_SAMPLES", "SAMPLE_RATE", "log_mel_batch",
           "log_mel_spectrogram", "mel_filters", "pad_or_trim"]
