"""The one protocol every language-model backend speaks, its errors, and its counters.

Lists in, lists out, batched. A backend declares what it can do in `capabilities`; `llmrl.llm.load`
checks the capabilities a caller needs at construction, so nothing fails mid-training for lack of one.
No RL here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from llmrl.errors import ConfigError, LLMRLError

__all__ = [
    "LLM",
    "Capability",
    "CallStats",
    "Image",
    "LLMError",
    "LLMUnavailableError",
    "UnsupportedOperationError",
    "CacheMissError",
    "BudgetExceededError",
    "LLMOutputError",
    "LLMCacheError",
]

Capability = Literal["generate", "score", "embed", "features", "images"]
Image = np.ndarray
"""An RGB frame, uint8, shape (H, W, 3)."""


class LLMError(LLMRLError):
    """Root of the errors raised by language-model backends."""


class LLMUnavailableError(LLMError):
    """The model or server could not be reached after the configured retries."""


class UnsupportedOperationError(LLMError, ConfigError):
    """The backend cannot do the operation asked of it; the message names a backend that can. Also what a
    role raises at construction when its LLM lacks a capability (hence a ConfigError too)."""


class CacheMissError(LLMError):
    """A replay-only run asked for a call that is not in the cache."""


class BudgetExceededError(LLMError):
    """A call, token or seconds budget ran out and no fallback was configured."""


class LLMCacheError(LLMError):
    """The persistent cache file cannot be read or written (damaged, not SQLite, locked, read-only)."""


class LLMOutputError(LLMError):
    """A backend answered with the wrong count, shape or non-finite values.

    Raised by the cost-control layer (`CachedLLM`) before anything is cached: a bad answer never
    reaches the SQLite store, so a rerun asks the model again. `bad` holds the positions (in the
    caller's input list) of the bad answers; `results` the caller's answers with None at those positions
    (the good ones are cached and usable). Roles handle it by their `on_bad_output` policy.
    """

    def __init__(self, message: str, *, bad: list[int] | None = None, results: list | None = None):
        super().__init__(message)
        self.bad = bad or []
        self.results = results or []


@dataclass
class CallStats:
    """Counters every backend keeps; roles report them in the training log under `llm/`."""

    calls: int = 0
    """Operations asked of the backend (one batched call counts once per input)."""
    hits: int = 0
    """Inputs answered from the cache."""
    misses: int = 0
    """Inputs that reached the model."""
    tokens: int = 0
    """Tokens the model processed or produced for the misses."""
    seconds: float = 0.0
    """Wall time spent in the model for the misses."""
    fallbacks: int = 0
    """Inputs answered by the configured fallback once the budget was spent."""
    bad_outputs: int = 0
    """Answers rejected by the output check (wrong count or shape, non-finite values); never cached."""

    def as_dict(self, prefix: str = "llm/") -> dict[str, float]:
        return {prefix + k: float(v) for k, v in asdict(self).items()}


@runtime_checkable
class LLM(Protocol):
    """What roles may ask of a language model.

    `generate(["Q: 2+2? A:"], max_tokens=4)` -> `[" 4"]`;
    `score("The sky is", [" blue", " green"])` -> `array([-1.2, -6.0])`.
    """

    name: str
    """Backend and model, e.g. `"llamacpp:gemma-3-270m-q4_k_m"`; part of every cache key."""
    capabilities: frozenset[str]
    stats: CallStats

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_tokens: int = 32,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        images: Sequence[Image | None] | None = None,
    ) -> list[str]:
        """One completion per prompt. `images[i]`, if given, goes with `prompts[i]`."""
        ...

    def score(self, prompt: str, continuations: Sequence[str]) -> np.ndarray:
        """Sum of the token log-probabilities of each continuation given `prompt`. Shape (n,).

        The prompt is evaluated once and shared by every continuation.
        """
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Sentence embeddings, L2-normalised. Shape (n, d)."""
        ...

    def features(
        self,
        prompts: Sequence[str],
        *,
        images: Sequence[Image | None] | None = None,
        kind: Literal["hidden", "logits"] = "hidden",
        tokens: Sequence[str] | None = None,
    ) -> np.ndarray:
        """One forward pass per prompt. Shape (n, d), float32.

        kind="hidden": the last token's final hidden state (d = model width).
        kind="logits": the next-token log-probabilities restricted to `tokens` (d = len(tokens)).
        """
        ...
