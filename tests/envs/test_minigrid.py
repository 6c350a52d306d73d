"""MiniGrid through `llmrl.make`: the flat view the agents train on, the raw env on request, the oracle, and
the state text over the flat view — the same words, at the same cost, as text described under it."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from llmrl.envs import VectorWithText, WithText, make
from llmrl.envs.minigrid import FlatImage
from llmrl.errors import ConfigError

pytest.importorskip("minigrid")


def test_make_gives_the_flat_view_and_the_raw_env_on_request():
    env = make("MiniGrid-DoorKey-5x5-v0")
    assert env.observation_space == gym.spaces.Box(0.0, 1.0, (147,), np.float32)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (147,) and obs.dtype == np.float32 and env.observation_space.contains(obs)
    venv = make("BabyAI-GoToRedBall-v0", num_envs=2)
    assert venv.single_observation_space.shape == (147,)
    raw = make("BabyAI-GoToRedBall-v0", preprocess=False)
    assert isinstance(raw.observation_space, gym.spaces.Dict) and "mission" in raw.observation_space.spaces
    oracle = make("MiniGrid-DoorKey-5x5-v0", oracle=True)
    assert oracle.reset(seed=0)[1]["oracle_goals"] == ["pick up the key"]
    with pytest.raises(ConfigError, match="preprocess="):
        make("ALE/Pong-v5", atari_preprocessing=False)


def _old_vector_env(n: int):
    """What the experiments built before `llmrl.make` gave the flat view: the text under it, per env."""
    return gym.vector.SyncVectorEnv(
        [lambda: FlatImage(WithText(gym.make("MiniGrid-DoorKey-5x5-v0", max_steps=12)))] * n
    )


def test_text_over_the_flat_view_is_the_text_under_it():
    old, new = _old_vector_env(3), WithText(make("MiniGrid-DoorKey-5x5-v0", num_envs=3, max_steps=12))
    assert isinstance(new, VectorWithText)
    rng = np.random.default_rng(0)
    a, b = old.reset(seed=5), new.reset(seed=5)
    ends = 0
    for _ in range(60):  # several episodes (12 steps each), so NEXT_STEP resets and time-outs are crossed
        np.testing.assert_array_equal(a[0], b[0])  # observations
        assert list(a[-1]["text"]) == list(b[-1]["text"])
        assert list(a[-1]["caption"]) == list(b[-1]["caption"])
        actions = rng.integers(0, 6, 3)
        a, b = old.step(actions), new.step(actions)
        np.testing.assert_array_equal(a[1], b[1])  # rewards, unchanged (float64 stays float64)
        assert a[1].dtype == b[1].dtype
        ends += int(np.sum(a[3]))
    assert ends >= 3


def test_text_over_the_flat_view_reads_the_kept_view():
    """The describer takes the view the flat-view wrapper kept instead of asking the env for it again."""
    env = WithText(make("MiniGrid-DoorKey-5x5-v0"))
    base = env.unwrapped
    calls = [0]
    gen_obs = base.gen_obs

    def counted():
        calls[0] += 1
        return gen_obs()

    base.gen_obs = counted
    env.reset(seed=0)
    for _ in range(10):
        env.step(2)
    assert calls[0] == 11  # the env's own: one a reset or step
