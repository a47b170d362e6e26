"""BLIP → streamcap engine (format 2): the ONNX graphs with their KV cache reproduce
``BlipForConditionalGeneration.generate`` (greedy tokens and per-step logits), starting from the
same uint8 frames through each side's own preprocessing (HF's image processor vs streamcap's)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from streamcap.engine.manifest import MANIFEST_NAME, file_sha256
from streamcap.engine.preprocess import Preprocessing, preprocess_frames
from streamcap.export.base import OPSET, ExportError, ExportOptions
from streamcap.export.blip import export
from tests.helpers import tiny_blip

pytestmark = pytest.mark.integration

MAX_NEW = 10
LOGIT_TOL = 1e-4
PROMPT = "a picture of"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_blip.save_tiny_blip(tmp_path_factory.mktemp("tiny-blip"))


@pytest.fixture(scope="module")
def engine(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("engines") / "blip-tiny"
    opts = ExportOptions(window_s=3.0, max_new_tokens=MAX_NEW)
    assert export(checkpoint, out, opts) == out
    return out


@pytest.fixture(scope="module")
def manifest(engine) -> dict:
    return json.loads((engine / MANIFEST_NAME).read_text())


@pytest.fixture(scope="module")
def model(checkpoint):
    from transformers import BlipForConditionalGeneration

    return BlipForConditionalGeneration.from_pretrained(checkpoint).eval()


@pytest.fixture(scope="module")
def sessions(engine, manifest):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return {k: ort.InferenceSession(str(engine / f), so, providers=["CPUExecutionProvider"])
            for k, f in manifest["graphs"].items()}


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(tiny_blip.FRAME_SEED)
    s = tiny_blip.IMAGE_SIZE
    return [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for _ in range(2)]


def onnx_greedy(sessions, manifest, pixel_values: np.ndarray, start_ids: np.ndarray, max_new: int):
    """Greedy decoding with the engine's graphs, finished rows padded the way HF's generate does."""
    dec = manifest["decoder"]
    n, eos, pad = dec["num_layers"], manifest["eos_token_id"], manifest["pad_token_id"]
    (features,) = sessions["vision_encoder"].run(["features"], {"pixel_values": pixel_values})
    b = features.shape[0]
    outs = sessions["decoder_prefill"].run(None, {"features": features[:, None], "input_ids": start_ids})
    names = [o.name for o in sessions["decoder_prefill"].get_outputs()]
    got = dict(zip(names, outs))
    # shapes promised by docs/engine-format.md
    assert got["logits"].shape == (b, dec["vocab_size"])
    for i in range(n):
        for kv in ("key", "value"):
            assert got[f"present_{kv}_{i}"].shape == (b, dec["num_heads"], start_ids.shape[1], dec["head_dim"])
            assert got[f"cross_{kv}_{i}"].shape == (b, dec["num_heads"], features.shape[1], dec["head_dim"])
    cache = {f"past_{kv}_{i}": got[f"present_{kv}_{i}"] for i in range(n) for kv in ("key", "value")}
    cross = {f"cross_{kv}_{i}": got[f"cross_{kv}_{i}"] for i in range(n) for kv in ("key", "value")}
    logits, tokens, step_logits = got["logits"], [], []
    done = np.zeros(b, bool)
    for step in range(max_new):
        step_logits.append(logits)
        nxt = np.where(done, pad, logits.argmax(-1)).astype(np.int64)
        tokens.append(nxt)
        done |= nxt == eos
        if done.all() or step == max_new - 1:
            break
        past_len = cache["past_key_0"].shape[2]
        outs = sessions["decoder_step"].run(None, {"input_ids": nxt[:, None], **cache, **cross})
        got = dict(zip([o.name for o in sessions["decoder_step"].get_outputs()], outs))
        assert got["present_key_0"].shape[2] == past_len + 1
        logits = got["logits"]
        cache = {f"past_{kv}_{i}": got[f"present_{kv}_{i}"] for i in range(n) for kv in ("key", "value")}
    return np.stack(tokens, 1), np.stack(step_logits, 1)


@pytest.mark.parametrize("prompt", [None, PROMPT], ids=["no-prompt", "prompt"])
def test_greedy_parity_with_generate(checkpoint, model, manifest, sessions, frames, prompt):
    import torch
    from transformers import BlipImageProcessor, PreTrainedTokenizerFast

    # both sides start from the same uint8 frames, each with its own preprocessing
    hf_px = BlipImageProcessor.from_pretrained(checkpoint)(images=frames, return_tensors="pt").pixel_values
    sc_px = preprocess_frames(frames, Preprocessing.from_dict(manifest["preprocessing"]))
    assert sc_px.shape == tuple(hf_px.shape) == (2, 3, tiny_blip.IMAGE_SIZE, tiny_blip.IMAGE_SIZE)
    np.testing.assert_allclose(sc_px, hf_px.numpy(), atol=1e-5)

    # what BLIP's generate feeds its decoder first: [DEC] (+ the prompt without [CLS]/[SEP])
    bos = manifest["bos_token_id"]
    if prompt is None:
        hf_ids = None
        start = np.full((2, 1), bos, np.int64)
    else:
        tok = PreTrainedTokenizerFast.from_pretrained(checkpoint)
        enc = tok([prompt] * 2, return_tensors="pt").input_ids  # [CLS] a picture of [SEP]
        assert enc[0, 0].item() == tok.cls_token_id and enc[0, -1].item() == tok.sep_token_id
        hf_ids = enc.clone()
        start = np.concatenate([np.full((2, 1), bos, np.int64), enc[:, 1:-1].numpy()], 1)
        assert start.shape == (2, 4)

    with torch.no_grad():
        ref = model.generate(pixel_values=hf_px, input_ids=hf_ids, max_new_tokens=MAX_NEW, do_sample=False,
                             num_beams=1, output_logits=True, return_dict_in_generate=True)
    ref_seq = ref.sequences.numpy()
    np.testing.assert_array_equal(ref_seq[:, : start.shape[1]], start)  # same start ids as generate
    ref_new = ref_seq[:, start.shape[1]:]
    ref_logits = torch.stack(ref.logits, 1).numpy()

    tokens, logits = onnx_greedy(sessions, manifest, sc_px, start, MAX_NEW)
    np.testing.assert_array_equal(tokens, ref_new)
    assert logits.shape == ref_logits.shape
    delta = float(np.abs(logits - ref_logits).max())
    print(f"max |dlogit| ({'prompt' if prompt else 'no prompt'}): {delta:.2e}")
    assert delta <= LOGIT_TOL
    top2 = np.sort(ref_logits, -1)[..., -2:]
    assert (top2[..., 1] - top2[..., 0]).min() > 10 * LOGIT_TOL  # no near-tie decided the tokens

    # the parity is meaningful: captions are several tokens long, the two frames differ, and in
    # this batch one row stops on [SEP] (then gets padded) while the other runs longer
    eos = manifest["eos_token_id"]
    stops = [list(row).index(eos) if eos in row else len(row) for row in tokens]
    assert min(stops) >= 3, stops
    assert any(eos in row for row in tokens) and max(stops) > min(stops), stops
    assert not np.array_equal(tokens[0], tokens[1])


def test_step_positions_follow_past_length(manifest, sessions, frames):
    """Prefill over L ids then a step equals prefill over L+1 ids (the step's position is P);
    batch 3, unlike the export's dummy batch of 2, checks that the batch axis is dynamic."""
    pre = Preprocessing.from_dict(manifest["preprocessing"])
    px = preprocess_frames([frames[0], frames[1], frames[0][::-1].copy()], pre)
    (features,) = sessions["vision_encoder"].run(["features"], {"pixel_values": px})
    ids = np.array([[manifest["bos_token_id"], 6, 14, 9, 20]] * 3, np.int64)
    full = sessions["decoder_prefill"].run(["logits"], {"features": features[:, None], "input_ids": ids})[0]
    names = [o.name for o in sessions["decoder_prefill"].get_outputs()]
    got = dict(zip(names, sessions["decoder_prefill"].run(None, {"features": features[:, None],
                                                                 "input_ids": ids[:, :-1]})))
    feeds = {"input_ids": ids[:, -1:]}
    for name in (i.name for i in sessions["decoder_step"].get_inputs()):
        if name.startswith("past_"):
            feeds[name] = got[name.replace("past_", "present_")]
        elif name.startswith("cross_"):
            feeds[name] = got[name]
    stepped = sessions["decoder_step"].run(["logits"], feeds)[0]
    np.testing.assert_allclose(stepped, full, atol=1e-4)


def test_manifest_fields_and_hashes(engine, manifest, model, sessions):
    tcfg, vcfg = model.config.text_config, model.config.vision_config
    assert manifest["format"] == "streamcap-engine" and manifest["format_version"] == 2
    assert manifest["runtime"] == "onnxruntime"
    assert manifest["name"] == "blip-tiny"
    assert manifest["architecture"] == "blip"
    assert manifest["model_type"] == "BlipForConditionalGeneration"
    assert manifest["precision"] == "fp32" and manifest["opset"] == OPSET
    assert manifest["frames_per_window"] == 1 and manifest["encoder_mode"] == "frame"
    assert manifest["window_s"] == 3.0 and manifest["max_new_tokens"] == MAX_NEW
    assert manifest["preprocessing"] == {"image_size": tiny_blip.IMAGE_SIZE,
                                         "mean": [0.48145466, 0.4578275, 0.40821073],
                                         "std": [0.26862954, 0.26130258, 0.27577711], "resize": "stretch"}
    assert manifest["tokenizer"] == "tokenizer.json"
    assert manifest["bos_token_id"] == tcfg.bos_token_id == tiny_blip.DEC_ID
    assert manifest["eos_token_id"] == tcfg.sep_token_id == tiny_blip.SEP_ID
    assert manifest["pad_token_id"] == tcfg.pad_token_id == tiny_blip.PAD_ID
    assert manifest["decoder"] == {"num_layers": tcfg.num_hidden_layers, "num_heads": tcfg.num_attention_heads,
                                   "head_dim": tcfg.hidden_size // tcfg.num_attention_heads,
                                   "cross_attention": True, "prefix_tokens": 0, "vocab_size": tcfg.vocab_size}
    assert manifest["graphs"] == {"vision_encoder": "vision_encoder.onnx",
                                  "decoder_prefill": "decoder_prefill.onnx", "decoder_step": "decoder_step.onnx"}
    files = {"vision_encoder.onnx", "decoder_prefill.onnx", "decoder_step.onnx", "tokenizer.json"}
    assert set(manifest["files"]) == files
    for f in files:
        assert manifest["files"][f] == file_sha256(engine / f), f
    # frame mode: (N, 3, S, S) → (N, T, D), any N
    s = tiny_blip.IMAGE_SIZE
    (features,) = sessions["vision_encoder"].run(["features"], {"pixel_values": np.zeros((3, 3, s, s), np.float32)})
    assert features.shape == (3, (s // vcfg.patch_size) ** 2 + 1, vcfg.hidden_size)


def test_unsupported_checkpoints_are_refused(checkpoint, tmp_path):
    from transformers import BertConfig

    bert = tmp_path / "bert"
    BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32, architectures=["BertForMaskedLM"]).save_pretrained(bert)
    with pytest.raises(ExportError, match=r"BertForMaskedLM.*BlipForConditionalGeneration only"):
        export(bert, tmp_path / "out-bert", ExportOptions())

    vqa = tmp_path / "vqa"
    shutil.copytree(checkpoint, vqa)
    cfg = json.loads((vqa / "config.json").read_text())
    cfg["architectures"] = ["BlipForQuestionAnswering"]
    (vqa / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match="BlipForQuestionAnswering"):
        export(vqa, tmp_path / "out-vqa", ExportOptions())

    with pytest.raises(ExportError, match="no config.json"):
        export(tmp_path / "missing", tmp_path / "out-missing", ExportOptions())
    assert not (tmp_path / "out-bert").exists() and not (tmp_path / "out-vqa").exists()


@pytest.mark.parametrize("kw", [{}, {"num_beams": 3}, {"prompt": "a picture of"}], ids=["greedy", "beam3", "prompt"])
def test_engine_captions_match_generate(checkpoint, engine, model, frames, kw):
    """The shipped runtime (streamcap.load_engine) gives generate()'s text (prompt not echoed)."""
    import torch
    from transformers import BlipImageProcessor, PreTrainedTokenizerFast

    import streamcap

    eng = streamcap.load_engine(engine)
    ours = [r.text for r in eng.caption_batch([[f] for f in frames], max_new_tokens=10, **kw)]
    tok = PreTrainedTokenizerFast.from_pretrained(checkpoint)
    px = BlipImageProcessor.from_pretrained(checkpoint)(images=frames, return_tensors="pt").pixel_values
    extra = {"num_beams": kw["num_beams"]} if "num_beams" in kw else {}
    if "prompt" in kw:
        extra["input_ids"] = tok([kw["prompt"]] * len(frames), return_tensors="pt").input_ids
    with torch.no_grad():
        seqs = model.generate(pixel_values=px, max_new_tokens=10, do_sample=False, **extra)
    hf = [t.strip() for t in tok.batch_decode(seqs, skip_special_tokens=True)]
    if "prompt" in kw:
        assert all(t.startswith(kw["prompt"]) for t in hf)
        hf = [t[len(kw["prompt"]):].strip() for t in hf]
    assert ours == hf
