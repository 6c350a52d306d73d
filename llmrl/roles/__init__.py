"""The ways a language model takes part in RL, each a Gymnasium wrapper over a single or vector env.

    from llmrl.roles import LLMFeatures, ELLMGoals, JudgeReward
    env = LLMFeatures(llmrl.make("llmrl/Grid-v0", num_envs=4), llmrl.llm.load("embedded"))

`make_role(name, env, llm, **kwargs)` builds one by its registered name (`llmrl.roles.registry`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from llmrl.errors import ConfigError
from llmrl.roles.advice import Advisor
from llmrl.roles.base import RoleWrapper, with_text
from llmrl.roles.features import LLMFeatures
from llmrl.roles.goals import ELLMGoals
from llmrl.roles.policy import GLAM_ACTIONS, LLMPolicy, TextIds
from llmrl.roles.registry import role_class, role_defaults, role_names
from llmrl.roles.rewards import CLIPReward, JudgeReward, ManualReward, PreferenceReward, TextGoalReward
from llmrl.roles.saycan import SayCan, Skill
from llmrl.roles.vlm_policy import VLMPolicy
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
    "LLMPolicy",
    "TextIds",
    "GLAM_ACTIONS",
    "VLMPolicy",
    "LLMWorldModel",
    "SimulatorModel",
    "WorldModelPlanner",
    "ROLES",
    "make_role",
]

ROLES: dict[str, Callable[..., RoleWrapper]] = {name: role_class(name) for name in role_names()}
"""Role name -> class, from the one registry (`llmrl.roles.registry.ROLE_PATHS`)."""


def make_role(name: str, env: Any, llm: Any, *, env_id: str | None = None, **kwargs: Any) -> RoleWrapper:
    """Wrap `env` in the role called `name` (see `llmrl.roles.registry`), talking to `llm`; the state
    text (`llmrl.envs.WithText`) is added first when nothing in the chain provides it. With `env_id`,
    the role's defaults for that environment (`role_defaults`) apply under `kwargs`."""
    cls = role_class(name)
    params = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    options = [p for p in params if p not in ("self", "env", "llm")]
    unknown = [k for k in kwargs if k not in options]
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise ConfigError(
            f"role {name!r} has no option {', '.join(unknown)}; its options are {', '.join(options)}"
        )
    kwargs = {**role_defaults(name, env_id), **kwargs}
    missing = [p.name for p in params.values() if p.name in options and p.default is p.empty
               and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in kwargs]  # fmt: skip
    if missing:
        raise ConfigError(f"role {name!r} needs {', '.join(missing)} (CLI: --role-args {missing[0]} <value>)")
    return cls(with_text(env), llm, **kwargs)
