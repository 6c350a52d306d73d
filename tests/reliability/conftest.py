"""Fixtures for the fault and bad-input suite: a backend whose answers can be broken on purpose."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from llmrl.llm.common import Backend


class FaultyLLM(Backend):
    """Deterministic answers (functions of the input) that `fault` breaks the way real servers did.

    fault: None (good answers), "nan", "inf", "huge" (1e38: finite, but it overflows a normalisation),
    "fewer" (one answer short), "ragged" (one vector shorter than the rest).
    """

    name = "faulty:v1"
    capabilities = frozenset({"generate", "score", "embed", "features"})

    def __init__(self, fault: str | None = None, dim: int = 4):
        super().__init__()
        self.fault, self.dim = fault, dim
        self.asked: list[str] = []

    def _vectors(self, texts: Sequence[str]) -> np.ndarray:
        self.asked += list(texts)
        with self._count(len(texts)):
            v = np.array([[len(t) + k for k in range(self.dim)] for t in texts], dtype=np.float64)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            if self.fault == "nan":
                v[-1, 0] = np.nan
            elif self.fault == "inf":
                v[-1, 0] = np.inf
            elif self.fault == "huge":
                v[-1] = 1e38
            elif self.fault == "fewer":
                v = v[:-1]
            elif self.fault == "ragged":
                return [row if i else row[:-1] for i, row in enumerate(v)]  # type: ignore[return-value]
            return v

    def embed(self, texts):
        return self._vectors(texts)

    def features(self, prompts, *, images=None, kind="hidden", tokens=None):
        return self._vectors(prompts)

    def score(self, prompt, continuations):
        self.asked += list(continuations)
        with self._count(len(continuations)):
            out = -np.array([1.0 + len(c) for c in continuations])
            if self.fault in ("nan", "inf"):
                out[:] = np.nan if self.fault == "nan" else -np.inf
            elif self.fault == "fewer":
                out = out[:-1]
            return out

    def generate(self, prompts, *, max_tokens=32, temperature=0.0, stop=None, images=None):
        self.asked += list(prompts)
        with self._count(len(prompts)):
            out = [p[::-1][:max_tokens] for p in prompts]
            return out[:-1] if self.fault == "fewer" else out


@pytest.fixture
def faulty():
    return FaultyLLM
