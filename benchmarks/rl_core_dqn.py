"""Is llmrl's DQN as good as Stable-Baselines3's, and how much faster? Side by side, one process.

1. CartPole-v1 with RL-Zoo's tuned SB3 hyperparameters (rl-baselines3-zoo hyperparams/dqn.yml: 5e4 steps,
   lr 2.3e-3, batch 64, buffer 1e5, learning_starts 1000, gamma 0.99, target_update_interval 10,
   train_freq 256, gradient_steps 128, exploration_fraction 0.16, final eps 0.04, net_arch [256, 256]),
   one env. Both libraries get the same settings and the same algorithm: SB3's DQN uses the vanilla
   target max_a Q_target(s', a), so llmrl runs with double_q=False (its default is Double DQN; pass
   --double to time that too). Per seed: wall-clock and process-CPU steps/s of `learn`, then a
   100-episode greedy evaluation of both agents with the same evaluator.
2. Breakout (ALE), 8 envs, the standard Atari preprocessing (no-op reset, frame skip 4, 84x84 grey,
   4 frames) for both, a short run with RL-Zoo's Atari DQN settings (scaled down: buffer and steps).
   llmrl uses its native ALE vector env (llmrl.make); SB3 gets 8 copies of the same single-env
   preprocessing chain in a DummyVecEnv.

    python benchmarks/rl_core_dqn.py            # 5 seeds x 50k CartPole steps + Breakout 20k steps
    python benchmarks/rl_core_dqn.py --quick    # 1 seed x 6k steps + Breakout 4k steps (timing only)

The machine is shared, so wall-clock numbers drift with other load: the two libraries alternate seed by
seed, and process CPU time (less sensitive to other processes) is reported next to wall time.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import platform
import time
from typing import Any

import numpy as np
import torch

import llmrl.envs as envs
from llmrl.agents.dqn import DQN
from llmrl.evaluate import evaluate

ZOO_CARTPOLE = dict(
    learning_rate=2.3e-3,
    batch_size=64,
    buffer_size=100_000,
    learning_starts=1000,
    gamma=0.99,
    target_update_interval=10,
    train_freq=256,
    gradient_steps=128,
    exploration_fraction=0.16,
    exploration_final_eps=0.04,
)
NET_CARTPOLE = (256, 256)
# RL-Zoo's Atari DQN settings (hyperparams/dqn.yml "atari"), with a smaller buffer and learning_starts so
# a short run trains; target_update_interval scaled down with them.
ATARI = dict(
    learning_rate=1e-4,
    batch_size=32,
    buffer_size=20_000,
    learning_starts=2_000,
    target_update_interval=1_000,
    train_freq=4,
    gradient_steps=1,
    exploration_fraction=0.1,
    exploration_final_eps=0.01,
)


class _SB3Policy:
    """SB3 model behind llmrl.evaluate's `predict(obs, deterministic)` interface."""

    def __init__(self, model: Any):
        self.model = model

    def predict(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        return self.model.predict(obs, deterministic=deterministic)[0]


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


class _Checks:
    """Greedy evaluations every `every` training steps (RL-Zoo's EvalCallback protocol: "solved within the
    budget" = some evaluation reached the threshold), with the same evaluator for both libraries; their
    wall and CPU time is recorded so it can be taken out of the training time."""

    def __init__(self, policy: Any, seed: int, every: int, episodes: int):
        self.policy, self.seed, self.every, self.episodes = policy, seed, every, episodes
        self.next, self.means, self.wall, self.cpu = every, [], 0.0, 0.0

    def __call__(self, step: int) -> None:
        if not self.every or step < self.next:
            return
        self.next = (step // self.every + 1) * self.every
        wall, cpu = time.perf_counter(), time.process_time()
        env = envs.make("CartPole-v1", num_envs=10)
        self.means.append((step, evaluate(self.policy, env, self.episodes, seed=20_000 + self.seed).mean))
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu

    def result(self, wall: float, cpu: float, policy: Any) -> dict[str, Any]:
        """Training times without the checks, the final evaluation, and the checks' history."""
        res = evaluate(policy, envs.make("CartPole-v1", num_envs=10), self.episodes, seed=10_000 + self.seed)
        solved = [s for s, m in self.means if m >= 475]
        return {"wall": wall - self.wall, "cpu": cpu - self.cpu, "mean": res.mean, "std": res.std,
                "best": max([res.mean] + [m for _, m in self.means]),
                "first_solved": solved[0] if solved else None}  # fmt: skip


def cartpole_sb3(seed: int, steps: int, eval_episodes: int, eval_every: int = 0) -> dict[str, Any]:
    import gymnasium as gym
    from stable_baselines3 import DQN as SB3DQN
    from stable_baselines3.common.callbacks import BaseCallback

    model = SB3DQN("MlpPolicy", gym.make("CartPole-v1"), seed=seed, device="cpu",
                   policy_kwargs=dict(net_arch=list(NET_CARTPOLE)), **ZOO_CARTPOLE)  # fmt: skip
    checks = _Checks(_SB3Policy(model), seed, eval_every, eval_episodes)

    class Check(BaseCallback):
        def _on_step(self) -> bool:
            checks(self.num_timesteps)
            return True

    wall, cpu = _timed(lambda: model.learn(steps, callback=Check()))
    return checks.result(wall, cpu, _SB3Policy(model))


def cartpole_llmrl(
    seed: int, steps: int, eval_episodes: int, double_q: bool, eval_every: int = 0
) -> dict[str, Any]:
    agent = DQN(envs.make("CartPole-v1"), seed=seed, net_arch=NET_CARTPOLE, double_q=double_q, **ZOO_CARTPOLE)
    checks = _Checks(agent, seed, eval_every, eval_episodes)
    wall, cpu = _timed(
        lambda: agent.learn(steps, progress_bar=False, callback=lambda a, m: checks(a.num_timesteps))
    )
    return checks.result(wall, cpu, agent)


def breakout_sb3(seed: int, steps: int) -> dict[str, float]:
    from stable_baselines3 import DQN as SB3DQN
    from stable_baselines3.common.vec_env import DummyVecEnv

    venv = DummyVecEnv([lambda: envs.make("ALE/Breakout-v5") for _ in range(8)])
    model = SB3DQN("CnnPolicy", venv, seed=seed, device="cpu", optimize_memory_usage=False,
                   replay_buffer_kwargs=dict(handle_timeout_termination=False), **ATARI)  # fmt: skip
    wall, cpu = _timed(lambda: model.learn(steps))
    return {"wall": wall, "cpu": cpu}


def breakout_llmrl(seed: int, steps: int) -> dict[str, float]:
    agent = DQN(envs.make("ALE/Breakout-v5", num_envs=8), seed=seed, double_q=False, **ATARI)
    wall, cpu = _timed(lambda: agent.learn(steps, progress_bar=False))
    return {"wall": wall, "cpu": cpu}


def breakout_floor(steps: int) -> float:
    """Steps/s llmrl's DQN would reach on the Breakout run if it did nothing but its network's arithmetic:
    one acting forward per vector step (batch 8) and, every train_freq vector steps after learning_starts,
    one gradient step (online forward + backward and target forward at batch_size); no env, no replay
    buffer, no optimizer."""
    from llmrl.nets import empty_obs_storage

    agent = DQN(envs.make("ALE/Breakout-v5", num_envs=8), seed=0, double_q=False, **ATARI)
    net, target, n = agent.q_net, agent.q_target, agent.num_envs
    frames = empty_obs_storage(agent.observation_space, (ATARI["batch_size"],))
    frames.copy_(torch.randint(0, 256, frames.shape, dtype=torch.uint8))
    vector_steps = steps // n
    updates = (steps - ATARI["learning_starts"]) // (n * ATARI["train_freq"])

    def once(k: int) -> None:
        with torch.no_grad():
            for _ in range(k * ATARI["train_freq"]):
                net(frames[:n])
            for _ in range(k):
                target(frames)
        for _ in range(k):
            net.forward_train(frames)
            net.backward_train(torch.ones(len(frames), agent.n_actions))

    once(2)  # warm-up
    t0 = time.perf_counter()
    once(50)
    per_update = (time.perf_counter() - t0) / 50  # one gradient step + train_freq acting forwards
    per_act = per_update / ATARI["train_freq"]  # an upper bound for acting alone: fine for a ceiling
    total = updates * per_update + max(vector_steps - updates * ATARI["train_freq"], 0) * per_act
    return steps / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, short runs (timing only)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="run seeds first-seed .. first-seed+seeds-1"
    )
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=5_000,
                        help="CartPole: evaluate every N training steps, outside the timing (0: only at the end)")  # fmt: skip
    parser.add_argument("--breakout-steps", type=int, default=20_000)
    parser.add_argument("--double", action="store_true", help="also time llmrl's default Double DQN")
    parser.add_argument("--skip-cartpole", action="store_true")
    parser.add_argument("--skip-breakout", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for both libraries")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps, args.eval_episodes, args.breakout_steps = 1, 6_000, 10, 4_000
    torch.set_num_threads(args.threads)
    os.environ["LLMRL_THREADS"] = str(args.threads)  # learn() would otherwise pick its own default

    print(f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"torch threads {args.threads}")  # fmt: skip
    print(f"# versions: torch {torch.__version__}, gymnasium {md.version('gymnasium')}, "
          f"stable-baselines3 {md.version('stable-baselines3')}, ale-py {md.version('ale-py')}, numpy {np.__version__}")  # fmt: skip
    if not args.skip_cartpole:
        print(f"\n## DQN CartPole-v1, RL-Zoo tuned hyperparameters, {args.steps} steps, 1 env, "
              f"{args.eval_episodes}-episode greedy evaluation\n")  # fmt: skip
        print(
            "| seed | library | wall steps/s | CPU steps/s | final eval mean ± std | best eval | first ≥ 475 |"
        )
        print("|---:|---|---:|---:|---:|---:|---:|")
        runs: dict[str, list[dict[str, float]]] = {"sb3": [], "llmrl": [], "llmrl-double": []}
        ev, every = args.eval_episodes, args.eval_every
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            todo = [("sb3", lambda s=seed: cartpole_sb3(s, args.steps, ev, every)),
                    ("llmrl", lambda s=seed: cartpole_llmrl(s, args.steps, ev, False, every))]  # fmt: skip
            if args.double:
                todo.append(("llmrl-double", lambda s=seed: cartpole_llmrl(s, args.steps, ev, True, every)))
            if seed % 2:  # alternate the order against drifting load
                todo.reverse()
            for name, fn in todo:
                r = fn()
                runs[name].append(r)
                print(f"| {seed} | {name} | {args.steps / r['wall']:.0f} | {args.steps / r['cpu']:.0f} | "
                      f"{r['mean']:.1f} ± {r['std']:.1f} | {r['best']:.1f} | {r['first_solved'] or '—'} |", flush=True)  # fmt: skip
        print(
            "\n| library | wall steps/s (mean) | CPU steps/s (mean) | wall ratio to SB3 | CPU ratio to SB3 "
            "| seeds ≥ 475 within the run | at the end |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        base = runs["sb3"]
        for name, rs in runs.items():
            if not rs:
                continue
            wall = np.mean([args.steps / r["wall"] for r in rs])
            cpu = np.mean([args.steps / r["cpu"] for r in rs])
            # ratio of total times over the same seeds = ratio of throughput
            w_ratio = sum(r["wall"] for r in base) / sum(r["wall"] for r in rs)
            c_ratio = sum(r["cpu"] for r in base) / sum(r["cpu"] for r in rs)
            within, final = sum(r["best"] >= 475 for r in rs), sum(r["mean"] >= 475 for r in rs)
            print(f"| {name} | {wall:.0f} | {cpu:.0f} | {w_ratio:.2f}x | {c_ratio:.2f}x | {within}/{len(rs)} "
                  f"| {final}/{len(rs)} |")  # fmt: skip
    if not args.skip_breakout:
        print(f"\n## DQN ALE/Breakout-v5, 8 envs, standard preprocessing, {args.breakout_steps} steps\n")
        print("| library | wall steps/s | CPU steps/s | wall ratio to SB3 | CPU ratio to SB3 |")
        print("|---|---:|---:|---:|---:|")
        ours = breakout_llmrl(0, args.breakout_steps)
        sb3 = breakout_sb3(0, args.breakout_steps)
        for name, r in (("sb3", sb3), ("llmrl", ours)):
            print(f"| {name} | {args.breakout_steps / r['wall']:.0f} | {args.breakout_steps / r['cpu']:.0f} | "
                  f"{sb3['wall'] / r['wall']:.2f}x | {sb3['cpu'] / r['cpu']:.2f}x |")  # fmt: skip
        floor = breakout_floor(args.breakout_steps)
        print(f"| llmrl network arithmetic alone (the ceiling) | {floor:.0f} | | "
              f"{floor * sb3['wall'] / args.breakout_steps:.2f}x | |")  # fmt: skip


if __name__ == "__main__":
    main()
