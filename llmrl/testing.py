"""Tiny random-weight models, built offline into a folder, for tests, benchmarks and smoke runs.

Nothing here downloads weights: the models have the real architectures (so every code path runs) and
random weights (so their outputs mean nothing).

    clip_dir = llmrl.testing.tiny_clip("/tmp/clip")    # then CLIPEmbedder(clip_dir)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from llmrl.errors import optional_import

__all__ = ["tiny_clip", "CLIP_WORDS"]

CLIP_WORDS = ("a", "the", "cat", "agent", "is", "at", "on", "green", "goal", "square", "grid")
"""The tiny CLIP tokenizer's vocabulary (besides the special tokens); other words map to [UNK]."""


def tiny_clip(path: str | os.PathLike, words: Sequence[str] = CLIP_WORDS) -> str:
    """A random-weight CLIP (16-wide towers, 32x32 images) with a word-level tokenizer, saved to `path`."""
    transformers = optional_import("transformers", "hf")
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = ["[PAD]", "[UNK]", "<|startoftext|>", "<|endoftext|>", *words]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
    ).save_pretrained(path)
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    cfg = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            max_position_embeddings=16,
            eos_token_id=3,
            pad_token_id=0,
            bos_token_id=2,
            **small,
        ),
        vision_config=dict(image_size=32, patch_size=8, **small),
        projection_dim=8,
    )
    torch.manual_seed(0)
    transformers.CLIPModel(cfg).save_pretrained(path)
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(path)
    return str(path)
