"""Cost control for any backend, in one place: persistent cache, record/replay, budgets, counters.

    llm = CachedLLM(backend, cache="runs/llm.sqlite", budget=Budget(calls=10_000))
    llm.generate(["Q: 2+2? A:"])    # a miss: reaches the model, stored
    llm.generate(["Q: 2+2? A:"])    # a hit: from SQLite, no model call

Every input of a batched call is looked up by its own key (a SHA-256 of backend name and model,
operation, parameters, and the input, an image by the hash of its pixels); only the misses go to the
model, in one batch. The store is SQLite in WAL mode, so several processes (vector-env workers, Ray
actors, a rerun) may read and write one file at once. `replay=True` never calls the model: a miss
raises `CacheMissError`, so a rerun from a recorded cache is deterministic without the model.
Generations at temperature > 0 are cached too (that is what makes a replay deterministic).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from llmrl.errors import ConfigError, LLMRLError
from llmrl.llm.base import (
    LLM,
    BudgetExceededError,
    CacheMissError,
    CallStats,
    Image,
    LLMCacheError,
    LLMOutputError,
    LLMUnavailableError,
)
from llmrl.llm.common import check_feature_args, check_images, image_digest, output_problem

__all__ = ["Budget", "LLMCache", "CachedLLM", "checked", "default_cache_path"]


def default_cache_path() -> Path:
    """`$LLMRL_CACHE_DIR/llm.sqlite`, else `~/.cache/llmrl/llm.sqlite`."""
    root = os.environ.get("LLMRL_CACHE_DIR") or Path.home() / ".cache" / "llmrl"
    return Path(root) / "llm.sqlite"


@dataclass(frozen=True)
class Budget:
    """Limits on what reaches the model (cache hits are free). None means no limit."""

    calls: int | None = None
    """Inputs sent to the model (cache misses), summed over all operations."""
    tokens: int | None = None
    """Tokens the model processed or produced."""
    seconds: float | None = None
    """Wall time spent in the model."""

    def __post_init__(self) -> None:
        for field in ("calls", "tokens", "seconds"):
            value = getattr(self, field)
            if value is not None and value < 0:
                raise ConfigError(f"Budget.{field} must be >= 0 or None (no limit), not {value}")

    def exceeded(self, stats: CallStats, n_new: int) -> str | None:
        """Why sending `n_new` more inputs would break the budget, or None if it would not."""
        if self.calls is not None and stats.misses + n_new > self.calls:
            return f"calls: {stats.misses} used + {n_new} asked > {self.calls}"
        if self.tokens is not None and stats.tokens >= self.tokens:
            return f"tokens: {stats.tokens} used >= {self.tokens}"
        if self.seconds is not None and stats.seconds >= self.seconds:
            return f"seconds: {stats.seconds:.1f} used >= {self.seconds}"
        return None


class LLMCache:
    """A key → bytes store in SQLite (WAL mode), safe for several threads and processes.

    `LLMCache(":memory:")` keeps it in this process only.
    """

    def __init__(self, path: str | Path | None = None, *, timeout: float = 60.0):
        self.path = str(path) if path is not None else str(default_cache_path())
        self.timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._memory_conn: sqlite3.Connection | None = None
        with self._errors():
            if self.path != ":memory:":
                Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self._conn()  # create the table now: a bad path fails at construction

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Raw sqlite errors as one LLMCacheError that names the file and the fix."""
        try:
            yield
        except (sqlite3.Error, OSError) as err:
            if "locked" in str(err) or "busy" in str(err):
                fix = f"another process held it for over {self.timeout:.0f} s; retry or pass another cache="
            elif "readonly" in str(err) or "unable to open" in str(err):
                fix = "make it writable or pass another cache="
            else:
                fix = "it is only a cache: delete it (answers are asked of the model again) or pass another cache="
            raise LLMCacheError(f"LLM cache {self.path} failed: {err}; {fix}") from err

    def __repr__(self) -> str:
        return f"LLMCache({self.path!r})"

    def _conn(self) -> sqlite3.Connection:
        # One connection per thread and per process (a forked child must not reuse its parent's).
        if self.path == ":memory:":
            if self._memory_conn is None:
                self._memory_conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
                self._setup(self._memory_conn)
            return self._memory_conn
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = sqlite3.connect(os.path.expanduser(self.path), timeout=self.timeout, isolation_level=None)
            self._setup(conn)
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        if self.path != ":memory:":
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS llm_calls ("
            " key TEXT PRIMARY KEY, model TEXT, op TEXT, value BLOB, created REAL)"
        )

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The stored values of those keys that are present."""
        found: dict[str, bytes] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock, self._errors():
            conn = self._conn()
            for i in range(0, len(unique), 500):  # SQLite caps the number of bound parameters
                chunk = unique[i : i + 500]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(f"SELECT key, value FROM llm_calls WHERE key IN ({marks})", chunk)
                found.update((k, bytes(v)) for k, v in rows)
        return found

    def put_many(self, items: Sequence[tuple[str, str, str, bytes]]) -> None:
        """Store (key, model, op, value) rows in one transaction (last writer wins on a key)."""
        if not items:
            return
        now = time.time()
        with self._lock, self._errors():
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT OR REPLACE INTO llm_calls (key, model, op, value, created) VALUES (?, ?, ?, ?, ?)",
                    [(k, m, op, sqlite3.Binary(v), now) for k, m, op, v in items],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def __len__(self) -> int:
        with self._lock, self._errors():
            return int(self._conn().execute("SELECT COUNT(*) FROM llm_calls").fetchone()[0])

    def clear(self) -> None:
        with self._lock, self._errors():
            self._conn().execute("DELETE FROM llm_calls")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        if self._memory_conn is not None:
            self._memory_conn.close()
            self._memory_conn = None


# -- encoding of values (no pickle: plain bytes that any reader can decode) --------------------


def _decode(decode: Callable[[bytes], Any], blob: bytes) -> Any:
    """A stored value, or None when its bytes are damaged."""
    try:
        return decode(blob)
    except (ValueError, IndexError, UnicodeDecodeError):
        return None


def _enc_text(v: str) -> bytes:
    return v.encode("utf-8")


def _dec_text(b: bytes) -> str:
    return b.decode("utf-8")


def _enc_float(v: float) -> bytes:
    return np.float64(v).tobytes()


def _dec_float(b: bytes) -> float:
    return float(np.frombuffer(b, dtype=np.float64)[0])


def _enc_vec(v: np.ndarray) -> bytes:
    return np.ascontiguousarray(v, dtype=np.float32).tobytes()


def _dec_vec(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype=np.float32).copy()


class CachedLLM:
    """Wraps any LLM (the protocol in `llm/base.py`) with cache, replay, budget and counters.

    backend: the model; may be None when `replay=True` or `connect` is given (then `name` and
        `capabilities` are needed).
    cache: an LLMCache, a path to its SQLite file, ":memory:", None for ":memory:", or False for no
        store at all (answers are still checked and counted: what `llmrl.llm.load` gives without a cache).
    replay: never call the model; a cache miss raises CacheMissError.
    budget: limits on model calls, tokens and seconds (cache hits are free).
    fallback: an LLM that answers the misses once the budget is spent (its answers are not cached);
        without one, a spent budget raises BudgetExceededError.
    connect: builds the backend at the first miss (with backend=None): answers in the cache then need
        no model and no server; a miss whose backend cannot be built is one LLMUnavailableError line.
    """

    def __init__(
        self,
        backend: LLM | None,
        *,
        cache: LLMCache | str | Path | bool | None = None,
        replay: bool = False,
        budget: Budget | None = None,
        fallback: LLM | None = None,
        name: str | None = None,
        capabilities: frozenset[str] | None = None,
        connect: Callable[[], LLM] | None = None,
    ):
        if backend is None and not replay and connect is None:
            raise ConfigError("CachedLLM needs a backend unless replay=True or connect= builds it")
        if backend is None and (name is None or capabilities is None):
            raise ConfigError(
                "CachedLLM(None, replay=True or connect=...) needs name= and capabilities= of the "
                "recorded model"
            )
        self.backend = backend
        self.connect = connect
        self.name: str = name if name is not None else backend.name  # type: ignore[union-attr]
        self.capabilities: frozenset[str] = (
            capabilities if capabilities is not None else backend.capabilities  # type: ignore[union-attr]
        )
        if cache is False and replay:
            raise ConfigError(
                "replay=True needs a cache to replay from; pass cache=<path to its .sqlite file>"
            )
        if cache is True:
            cache = default_cache_path()
        self.cache: LLMCache | None = (
            None
            if cache is False
            else cache
            if isinstance(cache, LLMCache)
            else LLMCache(cache if cache is not None else ":memory:")
        )
        self.replay = replay
        self.budget = budget
        self.fallback = fallback
        self.stats = CallStats()

    def __repr__(self) -> str:
        where = self.cache.path if self.cache is not None else None
        return f"<CachedLLM {self.name} cache={where!r} replay={self.replay} budget={self.budget}>"

    def __getattr__(self, attr: str) -> Any:
        # Backend-specific extras (e.g. the hf backend's `module` and `tokenizer`) stay reachable; in lazy
        # mode asking for one builds the backend (a role that trains through the model needs it itself).
        backend = self.__dict__.get("backend")
        if backend is None:
            connect = self.__dict__.get("connect")
            if connect is None or attr.startswith("__"):
                raise AttributeError(attr)
            backend = self.backend = connect()
        return getattr(backend, attr)

    # -- the mechanism shared by every operation ---------------------------------------------

    def _key(self, op: str, params: Any, item: Any) -> str:
        blob = json.dumps([self.name, op, params, item], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _run(
        self,
        op: str,
        keys: list[str],
        compute: Callable[[LLM, list[int]], Sequence[Any]],
        encode: Callable[[Any], bytes],
        decode: Callable[[bytes], Any],
        describe: Callable[[int], str],
    ) -> list[Any]:
        """Answer every input: hits from the cache, misses (deduplicated) in one model call.

        Every answer from a model passes `output_problem` before it is cached or returned; a bad one
        raises LLMOutputError (the good answers of the same call are cached first).
        """
        stored = self.cache.get_many(keys) if self.cache is not None else {}
        results: list[Any] = [None] * len(keys)
        first_of: dict[str, int] = {}
        for i, key in enumerate(keys):
            hit = _decode(decode, stored[key]) if key in stored else None
            if hit is not None and output_problem(op, hit) is None:
                results[i] = hit
            elif key not in first_of:  # absent, or stored damaged by an older version: ask again
                first_of[key] = i
        missing = list(first_of.values())
        self.stats.calls += len(keys)
        self.stats.hits += len(keys) - len(missing)
        if not missing:
            return results
        values, source = self._compute_misses(op, missing, compute, describe)
        problems = self._check(op, missing, list(values), results, describe, source)
        for i, key in enumerate(keys):  # duplicates of a missed input within this batch
            if results[i] is None and first_of.get(key, i) != i:
                results[i] = results[first_of[key]]
        good = [i for i in missing if i not in problems]
        if source == self.name and self.cache is not None:
            # a fallback's answers are not the model's: never cache them under its name
            self.cache.put_many([(keys[i], self.name, op, encode(results[i])) for i in good])
        if problems:
            self.stats.bad_outputs += len(problems)
            bad_keys = {keys[i] for i in problems}
            first = next(iter(problems))
            raise LLMOutputError(
                f"{source} gave a bad {op} answer for {describe(first)}: {problems[first]} "
                f"({len(problems)} of {len(missing)} answers bad; bad answers are never cached). "
                "Check the model or server; a role continues past bad answers with on_bad_output='fallback'.",
                bad=[i for i, k in enumerate(keys) if k in bad_keys],
                results=results,
            )
        return results

    def _check(
        self,
        op: str,
        missing: list[int],
        values: list[Any],
        results: list[Any],
        describe: Callable[[int], str],
        source: str,
    ) -> dict[int, str]:
        """Put the good answers into `results` (normalised types); return {input position: problem}."""
        if len(values) != len(missing):
            self.stats.bad_outputs += len(missing)
            raise LLMOutputError(
                f"{source} gave {len(values)} {op} answers for {len(missing)} inputs (first input: "
                f"{describe(missing[0])}); none was cached. Check the model or server (a proxy that drops "
                "items from a batch?); a role continues past bad answers with on_bad_output='fallback'.",
                bad=list(missing),
                results=results,
            )
        shape = None
        if op in ("embed", "features"):  # one width for all: the cached answers' first, else the most common
            shapes = [np.shape(r) for r in results if r is not None]
            shapes = shapes or [np.shape(v) for v in values if np.ndim(v) == 1]
            shape = max(set(shapes), key=shapes.count) if shapes else None
        problems: dict[int, str] = {}
        for i, v in zip(missing, values):
            problem = output_problem(op, v, shape)
            if problem is not None:
                problems[i] = problem
            elif op == "score":
                results[i] = float(v)
            elif op in ("embed", "features"):
                results[i] = np.asarray(v, dtype=np.float32)
            else:
                results[i] = v
        return problems

    def _compute_misses(
        self,
        op: str,
        missing: list[int],
        compute: Callable[[LLM, list[int]], Sequence[Any]],
        describe: Callable[[int], str],
    ) -> tuple[Sequence[Any], str]:
        """The model's answers to the missing inputs, and who gave them (the model's name or the fallback's)."""
        if self.replay:
            raise CacheMissError(
                f"replay-only run: {op} of {describe(missing[0])} on {self.name} is not in the cache "
                f"{self.cache.path if self.cache is not None else None!r} ({len(missing)} missing in this call); record it first with replay=False"
            )
        why = self.budget.exceeded(self.stats, len(missing)) if self.budget else None
        if why is not None:
            if self.fallback is None:
                raise BudgetExceededError(
                    f"LLM budget spent on {self.name} ({why}); raise the budget (budget=Budget(...)) "
                    "or pass fallback=<an LLM> to answer the rest"
                )
            self.stats.fallbacks += len(missing)
            return compute(self.fallback, missing), f"{self.fallback.name} (the fallback of {self.name})"
        if self.backend is None:
            self.backend = self._connect(op, missing, describe)
        tokens0 = self.backend.stats.tokens
        t0 = time.perf_counter()
        values = compute(self.backend, missing)
        self.stats.seconds += time.perf_counter() - t0
        self.stats.tokens += self.backend.stats.tokens - tokens0
        self.stats.misses += len(missing)
        return values, self.name

    def _connect(self, op: str, missing: list[int], describe: Callable[[int], str]) -> LLM:
        """Build the backend for the first miss (lazy mode); one line naming the miss if it cannot be."""
        assert self.connect is not None  # replay=False and no backend: __init__ checked connect
        try:
            return self.connect()
        except LLMRLError as err:
            where = self.cache.path if self.cache is not None else None
            raise LLMUnavailableError(
                f"{op} of {describe(missing[0])} is not in the cache {where!r} ({len(missing)} missing in "
                f"this call) and {self.name} could not be reached to answer it: {err}"
            ) from err

    # -- the protocol ----------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_tokens: int = 32,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        images: Sequence[Image | None] | None = None,
    ) -> list[str]:
        prompts = list(prompts)
        imgs = check_images(images, len(prompts))
        digests = [None if im is None else image_digest(im) for im in imgs]
        params = {"max_tokens": max_tokens, "temperature": temperature, "stop": list(stop or [])}
        keys = [self._key("generate", params, [p, d]) for p, d in zip(prompts, digests)]
        has_images = any(d is not None for d in digests)

        def compute(model: LLM, idx: list[int]) -> list[str]:
            return model.generate(
                [prompts[i] for i in idx],
                max_tokens=max_tokens,
                temperature=temperature,
                stop=stop,
                images=[imgs[i] for i in idx] if has_images else None,
            )

        return self._run("generate", keys, compute, _enc_text, _dec_text, lambda i: repr(prompts[i][:80]))

    def score(self, prompt: str, continuations: Sequence[str]) -> np.ndarray:
        conts = list(continuations)
        keys = [self._key("score", None, [prompt, c]) for c in conts]

        def compute(model: LLM, idx: list[int]) -> list[float]:
            # One backend call: the prompt is still evaluated once for all the missing continuations.
            return list(model.score(prompt, [conts[i] for i in idx]))  # checked and converted by _run

        out = self._run("score", keys, compute, _enc_float, _dec_float, lambda i: repr(conts[i][:80]))
        return np.asarray(out, dtype=np.float64)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        keys = [self._key("embed", None, t) for t in texts]

        def compute(model: LLM, idx: list[int]) -> list[np.ndarray]:
            return list(model.embed([texts[i] for i in idx]))  # checked and converted by _run

        out = self._run("embed", keys, compute, _enc_vec, _dec_vec, lambda i: repr(texts[i][:80]))
        return np.stack(out) if out else np.zeros((0, 0), np.float32)

    def features(
        self,
        prompts: Sequence[str],
        *,
        images: Sequence[Image | None] | None = None,
        kind: Literal["hidden", "logits"] = "hidden",
        tokens: Sequence[str] | None = None,
    ) -> np.ndarray:
        prompts = list(prompts)
        toks = check_feature_args(kind, tokens)
        imgs = check_images(images, len(prompts))
        digests = [None if im is None else image_digest(im) for im in imgs]
        params = {"kind": kind, "tokens": toks}
        keys = [self._key("features", params, [p, d]) for p, d in zip(prompts, digests)]
        has_images = any(d is not None for d in digests)

        def compute(model: LLM, idx: list[int]) -> list[np.ndarray]:
            feats = model.features(
                [prompts[i] for i in idx],
                images=[imgs[i] for i in idx] if has_images else None,
                kind=kind,
                tokens=tokens,
            )
            return list(feats)  # checked and converted by _run

        out = self._run("features", keys, compute, _enc_vec, _dec_vec, lambda i: repr(prompts[i][:80]))
        return np.stack(out) if out else np.zeros((0, 0), np.float32)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
        if self.backend is not None and hasattr(self.backend, "close"):
            self.backend.close()


def checked(llm: Any) -> Any:
    """`llm` with every answer checked (count, shape, finite values): roles call this on the model they
    are given, so a bare backend passes the same check as one from `llmrl.llm.load`. A CachedLLM (or
    None, or an object that is not an LLM: the role's own checks reject it) is returned as it is."""
    if llm is None or isinstance(llm, CachedLLM) or not isinstance(llm, LLM):
        return llm
    return CachedLLM(llm, cache=False)
