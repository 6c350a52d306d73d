"""Does llmrl.distributed scale, what does Ray cost, and do runs survive faults?

One local Ray, one run, side by side:

1. Batching across workers: N = 1, 2, 4, 8 rollout workers, each a 4-env CartPole whose role
   (`LLMFeatures`, no memo: one LLM call per vector step) calls one `LLMServer` holding a stand-in model
   with a fixed 50 ms latency per call whatever the batch (what a GPU server looks like to a client).
   Rollout throughput (env steps/s while collecting) against N x the one-worker rate, and backend calls
   per env step (falls as 1/N when the server merges every worker's call into one).
2. Overhead of Ray: the same PPO run in-process and with one rollout worker on Ray (learn() time, Ray
   started and workers up beforehand), CartPole PPO and Grid PPO with LLMFeatures from the embedded model
   (in-process backend vs the same backend in the server actor). Repeated, interleaved; median ratio.
3. Faults: a 2-worker run on CartPole + LLMFeatures (stand-in model, persistent cache) while a thread
   kills random workers and the LLM server actor; counts of kills and restarts, whether every iteration
   still merged exactly one chunk per worker, the step accounting, and the cache never shrinking.

    python benchmarks/distributed.py            # full run (~10 min on 2 busy cores)
    python benchmarks/distributed.py --quick    # short run
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata as md
import os
import platform
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

import llmrl
import llmrl.llm
from llmrl import distributed as dist
from llmrl.distributed import DistributedPPO, FixedLatencyLLM, LLMServer
from llmrl.envs import WithText
from llmrl.llm import LLMCache
from llmrl.roles.features import LLMFeatures

GRID_PROMPT = "Please tell me in 200 characters where the cat should move next."


def cartpole_llm_env(llm: Any, num_envs: int = 4) -> Any:
    """CartPole in words + LLM features, one LLM call per vector step (no memo, no on_change)."""
    return LLMFeatures(
        WithText(llmrl.make("CartPole-v1", num_envs=num_envs)), llm, memo_size=0, on_change=False
    )


def grid_llm_env(llm: Any) -> Any:
    """The grid-features preset's env: Grid in words + the LLM's hidden-state features."""
    return LLMFeatures(WithText(llmrl.make("llmrl/Grid-v0", num_envs=4)), llm, prompt=GRID_PROMPT)


# -- 1. batching across workers --------------------------------------------------------------------------


def batching(ns: list[int], n_steps: int, iters: int) -> list[dict[str, float]]:
    server = LLMServer(lambda: FixedLatencyLLM(0.05, dim=16), cache=None, num_cpus=0)
    llm = server.client()
    rows = []
    try:
        for n in ns:
            trainer = DistributedPPO(lambda: cartpole_llm_env(llm), workers=n, worker_cpus=1.6 / max(ns),
                                     n_steps=n_steps, batch_size=256, n_epochs=1)  # fmt: skip
            try:
                trainer.learn(1, progress_bar=False)  # warm-up iteration
                s0, a0 = server.stats(), trainer.agent.num_timesteps
                hist: list[dict[str, float]] = []
                t0 = time.perf_counter()
                trainer.learn(10**9, progress_bar=False,
                              callback=lambda a, m, h=hist: h.append(m) or len(h) < iters)  # fmt: skip
                wall = time.perf_counter() - t0
                s1, steps = server.stats(), trainer.agent.num_timesteps - a0
                rollout_s = sum(m["ray/rollout_s"] for m in hist)
                rows.append({
                    "workers": n,
                    "load_avg_1min": os.getloadavg()[0],  # other jobs on the machine compete for its cores
                    "rollout_steps_per_s": sum(m["ray/rows"] for m in hist) / rollout_s,
                    "end_to_end_steps_per_s": steps / wall,
                    "backend_calls_per_step": (s1["server/backend_calls"] - s0["server/backend_calls"]) / steps,
                    "requests_per_backend_call": (s1["server/requests"] - s0["server/requests"])
                    / max(1.0, s1["server/backend_calls"] - s0["server/backend_calls"]),
                    "ray_overhead_s": statistics.mean(m["ray/overhead_s"] for m in hist),
                    # CPU one worker spends per vector step of its 4 envs (env, roles, policy, Ray calls)
                    "worker_cpu_ms_per_vector_step": 1e3 * sum(m["ray/worker_cpu_s"] for m in hist)
                    / (sum(m["ray/rows"] for m in hist) / 4),
                })  # fmt: skip
            finally:
                trainer.close()
    finally:
        server.close()
    base = rows[0]["rollout_steps_per_s"]
    for r in rows:
        r["speedup"] = r["rollout_steps_per_s"] / base
        r["target_0.8N"] = 0.8 * r["workers"]
    return rows


# -- 2. overhead: one worker on Ray vs in-process --------------------------------------------------------


def overhead(total_cartpole: int, total_grid: int, repeats: int) -> list[dict[str, Any]]:
    cfg_cp = dict(n_steps=256, batch_size=256, n_epochs=4)
    cfg_grid = dict(n_steps=128, batch_size=128, n_epochs=4)
    out = []

    def time_local(make_env, cfg, total):
        agent = llmrl.PPO(make_env(), seed=0, **cfg)
        t0 = time.perf_counter()
        agent.learn(total, progress_bar=False)
        return time.perf_counter() - t0, agent.num_timesteps

    def time_ray(make_env, cfg, total, parts):
        trainer = DistributedPPO(make_env, workers=1, worker_cpus=1, seed=0, **cfg)
        try:
            t0 = time.perf_counter()
            agent = trainer.learn(total, progress_bar=False, callback=lambda a, m: parts.append(m))
            return time.perf_counter() - t0, agent.num_timesteps
        finally:
            trainer.close()

    cases: list[tuple[str, Any, Any, dict, int]] = [
        ("CartPole PPO", lambda: llmrl.make("CartPole-v1", num_envs=4), None, cfg_cp, total_cartpole),
    ]
    local_llm = llmrl.llm.load("embedded")
    server = LLMServer("embedded", cache=None, num_cpus=0)
    remote_llm = server.client()
    cases.append(("Grid PPO + LLMFeatures (embedded)", lambda: grid_llm_env(local_llm),
                  lambda: grid_llm_env(remote_llm), cfg_grid, total_grid))  # fmt: skip
    try:
        for name, make_local, make_remote, cfg, total in cases:
            time_local(make_local, cfg, total // 8)  # warm-up: first-call costs of torch and the model
            t_local, t_ray, parts = [], [], []
            for _ in range(repeats):
                a, steps_a = time_local(make_local, cfg, total)
                b, steps_b = time_ray(make_remote or make_local, cfg, total, parts)
                t_local.append(a / steps_a)
                t_ray.append(b / steps_b)
            # the machine is shared: the fastest of the repeats is the least disturbed measurement
            out.append({
                "run": name, "steps": total, "repeats": repeats,
                "local_us_per_step_best": 1e6 * min(t_local), "ray_us_per_step_best": 1e6 * min(t_ray),
                "overhead_best": min(t_ray) / min(t_local) - 1,
                "overhead_median": statistics.median(t_ray) / statistics.median(t_local) - 1,
                # where a Ray step's time goes (means over all iterations): the worker's rollout, Ray's
                # calls and transfers, the learner's update
                "worker_us_per_row": 1e6 * sum(m["ray/worker_s"] for m in parts) / sum(m["ray/rows"] for m in parts),
                "ray_us_per_row": 1e6 * sum(m["ray/overhead_s"] for m in parts) / sum(m["ray/rows"] for m in parts),
                "learner_us_per_row": 1e6 * sum(m["ray/train_s"] for m in parts) / sum(m["ray/rows"] for m in parts),
            })  # fmt: skip
    finally:
        server.close()
        local_llm.close()
    return out


# -- 3. faults ------------------------------------------------------------------------------------------


def faults(iters: int, seed: int = 0) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp())
    cache_path = tmp / "llm.sqlite"
    server = LLMServer(lambda: FixedLatencyLLM(0.005, dim=16), cache=cache_path, num_cpus=0)
    llm = server.client()
    n_steps, workers, envs = 64, 2, 4
    trainer = DistributedPPO(lambda: cartpole_llm_env(llm, envs), workers=workers, worker_cpus=0.5, seed=seed,
                             n_steps=n_steps, batch_size=256, n_epochs=2)  # fmt: skip
    counts = {"worker_kills": 0, "server_kills": 0, "cache_shrank": 0}
    rng = random.Random(seed)
    timers: list[threading.Timer] = []

    def kill_worker() -> None:
        ray.kill(rng.choice(trainer.workers), no_restart=True)
        counts["worker_kills"] += 1

    def kill_server() -> None:
        before, started = len(LLMCache(cache_path)), server.stats()["server/started"]
        server.kill()
        counts["server_kills"] += 1
        while server.stats()["server/started"] == started:  # the kill lands a moment later; then a restart
            time.sleep(0.05)
        counts["cache_shrank"] += len(LLMCache(cache_path)) < before

    def schedule(agent: Any, metrics: dict[str, float]) -> None:
        """After each iteration, a kill at a random moment of the next rollout: workers and server in turn."""
        hist.append(metrics)
        if agent.num_timesteps >= total:  # the last iteration: no rollout follows
            return
        kill = kill_worker if len(hist) % 2 else kill_server
        timer = threading.Timer(rng.uniform(0.1, 0.6) * metrics["ray/rollout_s"], kill)
        timer.start()
        timers.append(timer)

    import ray

    hist: list[dict[str, float]] = []
    try:
        trainer.learn(1, progress_bar=False)  # workers warm
        start = trainer.agent.num_timesteps
        per_iter = n_steps * workers * envs
        total = start + (iters - 1) * per_iter + 1
        trainer.learn(total, progress_bar=False, run_dir=tmp / "run",
                      callback=schedule)  # fmt: skip
        for t in timers:
            t.cancel()
            if t.is_alive():
                t.join()
        with open(tmp / "run" / "episodes.csv", newline="") as f:
            ended = len(list(csv.DictReader(f)))
        steps = trainer.agent.num_timesteps - start
        rows = sum(m["ray/rows"] for m in hist)
        return {
            "iterations": len(hist),
            **counts,
            "worker_restarts_seen": trainer.faults.worker_restarts,
            "one_chunk_per_worker_every_iteration": all(m["ray/chunks"] == workers for m in hist),
            "rows_per_iteration_exact": all(m["ray/rows"] == per_iter for m in hist),
            # steps = rows less one reset step per ended episode (a few of the last may fall after the run)
            "step_accounting_ok": rows - ended <= steps <= rows - ended + workers * envs + envs,
            "steps": steps,
            "cache_entries": len(LLMCache(cache_path)),
        }
    finally:
        trainer.close()
        server.close()


def md_table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a short run")
    ap.add_argument("--parts", default="1,2,3", help="which parts to run, e.g. 1,3")
    args = ap.parse_args()
    torch.set_num_threads(1)
    parts = {int(p) for p in args.parts.split(",")}
    q = args.quick
    print(f"# llmrl.distributed benchmark ({'quick' if q else 'full'})")
    print(f"ray {md.version('ray')}, torch {torch.__version__}, gymnasium {gym.__version__}, "
          f"python {platform.python_version()}, {platform.machine()}")  # fmt: skip
    t0 = time.perf_counter()
    dist.init(num_cpus=2)
    print(f"local Ray started in {time.perf_counter() - t0:.1f} s")
    try:
        if 1 in parts:
            rows = batching([1, 2, 4, 8], n_steps=16 if q else 32, iters=2 if q else 3)
            print("\n## 1. Batching across workers (stand-in LLM, 50 ms per call)\n")
            print(md_table(rows))
        if 2 in parts:
            rows = overhead(8_192 if q else 32_768, 1_024 if q else 4_096, repeats=1 if q else 5)
            print("\n## 2. Overhead: one Ray worker vs in-process\n")
            print(md_table(rows))
        if 3 in parts:
            res = faults(iters=6 if q else 16)
            print("\n## 3. Faults\n")
            print(md_table([res]))
    finally:
        dist.shutdown()


if __name__ == "__main__":
    main()
