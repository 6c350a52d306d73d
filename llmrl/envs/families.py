"""The one table of environment families: which family an env id, or a built env, belongs to.

    family_of_id("MiniGrid-DoorKey-6x6-v0")   # 'minigrid' (by the name alone: no import, no registry)
    family_of(gymnasium.make("CartPole-v1"))  # 'cartpole' (by the class of env.unwrapped)

A family is what the rest of llmrl keys on: the describer (`llmrl.envs.describer_for`), the manual
(`llmrl.envs.manual`), the optional package `llmrl.make` registers on demand, a role's defaults and event
tables. Everything that sorts envs into families reads `FAMILIES`; a new family is one more row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Family", "FAMILIES", "family_of_id", "family_of", "atari_game"]


@dataclass(frozen=True)
class Family:
    """An environment family: how its ids and its env classes are recognised."""

    name: str
    """The family's name ('minigrid', 'atari', 'cartpole', ...)."""
    ids: tuple[str, ...]
    """Lower-case substrings of the env ids that belong to it; the first family with a match wins."""
    classes: tuple[tuple[str, str], ...]
    """(module prefix, class name) of a class in the MRO of `env.unwrapped`; class name "" = any class of
    the module. Compared as strings, so no optional package is imported to sort an env."""
    package: str | None = None
    """Optional package whose import (plus `gym.register_envs`) registers the family's ids."""
    extra: str | None = None
    """llmrl extra that installs `package` (errors say `pip install 'llmrl[<extra>]'`)."""


_CLASSIC = "gymnasium.envs.classic_control"

FAMILIES: tuple[Family, ...] = (
    # before "grid": a MiniGrid id holds "grid" too
    Family("minigrid", ("minigrid-", "babyai-"), (("minigrid", "MiniGridEnv"),), "minigrid", "minigrid"),
    Family("grid", ("grid-v",), (("llmrl.envs.grid", "GridEnv"),)),
    Family("atari", ("ale/", "noframeskip"), (("ale_py", ""),), "ale_py", "atari"),
    Family("cartpole", ("cartpole",), ((_CLASSIC, "CartPoleEnv"), (_CLASSIC, "CartPoleVectorEnv"))),
    Family("acrobot", ("acrobot",), ((_CLASSIC, "AcrobotEnv"),)),
    Family(
        "mountaincar",
        ("mountaincar",),
        ((_CLASSIC, "MountainCarEnv"), (_CLASSIC, "Continuous_MountainCarEnv")),
    ),
    Family("pendulum", ("pendulum",), ((_CLASSIC, "PendulumEnv"),)),
)


def family_of_id(env_id: str) -> str | None:
    """The family `env_id` belongs to by its name alone, or None."""
    key = str(env_id).lower()
    for family in FAMILIES:
        if any(p in key for p in family.ids):
            return family.name
    return None


def family_of(env: Any) -> str:
    """The family of a built env (single or native vector) by the class of `env.unwrapped`: 'grid',
    'minigrid', 'atari', 'cartpole', 'acrobot', 'mountaincar', 'pendulum', or 'unknown'."""
    mro = type(env.unwrapped).__mro__
    for family in FAMILIES:
        for module, name in family.classes:
            if any(c.__module__.startswith(module) and (not name or c.__name__ == name) for c in mro):
                return family.name
    return "unknown"


def atari_game(env_id: str) -> str:
    """The game of an Atari id, lower case, without version or variant: 'ALE/MontezumaRevenge-v5' and
    'MontezumaRevengeNoFrameskip-v4' give 'montezumarevenge'."""
    name = str(env_id).rsplit("/", 1)[-1].split("-")[0]
    return name.lower().replace("noframeskip", "").replace("deterministic", "")
