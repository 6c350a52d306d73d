"""Describers and captions: exact text for known situations on fixed seeds and scripted trajectories."""

from __future__ import annotations

import numpy as np
import pytest

from llmrl.envs import WithText, describer_for, family_of, make, manual
from llmrl.envs.text import CartPoleDescriber, MountainCarDescriber, PendulumDescriber, quantise
from llmrl.errors import ConfigError

DOORKEY_MISSION = "Mission: use the key to open the door and then get to the goal."


def test_quantise_removes_negative_zero_and_snaps() -> None:
    assert quantise(-0.01, 0.1) == 0.0 and str(quantise(-0.01, 0.1)) == "0.0"
    assert quantise(0.26, 0.25) == 0.25 and quantise(13, 2) == 14


def test_classic_control_texts_are_quantised() -> None:
    d = CartPoleDescriber()
    a = d.reset(None, np.array([0.02, 0.1, 0.035, -0.3]))
    b = d.reset(None, np.array([0.04, 0.05, 0.030, -0.2]))  # a nearby state: same words
    assert a == b == "cart at x=+0.0; pole leans right 2 deg, turning left"
    text, cap = d.step(None, np.array([0.5, 0.6, 0.25, 1.0]), 1, 1.0, True, False, {})
    assert (
        text == "cart at x=+0.5 moving right; pole leans right 14 deg, turning right"
        and cap == "the pole fell"
    )
    m = MountainCarDescriber()
    m.reset(None, np.array([-0.5, 0.0]))
    assert m.step(None, np.array([0.51, 0.012]), 2, -1.0, True, False, {}) == (
        "car at x=+0.50 (valley bottom -0.52, flag at +0.50), moving right at speed 0.010",
        "reached the flag",
    )
    p = PendulumDescriber()
    assert (
        p.reset(None, np.array([np.cos(0.5), np.sin(0.5), -1.2]))
        == "pendulum 30 deg left of upright, turning right at 1.0 rad/s"
    )


def test_minigrid_doorkey_scripted_key_door_goal() -> None:
    pytest.importorskip("minigrid")
    env = WithText(make("MiniGrid-DoorKey-5x5-v0"))
    _, info = env.reset(seed=1)
    assert info["text"] == (
        f"{DOORKEY_MISSION} You see a locked yellow door 1 step left; a yellow key 1 step ahead. You carry nothing."
    )
    captions, texts = [], []
    for action in (3, 0, 5, 2, 2, 1, 2):  # pickup, left, toggle, forward, forward, right, forward
        _, reward, terminated, _, info = env.step(action)
        captions.append(info["caption"])
        texts.append(info["text"])
    assert captions == [
        "picked up the yellow key",
        "",
        "opened the yellow door",
        "",
        "",
        "",
        "reached the goal",
    ]
    assert texts[1] == f"{DOORKEY_MISSION} You see a locked yellow door 1 step ahead. You carry a yellow key."
    assert texts[2] == (
        f"{DOORKEY_MISSION} You see an open yellow door 1 step ahead; the goal 1 step right, 2 steps ahead. "
        "You carry a yellow key."
    )
    assert terminated and reward > 0


def test_minigrid_drop_and_lava() -> None:
    pytest.importorskip("minigrid")
    env = WithText(make("MiniGrid-DoorKey-5x5-v0"))
    env.reset(seed=1)
    env.step(3)  # pick up the key: the cell in front is now free
    assert env.step(4)[4]["caption"] == "dropped the yellow key"
    lava = WithText(make("MiniGrid-LavaCrossingS9N1-v0"))
    _, info = lava.reset(seed=0)
    assert info["text"].startswith(
        "Mission: avoid the lava and get to the green goal square. You see lava 1 step right, 1 step ahead;"
    )
    assert lava.step(2)[4]["caption"] == ""  # forward along the lava row (facing east, the row on its right)
    lava.step(1)  # turn right: lava in front
    _, _, terminated, _, info = lava.step(2)
    assert terminated and info["caption"] == "fell into the lava"


def test_babyai_mission_in_text() -> None:
    pytest.importorskip("minigrid")
    env = WithText(make("BabyAI-GoToRedBall-v0"))
    _, info = env.reset(seed=0)
    assert info["text"].startswith("Mission: go to the red ball. You see ")
    assert info["text"].endswith("You carry nothing.")


def _atari(env_id: str) -> WithText:
    pytest.importorskip("ocatari")
    return WithText(make(env_id))


def test_breakout_ball_moving_and_lives() -> None:
    env = _atari("ALE/Breakout-v5")
    _, info = env.reset(seed=0)
    assert info["text"] == "paddle at x=104; no ball in play; 5 lives"
    env.step(1)  # FIRE serves the ball
    _, _, _, _, info = env.step(0)
    assert (
        info["text"]
        == "paddle at x=104; ball at x=136, y=128, moving down-left, right of the paddle; 5 lives"
    )
    captions = []
    for _ in range(200):  # NOOP: the paddle misses the ball
        _, _, term, _, info = env.step(0)
        captions.append(info["caption"])
        if info["caption"]:
            break
    assert captions[-1] == "lost a life" and info["text"].endswith("4 lives")


def test_pong_text_has_no_lives_and_point_captions() -> None:
    env = _atari("ALE/Pong-v5")
    _, info = env.reset(seed=0)
    assert info["text"].startswith("your paddle (right) at y=") and "lives" not in info["text"]
    captions = set()
    for _ in range(400):
        _, reward, *_, info = env.step(0)
        if reward:
            captions.add(info["caption"])
            break
    assert captions == {"lost the point"}


def test_montezuma_room_one_and_key_caption() -> None:
    env = _atari("ALE/MontezumaRevenge-v5")
    env.reset(seed=0)
    _, _, _, _, info = env.step(0)
    assert info["text"].startswith("room 1; player at x=80, y=")
    assert "key at x=16, y=104" in info["text"] and "doors at x=24, 136" in info["text"]
    d = env.describer
    prev = ((("Player", 16, 104, ""), ("Key", 16, 104, ""), ("Barrier", 24, 56, "")), 5, 1)
    after = ((("Player", 16, 104, ""), ("Barrier", 24, 56, "")), 5, 1)
    assert d.caption(prev, after, 0, 100.0, False, False, {}) == "picked up the key"
    no_door = ((("Player", 24, 56, ""),), 4, 1)
    assert d.caption(after, no_door, 0, 300.0, False, False, {}) == "opened a door and lost a life"
    assert d.caption(after, ((), 5, 0), 0, 0.0, False, False, {}) == "entered room 0"


def test_dispatch_and_unknown_family() -> None:
    assert family_of(make("llmrl/Grid-v0")) == "grid"
    assert family_of(make("Acrobot-v1")) == "acrobot"
    assert type(describer_for(make("MountainCarContinuous-v0"))).__name__ == "MountainCarDescriber"
    with pytest.raises(ConfigError, match="register_describer"):
        describer_for(make("FrozenLake-v1"))


def test_manuals() -> None:
    assert "puddle" in manual("llmrl/Grid-v0") and "-1" in manual("Grid-v0")
    assert "locked door" in manual("MiniGrid-DoorKey-6x6-v0") and manual("BabyAI-GoToRedBall-v0") == manual(
        "minigrid"
    )
    assert "skull" in manual("ALE/MontezumaRevenge-v5") and "paddle" in manual("BreakoutNoFrameskip-v4")
    assert manual("ALE/Seaquest-v5") == manual("atari") and "pole" in manual("CartPole-v1")
    with pytest.raises(ConfigError, match="No manual"):
        manual("FrozenLake-v1")
