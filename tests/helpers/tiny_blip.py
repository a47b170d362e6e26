"""A tiny random-weight ``BlipForConditionalGeneration`` checkpoint, built offline.

Everything comes from config objects and a fixed torch seed (no hub): a 2-layer BLIP with a
32×32 input (patch 8 → 17 vision tokens), a 46-token word-level fast tokenizer whose specials
follow BLIP's (``[PAD]`` 0, ``[CLS]``/``[SEP]`` around every encoded text, ``[DEC]`` the decoder
start) and a ``preprocessor_config.json`` (``BlipImageProcessor`` at the model's size).

Weights are initialised with a larger std than usual (0.2) so that logits have clear gaps
(greedy decoding in PyTorch and ONNX Runtime cannot flip between near-tied tokens) and so that
the image actually changes the caption. The LM-head bias of ``[SEP]`` (BLIP's generation stop token) is raised by
``SEP_BIAS``: without it ``[SEP]`` is never chosen; with it some captions end after a few tokens
(so finished rows of a batch get padded) while others run to the length limit.
tests/integration/test_export_blip.py checks this on its frames (seed ``FRAME_SEED``): in a batch of
2, one row stops with ``[SEP]`` after at least 3 tokens and the other runs longer.
"""

from __future__ import annotations

from pathlib import Path

SEED = 1234
IMAGE_SIZE = 32
PATCH_SIZE = 8
INIT_STD = 0.2
SEP_BIAS = 2.0
FRAME_SEED = 11  # random frames whose captions show both behaviours (see above)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
WORDS = ["a", "an", "the", "of", "on", "in", "with", "and", "picture", "photo", "image", "man",
         "woman", "dog", "cat", "car", "tree", "house", "street", "red", "blue", "green", "small",
         "large", "sitting", "standing", "running", "near", "two", "people", "white", "black",
         "field", "water", "sky", "road", "is", "are", "there", "view", "close", "up"]
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID, DEC_ID = range(6)


def build_tokenizer():
    """A ``PreTrainedTokenizerFast`` (WordLevel, lower-cased, ``[CLS] text [SEP]``)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    assert len(vocab) == len(SPECIALS) + len(WORDS), "duplicate word in the tiny vocabulary"
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)])
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", bos_token="[DEC]", model_input_names=["input_ids",
                                                                                      "attention_mask"])


def build_model():
    """The tiny model (eval mode), identical on every call."""
    import torch
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipTextConfig,
        BlipVisionConfig,
    )

    vocab_size = len(SPECIALS) + len(WORDS)
    text = BlipTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, initializer_range=INIT_STD,
        bos_token_id=DEC_ID, eos_token_id=SEP_ID, pad_token_id=PAD_ID, sep_token_id=SEP_ID)
    vision = BlipVisionConfig(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, initializer_range=INIT_STD)
    config = BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                        initializer_range=INIT_STD)
    torch.manual_seed(SEED)
    model = BlipForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[SEP_ID] += SEP_BIAS
    return model


def save_tiny_blip(folder: Path) -> Path:
    """Write model, tokenizer and ``preprocessor_config.json`` into ``folder``; return it."""
    from transformers import BlipImageProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    build_model().save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    return folder
