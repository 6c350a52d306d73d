"""The seed's Grid world: dynamics, rewards, renders, variants, checkers."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import llmrl.envs  # noqa: F401  (registers llmrl/Grid-v0)
from llmrl.envs import GridEnv, make
from llmrl.errors import ConfigError


def test_registered_and_classic_layout() -> None:
    env = gym.make("llmrl/Grid-v0")
    obs, info = env.reset(seed=0)
    assert env.observation_space == gym.spaces.Discrete(12) and env.action_space == gym.spaces.Discrete(4)
    assert obs == 8 and info["cell"] == "S"  # bottom-left of the 4x3 grid, row 2 (from the top) * 4 + col 0
    assert env.unwrapped.get_action_meanings() == ["UP", "RIGHT", "DOWN", "LEFT"]
    assert make("Grid-v0").unwrapped.width == 4  # the bare name resolves too


def test_deterministic_path_to_goal_and_pit() -> None:
    env = GridEnv(slip=0.0)
    env.reset(seed=0)
    rewards = [env.step(a)[1] for a in (0, 0, 1, 1)]  # up, up, right, right
    obs, r, term, trunc, info = env.step(1)
    assert rewards == [-0.04] * 4 and (obs, r, term, trunc, info["cell"]) == (3, 1.0, True, False, "G")
    env.reset()
    for a in (1, 1, 1):  # along the bottom row
        env.step(a)
    obs, r, term, *_ = env.step(0)  # up into the pit
    assert (obs, r, term) == (7, -1.0, True)


def test_wall_and_border_block() -> None:
    env = GridEnv(slip=0.0)
    env.reset(seed=0)
    assert env.step(3)[0] == 8  # left border
    env.step(0)  # up to (row 1, col 0)
    obs, _, _, _, info = env.step(1)  # the wall is at (row 1, col 1)
    assert obs == 4 and info["moved"] is False


def test_slip_probabilities() -> None:
    env = GridEnv()
    env.reset(seed=123)
    directions = []
    for _ in range(4000):
        env.pos = (1, 2)  # middle cell of the right half, free on all sides but the pit
        directions.append(env.step(0)[4]["direction"])
    counts = {d: directions.count(d) / len(directions) for d in ("UP", "LEFT", "RIGHT", "DOWN")}
    assert (
        abs(counts["UP"] - 0.8) < 0.03
        and abs(counts["LEFT"] - 0.1) < 0.02
        and abs(counts["RIGHT"] - 0.1) < 0.02
    )
    assert counts["DOWN"] == 0


def test_truncation_after_max_steps() -> None:
    env = GridEnv(slip=0.0, max_steps=3)
    env.reset(seed=0)
    outs = [env.step(3) for _ in range(3)]  # bump into the left border
    assert [o[3] for o in outs] == [False, False, True] and not any(o[2] for o in outs)


def test_renders() -> None:
    env = GridEnv(render_mode="rgb_array", cell_px=16)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
    cat_tile = frame[32:48, 0:16]
    assert (cat_tile == (240, 150, 50)).all(-1).sum() > 20  # orange fur where the cat is
    assert (frame[16:32, 48:64] == (70, 130, 220)).all(-1).sum() > 50  # the puddle (pit) is blue water
    ansi = GridEnv(render_mode="ansi")
    ansi.reset()
    assert ansi.render() == ". . . G\n. # . P\nC . . .\n"


def test_layout_variants_and_errors() -> None:
    env = GridEnv(layout=["S..P", "..#.", "P..G"])
    assert env.observation_space.n == 12 and env.start == (0, 0)
    with pytest.raises(ConfigError, match="exactly one start"):
        GridEnv(layout=["...G"])
    with pytest.raises(ConfigError, match="unknown cells"):
        GridEnv(layout=["S.xG"])
    with pytest.raises(ConfigError, match="slip"):
        GridEnv(slip=1.5)


@pytest.mark.parametrize("render_mode", [None, "rgb_array", "ansi"])
def test_env_checkers(render_mode: str | None) -> None:
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make("llmrl/Grid-v0", render_mode=render_mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error", category=UserWarning)
        check_env(env.unwrapped)
    sb3_check_env(env.unwrapped)
