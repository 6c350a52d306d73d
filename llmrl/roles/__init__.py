"""The ways a language model takes part in RL, each a Gymnasium wrapper over a single or vector env.

    from llmrl.roles import LLMFeatures, ELLMGoals, JudgeReward
    env = LLMFeatures(llmrl.make("llmrl/Grid-v0", num_envs=4), llmrl.llm.load("embedded"))

`make_role(name, env, llm, **kwargs)` builds one by its CLI name (see `ROLES`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from llmrl.errors import ConfigError
from llmrl.roles.advice import Advisor
from llmrl.roles.base import RoleWrapper, with_text
from llmrl.roles.features import LLMFeatures
from llmrl.roles.goals import ELLMGoals, SayCan, Skill
from llmrl.roles.rewards import CLIPReward, JudgeReward, ManualReward, PreferenceReward, TextGoalReward
from llmrl.roles.world_model import LLMWorldModel, SimulatorModel, WorldModelPlanner

__all__ = [
    "RoleWrapper",
    "LLMFeatures",
    "Advisor",
    "ELLMGoals",
    "SayCan",
    "Skill",
    "JudgeReward",
    "CLIPReward",
    "TextGoalReward",
    "ManualReward",
    "PreferenceReward",
    "LLMWorldModel",
    "SimulatorModel",
    "WorldModelPlanner",
    "ROLES",
    "make_role",
]

ROLES: dict[str, Callable[..., RoleWrapper]] = {
    "features": LLMFeatures,
    "ellm": ELLMGoals,
    "judge": JudgeReward,
    "manual-reward": ManualReward,
    "text-reward": TextGoalReward,
    "preference": PreferenceReward,
}
"""CLI names of the roles (`llmrl train --role NAME`). CLIPReward takes a CLIP model rather than an
LLM, so it is used from Python only."""


def make_role(name: str, env: Any, llm: Any, **kwargs: Any) -> RoleWrapper:
    """Wrap `env` in the role called `name` (a key of ROLES), talking to `llm`; the state text
    (`llmrl.envs.WithText`) is added first when nothing in the chain provides it."""
    if name not in ROLES:
        raise ConfigError(f"unknown role {name!r}; choose one of {', '.join(ROLES)}")
    params = inspect.signature(ROLES[name].__init__).parameters  # type: ignore[misc]
    options = [p for p in params if p not in ("self", "env", "llm")]
    unknown = [k for k in kwargs if k not in options]
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise ConfigError(
            f"role {name!r} has no option {', '.join(unknown)}; its options are {', '.join(options)}"
        )
    missing = [p.name for p in params.values() if p.name in options and p.default is p.empty
               and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in kwargs]  # fmt: skip
    if missing:
        raise ConfigError(f"role {name!r} needs {', '.join(missing)} (CLI: --role-args {missing[0]} <value>)")
    return ROLES[name](with_text(env), llm, **kwargs)
