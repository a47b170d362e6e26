"""The installed Whisper engine decodes exactly as ctranslate2 does on the weights it came from.

``streamcap models install whisper-base`` keeps the CTranslate2 files it converted in
``engines/ct2/whisper-base``; ctranslate2's own ``models.Whisper`` (float32 compute) and our ONNX
engine (``engines/whisper-base``, fp32) greedily transcribe espeak-ng clips in four voices, without
timestamps, from the same log-mel features, and must produce the same tokens. ``whisper-tiny.en`` is
checked too when it is installed. A missing model or espeak-ng skips locally and fails under
CI=true (tools/test.sh installs the model through tools/setup.sh)."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENGINES = Path(__file__).resolve().parents[2] / "engines"
CLIPS = [
    ("en-us", "The quick brown fox jumps over the lazy dog near the river bank."),
    ("en+f3", "Please send the quarterly report to the office before noon tomorrow."),
    ("en-gb-x-rp", "Seven large ships sailed into the harbour at dawn."),
    ("en+m3", "She opened the window and listened to the rain falling on the roof."),
]


@pytest.fixture(scope="module")
def clips(tmp_path_factory, require_system) -> list[np.ndarray]:
    if shutil.which("espeak-ng") is None:
        require_system("espeak-ng is not installed (apt-get install espeak-ng)")
    tmp = tmp_path_factory.mktemp("speech")
    out = []
    for i, (voice, text) in enumerate(CLIPS):
        path = tmp / f"clip{i}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
        with wave.open(str(path)) as w:
            rate = w.getframerate()
            x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
        t = np.arange(int(len(x) * 16000 / rate)) / 16000
        out.append(np.interp(t, np.arange(len(x)) / rate, x).astype(np.float32))
    return out


def _models(require_system, name: str) -> tuple[Path, Path]:
    engine, ct2 = ENGINES / name, ENGINES / "ct2" / name
    if not (engine / "engine.json").is_file() or not (ct2 / "model.bin").is_file():
        require_system(f"{name} is not installed in {ENGINES} (streamcap models install {name})")
    return engine, ct2


@pytest.mark.parametrize("name", ["whisper-base", "whisper-tiny.en"])
def test_greedy_tokens_equal_ctranslate2s(name, clips, require_system):
    import ctranslate2

    from streamcap.engine.mel import log_mel_batch
    from streamcap.engine.whisper import SpeechRequest, load_speech_engine

    engine_dir, ct2_dir = _models(require_system, name)
    engine = load_speech_engine(engine_dir, intra_op_threads=2)
    reference = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32", intra_threads=2)
    tok = engine.tokens
    prompt = [tok.sot, *([tok.languages["en"], tok.transcribe] if engine.multilingual else []), tok.no_timestamps]
    feats = np.ascontiguousarray(log_mel_batch(clips, n_mels=reference.n_mels), dtype=np.float32)
    theirs = reference.generate(ctranslate2.StorageView.from_array(feats), [prompt] * len(clips), beam_size=1,
                                max_length=448)
    ours = engine.transcribe_batch([SpeechRequest(c, language="en", timestamps=False) for c in clips])
    for i, (t, o) in enumerate(zip(theirs, ours)):
        our_tokens = [x for x in o.tokens if x != tok.eot]
        assert our_tokens == t.sequences_ids[0], (CLIPS[i], o.text)
        assert len(our_tokens) >= 8, o.text  # the clip was heard, not an empty transcript
