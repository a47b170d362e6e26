"""Export a local ``WhisperForConditionalGeneration`` checkpoint to a streamcap speech engine folder
(``engine.json`` format 2 with ``"kind": "speech"``, ``"architecture": "whisper"``).

Two ONNX graphs, one copy of each weight:

- ``encoder.onnx``: ``input_features`` (B, n_mels, 3000) log-mel → ``cross_key_{i}`` /
  ``cross_value_{i}`` (B, H, 1500, hd) for every decoder layer ``i``: the encoder and the
  decoder's cross-attention key/value projections, run once per 30 s chunk;
- ``decoder.onnx``: ``input_ids`` (B, T), ``positions`` (B, T) (learned position of each new
  token), ``attention_mask`` (B, P+T) (1 = a real token, 0 = left padding), ``logit_index``
  (B, S) (which of the T new positions to project to the vocabulary), ``past_key/value_{i}``
  (B, H, P, hd; P may be 0) and the cross keys/values → ``logits`` (B, S, V) and
  ``present_key/value_{i}`` (B, H, P+T, hd). The same graph is the prefill (T = prompt length,
  P = 0) and every step (T = 1); ``logit_index`` lets the prefill return the logits after the
  start-of-transcript token too (P(<|nospeech|>)) without projecting every prompt position.
  When the checkpoint names ``alignment_heads`` the decoder also outputs ``cross_qk`` (B, A, T,
  1500): those heads' cross-attention logits, for word times by dynamic time warping (as OpenAI's
  ``find_alignment``).

The output projection is the token embedding itself (Whisper ties them): the graph multiplies by
the embedding initializer with ``Gemm(transB=1)``, so the matrix is stored once. The decoder
layers are written out from the model's own submodules (pre-norm self-attention, cross-attention,
MLP) on plain tensors; parity with ``WhisperForConditionalGeneration.generate`` is tested.

The manifest carries what decoding needs without transformers: special token ids, language ids
→ codes, suppress lists, ``max_initial_timestamp_index``, the mel settings, plus ``licence`` and
``source`` from an optional ``streamcap_source.json`` beside the checkpoint. Caption-only export
options (``--frames``, ``--window-s``, ``--max-new-tokens``) do not apply and are ignored.
Needs torch + transformers (the ``export`` extra); never imported by the server.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path

from streamcap.export.base import ExportError, ExportOptions, copy_tokenizer, write_manifest

log = logging.getLogger(__name__)

ARCHITECTURE = "whisper"
MODEL_TYPE = "WhisperForConditionalGeneration"
GRAPHS = {"encoder": "encoder.onnx", "decoder": "decoder.onnx"}
SOURCE_FILE = "streamcap_source.json"
SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_S = 30
_LANG = re.compile(r"^<\|([a-z]{2,3}(?:_[a-z]+)?|haw|yue)\|>$")


def _heads(t, b, h, hd):
    return t.view(b, -1, h, hd).transpose(1, 2)


def _wrappers(model, alignment_heads: list[list[int]] | None):
    import torch
    from torch import nn

    enc, dec = model.model.encoder, model.model.decoder
    cfg = model.config
    h = cfg.decoder_attention_heads
    hd = cfg.d_model // h
    heads = [(int(l), int(k)) for l, k in alignment_heads or []]

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc, self.dec = enc, dec

        def forward(self, input_features):
            x = self.enc(input_features).last_hidden_state
            b = x.shape[0]
            out = []
            for layer in self.dec.layers:
                a = layer.encoder_attn
                out += [_heads(a.k_proj(x), b, h, hd), _heads(a.v_proj(x), b, h, hd)]
            return tuple(out)

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dec = dec

        def forward(self, input_ids, positions, attention_mask, logit_index, *kv):
            n = len(self.dec.layers)
            past, cross = kv[: 2 * n], kv[2 * n:]
            b = input_ids.shape[0]
            x = self.dec.embed_tokens(input_ids) * self.dec.embed_scale + self.dec.embed_positions.weight[positions]
            # absolute position of each query and key, from the data (no Python ints in the graph)
            p = torch.ones_like(past[0][0, 0, :, 0]).sum()
            q_pos = torch.cumsum(torch.ones_like(input_ids[0]), 0) - 1 + p.to(torch.long)
            k_pos = torch.cumsum(torch.ones_like(attention_mask[0]), 0) - 1
            allowed = (k_pos.unsqueeze(0) <= q_pos.unsqueeze(1)).unsqueeze(0).unsqueeze(0) \
                & (attention_mask > 0).unsqueeze(1).unsqueeze(1)
            bias = torch.where(allowed, torch.zeros((), dtype=x.dtype),
                               torch.full((), torch.finfo(x.dtype).min, dtype=x.dtype))
            present, qks = [], []
            for i, layer in enumerate(self.dec.layers):
                a = layer.self_attn
                r = x
                y = layer.self_attn_layer_norm(x)
                q = _heads(a.q_proj(y) * a.scaling, b, h, hd)
                k = torch.cat([past[2 * i], _heads(a.k_proj(y), b, h, hd)], dim=2)
                v = torch.cat([past[2 * i + 1], _heads(a.v_proj(y), b, h, hd)], dim=2)
                present += [k, v]
                w = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) + bias, dim=-1)
                x = r + a.out_proj(torch.matmul(w, v).transpose(1, 2).reshape(b, -1, h * hd))
                c = layer.encoder_attn
                r = x
                y = layer.encoder_attn_layer_norm(x)
                q = _heads(c.q_proj(y) * c.scaling, b, h, hd)
                qk = torch.matmul(q, cross[2 * i].transpose(-1, -2))
                qks += [qk[:, k] for l, k in heads if l == i]
                w = torch.softmax(qk, dim=-1)
                x = r + c.out_proj(torch.matmul(w, cross[2 * i + 1]).transpose(1, 2).reshape(b, -1, h * hd))
                r = x
                y = layer.final_layer_norm(x)
                x = r + layer.fc2(layer.activation_fn(layer.fc1(y)))
            x = self.dec.layer_norm(x)
            d = x.shape[-1]
            sel = torch.gather(x, 1, logit_index.unsqueeze(-1).expand(-1, -1, d))
            # tied output projection: Gemm on the embedding initializer itself (stored once)
            logits = torch.nn.functional.linear(sel.reshape(-1, d), self.dec.embed_tokens.weight)
            logits = logits.reshape(b, logit_index.shape[1], -1)
            if heads:  # the alignment heads' cross-attention logits, for word timing (B, A, T, 1500)
                return (logits, *present, torch.stack(qks, dim=1))
            return (logits, *present)

    return Encoder().eval(), Decoder().eval()


def tie_output_projection(path: Path) -> int:
    """Make the decoder's output projection read the token embedding itself: the ONNX exporter
    folds ``linear(x, E)`` into ``MatMul(x, Eᵀ)`` with a transposed copy of E; this rewrites it to
    ``Gemm(x, E, transB=1)`` and drops the copy. Returns the bytes saved."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    emb_name = next((n for n in inits if n.endswith("embed_tokens.weight")), None)
    if emb_name is None:
        raise ExportError(f"{path}: no token embedding initializer found")
    emb = numpy_helper.to_array(inits[emb_name])
    saved = 0
    for idx, node in enumerate(list(g.node)):
        if node.op_type != "MatMul" or node.input[1] not in inits or node.input[1] == emb_name:
            continue
        w = inits[node.input[1]]
        if tuple(w.dims) != emb.shape[::-1] or not np.array_equal(numpy_helper.to_array(w), emb.T):
            continue
        gemm = helper.make_node("Gemm", [node.input[0], emb_name], list(node.output), name=node.name + "_tied",
                                transB=1)
        g.node.remove(node)
        g.node.insert(idx, gemm)
        if not any(w.name in n.input for n in g.node):
            g.initializer.remove(w)
            saved += emb.nbytes
    onnx.save(model, str(path))
    return saved


def _tokenizer_ids(checkpoint: Path) -> dict[str, int]:
    tj = json.loads((Path(checkpoint) / "tokenizer.json").read_text())
    ids = {t["content"]: int(t["id"]) for t in tj.get("added_tokens", [])}
    ids.update({k: int(v) for k, v in (tj.get("model", {}).get("vocab") or {}).items()
                if k.startswith("<|") and k.endswith("|>")})
    return ids


def whisper_facts(model, checkpoint: Path) -> dict:
    """The generation facts from the checkpoint's generation config, filled from tokenizer.json
    where an older checkpoint's config lacks them."""
    cfg, gen = model.config, model.generation_config
    tok = _tokenizer_ids(checkpoint)

    def pick(attr: str, token: str | None) -> int:
        value = getattr(gen, attr, None)
        if value is None and token is not None:
            value = tok.get(token)
        if value is None:
            raise ExportError(f"{checkpoint}: cannot tell the {token or attr} token id (no generation_config.json "
                              f"field {attr!r} and no such token in tokenizer.json)")
        return int(value)

    eot = pick("eos_token_id", "<|endoftext|>")
    sot = pick("decoder_start_token_id", "<|startoftranscript|>")
    no_ts = pick("no_timestamps_token_id", "<|notimestamps|>")
    lang_to_id = dict(getattr(gen, "lang_to_id", None) or {})
    if not lang_to_id:
        lang_to_id = {t: i for t, i in tok.items() if _LANG.match(t) and sot < i < no_ts}
    languages = {m.group(1): int(i) for t, i in lang_to_id.items() if (m := _LANG.match(t))}
    task_to_id = dict(getattr(gen, "task_to_id", None) or {})
    for task in ("transcribe", "translate"):
        if task not in task_to_id and f"<|{task}|>" in tok:
            task_to_id[task] = tok[f"<|{task}|>"]
    multilingual = bool(getattr(gen, "is_multilingual", None) if getattr(gen, "is_multilingual", None) is not None
                        else len(languages) > 1)
    nospeech = tok.get("<|nospeech|>", tok.get("<|nocaptions|>", no_ts - 1))
    prev = getattr(gen, "prev_sot_token_id", None) or tok.get("<|startofprev|>")
    if prev is None:
        raise ExportError(f"{checkpoint}: no <|startofprev|> token (needed for prompts)")
    suppress = getattr(gen, "suppress_tokens", None) or getattr(cfg, "suppress_tokens", None) or []
    begin_suppress = getattr(gen, "begin_suppress_tokens", None) or getattr(cfg, "begin_suppress_tokens", None) or []
    align = getattr(gen, "alignment_heads", None)
    return {
        "sot": sot, "eot": eot, "sot_prev": int(prev), "sot_lm": tok.get("<|startoflm|>"),
        "transcribe": task_to_id.get("transcribe"), "translate": task_to_id.get("translate"),
        "no_timestamps": no_ts, "no_speech": int(nospeech), "timestamp_begin": no_ts + 1,
        "time_precision_s": 0.02,
        "languages": languages, "is_multilingual": multilingual,
        "suppress_tokens": [int(t) for t in suppress], "begin_suppress_tokens": [int(t) for t in begin_suppress],
        "max_initial_timestamp_index": getattr(gen, "max_initial_timestamp_index", None),
        "max_target_positions": int(cfg.max_target_positions),
        "max_prompt_tokens": int(cfg.max_target_positions) // 2 - 1,
        "alignment_heads": [list(map(int, x)) for x in align] if align else None,
    }


def read_source(checkpoint: Path) -> dict:
    """``licence`` and ``source`` from ``streamcap_source.json`` beside the checkpoint, else "unknown"."""
    p = Path(checkpoint) / SOURCE_FILE
    info = {}
    if p.is_file():
        try:
            info = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ExportError(f"{p} is not valid JSON: {e}") from e
    return {"licence": str(info.get("licence", info.get("license", "unknown"))),
            "source": str(info.get("source", "unknown"))}


def export(checkpoint: Path, out: Path, opts: ExportOptions) -> Path:
    """Export ``checkpoint`` (a ``save_pretrained`` folder with ``tokenizer.json``) into ``out``."""
    import torch
    from transformers import WhisperForConditionalGeneration

    checkpoint, out = Path(checkpoint), Path(out)
    if opts.frames is not None:
        log.info("%s: --frames does not apply to a speech model; ignored", checkpoint)
    model = WhisperForConditionalGeneration.from_pretrained(checkpoint, attn_implementation="eager").eval()
    cfg = model.config
    n_layers, heads = cfg.decoder_layers, cfg.decoder_attention_heads
    head_dim = cfg.d_model // heads
    n_frames = cfg.max_source_positions * 2
    facts = whisper_facts(model, checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    align = facts["alignment_heads"]
    if align and not all(0 <= l < n_layers and 0 <= k < heads for l, k in align):
        log.warning("%s: alignment_heads %s do not fit %d layers x %d heads; word timing will be approximate",
                    checkpoint, align, n_layers, heads)
        align = None
    encoder, decoder = _wrappers(model, align)
    qk_out = ["cross_qk"] if align else []
    kv = [f"{kind}_{i}" for i in range(n_layers) for kind in ("key", "value")]
    cross = [f"cross_{n}" for n in kv]
    past, present = [f"past_{n}" for n in kv], [f"present_{n}" for n in kv]
    feats = torch.randn(2, cfg.num_mel_bins, n_frames)
    b, t, p = 2, 3, 4
    ids = torch.full((b, t), facts["sot"], dtype=torch.long)
    pos = torch.arange(p, p + t).unsqueeze(0).repeat(b, 1)
    mask = torch.ones(b, p + t, dtype=torch.long)
    index = torch.tensor([[0, t - 1]] * b)
    past_t = tuple(torch.randn(b, heads, p, head_dim) for _ in past)
    cross_t = tuple(torch.randn(b, heads, cfg.max_source_positions, head_dim) for _ in cross)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
        torch.onnx.export(encoder, (feats,), out / GRAPHS["encoder"], input_names=["input_features"],
                          output_names=cross, opset_version=opts.opset, dynamo=False,
                          dynamic_axes={"input_features": {0: "b"}, **{n: {0: "b"} for n in cross}})
        torch.onnx.export(decoder, (ids, pos, mask, index, *past_t, *cross_t), out / GRAPHS["decoder"],
                          input_names=["input_ids", "positions", "attention_mask", "logit_index", *past, *cross],
                          output_names=["logits", *present, *qk_out], opset_version=opts.opset, dynamo=False,
                          dynamic_axes={"input_ids": {0: "b", 1: "t"}, "positions": {0: "b", 1: "t"},
                                        "attention_mask": {0: "b", 1: "pt"}, "logit_index": {0: "b", 1: "s"},
                                        "logits": {0: "b", 1: "s"},
                                        **{n: {0: "b", 2: "p"} for n in past},
                                        **{n: {0: "b"} for n in cross},
                                        **{n: {0: "b", 2: "pt"} for n in present},
                                        **{n: {0: "b", 2: "t"} for n in qk_out}})
    if not tie_output_projection(out / GRAPHS["decoder"]):
        raise ExportError(f"{checkpoint}: the output projection could not be tied to the token embedding")
    tok = copy_tokenizer(checkpoint, out)
    fields = {
        "name": opts.name or out.name,
        "kind": "speech",
        "architecture": ARCHITECTURE,
        "model_type": MODEL_TYPE,
        "precision": "fp32",
        "opset": opts.opset,
        **read_source(checkpoint),
        "tokenizer": tok,
        "audio": {"sample_rate": SAMPLE_RATE, "n_mels": int(cfg.num_mel_bins), "n_fft": N_FFT,
                  "hop_length": HOP_LENGTH, "chunk_s": CHUNK_S, "n_frames": n_frames},
        "decoder": {"num_layers": n_layers, "num_heads": heads, "head_dim": head_dim, "d_model": int(cfg.d_model),
                    "vocab_size": int(cfg.vocab_size), "encoder_positions": int(cfg.max_source_positions)},
        "whisper": facts,
        # "cross-attention": the decoder also outputs cross_qk (the alignment heads) for DTW word times
        "word_timing": "cross-attention" if align else "approximate",
        "graphs": dict(GRAPHS),
    }
    return write_manifest(out, fields, [*GRAPHS.values(), tok])


__all__ = ["ARCHITECTURE", "export", "read_source", "whisper_facts"]
