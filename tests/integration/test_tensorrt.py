"""TensorRT: the native engine (streamcap.engine.tensorrt) and ONNX Runtime's TensorRT execution
provider, on a tiny exported GIT (video variant), against the ONNX Runtime CPU engine.

The ``gpu`` tests need an NVIDIA GPU with TensorRT 10 + cuda-python (and, for the ORT test,
onnxruntime-gpu). Without them they skip with the missing piece named — also under CI=true: GPU
tests are the one allowed skip. The other tests run everywhere: they check the errors a machine
without a GPU gets.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from streamcap.engine import load_engine
from streamcap.engine.tensorrt import TensorRTCaptionEngine, missing_prerequisites
from streamcap.engine.trt_options import ProfileLimits
from streamcap.core.errors import EngineLoadError
from tests.helpers.tiny_git import IMAGE_SIZE, save_tiny_git

pytestmark = pytest.mark.integration

GRAPHS = ["vision_encoder", "decoder_prefill", "decoder_step"]
LIMITS = ProfileLimits(max_batch=2, max_beams=3, max_prompt_tokens=6, max_new_tokens=12)
MAX_NEW = 10
GPU_EPS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def gpu_missing() -> str | None:
    """What this machine lacks for the native TensorRT tests (``None``: nothing): the ``tensorrt``
    package, cuda-python, or a visible CUDA device."""
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError) as e:
        return f"`import tensorrt` failed ({e})"
    return missing_prerequisites()


@pytest.fixture
def trt_gpu() -> None:
    reason = gpu_missing()
    if reason:
        pytest.skip(f"needs an NVIDIA GPU with TensorRT: {reason}")  # skipped under CI=true too (GPU test)


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    from streamcap.export import export_checkpoint

    root = tmp_path_factory.mktemp("trt-git")
    ckpt = save_tiny_git(root / "ckpt", frames=3)
    return export_checkpoint(ckpt, root / "engine", max_new_tokens=MAX_NEW)


def _windows(k: int, n: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [[rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8) for _ in range(k)] for _ in range(n)]


CASES = [{}, {"num_beams": 3}, {"prompt": "a man"}]


def _texts(engine, windows, **kw) -> list[str]:
    return [r.text for r in engine.caption_batch(windows, **kw)]


# ---------------------------------------------------------------- everywhere: the errors without a GPU


def test_native_engine_without_tensorrt_names_the_missing_piece(tiny_engine, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` fails, as on a CPU-only machine
    for load in (lambda: TensorRTCaptionEngine(tiny_engine, cache_dir=tiny_engine.parent / "trt"),
                 lambda: load_engine(str(tiny_engine), provider="tensorrt-native")):
        with pytest.raises(EngineLoadError) as err:
            load()
        msg = str(err.value)
        assert "tensorrt" in msg and "NVIDIA GPU" in msg, msg
        assert "pip install 'streamcap[tensorrt]'" in msg, msg
    assert not (tiny_engine.parent / "trt").exists()  # nothing built or written


def test_ort_tensorrt_provider_on_cpu_onnxruntime_asks_for_the_gpu_extra(tiny_engine, monkeypatch):
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if any(p in available for p in GPU_EPS):  # onnxruntime-gpu: pretend to be the CPU package
        monkeypatch.setattr(onnxruntime, "get_available_providers",
                            lambda: [p for p in available if p not in GPU_EPS])
    with pytest.raises(EngineLoadError) as err:
        load_engine(str(tiny_engine), provider="tensorrt")
    msg = str(err.value)
    assert "TensorrtExecutionProvider" in msg and "streamcap[gpu]" in msg, msg


# ---------------------------------------------------------------- on an NVIDIA GPU with TensorRT


@pytest.mark.gpu
def test_native_tensorrt_matches_onnxruntime_cpu(trt_gpu, tiny_engine, tmp_path):
    ref = load_engine(str(tiny_engine))
    eng = TensorRTCaptionEngine(tiny_engine, cache_dir=tmp_path / "trt", limits=LIMITS)
    try:
        windows = _windows(ref.frames_per_window)  # 3 windows > max_batch 2: runs in two chunks
        for kw in CASES:
            assert _texts(eng, windows, **kw) == _texts(ref, windows, **kw), kw
        ref.debug_logits, eng.debug_logits = [], []
        assert _texts(eng, windows[:2]) == _texts(ref, windows[:2])
        assert len(eng.debug_logits) == len(ref.debug_logits)
        for a, b in zip(eng.debug_logits, ref.debug_logits):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
        assert eng.caption(windows[0] * 2).text == ref.caption(windows[0] * 2).text
    finally:
        eng.close()


@pytest.mark.gpu
def test_native_engine_cache_is_written_then_reused(trt_gpu, tiny_engine, tmp_path):
    cache = tmp_path / "trt"
    first = TensorRTCaptionEngine(tiny_engine, cache_dir=cache, limits=LIMITS)
    try:
        assert first.built_graphs == GRAPHS and first.cached_graphs == []
        files = first.engine_files
        assert sorted(files) == sorted(GRAPHS)
        assert all(f.is_file() and f.parent == cache and f.stat().st_size > 0 for f in files.values())
        texts = _texts(first, _windows(first.frames_per_window))
    finally:
        first.close()
    second = TensorRTCaptionEngine(tiny_engine, cache_dir=cache, limits=LIMITS)
    try:
        assert second.built_graphs == [] and second.cached_graphs == GRAPHS
        assert second.engine_files == files
        assert _texts(second, _windows(second.frames_per_window)) == texts
        print(f"load: built {first.load_s:.1f} s, from cache {second.load_s:.1f} s")
    finally:
        second.close()
    other = TensorRTCaptionEngine(tiny_engine, cache_dir=cache, limits=ProfileLimits(max_batch=3))
    try:  # other profile limits are another engine
        assert other.built_graphs == GRAPHS
    finally:
        other.close()


@pytest.mark.gpu
def test_onnxruntime_tensorrt_provider_matches_cpu(trt_gpu, tiny_engine, tmp_path):
    import onnxruntime

    if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("needs an NVIDIA GPU with TensorRT: onnxruntime-gpu with the TensorRT execution provider "
                    "is not installed (pip install 'streamcap[gpu]')")
    ref = load_engine(str(tiny_engine))
    eng = load_engine(str(tiny_engine), provider="tensorrt", trt_cache_dir=tmp_path / "ort-trt")
    try:
        windows = _windows(ref.frames_per_window)
        for kw in CASES:
            assert _texts(eng, windows, **kw) == _texts(ref, windows, **kw), kw
        assert list((tmp_path / "ort-trt").rglob("*.engine")), "ORT's TensorRT EP wrote no engine cache"
    finally:
        eng.close()
