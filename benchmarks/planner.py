"""The LLM as planner (issue 7): does ELLM with the embedded model cut PPO's steps on DoorKey?

    python benchmarks/planner.py            # 5 seeds, 100k-step budget, all three parts
    python benchmarks/planner.py --quick    # 2 seeds, 60k steps on DoorKey-5x5

Part 1 - suggestions: ELLM's ranked goals on a fixed set of DoorKey states (scripted walkthroughs:
start, key picked up, door opened), how often the oracle's sub-goal is in the top k.
Part 2 - SayCan: the embedded model + scripted MiniGrid skills on DoorKey, success over seeds.
Part 3 - PPO (llmrl) on DoorKey: baseline vs ELLM (embedded model) vs ELLM (oracle) - the presets
doorkey-ppo and doorkey-ellm (llmrl.experiments.compare) - steps to 90%
training success (rolling 100 episodes) and the success curves (PNG). Runs stop once at 95%.
`--jobs N` trains the (method, seed) runs in N parallel processes (each loads its own model).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def versions() -> str:
    import gymnasium
    import minigrid
    import torch

    return (
        f"python {platform.python_version()}, torch {torch.__version__}, gymnasium {gymnasium.__version__}, "
        f"minigrid {minigrid.__version__}, cpus {os.cpu_count()} ({platform.processor() or platform.machine()})"
    )


def part_suggestions(llm, env_id: str, seeds: range) -> str:
    import gymnasium as gym

    from llmrl.envs import WithText
    from llmrl.envs.minigrid import MiniGridSubgoals
    from llmrl.experiments.compare import method_config
    from llmrl.experiments.run import role_options
    from llmrl.roles.goals import ELLMGoals
    from llmrl.roles.saycan import doorkey_walkthrough

    # the doorkey-ellm preset's role options (with the manual and filter it takes on MiniGrid)
    preset = role_options(method_config("ellm", env_id=env_id))
    preset.pop("suggest", None)

    configs = {
        "mission+inventory, manual, calibrated (default)": {},
        "mission+inventory, manual, raw": {"calibrate": False},
        "mission+inventory, no manual, raw": {"calibrate": False, "manual": None},
        "full state text, manual, raw": {"calibrate": False, "text_filter": None},
    }
    rows = [
        "| prompt | top-1 | top-2 | top-3 | top-3 at start / key held / door open | LLM prompts | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, over in configs.items():
        t0 = time.perf_counter()
        kw = {**preset, **over}
        env = ELLMGoals(MiniGridSubgoals(WithText(gym.make(env_id))), llm, **kw)
        recs = doorkey_walkthrough(env, seeds)

        def hit(k: int, ph: int | None = None, recs: list = recs) -> float:
            return float(
                np.mean([r["oracle"] in r["goals"][:k] for r in recs if ph is None or r["phase"] == ph])
            )

        phases = " / ".join(f"{hit(3, p):.2f}" for p in range(3))
        rows.append(
            f"| {name} | {hit(1):.2f} | {hit(2):.2f} | {hit(3):.2f} | {phases} | "
            f"{env.llmrl_metrics()['goals/prompts']:.0f} | {time.perf_counter() - t0:.0f} |"
        )
        print(rows[-1], flush=True)
    return "\n".join(rows)


def part_saycan(llm, env_id: str, seeds: range) -> str:
    import gymnasium as gym

    from llmrl.envs.minigrid import MiniGridSubgoals
    from llmrl.roles.saycan import SayCan, minigrid_skills

    env = MiniGridSubgoals(gym.make(env_id))
    rows = [
        "| LLM part | affordance | success | mean skills per episode | LLM prompts |",
        "|---|---|---|---|---|",
    ]
    for cal, aff in ((True, True), (False, True), (True, False)):
        agent = SayCan(
            llm, minigrid_skills(env), instruction=env.unwrapped.mission, calibrate=cal, use_affordance=aff
        )
        res = [agent.run(env, seed=s, max_steps=200) for s in seeds]
        rows.append(
            f"| {'calibrated' if cal else 'raw'} | {'feasibility' if aff else 'none'} | "
            f"{np.mean([r.success for r in res]):.2f} | {np.mean([len(r.plan) for r in res]):.1f} | {agent.llm_calls} |"
        )
        print(rows[-1], flush=True)
    return "\n".join(rows)


def _train(args: tuple) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    from llmrl.experiments.compare import run_one

    method, seeds, env_id, budget = args
    llm = None
    if method != "baseline":
        from llmrl.llm import load

        llm = load("embedded")
    out = []
    for s in seeds:
        r = run_one(method, s, env_id=env_id, total_timesteps=budget, llm=llm, stop_at=0.95)
        print(
            f"  {method} seed {s}: steps to 90% {r.steps_to(0.9)}, {r.timesteps} steps, {r.wall_s:.0f}s",
            flush=True,
        )
        out.append(
            dict(
                method=method,
                seed=s,
                episode_steps=r.episode_steps.tolist(),
                episode_success=r.episode_success.tolist(),
                timesteps=r.timesteps,
                wall_s=r.wall_s,
                metrics=r.metrics,
            )  # fmt: skip
        )
    return out


def part_ppo(env_id: str, seeds: list[int], budget: int, jobs: int, png: Path) -> str:
    from llmrl.experiments.compare import RunResult, markdown_table, plot_success

    # one task per (method, seed), the slow baseline runs first
    work = [(m, [s], env_id, budget) for m in ("baseline", "ellm", "oracle") for s in seeds]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            dicts = [d for ds in pool.map(_train, work) for d in ds]
    else:
        dicts = [d for w in work for d in _train(w)]
    results = [
        RunResult(
            **{
                **d,
                "episode_steps": np.array(d["episode_steps"]),
                "episode_success": np.array(d["episode_success"], bool),
            }
        )
        for d in dicts
    ]
    png.parent.mkdir(parents=True, exist_ok=True)
    plot_success(results, str(png))
    (png.with_suffix(".json")).write_text(json.dumps(dicts))
    lines = [markdown_table(results), "", "steps to 90% per seed:"]
    for m in ("baseline", "ellm", "oracle"):
        lines.append(f"- {m}: " + ", ".join(str(r.steps_to(0.9)) for r in results if r.method == m))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 seeds, 60k steps on DoorKey-5x5")
    p.add_argument("--env", default=None, help="MiniGrid DoorKey id (default 6x6; 5x5 with --quick)")
    p.add_argument("--seeds", type=int, default=None, help="PPO seeds (default 5; 2 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="PPO budget per run (default 100000)")
    p.add_argument(
        "--jobs", type=int, default=1, help="train (method, seed) runs in this many parallel processes"
    )
    p.add_argument("--parts", default="1,2,3", help="which parts to run, e.g. 3")
    p.add_argument("--out", default="runs/bench-planner/success.png", help="success-curve PNG")
    a = p.parse_args()
    env_id = a.env or ("MiniGrid-DoorKey-5x5-v0" if a.quick else "MiniGrid-DoorKey-6x6-v0")
    seeds = list(range(a.seeds or (2 if a.quick else 5)))
    budget = a.steps or (60_000 if a.quick else 100_000)
    parts = {int(x) for x in a.parts.split(",")}
    import minigrid  # noqa: F401  (registers the ids)

    print(
        f"# Planner benchmark: {env_id}\n\n{versions()}; command: python {' '.join(sys.argv)}\n", flush=True
    )
    if parts & {1, 2}:
        from llmrl.llm import load

        llm = load("embedded")
        if 1 in parts:
            print("## Suggestions vs the oracle (20 walkthroughs x 3 phases)\n", flush=True)
            print(part_suggestions(llm, env_id, range(20)) + "\n", flush=True)
        if 2 in parts:
            print("## SayCan with scripted skills (10 seeds)\n", flush=True)
            print(part_saycan(llm, env_id, range(10)) + "\n", flush=True)
    if 3 in parts:
        print(f"## PPO: {len(seeds)} seeds, budget {budget:,} steps, 8 envs\n", flush=True)
        print(part_ppo(env_id, seeds, budget, a.jobs, Path(a.out)), flush=True)
        print(f"\ncurves: {a.out}", flush=True)


if __name__ == "__main__":
    main()
