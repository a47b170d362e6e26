"""The CTranslate2 ``model.bin`` reader and the Whisper name mapping, on files written here byte by
byte in the layout of ``ctranslate2.specs.model_spec.ModelSpec._serialize`` (version 6). The
round trip through ctranslate2's own converter is in tests/integration/test_ct2_whisper_conversion.py."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from streamcap.models.ct2 import (
    Ct2FormatError,
    Ct2WhisperFolder,
    complete_tokenizer,
    read_model_bin,
    read_vocabulary,
    whisper_dims,
    whisper_state_dict,
)

_TYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}


def _string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<H", len(raw) + 1) + raw + b"\0"


def ct2_bytes(variables: dict[str, np.ndarray], aliases: dict[str, str] | None = None, *, version: int = 6,
              spec: str = "WhisperSpec", bfloat16: frozenset[str] = frozenset()) -> bytes:
    out = [struct.pack("<I", version), _string(spec), struct.pack("<I", 3), struct.pack("<I", len(variables))]
    for name, value in sorted(variables.items()):
        value = np.asarray(value)
        if name in bfloat16:  # the top 16 bits of float32
            data, type_id = (value.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes(), 5
        else:
            data, type_id = value.tobytes(), _TYPE_IDS[value.dtype.name]
        out += [_string(name), struct.pack("<B", value.ndim), *(struct.pack("<I", d) for d in value.shape),
                struct.pack("<B", type_id), struct.pack("<I", len(data)), data]
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_string(alias), _string(target)]
    return b"".join(out)


def tiny_whisper_variables(rng: np.random.Generator, *, d: int = 8, ffn: int = 16, vocab: int = 12,
                           dtype=np.float16) -> dict[str, np.ndarray]:
    """The variables CTranslate2's WhisperSpec writes, for one encoder and one decoder layer."""
    def w(*shape):
        return rng.standard_normal(shape).astype(dtype)

    v = {"encoder/num_heads": np.int16(2), "decoder/num_heads": np.int16(2), "decoder/activation": np.int8(3),
         "decoder/pre_norm": np.int8(1), "decoder/scale_embeddings": np.int8(0), "decoder/alibi": np.int8(0),
         "encoder/conv1/weight": w(d, 4, 3), "encoder/conv1/bias": w(d), "encoder/conv2/weight": w(d, d, 3),
         "encoder/conv2/bias": w(d), "encoder/position_encodings/encodings": w(6, d),
         "decoder/position_encodings/encodings": w(5, d), "decoder/embeddings/weight": w(vocab, d)}
    for side in ("encoder", "decoder"):
        v[f"{side}/layer_norm/gamma"], v[f"{side}/layer_norm/beta"] = w(d), w(d)
        p = f"{side}/layer_0"
        qkv_bias = w(3 * d)
        qkv_bias[d:2 * d] = 0  # ctranslate2 writes a zero key bias
        v |= {f"{p}/self_attention/linear_0/weight": w(3 * d, d), f"{p}/self_attention/linear_0/bias": qkv_bias,
              f"{p}/self_attention/linear_1/weight": w(d, d), f"{p}/self_attention/linear_1/bias": w(d),
              f"{p}/self_attention/layer_norm/gamma": w(d), f"{p}/self_attention/layer_norm/beta": w(d),
              f"{p}/ffn/linear_0/weight": w(ffn, d), f"{p}/ffn/linear_0/bias": w(ffn),
              f"{p}/ffn/linear_1/weight": w(d, ffn), f"{p}/ffn/linear_1/bias": w(d),
              f"{p}/ffn/layer_norm/gamma": w(d), f"{p}/ffn/layer_norm/beta": w(d)}
    p = "decoder/layer_0/attention"
    kv_bias = w(2 * d)
    kv_bias[:d] = 0
    v |= {f"{p}/linear_0/weight": w(d, d), f"{p}/linear_0/bias": w(d), f"{p}/linear_1/weight": w(2 * d, d),
          f"{p}/linear_1/bias": kv_bias, f"{p}/linear_2/weight": w(d, d), f"{p}/linear_2/bias": w(d),
          f"{p}/layer_norm/gamma": w(d), f"{p}/layer_norm/beta": w(d)}
    return v


@pytest.fixture
def variables() -> dict[str, np.ndarray]:
    return tiny_whisper_variables(np.random.default_rng(0))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_reads_float16_tensors_and_scalars_exactly(tmp_path, variables):
    model = read_model_bin(_write(tmp_path / "model.bin", ct2_bytes(variables)))
    assert (model.spec, model.revision, model.binary_version) == ("WhisperSpec", 3, 6)
    assert set(model.variables) == set(variables)
    for name, value in variables.items():
        got = model.variables[name]
        assert got.dtype == np.asarray(value).dtype and got.shape == np.asarray(value).shape, name
        assert np.array_equal(got, value), name


def test_a_model_split_in_parts_reads_as_the_concatenation(tmp_path, variables):
    data = ct2_bytes(variables, {"decoder/projection/weight": "decoder/embeddings/weight"})
    cuts = [3, 1000, len(data) // 2, len(data) - 2]  # inside the header, a name, a tensor, the alias table
    bounds = [0, *cuts, len(data)]
    parts = [_write(tmp_path / f"model.bin.part{i + 1}", data[a:b]) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    whole = read_model_bin(_write(tmp_path / "model.bin", data))
    split = read_model_bin(parts)
    assert split.aliases == whole.aliases
    for name in whole.variables:
        assert np.array_equal(split.variables[name], whole.variables[name]), name


def test_an_alias_shares_its_target(tmp_path, variables):
    model = read_model_bin(_write(tmp_path / "m.bin", ct2_bytes(
        variables, {"decoder/projection/weight": "decoder/embeddings/weight"})))
    assert model.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert model.variables["decoder/projection/weight"] is model.variables["decoder/embeddings/weight"]


def test_bfloat16_is_read_as_float32(tmp_path):
    value = np.array([1.0, -2.5, 0.15625, 393216.0], dtype=np.float32)  # exactly representable in bfloat16
    model = read_model_bin(_write(tmp_path / "m.bin", ct2_bytes({"x": value}, bfloat16=frozenset({"x"}))))
    assert model.variables["x"].dtype == np.float32
    assert np.array_equal(model.variables["x"], value)


def test_a_missing_part_is_a_clear_error(tmp_path, variables):
    data = ct2_bytes(variables)
    first = _write(tmp_path / "model.bin.part1", data[: len(data) // 2])
    with pytest.raises(Ct2FormatError, match="ends early"):
        read_model_bin([first])


def test_parts_in_the_wrong_order_are_refused(tmp_path, variables):
    data = ct2_bytes(variables)
    a = _write(tmp_path / "a", data[:100])
    b = _write(tmp_path / "b", data[100:])
    with pytest.raises(Ct2FormatError):
        read_model_bin([b, a])


def test_trailing_bytes_are_refused(tmp_path, variables):
    with pytest.raises(Ct2FormatError, match="trailing bytes"):
        read_model_bin(_write(tmp_path / "m.bin", ct2_bytes(variables) + b"\0\0"))


def test_an_unknown_binary_version_is_refused(tmp_path, variables):
    with pytest.raises(Ct2FormatError, match="binary version 5"):
        read_model_bin(_write(tmp_path / "m.bin", ct2_bytes(variables, version=5)))


def test_state_dict_splits_fused_projections_and_drops_the_key_bias(tmp_path, variables):
    model = read_model_bin(_write(tmp_path / "m.bin", ct2_bytes(
        variables, {"decoder/projection/weight": "decoder/embeddings/weight"})))
    dims = whisper_dims(model)
    assert (dims.d_model, dims.num_mel_bins, dims.vocab_size, dims.encoder_layers, dims.decoder_layers) == (8, 4, 12, 1, 1)
    assert (dims.max_source_positions, dims.max_target_positions, dims.encoder_ffn_dim) == (6, 5, 16)
    assert dims.tied_projection
    sd = whisper_state_dict(model)
    assert all(a.dtype == np.float32 for a in sd.values())
    qkv = variables["encoder/layer_0/self_attention/linear_0/weight"].astype(np.float32)
    att = "model.encoder.layers.0.self_attn"
    assert np.array_equal(sd[f"{att}.q_proj.weight"], qkv[:8])
    assert np.array_equal(sd[f"{att}.k_proj.weight"], qkv[8:16])
    assert np.array_equal(sd[f"{att}.v_proj.weight"], qkv[16:])
    assert f"{att}.k_proj.bias" not in sd
    bias = variables["encoder/layer_0/self_attention/linear_0/bias"].astype(np.float32)
    assert np.array_equal(sd[f"{att}.v_proj.bias"], bias[16:])
    cross = "model.decoder.layers.0.encoder_attn"
    kv = variables["decoder/layer_0/attention/linear_1/weight"].astype(np.float32)
    assert np.array_equal(sd[f"{cross}.k_proj.weight"], kv[:8]) and np.array_equal(sd[f"{cross}.v_proj.weight"], kv[8:])
    assert f"{cross}.k_proj.bias" not in sd
    assert np.array_equal(sd["model.decoder.layers.0.encoder_attn_layer_norm.weight"],
                          variables["decoder/layer_0/attention/layer_norm/gamma"].astype(np.float32))
    assert np.array_equal(sd["model.decoder.layers.0.fc2.weight"],
                          variables["decoder/layer_0/ffn/linear_1/weight"].astype(np.float32))
    assert np.array_equal(sd["proj_out.weight"], sd["model.decoder.embed_tokens.weight"])
    assert np.array_equal(sd["model.encoder.embed_positions.weight"],
                          variables["encoder/position_encodings/encodings"].astype(np.float32))
    # 2 final layer norms, conv1/2, 2 position tables, embedding, projection: 12; an encoder layer:
    # q, k (no bias), v, out, norm, fc1, fc2, norm: 15; a decoder layer: those + cross q, k, v, out, norm: 24
    assert len(sd) == 12 + 15 + 24


def test_int8_weights_are_dequantised_with_their_row_scales(tmp_path, variables):
    weight = variables["encoder/layer_0/ffn/linear_0/weight"].astype(np.float32)
    scale = (127.0 / np.abs(weight).max(axis=1)).astype(np.float32)
    variables["encoder/layer_0/ffn/linear_0/weight"] = np.round(weight * scale[:, None]).astype(np.int8)
    variables["encoder/layer_0/ffn/linear_0/weight_scale"] = scale
    sd = whisper_state_dict(read_model_bin(_write(tmp_path / "m.bin", ct2_bytes(variables))))
    got = sd["model.encoder.layers.0.fc1.weight"]
    assert np.abs(got - weight).max() <= (np.abs(weight).max(axis=1) / 127.0).max() / 2 + 1e-6


def test_a_variable_the_mapping_does_not_know_is_refused(tmp_path, variables):
    variables["encoder/layer_0/adapter/weight"] = np.zeros((2, 2), np.float16)
    with pytest.raises(Ct2FormatError, match="does not map"):
        whisper_state_dict(read_model_bin(_write(tmp_path / "m.bin", ct2_bytes(variables))))


def test_a_model_of_another_spec_is_refused(tmp_path, variables):
    with pytest.raises(Ct2FormatError, match="TransformerSpec"):
        whisper_dims(read_model_bin(_write(tmp_path / "m.bin", ct2_bytes(variables, spec="TransformerSpec"))))


def _tokenizer(n_text: int, specials: list[str]) -> dict:
    return {"model": {"type": "BPE", "vocab": {}}, "added_tokens": [
        {"id": n_text + i, "content": t, "special": True, "normalized": False} for i, t in enumerate(specials)]}


def test_missing_timestamp_tokens_are_restored_from_the_ct2_vocabulary():
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|notimestamps|>"]
    stamps = ["<|%.2f|>" % (i * 0.02) for i in range(4)]
    vocabulary = [f"t{i}" for i in range(5)] + specials + stamps
    tok, added = complete_tokenizer(_tokenizer(5, specials), len(vocabulary), vocabulary)
    assert added == 4
    assert [(a["id"], a["content"]) for a in tok["added_tokens"][-4:]] == [(9 + i, s) for i, s in enumerate(stamps)]
    assert not any(a["special"] for a in tok["added_tokens"][-4:])


def test_timestamp_tokens_are_not_guessed_when_the_vocabulary_disagrees():
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]
    vocabulary = [f"t{i}" for i in range(5)] + specials + ["<|0.00|>", "<|0.04|>"]
    tok, added = complete_tokenizer(_tokenizer(5, specials), len(vocabulary), vocabulary)
    assert added == 0 and len(tok["added_tokens"]) == 3
    assert complete_tokenizer(_tokenizer(5, specials), 10, None)[1] == 0


def test_vocabulary_files_of_both_kinds_are_read(tmp_path):
    (tmp_path / "vocabulary.txt").write_text("a\nĠb\n<|0.00|>\n", encoding="utf-8")
    (tmp_path / "vocabulary.json").write_text('["a", "Ġb", "<|0.00|>"]', encoding="utf-8")
    assert read_vocabulary(tmp_path / "vocabulary.txt") == read_vocabulary(tmp_path / "vocabulary.json") == \
        ["a", "Ġb", "<|0.00|>"]


def test_a_folder_with_a_split_model_lists_its_parts_in_order(tmp_path):
    for name in ("config.json", "tokenizer.json", "model.bin.part10", "model.bin.part2", "model.bin.part1"):
        (tmp_path / name).write_text("{}")
    folder = Ct2WhisperFolder.in_folder(tmp_path)
    assert [p.name for p in folder.model_bin] == ["model.bin.part1", "model.bin.part2", "model.bin.part10"]
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(Ct2FormatError, match="no tokenizer.json"):
        Ct2WhisperFolder.in_folder(tmp_path)
