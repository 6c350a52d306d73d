"""One batch implementation, two thin adapters: how a wrapper works on a single env and on a vector env.

Gymnasium keeps the two apart (`gymnasium.Wrapper` for an `Env`, `gymnasium.vector.VectorWrapper` for a
`VectorEnv`); llmrl's wrappers follow that split without making users pick:

- `BatchCore`: the wrapper's logic, written once over a batch of envs (`process`). It is not an env itself.
- `SingleEnvAdapter` (a `gymnasium.Wrapper`, so Stable-Baselines3 and RLlib accept it) runs the core on a
  batch of one; `VectorEnvAdapter` (a `gymnasium.vector.VectorWrapper`) runs it on the whole batch.
- `Adaptive`, the metaclass, is the one dispatch: `Cls(env, ...)` builds `Cls.adapter_for(env)`. For a
  `BatchCore` subclass that is its `Cls.Single` or `Cls.Vector` (made once, when the class is defined); a
  wrapper with two hand-written halves (`WithText` / `VectorWithText`) names its vector half instead.

    env = ELLMGoals(WithText(gymnasium.make("MiniGrid-DoorKey-6x6-v0")), llm)   # ELLMGoals.Single
    env = ELLMGoals(llmrl.make("MiniGrid-DoorKey-6x6-v0", num_envs=8), llm)      # ELLMGoals.Vector

Vector envs must use Gymnasium's default NEXT_STEP autoreset: the step after an episode ends returns the
first observation of the next one; `process` sees it with `starts[i] = True`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from llmrl.errors import ConfigError

__all__ = [
    "Adaptive",
    "BatchCore",
    "SingleEnvAdapter",
    "VectorEnvAdapter",
    "require_next_step_autoreset",
    "infos_to_list",
    "list_to_infos",
]


class Adaptive(type):
    """Metaclass: calling the class with an env builds the adapter `cls.adapter_for(env)` picks."""

    def __call__(cls, env: Any, *args: Any, **kwargs: Any) -> Any:
        target = cls.adapter_for(env)  # type: ignore[attr-defined]
        return type.__call__(target, env, *args, **kwargs)


def require_next_step_autoreset(env: VectorEnv, who: str) -> None:
    """ConfigError unless `env` autoresets the Gymnasium default way (the adapters rely on it)."""
    mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if mode != AutoresetMode.NEXT_STEP:
        raise ConfigError(
            f"{who} needs a vector env with autoreset_mode=NEXT_STEP, not {mode}; "
            "build it with llmrl.make(env_id, num_envs=N) or gymnasium's default."
        )


class BatchCore(metaclass=Adaptive):
    """A wrapper's logic over a batch of envs. Subclasses call `super().__init__(env)` and implement `process`.

    Subclasses that change the observation space override `transform_space(single_space)`. Every subclass
    gets two concrete classes, `Single` and `Vector`; `Subclass(env, ...)` builds the one that fits `env`.
    """

    Single: ClassVar[type]
    Vector: ClassVar[type]
    is_vector: ClassVar[bool]
    env: Any

    if TYPE_CHECKING:  # supplied by the adapter (gymnasium.Wrapper or VectorWrapper) each instance is

        @property
        def num_envs(self) -> int: ...

        observation_space: gym.Space
        action_space: gym.Space
        single_action_space: gym.Space

        def reset(self, *, seed: Any = None, options: dict | None = None) -> tuple[Any, Any]: ...
        def step(self, action: Any) -> tuple[Any, Any, Any, Any, Any]: ...
        def close(self) -> None: ...

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if issubclass(cls, (SingleEnvAdapter, VectorEnvAdapter)):
            return  # an adapter itself, not a new core
        # The two adapters of this core. They keep the core's name and qualname: logs, reprs and the type
        # names a checkpoint records for its env chain (`llmrl.training.get_env_state`) stay the core's.
        for attr, adapter in (("Single", SingleEnvAdapter), ("Vector", VectorEnvAdapter)):
            made = type(cls.__name__, (cls, adapter), {"__doc__": cls.__doc__, "__module__": cls.__module__})
            made.__qualname__ = cls.__qualname__
            setattr(cls, attr, made)

    @classmethod
    def adapter_for(cls, env: Any) -> type:
        """`cls.Vector` for a `gymnasium.vector.VectorEnv`, else `cls.Single`."""
        if issubclass(cls, (SingleEnvAdapter, VectorEnvAdapter)):
            return cls  # already an adapter: build exactly that
        return cls.Vector if isinstance(env, VectorEnv) else cls.Single

    def __init__(self, env: Any) -> None:
        super().__init__(env)  # type: ignore[call-arg]  # the next class in the MRO: the adapter's wrapper
        inner = env.single_observation_space if self.is_vector else env.observation_space
        self.single_observation_space = self.transform_space(inner)
        self.observation_space = (
            batch_space(self.single_observation_space, self.num_envs)
            if self.is_vector
            else self.single_observation_space
        )
        self._starts = np.ones(self.num_envs, dtype=bool)
        # Single env: the batch-of-one spaces, built once (batch_space deep-copies; per step it cost more
        # than a small role's whole logic).
        self._out_batch1 = None if self.is_vector else batch_space(self.single_observation_space, 1)

    def transform_space(self, space: gym.Space) -> gym.Space:
        """The observation space of one env after this wrapper; unchanged by default."""
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
        infos: one dict per env, which the wrapper may extend.
        """
        return obs, rewards

    def _process_batch(
        self, obs: Any, rewards: np.ndarray, term: np.ndarray, trunc: np.ndarray, infos: list[dict]
    ) -> tuple[Any, np.ndarray]:
        starts = self._starts.copy()
        self._starts[:] = False
        return self.process(obs, rewards, term, trunc, infos, starts)


class SingleEnvAdapter(gym.Wrapper):
    """Runs a `BatchCore` on one env as a batch of one; a plain `gymnasium.Wrapper`."""

    is_vector = False
    _starts: np.ndarray
    _out_batch1: gym.Space
    _process_batch: Any  # from the BatchCore this adapter is combined with

    def __init__(self, env: gym.Env) -> None:
        if isinstance(env, VectorEnv):
            raise ConfigError(
                f"{type(self).__qualname__} wraps a single env; {type(env).__name__} is a vector env"
            )
        gym.Wrapper.__init__(self, env)

    @property
    def num_envs(self) -> int:
        return 1

    def reset(self, *, seed: Any = None, options: dict | None = None) -> tuple[Any, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._starts = np.ones(1, dtype=bool)
        zeros, falses = np.zeros(1, dtype=np.float32), np.zeros(1, dtype=bool)
        out, info, _ = self._run(obs, zeros, falses, falses, info)
        return out, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        rewards = np.asarray(reward, dtype=np.float32).reshape(1)
        term = np.asarray(terminated, dtype=bool).reshape(1)
        trunc = np.asarray(truncated, dtype=bool).reshape(1)
        out, info, rewards = self._run(obs, rewards, term, trunc, info)
        # the next start is marked by reset(), which the user calls after an episode ends
        return out, float(rewards[0]), bool(term[0]), bool(trunc[0]), info

    def _run(
        self, obs: Any, rewards: np.ndarray, term: np.ndarray, trunc: np.ndarray, info: dict
    ) -> tuple[Any, dict, np.ndarray]:
        inner_space = self.env.observation_space
        empty: Any = create_empty_array(inner_space, 1)
        batched = concatenate(inner_space, [obs], empty)
        infos = [dict(info)]
        out, rewards = self._process_batch(batched, rewards, term, trunc, infos)
        return next(iter(iterate(self._out_batch1, out))), infos[0], rewards


class VectorEnvAdapter(VectorWrapper):
    """Runs a `BatchCore` on all envs of a vector env at once; a `gymnasium.vector.VectorWrapper`."""

    is_vector = True
    _starts: np.ndarray
    _process_batch: Any  # from the BatchCore this adapter is combined with

    def __init__(self, env: VectorEnv) -> None:
        if not isinstance(env, VectorEnv):
            raise ConfigError(
                f"{type(self).__qualname__} wraps a vector env; {type(env).__name__} is a single env"
            )
        VectorWrapper.__init__(self, env)
        require_next_step_autoreset(env, type(self).__name__)

    def reset(self, *, seed: Any = None, options: dict | None = None) -> tuple[Any, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        n = self.num_envs
        self._starts = np.ones(n, dtype=bool)
        zeros, falses = np.zeros(n, dtype=np.float32), np.zeros(n, dtype=bool)
        out, info, _ = self._run(obs, zeros, falses, falses, info)
        return out, info

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict]:
        obs, reward, terminated, truncated, info = self.env.step(actions)
        n = self.num_envs
        rewards = np.asarray(reward, dtype=np.float32).reshape(n)
        term = np.asarray(terminated, dtype=bool).reshape(n)
        trunc = np.asarray(truncated, dtype=bool).reshape(n)
        out, info, rewards = self._run(obs, rewards, term, trunc, info)
        self._starts = term | trunc  # NEXT_STEP autoreset: the next step of these envs is a reset
        return out, rewards, term, trunc, info

    def _run(
        self, obs: Any, rewards: np.ndarray, term: np.ndarray, trunc: np.ndarray, info: dict
    ) -> tuple[Any, dict, np.ndarray]:
        infos = infos_to_list(info, self.num_envs)
        out, rewards = self._process_batch(obs, rewards, term, trunc, infos)
        return out, list_to_infos(infos, info), rewards


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
