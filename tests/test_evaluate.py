"""evaluate(): exact returns on a scripted env, single and vector envs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from llmrl.errors import ConfigError
from llmrl.evaluate import evaluate


class _Count(gym.Env):
    """Episode k (per env instance) lasts k+1 steps with reward 1 per step."""

    observation_space = spaces.Box(-1, 1, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self):
        self.k, self.t = -1, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.k, self.t = self.k + 1, 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), 1.0, self.t > self.k, False, {}


class _Zero:
    def predict(self, obs, deterministic=True):
        return np.zeros(len(obs), dtype=np.int64)


def test_single_env_returns_are_exact():
    res = evaluate(_Zero(), _Count(), n_episodes=4)
    assert res.returns == [1.0, 2.0, 3.0, 4.0] and res.lengths == [1, 2, 3, 4]
    assert res.mean == pytest.approx(2.5) and res.std == pytest.approx(np.std([1, 2, 3, 4]))


def test_vector_env_counts_each_env_equally():
    venv = gym.vector.SyncVectorEnv([_Count, _Count])
    res = evaluate(_Zero(), venv, n_episodes=4)
    assert sorted(res.returns) == [1.0, 1.0, 2.0, 2.0]


def test_bad_episode_count():
    with pytest.raises(ConfigError, match="n_episodes=0"):
        evaluate(_Zero(), _Count(), n_episodes=0)
