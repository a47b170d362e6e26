"""Export a local ``GitForCausalLM`` checkpoint to a streamcap engine folder.

Two ONNX graphs, split where GIT itself is split so that frames can be cached:

- ``vision_encoder.onnx``: ``pixel_values`` (N, 3, S, S) → ``frame_features`` (N, T, Dv) — each
  frame on its own, as GIT encodes them;
- ``text_decoder.onnx``: ``frame_features`` (B, K, T, Dv) + ``input_ids`` (B, L) → ``logits``
  (B, L, V) — adds the per-frame temporal embedding, projects, and runs the causal decoder over
  [image tokens, text tokens].

Needs torch + transformers (the ``export`` extra); never imported by the server.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from streamcap.engine.manifest import MANIFEST_NAME, file_sha256
from streamcap.engine.preprocess import Preprocessing

OPSET = 17


def _decoder_wrapper(model):
    import torch
    from torch import nn

    class GitTextDecoder(nn.Module):
        def __init__(self, m) -> None:
            super().__init__()
            self.git = m.git
            self.output = m.output
            self.temporal = m.config.num_image_with_embedding is not None

        def forward(self, frame_features: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
            b, k, t, d = frame_features.shape
            if self.temporal:
                temb = torch.cat([p.reshape(1, d) for p in self.git.img_temporal_embedding], 0)
                frame_features = frame_features + temb[:k].reshape(1, k, 1, d)
            vis = self.git.visual_projection(frame_features.reshape(b, k * t, d))
            text = self.git.embeddings(input_ids=input_ids)
            x = torch.cat([vis, text], dim=1)
            n_img = k * t
            n_txt = input_ids.shape[1]
            n = n_img + n_txt
            neg = torch.finfo(x.dtype).min
            row = torch.arange(n).unsqueeze(1)
            col = torch.arange(n).unsqueeze(0)
            # image rows see image columns only; text rows see every image column and earlier text
            allowed = (col < n_img) | ((row >= n_img) & (col <= row))
            mask = torch.where(allowed, torch.zeros((), dtype=x.dtype), torch.full((), neg, dtype=x.dtype))
            hidden = self.git.encoder(x, attention_mask=mask.reshape(1, 1, n, n)).last_hidden_state
            return self.output(hidden[:, n_img:])

    return GitTextDecoder(model).eval()


def _vision_wrapper(model):
    from torch import nn

    class GitVisionEncoder(nn.Module):
        def __init__(self, m) -> None:
            super().__init__()
            self.enc = m.git.image_encoder

        def forward(self, pixel_values):
            return self.enc(pixel_values).last_hidden_state

    return GitVisionEncoder(model).eval()


def export_git(
    checkpoint: Path,
    out: Path,
    *,
    preprocessing: Preprocessing | None = None,
    window_s: float = 2.0,
    max_new_tokens: int = 20,
    name: str | None = None,
    extra: dict | None = None,
) -> Path:
    """Export ``checkpoint`` (a ``save_pretrained`` folder with tokenizer files) into ``out``."""
    import torch
    from transformers import GitForCausalLM

    checkpoint, out = Path(checkpoint), Path(out)
    model = GitForCausalLM.from_pretrained(checkpoint).eval()
    cfg = model.config
    vcfg = cfg.vision_config
    frames = cfg.num_image_with_embedding or 1
    size = vcfg.image_size
    tokens_per_frame = (size // vcfg.patch_size) ** 2 + 1
    pre = preprocessing or Preprocessing(size)
    out.mkdir(parents=True, exist_ok=True)

    vision = _vision_wrapper(model)
    decoder = _decoder_wrapper(model)
    px = torch.randn(2, 3, size, size)
    ff = torch.randn(2, frames, tokens_per_frame, vcfg.hidden_size)
    ids = torch.full((2, 3), cfg.bos_token_id, dtype=torch.long)
    with torch.no_grad():
        torch.onnx.export(vision, (px,), out / "vision_encoder.onnx", input_names=["pixel_values"],
                          output_names=["frame_features"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"pixel_values": {0: "n"}, "frame_features": {0: "n"}})
        torch.onnx.export(decoder, (ff, ids), out / "text_decoder.onnx",
                          input_names=["frame_features", "input_ids"], output_names=["logits"],
                          opset_version=OPSET, dynamo=False,
                          dynamic_axes={"frame_features": {0: "b"}, "input_ids": {0: "b", 1: "l"},
                                        "logits": {0: "b", 1: "l"}})
    tok_src = checkpoint / "tokenizer.json"
    if not tok_src.exists():
        raise FileNotFoundError(f"{checkpoint} has no tokenizer.json (save the fast tokenizer beside the model)")
    shutil.copy(tok_src, out / "tokenizer.json")
    files = ["vision_encoder.onnx", "text_decoder.onnx", "tokenizer.json"]
    manifest = {
        "format": "streamcap-engine",
        "format_version": 1,
        "name": name or out.name,
        "architecture": "git",
        "model_type": "GitForCausalLM",
        "runtime": "onnxruntime",
        "precision": "fp32",
        "opset": OPSET,
        "frames_per_window": frames,
        "window_s": window_s,
        "image_tokens_per_frame": tokens_per_frame,
        "vision_hidden_size": vcfg.hidden_size,
        "preprocessing": pre.to_dict(),
        "tokenizer": "tokenizer.json",
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "max_new_tokens": max_new_tokens,
        "graphs": {"vision_encoder": "vision_encoder.onnx", "text_decoder": "text_decoder.onnx"},
        "files": {f: file_sha256(out / f) for f in files},
    }
    if extra:
        manifest.update(extra)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return out
