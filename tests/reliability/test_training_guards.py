"""NaN/inf never trains silently: config values, rewards, observations, losses and weights."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import llmrl
from llmrl import DQN, PPO
from llmrl.errors import ConfigError, NonFiniteError
from llmrl.training import load_checkpoint


class Poisoned(gym.Wrapper):
    """CartPole whose reward (or observation) turns bad after `after` steps."""

    def __init__(self, env, *, after: int, what: str, value: float):
        super().__init__(env)
        self.after, self.what, self.value, self.t = after, what, value, 0

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(action)
        self.t += 1
        if self.t > self.after:
            if self.what == "reward":
                r = self.value
            else:
                obs = np.full_like(obs, self.value)
        return obs, r, term, trunc, info


@pytest.mark.parametrize("cls", [PPO, DQN])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, "abc", True])
@pytest.mark.parametrize("field", ["learning_rate", "gamma"])
def test_config_rejects_non_finite_and_non_numbers(cls, value, field):
    with pytest.raises(ConfigError, match=f"{field}=.*finite number"):
        cls(llmrl.make("CartPole-v1"), **{field: value})


def test_optional_settings_still_accept_none():
    PPO(llmrl.make("CartPole-v1"), target_kl=None, clip_range_vf=None)
    DQN(llmrl.make("CartPole-v1"), max_grad_norm=None)
    with pytest.raises(ConfigError, match="target_kl"):
        PPO(llmrl.make("CartPole-v1"), target_kl=math.inf)


@pytest.mark.parametrize("what,value", [("reward", math.nan), ("reward", math.inf), ("obs", math.nan)])
@pytest.mark.parametrize("cls", [PPO, DQN])
def test_non_finite_env_values_stop_the_run_and_keep_the_checkpoint(tmp_path, cls, what, value):
    env = Poisoned(gym.make("CartPole-v1"), after=300, what=what, value=value)
    kw = {"n_steps": 128} if cls is PPO else {"learning_starts": 50, "log_interval": 128}
    agent = cls(env, seed=0, **kw)
    run = tmp_path / "run"
    with pytest.raises(
        NonFiniteError, match=f"non-finite {'reward' if what == 'reward' else 'observation'}"
    ) as info:
        agent.learn(1000, run_dir=run, checkpoint_every=128, progress_bar=False)
    msg = str(info.value)
    assert "\n" not in msg and "Poisoned" in msg and "The last checkpoint (step" in msg
    state = load_checkpoint(run / "checkpoint")
    assert 0 < state["num_timesteps"] <= 300
    weights = [v for v in state["agent"].values() if isinstance(v, dict)]
    assert weights  # the saved networks hold only finite numbers
    for group in weights:
        for t in group.values():
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                assert torch.isfinite(t).all()


@pytest.mark.parametrize("cls", [PPO, DQN])
def test_a_finite_but_huge_reward_that_overflows_the_loss_stops_the_run(tmp_path, cls):
    env = Poisoned(gym.make("CartPole-v1"), after=200, what="reward", value=3e38)
    kw = {"n_steps": 128} if cls is PPO else {"learning_starts": 50}
    agent = cls(env, seed=0, **kw)
    with pytest.raises(NonFiniteError, match=r"(loss\S* is|weight .* became non-finite)"):
        agent.learn(2000, progress_bar=False)
