"""Export a local ``VisionEncoderDecoderModel`` checkpoint (GPT-2 decoder) to a streamcap engine.

Supported pairs: a ViT image encoder (ViT-GPT2 captioners; ``frame`` mode, one frame per window)
or a VideoMAE / TimeSformer video encoder (``clip`` mode, the encoder's ``num_frames`` per window),
with a GPT-2 decoder that has cross-attention. Three graphs (docs/engine-format.md):

- ``vision_encoder.onnx``: ``pixel_values`` → ``features`` = the encoder's ``last_hidden_state``,
  already passed through ``enc_to_dec_proj`` when the model has one (so ``D`` is the decoder's
  hidden size);
- ``decoder_prefill.onnx``: ``features`` + ``input_ids`` (B, L) → ``logits`` (B, V) of the last
  position, the self-attention cache ``present_key/value_{i}`` (B, H, L, hd) and the cross-attention
  keys/values ``cross_key/value_{i}`` (B, H, T, hd); in ``frame`` mode the K frames' tokens are
  concatenated (B, K·T, D) before cross-attention;
- ``decoder_step.onnx``: one token + the caches → ``logits`` and the grown cache; the token's
  position is the past length (``prefix_tokens`` is 0).

The decoder graphs do not trace through transformers' Cache objects: small wrappers call GPT-2's
own submodules (wte, wpe, ln_1, c_attn, crossattention, mlp, ln_f, lm_head) on plain tensors, with
GPT-2's attention maths (scaling by 1/√hd unless ``scale_attn_weights`` is off, and by
1/(layer+1) with ``scale_attn_by_inverse_layer_idx``).

Graphs are written in fp32; precision conversion is another step's job.
Needs torch + transformers (the ``export`` extra); never imported by the server.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from streamcap.export.base import (
    ExportError,
    ExportOptions,
    copy_tokenizer,
    read_preprocessing,
    write_manifest,
)

log = logging.getLogger(__name__)

ARCHITECTURE = "vision-encoder-decoder"
MODEL_TYPE = "VisionEncoderDecoderModel"
GRAPHS = {"vision_encoder": "vision_encoder.onnx", "decoder_prefill": "decoder_prefill.onnx",
          "decoder_step": "decoder_step.onnx"}

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

# encoder model_type → (encoder_mode, default mean, default std, default resize)
ENCODERS = {
    "vit": ("frame", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "stretch"),
    "videomae": ("clip", IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, "center_crop"),
    "timesformer": ("clip", IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, "center_crop"),
}
DECODERS = ("gpt2",)
ACTIVATIONS_OK = ("gelu_new", "gelu", "gelu_pytorch_tanh", "relu", "gelu_fast", "quick_gelu", "silu")


def _supported() -> str:
    return (f"encoders {', '.join(sorted(ENCODERS))} with decoder {', '.join(DECODERS)} "
            "(cross-attention)")


def check_config(cfg) -> tuple[str, str]:
    """Refuse what this exporter does not implement; return (encoder_type, decoder_type)."""
    if getattr(cfg, "model_type", None) != "vision-encoder-decoder":
        raise ExportError(f"not a vision-encoder-decoder config (model_type {cfg.model_type!r})")
    enc_type, dec_type = cfg.encoder.model_type, cfg.decoder.model_type
    if enc_type not in ENCODERS or dec_type not in DECODERS:
        raise ExportError(f"unsupported VisionEncoderDecoderModel: encoder {enc_type!r} + decoder "
                          f"{dec_type!r}; the VED exporter supports {_supported()}")
    dec = cfg.decoder
    if not getattr(dec, "add_cross_attention", False):
        raise ExportError("the GPT-2 decoder has no cross-attention layers (add_cross_attention is false)")
    if getattr(dec, "activation_function", "gelu_new") not in ACTIVATIONS_OK:
        raise ExportError(f"GPT-2 activation {dec.activation_function!r} is not supported "
                          f"(supported: {', '.join(ACTIVATIONS_OK)})")
    # reorder_and_upcast_attn only changes the order of fp32 operations (the graphs are fp32):
    # same maths, so it is accepted
    return enc_type, dec_type


def _special_ids(model) -> tuple[int, int, int]:
    """(decoder start, eos, pad) the way ``generate`` reads them: generation config first."""
    gen, cfg, dec = model.generation_config, model.config, model.config.decoder

    def first(*vals):
        for v in vals:
            if isinstance(v, (list, tuple)):
                v = v[0] if v else None
            if v is not None:
                return int(v)
        return None

    start = first(gen.decoder_start_token_id, getattr(cfg, "decoder_start_token_id", None),
                  gen.bos_token_id, getattr(dec, "bos_token_id", None))
    eos = first(gen.eos_token_id, getattr(cfg, "eos_token_id", None), getattr(dec, "eos_token_id", None))
    pad = first(gen.pad_token_id, getattr(cfg, "pad_token_id", None), getattr(dec, "pad_token_id", None), eos)
    if start is None:
        raise ExportError("the checkpoint sets no decoder_start_token_id (nor a bos_token_id): "
                          "set model.config.decoder_start_token_id and re-save it")
    if eos is None:
        raise ExportError("the checkpoint sets no eos_token_id")
    return start, eos, pad


def _wrappers(model, mode: str):
    import torch
    from torch import nn

    dec_cfg = model.config.decoder
    n_layers, n_heads = dec_cfg.n_layer, dec_cfg.n_head
    head_dim = dec_cfg.n_embd // n_heads

    def scaling(i: int) -> float:
        s = head_dim ** -0.5 if getattr(dec_cfg, "scale_attn_weights", True) else 1.0
        if getattr(dec_cfg, "scale_attn_by_inverse_layer_idx", False):
            s /= float(i + 1)
        return s

    def heads(x):  # (B, L, D) → (B, H, L, hd)
        return x.reshape(x.shape[0], x.shape[1], n_heads, head_dim).transpose(1, 2)

    def merge(x):  # (B, H, L, hd) → (B, L, D)
        x = x.transpose(1, 2)
        return x.reshape(x.shape[0], x.shape[1], n_heads * head_dim)

    def attend(q, k, v, scale: float, mask=None):
        w = torch.matmul(q, k.transpose(-1, -2)) * scale
        if mask is not None:
            w = w + mask
        return torch.matmul(torch.softmax(w, dim=-1), v)

    class VisionEncoder(nn.Module):
        def __init__(self, m) -> None:
            super().__init__()
            self.encoder = m.encoder
            self.proj = getattr(m, "enc_to_dec_proj", None)

        def forward(self, pixel_values):
            h = self.encoder(pixel_values=pixel_values).last_hidden_state
            return self.proj(h) if self.proj is not None else h

    class _Decoder(nn.Module):
        def __init__(self, m) -> None:
            super().__init__()
            self.tr = m.decoder.transformer
            self.lm_head = m.decoder.lm_head

        def layer(self, i, x, past_k, past_v, cross_k, cross_v, mask):
            blk = self.tr.h[i]
            q, k, v = blk.attn.c_attn(blk.ln_1(x)).split(dec_cfg.n_embd, dim=2)
            q, k, v = heads(q), heads(k), heads(v)
            if past_k is not None:
                k = torch.cat([past_k, k], dim=2)
                v = torch.cat([past_v, v], dim=2)
            x = x + blk.attn.c_proj(merge(attend(q, k, v, scaling(i), mask)))
            cq = heads(blk.crossattention.q_attn(blk.ln_cross_attn(x)))
            x = x + blk.crossattention.c_proj(merge(attend(cq, cross_k, cross_v, scaling(i))))
            x = x + blk.mlp(blk.ln_2(x))
            return x, k, v

        def cross_kv(self, i, enc):
            k, v = self.tr.h[i].crossattention.c_attn(enc).split(dec_cfg.n_embd, dim=2)
            return heads(k), heads(v)

        def head(self, x):
            return self.lm_head(self.tr.ln_f(x[:, -1]))

    class DecoderPrefill(_Decoder):
        def forward(self, features, input_ids):
            enc = features.flatten(1, 2) if mode == "frame" else features
            seq = input_ids.shape[1]
            pos = torch.arange(seq, dtype=torch.long, device=input_ids.device)
            x = self.tr.wte(input_ids) + self.tr.wpe(pos).unsqueeze(0)
            future = pos.unsqueeze(0) > pos.unsqueeze(1)  # (L, L): True above the diagonal
            mask = torch.where(future, torch.tensor(torch.finfo(x.dtype).min, dtype=x.dtype),
                               torch.tensor(0.0, dtype=x.dtype))
            presents, crosses = [], []
            for i in range(n_layers):
                ck, cv = self.cross_kv(i, enc)
                x, k, v = self.layer(i, x, None, None, ck, cv, mask)
                presents += [k, v]
                crosses += [ck, cv]
            return (self.head(x), *presents, *crosses)

    class DecoderStep(_Decoder):
        def forward(self, input_ids, *cache):
            past, cross = cache[: 2 * n_layers], cache[2 * n_layers:]
            past_len = past[0].shape[2]  # − prefix_tokens (0): the new token's position
            pos = torch.arange(input_ids.shape[1], dtype=torch.long, device=input_ids.device) + past_len
            x = self.tr.wte(input_ids) + self.tr.wpe(pos).unsqueeze(0)
            presents = []
            for i in range(n_layers):
                x, k, v = self.layer(i, x, past[2 * i], past[2 * i + 1], cross[2 * i], cross[2 * i + 1], None)
                presents += [k, v]
            return (self.head(x), *presents)

    return VisionEncoder(model).eval(), DecoderPrefill(model).eval(), DecoderStep(model).eval()


def export(checkpoint: Path, out: Path, opts: ExportOptions) -> Path:
    """Export ``checkpoint`` (a ``save_pretrained`` folder with ``tokenizer.json``) into ``out``."""
    import torch
    from transformers import VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    checkpoint, out = Path(checkpoint), Path(out)
    cfg_path = checkpoint / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{checkpoint} has no config.json")
    model_type = json.loads(cfg_path.read_text()).get("model_type")
    if model_type != "vision-encoder-decoder":
        raise ExportError(f"{checkpoint} is a {model_type!r} checkpoint, not vision-encoder-decoder")
    enc_type, dec_type = check_config(VisionEncoderDecoderConfig.from_pretrained(checkpoint))
    model = VisionEncoderDecoderModel.from_pretrained(checkpoint).eval()
    cfg = model.config
    enc_cfg, dec_cfg = cfg.encoder, cfg.decoder
    if enc_cfg.hidden_size != dec_cfg.n_embd and getattr(model, "enc_to_dec_proj", None) is None:
        raise ExportError(f"encoder width {enc_cfg.hidden_size} differs from the decoder's {dec_cfg.n_embd} "
                          "and the model has no enc_to_dec_proj")
    mode, mean, std, resize = ENCODERS[enc_type]
    size = int(enc_cfg.image_size)
    if mode == "frame":
        frames = 1
        if opts.frames not in (None, 1):
            raise ExportError(f"a {enc_type} image encoder captions one frame per window; "
                              f"--frames {opts.frames} is not supported")
    else:
        frames = int(enc_cfg.num_frames)
        if opts.frames not in (None, frames):
            raise ExportError(f"the {enc_type} encoder was built for {frames} frames per clip "
                              f"(its position embeddings are fixed); --frames {opts.frames} is not supported")
    start, eos, pad = _special_ids(model)
    pre = read_preprocessing(checkpoint, size=size, default_mean=mean, default_std=std, default_resize=resize)
    if pre.image_size != size:
        raise ExportError(f"preprocessing size {pre.image_size} differs from the encoder's {size}")

    n_layers, n_heads = dec_cfg.n_layer, dec_cfg.n_head
    head_dim = dec_cfg.n_embd // n_heads
    out.mkdir(parents=True, exist_ok=True)
    vision, prefill, step = _wrappers(model, mode)

    b, seq, past_len = 2, 3, 4
    px = torch.randn(b, 3, size, size) if mode == "frame" else torch.randn(b, frames, 3, size, size)
    with torch.no_grad():
        feats = vision(px)
    t_enc = feats.shape[1]
    if mode == "frame":
        feats = feats.reshape(b, 1, t_enc, -1)
    ids = torch.full((b, seq), start, dtype=torch.long)
    past = [torch.randn(b, n_heads, past_len, head_dim) for _ in range(2 * n_layers)]
    cross = [torch.randn(b, n_heads, t_enc, head_dim) for _ in range(2 * n_layers)]
    step_ids = torch.full((b, 1), start, dtype=torch.long)

    kv_names = [f"{kind}_{i}" for i in range(n_layers) for kind in ("key", "value")]
    present = [f"present_{n}" for n in kv_names]
    past_names = [f"past_{n}" for n in kv_names]
    cross_names = [f"cross_{n}" for n in kv_names]
    bt = {0: "batch"}
    feat_axes = {0: "batch", 1: "frames", 2: "enc_tokens"} if mode == "frame" else {0: "batch", 1: "enc_tokens"}
    opset = int(opts.opset)

    def _onnx(module, args, name, inputs, outputs, axes):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings on shape arithmetic: shapes stay dynamic
            torch.onnx.export(module, args, out / name, input_names=inputs, output_names=outputs,
                              opset_version=opset, dynamo=False, dynamic_axes=axes)

    with torch.no_grad():
        _onnx(vision, (px,), GRAPHS["vision_encoder"], ["pixel_values"], ["features"],
              {"pixel_values": {0: "n" if mode == "frame" else "batch"},
               "features": {0: "n" if mode == "frame" else "batch"}})
        _onnx(prefill, (feats, ids), GRAPHS["decoder_prefill"], ["features", "input_ids"],
              ["logits", *present, *cross_names],
              {"features": feat_axes, "input_ids": {0: "batch", 1: "seq"}, "logits": bt,
               **{n: {0: "batch", 2: "seq"} for n in present},
               **{n: {0: "batch", 2: "enc_tokens"} for n in cross_names}})
        _onnx(step, (step_ids, *past, *cross), GRAPHS["decoder_step"], ["input_ids", *past_names, *cross_names],
              ["logits", *present],
              {"input_ids": bt, "logits": bt,
               **{n: {0: "batch", 2: "past"} for n in past_names},
               **{n: {0: "batch", 2: "enc_tokens"} for n in cross_names},
               **{n: {0: "batch", 2: "total"} for n in present}})

    tokenizer = copy_tokenizer(checkpoint, out)
    fields = {
        "name": opts.name or out.name,
        "architecture": ARCHITECTURE,
        "model_type": MODEL_TYPE,
        "encoder_type": enc_type,
        "decoder_type": dec_type,
        "precision": "fp32",
        "opset": opset,
        "frames_per_window": frames,
        "encoder_mode": mode,
        "window_s": opts.window_s,
        "preprocessing": pre.to_dict(),
        "tokenizer": tokenizer,
        "bos_token_id": start,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "max_new_tokens": opts.max_new_tokens,
        "decoder": {"num_layers": n_layers, "num_heads": n_heads, "head_dim": head_dim,
                    "cross_attention": True, "prefix_tokens": 0, "vocab_size": int(dec_cfg.vocab_size),
                    "max_positions": int(dec_cfg.n_positions)},
        "graphs": dict(GRAPHS),
    }
    log.info("exported %s (%s + %s, %s mode) to %s", checkpoint, enc_type, dec_type, mode, out)
    return write_manifest(out, fields, [*GRAPHS.values(), tokenizer])
