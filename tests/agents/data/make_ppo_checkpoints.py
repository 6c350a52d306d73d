"""Writes the PPO checkpoints that tests/agents/test_ppo_checkpoints.py loads: one per network layout of
PPO's actor-critic, saved by the code of the day (these files were written at commit 950115c, before
ActorCritic was split into one class per layout), plus the outputs the saved network gave on fixed inputs.

    python tests/agents/data/make_ppo_checkpoints.py   # rewrites tests/agents/data/ppo_checkpoints/
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import gymnasium as gym
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from test_ppo_checkpoints import LAYOUTS, PolicyBody, probe  # noqa: E402

from llmrl.agents import PPO  # noqa: E402


def main() -> None:
    out = HERE / "ppo_checkpoints"
    shutil.rmtree(out, ignore_errors=True)
    expected = {}
    for name, (env_id, config, custom) in LAYOUTS.items():
        torch.manual_seed(0)
        env = gym.make(env_id)
        agent = PPO(env, seed=0, policy=PolicyBody(env) if custom else None, n_steps=16, batch_size=8,
                    n_epochs=1, **config)  # fmt: skip
        agent.learn(32, progress_bar=False)  # non-zero Adam moments, two updates
        agent.save(out / name)
        out_, value = probe(agent)
        expected[name] = {"out": out_.tolist(), "value": value.tolist(), "adam_steps": agent.optimizer.steps}
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
