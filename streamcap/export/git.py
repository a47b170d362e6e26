"""Export a local ``GitForCausalLM`` checkpoint (image GIT or video GIT such as GIT-base-VATEX)
to a streamcap engine folder (format 2, docs/engine-format.md).

Four ONNX graphs, split where GIT itself is split so that frames can be cached:

- ``vision_encoder.onnx``: ``pixel_values`` (N, 3, S, S) → ``features`` (N, T, Dv) — each frame on
  its own, as GIT encodes them (the temporal embedding is added later, by window position);
- ``decoder_prefill.onnx``: ``features`` (B, K, T, Dv) + ``input_ids`` (B, L) → last ``logits`` and
  the self-attention cache over [K·T image tokens, L text tokens];
- ``decoder_step.onnx``: one token + the cache → ``logits`` and the cache one longer;
- ``decoder_unified.onnx``: the prefill and the step in one graph (what ONNX Runtime runs on the
  CPU: one session, the decoder weights held once and pre-packed): ``features`` (B, k, T, Dv) —
  k = 0 for a step —, ``input_ids``, the prefill's cache ``past_*`` (read, never copied) and the
  generated tokens' ``text_*`` → ``logits`` and ``present_*`` = ``text_*`` + the new rows. Its
  last layer carries only the last row past the cache, and image attention goes a frame at a
  time. ``decoder_prefill``/``decoder_step`` stay for TensorRT and the other providers.

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


def _unified_layer(layer, x, n_img, past_k, past_v, text_k, text_v, text_mask, *, chunks: tuple[int, int],
                   last: bool = False):
    """One layer of the unified decoder graph: ``x`` holds the new rows (``n_img`` image rows,
    then text rows; the prefill has both, a step one text row). Image rows attend the new image
    columns only (as ``_prefill_layer``); text rows attend the prefill's cache (``past_*``, read,
    never copied), the generated text's (``text_*``) and the new rows (``text_mask``: causal over
    the new text rows), through one softmax. Returns x and the cache one call longer
    (``text_*`` + the new rows). In the ``last`` layer only the last row goes on (to the
    logits): every row still gives its key and value to the cache, but the other rows' queries,
    attention and feed-forward would feed nothing (in the prefill, 1/7 of the decoder's work).
    Image queries go in ``chunks`` = (count, rows) blocks (a frame's tokens each): the same
    numbers, but the scores in memory at once are a frame's, not the window's (6× smaller)."""
    import torch

    att = layer.attention.self
    h, hd = att.num_attention_heads, att.attention_head_size

    def heads(t):
        return t.view(t.shape[0], t.shape[1], h, hd).transpose(1, 2)

    scale = math.sqrt(hd)
    k, v = heads(att.key(x)), heads(att.value(x))
    if last:
        x = x[:, -1:]
        text_mask = text_mask[:, :, -1:]
        q = heads(att.query(x))
        parts = []
    else:
        q = heads(att.query(x))
        ki, vi, qi = k[:, :, :n_img], v[:, :, :n_img], q[:, :, :n_img]
        count, rows = chunks  # static slices: a step's 0 image rows make each block empty
        img = [torch.matmul(torch.softmax(torch.matmul(qi[:, :, c * rows:(c + 1) * rows], ki.transpose(-1, -2))
                                          / scale, dim=-1), vi) for c in range(count)]
        parts = [torch.cat(img, dim=2) if count > 1 else img[0]]
        q = q[:, :, n_img:]
    scores = torch.cat([torch.matmul(q, past_k.transpose(-1, -2)), torch.matmul(q, text_k.transpose(-1, -2)),
                        torch.matmul(q, k.transpose(-1, -2))], dim=-1) / scale + text_mask
    probs = torch.softmax(scores, dim=-1)
    p, t = past_k.shape[2], text_k.shape[2]
    parts.append(torch.matmul(probs[..., :p], past_v) + torch.matmul(probs[..., p:p + t], text_v)
                 + torch.matmul(probs[..., p + t:], v))
    ctx = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
    return _finish(layer, x, ctx), torch.cat([text_k, k], dim=2), torch.cat([text_v, v], dim=2)


def _wrappers(model, n_prefix: int, tokens_per_frame: int):
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

    frames = n_prefix // tokens_per_frame
    chunks = (frames, tokens_per_frame)

    class Unified(nn.Module):
        """The prefill and the step in one graph, so that one session holds the decoder weights
        once, pre-packed for the CPU kernels (two sessions would hold them twice, or share one
        copy that cannot be pre-packed). Inputs: ``features`` (B, k, T, D) — the window's frames
        for the prefill, k = 0 for a step —, ``input_ids`` (B, L), the prefill's cache ``past_*``
        and the generated tokens' ``text_*`` (both empty for the prefill); outputs the last row's
        logits and ``present_*`` = ``text_*`` + the new rows' cache (for the prefill: the cache
        the steps read as ``past_*``). The same arithmetic as ``Prefill`` and ``Step``."""

        def __init__(self) -> None:
            super().__init__()
            self.git, self.output = git, model.output

        def forward(self, features, input_ids, *caches):
            n = len(self.git.encoder.layer)
            past, text = caches[:2 * n], caches[2 * n:]
            b, k, t, d = features.shape
            if temporal:
                temb = torch.cat([p.reshape(1, d) for p in self.git.img_temporal_embedding], 0)
                # unsqueezed, not reshaped to (1, k, 1, d): an ONNX Reshape reads a 0 in the
                # shape as "keep this dimension", which breaks the step's k = 0
                features = features + temb[:k].unsqueeze(0).unsqueeze(2)
            vis = self.git.visual_projection(features.reshape(b, k * t, d))
            n_img, n_txt = k * t, input_ids.shape[1]
            # cache columns before the new rows; text positions count from the first text token
            before = past[0].shape[2] + text[0].shape[2]
            emb = self.git.embeddings
            pos = (torch.arange(n_txt) + (before + n_img - n_prefix)).unsqueeze(0)
            x = torch.cat([vis, emb.LayerNorm(emb.word_embeddings(input_ids) + emb.position_embeddings(pos))], dim=1)
            row = torch.arange(n_txt).unsqueeze(1)
            col = torch.arange(before + n_img + n_txt).unsqueeze(0) - (before + n_img)
            mask = torch.where(col <= row, torch.zeros((), dtype=x.dtype),
                               torch.full((), torch.finfo(x.dtype).min, dtype=x.dtype)).reshape(1, 1, n_txt, -1)
            out = []
            for i, layer in enumerate(self.git.encoder.layer):
                x, kk, vv = _unified_layer(layer, x, n_img, past[2 * i], past[2 * i + 1], text[2 * i],
                                           text[2 * i + 1], mask, chunks=chunks, last=i == n - 1)
                out += [kk, vv]
            return (self.output(x[:, -1]), *out)

    class Vision(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = git.image_encoder

        def forward(self, pixel_values):
            return self.enc(pixel_values).last_hidden_state

    return Vision().eval(), Prefill().eval(), Step().eval(), Unified().eval()


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
    vision, prefill, step, unified = _wrappers(model, n_prefix, tokens_per_frame)
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
        # the unified graph, traced with every part present (frames, prefix cache, text cache)
        # so that none of them is fixed; positions stay within the model's table
        text = [f"text_{n}" for n in kv_names]
        short = tuple(torch.randn(2, heads, 3, head_dim) for _ in past)
        text_t = tuple(torch.randn(2, heads, 2, head_dim) for _ in text)
        torch.onnx.export(unified, (ff, ids, *short, *text_t), out / "decoder_unified.onnx",
                          input_names=["features", "input_ids", *past, *text], output_names=["logits", *present],
                          opset_version=opts.opset, dynamo=False,
                          dynamic_axes={"features": {0: "b", 1: "k"}, "input_ids": {0: "b", 1: "l"},
                                        "logits": {0: "b"}, **{n: {0: "b", 2: "p"} for n in past},
                                        **{n: {0: "b", 2: "t"} for n in text}, **{n: {0: "b", 2: "t1"} for n in present}})
    tok = copy_tokenizer(checkpoint, out)
    graphs = {"vision_encoder": "vision_encoder.onnx", "decoder_prefill": "decoder_prefill.onnx",
              "decoder_step": "decoder_step.onnx", "decoder_unified": "decoder_unified.onnx"}
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
