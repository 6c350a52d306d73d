"""How much a busy neighbour process slows training, with torch's default threads and with llmrl's.

    python benchmarks/threads.py              # PPO CartPole, 4,096 steps, 3 repeats per cell
    python benchmarks/threads.py --repeats 5

Each cell runs in a fresh process (torch's thread pool is set once per process): PPO on CartPole-v1 for
4,096 steps, timed around `learn()`. "alone": nothing else started by this script; "busy neighbour":
one more process doing what a second seed would, a torch matmul loop with torch's default threads.
The ratio busy / alone is what the issue measured (34x with the default on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TRAIN = """
import sys, time, torch
if sys.argv[1] != "llmrl":
    torch.set_num_threads(int(sys.argv[1]))          # what a caller could force
import llmrl
from llmrl import PPO
agent = PPO(llmrl.make("CartPole-v1"), seed=0)
if sys.argv[1] != "llmrl":
    agent._train_threads = lambda: torch.get_num_threads()   # keep the forced count during learn()
t0 = time.perf_counter()
agent.learn(4096, progress_bar=False)
print(time.perf_counter() - t0)
"""

NEIGHBOUR = """
import os, torch
parent = os.getppid()
a = torch.randn(256, 256)
while os.getppid() == parent:  # ends with this script, even if it is killed
    a = torch.tanh(a @ a)
"""


def run_once(threads: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LLMRL_THREADS", None)
    out = subprocess.run([sys.executable, "-c", TRAIN, threads], env=env, capture_output=True, text=True,
                         timeout=600, check=True)  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["default", "llmrl"], help="run one of the two settings")
    args = ap.parse_args()
    import torch

    cores = os.cpu_count() or 1
    settings = [(str(torch.get_num_threads()), "torch default"), ("llmrl", "llmrl default (learn())")]
    print(
        f"# machine: {platform.machine()}, {cores} CPUs, Python {platform.python_version()}, torch {torch.__version__}"
    )
    print("| threads | alone (s, median) | busy neighbour (s, median) | slowdown |")
    print("|---|---:|---:|---:|")
    if args.only:
        settings = [settings[0] if args.only == "default" else settings[1]]
    for threads, label in settings:
        alone = statistics.median(run_once(threads) for _ in range(args.repeats))
        neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR])
        try:
            time.sleep(2.0)  # let it reach its loop
            busy = statistics.median(run_once(threads) for _ in range(args.repeats))
        finally:
            neighbour.kill()
            neighbour.wait()
        print(f"| {label} ({threads}) | {alone:.2f} | {busy:.2f} | {busy / alone:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
