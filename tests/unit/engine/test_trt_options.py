"""The pure TensorRT helpers: engine cache keys, ORT TensorRT provider options, optimisation profiles."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from streamcap.engine.trt_options import (
    ProfileLimits,
    default_cache_dir,
    engine_cache_key,
    manifest_digest,
    profile_shapes,
    tensorrt_provider_options,
)

SHA = hashlib.sha256(b"engine.json").hexdigest()
BASE = {"gpu_name": "NVIDIA H100 80GB HBM3 sm90", "trt_version": "10.3.0", "manifest_sha256": SHA,
        "graph": "decoder_step", "precision": "fp16"}
SAFE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def key(**changes) -> str:
    args = {**BASE, **changes}
    profile = args.pop("profile", "")
    return engine_cache_key(**args, profile=profile)


def test_key_is_stable_and_readable():
    assert key() == key()
    assert key() == engine_cache_key("NVIDIA H100 80GB HBM3 sm90", "10.3.0", SHA, "decoder_step", "fp16")
    k = key()
    assert k.startswith("nvidia-h100-80gb-hbm3-sm90-trt10.3.0-decoder_step-fp16-")
    assert re.fullmatch(r"[0-9a-f]{16}", k.rsplit("-", 1)[1])


@pytest.mark.parametrize("field,value", [
    ("gpu_name", "NVIDIA A10G sm86"),
    ("trt_version", "10.4.0"),
    ("manifest_sha256", hashlib.sha256(b"other").hexdigest()),
    ("graph", "decoder_prefill"),
    ("precision", "fp32"),
    ("profile", "batch=16"),
])
def test_every_input_changes_the_key(field, value):
    assert key(**{field: value}) != key()


def test_inputs_that_slug_alike_still_differ():
    assert key(gpu_name="GPU/A") != key(gpu_name="GPU A")
    assert key(trt_version="10.3") != key(trt_version="10-3")


@pytest.mark.parametrize("gpu", ["NVIDIA GeForce RTX 4090 / sm89", "../../etc/passwd", "  ", "Tesla T4\x00\n",
                                 "名前 GPU", "x" * 500, ".hidden"])
def test_keys_are_filesystem_safe(gpu):
    k = key(gpu_name=gpu, trt_version="10.0.1.6+cuda12", graph="vision/encoder")
    assert SAFE.match(k), k
    assert "/" not in k and "\\" not in k and ".." not in k.split("-")[0]
    assert len(k) <= 140


def test_manifest_digest_is_sha256_of_engine_json(tmp_path: Path):
    data = b'{"format": "streamcap-engine"}\n'
    (tmp_path / "engine.json").write_bytes(data)
    assert manifest_digest(tmp_path) == hashlib.sha256(data).hexdigest()
    (tmp_path / "engine.json").write_bytes(data + b" ")
    assert manifest_digest(tmp_path) != hashlib.sha256(data).hexdigest()


def test_default_cache_dir_is_under_the_user_cache():
    assert default_cache_dir() == Path.home() / ".cache" / "streamcap" / "trt"


def test_provider_options_content(tmp_path: Path):
    opts = tensorrt_provider_options(tmp_path, SHA, fp16=True)
    assert opts["trt_engine_cache_enable"] == "True"
    assert opts["trt_timing_cache_enable"] == "True"
    assert opts["trt_fp16_enable"] == "True"
    assert int(opts["trt_max_workspace_size"]) > 0
    path = Path(opts["trt_engine_cache_path"])
    assert path.parent == tmp_path and SAFE.match(path.name)
    assert all(isinstance(v, str) for v in opts.values())
    assert not any(k.startswith("trt_profile_") for k in opts)  # ORT picks its own profiles
    assert tensorrt_provider_options(tmp_path, SHA, fp16=False)["trt_fp16_enable"] == "False"


def test_provider_cache_path_follows_manifest_precision_and_versions(tmp_path: Path):
    def path(**kw):
        args = {"cache_dir": tmp_path, "manifest_sha": SHA, "fp16": True, **kw}
        return tensorrt_provider_options(**args)["trt_engine_cache_path"]

    assert path() == path()
    others = [path(manifest_sha=hashlib.sha256(b"x").hexdigest()), path(fp16=False), path(ort_version="1.20.0"),
              path(trt_version="10.4.0")]
    assert len({path(), *others}) == 5


def test_provider_workspace_option(tmp_path: Path):
    assert tensorrt_provider_options(tmp_path, SHA, False, workspace_bytes=1 << 30)["trt_max_workspace_size"] \
        == str(1 << 30)


# ---------------------------------------------------------------- optimisation profiles

LIM = ProfileLimits(max_batch=4, max_beams=3, max_prompt_tokens=8, max_new_tokens=20)
GIT = {"frames": 6, "encoder_mode": "frame", "prefix_tokens": 6 * 197}


def test_git_profiles():
    vision = profile_shapes("vision_encoder", {"pixel_values": (-1, 3, 224, 224)}, LIM, **GIT)
    assert vision == {"pixel_values": ((1, 3, 224, 224), (6, 3, 224, 224), (24, 3, 224, 224))}
    prefill = profile_shapes("decoder_prefill", {"features": (-1, 6, 197, 768), "input_ids": (-1, -1)}, LIM, **GIT)
    assert prefill["features"] == ((1, 6, 197, 768), (1, 6, 197, 768), (4, 6, 197, 768))
    assert prefill["input_ids"] == ((1, 1), (1, 1), (4, 8))
    step = profile_shapes("decoder_step", {"input_ids": (-1, 1), "past_key_0": (-1, 12, -1, 64)}, LIM, **GIT)
    assert step["input_ids"] == ((1, 1), (1, 1), (12, 1))
    lo, opt, hi = step["past_key_0"]
    p = GIT["prefix_tokens"]
    assert lo == (1, 12, p + 1, 64) and hi == (12, 12, p + 8 + 20, 64)
    assert all(a <= b <= c for a, b, c in zip(lo, opt, hi))


def test_clip_mode_and_cross_attention_profiles():
    kw = {"frames": 16, "encoder_mode": "clip", "prefix_tokens": 0}
    vision = profile_shapes("vision_encoder", {"pixel_values": (-1, 16, 3, 224, 224)}, LIM, **kw)
    assert vision["pixel_values"][2] == (4, 16, 3, 224, 224)
    prefill = profile_shapes("decoder_prefill", {"features": (-1, -1, 768), "input_ids": (-1, -1)}, LIM,
                             enc_tokens=1568, **kw)
    assert prefill["features"] == ((1, 1568, 768), (1, 1568, 768), (4, 1568, 768))
    step = profile_shapes("decoder_step", {"input_ids": (-1, 1), "past_key_0": (-1, 12, -1, 64),
                                           "cross_key_0": (-1, 12, -1, 64)}, LIM, cross_tokens=1568, **kw)
    assert step["cross_key_0"] == ((1, 12, 1568, 64), (1, 12, 1568, 64), (12, 12, 1568, 64))
    assert step["past_key_0"][0] == (1, 12, 1, 64)


def test_frame_mode_features_with_dynamic_frames_and_tokens():
    kw = {"frames": 2, "encoder_mode": "frame", "prefix_tokens": 0}
    prefill = profile_shapes("decoder_prefill", {"features": (-1, -1, -1, 32), "input_ids": (-1, -1)}, LIM,
                             enc_tokens=17, **kw)
    assert prefill["features"] == ((1, 2, 17, 32), (1, 2, 17, 32), (4, 2, 17, 32))


def test_profiles_refuse_what_they_cannot_bound():
    with pytest.raises(ValueError, match="enc_tokens"):
        profile_shapes("decoder_prefill", {"features": (-1, -1, 768)}, LIM, frames=1, encoder_mode="clip",
                       prefix_tokens=0)
    with pytest.raises(ValueError, match="cross_tokens"):
        profile_shapes("decoder_step", {"cross_key_0": (-1, 12, -1, 64)}, LIM, **GIT)
    with pytest.raises(ValueError, match="does not know"):
        profile_shapes("vision_encoder", {"pixel_values": (-1, 3, -1, -1)}, LIM, **GIT)
    with pytest.raises(ValueError, match="unknown graph"):
        profile_shapes("text_decoder", {}, LIM, **GIT)


def test_profile_limits_validation():
    with pytest.raises(ValueError):
        ProfileLimits(max_batch=0)
    assert "beams=3" in LIM.describe() and LIM.describe() != ProfileLimits().describe()
