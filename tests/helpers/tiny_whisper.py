"""A tiny random-weight multilingual ``WhisperForConditionalGeneration``, built offline from config
objects and saved like a real checkpoint: model + ``generation_config.json`` (lang_to_id,
task_to_id, suppress lists, ...), a byte-level BPE ``tokenizer.json`` and
``preprocessor_config.json``.

The token layout copies Whisper's: byte tokens first, then ``<|endoftext|>``,
``<|startoftranscript|>``, the language tokens, ``<|translate|>``, ``<|transcribe|>``,
``<|startoflm|>``, ``<|startofprev|>``, ``<|nospeech|>``, ``<|notimestamps|>`` and 1501 timestamp
tokens ``<|0.00|>`` … ``<|30.00|>``. Real Whisper's encoder length (1500 positions, 3000 mel
frames) is kept, everything else is shrunk: a model exports and runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

LANGUAGES = ("en", "de", "fr", "es")
N_TIMESTAMPS = 1501


def _bytes_to_unicode() -> dict[int, str]:
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


WORDS = ["Ġthe", "Ġhello", "Ġworld", "Ġcat", "Ġdog", "Ġand", "Ġis", "Ġa", "Ġsat", "Ġon", "Ġmat"]


def special_tokens() -> list[str]:
    return (["<|endoftext|>", "<|startoftranscript|>", *(f"<|{c}|>" for c in LANGUAGES), "<|translate|>",
             "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
            + [f"<|{i * 0.02:.2f}|>" for i in range(N_TIMESTAMPS)])


def build_tokenizer():
    """A byte-level BPE tokenizer (GPT-2 style, a few whole-word merges) with Whisper's specials."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    b2u = _bytes_to_unicode()
    vocab = {ch: i for i, ch in enumerate(b2u[b] for b in range(256))}
    merges = []
    for w in WORDS:  # merge left to right: Ġ+t, Ġt+h, Ġth+e ...
        cur = w[:1]
        for ch in w[1:]:
            merges.append((cur, ch))
            cur += ch
            vocab.setdefault(cur, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens()])
    return tok


def save_tiny_whisper(folder: Path, *, seed: int = 0, d_model: int = 32, layers: int = 2,
                      eot_like: str | None = None) -> Path:
    """By default EOT's embedding (= its output row) is shrunk: the model keeps talking. With
    ``eot_like`` (a token, e.g. "%") EOT points almost where that token does, so a random model
    that often says it now often ends there: hypotheses end on EOT (the stopping rules get used)."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    ids = {t: tok.token_to_id(t) for t in special_tokens()}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    no_ts = ids["<|notimestamps|>"]
    vocab_size = tok.get_vocab_size()
    space = tok.token_to_id("Ġ")
    # Whisper suppresses some punctuation and the non-text specials (startofprev second to last)
    suppress = [tok.token_to_id(c) for c in "#()*+/<=>@[]^_{|}~"]
    suppress += [ids["<|translate|>"], ids["<|transcribe|>"], ids["<|startoflm|>"], ids["<|startofprev|>"],
                 ids["<|nospeech|>"]]
    cfg = WhisperConfig(
        vocab_size=vocab_size, num_mel_bins=80, encoder_layers=layers, encoder_attention_heads=2,
        decoder_layers=layers, decoder_attention_heads=4, d_model=d_model, encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model, max_source_positions=1500, max_target_positions=96,
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        suppress_tokens=suppress, begin_suppress_tokens=[space, eot], init_std=0.3,
    )
    model = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        emb = model.model.decoder.embed_tokens.weight
        emb[ids["<|0.00|>"]:] *= 0.45  # fewer timestamps than a flat random model would say
        if eot_like is None:
            emb[eot] *= 0.5
        else:
            emb[eot] = 0.97 * emb[tok.token_to_id(eot_like)] + 0.1 * emb[eot]
    gen = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_length=cfg.max_target_positions, suppress_tokens=suppress, begin_suppress_tokens=[space, eot],
        no_timestamps_token_id=no_ts, prev_sot_token_id=ids["<|startofprev|>"], is_multilingual=True,
        lang_to_id={f"<|{c}|>": ids[f"<|{c}|>"] for c in LANGUAGES},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        max_initial_timestamp_index=50, return_timestamps=False,
        alignment_heads=[[1, 0], [1, 2]],
    )
    model.generation_config = gen
    model.save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "WhisperTokenizer"}))
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder
