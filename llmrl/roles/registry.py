"""The one registry of role names, and the defaults a role takes from the environment it wraps.

    role_names()                                   # ('features', 'ellm', 'judge', ...): the CLI's choices
    role_class("ellm")                             # ELLMGoals
    role_defaults("ellm", "MiniGrid-DoorKey-6x6-v0")  # {'manual': '...', 'text_filter': 'minigrid_summary'}

Presets are YAML, so a role's callable options (ELLM's `text_filter`) are named here: a preset writes
`text_filter: minigrid_summary`, and the role looks the name up in `TEXT_FILTERS`. The classes are
imported on first use, so reading the names (the CLI's `--help`) loads no role module.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
from collections.abc import Callable
from typing import Any

from llmrl.envs.text_minigrid import minigrid_summary
from llmrl.errors import ConfigError

__all__ = [
    "ROLE_PATHS",
    "TEXT_FILTERS",
    "role_names",
    "role_class",
    "role_defaults",
    "text_filter",
    "register_text_filter",
]

ROLE_PATHS: dict[str, str] = {
    "features": "llmrl.roles.features:LLMFeatures",
    "ellm": "llmrl.roles.goals:ELLMGoals",
    "judge": "llmrl.roles.rewards:JudgeReward",
    "manual-reward": "llmrl.roles.rewards:ManualReward",
    "text-reward": "llmrl.roles.rewards:TextGoalReward",
    "preference": "llmrl.roles.rewards:PreferenceReward",
    "policy": "llmrl.roles.policy:PolicyRole",
    "world-model": "llmrl.roles.world_model:WorldModelMonitor",
}
"""Role name (`llmrl train --role NAME`, a preset's `role:`) -> "module:Class". CLIPReward takes a CLIP
model rather than an LLM, so it is used from Python only."""

TEXT_FILTERS: dict[str, Callable[[str], str]] = {"minigrid_summary": minigrid_summary}
"""Name -> state-text filter, for roles' `text_filter` option given by name (from YAML)."""


def role_names() -> tuple[str, ...]:
    """Every registered role name, in registry order."""
    return tuple(ROLE_PATHS)


def role_class(name: str) -> type:
    """The role class called `name`; ConfigError (with the closest name) for an unknown one."""
    if name not in ROLE_PATHS:
        close = difflib.get_close_matches(name, list(ROLE_PATHS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown role {name!r}.{hint} Choose one of {', '.join(ROLE_PATHS)}")
    module, cls = ROLE_PATHS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def register_text_filter(name: str, fn: Callable[[str], str]) -> None:
    """Make `fn` usable as `text_filter: <name>` in presets and `--role-args text_filter <name>`."""
    TEXT_FILTERS[name] = fn


def text_filter(spec: str | Callable[[str], str] | None) -> Callable[[str], str] | None:
    """A text filter from its registered name (or the callable itself, or None)."""
    if spec is None or callable(spec):
        return spec
    if spec not in TEXT_FILTERS:
        raise ConfigError(f"unknown text_filter {spec!r}; registered: {', '.join(sorted(TEXT_FILTERS))}")
    return TEXT_FILTERS[spec]


def role_defaults(name: str, env_id: str | None) -> dict[str, Any]:
    """Options role `name` takes by default on environment `env_id` (the caller's options win).

    ELLM gets the environment's game manual (`llmrl.envs.manual`) and, on MiniGrid/BabyAI, the
    `minigrid_summary` filter: with both, the benchmark's ranking puts the oracle's sub-goal in the top
    2 in every DoorKey phase (benchmarks/planner.py), and the prompts repeat, so the LLM is asked rarely.
    """
    if name != "ellm" or not env_id:
        return {}
    from llmrl.envs import family_of_id, manual

    out: dict[str, Any] = {}
    with contextlib.suppress(ConfigError):  # no manual for this family: the prompt goes without one
        out["manual"] = manual(env_id)
    if family_of_id(env_id) == "minigrid":
        out["text_filter"] = "minigrid_summary"
    return out
