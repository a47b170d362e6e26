"""Export a local ``BlipForConditionalGeneration`` checkpoint to a streamcap engine folder.

Three ONNX graphs (engine format 2, docs/engine-format.md), split where BLIP is split:

- ``vision_encoder.onnx`` (``frame`` mode): ``pixel_values`` (N, 3, S, S) → ``features`` (N, T, D),
  the vision model's ``last_hidden_state`` (after its post-LayerNorm), which BLIP's text decoder
  cross-attends to;
- ``decoder_prefill.onnx``: ``features`` (B, 1, T, D) + ``input_ids`` (B, L) → ``logits`` (B, V)
  of the last position, ``present_key_{i}``/``present_value_{i}`` (B, H, L, hd) and the
  cross-attention keys/values ``cross_key_{i}``/``cross_value_{i}`` (B, H, T, hd);
- ``decoder_step.onnx``: ``input_ids`` (B, 1) + the past and cross caches → ``logits`` (B, V) and
  the past grown by one position. The token's position is the past's length (no prefix tokens).

The decoder graphs re-implement BLIP's text decoder layer by layer (BERT-style post-LayerNorm
blocks: self-attention, cross-attention to the image, feed-forward; learned absolute positions)
with the checkpoint's own submodules and plain tensors for the cache, so no transformers ``Cache``
object is traced.

What the runtime must do (what ``BlipForConditionalGeneration.generate`` does): the first
``input_ids`` are ``[bos]`` (``[DEC]``, ``text_config.bos_token_id``) followed by the prompt's
tokens without ``[CLS]``/``[SEP]`` (BLIP tokenizes ``[CLS] prompt [SEP]``, replaces ``[CLS]``
with ``[DEC]`` and drops the trailing ``[SEP]``); generation stops on ``text_config.sep_token_id``
(``[SEP]``), which is the manifest's ``eos_token_id``.

Needs torch + transformers (the ``export`` extra); never imported by the server.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from streamcap.export.base import (
    ExportError,
    ExportOptions,
    copy_tokenizer,
    read_preprocessing,
    write_manifest,
)

log = logging.getLogger(__name__)

MODEL_TYPE = "BlipForConditionalGeneration"
BLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
BLIP_STD = (0.26862954, 0.26130258, 0.27577711)
GRAPHS = {"vision_encoder": "vision_encoder.onnx", "decoder_prefill": "decoder_prefill.onnx",
          "decoder_step": "decoder_step.onnx"}


def _check_checkpoint(checkpoint: Path) -> None:
    """Refuse, with a clear reason, anything that is not a BLIP captioning checkpoint."""
    cfg_path = checkpoint / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{checkpoint} is not a Hugging Face checkpoint folder: no config.json")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{cfg_path} is not valid JSON: {e}") from e
    archs = cfg.get("architectures") or []
    model_type = cfg.get("model_type")
    if MODEL_TYPE in archs:
        return
    if archs:
        raise ExportError(f"{checkpoint} holds a {', '.join(archs)} (model_type {model_type!r}); the BLIP "
                          f"exporter handles {MODEL_TYPE} only")
    if model_type != "blip":
        raise ExportError(f"{checkpoint} has model_type {model_type!r}; the BLIP exporter handles "
                          f"{MODEL_TYPE} (model_type 'blip') only")
    log.warning("%s names no architecture; exporting it as %s", checkpoint, MODEL_TYPE)


def _wrappers(model):
    """(vision, prefill, step) torch modules over the model's own submodules."""
    import torch
    from torch import nn

    text = model.text_decoder
    tcfg = text.config
    n_heads = tcfg.num_attention_heads
    head_dim = tcfg.hidden_size // n_heads
    scale = 1.0 / math.sqrt(head_dim)

    def heads(x):  # (B, L, H*hd) → (B, H, L, hd)
        b, n, _ = x.shape
        return x.reshape(b, n, n_heads, head_dim).transpose(1, 2)

    def merge(x):  # (B, H, L, hd) → (B, L, H*hd)
        b, _, n, _ = x.shape
        return x.transpose(1, 2).reshape(b, n, n_heads * head_dim)

    def attend(q, k, v, mask=None):
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale
        if mask is not None:  # True above the diagonal (future positions); -inf survives fp16 conversion
            scores = scores.masked_fill(mask, float("-inf"))
        return merge(torch.matmul(torch.softmax(scores, dim=-1), v))

    def embed(bert, input_ids, position_ids):
        emb = bert.embeddings
        x = emb.word_embeddings(input_ids) + emb.position_embeddings(position_ids)
        return emb.LayerNorm(x)

    def layer_forward(layer, h, past_k, past_v, cross_k, cross_v, mask):
        """One decoder layer; ``past_k``/``past_v`` may be None (prefill). Returns h, k, v."""
        sa = layer.attention
        q = heads(sa.self.query(h))
        k = heads(sa.self.key(h))
        v = heads(sa.self.value(h))
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)
            v = torch.cat([past_v, v], dim=2)
        h1 = sa.output(attend(q, k, v, mask), h)  # dense, dropout, LayerNorm(x + h)
        ca = layer.crossattention
        h2 = ca.output(attend(heads(ca.self.query(h1)), cross_k, cross_v), h1)
        return layer.output(layer.intermediate(h2), h2), k, v

    def cross_kv(layer, enc):
        ca = layer.crossattention.self
        return heads(ca.key(enc)), heads(ca.value(enc))

    class BlipVisionEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vision = model.vision_model

        def forward(self, pixel_values):
            return self.vision(pixel_values=pixel_values).last_hidden_state

    class BlipDecoderPrefill(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = text.bert
            self.cls = text.cls

        def forward(self, features, input_ids):
            b, k, t, d = features.shape
            enc = features.reshape(b, k * t, d)
            # positions 0..L-1 and the causal mask, built from the ids so L stays dynamic
            pos = torch.cumsum(torch.ones_like(input_ids), dim=1) - 1
            row = pos[:1].reshape(-1, 1)
            col = pos[:1].reshape(1, -1)
            mask = col > row
            h = embed(self.bert, input_ids, pos)
            outs = []
            crosses = []
            for layer in self.bert.encoder.layer:
                ck, cv = cross_kv(layer, enc)
                h, kk, vv = layer_forward(layer, h, None, None, ck, cv, mask)
                outs += [kk, vv]
                crosses += [ck, cv]
            logits = self.cls(h[:, -1])
            return (logits, *outs, *crosses)

    class BlipDecoderStep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = text.bert
            self.cls = text.cls
            self.n = len(text.bert.encoder.layer)

        def forward(self, input_ids, *caches):
            n = self.n
            past = caches[: 2 * n]
            cross = caches[2 * n :]
            # the new token's position is the past's length P (prefix_tokens = 0)
            past_len = torch.ones_like(past[0][:, 0, :, 0], dtype=torch.long).sum(dim=1, keepdim=True)
            pos = torch.zeros_like(input_ids) + past_len
            h = embed(self.bert, input_ids, pos)
            outs = []
            for i, layer in enumerate(self.bert.encoder.layer):
                h, kk, vv = layer_forward(layer, h, past[2 * i], past[2 * i + 1], cross[2 * i], cross[2 * i + 1],
                                          None)
                outs += [kk, vv]
            logits = self.cls(h[:, -1])
            return (logits, *outs)

    return BlipVisionEncoder().eval(), BlipDecoderPrefill().eval(), BlipDecoderStep().eval()


def export(checkpoint: Path, out: Path, opts: ExportOptions) -> Path:
    """Export ``checkpoint`` (a ``save_pretrained`` folder with ``tokenizer.json``) into ``out``."""
    checkpoint, out = Path(checkpoint), Path(out)
    _check_checkpoint(checkpoint)
    if opts.frames not in (None, 1):
        raise ExportError(f"BLIP captions single images: frames per window must be 1, not {opts.frames}")
    if opts.precision != "fp32":
        log.info("exporting %s in fp32; %s is applied afterwards by streamcap.export.quantize",
                 checkpoint, opts.precision)

    import torch
    from transformers import BlipForConditionalGeneration

    try:
        model = BlipForConditionalGeneration.from_pretrained(checkpoint).eval()
    except Exception as e:
        raise ExportError(f"cannot load {checkpoint} as {MODEL_TYPE}: {e}") from e
    tcfg = model.config.text_config
    vcfg = model.config.vision_config
    size = int(vcfg.image_size)
    patch = int(vcfg.patch_size)
    n_tokens = (size // patch) ** 2 + 1
    n_layers = tcfg.num_hidden_layers
    n_heads = tcfg.num_attention_heads
    head_dim = tcfg.hidden_size // n_heads
    for key in ("bos_token_id", "sep_token_id", "pad_token_id"):
        if getattr(tcfg, key, None) is None:
            raise ExportError(f"{checkpoint}: text_config.{key} is not set; BLIP's generate needs it")

    out.mkdir(parents=True, exist_ok=True)
    vision, prefill, step = _wrappers(model)
    present = [f"present_{kv}_{i}" for i in range(n_layers) for kv in ("key", "value")]
    past = [f"past_{kv}_{i}" for i in range(n_layers) for kv in ("key", "value")]
    cross = [f"cross_{kv}_{i}" for i in range(n_layers) for kv in ("key", "value")]

    b, l, p = 2, 3, 3  # dummy sizes > 1 so that no dynamic axis is folded to a constant
    px = torch.randn(b, 3, size, size)
    feats = torch.randn(b, 1, n_tokens, vcfg.hidden_size)
    ids = torch.full((b, l), tcfg.bos_token_id, dtype=torch.long)
    step_ids = torch.full((b, 1), tcfg.bos_token_id, dtype=torch.long)
    past_t = [torch.randn(b, n_heads, p, head_dim) for _ in past]
    cross_t = [torch.randn(b, n_heads, n_tokens, head_dim) for _ in cross]

    batch = {0: "batch"}
    prefill_axes = {"features": batch, "input_ids": {0: "batch", 1: "seq"}, "logits": batch,
                    **{n: {0: "batch", 2: "seq"} for n in present}, **{n: batch for n in cross}}
    step_axes = {"input_ids": batch, "logits": batch, **{n: {0: "batch", 2: "past_seq"} for n in past},
                 **{n: {0: "batch", 2: "total_seq"} for n in present}, **{n: batch for n in cross}}
    try:
        with torch.no_grad():
            torch.onnx.export(vision, (px,), out / GRAPHS["vision_encoder"], input_names=["pixel_values"],
                              output_names=["features"], opset_version=opts.opset, dynamo=False,
                              dynamic_axes={"pixel_values": batch, "features": batch})
            torch.onnx.export(prefill, (feats, ids), out / GRAPHS["decoder_prefill"],
                              input_names=["features", "input_ids"], output_names=["logits", *present, *cross],
                              opset_version=opts.opset, dynamo=False, dynamic_axes=prefill_axes)
            torch.onnx.export(step, (step_ids, *past_t, *cross_t), out / GRAPHS["decoder_step"],
                              input_names=["input_ids", *past, *cross], output_names=["logits", *present],
                              opset_version=opts.opset, dynamo=False, dynamic_axes=step_axes)
    except Exception as e:
        raise ExportError(f"ONNX export of {checkpoint} failed: {e}") from e

    tokenizer = copy_tokenizer(checkpoint, out)
    pre = read_preprocessing(checkpoint, size=size, default_mean=BLIP_MEAN, default_std=BLIP_STD,
                             default_resize="stretch")
    fields = {
        "name": opts.name or out.name,
        "architecture": "blip",
        "model_type": MODEL_TYPE,
        "precision": "fp32",
        "opset": opts.opset,
        "frames_per_window": 1,
        "encoder_mode": "frame",
        "window_s": opts.window_s,
        "preprocessing": pre.to_dict(),
        "tokenizer": tokenizer,
        "bos_token_id": int(tcfg.bos_token_id),   # [DEC]: generate() puts it in place of [CLS]
        "eos_token_id": int(tcfg.sep_token_id),   # generate() stops on [SEP]
        "pad_token_id": int(tcfg.pad_token_id),
        "max_new_tokens": opts.max_new_tokens,
        "decoder": {"num_layers": n_layers, "num_heads": n_heads, "head_dim": head_dim,
                    "cross_attention": True, "prefix_tokens": 0, "vocab_size": int(tcfg.vocab_size)},
        "graphs": dict(GRAPHS),
    }
    return write_manifest(out, fields, [*GRAPHS.values(), tokenizer])
