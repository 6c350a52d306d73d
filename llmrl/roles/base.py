"""One mechanism behind every LLM role: batched logic that wraps a single env or a vector env.

A role implements `process` once, over a batch of environments (`llmrl.envs.adapters.BatchCore`). Its
two thin adapters come with the class: wrapping a `gymnasium.Env` builds `Role.Single`, a plain
`gymnasium.Wrapper` (a batch of one: Stable-Baselines3 and RLlib accept it); wrapping a
`gymnasium.vector.VectorEnv` builds `Role.Vector`, a `gymnasium.vector.VectorWrapper` whose LLM calls are
batched across all envs. `isinstance(env, Role)` holds for both.

    env = ELLMGoals(WithText(gymnasium.make("MiniGrid-DoorKey-6x6-v0")), llm)   # single env
    env = ELLMGoals(llmrl.make("MiniGrid-DoorKey-6x6-v0", num_envs=8), llm)      # batched

Vector envs must use Gymnasium's default NEXT_STEP autoreset: the step after an episode ends
returns the first observation of the next one; `process` sees it with `starts[i] = True`.
"""

from __future__ import annotations

from typing import Any

from llmrl.envs.adapters import BatchCore, infos_to_list, list_to_infos
from llmrl.envs.wrappers import WithText, has_text
from llmrl.errors import ConfigError
from llmrl.llm.base import UnsupportedOperationError

__all__ = ["RoleWrapper", "require_capabilities", "has_text", "with_text", "infos_to_list", "list_to_infos"]


class RoleWrapper(BatchCore):
    """Base of the LLM roles. Subclasses call `super().__init__(env)` and implement `process`.

    Subclasses that change the observation space override `transform_space(single_space)`.
    Anything a role wants in the training log it returns from `llmrl_metrics()`; agents collect
    the metrics of every wrapper in the chain that has that method.
    """

    def llmrl_metrics(self) -> dict[str, float]:
        return {}


def require_capabilities(llm: Any, need: Any, role: str, hint: str = "") -> None:
    """The one capability check of the roles, at construction: UnsupportedOperationError (a ConfigError)
    naming what `role` needs and what `llm` offers. A model object that declares no `capabilities` is
    taken on trust (the protocol's calls fail later if it cannot)."""
    caps = getattr(llm, "capabilities", None)
    if caps is None:
        return
    missing = [c for c in need if c not in caps]
    if missing:
        raise UnsupportedOperationError(
            f"{role} needs an LLM that can {missing}, but {getattr(llm, 'name', llm)!r} can {sorted(caps)}; "
            + (hint or "use llmrl.llm.load('embedded') or a backend with that capability.")
        )


def with_text(env: Any) -> Any:
    """`llmrl.envs.WithText(env)` if nothing in the chain provides `info["text"]` and the family has a
    describer; else `env` unchanged (the first step then says which wrapper is missing)."""
    if has_text(env):
        return env
    try:
        return WithText(env)
    except (ImportError, ConfigError):  # no describer for this family: the user brings the text
        return env
