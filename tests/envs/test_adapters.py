"""The batch core and its two adapters: one `process`, a gymnasium.Wrapper and a VectorWrapper around it."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorWrapper
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from llmrl.envs import GridEnv, TextSource, VectorWithText, WithText, has_text, make
from llmrl.envs.adapters import BatchCore
from llmrl.errors import ConfigError
from llmrl.training import get_env_state, set_env_state


class StepCount(BatchCore):
    """Adds the number of steps since the episode start to the reward and the observation (a 2-vector)."""

    def __init__(self, env):
        super().__init__(env)
        self.t = np.zeros(self.num_envs, dtype=np.int64)
        self.seen_starts: list[list[bool]] = []

    def transform_space(self, space):
        return spaces.Box(0, 1000, (2,), np.int64)

    def process(self, obs, rewards, terminated, truncated, infos, starts):
        self.seen_starts.append(starts.tolist())
        self.t = np.where(starts, 0, self.t + 1)
        for i, info in enumerate(infos):
            info["t"] = int(self.t[i])
        return np.stack([np.asarray(obs, dtype=np.int64), self.t], axis=1), rewards + self.t


def test_the_class_builds_the_adapter_that_fits_the_env() -> None:
    single = StepCount(GridEnv(slip=0.0))
    vector = StepCount(make("llmrl/Grid-v0", num_envs=2, slip=0.0))
    assert type(single) is StepCount.Single and type(vector) is StepCount.Vector
    assert isinstance(single, StepCount) and isinstance(vector, StepCount)
    # one Gymnasium kind each, never both (SB3 and RLlib check for gymnasium.Env)
    assert isinstance(single, gym.Wrapper) and not isinstance(single, VectorWrapper)
    assert isinstance(vector, VectorWrapper) and not isinstance(vector, gym.Env)
    # the name a checkpoint records for the chain stays the core's
    assert type(single).__qualname__ == type(vector).__qualname__ == "StepCount"
    with pytest.raises(ConfigError, match="wraps a single env"):
        StepCount.Single(make("llmrl/Grid-v0", num_envs=2))
    with pytest.raises(ConfigError, match="wraps a vector env"):
        StepCount.Vector(GridEnv())


def test_single_and_vector_adapters_give_the_same_numbers() -> None:
    layout = ["S.G"]
    single = StepCount(GridEnv(slip=0.0, layout=layout))
    vector = StepCount(make("llmrl/Grid-v0", num_envs=2, slip=0.0, layout=layout))
    obs, info = single.reset(seed=0)
    vobs, vinfo = vector.reset(seed=0)
    assert obs.tolist() == vobs[0].tolist() and info["t"] == 0 and list(vinfo["t"]) == [0, 0]
    assert single.observation_space == spaces.Box(0, 1000, (2,), np.int64)
    assert vector.observation_space.shape == (2, 2)
    for _ in range(2):  # two steps right reach the goal
        obs, r, term, trunc, info = single.step(1)
        vobs, vr, vterm, vtrunc, vinfo = vector.step(np.array([1, 1]))
        assert isinstance(r, float) and isinstance(term, bool)
        assert (
            obs.tolist() == vobs[0].tolist()
            and r == vr[0]
            and term == vterm[0]
            and info["t"] == vinfo["t"][0]
        )
    assert term and r == 1.0 + 2
    # NEXT_STEP autoreset: the vector's next step is the reset, which process sees as a start
    vector.step(np.array([1, 1]))
    assert vector.seen_starts[-1] == [True, True] and single.seen_starts == [[True], [False], [False]]


def test_single_adapter_passes_sb3_checker() -> None:
    sb3_check_env(StepCount(GridEnv()), warn=False)


def test_vector_adapter_needs_next_step_autoreset() -> None:
    venv = gym.vector.SyncVectorEnv([GridEnv] * 2, autoreset_mode=AutoresetMode.SAME_STEP)
    with pytest.raises(ConfigError, match="NEXT_STEP"):
        StepCount(venv)


def test_checkpoint_state_round_trips_through_the_adapter() -> None:
    env = StepCount(GridEnv(slip=0.0))
    env.reset(seed=0)
    env.step(1)
    state = get_env_state(env)
    fresh = StepCount(GridEnv(slip=0.0))
    assert set_env_state(fresh, state) and fresh.t.tolist() == [1]


class TextEnv(TextSource, GridEnv):
    """A grid that writes info["text"] itself."""


def test_has_text_is_a_type_check() -> None:
    assert not has_text(GridEnv())
    assert has_text(WithText(GridEnv())) and has_text(StepCount(WithText(GridEnv())))
    assert has_text(TextEnv()) and has_text(gym.wrappers.TimeLimit(TextEnv(), 5))
    venv = WithText(make("llmrl/Grid-v0", num_envs=2))
    assert isinstance(venv, VectorWithText) and has_text(venv)
    # a sync vector env batches its envs' info["text"]
    assert has_text(gym.vector.SyncVectorEnv([lambda: WithText(GridEnv())] * 2))
    assert not has_text(gym.vector.SyncVectorEnv([GridEnv] * 2))
