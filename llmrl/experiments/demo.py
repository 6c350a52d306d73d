"""`llmrl demo`: does an LLM help an agent learn a sparse-reward task? Baseline PPO against PPO with
ELLM goals ranked by the embedded model, on MiniGrid DoorKey, with everything written to a run folder.

The task pays +1 only for reaching the goal behind a locked door, so a random explorer rarely sees a
reward. ELLM (arXiv 2302.06692) adds a small reward whenever the agent does something the LLM
suggested for the current state ("pick up the key", "open the door", ...), each goal once an episode.
The LLM ranks candidate goals (it does not write free text) and is asked once per distinct state text;
both make the 270M model usable and cheap.
"""

from __future__ import annotations

import csv
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llmrl.experiments.compare import RunResult, markdown_table, method_config, plot_success, run_one
from llmrl.experiments.run import build_env, config_data

__all__ = ["DemoConfig", "run_demo"]

METHODS = ("baseline", "ellm")
"""The demo's two agents: the `doorkey-ppo` and `doorkey-ellm` presets (`llmrl.experiments.compare`)."""


@dataclass
class DemoConfig:
    """Baseline PPO vs LLM-guided PPO (ELLM goals from the embedded model) on a sparse-reward task."""

    env: str = "MiniGrid-DoorKey-5x5-v0"
    """A MiniGrid task with sub-goals (key, door, goal)."""
    steps: int = 60_000
    """Environment steps for each agent."""
    seed: int = 0
    """Seed of both agents."""
    llm: str = "embedded"
    """LLM spec for the guided agent."""
    out: Path | None = None
    """Output folder; default runs/demo-<time>."""


def run_demo(cfg: DemoConfig) -> Path:
    """Train both agents, print the comparison, write curves, GIF, metrics and config; return the folder."""
    from llmrl.llm import load
    from llmrl.render import save_gif

    out = Path(cfg.out or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"llmrl demo: PPO on {cfg.env} (reward only at the goal behind a locked door), {cfg.steps:,} steps each"
    )
    print("  baseline: PPO alone;  ellm: PPO + goals ranked by the LLM, rewarded when achieved")
    print(f"  loading the LLM ({cfg.llm}) ...", flush=True)
    llm = load(cfg.llm, require=("score", "embed"), cache=True)

    results: list[RunResult] = []
    agents: dict[str, Any] = {}
    for method in METHODS:
        print(f"\n[{method}] training ...", flush=True)

        def keep(agent: Any, metrics: dict, method: str = method) -> None:
            agents[method] = agent

        r = run_one(method, cfg.seed, env_id=cfg.env, total_timesteps=cfg.steps, llm=llm, progress_bar=True,
                    callback=keep)  # fmt: skip
        results.append(r)
        reached = r.steps_to(0.9)
        print(f"[{method}] {r.timesteps:,} steps in {r.wall_s:.0f} s; 90% success "
              + (f"after {reached:,} steps" if reached else "not reached"), flush=True)  # fmt: skip

    table = markdown_table(results)
    print("\n" + table)
    (out / "comparison.md").write_text(table + "\n")
    plot_success(results, str(out / "success.png"))
    _write_metrics(results, out)

    # What the trained guided agent does, with the LLM's current goals and the action probabilities.
    # built as run_one builds it, so the prompts hit the cache
    guided = method_config("ellm", seed=cfg.seed, env_id=cfg.env, total_timesteps=cfg.steps)
    env, _ = build_env(guided, num_envs=1, render_mode="rgb_array", llm=llm)
    gif = save_gif(agents["ellm"], env, out / "agent.gif", max_steps=60, annotate=_goals_panel, seed=cfg.seed)
    env.close()

    config = {"demo": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()},
              "ellm": config_data(guided), "llm_name": llm.name}  # fmt: skip
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"\nwrote {out}/: success.png (learning curves), {Path(gif).name} (the guided agent and its LLM goals), "
          "episodes.csv and summary.csv (metrics), comparison.md, config.yaml")  # fmt: skip
    return out


def _goals_panel(obs: Any, info: dict) -> str:
    goals = info.get("goals") or []
    lines = ["LLM goals: " + ("; ".join(goals) if goals else "(none left)")]
    if info.get("caption"):
        lines.append("did: " + info["caption"])
    return "\n".join(lines)


def _write_metrics(results: list[RunResult], out: Path) -> None:
    with open(out / "episodes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "seed", "env_step", "success"])
        for r in results:
            for step, ok in zip(r.episode_steps, r.episode_success):
                w.writerow([r.method, r.seed, int(step), int(ok)])
    keys = sorted({k for r in results for k in r.metrics})
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "seed", "timesteps", "wall_s", "steps_to_90", "final_success", *keys])
        for r in results:
            w.writerow([r.method, r.seed, r.timesteps, round(r.wall_s, 2), r.steps_to(0.9), r.final_success(),
                        *(r.metrics.get(k, "") for k in keys)])  # fmt: skip
