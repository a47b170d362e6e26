"""Tiny random-weight GIT checkpoints (image and video variants), built offline from config
objects and saved like a real checkpoint: model, fast tokenizer, preprocessor_config.json."""

from __future__ import annotations

from pathlib import Path

WORDS = ["a", "an", "the", "man", "woman", "dog", "cat", "car", "ball", "red", "green", "blue", "big", "small", "is", "are", "on", "in", "of", "with", "and", "runs", "walks", "sits", "jumps", "plays", "holds", "street", "park", "table", "picture", "video", "people", "two", "what", "color"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
IMAGE_SIZE = 32
PATCH = 8


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + list(WORDS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.add_special_tokens(SPECIALS)
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    return fast, vocab


def save_tiny_git(folder: Path, *, frames: int | None = None, seed: int = 0) -> Path:
    """A tiny GitForCausalLM: ``frames`` = None for the image variant (4-D pixels), else a video
    variant with that many temporal embeddings (like GIT-base-VATEX)."""
    import torch
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM

    torch.manual_seed(seed)
    tok, vocab = build_tokenizer()
    cfg = GitConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": IMAGE_SIZE, "patch_size": PATCH},
        vocab_size=len(vocab), hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, max_position_embeddings=64, num_image_with_embedding=frames,
        pad_token_id=vocab["[PAD]"], bos_token_id=vocab["[CLS]"], eos_token_id=vocab["[SEP]"],
        tie_word_embeddings=False, initializer_range=0.3,  # peaky attention: captions depend on the picture
    )
    model = GitForCausalLM(cfg).eval()
    with torch.no_grad():
        if frames:
            for p in model.git.img_temporal_embedding:
                p.normal_(0.0, 0.5)
        # a random model says EOS early about as often as anything else; keep it talking a while
        model.output.bias[vocab["[SEP]"]] -= 1.5
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    for sub in (cfg, cfg.vision_config):
        sub.initializer_range = 0.3
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                       do_convert_rgb=True).save_pretrained(folder)
    return folder
