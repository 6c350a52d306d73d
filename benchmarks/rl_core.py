"""llmrl's RL core against Stable-Baselines3, side by side in one run with the same settings.

    python benchmarks/rl_core.py                 # every case
    python benchmarks/rl_core.py --quick         # fewer seeds, episodes and steps
    python benchmarks/rl_core.py --only ppo-cartpole-1env ppo-breakout-8env

Each case is a small function registered with `@case(name)` that returns Markdown table rows; add a case
by writing one more such function (DQN cases live next to the PPO ones). Steps/s are wall-clock training
throughput (env steps / learn() seconds); both libraries run with torch.set_num_threads(1) in the same
process, one after the other, on the same seeds. Evaluations use the same `llmrl.evaluate` loop for both
(100 episodes, deterministic actions).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import llmrl.agents as agents  # noqa: E402
from llmrl.evaluate import evaluate  # noqa: E402

CASES: dict[str, Callable[[argparse.Namespace], list[str]]] = {}


def case(name: str):
    """Register a benchmark case: fn(args) -> list of Markdown rows (see `row`)."""

    def deco(fn):
        CASES[name] = fn
        return fn

    return deco


HEADER = (
    "| case | library | setting | seeds | steps/s (mean) | speed ratio | eval mean ± std | note |"
)


def row(case_name, lib, setting, seeds, sps, ratio, ev, note=""):
    ratio_s = f"{ratio:.2f}×" if ratio is not None else ""
    return f"| {case_name} | {lib} | {setting} | {seeds} | {sps:,.0f} | {ratio_s} | {ev} | {note} |"


class SB3Predictor:
    """SB3 model behind llmrl's predict(obs) -> actions, so both sides use the same evaluate loop."""

    def __init__(self, model):
        self.model = model

    def predict(self, obs, deterministic=True):
        return self.model.predict(obs, deterministic=deterministic)[0]


def timed_learn(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def eval_str(results) -> str:
    means = [r.mean for r in results]
    pooled = np.concatenate([r.returns for r in results])
    per_seed = ", ".join(f"{m:.0f}" for m in means)
    return f"{pooled.mean():.1f} ± {pooled.std():.1f} (seeds: {per_seed})"


def cartpole_eval_env(n=10):
    return gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="vector_entry_point")


# -- PPO -----------------------------------------------------------------------------------------------

SB3_PPO_DEFAULTS = dict(n_steps=2048, batch_size=64, n_epochs=10, learning_rate=3e-4, gamma=0.99, gae_lambda=0.95,
                        clip_range=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5)  # fmt: skip
# RL-Zoo's tuned PPO for CartPole-v1 (lin_0.001 learning rate; clip range kept constant on both sides)
ZOO_PPO_CARTPOLE = dict(n_steps=32, batch_size=256, n_epochs=20, learning_rate=1e-3, gamma=0.98, gae_lambda=0.8,
                        clip_range=0.2, ent_coef=0.0)  # fmt: skip


def _ppo_pair(args, name, steps, n_envs, cfg, anneal, llmrl_env, sb3_env):
    from stable_baselines3 import PPO as SB3PPO

    seeds = list(range(args.seeds))
    ours_sps, sb3_sps, ours_ev, sb3_ev = [], [], [], []
    for seed in seeds:
        agent = agents.PPO(llmrl_env(), seed=seed, anneal_lr=anneal, **cfg)
        dt = timed_learn(lambda agent=agent: agent.learn(steps, progress_bar=False))
        ours_sps.append(agent.num_timesteps / dt)
        ours_ev.append(evaluate(agent, cartpole_eval_env(), n_episodes=args.episodes, seed=1000 + seed))

        lr = cfg["learning_rate"]
        sb3_cfg = dict(cfg, learning_rate=(lambda f, lr=lr: f * lr) if anneal else lr)
        model = SB3PPO("MlpPolicy", sb3_env(), seed=seed, device="cpu", verbose=0, **sb3_cfg)
        dt = timed_learn(lambda model=model: model.learn(steps))
        sb3_sps.append(model.num_timesteps / dt)
        sb3_ev.append(
            evaluate(SB3Predictor(model), cartpole_eval_env(), n_episodes=args.episodes, seed=1000 + seed)
        )
        print(f"  {name} seed {seed}: llmrl {ours_sps[-1]:.0f} sps {ours_ev[-1]}; SB3 {sb3_sps[-1]:.0f} sps {sb3_ev[-1]}",
              flush=True)  # fmt: skip
    setting = f"{n_envs} env(s), {steps:,} steps"
    ratio = statistics.mean(ours_sps) / statistics.mean(sb3_sps)
    solved = sum(r.mean >= 475 for r in ours_ev)
    return [
        row(name, "llmrl", setting, len(seeds), statistics.mean(ours_sps), ratio, eval_str(ours_ev),
            f"{solved}/{len(seeds)} seeds ≥ 475"),
        row(name, "SB3", setting, len(seeds), statistics.mean(sb3_sps), 1.0, eval_str(sb3_ev),
            f"{sum(r.mean >= 475 for r in sb3_ev)}/{len(seeds)} seeds ≥ 475"),
    ]  # fmt: skip


@case("ppo-cartpole-1env")
def ppo_cartpole_1env(args):
    """SB3's defaults, 1 env, 10,000 steps (the seed quotes SB3 at 351.68 ± 107.47)."""
    from stable_baselines3.common.env_util import make_vec_env

    return _ppo_pair(args, "ppo-cartpole-1env", args.steps_1env, 1, SB3_PPO_DEFAULTS, False,
                     lambda: gym.make("CartPole-v1"), lambda: make_vec_env("CartPole-v1", n_envs=1))  # fmt: skip


@case("ppo-cartpole-8env")
def ppo_cartpole_8env(args):
    """8 envs, RL-Zoo's tuned CartPole PPO, 50,000 steps. llmrl on Gymnasium's native vector CartPole,
    SB3 on its DummyVecEnv (the same dynamics; each library's usual vector env)."""
    from stable_baselines3.common.env_util import make_vec_env

    return _ppo_pair(args, "ppo-cartpole-8env", args.steps_8env, 8, ZOO_PPO_CARTPOLE, True,
                     lambda: gym.make_vec("CartPole-v1", num_envs=8, vectorization_mode="vector_entry_point"),
                     lambda: make_vec_env("CartPole-v1", n_envs=8))  # fmt: skip


@case("ppo-cartpole-time-to-solve")
def ppo_time_to_solve(args):
    """Wall-clock training time until the 100-episode mean reaches 475, checked every `check` steps
    (evaluation time excluded). Both with RL-Zoo's tuned config on 8 envs (LR annealed over 100k)."""
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    budget, check = 100_000, args.check_every
    rows, ours_t, sb3_t = [], [], []
    for seed in range(args.seeds):
        agent = agents.PPO(gym.make_vec("CartPole-v1", num_envs=8, vectorization_mode="vector_entry_point"), seed=seed,
                           anneal_lr=True, **ZOO_PPO_CARTPOLE)  # fmt: skip
        clock = {"train": 0.0, "t0": time.perf_counter(), "next": check, "solved": None}

        def cb(a, m, clock=clock):
            if a.num_timesteps >= clock["next"]:
                clock["train"] += time.perf_counter() - clock["t0"]
                clock["next"] += check
                if evaluate(a, cartpole_eval_env(), n_episodes=args.episodes, seed=7).mean >= 475:
                    clock["solved"] = (clock["train"], a.num_timesteps)
                    return False
                clock["t0"] = time.perf_counter()
            return None

        agent.learn(budget, progress_bar=False, callback=cb)
        ours_t.append(clock["solved"])

        class SB3Check(BaseCallback):
            def __init__(self):
                super().__init__()
                self.train, self.t0, self.next, self.solved = 0.0, time.perf_counter(), check, None

            def _on_step(self):
                if self.num_timesteps >= self.next:
                    self.train += time.perf_counter() - self.t0
                    self.next += check
                    if (
                        evaluate(
                            SB3Predictor(self.model), cartpole_eval_env(), n_episodes=args.episodes, seed=7
                        ).mean
                        >= 475
                    ):
                        self.solved = (self.train, self.num_timesteps)
                        return False
                    self.t0 = time.perf_counter()
                return True

        cb3 = SB3Check()
        model = SB3PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=8), seed=seed, device="cpu", verbose=0,
                       **dict(ZOO_PPO_CARTPOLE, learning_rate=lambda f: f * 1e-3))  # fmt: skip
        model.learn(budget, callback=cb3)
        sb3_t.append(cb3.solved)
        print(f"  time-to-solve seed {seed}: llmrl {ours_t[-1]}, SB3 {sb3_t[-1]}", flush=True)
    med = {}
    for lib, res in (("llmrl", ours_t), ("SB3", sb3_t)):
        ok = [r for r in res if r is not None]
        med[lib] = statistics.median(t for t, _ in ok) if ok else float("nan")
        steps = statistics.median(s for _, s in ok) if ok else float("nan")
        rows.append(f"| ppo-cartpole-time-to-solve | {lib} | 8 envs, RL-Zoo config, checked every {check:,} steps | "
                    f"{len(res)} | | | solved {len(ok)}/{len(res)}; median {med[lib]:.1f} s training wall clock, "
                    f"{steps:,.0f} steps | |")  # fmt: skip
    rows[0] = rows[0][: -len(" |")] + f"time ratio SB3/llmrl {med['SB3'] / med['llmrl']:.2f}× |"
    return rows


def _atari_env(n, seed_offset=0):
    import ale_py

    gym.register_envs(ale_py)

    def one():
        env = gym.make("ALE/Breakout-v5", frameskip=1)
        env = gym.wrappers.AtariPreprocessing(
            env, noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True
        )
        return gym.wrappers.FrameStackObservation(env, 4)

    return [one for _ in range(n)]


@case("ppo-breakout-8env")
def ppo_breakout_8env(args):
    """Breakout, 8 envs, the same AtariPreprocessing + 4-frame stack for both, RL-Zoo's Atari PPO settings,
    a short run (steps/s only)."""
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    cfg = dict(
        n_steps=128,
        batch_size=256,
        n_epochs=4,
        learning_rate=2.5e-4,
        clip_range=0.1,
        ent_coef=0.01,
        vf_coef=0.5,
    )
    steps, warm = args.steps_atari, 8 * 128
    # one untimed iteration each first: the first conv calls pay a large one-off kernel set-up cost
    agent = agents.PPO(gym.vector.SyncVectorEnv(_atari_env(8)), seed=0, **cfg)
    agent.learn(warm, progress_bar=False)
    ours = steps / timed_learn(lambda: agent.learn(warm + steps, progress_bar=False))
    model = SB3PPO("CnnPolicy", DummyVecEnv(_atari_env(8)), seed=0, device="cpu", verbose=0, **cfg)
    model.learn(warm)
    sb3 = steps / timed_learn(lambda: model.learn(steps, reset_num_timesteps=False))
    setting = f"8 envs, {steps:,} steps"
    return [row("ppo-breakout-8env", "llmrl", setting, 1, ours, ours / sb3, "", "short run, speed only"),
            row("ppo-breakout-8env", "SB3", setting, 1, sb3, 1.0, "", "")]  # fmt: skip


# DQN cases: add `@case("dqn-...")` functions here (same row() format).


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 seeds, 20 eval episodes, shorter runs")
    p.add_argument("--only", nargs="*", help=f"cases to run: {', '.join(CASES)}")
    p.add_argument("--threads", type=int, default=1, help="torch threads for both libraries")
    args = p.parse_args()
    args.seeds = 2 if args.quick else 5
    args.episodes = 20 if args.quick else 100
    args.steps_1env, args.steps_8env = 10_000, 50_000
    args.steps_atari = 2048 if args.quick else 4096
    args.check_every = 10_000 if args.quick else 5_000
    torch.set_num_threads(args.threads)
    print(f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    import stable_baselines3

    print(f"# versions: llmrl (this tree), torch {torch.__version__}, gymnasium {gym.__version__}, "
          f"stable-baselines3 {stable_baselines3.__version__}, numpy {np.__version__}; torch threads {args.threads}; "
          f"seeds 0..{args.seeds - 1}; eval episodes {args.episodes}")  # fmt: skip
    rows = []
    for name, fn in CASES.items():
        if args.only and name not in args.only:
            continue
        print(f"## {name}", flush=True)
        rows += fn(args)
    print()
    print(HEADER)
    print("|---|---|---|---:|---:|---:|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
