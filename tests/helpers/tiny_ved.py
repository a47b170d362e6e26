"""Tiny random-weight ``VisionEncoderDecoderModel`` checkpoints for the VED exporter tests.

Everything is built from config objects (no hub access) with a fixed torch seed:

- ``save_tiny_vit_gpt2(folder)``: ViT image encoder + GPT-2 decoder with cross-attention
  (ViT-GPT2 captioner style), ``ViTImageProcessor`` preprocessing (stretch, mean/std 0.5);
- ``save_tiny_videomae_gpt2(folder)``: VideoMAE video encoder (4 frames, tubelets of 2) + GPT-2,
  ``VideoMAEImageProcessor`` preprocessing (shortest edge + center crop, ImageNet mean/std);
- ``save_tiny_timesformer_gpt2(folder)``: TimeSformer video encoder (2 frames) + GPT-2.

Each folder gets ``config.json``, the weights, ``generation_config.json``, a word-level fast
tokenizer (``tokenizer.json`` + ``PreTrainedTokenizerFast`` files) and ``preprocessor_config.json``.
Like real ViT-GPT2 checkpoints, ``<|endoftext|>`` is the decoder start, EOS and pad token.

Needs torch + transformers (the ``export`` extra).
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SIZE = 32
SEED = 1234
ENDOFTEXT = "<|endoftext|>"
WORDS = [
    "a", "the", "red", "green", "blue", "yellow", "white", "black", "small", "big", "circle",
    "square", "triangle", "star", "moves", "left", "right", "up", "down", "fast", "slow", "on", "in",
    "of", "and", "is", "two", "three", "person", "car", "dog", "cat", "ball", "walks", "runs",
    "jumps", "near", "far", "over", "under",
]
# larger than GPT-2's 0.02: logits well apart (greedy argmax is not a coin toss) and, with ~40
# words, random captions usually run several tokens before EOS (checked by the tests; the lm_head
# is untied so the start token — also EOS — does not make EOS its own favourite next token)
INIT_RANGE = 0.2

IMAGENET_DEFAULT_MEAN = [0.485, 0.456, 0.406]
IMAGENET_DEFAULT_STD = [0.229, 0.224, 0.225]


def build_tokenizer():
    """A word-level fast tokenizer: id 0 is ``<|endoftext|>`` (bos = eos = pad), 1 is ``<unk>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ENDOFTEXT: 0, "<unk>": 1}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens([ENDOFTEXT, "<unk>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=ENDOFTEXT, eos_token=ENDOFTEXT,
                                   pad_token=ENDOFTEXT, unk_token="<unk>")


def _gpt2_config(vocab_size: int, **overrides):
    from transformers import GPT2Config

    kw = {"vocab_size": vocab_size, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4,
          "initializer_range": INIT_RANGE, "tie_word_embeddings": False, "bos_token_id": 0,
          "eos_token_id": 0, "pad_token_id": 0, "add_cross_attention": True, "is_decoder": True}
    kw.update(overrides)
    return GPT2Config(**kw)


def save_checkpoint(model, tokenizer, processor, folder: Path) -> Path:
    """Set the special ids everywhere generate() reads them; save all."""
    from transformers import GenerationConfig

    tid = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    for cfg in (model.config, model.config.decoder):
        cfg.decoder_start_token_id = tid
        cfg.bos_token_id = tid
        cfg.eos_token_id = tid
        cfg.pad_token_id = tid
    model.generation_config = GenerationConfig(decoder_start_token_id=tid, bos_token_id=tid,
                                               eos_token_id=tid, pad_token_id=tid)
    model.eval()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_vit_gpt2(*, decoder_overrides: dict | None = None):
    import torch
    from transformers import (
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
    )

    tok = build_tokenizer()
    torch.manual_seed(SEED)
    enc = ViTConfig(image_size=IMAGE_SIZE, patch_size=8, num_channels=3, hidden_size=48,
                    num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                    initializer_range=INIT_RANGE)
    dec = _gpt2_config(len(tok), **(decoder_overrides or {}))
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    return VisionEncoderDecoderModel(config=cfg), tok  # 48 → 32: has enc_to_dec_proj


def build_videomae_gpt2(*, num_frames: int = 4, tubelet_size: int = 2):
    import torch
    from transformers import (
        VideoMAEConfig,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
    )

    tok = build_tokenizer()
    torch.manual_seed(SEED + 1)
    enc = VideoMAEConfig(image_size=IMAGE_SIZE, patch_size=16, num_channels=3, num_frames=num_frames,
                         tubelet_size=tubelet_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=64, use_mean_pooling=False,
                         initializer_range=INIT_RANGE)
    dec = _gpt2_config(len(tok))
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    return VisionEncoderDecoderModel(config=cfg), tok  # 32 → 32: no projection


def build_timesformer_gpt2(*, num_frames: int = 2):
    import torch
    from transformers import (
        TimesformerConfig,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
    )

    tok = build_tokenizer()
    torch.manual_seed(SEED + 2)
    enc = TimesformerConfig(image_size=IMAGE_SIZE, patch_size=16, num_channels=3, num_frames=num_frames,
                            hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, initializer_range=INIT_RANGE)
    dec = _gpt2_config(len(tok))
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    return VisionEncoderDecoderModel(config=cfg), tok


def vit_processor():
    from transformers import ViTImageProcessorPil

    return ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def video_processor():
    from transformers import VideoMAEImageProcessorPil

    return VideoMAEImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                     crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                     image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD)


def save_tiny_vit_gpt2(folder: Path) -> Path:
    model, tok = build_vit_gpt2()
    return save_checkpoint(model, tok, vit_processor(), folder)


def save_tiny_videomae_gpt2(folder: Path, *, num_frames: int = 4, tubelet_size: int = 2) -> Path:
    model, tok = build_videomae_gpt2(num_frames=num_frames, tubelet_size=tubelet_size)
    return save_checkpoint(model, tok, video_processor(), folder)


def save_tiny_timesformer_gpt2(folder: Path, *, num_frames: int = 2) -> Path:
    model, tok = build_timesformer_gpt2(num_frames=num_frames)
    return save_checkpoint(model, tok, video_processor(), folder)
