"""Tiny random-weight models, built offline into a folder, for tests, benchmarks and smoke runs.

Nothing here downloads weights: the models have the real architectures (so every code path runs) and
random weights (so their outputs mean nothing).

    clip_dir = llmrl.testing.tiny_clip("/tmp/clip")    # then CLIPEmbedder(clip_dir)
    gemma_dir = llmrl.testing.tiny_gemma("/tmp/gemma", ["go", "to", "the", "red", "ball"])  # HFLLM(gemma_dir)
    llava_dir = llmrl.testing.tiny_llava_next("/tmp/llava")  # HFLLM(llava_dir): images in, features out
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from llmrl.errors import optional_import

__all__ = ["tiny_clip", "tiny_gemma", "tiny_llava_next", "CLIP_WORDS"]

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


def tiny_gemma(path: str | os.PathLike, words: Sequence[str]) -> str:
    """A 3-layer random-weight Gemma 3 (the embedded model's architecture, 32 wide) with a word-level
    tokenizer over `words` (other words map to <unk>), saved to `path`."""
    transformers = optional_import("transformers", "hf")
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = ["<pad>", "<bos>", "<eos>", "<unk>", *dict.fromkeys(words)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    fast.save_pretrained(path)
    torch.manual_seed(0)
    cfg = transformers.Gemma3TextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
        sliding_window=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    transformers.Gemma3ForCausalLM(cfg).save_pretrained(path)
    return str(path)


def tiny_llava_next(path: str | os.PathLike) -> str:
    """A LLaVA-NeXT-class model (CLIP vision tower on 32x32 images + 2-layer Llama text model, ~100 kB)
    with random weights and a small byte-level BPE tokenizer, saved to `path` with its processor."""
    transformers = optional_import("transformers", "hf")
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["please tell me in 200 characters where the cat should move next", "left right up down"] * 20
    specials = ["<unk>", "<s>", "</s>", "<image>"]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=200, special_tokens=specials))
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    images = transformers.LlavaNextImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints
    )
    transformers.LlavaNextProcessor(
        image_processor=images, tokenizer=fast, patch_size=8, vision_feature_select_strategy="default",
        image_token="<image>", num_additional_image_tokens=1,
    ).save_pretrained(path)  # fmt: skip
    torch.manual_seed(0)
    vision = transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=16,
    )  # fmt: skip
    text = transformers.LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    config = transformers.LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_index=fast.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints, vision_feature_layer=-1, vision_feature_select_strategy="default",
    )  # fmt: skip
    transformers.LlavaNextForConditionalGeneration(config).save_pretrained(path)
    return str(path)
