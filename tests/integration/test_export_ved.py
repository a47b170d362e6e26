"""VisionEncoderDecoderModel (ViT / VideoMAE / TimeSformer + GPT-2) → streamcap engine folder.

Tiny random-weight checkpoints (tests/helpers/tiny_ved.py) are exported once per module; the
engine's three graphs, run with onnxruntime in a small greedy loop (prefill, then one step per
token with the KV cache), must give the very tokens and logits of ``model.generate``. Frames go
through the Hugging Face image processor on the PyTorch side and through streamcap's own
preprocessing (as the manifest describes it) on the ONNX side.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from streamcap.engine.manifest import MANIFEST_NAME, file_sha256
from streamcap.engine.preprocess import Preprocessing, preprocess_frames
from streamcap.export import ved
from streamcap.export.base import OPSET, ExportError, ExportOptions
from tests.helpers import tiny_ved

pytestmark = pytest.mark.integration

LOGIT_TOL = 1e-4
NEW_TOKENS = 8
BATCH = 2


@dataclass
class Engine:
    case: str
    checkpoint: Path
    folder: Path
    manifest: dict
    model: object
    processor: object
    sessions: dict


def _save(case: str, folder: Path) -> Path:
    if case == "vit":
        return tiny_ved.save_tiny_vit_gpt2(folder)
    if case == "vit-layer-scaled":  # GPT-2's scale_attn_by_inverse_layer_idx (and upcast flag) on
        model, tok = tiny_ved.build_vit_gpt2(decoder_overrides={"scale_attn_by_inverse_layer_idx": True,
                                                                "reorder_and_upcast_attn": True})
        return tiny_ved.save_checkpoint(model, tok, tiny_ved.vit_processor(), folder)
    if case == "videomae":
        return tiny_ved.save_tiny_videomae_gpt2(folder, num_frames=4, tubelet_size=2)
    if case == "timesformer":
        return tiny_ved.save_tiny_timesformer_gpt2(folder, num_frames=2)
    raise AssertionError(case)


def _processor(case: str, checkpoint: Path):
    from transformers import VideoMAEImageProcessorPil, ViTImageProcessorPil

    cls = ViTImageProcessorPil if case.startswith("vit") else VideoMAEImageProcessorPil
    return cls.from_pretrained(checkpoint)


@pytest.fixture(scope="module", params=["vit", "vit-layer-scaled", "videomae", "timesformer"])
def engine(request, tmp_path_factory) -> Engine:
    from transformers import VisionEncoderDecoderModel

    case = request.param
    root = tmp_path_factory.mktemp(f"ved-{case}")
    checkpoint = _save(case, root / "checkpoint")
    folder = ved.export(checkpoint, root / f"engine-{case}", ExportOptions(window_s=3.0, max_new_tokens=12))
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    sessions = {k: ort.InferenceSession(str(folder / v), providers=["CPUExecutionProvider"])
                for k, v in manifest["graphs"].items()}
    model = VisionEncoderDecoderModel.from_pretrained(checkpoint).eval()
    return Engine(case, checkpoint, folder, manifest, model, _processor(case, checkpoint), sessions)


def _frames(e: Engine, seed: int) -> np.ndarray:
    """(B, K, S, S, 3) random RGB uint8 frames at the model's input size."""
    s, k = e.manifest["preprocessing"]["image_size"], e.manifest["frames_per_window"]
    return np.random.default_rng(seed).integers(0, 256, (BATCH, k, s, s, 3), dtype=np.uint8)


def _hf_pixels(e: Engine, frames: np.ndarray) -> torch.Tensor:
    if e.manifest["encoder_mode"] == "frame":  # one image per row: the window's (only) frame
        return e.processor([f[-1] for f in frames], return_tensors="pt")["pixel_values"]
    return e.processor([list(clip) for clip in frames], return_tensors="pt")["pixel_values"]


def _onnx_features(e: Engine, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """streamcap preprocessing + the vision graph → (pixel_values, prefill features)."""
    b, k = frames.shape[:2]
    pre = Preprocessing.from_dict(e.manifest["preprocessing"])
    px = preprocess_frames(list(frames.reshape(b * k, *frames.shape[2:])), pre)
    if e.manifest["encoder_mode"] == "frame":
        feats = e.sessions["vision_encoder"].run(["features"], {"pixel_values": px})[0]
        return px.reshape(b, k, *px.shape[1:]), feats.reshape(b, k, *feats.shape[1:])
    px = px.reshape(b, k, *px.shape[1:])
    return px, e.sessions["vision_encoder"].run(["features"], {"pixel_values": px})[0]


def _onnx_greedy(e: Engine, features: np.ndarray, prompt: np.ndarray, max_new: int):
    """The runtime's loop in miniature: prefill once, then one step per token with the cache."""
    m, n = e.manifest, e.manifest["decoder"]["num_layers"]
    out = dict(zip([o.name for o in e.sessions["decoder_prefill"].get_outputs()],
                   e.sessions["decoder_prefill"].run(None, {"features": features, "input_ids": prompt})))
    cache = {f"past_{kind}_{i}": out[f"present_{kind}_{i}"] for i in range(n) for kind in ("key", "value")}
    cross = {f"cross_{kind}_{i}": out[f"cross_{kind}_{i}"] for i in range(n) for kind in ("key", "value")}
    logits, tokens, steps = out["logits"], [], []
    done = np.zeros(len(prompt), bool)
    for t in range(max_new):
        assert cache["past_key_0"].shape[2] == prompt.shape[1] + t
        steps.append(logits)
        tok = np.where(done, m["pad_token_id"], logits.argmax(-1))
        tokens.append(tok)
        done |= tok == m["eos_token_id"]
        if done.all() or t == max_new - 1:
            break
        res = e.sessions["decoder_step"].run(None, {"input_ids": tok[:, None].astype(np.int64), **cache, **cross})
        names = [o.name for o in e.sessions["decoder_step"].get_outputs()]
        res = dict(zip(names, res))
        logits = res["logits"]
        cache = {f"past_{kind}_{i}": res[f"present_{kind}_{i}"] for i in range(n) for kind in ("key", "value")}
    return np.stack(tokens, 1), steps


def _check_parity(e: Engine, frames: np.ndarray, prompt_len: int = 1) -> np.ndarray:
    """Greedy tokens and per-step logits of the ONNX loop == generate(); returns the tokens."""
    hf_px = _hf_pixels(e, frames)
    px, feats = _onnx_features(e, frames)
    # both preprocessing paths give the same pixels (the frames are already at the input size)
    np.testing.assert_allclose(px.reshape(hf_px.shape), hf_px.numpy(), atol=1e-5)
    bos = e.manifest["bos_token_id"]
    prompt = np.full((BATCH, prompt_len), bos, np.int64)
    if prompt_len > 1:  # a text prompt after the start token: words of the tokenizer
        prompt[:, 1:] = np.arange(5, 5 + prompt_len - 1)
    kwargs = {} if prompt_len == 1 else {"decoder_input_ids": torch.from_numpy(prompt)}
    with torch.no_grad():
        ref = e.model.generate(pixel_values=hf_px, max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1,
                               output_logits=True, return_dict_in_generate=True, **kwargs)
    ref_tokens = ref.sequences[:, prompt_len:].numpy()
    assert ref.sequences[:, 0].tolist() == [bos] * BATCH
    tokens, steps = _onnx_greedy(e, feats, prompt, NEW_TOKENS)
    assert tokens.tolist() == ref_tokens.tolist()
    assert len(steps) == len(ref.logits)
    worst = max(float(np.abs(o - r.numpy()).max()) for o, r in zip(steps, ref.logits, strict=True))
    assert worst <= LOGIT_TOL, f"{e.case}: max |Δlogit| {worst:.2e}"
    print(f"{e.case} prompt_len={prompt_len}: tokens {tokens.tolist()} max |Δlogit| {worst:.2e}")
    return tokens


def test_greedy_parity_with_generate(engine: Engine) -> None:
    tokens = _check_parity(engine, _frames(engine, seed=7))
    # the comparison is meaningful: several steps ran, not an immediate EOS
    assert (tokens != engine.manifest["eos_token_id"]).sum(1).max() >= 3


def test_greedy_parity_with_text_prompt(engine: Engine) -> None:
    """A prompt after the start token (L = 3): exercises the prefill's causal mask and positions."""
    _check_parity(engine, _frames(engine, seed=21), prompt_len=3)


def test_features_are_projected_and_shaped(engine: Engine) -> None:
    m, model = engine.manifest, engine.model
    px, feats = _onnx_features(engine, _frames(engine, seed=3))
    with torch.no_grad():
        hf = model.encoder(pixel_values=torch.from_numpy(px.reshape(-1, *px.shape[2:]) if m["encoder_mode"]
                                                         == "frame" else px)).last_hidden_state
        if hasattr(model, "enc_to_dec_proj"):
            hf = model.enc_to_dec_proj(hf)
    d = m["decoder"]
    assert feats.shape[-1] == d["num_heads"] * d["head_dim"] == model.config.decoder.n_embd
    np.testing.assert_allclose(feats.reshape(hf.shape), hf.numpy(), atol=1e-5)
    if engine.case == "vit":
        assert hasattr(model, "enc_to_dec_proj")  # the ViT case covers the projection (48 → 32)


def test_manifest_fields(engine: Engine) -> None:
    m, cfg = engine.manifest, engine.model.config
    video = engine.case in ("videomae", "timesformer")
    assert m["format"] == "streamcap-engine" and m["format_version"] == 2
    assert m["name"] == engine.folder.name
    assert m["architecture"] == "vision-encoder-decoder"
    assert m["model_type"] == "VisionEncoderDecoderModel"
    assert m["encoder_type"] == cfg.encoder.model_type == {"vit": "vit", "vit-layer-scaled": "vit"}.get(
        engine.case, engine.case)
    assert m["decoder_type"] == "gpt2"
    assert m["runtime"] == "onnxruntime" and m["precision"] == "fp32" and m["opset"] == OPSET
    assert m["encoder_mode"] == ("clip" if video else "frame")
    assert m["frames_per_window"] == (cfg.encoder.num_frames if video else 1)
    assert m["window_s"] == 3.0 and m["max_new_tokens"] == 12
    size = cfg.encoder.image_size
    if video:
        assert m["preprocessing"] == {"image_size": size, "mean": tiny_ved.IMAGENET_DEFAULT_MEAN,
                                      "std": tiny_ved.IMAGENET_DEFAULT_STD, "resize": "center_crop"}
    else:
        assert m["preprocessing"] == {"image_size": size, "mean": [0.5] * 3, "std": [0.5] * 3,
                                      "resize": "stretch"}
    assert m["tokenizer"] == "tokenizer.json"
    assert m["bos_token_id"] == cfg.decoder_start_token_id
    assert m["eos_token_id"] == cfg.eos_token_id and m["pad_token_id"] == cfg.pad_token_id
    dec = cfg.decoder
    assert m["decoder"] == {"num_layers": dec.n_layer, "num_heads": dec.n_head, "head_dim": dec.n_embd // dec.n_head,
                            "cross_attention": True, "prefix_tokens": 0, "vocab_size": dec.vocab_size,
                            "max_positions": dec.n_positions}
    assert m["graphs"] == {"vision_encoder": "vision_encoder.onnx", "decoder_prefill": "decoder_prefill.onnx",
                           "decoder_step": "decoder_step.onnx"}
    assert sorted(m["files"]) == sorted([*m["graphs"].values(), "tokenizer.json"])
    for name, digest in m["files"].items():
        assert file_sha256(engine.folder / name) == digest
    assert (engine.folder / "tokenizer.json").read_bytes() == (engine.checkpoint / "tokenizer.json").read_bytes()


def test_graph_signatures(engine: Engine) -> None:
    m = engine.manifest
    n = m["decoder"]["num_layers"]
    kv = [f"{kind}_{i}" for i in range(n) for kind in ("key", "value")]
    io = {k: ([i.name for i in s.get_inputs()], [o.name for o in s.get_outputs()])
          for k, s in engine.sessions.items()}
    assert io["vision_encoder"] == (["pixel_values"], ["features"])
    # the runtime zips outputs by position: logits, then the self cache, then the cross cache,
    # each as key_0, value_0, key_1, value_1, ...
    assert io["decoder_prefill"] == (["features", "input_ids"],
                                     ["logits", *(f"present_{x}" for x in kv), *(f"cross_{x}" for x in kv)])
    assert io["decoder_step"] == (["input_ids", *(f"past_{x}" for x in kv), *(f"cross_{x}" for x in kv)],
                                  ["logits", *(f"present_{x}" for x in kv)])
    # batch, prompt and past lengths are dynamic: batch 3, prompt 4, then one step
    b, L = 3, 4
    s, k = m["preprocessing"]["image_size"], m["frames_per_window"]
    frames = np.random.default_rng(5).integers(0, 256, (b, k, s, s, 3), dtype=np.uint8)
    _, feats = _onnx_features(engine, frames)
    ids = np.full((b, L), m["bos_token_id"], np.int64)
    pre = dict(zip(io["decoder_prefill"][1], engine.sessions["decoder_prefill"].run(
        None, {"features": feats, "input_ids": ids})))
    d = m["decoder"]
    t_enc = feats.shape[1] * (feats.shape[2] if m["encoder_mode"] == "frame" else 1)
    assert pre["logits"].shape == (b, d["vocab_size"])
    assert pre["present_key_0"].shape == (b, d["num_heads"], L, d["head_dim"])
    assert pre["cross_value_1"].shape == (b, d["num_heads"], t_enc, d["head_dim"])
    feeds = {"input_ids": ids[:, :1], **{f"past_{x}": pre[f"present_{x}"] for x in kv},
             **{f"cross_{x}": pre[f"cross_{x}"] for x in kv}}
    step = dict(zip(io["decoder_step"][1], engine.sessions["decoder_step"].run(None, feeds)))
    assert step["logits"].shape == (b, d["vocab_size"])
    assert step["present_value_1"].shape == (b, d["num_heads"], L + 1, d["head_dim"])


def _save_config(folder: Path, encoder_cfg, decoder_cfg) -> Path:
    from transformers import VisionEncoderDecoderConfig

    folder.mkdir(parents=True, exist_ok=True)
    VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder_cfg, decoder_cfg).save_pretrained(folder)
    return folder


def test_unsupported_decoder_is_refused(tmp_path: Path) -> None:
    from transformers import BertConfig, ViTConfig

    ck = _save_config(tmp_path / "ck", ViTConfig(image_size=32, patch_size=16, hidden_size=32,
                                                 num_hidden_layers=1, num_attention_heads=2,
                                                 intermediate_size=64),
                      BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64))
    with pytest.raises(ExportError) as ei:
        ved.export(ck, tmp_path / "out", ExportOptions())
    msg = str(ei.value)
    assert "'bert'" in msg and "gpt2" in msg and "vit" in msg and "videomae" in msg
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


def test_unsupported_encoder_is_refused(tmp_path: Path) -> None:
    from transformers import GPT2Config, SwinConfig

    ck = _save_config(tmp_path / "ck", SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1],
                                                  num_heads=[2]),
                      GPT2Config(vocab_size=50, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(ExportError, match=r"encoder 'swin'.*supports encoders timesformer, videomae, vit"):
        ved.export(ck, tmp_path / "out", ExportOptions())


def test_other_architecture_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "git"}))
    with pytest.raises(ExportError, match="not vision-encoder-decoder"):
        ved.export(tmp_path, tmp_path / "out", ExportOptions())


def test_frames_option_must_match_the_encoder(engine: Engine, tmp_path: Path) -> None:
    wrong = engine.manifest["frames_per_window"] + 1
    with pytest.raises(ExportError, match=f"--frames {wrong} is not supported"):
        ved.export(engine.checkpoint, tmp_path / "out", ExportOptions(frames=wrong))


@pytest.mark.parametrize("kw", [{}, {"num_beams": 3}], ids=["greedy", "beam3"])
def test_engine_captions_match_generate(engine: Engine, kw) -> None:
    """The shipped runtime (streamcap.load_engine), not the loop above, gives generate()'s text."""
    import streamcap

    eng = streamcap.load_engine(engine.folder)
    frames = _frames(engine, seed=11)
    ours = [r.text for r in eng.caption_batch([list(w) for w in frames], max_new_tokens=NEW_TOKENS, **kw)]
    with torch.no_grad():
        seqs = engine.model.generate(pixel_values=_hf_pixels(engine, frames), max_new_tokens=NEW_TOKENS,
                                     do_sample=False, **kw)
    assert ours == [t.strip() for t in eng._tok.decode_batch(seqs.tolist(), skip_special_tokens=True)]
