"""What every backend shares: counters, capability checks, input validation and image hashing.

A backend subclasses `Backend`, sets `name` and `capabilities`, and overrides the operations it can do;
the others raise `UnsupportedOperationError` naming a backend that can. No RL here.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import numpy as np

from llmrl.errors import ConfigError
from llmrl.llm.base import CallStats, Image, UnsupportedOperationError

__all__ = [
    "Backend",
    "CAPABILITIES",
    "WHO_CAN",
    "check_capabilities",
    "check_feature_args",
    "check_images",
    "image_digest",
    "output_problem",
]

CAPABILITIES = ("generate", "score", "embed", "features", "images")

WHO_CAN = {
    "generate": '"embedded", "llamacpp:<path.gguf>", "hf:<model>" or "openai:<model>"',
    "score": '"embedded", "llamacpp:<path.gguf>", "hf:<model>", or "openai:<model>" served by '
    "llama.cpp server or vLLM (completions with echo + logprobs)",
    "embed": '"embedded" or "minilm" (all-MiniLM-L6-v2), or "openai:<model>" whose server has /v1/embeddings',
    "features": '"embedded", "llamacpp:<path.gguf>" or "hf:<model>"',
    "images": '"hf:<LLaVA-NeXT model>" (e.g. "hf:llava-hf/llava-v1.6-mistral-7b-hf") or "openai:<vision model>"',
}
"""For each capability, the backends that provide it (quoted in error messages)."""


def check_capabilities(name: str, capabilities: Iterable[str], require: Iterable[str]) -> None:
    """Raise UnsupportedOperationError if `require` asks for a capability the backend lacks."""
    have = set(capabilities)
    for cap in require:
        if cap not in WHO_CAN:
            raise ConfigError(f"unknown capability {cap!r} in require=; valid ones are {list(CAPABILITIES)}")
        if cap not in have:
            raise UnsupportedOperationError(
                f"{name} cannot do {cap!r} (it can do {sorted(have)}); use {WHO_CAN[cap]} instead"
            )


def image_digest(image: Image) -> str:
    """A stable hash of an image's pixels, shape and dtype (part of cache keys)."""
    arr = np.ascontiguousarray(image)
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def check_images(images: Sequence[Image | None] | None, n: int) -> list[Image | None]:
    """`images` as a list of length n (None where a prompt has no image); validates shapes."""
    if images is None:
        return [None] * n
    images = list(images)
    if len(images) != n:
        raise ConfigError(f"got {len(images)} images for {n} prompts; pass one image (or None) per prompt")
    for img in images:
        if img is not None and (np.ndim(img) != 3 or np.shape(img)[-1] != 3):
            raise ConfigError(f"an image must be RGB of shape (H, W, 3), not {np.shape(img)}")
    return images


def check_feature_args(kind: str, tokens: Sequence[str] | None) -> list[str]:
    """Validate `features(kind=..., tokens=...)`; returns the token list (empty for kind="hidden")."""
    if kind == "hidden":
        return []
    if kind != "logits":
        raise ConfigError(f'features kind must be "hidden" or "logits", not {kind!r}')
    if not tokens:
        raise ConfigError(
            'features(kind="logits") needs tokens=[...], the candidate next tokens, e.g. [" left", " right"]'
        )
    return list(tokens)


MAX_ABS_VALUE = 1e8
"""Largest magnitude accepted in an embedding or feature vector. Real models stay far below it (hidden
states of LLMs reach ~1e4); a larger value is a broken answer, and squaring it (normalisation) would
overflow float32 into inf and then NaN."""


def output_problem(op: str, value: object, shape: tuple[int, ...] | None = None) -> str | None:
    """What is wrong with one answer of `op` ("generate", "score", "embed", "features"), or None.

    The one check every answer passes before it is cached or handed to a role: text for generate, a
    finite number for score, a 1-D finite vector (of `shape` when given) of sane magnitude otherwise.
    """
    if op == "generate":
        return None if isinstance(value, str) else f"a {type(value).__name__} instead of text"
    if op == "score":
        try:
            x = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return f"{value!r:.60} instead of a number"
        return None if np.isfinite(x) else f"{x} instead of a finite log-probability"
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return f"{type(value).__name__} instead of a vector of numbers"
    if arr.ndim != 1 or arr.size == 0:
        return f"an array of shape {arr.shape} instead of a non-empty vector"
    if shape is not None and arr.shape != shape:
        return f"a vector of shape {arr.shape} where the others have {shape}"
    if not np.isfinite(arr).all():
        return f"{int((~np.isfinite(arr)).sum())} non-finite values (NaN or inf) in a vector of {arr.size}"
    if np.abs(arr).max() > MAX_ABS_VALUE:
        return (
            f"values up to {np.abs(arr).max():.3g} (more than {MAX_ABS_VALUE:.0e}: no real model gives those)"
        )
    return None


class Backend:
    """Base of the concrete backends: keeps `stats` and refuses what it cannot do."""

    name: str = "backend"
    capabilities: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.stats = CallStats()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} can {sorted(self.capabilities)}>"

    @contextmanager
    def _count(self, n_inputs: int) -> Iterator[list[int]]:
        """Time a model call over `n_inputs` inputs; the caller appends token counts to the list."""
        tokens: list[int] = []
        t0 = time.perf_counter()
        try:
            yield tokens
        finally:
            self.stats.calls += n_inputs
            self.stats.misses += n_inputs
            self.stats.tokens += int(sum(tokens))
            self.stats.seconds += time.perf_counter() - t0

    def _refuse(self, op: str) -> UnsupportedOperationError:
        return UnsupportedOperationError(f"{self.name} cannot do {op!r}; use {WHO_CAN[op]} instead")

    def _check_images_supported(self, images: Sequence[Image | None] | None, n: int) -> list[Image | None]:
        imgs = check_images(images, n)
        if any(img is not None for img in imgs) and "images" not in self.capabilities:
            raise self._refuse("images")
        return imgs

    # -- the protocol; subclasses override what they can do --------------------------------

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_tokens: int = 32,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        images: Sequence[Image | None] | None = None,
    ) -> list[str]:
        raise self._refuse("generate")

    def score(self, prompt: str, continuations: Sequence[str]) -> np.ndarray:
        raise self._refuse("score")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        raise self._refuse("embed")

    def features(
        self,
        prompts: Sequence[str],
        *,
        images: Sequence[Image | None] | None = None,
        kind: Literal["hidden", "logits"] = "hidden",
        tokens: Sequence[str] | None = None,
    ) -> np.ndarray:
        raise self._refuse("features")

    def close(self) -> None:
        """Release the model (optional)."""
