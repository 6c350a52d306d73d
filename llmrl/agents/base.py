"""What every llmrl agent shares: env handling, seeding, the learn loop, logging, save/load, predict.

An algorithm subclasses `Agent` once (at most two levels of inheritance) and implements:

    config_class: type            # a dataclass; validate in __post_init__ with `check(...)`
    def _build(self, policy: nn.Module | None) -> None
        # create networks and optimizers from self.observation_space / self.action_space / self.config;
        # called by __init__ and by load. `policy` is the user's custom nn.Module (or None).
    def _iteration(self, total_timesteps: int) -> dict[str, float]
        # advance training by one chunk (PPO: one rollout + update; DQN: some env steps + updates);
        # step the env only through `self._env_step(actions)`; return scalars to log.
    def _act(self, obs: Obs, deterministic: bool) -> torch.Tensor
        # actions (B, ...) for batched obs tensors, without gradients.
    def action_values(self, obs) -> tuple[str, np.ndarray]
        # ("Q", q-values) or ("p", probabilities) per action, for one unbatched obs; render panels use it.
    def _get_state(self) -> dict[str, Any]        # nets, optimizers, counters, buffers (tensors/arrays OK)
    def _set_state(self, state: dict[str, Any]) -> None

What the base gives a subclass:

    self.env                 a gymnasium VectorEnv (a single env is wrapped as a 1-env vector env)
    self.num_envs, self.observation_space, self.action_space   (single-env spaces)
    self.config, self.seed, self.device, self.num_timesteps
    self._obs                the current batched observation (numpy, from the env), None before reset
    self._reset_env()        reset with the agent's seed (done by learn() when self._obs is None)
    self._env_step(actions) -> (next_obs, rewards, terminated, truncated, infos, valid)
        steps the env, counts timesteps (valid ones), tracks episode returns, sets self._obs = next_obs.
        NEXT_STEP autoreset: after env i ended, its next step is a reset step — `valid[i]` is False,
        its action was ignored and it must NOT be stored as a transition. At a done step next_obs[i]
        is the true final observation (bootstrap from it on truncation).
    self._to_tensor(obs)     numpy batch -> tensors (dict for Dict spaces) on self.device
    learn(...) / save / load / predict handle logging, callbacks, checkpoints, RNG and env state.

Checkpoints (`save(dir)`) hold the config, spaces, `_get_state()`, RNG states, counters, the current
observation and the env state (see `llmrl.training.get_env_state` for what envs resume exactly).
A custom `policy` module is not stored as code: pass it again to `load(dir, policy=...)`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from torch import nn

from llmrl.errors import CheckpointError, ConfigError, NonFiniteError
from llmrl.nets import Obs, has_image, obs_to_tensor
from llmrl.training import (
    RunLogger,
    collect_env_metrics,
    env_chain,
    get_env_state,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_env_state,
    set_rng_state,
)

__all__ = [
    "Agent",
    "Callback",
    "check",
    "check_numbers",
    "as_vector_env",
    "SingleEnvVector",
    "seed_everything",
]

Callback = Callable[["Agent", dict[str, float]], Any]
"""Called after each training iteration with (agent, logged metrics); return False to stop learning."""


def check(ok: bool, name: str, value: Any, fix: str) -> None:
    """Raise ConfigError naming the field, its value and the fix unless `ok`."""
    if not ok:
        raise ConfigError(f"{name}={value!r} is invalid: {fix}")


def check_numbers(config: Any) -> None:
    """Every field of a config dataclass whose default is a number must hold a finite number.

    Called first in a config's `__post_init__`: the range checks after it then compare numbers only,
    and `learning_rate=inf` or `nan` (which every `> 0` check lets through or silently fails) is refused.
    """
    for field in dataclasses.fields(config):
        default, value = field.default, getattr(config, field.name)
        if value is None and "None" in str(field.type):  # an optional setting left off
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            check(math.isfinite(value), field.name, value, "use a finite number")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            check(False, field.name, value, "use a finite number")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class SingleEnvVector(VectorEnv):
    """One `gymnasium.Env` as a 1-env VectorEnv with NEXT_STEP autoreset, with less overhead than
    SyncVectorEnv (no deep copies). Observations/rewards gain a leading batch dim of 1."""

    def __init__(self, env: gym.Env):
        self.env = env
        self.num_envs = 1
        self.single_observation_space = env.observation_space
        self.single_action_space = env.action_space
        self.observation_space = gym.vector.utils.batch_space(env.observation_space, 1)
        self.action_space = gym.vector.utils.batch_space(env.action_space, 1)
        self.metadata = {**getattr(env, "metadata", {}), "autoreset_mode": AutoresetMode.NEXT_STEP}
        self.render_mode = getattr(env, "render_mode", None)
        self.spec = None
        self._needs_reset = False
        self._dict = isinstance(env.observation_space, spaces.Dict)

    def _batch(self, obs: Any) -> Any:
        if self._dict:
            return {k: np.asarray(v)[None] for k, v in obs.items()}
        return np.asarray(obs)[None]

    @staticmethod
    def _infos(info: dict) -> dict:
        out: dict[str, Any] = {}
        for k, v in info.items():
            arr = np.empty(1, dtype=object)
            arr[0] = v
            out[k], out["_" + k] = arr, np.ones(1, dtype=bool)
        return out

    def reset(self, *, seed: int | list | None = None, options: dict | None = None):
        first = seed[0] if isinstance(seed, (list, tuple)) else seed
        obs, info = self.env.reset(seed=first, options=options)
        self._needs_reset = False
        return self._batch(obs), self._infos(info)

    def step(self, actions: Any):
        if self._needs_reset:
            obs, info = self.env.reset()
            self._needs_reset = False
            return self._batch(obs), np.zeros(1), np.zeros(1, bool), np.zeros(1, bool), self._infos(info)
        action = actions[0] if not isinstance(self.env.action_space, spaces.Dict) else actions
        if isinstance(self.env.action_space, spaces.Discrete):
            action = int(action)
        obs, reward, term, trunc, info = self.env.step(action)
        self._needs_reset = bool(term or trunc)
        return (self._batch(obs), np.array([reward], dtype=np.float64), np.array([term], dtype=bool),
                np.array([trunc], dtype=bool), self._infos(info) if info else {})  # fmt: skip

    def render(self):
        return self.env.render()

    def close(self, **kwargs: Any) -> None:
        self.env.close()


def as_vector_env(env: gym.Env | VectorEnv) -> VectorEnv:
    """A VectorEnv with NEXT_STEP autoreset; a single env becomes a `SingleEnvVector`."""
    if isinstance(env, VectorEnv):
        mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if mode != AutoresetMode.NEXT_STEP:
            raise ConfigError(
                f"vector env autoreset_mode={mode} is not supported; build it with Gymnasium's default "
                "(AutoresetMode.NEXT_STEP), e.g. llmrl.make(env_id, num_envs=N)."
            )
        return env
    if isinstance(env, gym.Env):
        return SingleEnvVector(env)
    raise ConfigError(
        f"env={env!r} is not a gymnasium.Env or VectorEnv; create it with llmrl.make or gymnasium.make."
    )


# -- spaces to JSON-able data (checkpoints are loadable without an env) ---------------------------------


def space_to_data(space: gym.Space) -> dict[str, Any]:
    if isinstance(space, spaces.Box):
        return {"type": "Box", "low": space.low, "high": space.high, "dtype": str(space.dtype)}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": list(np.atleast_1d(space.n).tolist())}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_data(s) for k, s in space.spaces.items()}}
    raise CheckpointError(
        f"cannot save observation/action space {space}; use Box, Discrete, MultiBinary or Dict."
    )


def space_from_data(d: dict[str, Any]) -> gym.Space:
    kind = d["type"]
    if kind == "Box":
        return spaces.Box(low=np.asarray(d["low"]), high=np.asarray(d["high"]), dtype=np.dtype(d["dtype"]))
    if kind == "Discrete":
        return spaces.Discrete(d["n"], start=d["start"])
    if kind == "MultiBinary":
        return spaces.MultiBinary(d["n"])
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(np.asarray(d["nvec"]))
    return spaces.Dict({k: space_from_data(s) for k, s in d["spaces"].items()})


class Agent:
    """Base of PPO and DQN (see the module docstring for what a subclass implements)."""

    config_class: ClassVar[type]
    log_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        env: gym.Env | VectorEnv | None,
        *,
        seed: int = 0,
        policy: nn.Module | None = None,
        device: str | torch.device = "cpu",
        _spaces: tuple[gym.Space, gym.Space] | None = None,
        **config: Any,
    ):
        self.config = self._make_config(config)
        check(isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32, "seed", seed,
              "pass an int from 0 to 2**32 - 1 (what Gymnasium and numpy accept)")  # fmt: skip
        self.seed = seed
        self.device = torch.device(device)
        if env is None and _spaces is None:
            raise ConfigError(
                f"{type(self).__name__} needs an env; pass env=gymnasium.make(...) or llmrl.make(...)."
            )
        self.env: VectorEnv | None = as_vector_env(env) if env is not None else None
        if self.env is not None:
            self.observation_space = self.env.single_observation_space
            self.action_space = self.env.single_action_space
            if _spaces is not None:
                self._check_spaces(_spaces)
        else:
            self.observation_space, self.action_space = _spaces  # type: ignore[misc]
        self.num_envs = self.env.num_envs if self.env is not None else 1
        seed_everything(seed)
        self.num_timesteps = 0
        self._obs: Any = None
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._ep_return = np.zeros(self.num_envs)
        self._ep_length = np.zeros(self.num_envs, dtype=np.int64)
        self._finished: list[tuple[int, float, int]] = []  # (step, return, length), flushed to the log
        self._last_save: int | None = None  # num_timesteps of the last checkpoint written or loaded
        self._build(policy)

    # -- to implement ------------------------------------------------------------------------------------

    def _build(self, policy: nn.Module | None) -> None:
        raise NotImplementedError

    def _iteration(self, total_timesteps: int) -> dict[str, float]:
        raise NotImplementedError

    def _act(self, obs: Obs, deterministic: bool) -> torch.Tensor:
        raise NotImplementedError

    def action_values(self, obs: Any) -> tuple[str, np.ndarray]:
        """(label, values): "Q" values (DQN) or "p" probabilities (PPO, discrete) of each action for one obs."""
        raise NotImplementedError

    def _get_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _set_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    # -- config -----------------------------------------------------------------------------------------

    @classmethod
    def _make_config(cls, config: dict[str, Any]):
        names = [f.name for f in dataclasses.fields(cls.config_class)]
        for key in config:
            if key not in names:
                initials = [
                    n for n in names if "".join(w[0] for w in n.split("_")) == key
                ]  # lr -> learning_rate
                close = initials or difflib.get_close_matches(key, names, n=1, cutoff=0.5)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigError(
                    f"{key!r} is not a {cls.config_class.__name__} setting.{hint} Valid settings: {', '.join(names)}."
                )
        return cls.config_class(**config)

    def _check_spaces(self, saved: tuple[gym.Space, gym.Space]) -> None:
        obs_space, act_space = saved
        if space_to_data_eq(obs_space, self.observation_space) and space_to_data_eq(
            act_space, self.action_space
        ):
            return
        raise ConfigError(
            f"the env's spaces ({self.observation_space}, {self.action_space}) differ from the checkpoint's "
            f"({obs_space}, {act_space}); load with the env the agent was trained on."
        )

    # -- env ----------------------------------------------------------------------------------------------

    def _require_env(self) -> VectorEnv:
        if self.env is None:
            raise ConfigError(
                f"this {type(self).__name__} has no env; load it with {type(self).__name__}.load(dir, env=...)."
            )
        return self.env

    def _to_tensor(self, obs: Any) -> Obs:
        return obs_to_tensor(obs, self.observation_space, self.device)

    def _reset_env(self) -> None:
        env = self._require_env()
        self._obs, _ = env.reset(seed=self.seed)
        self._autoreset[:] = False
        self._ep_return[:] = 0
        self._ep_length[:] = 0

    def _env_step(self, actions: np.ndarray):
        """Step every env; see the module docstring. Returns (next_obs, rewards, terminated, truncated,
        infos, valid) with rewards float32 (N,), terminated/truncated/valid bool (N,)."""
        env = self.env
        next_obs, rewards, terminated, truncated, infos = env.step(actions)  # type: ignore[union-attr]
        rewards = np.asarray(rewards, dtype=np.float32)
        if not np.isfinite(rewards).all():
            self._non_finite("reward", rewards)
        if not _finite_obs(next_obs):
            self._non_finite("observation", next_obs)
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        valid = ~self._autoreset
        done = terminated | truncated
        self._autoreset = done
        self.num_timesteps += int(valid.sum())
        self._ep_return += rewards * valid
        self._ep_length += valid
        if done.any():
            for i in np.flatnonzero(done):
                self._finished.append(
                    (self.num_timesteps, float(self._ep_return[i]), int(self._ep_length[i]))
                )
            self._ep_return[done] = 0
            self._ep_length[done] = 0
        self._obs = next_obs
        return next_obs, rewards, terminated, truncated, infos, valid

    def _non_finite(self, what: str, values: Any) -> None:
        wrappers = " <- ".join(type(o).__name__ for o in env_chain(self.env))
        raise NonFiniteError(
            f"a non-finite {what} reached training at step {self.num_timesteps}: {_summary(values)} "
            f"(env chain: {wrappers}). An LLM role answering NaN/inf? See llm/bad_outputs and the role's "
            f"on_bad_output; otherwise the env. {self._kept()}"
        )

    def _kept(self) -> str:
        if self._last_save is None:
            return "Nothing of this run was saved."
        return f"The last checkpoint (step {self._last_save}) was not touched."

    def _check_training(self, metrics: dict[str, float]) -> None:
        """Stop on a non-finite loss or weight before anything of this iteration is saved."""
        for key, value in metrics.items():
            if "loss" in key and not math.isfinite(value):
                raise NonFiniteError(
                    f"{key} is {value} at step {self.num_timesteps}; lower learning_rate or check the rewards "
                    f"(min/max of this rollout in the log). {self._kept()}"
                )
        for name, p in self._parameters():
            if not bool(torch.isfinite(p).all()):
                raise NonFiniteError(
                    f"weight {name} became non-finite at step {self.num_timesteps} "
                    f"(learning_rate={getattr(self.config, 'learning_rate', '?')}); lower the learning rate "
                    f"or max_grad_norm, or check rewards and observations. {self._kept()}"
                )

    def _parameters(self) -> list[tuple[str, torch.Tensor]]:
        """Every trainable tensor the agent holds (modules among its attributes)."""
        out: list[tuple[str, torch.Tensor]] = []
        for attr, value in vars(self).items():
            if isinstance(value, nn.Module):
                out += [(f"{attr}.{n}", p) for n, p in value.named_parameters()]
        return out

    # -- learning -----------------------------------------------------------------------------------------

    def learn(
        self,
        total_timesteps: int,
        *,
        progress_bar: bool = True,
        callback: Callback | None = None,
        run_dir: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
    ):
        """Train until `num_timesteps` reaches `total_timesteps` (a total, so a resumed agent continues
        to the same end point and schedules match). Logs to `run_dir` (CSV, TensorBoard) if given; with
        `checkpoint_every` steps also writes `run_dir/checkpoint`. `callback(agent, metrics)` runs after
        each iteration; returning False stops. Returns self."""
        check(isinstance(total_timesteps, int) and total_timesteps > 0, "total_timesteps", total_timesteps,
              "pass a positive int")  # fmt: skip
        if checkpoint_every is not None and run_dir is None:
            raise ConfigError("checkpoint_every needs run_dir (the checkpoint goes to run_dir/checkpoint).")
        self._require_env()
        threads = torch.get_num_threads()
        torch.set_num_threads(self._train_threads())  # restored below: a process-wide setting
        logger = RunLogger(run_dir, total_timesteps=total_timesteps, start_step=self.num_timesteps,
                           progress_bar=progress_bar)  # fmt: skip
        if self._obs is None:
            self._reset_env()
        last_ckpt = self.num_timesteps
        try:
            while self.num_timesteps < total_timesteps:
                metrics = self._iteration(total_timesteps)
                self._check_training(metrics)
                for step, ret, length in self._finished:
                    logger.episode(step, ret, length)
                self._finished.clear()
                metrics.update(collect_env_metrics(self.env))
                logger.log(self.num_timesteps, metrics)
                if checkpoint_every is not None and self.num_timesteps - last_ckpt >= checkpoint_every:
                    self.save(Path(run_dir) / "checkpoint")  # type: ignore[arg-type]
                    last_ckpt = self.num_timesteps
                if callback is not None and callback(self, metrics) is False:
                    break
        finally:
            logger.close()
            torch.set_num_threads(threads)
        return self

    def _train_threads(self) -> int:
        """torch threads while training: 1 unless images or a torch-run LLM need more ($LLMRL_THREADS wins).

        With torch's default (one thread a core) the small networks of vector-observation tasks spend
        their time in OpenMP hand-offs, and when another process keeps one core busy (a second seed)
        every hand-off waits for a time slice: PPO CartPole ran 34x slower on 2 cores. One thread is as
        fast alone and unaffected by the neighbour (benchmarks/threads.py). Conv stacks and LLMs run by
        torch (hf backend) in the env do use more cores, so those keep torch's default.
        """
        env_value = os.environ.get("LLMRL_THREADS", "")
        if env_value.strip():
            try:
                n = int(env_value)
            except ValueError:
                n = 0
            check(n >= 1, "LLMRL_THREADS", env_value, "use a whole number of threads >= 1 (or unset it)")
            return n
        torch_llm = any(
            str(getattr(getattr(o, "llm", None), "name", "")).startswith("hf:") for o in env_chain(self.env)
        )
        return torch.get_num_threads() if torch_llm or has_image(self.observation_space) else 1

    # -- inference ----------------------------------------------------------------------------------------

    def _is_single(self, obs: Any) -> bool:
        space = self.observation_space
        if isinstance(space, spaces.Dict):
            key = next(iter(space.spaces))
            return self._is_single_leaf(obs[key], space.spaces[key])
        return self._is_single_leaf(obs, space)

    @staticmethod
    def _is_single_leaf(x: Any, space: gym.Space) -> bool:
        if isinstance(space, spaces.Discrete):
            return np.ndim(x) == 0
        return np.shape(x) == tuple(space.shape or ())

    def _batched(self, obs: Any) -> tuple[Any, bool]:
        single = self._is_single(obs)
        if not single:
            return obs, False
        if isinstance(obs, dict):
            return {k: np.asarray(v)[None] for k, v in obs.items()}, True
        return np.asarray(obs)[None], True

    def predict(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        """Actions for one observation (returns one action) or a batch (returns a batch)."""
        batch, single = self._batched(obs)
        with torch.inference_mode():
            actions = self._act(self._to_tensor(batch), deterministic).cpu().numpy()
        return actions[0] if single else actions

    # -- save / load --------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Everything needed to resume exactly, as safetensors + JSON in folder `path` (atomic)."""
        state = {
            "algo": type(self).__name__,
            "config": dataclasses.asdict(self.config),
            "seed": self.seed,
            "spaces": {
                "observation": space_to_data(self.observation_space),
                "action": space_to_data(self.action_space),
            },
            "num_timesteps": self.num_timesteps,
            "agent": self._get_state(),
            "rng": get_rng_state(),
            "obs": self._obs,
            "autoreset": self._autoreset,
            "ep_return": self._ep_return,
            "ep_length": self._ep_length,
            "env": get_env_state(self.env) if self.env is not None and self._obs is not None else None,
        }
        out = save_checkpoint(path, state)
        self._last_save = self.num_timesteps
        return out

    @classmethod
    def load(cls, path: str | os.PathLike, env: gym.Env | VectorEnv | None = None, *,
             policy: nn.Module | None = None, device: str | torch.device = "cpu"):  # fmt: skip
        """An agent from `save(path)`. With `env`, training can continue: if the env has the same
        structure its state is restored (exact resume), otherwise it is reset on the next learn()."""
        state = load_checkpoint(path)
        if state.get("algo") != cls.__name__:
            raise CheckpointError(
                f"{path} holds a {state.get('algo')} agent; load it with llmrl.{state.get('algo')}.load."
            )
        saved_spaces = (
            space_from_data(state["spaces"]["observation"]),
            space_from_data(state["spaces"]["action"]),
        )
        agent = cls(
            env, seed=state["seed"], policy=policy, device=device, _spaces=saved_spaces, **state["config"]
        )
        agent._set_state(state["agent"])
        agent.num_timesteps = agent._last_save = state["num_timesteps"]
        if agent.env is not None and state["env"] is not None and set_env_state(agent.env, state["env"]):
            agent._obs = state["obs"]
            agent._autoreset = np.asarray(state["autoreset"], dtype=bool)
            agent._ep_return = np.asarray(state["ep_return"], dtype=np.float64)
            agent._ep_length = np.asarray(state["ep_length"], dtype=np.int64)
        set_rng_state(state["rng"])  # last: restoring a role (building its model) may draw numbers
        return agent


def _finite_obs(obs: Any) -> bool:
    """True unless a float observation holds NaN or inf (integer images cannot)."""
    if isinstance(obs, dict):
        return all(_finite_obs(v) for v in obs.values())
    arr = np.asarray(obs)
    return arr.dtype.kind != "f" or bool(np.isfinite(arr).all())


def _summary(values: Any) -> str:
    if isinstance(values, dict):
        return "; ".join(f"{k}: {_summary(v)}" for k, v in values.items() if not _finite_obs(v))
    arr = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    return f"env {int(bad[0])} has {arr[bad[0]][~np.isfinite(arr[bad[0]])][:4].tolist()}" + (
        f" ({len(bad)} envs bad)" if len(bad) > 1 else ""
    )


def space_to_data_eq(a: gym.Space, b: gym.Space) -> bool:
    """Spaces equal up to float rounding of bounds (JSON/safetensors round trips keep dtypes exact)."""
    try:
        return a == b
    except Exception:  # noqa: BLE001 - exotic spaces without a comparable __eq__
        return False
