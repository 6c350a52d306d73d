"""What each LLM operation costs with the embedded model on this machine.

    python benchmarks/llm_ops.py [--quick]

ms per generate (30 tokens), per score (1 prompt x 6 continuations: shared prefix vs naive full
re-evaluation of prompt + continuation each time), per embed (MiniLM, 8 sentences), per cached call.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    reps = 2 if args.quick else 5
    llm = load("embedded")
    n_prompt = len(llm.tokenize(PROMPT))

    def score_naive() -> None:
        for c in CONTS:  # a fresh prompt each time: nothing shared
            llm._prefix, llm._prefix_logits = [], None
            llm.score(PROMPT, [c])

    def score_shared() -> None:
        llm._prefix, llm._prefix_logits = [], None  # the prompt is decoded once inside the call
        llm.score(PROMPT, CONTS)

    rows = []
    gen = timeit(lambda: llm.generate([PROMPT], max_tokens=30, stop=None), reps)
    rows.append(("generate, 30 tokens", gen, ""))
    one = timeit(lambda: (setattr(llm, "_prefix", []), llm.score(PROMPT, [" key"])), reps)
    rows.append((f"score, {n_prompt}-token prompt + 1 continuation", one, ""))
    naive = timeit(score_naive, reps)
    shared = timeit(score_shared, reps)
    rows.append(("score 1x6, naive (prompt re-evaluated per continuation)", naive, "1.00x"))
    rows.append(("score 1x6, shared prefix, continuations batched", shared, f"{naive / shared:.2f}x faster"))
    again = timeit(lambda: llm.score(PROMPT, CONTS), reps)
    rows.append(
        ("score 1x6, same prompt again (prefix kept in KV cache)", again, f"{naive / again:.2f}x faster")
    )
    feats = timeit(lambda: llm.features([PROMPT + " state 1", PROMPT + " state 2"]), reps)
    rows.append(("features (hidden), 2 prompts", feats, ""))
    texts = [f"the agent picked up key number {i}" for i in range(8)]
    emb = timeit(lambda: llm.embed(texts), reps)
    rows.append(("embed (MiniLM), 8 sentences", emb, ""))
    with tempfile.TemporaryDirectory() as d:
        cached = load(llm, cache=os.path.join(d, "c.sqlite"))
        cached.score(PROMPT, CONTS)
        hit = timeit(lambda: cached.score(PROMPT, CONTS), reps * 20)
        rows.append(("cached call (score 1x6, SQLite hit)", hit, f"{shared / hit:.0f}x faster than a miss"))

    import llama_cpp
    import torch

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"llama.cpp threads {llm.n_threads}; llama-cpp-python {llama_cpp.__version__}, torch {torch.__version__}; "
        f"reps {reps}; model {llm.name}"
    )
    print("\n| operation | ms | ratio |\n| --- | ---: | --- |")
    for name, ms, ratio in rows:
        print(f"| {name} | {ms:.1f} | {ratio} |")
    print(
        f"\nprompt tokens: {n_prompt}; score values (shared): {np.round(llm.score(PROMPT, CONTS), 2).tolist()}"
    )


if __name__ == "__main__":
    main()
