"""What does it cost to see a state in words, and how often do the words repeat?

Per environment family, on random rollouts (fixed seeds): the raw env step time next to the describer's
time per step (text + caption), their ratio, and the text repeat rate: distinct texts / steps. That last
number bounds an exact-text LLM cache: at most 1 - distinct/steps of the calls can hit.

    python benchmarks/envs_text.py            # full run
    python benchmarks/envs_text.py --quick    # short run
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import platform
import time

import numpy as np

from llmrl.envs import describer_for, make

ENVS = [
    ("grid", "llmrl/Grid-v0"),
    ("minigrid", "MiniGrid-DoorKey-6x6-v0"),
    ("minigrid", "BabyAI-GoToRedBall-v0"),
    ("atari", "ALE/Breakout-v5"),
    ("atari", "ALE/Pong-v5"),
    ("atari", "ALE/MontezumaRevenge-v5"),
    ("classic", "CartPole-v1"),
    ("classic", "Acrobot-v1"),
    ("classic", "MountainCar-v0"),
    ("classic", "Pendulum-v1"),
]


def rollout(env_id: str, steps: int, seed: int) -> dict[str, float]:
    env = make(env_id)
    describer = describer_for(env)
    env.action_space.seed(seed)
    t_env = t_text = 0.0
    texts: list[str] = []
    captions = 0
    t0 = time.perf_counter()
    obs, _ = env.reset(seed=seed)
    t_env += time.perf_counter() - t0
    t0 = time.perf_counter()
    texts.append(describer.reset(env, obs))
    t_text += time.perf_counter() - t0
    for _ in range(steps):
        action = env.action_space.sample()
        t0 = time.perf_counter()
        obs, reward, terminated, truncated, info = env.step(action)
        t1 = time.perf_counter()
        text, caption = describer.step(env, obs, action, reward, terminated, truncated, info)
        t2 = time.perf_counter()
        t_env, t_text = t_env + t1 - t0, t_text + t2 - t1
        texts.append(text)
        captions += bool(caption)
        if terminated or truncated:
            t0 = time.perf_counter()
            obs, _ = env.reset()
            t1 = time.perf_counter()
            texts.append(describer.reset(env, obs))
            t_env, t_text = t_env + t1 - t0, t_text + time.perf_counter() - t1
    env.close()
    return {
        "env_us": 1e6 * t_env / steps,
        "text_us": 1e6 * t_text / steps,
        "distinct": len(set(texts)) / len(texts),
        "captions": captions / steps,
        "chars": float(np.mean([len(t) for t in texts])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="500 steps per env instead of 5,000 (Atari: 2,000)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    versions = ", ".join(
        f"{p} {md.version(p)}" for p in ("gymnasium", "ale-py", "ocatari", "minigrid", "numpy")
    )
    print(
        f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"# versions: {versions}; seed {args.seed}; random actions\n")
    print(
        "| family | env | steps | env step (us) | describer (us/step) | describer / env | distinct texts / steps | steps with a caption | mean text length (chars) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for family, env_id in ENVS:
        steps = 500 if args.quick else (2000 if family == "atari" else 5000)
        r = rollout(env_id, steps, args.seed)
        print(
            f"| {family} | {env_id} | {steps} | {r['env_us']:.1f} | {r['text_us']:.1f} | {r['text_us'] / r['env_us']:.2f} | "
            f"{r['distinct']:.3f} | {r['captions']:.3f} | {r['chars']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
