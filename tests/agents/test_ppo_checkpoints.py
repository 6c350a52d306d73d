"""PPO checkpoints written before ActorCritic was split into one class per network layout still load:
same parameters in the same places (the network gives the outputs it gave when saved) and the same Adam
state. The files in data/ppo_checkpoints were written by data/make_ppo_checkpoints.py at commit 950115c."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from llmrl.agents import PPO
from llmrl.errors import CheckpointError

DATA = Path(__file__).resolve().parent / "data" / "ppo_checkpoints"

# layout -> (env id, PPO config, custom policy module?); the class each must load as is in the test
LAYOUTS: dict[str, tuple[str, dict, bool]] = {
    "stacked": ("CartPole-v1", {"net_arch": (8,)}, False),
    "separate": ("Pendulum-v1", {"net_arch": (8,), "activation": "gelu"}, False),
    "shared": ("CartPole-v1", {"net_arch": (8,), "shared_encoder": True}, False),
    "custom": ("CartPole-v1", {}, True),
}
CLASSES = {
    "stacked": "StackedMLPActorCritic",
    "separate": "SeparateActorCritic",
    "shared": "SharedActorCritic",
    "custom": "CustomActorCritic",
}


class PolicyBody(nn.Module):
    """A user's policy module: obs (B, d) -> (logits (B, n), value (B,))."""

    def __init__(self, env: gym.Env):
        super().__init__()
        self.n = int(env.action_space.n)  # type: ignore[attr-defined]
        self.net = nn.Linear(int(np.prod(env.observation_space.shape)), self.n + 1)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(obs.float())
        return h[:, : self.n], h[:, self.n]


def probe(agent: PPO) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's (out, value) on 3 fixed observations."""
    dim = int(np.prod(agent.observation_space.shape))
    obs = torch.linspace(-1, 1, 3 * dim).reshape(3, dim)
    with torch.no_grad():
        return agent.model(obs)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_checkpoints_of_every_network_layout_load(name):
    env_id, _, custom = LAYOUTS[name]
    expected = json.loads((DATA / "expected.json").read_text())[name]
    policy = PolicyBody(gym.make(env_id)) if custom else None
    agent = PPO.load(DATA / name, env=gym.make(env_id), policy=policy)
    assert type(agent.model).__name__ == CLASSES[name]
    out, value = probe(agent)
    torch.testing.assert_close(out, torch.tensor(expected["out"]))
    torch.testing.assert_close(value, torch.tensor(expected["value"]))
    assert agent.optimizer.steps == expected["adam_steps"] > 0
    assert float(agent.optimizer.exp_avg_sq.abs().sum()) > 0
    agent.learn(agent.num_timesteps + 16, progress_bar=False)  # and it trains on from there
    assert agent.optimizer.steps > expected["adam_steps"]


def test_a_checkpoint_of_another_network_is_a_clear_error(tmp_path):
    agent = PPO.load(DATA / "stacked")
    state = agent.model.state_dict()
    agent.model = PPO(gym.make("CartPole-v1"), net_arch=(8,), shared_encoder=True).model
    with pytest.raises(CheckpointError, match="SharedActorCritic"):
        agent._set_state({"model": state, "optimizer": agent.optimizer.state_dict(), "n_updates": 0})
