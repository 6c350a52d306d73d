"""WithText, TextObservation, ImageObservation: the info contract, spaces, checkers."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from llmrl.envs import GridEnv, ImageObservation, TextObservation, VectorWithText, WithText, make
from llmrl.errors import ConfigError

GRID_START = "cat at column 1, row 1; goal 3 cells right, 2 cells up; puddle 3 cells right, 1 cell up; blocked: down, left"


def _quiet_check(env: gym.Env) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*different from the unwrapped.*")
        check_env(env, skip_render_check=False)


def test_with_text_on_grid_reset_and_step() -> None:
    env = WithText(GridEnv(slip=0.0))
    obs, info = env.reset(seed=0)
    assert obs == 8 and info["text"] == GRID_START and info["caption"] == ""
    _, _, _, _, info = env.step(3)
    assert info["caption"] == "bumped into a wall" and info["text"] == GRID_START
    for a in (0, 0, 1, 1):
        _, _, _, _, info = env.step(a)
    assert (
        info["text"]
        == "cat at column 3, row 3; goal 1 cell right; puddle 1 cell right, 1 cell down; blocked: up"
    )
    _, r, term, _, info = env.step(1)
    assert (r, term, info["caption"]) == (1.0, True, "reached the goal")
    assert info["text"] == "cat at column 4, row 3; goal here; puddle 1 cell down; blocked: up, right"


def test_with_text_pit_slip_and_timeout() -> None:
    env = WithText(GridEnv(slip=0.0, layout=["S.PG"], max_steps=5))
    env.reset(seed=0)
    env.step(1)
    assert env.step(1)[4]["caption"] == "fell into the puddle"
    env = WithText(GridEnv(slip=1.0, max_steps=1))  # always slips: UP turns into RIGHT or LEFT
    env.reset(seed=0)
    caption = env.step(0)[4]["caption"]
    assert caption in ("slipped right", "slipped left and bumped into a wall")
    env = WithText(GridEnv(slip=0.0, max_steps=1))
    env.reset(seed=0)
    assert env.step(0)[4]["caption"] == "ran out of time"


def test_vector_with_text_follows_next_step_autoreset() -> None:
    venv = WithText(make("llmrl/Grid-v0", num_envs=2, slip=0.0, layout=["SG"]))
    assert isinstance(venv, VectorWithText)
    _, infos = venv.reset(seed=0)
    assert list(infos["text"]) == ["cat at column 1, row 1; goal 1 cell right; blocked: up, down, left"] * 2
    _, _, term, _, infos = venv.step(np.array([1, 3]))
    assert list(term) == [True, False] and list(infos["caption"]) == [
        "reached the goal",
        "bumped into a wall",
    ]
    _, _, term, _, infos = venv.step(np.array([1, 1]))  # env 0 resets on this step (NEXT_STEP)
    assert list(infos["caption"]) == ["", "reached the goal"]
    assert infos["text"][0] == "cat at column 1, row 1; goal 1 cell right; blocked: up, down, left"


def test_vector_with_text_native_cartpole() -> None:
    venv = WithText(make("CartPole-v1", num_envs=3))
    _, infos = venv.reset(seed=0)
    assert infos["text"].shape == (3,) and all(t.startswith("cart at x=") for t in infos["text"])


def test_text_observation_spaces_and_checker() -> None:
    env = TextObservation(make("llmrl/Grid-v0"))
    obs, info = env.reset(seed=0)
    assert isinstance(env.observation_space, gym.spaces.Dict)
    assert obs["obs"] == 8 and obs["text"] == GRID_START == info["text"]
    assert env.observation_space.contains(obs)
    _quiet_check(env)
    only = TextObservation(make("CartPole-v1"), text_only=True, max_length=20)
    obs, _ = only.reset(seed=0)
    assert isinstance(obs, str) and len(obs) <= 20 and only.observation_space.contains(obs)
    _quiet_check(only)


def test_image_observation() -> None:
    env = ImageObservation(make("llmrl/Grid-v0", render_mode="rgb_array"), size=84)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (84, 84, 3) and obs.dtype == np.uint8 and env.observation_space.contains(obs)
    grey = ImageObservation(make("CartPole-v1", render_mode="rgb_array"), size=(40, 60), grey=True)
    obs, _ = grey.reset(seed=0)
    assert obs.shape == (40, 60, 1)
    _quiet_check(env)
    sb3_check_env(env)
    with pytest.raises(ConfigError, match="render_mode='rgb_array'"):
        ImageObservation(make("llmrl/Grid-v0"))


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1", "MountainCar-v0", "Pendulum-v1"])
def test_with_text_passes_checkers_on_classic_control(env_id: str) -> None:
    env = WithText(make(env_id))
    _quiet_check(env)
    sb3_check_env(env)


def test_with_text_checkers_on_minigrid_and_atari() -> None:
    pytest.importorskip("minigrid")
    pytest.importorskip("ocatari")
    _quiet_check(WithText(make("MiniGrid-DoorKey-5x5-v0")))
    _quiet_check(TextObservation(make("MiniGrid-DoorKey-5x5-v0")))
    image = ImageObservation(make("MiniGrid-DoorKey-5x5-v0", render_mode="rgb_array"), size=64)
    _quiet_check(image)
    sb3_check_env(image)
    atari = WithText(make("ALE/Pong-v5"))
    _quiet_check(atari)
    sb3_check_env(atari)
