"""One mechanism behind every LLM role: batched logic that wraps a single env or a vector env.

A role implements `process` once, over a batch of environments. Wrapping a `gymnasium.Env` gives a
plain `gymnasium.Wrapper` (a batch of one: Stable-Baselines3 and RLlib accept it); wrapping a
`gymnasium.vector.VectorEnv` gives a vector wrapper whose LLM calls are batched across all envs.

    env = ELLMGoals(WithText(gymnasium.make("MiniGrid-DoorKey-6x6-v0")), llm)   # single env
    env = ELLMGoals(llmrl.make("MiniGrid-DoorKey-6x6-v0", num_envs=8), llm)      # batched

Vector envs must use Gymnasium's default NEXT_STEP autoreset: the step after an episode ends
returns the first observation of the next one; `process` sees it with `starts[i] = True`.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from llmrl.errors import ConfigError
from llmrl.llm.base import UnsupportedOperationError

__all__ = ["RoleWrapper", "require_capabilities", "has_text", "with_text", "infos_to_list", "list_to_infos"]


class RoleWrapper(gym.Wrapper):
    """Base of the LLM roles. Subclasses call `super().__init__(env)` and implement `process`.

    Subclasses that change the observation space override `transform_space(single_space)`.
    Anything a role wants in the training log it returns from `llmrl_metrics()`; agents collect
    the metrics of every wrapper in the chain that has that method.
    """

    is_vector: bool

    def __new__(cls, env: Any, *args: Any, **kwargs: Any):
        if isinstance(env, VectorEnv) and not issubclass(cls, VectorWrapper):
            return super().__new__(_vector_class(cls))  # type: ignore[arg-type]
        return super().__new__(cls)

    def __init__(self, env: Any):
        self.is_vector = isinstance(env, VectorEnv)
        if self.is_vector:
            VectorWrapper.__init__(self, env)  # type: ignore[arg-type]
            mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
            if mode != AutoresetMode.NEXT_STEP:
                raise ConfigError(
                    f"{type(self).__name__} needs a vector env with autoreset_mode=NEXT_STEP, not {mode}; "
                    "build it with llmrl.make(env_id, num_envs=N) or gymnasium's default."
                )
            single = env.single_observation_space
        else:
            gym.Wrapper.__init__(self, env)
            single = env.observation_space
        self.single_observation_space = self.transform_space(single)
        self.observation_space = (
            batch_space(self.single_observation_space, self.num_envs)
            if self.is_vector
            else self.single_observation_space
        )
        self._starts = np.ones(self.num_envs, dtype=bool)
        # Single env: the batch-of-one spaces, built once (batch_space deep-copies; per step it cost
        # more than a small role's whole logic).
        self._out_batch1 = None if self.is_vector else batch_space(self.single_observation_space, 1)

    # -- what a role implements ------------------------------------------------------------

    def transform_space(self, space: gym.Space) -> gym.Space:
        """The observation space of one env after this role; unchanged by default."""
        return space

    def process(
        self,
        obs: Any,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        infos: list[dict],
        starts: np.ndarray,
    ) -> tuple[Any, np.ndarray]:
        """Transform one batched step. Returns (obs, rewards); may add keys to `infos[i]`.

        obs: batched observations of the wrapped env (leading dim = number of envs).
        rewards, terminated, truncated, starts: shape (n,). `starts[i]` marks the first observation
        of an episode (after reset); its reward is 0 and carries no meaning.
        infos: one dict per env, which the role may extend.
        """
        return obs, rewards

    def llmrl_metrics(self) -> dict[str, float]:
        return {}

    # -- the plumbing ---------------------------------------------------------------------------

    @property
    def num_envs(self) -> int:
        return self.env.num_envs if self.is_vector else 1  # type: ignore[attr-defined]

    def reset(self, *, seed: Any = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        n = self.num_envs
        zeros, falses = np.zeros(n, dtype=np.float32), np.zeros(n, dtype=bool)
        self._starts = np.ones(n, dtype=bool)
        obs, info = self._run(obs, zeros, falses, falses, info)
        return obs, info

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        rewards = np.asarray(reward, dtype=np.float32).reshape(self.num_envs)
        term = np.asarray(terminated, dtype=bool).reshape(self.num_envs)
        trunc = np.asarray(truncated, dtype=bool).reshape(self.num_envs)
        obs, info, rewards = self._run(obs, rewards, term, trunc, info, return_rewards=True)
        if self.is_vector:
            self._starts = term | trunc
            return obs, rewards, term, trunc, info
        # single env: the next start is marked by reset(), which the user calls after an episode ends
        return obs, float(rewards[0]), bool(term[0]), bool(trunc[0]), info

    def _run(self, obs, rewards, term, trunc, info, return_rewards=False):
        starts = self._starts.copy()
        self._starts[:] = False
        inner_space = self.env.single_observation_space if self.is_vector else self.env.observation_space
        if self.is_vector:
            infos = infos_to_list(info, self.num_envs)
            out_obs, rewards = self.process(obs, rewards, term, trunc, infos, starts)
            info = list_to_infos(infos, info)
        else:
            batched = concatenate(inner_space, [obs], create_empty_array(inner_space, 1))
            infos = [dict(info)]
            out, rewards = self.process(batched, rewards, term, trunc, infos, starts)
            out_obs = next(iter(iterate(self._out_batch1, out)))
            info = infos[0]
        if return_rewards:
            return out_obs, info, rewards
        return out_obs, info


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


def has_text(env: gym.Env | gym.vector.VectorEnv) -> bool:
    """True if some wrapper in the chain puts the state text into `info` (a `WithText`), or an env
    declares `provides_text = True` (it writes `info["text"]` itself)."""
    e: Any = env
    while e is not None:
        if type(e).__name__.endswith("WithText") or getattr(e, "provides_text", False):
            return True
        e = getattr(e, "env", None)
    return False


def with_text(env: Any) -> Any:
    """`llmrl.envs.WithText(env)` if nothing in the chain provides `info["text"]` and the family has a
    describer; else `env` unchanged (the first step then says which wrapper is missing)."""
    if has_text(env):
        return env
    try:
        from llmrl.envs import WithText

        return WithText(env)
    except (ImportError, ConfigError):  # no describer for this family: the user brings the text
        return env


@cache
def _vector_class(cls: type) -> type:
    """`cls` as a vector wrapper: the same role logic, Gymnasium's vector interface."""
    return type(cls.__name__, (cls, VectorWrapper), {"__doc__": cls.__doc__, "__module__": cls.__module__})


def infos_to_list(infos: dict, n: int) -> list[dict]:
    """Gymnasium's vector info (dict of arrays with `_key` masks) -> one dict per env."""
    out: list[dict] = [{} for _ in range(n)]
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        mask = infos.get("_" + key, np.ones(n, dtype=bool))
        for i in range(n):
            if mask[i]:
                out[i][key] = infos_to_list(value, n)[i] if isinstance(value, dict) else value[i]
    return out


def list_to_infos(per_env: list[dict], base: dict | None = None) -> dict:
    """One dict per env -> Gymnasium's vector info; keys already in `base` are kept as they are."""
    n = len(per_env)
    out = dict(base or {})
    keys = {k for d in per_env for k in d} - set(out)
    for key in sorted(keys):
        mask = np.array([key in d for d in per_env])
        values = [d.get(key) for d in per_env]
        if all(isinstance(v, (int, float, bool, np.number)) for v in values if v is not None):
            arr = np.zeros(n, dtype=np.float64)
            arr[mask] = [v for v in values if v is not None]
        else:
            arr = np.empty(n, dtype=object)
            arr[:] = values
        out[key], out["_" + key] = arr, mask
    return out
