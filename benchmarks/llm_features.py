"""Is DQN + LLMFeatures fast enough to train, and do the features leave learning intact?

One run, one model (the embedded Gemma 3 270M on llama.cpp), one machine, side by side:

1. Speed (training env steps/s, DQN learning as it goes) on Grid and on Breakout (OCAtari text):
   - `dqn`: DQN without an LLM;
   - `llm-features`: DQN + `LLMFeatures` (one forward pass per *new* state, memo + persistent cache,
     batched across the vector env; on Breakout also `every=4`);
   - `naive`: the seed's method: every step generates 50 tokens from prompt + state and the next-token
     log-probs after them are the features (no cache, one env, as the seed did). It is measured on a
     few hundred steps (it runs at about one step per second) and its steps/s is the measured rate —
     steps/s is a rate, so no extrapolation beyond "the same rate holds for longer runs" is involved.
2. Learning on Grid: plain DQN vs DQN + LLMFeatures, N seeds, greedy evaluation at the end, curve PNG.

    python benchmarks/llm_features.py            # full run (~25 min on 2 busy cores)
    python benchmarks/llm_features.py --quick    # short run
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata as md
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import llmrl.llm
from llmrl.agents.dqn import DQN
from llmrl.envs import WithText, make
from llmrl.roles.base import RoleWrapper
from llmrl.roles.features import DEFAULT_TEMPLATE, DEFAULT_TOKENS, LLMFeatures

GRID_PROMPT = "Please tell me in 200 characters where the cat should move next."
BREAKOUT_PROMPT = (
    "Please tell me in 200 characters whether it is better to move the bar to the left or right."
)


class NaiveGenerateFeatures(RoleWrapper):
    """The seed's method, for comparison only: generate 50 tokens every step, use the logits after them.

    The seed took the VLM's output logits over the whole vocabulary; here the log-probs of the same
    small token set as `LLMFeatures(kind="logits")`, so both sides feed the Q-network a comparable vector
    (the cost is the 50-token generation either way).
    """

    def __init__(self, env: Any, llm: Any, prompt: str, max_tokens: int = 50):
        self.llm, self.prompt, self.max_tokens = llm, prompt, max_tokens
        self.dim = len(DEFAULT_TOKENS)
        self.calls, self.seconds = 0, 0.0
        super().__init__(env)

    def transform_space(self, space: gym.Space) -> gym.Space:
        feat = gym.spaces.Box(-np.inf, np.inf, (self.dim,), np.float32)
        return gym.spaces.Dict({"obs": space, "llm": feat})

    def process(self, obs, rewards, terminated, truncated, infos, starts):
        t0 = time.perf_counter()
        prompts = [DEFAULT_TEMPLATE.format(state=info["text"], prompt=self.prompt) for info in infos]
        answers = self.llm.generate(prompts, max_tokens=self.max_tokens)
        feats = self.llm.features(
            [p + a for p, a in zip(prompts, answers)], kind="logits", tokens=DEFAULT_TOKENS
        )
        self.calls += len(prompts)
        self.seconds += time.perf_counter() - t0
        return {"obs": obs, "llm": np.asarray(feats, np.float32)}, rewards

    def llmrl_metrics(self) -> dict[str, float]:
        return {"llm/calls": float(self.calls), "llm/seconds": self.seconds}


def timed_learn(agent: DQN, steps: int) -> float:
    """Env steps per second of `agent.learn(steps)` (training included)."""
    t0 = time.perf_counter()
    agent.learn(steps, progress_bar=False)
    return agent.num_timesteps / (time.perf_counter() - t0)


def atari_text_vec(n: int) -> gym.vector.VectorEnv:
    """n Breakout envs (standard preprocessing) each with the OCAtari describer in info["text"]."""
    return gym.vector.SyncVectorEnv([lambda: WithText(make("ALE/Breakout-v5")) for _ in range(n)])


def speed(task: str, backend: Any, cache_dir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per LLMFeatures setting; the DQN and naive columns are measured once per task."""
    if task == "grid":
        n_envs, prompt, everys, steps, naive_steps = 1, GRID_PROMPT, [1], args.grid_steps, args.naive_steps
        dqn_kw: dict[str, Any] = {"learning_starts": 500}

        def build(text: bool) -> Any:
            env = make("llmrl/Grid-v0")
            return WithText(env) if text else env

        def build_naive() -> Any:
            return WithText(make("llmrl/Grid-v0"))
    else:
        n_envs, prompt, everys = 8, BREAKOUT_PROMPT, args.atari_every
        steps, naive_steps = args.atari_steps, args.atari_naive_steps
        dqn_kw = {"learning_starts": 1000, "buffer_size": 10_000, "train_freq": 4}

        def build(text: bool) -> Any:
            if text:
                return atari_text_vec(n_envs)
            return gym.vector.SyncVectorEnv([lambda: make("ALE/Breakout-v5") for _ in range(n_envs)])

        def build_naive() -> Any:
            return WithText(make("ALE/Breakout-v5"))  # one env, as the seed

    dqn = timed_learn(DQN(build(False), seed=0, **dqn_kw), steps)
    print(f"  {task}: dqn {dqn:.1f} steps/s", flush=True)
    naive_env = NaiveGenerateFeatures(build_naive(), backend, prompt)
    naive_kw = {**dqn_kw, "learning_starts": min(dqn_kw["learning_starts"], naive_steps // 2)}
    naive = timed_learn(DQN(naive_env, seed=0, **naive_kw), naive_steps)
    print(f"  {task}: naive {naive:.3f} steps/s", flush=True)
    rows = []
    for every in everys:
        cached = llmrl.llm.load(backend, cache=cache_dir / f"{task}-{every}.sqlite")  # fresh persistent cache
        env = LLMFeatures(build(True), cached, prompt=prompt, every=every)
        feat = timed_learn(DQN(env, seed=0, **dqn_kw), steps)
        m = env.llmrl_metrics()
        rows.append({
            "task": task, "envs": n_envs, "every": every, "dqn": dqn, "naive": naive, "llm-features": feat,
            "hit_rate": m["llm/hit_rate"], "model_passes": m["llm/calls"], "llm_seconds": m["llm/seconds"],
            "naive_steps": naive_steps, "steps": steps,
        })  # fmt: skip
        print(f"  {rows[-1]}", flush=True)
    return rows


# -- learning on Grid ---------------------------------------------------------------------------------


def greedy_return(agent: DQN, env: Any, episodes: int, seed: int) -> float:
    total = 0.0
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed * 1000 + ep)
        done = False
        while not done:
            obs, r, term, trunc, _ = env.step(int(agent.predict(obs)))
            total += r
            done = term or trunc
    return total / episodes


def learning(backend: Any, cache_dir: Path, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    cached = llmrl.llm.load(backend, cache=cache_dir / "grid-learn.sqlite")
    results: dict[str, list[float]] = {"dqn": [], "llm-features": []}
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"dqn": [], "llm-features": []}
    for seed in range(args.seeds):
        for name in results:
            env = make("llmrl/Grid-v0")
            if name == "llm-features":
                env = LLMFeatures(env, cached, prompt=GRID_PROMPT)
            run = out_dir / f"{name}-seed{seed}"
            agent = DQN(env, seed=seed, learning_starts=500, exploration_fraction=0.3)
            agent.learn(args.learn_steps, progress_bar=False, run_dir=run)
            results[name].append(greedy_return(agent, env, args.eval_episodes, seed))
            with open(run / "episodes.csv") as f:
                rows = list(csv.DictReader(f))
            curves[name].append(
                (np.array([float(r["step"]) for r in rows]), np.array([float(r["return"]) for r in rows]))
            )
            print(f"  learn {name} seed {seed}: greedy return {results[name][-1]:+.3f}", flush=True)
    png = out_dir / "llm_features_grid_learning.png"
    plot_curves(curves, png, args.learn_steps)
    return {"results": results, "png": png}


def plot_curves(curves: dict[str, list[tuple[np.ndarray, np.ndarray]]], path: Path, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0, steps, 50)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, runs in curves.items():
        ys = []
        for x, y in runs:
            # return of the last 20 episodes ended by each step, per seed
            smooth = np.convolve(y, np.ones(20) / 20, mode="full")[: len(y)]
            ys.append(np.interp(grid, x, smooth, left=np.nan))
        ys_arr = np.array(ys)
        mean = np.nanmean(ys_arr, axis=0)
        ax.plot(grid, mean, label=f"{name} ({len(runs)} seeds)")
        ax.fill_between(grid, np.nanmin(ys_arr, axis=0), np.nanmax(ys_arr, axis=0), alpha=0.2)
    ax.set_xlabel("env steps")
    ax.set_ylabel("training return (mean of last 20 episodes)")
    ax.set_title("Grid: DQN vs DQN + LLMFeatures (embedded Gemma 3 270M)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short run")
    p.add_argument("--grid-steps", type=int, default=10_000)
    p.add_argument("--atari-steps", type=int, default=2_000)
    p.add_argument(
        "--atari-every", type=int, nargs="+", default=[4, 8], help="LLMFeatures(every=k) rows, Breakout"
    )
    p.add_argument("--naive-steps", type=int, default=100, help="steps of the naive method on Grid")
    p.add_argument("--atari-naive-steps", type=int, default=40, help="steps of the naive method on Breakout")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--learn-steps", type=int, default=10_000)
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--skip", nargs="*", default=[], choices=["grid", "breakout", "learn"])
    p.add_argument("--out", default="runs/bench-llm-features")
    args = p.parse_args()
    if args.quick:
        args.grid_steps, args.atari_steps, args.naive_steps, args.atari_naive_steps = 2000, 1200, 20, 10
        args.seeds, args.learn_steps, args.eval_episodes = 2, 4000, 20
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    backend = llmrl.llm.load("embedded")  # one model for every side
    print(f"model {backend.name}; cpus {os.cpu_count()}; {platform.processor() or platform.machine()}; "
          f"python {platform.python_version()}; torch {torch.__version__}; gymnasium {gym.__version__}; "
          f"llama-cpp-python {md.version('llama-cpp-python')}; seeds 0..{args.seeds - 1}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = Path(tmp)
        rows = []
        for task in ("grid", "breakout"):
            if task not in args.skip:
                rows += speed(task, backend, cache_dir, args)
        learn = None if "learn" in args.skip else learning(backend, cache_dir, args, out_dir)

    print("\n| task | envs | every | DQN steps/s | DQN + LLMFeatures steps/s | naive (generate 50) steps/s "
          "| LLMFeatures ÷ naive | DQN ÷ LLMFeatures (overhead) | hit rate | model passes |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['envs']} (naive: 1) | {r['every']} | {r['dqn']:.0f} | {r['llm-features']:.0f} "
              f"({r['steps']} steps) | {r['naive']:.2f} ({r['naive_steps']} steps) | "
              f"**{r['llm-features'] / r['naive']:.0f}×** | {r['dqn'] / r['llm-features']:.2f}× | "
              f"{r['hit_rate']:.1%} | {r['model_passes']:.0f} |")  # fmt: skip
    if learn:
        res = learn["results"]
        print(f"\nGrid learning, {args.learn_steps} steps, {args.seeds} seeds, greedy return over "
              f"{args.eval_episodes} episodes each:\n")  # fmt: skip
        print("| agent | mean ± std | per seed |\n|---|---|---|")
        for name, v in res.items():
            print(f"| {name} | {np.mean(v):+.3f} ± {np.std(v):.3f} | {', '.join(f'{x:+.2f}' for x in v)} |")
        print(f"\ncurve: {learn['png']}")


if __name__ == "__main__":
    main()
