"""What each LLM operation costs with the embedded model on this machine.

    python benchmarks/llm_ops.py [--quick]

ms per generate (30 tokens), per score (1 prompt x 6 continuations: shared prefix vs naive full
re-evaluation of prompt + continuation each time), per features call, per embed (MiniLM, 8 sentences),
per cached call; the llama.cpp operations side by side with the default buffer setting (extra buffer
types where the self-check allows them) and with plain CPU buffers (the fallback on AMX CPUs), and the
cost of the one-time self-check.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from llmrl.llm import load  # noqa: E402

PROMPT = (
    "You are an agent in a grid world. The goal is the green square; lava kills you. "
    "You see a yellow key two steps left and a locked door ahead. The best next sub-goal is to"
)
CONTS = [" pick up the key", " open the door", " go to the goal", " avoid the lava", " explore", " wait"]


def timeit(fn, reps: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1000


def operations(llm) -> list[tuple[str, object]]:
    """(name, call) for the llama.cpp operations of one backend."""
    n_prompt = len(llm.tokenize(PROMPT))

    def fresh() -> None:  # forget the prefix kept in the KV cache
        llm._prefix, llm._prefix_logits = [], None

    def score_naive() -> None:
        for c in CONTS:  # a fresh prompt each time: nothing shared
            fresh()
            llm.score(PROMPT, [c])

    return [
        ("generate, 30 tokens", lambda: llm.generate([PROMPT], max_tokens=30, stop=None)),
        (f"score, {n_prompt}-token prompt + 1 continuation", lambda: (fresh(), llm.score(PROMPT, [" key"]))),
        ("score 1x6, naive (prompt re-evaluated per continuation)", score_naive),
        ("score 1x6, shared prefix, continuations batched", lambda: (fresh(), llm.score(PROMPT, CONTS))),
        ("score 1x6, same prompt again (prefix kept in KV cache)", lambda: llm.score(PROMPT, CONTS)),
        ("features (hidden), 2 prompts", lambda: llm.features([PROMPT + " state 1", PROMPT + " state 2"])),
    ]


def side_by_side(a, b, reps: int) -> list[tuple[str, float, float]]:
    """Median ms of each operation on backends a and b, timed alternately (a, b, a, b, ...) so that a
    machine whose speed drifts affects both alike."""
    rows = []
    for (name, fa), (_, fb) in zip(operations(a), operations(b)):
        fa(), fb()  # warm-up
        ta, tb = [], []
        for _ in range(reps):
            for fn, out in ((fa, ta), (fb, tb)):
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1000)
        rows.append((name, float(np.median(ta)), float(np.median(tb))))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    reps = 3 if args.quick else 9
    from llmrl.llm import selfcheck
    from llmrl.llm.llamacpp import LlamaCppLLM, embedded_gguf_path

    # The one-time self-check (a child process per setting it tries), as a first use on a machine pays it.
    t0 = time.perf_counter()
    fast = selfcheck.probe(embedded_gguf_path(), extra_buffers=True)
    check_s = time.perf_counter() - t0
    llm = LlamaCppLLM.embedded()  # the default: extra buffers where the self-check allows them (the bare
    # backend, not load()'s checked wrapper, so that the naive rows can reset its prefix)
    plain = LlamaCppLLM.embedded(extra_buffers=False)  # always-safe plain CPU buffers

    # llama.cpp's extra buffer types (repacked weights; AMX where present) vs plain buffers, side by side
    rows = side_by_side(llm, plain, reps)
    texts = [f"the agent picked up key number {i}" for i in range(8)]
    emb = timeit(lambda: llm.embed(texts), reps)
    with tempfile.TemporaryDirectory() as d:
        cached = load(llm, cache=os.path.join(d, "c.sqlite"))
        cached.score(PROMPT, CONTS)
        hit = timeit(lambda: cached.score(PROMPT, CONTS), reps * 20)

    import llama_cpp
    import torch

    print(
        f"machine: {platform.processor() or platform.machine()} ({selfcheck._cpu_signature()}), "
        f"{os.cpu_count()} cores, llama.cpp threads {llm.n_threads}; llama-cpp-python {llama_cpp.__version__}, "
        f"torch {torch.__version__}; medians of {reps} alternating repetitions; model {llm.name}"
    )
    print(
        f"self-check (one child, extra buffers): {check_s * 1000:.0f} ms, {'passed' if fast.ok else 'FAILED'}; "
        f"default backend uses extra buffers: {llm.extra_buffers}"
    )
    default = {name: ms for name, ms, _ in rows}
    naive = default["score 1x6, naive (prompt re-evaluated per continuation)"]
    print("\n| operation | ms, default | ms, plain buffers | plain / default | default vs naive score |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, ms, ms_plain in rows:
        vs_naive = f"{naive / ms:.2f}x faster" if name.startswith("score 1x6, s") else ""
        print(f"| {name} | {ms:.1f} | {ms_plain:.1f} | {ms_plain / ms:.2f} | {vs_naive} |")
    print(f"| embed (MiniLM), 8 sentences | {emb:.1f} | | | |")
    shared = default["score 1x6, shared prefix, continuations batched"]
    print(f"| cached call (score 1x6, SQLite hit) | {hit:.2f} | | | {shared / hit:.0f}x faster than a miss |")
    print(
        f"\nprompt tokens: {len(llm.tokenize(PROMPT))}; score values (default): "
        f"{np.round(llm.score(PROMPT, CONTS), 2).tolist()}, (plain): {np.round(plain.score(PROMPT, CONTS), 2).tolist()}"
    )


if __name__ == "__main__":
    main()
