"""Loading the speech track's models from ``[speech]``: the Whisper engine and a maker of
per-stream voice-activity detectors. Blocking (call it in a thread); clear errors when the
models are not installed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from streamcap.core.errors import ConfigError
from streamcap.runtime.config import Config

INSTALL_HINT = "streamcap models install whisper-base silero-vad"


def wants_speech(cfg: Config) -> bool:
    """Whether any configured stream has a speech track."""
    return cfg.speech.enabled or any("speech" in (s.tracks or ()) for s in cfg.sources)


def load_speech(cfg: Config) -> tuple[object, Callable[[], object]]:
    """The Whisper engine and a VAD factory. Raises ConfigError when a model is missing."""
    sp = cfg.speech
    for what, path in (("speech engine", sp.engine_path), ("voice-activity detector", sp.vad_path)):
        if not (Path(path).expanduser() / "engine.json").is_file():
            raise ConfigError(f"the {what} is not installed at {path} (install it: {INSTALL_HINT})")
    from streamcap.engine.base import apply_runtime_settings
    from streamcap.engine.vad import SileroVad
    from streamcap.engine.whisper import load_speech_engine

    apply_runtime_settings(cfg.engine)

    provider = cfg.engine.provider if cfg.engine.provider in ("cpu", "cuda", "tensorrt") else "cuda"
    engine = load_speech_engine(str(Path(sp.engine_path).expanduser()), provider=provider,
                                intra_op_threads=sp.threads or None)
    vad_path = Path(sp.vad_path).expanduser()
    SileroVad(vad_path)  # verify its hash once; the per-stream copies skip it
    return engine, lambda: SileroVad(vad_path, verify_hash=False)


#: the demo's narration (tools/narration.py, made by tools/setup.sh with the export extra)
DEMO_NARRATION = Path(__file__).resolve().parents[2] / "engines" / "demo-narration" / "narration.wav"


def demo_source_url(cfg: Config) -> str:
    """The demo stream: the shapes world, speaking its narration when the speech track is on."""
    from streamcap.runtime.config import DEMO_SOURCE_URL

    if wants_speech(cfg) and DEMO_NARRATION.is_file():
        return f"{DEMO_SOURCE_URL}&narration=demo"
    return DEMO_SOURCE_URL
