"""Language-model backends behind one protocol, picked by a string, with cost control built in.

    llm = llmrl.llm.load("embedded")                        # Gemma 3 270M (GGUF) + MiniLM, offline, CPU
    llm = llmrl.llm.load("hf:llava-hf/llava-v1.6-mistral-7b-hf", load_in_4bit=True)   # GPU, images
    llm = llmrl.llm.load("openai:gpt-4o-mini", base_url=..., api_key=...)
    llm = llmrl.llm.load("embedded", require=("score",), cache="runs/llm.sqlite", budget=Budget(calls=5000))

Backends import their libraries lazily: a missing one raises DependencyNotInstalled with the pip
command. No RL here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmrl.errors import ConfigError
from llmrl.llm.base import (
    LLM,
    BudgetExceededError,
    CacheMissError,
    CallStats,
    Capability,
    Image,
    LLMCacheError,
    LLMError,
    LLMOutputError,
    LLMUnavailableError,
    UnsupportedOperationError,
)
from llmrl.llm.cache import Budget, CachedLLM, LLMCache, checked, default_cache_path
from llmrl.llm.common import CAPABILITIES, Backend, check_capabilities

if TYPE_CHECKING:
    from llmrl.llm.embed import MiniLMEmbedder
    from llmrl.llm.hf import HFLLM
    from llmrl.llm.llamacpp import LlamaCppLLM
    from llmrl.llm.openai import OpenAILLM

__all__ = [
    "LLM",
    "Backend",
    "Budget",
    "BudgetExceededError",
    "CacheMissError",
    "CachedLLM",
    "CallStats",
    "Capability",
    "HFLLM",
    "Image",
    "LLMCache",
    "LLMCacheError",
    "LLMError",
    "LLMOutputError",
    "LLMUnavailableError",
    "LlamaCppLLM",
    "MiniLMEmbedder",
    "OpenAILLM",
    "SPECS",
    "UnsupportedOperationError",
    "checked",
    "default_cache_path",
    "load",
]

SPECS = ("embedded", "minilm", "llamacpp:<path.gguf>", "hf:<model id or path>", "openai:<model>")
"""The forms `load` accepts."""

_LAZY = {
    "LlamaCppLLM": "llmrl.llm.llamacpp",
    "HFLLM": "llmrl.llm.hf",
    "OpenAILLM": "llmrl.llm.openai",
    "MiniLMEmbedder": "llmrl.llm.embed",
}


def __getattr__(attr: str) -> Any:
    # The backend classes live in modules that import heavy libraries; load them on first use.
    if attr in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[attr]), attr)
    raise AttributeError(f"module 'llmrl.llm' has no attribute {attr!r}")


def _split(spec: str) -> tuple[str, str]:
    kind, _, arg = spec.partition(":")
    if kind in ("embedded", "minilm") and not arg:
        return kind, ""
    if kind in ("llamacpp", "hf", "openai") and arg:
        return kind, arg
    raise ConfigError(f"unknown LLM spec {spec!r}; valid forms are {', '.join(repr(s) for s in SPECS)}")


def _build(kind: str, arg: str, kwargs: dict[str, Any]) -> Any:
    if kind == "embedded":
        from llmrl.llm.llamacpp import LlamaCppLLM

        return LlamaCppLLM.embedded(**kwargs)
    if kind == "llamacpp":
        from llmrl.llm.llamacpp import LlamaCppLLM

        return LlamaCppLLM(arg, **kwargs)
    if kind == "hf":
        from llmrl.llm.hf import HFLLM

        return HFLLM(arg, **kwargs)
    if kind == "openai":
        from llmrl.llm.openai import OpenAILLM

        return OpenAILLM(arg, **kwargs)
    from llmrl.llm.embed import MiniLMEmbedder

    return MiniLMEmbedder(**kwargs)


def _recorded_identity(kind: str, arg: str, kwargs: dict[str, Any]) -> tuple[str, frozenset[str]]:
    """Name and capabilities of a backend without loading it (replay-only runs never need the model)."""
    if kind == "embedded":
        from llmrl.llm.llamacpp import EMBEDDED_NAME

        return EMBEDDED_NAME, frozenset({"generate", "score", "embed", "features"})
    if kind == "llamacpp":
        from llmrl.llm.llamacpp import name_for

        caps = {"generate", "score", "features"} | ({"embed"} if kwargs.get("embedder") else set())
        return name_for(arg), frozenset(caps)
    if kind == "minilm":
        from llmrl.llm.embed import MINILM_NAME

        return MINILM_NAME, frozenset({"embed"})
    return f"{kind}:{arg}", frozenset(CAPABILITIES)


def load(
    spec: str | LLM,
    *,
    require: Iterable[str] = (),
    cache: LLMCache | str | Path | bool | None = None,
    replay: bool = False,
    budget: Budget | None = None,
    fallback: LLM | str | None = None,
    lazy: bool = False,
    **backend_kwargs: Any,
) -> LLM:
    """Build the backend named by `spec` and check it can do everything in `require`.

    spec: "embedded" (Gemma 3 270M GGUF on llama.cpp, with MiniLM for embed), "minilm" (sentence
        embedder alone), "llamacpp:<path.gguf>", "hf:<model id or path>", "openai:<model>"
        (base_url= / api_key= or $OPENAI_BASE_URL / $OPENAI_API_KEY), or an LLM object to wrap.
    require: capabilities the caller needs ("generate", "score", "embed", "features", "images");
        a missing one raises UnsupportedOperationError now, naming a backend that has it.
    cache: a path to a persistent SQLite cache, True for `default_cache_path()`, ":memory:", or an
        LLMCache; None or False: no cache. The backend is always wrapped in CachedLLM, which checks
        every answer (count, shape, finite values) and counts calls, tokens and seconds.
    replay: answer from the cache only (the model is not even loaded); a miss raises CacheMissError.
    budget: limits on model calls / tokens / seconds; fallback: an LLM (or spec) answering once spent.
    lazy: build the backend (load the model, reach the server) only when a cache miss needs it, so a
        cached answer needs neither; a miss that cannot reach it is one LLMUnavailableError line. Name
        and capabilities come from the spec, as with replay.
    backend_kwargs: passed to the backend's constructor (e.g. n_threads=, device=, timeout=).
    """
    require = tuple(require)
    if replay and cache in (None, False, ":memory:"):
        raise ConfigError(
            "replay=True needs the cache recorded earlier: pass cache=<path to its .sqlite file>"
        )
    if isinstance(spec, str):
        kind, arg = _split(spec)
        if replay or lazy:
            name, caps = _recorded_identity(kind, arg, backend_kwargs)
            check_capabilities(name, caps, require)
            backend = None
        else:
            backend = _build(kind, arg, backend_kwargs)
            name, caps = backend.name, backend.capabilities
    elif isinstance(spec, LLM):
        if backend_kwargs:
            raise ConfigError(f"backend options {sorted(backend_kwargs)} only apply when spec is a string")
        backend, name, caps = spec, spec.name, spec.capabilities
    else:
        raise ConfigError(
            f"spec must be a string ({', '.join(SPECS)}) or an LLM object, not {type(spec).__name__}"
        )
    check_capabilities(name, caps, require)
    if isinstance(spec, CachedLLM) and cache is None and not replay and budget is None and fallback is None:
        return spec  # already checked and counted
    if isinstance(fallback, str):
        fallback = load(fallback, require=require)
    # Always through CachedLLM: it is where every answer is checked (count, shape, finite values);
    # without a cache it stores nothing.
    return CachedLLM(
        backend,
        # no cache options at all: store nothing; with a budget or fallback: a cache in memory, as before
        cache=(False if budget is None and fallback is None else ":memory:") if cache is None else cache,
        replay=replay,
        budget=budget,
        fallback=fallback,
        name=name,
        capabilities=caps,
        connect=(lambda: _build(kind, arg, backend_kwargs)) if lazy and isinstance(spec, str) else None,
    )
