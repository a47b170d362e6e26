"""Export a local ``GitForCausalLM`` checkpoint (image GIT or video GIT such as GIT-base-VATEX)
to a streamcap engine folder (format 2, docs/engine-format.md).

Three ONNX graphs, split where GIT itself is split so that frames can be cached:

- ``vision_encoder.onnx``: ``pixel_values`` (N, 3, S, S) → ``features`` (N, T, Dv) — each frame on
  its own, as GIT encodes them (the temporal embedding is added later, by window position);
- ``decoder_prefill.onnx``: ``features`` (B, K, T, Dv) + ``input_ids`` (B, L) → last ``logits`` and
  the self-attention cache over [K·T image tokens, L text tokens];
- ``decoder_step.onnx``: one token + the cache → ``logits`` and the cache one longer.

The decoder layers are written out here from the model's own submodules (BERT-style post-norm
layers) so the cache is plain tensors; parity with ``GitForCausalLM.generate`` is tested.
Needs torch + transformers (the ``export`` extra); never imported by the server.
"""

from __future__ import annotations

import math
from pathlib import Path

from streamcap.engine.preprocess import Preprocessing
from streamcap.export.base import (
    OPSET,
    ExportError,
    ExportOptions,
    copy_tokenizer,
    read_preprocessing,
    write_manifest,
)

# CLIPImageProcessor, which GIT checkpoints ship with
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _layer(layer, x, mask, past_k=None, past_v=None):
    """One GIT (BERT-style) decoder layer on plain tensors; returns (x, key, value)."""
    import torch

    att = layer.attention.self
    b, n, _ = x.shape
    h, hd = att.num_attention_heads, att.attention_head_size

    def heads(t):
        return t.view(b, n, h, hd).transpose(1, 2)

    q, k, v = heads(att.query(x)), heads(att.key(x)), heads(att.value(x))
    if past_k is not None:
        k = torch.cat([past_k, k], dim=2)
        v = torch.cat([past_v, v], dim=2)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd)
    if mask is not None:
        scores = scores + mask
    ctx = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, n, h * hd)
    a = layer.attention.output(ctx, x)
    return layer.output(layer.intermediate(a), a), k, v


def _heads_qkv(layer, x):
    att = layer.attention.self
    b, n, _ = x.shape
    h, hd = att.num_attention_heads, att.attention_head_size

    def heads(t):
        return t.view(b, n, h, hd).transpose(1, 2)

    return heads(att.query(x)), heads(att.key(x)), heads(att.value(x)), hd


def _finish(layer, x, ctx):
    b, h, n, hd = ctx.shape
    a = layer.attention.output(ctx.transpose(1, 2).reshape(b, n, h * hd), x)
    return layer.output(layer.intermediate(a), a)


def _prefill_layer(layer, x, n_img: int, text_mask):
    """The prefill's layer without an (n × n) mask: image rows attend to the image columns only
    (what the mask allowed them), text rows to everything before them (``text_mask``: (L, n)
    additive). The same arithmetic as ``_layer`` with the mask (a masked score's weight is an
    exact 0), without building, adding and reading a mask the size of all the scores."""
    import torch

    q, k, v, hd = _heads_qkv(layer, x)
    ki, vi = k[:, :, :n_img], v[:, :, :n_img]
    img = torch.matmul(torch.softmax(torch.matmul(q[:, :, :n_img], ki.transpose(-1, -2)) / math.sqrt(hd), dim=-1), vi)
    txt_scores = torch.matmul(q[:, :, n_img:], k.transpose(-1, -2)) / math.sqrt(hd) + text_mask
    txt = torch.matmul(torch.softmax(txt_scores, dim=-1), v)
    return _finish(layer, x, torch.cat([img, txt], dim=2)), k, v


def _split_step_layer(layer, x, past_k, past_v, text_k, text_v):
    """One token's layer with its cache in two parts: the prefill's (image + prompt), never
    copied, and the generated text's (short), which grows by this token. Scores over both parts
    go through one softmax, so the result is ``_layer``'s over their concatenation."""
    import torch

    q, k, v, hd = _heads_qkv(layer, x)
    text_k, text_v = torch.cat([text_k, k], dim=2), torch.cat([text_v, v], dim=2)
    scores = torch.cat([torch.matmul(q, past_k.transpose(-1, -2)), torch.matmul(q, text_k.transpose(-1, -2))],
                       dim=-1) / math.sqrt(hd)
    probs = torch.softmax(scores, dim=-1)
    p = past_k.shape[2]
    ctx = torch.matmul(probs[..., :p], past_v) + torch.matmul(probs[..., p:], text_v)
    return _finish(layer, x, ctx), text_k, text_v


def _wrappers(model, n_prefix: int):
    import torch
    from torch import nn

    git = model.git
    temporal = model.config.num_image_with_embedding is not None

    class Prefill(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.git, self.output = git, model.output

        def forward(self, features, input_ids):
            b, k, t, d = features.shape
            if temporal:
                temb = torch.cat([p.reshape(1, d) for p in self.git.img_temporal_embedding], 0)
                features = features + temb[:k].reshape(1, k, 1, d)
            vis = self.git.visual_projection(features.reshape(b, k * t, d))
            text = self.git.embeddings(input_ids=input_ids)
            x = torch.cat([vis, text], dim=1)
            n_img, n = k * t, k * t + input_ids.shape[1]
            row = torch.arange(n_img, n).unsqueeze(1)
            col = torch.arange(n).unsqueeze(0)
            # image rows see every image column (and no text: _prefill_layer); text rows see the
            # image and earlier text
            allowed = col <= row
            mask = torch.where(allowed, torch.zeros((), dtype=x.dtype),
                               torch.full((), torch.finfo(x.dtype).min, dtype=x.dtype)).reshape(1, 1, n - n_img, n)
            cache = []
            for layer in self.git.encoder.layer:
                x, kk, vv = _prefill_layer(layer, x, n_img, mask)
                cache += [kk, vv]
            return (self.output(x[:, -1]), *cache)

    class Step(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.git, self.output = git, model.output

        def forward(self, input_ids, *past):
            emb = self.git.embeddings
            # text position of the new token = cache length − image tokens, from the data itself
            pos = torch.ones_like(past[0][:, 0, :, 0], dtype=torch.long).sum(dim=1, keepdim=True) - n_prefix
            x = emb.LayerNorm(emb.word_embeddings(input_ids) + emb.position_embeddings(pos))
            cache = []
            for i, layer in enumerate(self.git.encoder.layer):
                x, kk, vv = _layer(layer, x, None, past[2 * i], past[2 * i + 1])
                cache += [kk, vv]
            return (self.output(x[:, -1]), *cache)

    class SplitStep(nn.Module):
        """``Step`` with the cache in two parts (``_split_step_layer``): inputs ``input_ids``, the
        prefill's cache ``past_*`` (read, never copied) and the generated tokens' ``text_*`` (may
        be empty); outputs the logits and ``present_text_*`` (one longer)."""

        def __init__(self) -> None:
            super().__init__()
            self.git, self.output = git, model.output

        def forward(self, input_ids, *caches):
            n = len(self.git.encoder.layer)
            past, text = caches[:2 * n], caches[2 * n:]
            emb = self.git.embeddings
            length = (torch.ones_like(past[0][:, 0, :, 0], dtype=torch.long).sum(dim=1, keepdim=True)
                      + torch.ones_like(text[0][:, 0, :, 0], dtype=torch.long).sum(dim=1, keepdim=True))
            x = emb.LayerNorm(emb.word_embeddings(input_ids) + emb.position_embeddings(length - n_prefix))
            out = []
            for i, layer in enumerate(self.git.encoder.layer):
                x, kk, vv = _split_step_layer(layer, x, past[2 * i], past[2 * i + 1], text[2 * i], text[2 * i + 1])
                out += [kk, vv]
            return (self.output(x[:, -1]), *out)

    class Vision(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = git.image_encoder

        def forward(self, pixel_values):
            return self.enc(pixel_values).last_hidden_state

    return Vision().eval(), Prefill().eval(), Step().eval(), SplitStep().eval()


def export(checkpoint: Path, out: Path, opts: ExportOptions, *, preprocessing: Preprocessing | None = None,
           extra: dict | None = None) -> Path:
    """Export ``checkpoint`` (a ``save_pretrained`` folder with ``tokenizer.json``) into ``out``."""
    import torch
    from transformers import GitForCausalLM

    checkpoint, out = Path(checkpoint), Path(out)
    model = GitForCausalLM.from_pretrained(checkpoint).eval()
    cfg, vcfg = model.config, model.config.vision_config
    max_frames = cfg.num_image_with_embedding or 1
    frames = opts.frames or max_frames
    if not 1 <= frames <= max_frames:
        raise ExportError(f"{checkpoint}: --frames {frames} is not possible; this GIT model has temporal "
                          f"embeddings for {max_frames} frame(s)")
    size = vcfg.image_size
    tokens_per_frame = (size // vcfg.patch_size) ** 2 + 1
    n_prefix = frames * tokens_per_frame
    pre = preprocessing or read_preprocessing(checkpoint, size=size, default_mean=CLIP_MEAN,
                                              default_std=CLIP_STD, default_resize="center_crop")
    n_layers = cfg.num_hidden_layers
    heads = cfg.num_attention_heads
    head_dim = cfg.hidden_size // heads
    out.mkdir(parents=True, exist_ok=True)
    vision, prefill, step, split_step = _wrappers(model, n_prefix)
    kv_names = [f"{kind}_{i}" for i in range(n_layers) for kind in ("key", "value")]
    present = [f"present_{n}" for n in kv_names]
    past = [f"past_{n}" for n in kv_names]
    px = torch.randn(2, 3, size, size)
    ff = torch.randn(2, frames, tokens_per_frame, vcfg.hidden_size)
    ids = torch.full((2, 3), cfg.bos_token_id, dtype=torch.long)
    past_t = tuple(torch.randn(2, heads, n_prefix + 3, head_dim) for _ in past)
    with torch.no_grad():
        torch.onnx.export(vision, (px,), out / "vision_encoder.onnx", input_names=["pixel_values"],
                          output_names=["features"], opset_version=opts.opset, dynamo=False,
                          dynamic_axes={"pixel_values": {0: "n"}, "features": {0: "n"}})
        torch.onnx.export(prefill, (ff, ids), out / "decoder_prefill.onnx",
                          input_names=["features", "input_ids"], output_names=["logits", *present],
                          opset_version=opts.opset, dynamo=False,
                          dynamic_axes={"features": {0: "b"}, "input_ids": {0: "b", 1: "l"}, "logits": {0: "b"},
                                        **{n: {0: "b", 2: "p"} for n in present}})
        torch.onnx.export(step, (ids[:, :1], *past_t), out / "decoder_step.onnx",
                          input_names=["input_ids", *past], output_names=["logits", *present],
                          opset_version=opts.opset, dynamo=False,
                          dynamic_axes={"input_ids": {0: "b"}, "logits": {0: "b"},
                                        **{n: {0: "b", 2: "p"} for n in past},
                                        **{n: {0: "b", 2: "p1"} for n in present}})
        text = [f"text_{n}" for n in kv_names]
        text_t = tuple(torch.randn(2, heads, 2, head_dim) for _ in text)
        torch.onnx.export(split_step, (ids[:, :1], *past_t, *text_t), out / "decoder_step_split.onnx",
                          input_names=["input_ids", *past, *text], output_names=["logits", *[f"present_{n}" for n in text]],
                          opset_version=opts.opset, dynamo=False,
                          dynamic_axes={"input_ids": {0: "b"}, "logits": {0: "b"},
                                        **{n: {0: "b", 2: "p"} for n in past},
                                        **{n: {0: "b", 2: "t"} for n in text},
                                        **{f"present_{n}": {0: "b", 2: "t1"} for n in text}})
    tok = copy_tokenizer(checkpoint, out)
    graphs = {"vision_encoder": "vision_encoder.onnx", "decoder_prefill": "decoder_prefill.onnx",
              "decoder_step": "decoder_step.onnx", "decoder_step_split": "decoder_step_split.onnx"}
    fields = {
        "name": opts.name or out.name,
        "architecture": "git",
        "model_type": "GitForCausalLM",
        "precision": "fp32",
        "opset": opts.opset,
        "frames_per_window": frames,
        "encoder_mode": "frame",
        "window_s": opts.window_s,
        "image_tokens_per_frame": tokens_per_frame,
        "vision_hidden_size": vcfg.hidden_size,
        "preprocessing": pre.to_dict(),
        "tokenizer": tok,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "max_new_tokens": opts.max_new_tokens,
        "decoder": {"num_layers": n_layers, "num_heads": heads, "head_dim": head_dim, "cross_attention": False,
                    "prefix_tokens": n_prefix, "vocab_size": cfg.vocab_size},
        "graphs": graphs,
        **(extra or {}),
    }
    return write_manifest(out, fields, [*graphs.values(), tok])


def export_git(checkpoint: Path, out: Path, *, preprocessing: Preprocessing | None = None,
               window_s: float = 2.0, max_new_tokens: int = 20, name: str | None = None,
               extra: dict | None = None) -> Path:
    """The training script's entry point (explicit preprocessing, no preprocessor_config.json)."""
    return export(checkpoint, out, ExportOptions(window_s=window_s, max_new_tokens=max_new_tokens, name=name),
                  preprocessing=preprocessing, extra=extra)


__all__ = ["OPSET", "export", "export_git"]
