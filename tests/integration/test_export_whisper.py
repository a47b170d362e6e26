"""Whisper export parity against transformers, through the real engine: a tiny random-weight
multilingual checkpoint → `streamcap.export` → ONNX Runtime (`WhisperEngine`), versus
`WhisperForConditionalGeneration.generate` on the same audio (features from
`WhisperFeatureExtractor`, so the numpy front end is in the loop too)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers

from tests.helpers.tiny_whisper import LANGUAGES, save_tiny_whisper

pytestmark = pytest.mark.integration

MAX_NEW = 20
RATE = 16_000


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    from streamcap.engine.whisper import load_speech_engine
    from streamcap.export import export_checkpoint

    root = tmp_path_factory.mktemp("whisper")
    ckpt = save_tiny_whisper(root / "ckpt")
    (ckpt / "streamcap_source.json").write_text(json.dumps({"licence": "MIT", "source": "tests/helpers/tiny_whisper"}))
    out = export_checkpoint(ckpt, root / "engine")
    model = transformers.WhisperForConditionalGeneration.from_pretrained(ckpt).eval()
    fe = transformers.WhisperFeatureExtractor.from_pretrained(ckpt)
    return {"engine": load_speech_engine(out), "model": model, "fe": fe, "dir": out, "ckpt": ckpt, "root": root}


def _clips(n=3, seed=0):
    """Different audio per clip: a chirp, a tone, noise — of different lengths."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        dur = 2.0 + 1.5 * i
        t = np.arange(int(dur * RATE)) / RATE
        kind = (i + seed) % 3
        if kind == 0:
            x = 0.3 * np.sin(2 * np.pi * (150 * t + 300 * t ** 2))
        elif kind == 1:
            x = 0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t)
        else:
            x = 0.1 * rng.standard_normal(t.size)
        out.append((x + 0.01 * rng.standard_normal(t.size)).astype(np.float32))
    return out


def _hf(w, clips, **kw):
    feats = w["fe"](clips, sampling_rate=RATE, return_tensors="pt").input_features
    kw.setdefault("task", "transcribe")
    with torch.no_grad():
        return w["model"].generate(feats, max_new_tokens=MAX_NEW, return_dict_in_generate=True,
                                   force_unique_generate_call=True, **kw)


def _generated(w, g, prefix_len: int) -> list[list[int]]:
    """HF's sequences without their decoder prefix, the trailing EOT and padding."""
    eot = w["model"].generation_config.eos_token_id
    out = []
    for s in g.sequences.tolist():
        s = s[prefix_len:]
        out.append(s[: s.index(eot)] if eot in s else s)
    return out


def _requests(clips, max_new_tokens=MAX_NEW, **kw):
    from streamcap.engine.whisper import SpeechRequest

    return [SpeechRequest(c, max_new_tokens=max_new_tokens, **kw) for c in clips]


def test_greedy_tokens_and_logits_match_pytorch(whisper):
    eng = whisper["engine"]
    clips = _clips()
    g = _hf(whisper, clips, language="de", return_timestamps=True, output_logits=True)
    eng.debug_logits = []
    try:
        res = eng.transcribe_batch(_requests(clips, language="de", timestamps=True))
        ours = eng.debug_logits
    finally:
        eng.debug_logits = None
    n = min(len(ours), len(g.logits), 8)
    dmax = max(float(np.abs(ours[i] - g.logits[i].numpy()).max()) for i in range(n))
    print(f"whisper: max |Δlogit| {dmax:.2e} over the first {n} steps")
    assert n >= 5 and dmax <= 1e-4
    assert [list(r.tokens) for r in res] == _generated(whisper, g, 3)
    assert len({r.tokens for r in res}) == len(res), "the tiny model should listen to the audio"
    assert all(r.language == "de" for r in res)


@pytest.mark.parametrize("timestamps", [True, False], ids=["timestamps", "no-timestamps"])
@pytest.mark.parametrize("beams", [1, 2, 3])
def test_tokens_match_pytorch_greedy_and_beam(whisper, timestamps, beams):
    clips = _clips(3, seed=1)
    g = _hf(whisper, clips, language="fr", return_timestamps=timestamps, num_beams=beams)
    res = whisper["engine"].transcribe_batch(_requests(clips, language="fr", timestamps=timestamps, num_beams=beams))
    assert [list(r.tokens) for r in res] == _generated(whisper, g, 3 if timestamps else 4)
    ts = whisper["engine"].tokens.timestamp_begin
    for r in res:
        has_ts = any(t >= ts for t in r.tokens)
        assert has_ts == timestamps
        if timestamps:
            assert r.tokens[0] >= ts, "the first token is a timestamp"


@pytest.fixture(scope="module")
def ending(tmp_path_factory):
    """A second tiny model whose hypotheses often end on EOT (the first one rarely stops)."""
    from streamcap.engine.whisper import load_speech_engine
    from streamcap.export import export_checkpoint

    root = tmp_path_factory.mktemp("whisper-eot")
    ckpt = save_tiny_whisper(root / "ckpt", eot_like="%")
    model = transformers.WhisperForConditionalGeneration.from_pretrained(ckpt).eval()
    fe = transformers.WhisperFeatureExtractor.from_pretrained(ckpt)
    return {"engine": load_speech_engine(export_checkpoint(ckpt, root / "engine")), "model": model, "fe": fe}


@pytest.mark.parametrize("beams", [1, 3])
def test_hypotheses_ending_on_eot_match_pytorch(ending, beams):
    clips = _clips(3, seed=0) + _clips(3, seed=1)
    with torch.no_grad():
        feats = ending["fe"](clips, sampling_rate=RATE, return_tensors="pt").input_features
        g = ending["model"].generate(feats, max_new_tokens=60, language="en", task="transcribe",
                                     return_timestamps=True, num_beams=beams, return_dict_in_generate=True,
                                     force_unique_generate_call=True)
    res = ending["engine"].transcribe_batch(_requests(clips, language="en", num_beams=beams, max_new_tokens=60))
    assert [list(r.tokens) for r in res] == _generated(ending, g, 3)
    lengths = [len(r.tokens) for r in res]
    assert min(lengths) < 60, f"no row ended on EOT ({lengths}): the test would not test it"


def test_prompt_matches_pytorch(whisper):
    eng = whisper["engine"]
    clips = _clips(2, seed=3)
    prompt = "the cat sat on the mat"
    prompt_ids = [eng.tokens.sot_prev] + eng._tok.encode(" " + prompt, add_special_tokens=False).ids
    g = _hf(whisper, clips, language="en", return_timestamps=True, prompt_ids=torch.tensor(prompt_ids))
    res = eng.transcribe_batch(_requests(clips, language="en", prompt=prompt))
    hf = _generated(whisper, g, len(prompt_ids) + 3)
    assert [list(r.tokens) for r in res] == hf
    plain = eng.transcribe_batch(_requests(clips, language="en"))
    assert [r.tokens for r in plain] != [r.tokens for r in res], "the prompt should change the output"


def test_translate_matches_pytorch(whisper):
    clips = _clips(2, seed=4)
    g = _hf(whisper, clips, language="es", task="translate", return_timestamps=False)
    res = whisper["engine"].transcribe_batch(_requests(clips, language="es", task="translate", timestamps=False))
    assert [list(r.tokens) for r in res] == _generated(whisper, g, 4)
    transcribed = whisper["engine"].transcribe_batch(_requests(clips, language="es", timestamps=False))
    assert [r.tokens for r in transcribed] != [r.tokens for r in res]


def test_language_detection_matches_pytorch(whisper):
    eng = whisper["engine"]
    clips = _clips(3, seed=5)
    feats = whisper["fe"](clips, sampling_rate=RATE, return_tensors="pt").input_features
    hf_ids = whisper["model"].detect_language(feats).tolist()
    id_to_code = {v: k for k, v in eng.tokens.languages.items()}
    hf_codes = [id_to_code[i] for i in hf_ids]
    probs = [eng.detect_language(c) for c in clips]
    assert [next(iter(p)) for p in probs] == hf_codes
    for p in probs:
        assert set(p) == set(LANGUAGES) and abs(sum(p.values()) - 1.0) < 1e-6
        assert list(p.values()) == sorted(p.values(), reverse=True)
    res = eng.transcribe_batch(_requests(clips))  # language=None: detected per request
    assert [r.language for r in res] == hf_codes
    g = _hf(whisper, clips, return_timestamps=True)  # HF detects too
    assert [list(r.tokens) for r in res] == _generated(whisper, g, 3)


def test_no_speech_prob_is_softmax_after_sot(whisper):
    eng = whisper["engine"]
    clips = _clips(2, seed=6)
    res = eng.transcribe_batch(_requests(clips, language="en"))
    t = eng.tokens
    feats = whisper["fe"](clips, sampling_rate=RATE, return_tensors="pt").input_features
    ids = torch.tensor([[t.sot, t.languages["en"], t.transcribe]] * 2)
    with torch.no_grad():
        logits = whisper["model"](input_features=feats, decoder_input_ids=ids).logits[:, 0]
    want = torch.softmax(logits.double(), -1)[:, t.no_speech].numpy()
    got = np.array([r.no_speech_prob for r in res])
    assert np.allclose(got, want, rtol=1e-4, atol=1e-7)
    assert got[0] != got[1]


def test_mixed_batch_equals_each_request_alone(whisper):
    """Different prompts (left padding), timestamp settings, tasks and beam widths in one call: the
    same tokens as each request on its own."""
    from streamcap.engine.whisper import SpeechRequest

    eng = whisper["engine"]
    c = _clips(4, seed=7)
    reqs = [SpeechRequest(c[0], prompt="hello world and the dog", language="en", max_new_tokens=MAX_NEW),
            SpeechRequest(c[1], language="de", timestamps=False, max_new_tokens=MAX_NEW),
            SpeechRequest(c[2], prompt="a cat", language="fr", task="translate", max_new_tokens=MAX_NEW),
            SpeechRequest(c[3], prompt="the", language="en", num_beams=2, max_new_tokens=MAX_NEW),
            SpeechRequest(c[0], language="en", max_new_tokens=5)]
    batched = eng.transcribe_batch(reqs)
    alone = [eng.transcribe_batch([r])[0] for r in reqs]
    assert [b.tokens for b in batched] == [a.tokens for a in alone]
    assert np.allclose([b.no_speech_prob for b in batched], [a.no_speech_prob for a in alone], rtol=1e-4)
    assert np.allclose([b.avg_logprob for b in batched], [a.avg_logprob for a in alone], atol=1e-4)
    assert len(batched[4].tokens) <= 5


def test_transcript_fields_and_word_times(whisper):
    eng = whisper["engine"]
    clips = _clips(3, seed=8)
    for r, clip in zip(eng.transcribe_batch(_requests(clips, language="en")), clips):
        dur = len(clip) / RATE
        assert r.avg_logprob <= 0.0 and 0.0 <= r.no_speech_prob <= 1.0
        assert r.words, "a random model still says something"
        starts = [w.start_s for w in r.words]
        assert starts == sorted(starts)
        for w in r.words:
            assert 0.0 <= w.start_s <= w.end_s <= dur
            assert 0.0 < w.prob <= 1.0 and w.text == w.text.strip() and w.text
        assert "".join(w.text for w in r.words).replace(" ", "") == r.text.replace(" ", "")


def test_alignment_heads_cross_attention_matches_pytorch(whisper):
    """cross_qk (the word-timing output) is the alignment heads' pre-softmax cross-attention:
    its softmax equals transformers' cross_attentions for those heads."""
    eng = whisper["engine"]
    assert eng.word_timing == "cross-attention"
    t = eng.tokens
    clips = _clips(2, seed=10)
    ids = np.array([[t.sot, t.languages["en"], t.transcribe, t.no_timestamps, 40, 41, 42, t.eot]] * 2)
    cross = eng._encode(clips)
    b, n = ids.shape
    _, qk = eng._decode_call(ids, np.tile(np.arange(n), (b, 1)), np.ones((b, n)), np.full((b, 1), n - 1),
                             eng._empty_past(b), cross, with_qk=True)
    feats = whisper["fe"](clips, sampling_rate=RATE, return_tensors="pt").input_features
    model = transformers.WhisperForConditionalGeneration.from_pretrained(whisper["ckpt"], attn_implementation="eager")
    with torch.no_grad():
        out = model.eval()(input_features=feats, decoder_input_ids=torch.from_numpy(ids), output_attentions=True)
    heads = eng.manifest.whisper["alignment_heads"]
    want = np.stack([out.cross_attentions[layer][:, head].numpy() for layer, head in heads], axis=1)
    got = np.exp(qk - qk.max(-1, keepdims=True))
    got /= got.sum(-1, keepdims=True)
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-5


def test_bad_requests_are_value_errors(whisper):
    from streamcap.engine.whisper import SpeechRequest

    eng = whisper["engine"]
    with pytest.raises(ValueError, match="at most 30 s"):
        eng.transcribe_batch([SpeechRequest(np.zeros(30 * RATE + 1, np.float32))])
    with pytest.raises(ValueError, match="languages"):
        eng.transcribe_batch([SpeechRequest(np.zeros(RATE, np.float32), language="xx")])
    with pytest.raises(ValueError, match="task"):
        SpeechRequest(np.zeros(RATE, np.float32), task="summarise")
    assert eng.transcribe_batch([]) == []


def test_manifest_records_the_export(whisper):
    import onnx

    m = json.loads((whisper["dir"] / "engine.json").read_text())
    assert m["kind"] == "speech" and m["architecture"] == "whisper" and m["format_version"] == 2
    assert m["licence"] == "MIT" and m["source"] == "tests/helpers/tiny_whisper"
    w = m["whisper"]
    assert set(w["languages"]) == set(LANGUAGES) and w["is_multilingual"] is True
    assert w["timestamp_begin"] == w["no_timestamps"] + 1 and w["max_initial_timestamp_index"] == 50
    assert w["suppress_tokens"] and w["begin_suppress_tokens"]
    assert set(m["files"]) == {"encoder.onnx", "decoder.onnx", "tokenizer.json"}
    dec = onnx.load(str(whisper["dir"] / "decoder.onnx"))
    vocab, d = m["decoder"]["vocab_size"], m["decoder"]["d_model"]
    big = [i.name for i in dec.graph.initializer if sorted(i.dims) == sorted([vocab, d])]
    assert len(big) == 1, f"the token embedding / output projection is stored once, not {big}"
    assert whisper["engine"].languages == tuple(w["languages"])


def test_caption_and_speech_loaders_refuse_each_others_engines(whisper):
    from pathlib import Path

    from streamcap.core.errors import EngineLoadError
    from streamcap.engine.manifest import load_manifest, load_speech_manifest

    with pytest.raises(EngineLoadError, match="load_speech_engine"):
        load_manifest(whisper["dir"])
    with pytest.raises(EngineLoadError, match="load_engine"):
        load_speech_manifest(Path(__file__).parents[2] / "engines" / "shapes-git")


def test_int8_export_without_alignment_heads_runs_with_approximate_word_times(whisper):
    """int8 loads and runs (its tokens need not match fp32); a checkpoint without alignment heads
    gives an engine without cross_qk whose words are timed by character share; caption-only
    export options are ignored."""
    import shutil

    from streamcap.engine.whisper import load_speech_engine
    from streamcap.export import export_checkpoint

    ckpt = whisper["root"] / "ckpt-noalign"
    shutil.copytree(whisper["ckpt"], ckpt)
    gen = json.loads((ckpt / "generation_config.json").read_text())
    del gen["alignment_heads"]
    (ckpt / "generation_config.json").write_text(json.dumps(gen))
    out = export_checkpoint(ckpt, whisper["root"] / "int8", precision="int8", frames=3, window_s=5.0,
                            max_new_tokens=7)
    m = json.loads((out / "engine.json").read_text())
    assert m["precision"] == "int8" and m["word_timing"] == "approximate"
    eng = load_speech_engine(out, intra_op_threads=1)
    assert eng.word_timing == "approximate"
    clips = _clips(2, seed=9)
    res = eng.transcribe_batch(_requests(clips, language="en"))
    assert len(res) == 2 and all(r.tokens for r in res)
    assert len(res[0].tokens) <= MAX_NEW
    for r, clip in zip(res, clips):
        dur = len(clip) / RATE
        assert r.words and all(0.0 <= w.start_s <= w.end_s <= dur for w in r.words)
        if r.tokens[-1] < eng.tokens.eot:  # text not closed by a timestamp runs to the end of the audio
            assert r.words[-1].end_s == pytest.approx(dur, abs=1e-3)
