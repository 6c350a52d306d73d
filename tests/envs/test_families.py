"""One table of env families (llmrl.envs.families): ids and built envs sort the same way, and the
manuals, `llmrl.make`'s optional packages and the roles' defaults all read it."""

from __future__ import annotations

import pytest

from llmrl.envs import FAMILIES, family_of, family_of_id, make, manual
from llmrl.envs.families import atari_game
from llmrl.roles.registry import role_defaults


@pytest.mark.parametrize(
    ("env_id", "family"),
    [
        ("llmrl/Grid-v0", "grid"),
        ("Grid-v0", "grid"),
        ("MiniGrid-DoorKey-6x6-v0", "minigrid"),
        ("BabyAI-GoToRedBall-v0", "minigrid"),
        ("ALE/MontezumaRevenge-v5", "atari"),
        ("BreakoutNoFrameskip-v4", "atari"),
        ("CartPole-v1", "cartpole"),
        ("Acrobot-v1", "acrobot"),
        ("MountainCarContinuous-v0", "mountaincar"),
        ("Pendulum-v1", "pendulum"),
        ("FrozenLake-v1", None),
    ],
)
def test_ids_sort_into_families(env_id, family):
    assert family_of_id(env_id) == family


@pytest.mark.parametrize(
    "env_id",
    [
        "llmrl/Grid-v0",
        "CartPole-v1",
        "Acrobot-v1",
        "MountainCar-v0",
        "MountainCarContinuous-v0",
        "Pendulum-v1",
    ],
)
def test_a_built_env_is_in_the_family_of_its_id(env_id):
    assert family_of(make(env_id)) == family_of_id(env_id)


def test_optional_families_sort_by_class_too():
    pytest.importorskip("minigrid")
    assert family_of(make("BabyAI-GoToRedBall-v0")) == "minigrid"
    assert family_of(make("MiniGrid-DoorKey-5x5-v0", num_envs=2).envs[0]) == "minigrid"  # type: ignore[attr-defined]
    pytest.importorskip("ale_py")
    assert family_of(make("ALE/Pong-v5")) == "atari"
    assert family_of(make("FrozenLake-v1")) == "unknown"


def test_every_family_has_a_manual_and_atari_games_their_own():
    for family in FAMILIES:
        assert manual(family.name)
    assert (
        atari_game("ALE/MontezumaRevenge-v5")
        == atari_game("MontezumaRevengeNoFrameskip-v4")
        == "montezumarevenge"
    )
    assert manual("ALE/Breakout-v5") == manual("breakout") != manual("atari") == manual("ALE/Seaquest-v5")


def test_role_defaults_read_the_family():
    assert role_defaults("ellm", "BabyAI-GoToRedBall-v0")["text_filter"] == "minigrid_summary"
    assert "text_filter" not in role_defaults("ellm", "llmrl/Grid-v0")
