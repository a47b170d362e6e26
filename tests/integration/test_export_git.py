"""GIT export parity (image and video variants) against transformers, through the real engine:
tiny random-weight checkpoints → `streamcap.export` → ONNX Runtime, versus `GitForCausalLM.generate`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers

from tests.helpers.tiny_git import IMAGE_SIZE, save_tiny_git

pytestmark = pytest.mark.integration

MAX_NEW = 10


@pytest.fixture(scope="module", params=[None, 3], ids=["image", "video"])
def git(request, tmp_path_factory):
    from streamcap.engine import load_engine
    from streamcap.export import export_checkpoint

    frames = request.param
    root = tmp_path_factory.mktemp(f"git-{frames or 'image'}")
    ckpt = save_tiny_git(root / "ckpt", frames=frames)
    out = export_checkpoint(ckpt, root / "engine", max_new_tokens=MAX_NEW)
    model = transformers.GitForCausalLM.from_pretrained(ckpt).eval()
    proc = transformers.CLIPImageProcessor.from_pretrained(ckpt)
    return {"engine": load_engine(out), "model": model, "proc": proc, "k": frames or 1, "dir": out, "ckpt": ckpt}


def _windows(k, n=2, seed=0, size=IMAGE_SIZE):
    rng = np.random.default_rng(seed)
    return [[rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(k)] for _ in range(n)]


def _hf_pixels(git, windows):
    px = np.stack([git["proc"](images=w, return_tensors="np").pixel_values for w in windows])
    px = torch.from_numpy(px)
    return px[:, 0] if git["model"].config.num_image_with_embedding is None else px


def _hf_texts(git, windows, **kw):
    with torch.no_grad():
        seqs = git["model"].generate(pixel_values=_hf_pixels(git, windows), max_new_tokens=MAX_NEW,
                                     do_sample=False, **kw)
    return git["engine"]._tok.decode_batch(seqs.tolist(), skip_special_tokens=True)


def test_greedy_tokens_and_logits_match_pytorch(git):
    eng = git["engine"]
    windows = _windows(git["k"])
    with torch.no_grad():
        g = git["model"].generate(pixel_values=_hf_pixels(git, windows), max_new_tokens=MAX_NEW, do_sample=False,
                                  num_beams=1, output_logits=True, return_dict_in_generate=True)
    eng.debug_logits = []
    try:
        res = eng.caption_batch(windows)
        ours = eng.debug_logits
    finally:
        eng.debug_logits = None
    assert len(ours) == len(g.logits)
    dmax = max(float(np.abs(a - b.numpy()).max()) for a, b in zip(ours, g.logits))
    print(f"GIT {'video' if git['k'] > 1 else 'image'}: max |Δlogit| {dmax:.2e} over {len(ours)} steps")
    assert dmax <= 1e-4
    hf = git["engine"]._tok.decode_batch(g.sequences.tolist(), skip_special_tokens=True)
    assert [r.text for r in res] == hf
    assert res[0].text != res[1].text, "the tiny model should look at the picture"


@pytest.mark.parametrize("kw", [{"num_beams": 3}, {"repetition_penalty": 1.5}, {"min_new_tokens": 8}],
                         ids=["beam3", "rep1.5", "min8"])
def test_decoding_options_match_pytorch(git, kw):
    windows = _windows(git["k"], n=3, seed=1)
    ours = [r.text for r in git["engine"].caption_batch(windows, **kw)]
    assert ours == _hf_texts(git, windows, **kw)


def test_prompt_matches_pytorch_and_is_not_echoed(git):
    eng = git["engine"]
    windows = _windows(git["k"], n=2, seed=2)
    prompt = "what color is"
    ids = [eng.manifest.bos_token_id] + eng._tok.encode(prompt, add_special_tokens=False).ids
    hf = _hf_texts(git, windows, input_ids=torch.tensor([ids] * len(windows)))
    ours = [r.text for r in eng.caption_batch(windows, prompt=prompt)]
    assert [f"{prompt} {o}".strip() for o in ours] == hf


def test_frame_cache_gives_identical_results_and_encodes_each_frame_once(git):
    from streamcap.engine import load_engine

    k = git["k"]
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8) for _ in range(k + 4)]
    windows = [frames[i:i + k] for i in range(5)]  # stride of one frame: heavy overlap
    cached = load_engine(git["dir"], frame_cache_size=64)
    fresh = load_engine(git["dir"], frame_cache_size=0)
    a = [cached.caption_batch([w], keys=[[("s", i + j) for j in range(k)]])[0] for i, w in enumerate(windows)]
    b = [fresh.caption_batch([w])[0] for w in windows]
    assert [(r.text, r.score) for r in a] == [(r.text, r.score) for r in b]
    assert cached.vision_frames_encoded == len(frames)
    assert fresh.vision_frames_encoded == k * len(windows)
    if k > 1:
        assert cached.cache.hits == k * len(windows) - len(frames)


def test_batch_results_identical_to_batch_of_one(git):
    eng = git["engine"]
    windows = _windows(git["k"], n=4, seed=4)
    eng.cache.clear()
    batched = eng.caption_batch(windows)
    eng.cache.clear()
    single = [eng.caption_batch([w])[0] for w in windows]
    assert [r.text for r in batched] == [r.text for r in single]
    # the CPU's one-row GEMM adds up in another order than the many-row one: scores agree to
    # rounding, not bit for bit
    assert np.allclose([r.score for r in batched], [r.score for r in single], rtol=0, atol=1e-5)


def test_public_api_any_size_any_count(git):
    import streamcap

    eng = streamcap.load_engine(git["dir"])
    rng = np.random.default_rng(5)
    clip = [rng.integers(0, 256, (45, 70, 3), dtype=np.uint8) for _ in range(7)]
    res = eng.caption(clip)
    assert isinstance(res.text, str) and res.text
    assert res.score <= 0.0
    assert eng.caption(clip, max_new_tokens=2).text.split() == res.text.split()[:2]


def test_manifest_records_the_export(git):
    m = json.loads((git["dir"] / "engine.json").read_text())
    assert m["format_version"] == 2 and m["architecture"] == "git"
    assert m["frames_per_window"] == git["k"] and m["encoder_mode"] == "frame"
    assert m["decoder"]["prefix_tokens"] == git["k"] * ((IMAGE_SIZE // 8) ** 2 + 1)
    assert m["preprocessing"]["resize"] == "center_crop"
    assert set(m["files"]) == {"vision_encoder.onnx", "decoder_prefill.onnx", "decoder_step.onnx",
                               "decoder_unified.onnx", "tokenizer.json"}


def test_too_many_frames_is_a_clear_error(git, tmp_path):
    from streamcap.export import export_checkpoint
    from streamcap.export.base import ExportError

    with pytest.raises(ExportError, match="temporal embeddings for"):
        export_checkpoint(git["ckpt"], tmp_path / "x", frames=git["k"] + 1)


@pytest.mark.parametrize("variant", ["unified", "two_sessions_shared", "two_sessions_unshared"])
def test_engine_variants_match_pytorch(git, variant, tmp_path):
    """The unified decoder graph (one session: the CPU default) and the prefill and step graphs'
    two sessions (other providers, older engine folders), with the decoder weights shared
    between them or a pre-packed copy each, give the same tokens and logits."""
    import shutil

    from streamcap.engine import load_engine

    folder, options = git["dir"], {}
    if variant != "unified":
        folder = tmp_path / "engine"
        shutil.copytree(git["dir"], folder)
        manifest = json.loads((folder / "engine.json").read_text())
        del manifest["graphs"]["decoder_unified"]
        (folder / "engine.json").write_text(json.dumps(manifest))
        options["share_decoder_weights"] = variant == "two_sessions_shared"
    eng = load_engine(folder, **options)
    assert eng._unified == (variant == "unified")
    assert (eng._prefill is eng._step) == (variant == "unified")
    assert bool(eng._shared_keepalive) == (variant == "two_sessions_shared")
    windows = _windows(git["k"], seed=3)
    with torch.no_grad():
        g = git["model"].generate(pixel_values=_hf_pixels(git, windows), max_new_tokens=MAX_NEW, do_sample=False,
                                  num_beams=1, output_logits=True, return_dict_in_generate=True)
    eng.debug_logits = []
    res = eng.caption_batch(windows)
    assert max(float(np.abs(a - b.numpy()).max()) for a, b in zip(eng.debug_logits, g.logits)) <= 1e-4
    assert [r.text for r in res] == eng._tok.decode_batch(g.sequences.tolist(), skip_special_tokens=True)
    beams = eng.caption_batch(windows, num_beams=3)
    assert [r.text for r in beams] == _hf_texts(git, windows, num_beams=3)
    eng.close()
