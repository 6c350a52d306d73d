"""A deterministic stand-in model for tests of the cost controls."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmrl.llm.common import Backend

__all__ = ["EchoLLM"]


class EchoLLM(Backend):
    """A deterministic stand-in model: answers are functions of the input, calls are counted."""

    name = "echo:v1"
    capabilities = frozenset({"generate", "score", "embed", "features", "images"})

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def generate(self, prompts, *, max_tokens=32, temperature=0.0, stop=None, images=None):
        self.batches.append(len(prompts))
        with self._count(len(prompts)) as tokens:
            tokens.append(sum(len(p) for p in prompts))
            imgs = images or [None] * len(prompts)
            return [
                p[::-1][:max_tokens] + ("" if im is None else f"|{int(im.sum())}")
                for p, im in zip(prompts, imgs)
            ]

    def score(self, prompt: str, continuations: Sequence[str]) -> np.ndarray:
        self.batches.append(len(continuations))
        with self._count(len(continuations)) as tokens:
            tokens.append(len(continuations))
            return -np.array([len(prompt) + len(c) for c in continuations], dtype=np.float64)

    def embed(self, texts):
        self.batches.append(len(texts))
        with self._count(len(texts)):
            return np.array([[len(t), t.count("a"), 1.0] for t in texts], dtype=np.float32)

    def features(self, prompts, *, images=None, kind="hidden", tokens=None):
        self.batches.append(len(prompts))
        with self._count(len(prompts)):
            return np.array([[len(p), 0.5] for p in prompts], dtype=np.float32)
