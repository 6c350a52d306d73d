"""Replay buffer for vector envs: any observation space, n-step returns, prioritized replay, relabelling.

Layout. One column per env, all columns advancing in lock step: slot `t` of column `i` holds what env
`i` did at vector step `t` (observation, action, 1-step reward, terminated, truncated). Gymnasium's
NEXT_STEP autoreset fits this exactly: the step after an episode ends only resets the env, so its slot
is stored with `valid=False` (never sampled), and the observation in the slot after an ending step is
the episode's true final observation. So the next observation of slot `t` is always the observation of
slot `t + 1` and is not stored twice (`optimize_memory=True`, the default). With `optimize_memory=False`
next observations get their own arrays, which also serves envs with SAME_STEP autoreset.

Everything derived from rewards (n-step returns) is computed at sample time from the stored 1-step
rewards, so `relabel` (deferred rewards, see ARCHITECTURE.md) only has to add to those.

Prioritized replay follows Schaul et al. 2016 ("Prioritized Experience Replay", arXiv 1511.05952),
proportional variant: P(i) = p_i^α / Σ_k p_k^α, importance weights w_i = (N · P(i))^-β normalised by
the largest weight in the batch, new transitions at the highest priority seen so far, stratified
sampling over a sum tree.

The buffer is numpy only (no torch): the agent turns a `ReplayBatch` into tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from llmrl.errors import CheckpointError, ConfigError
from llmrl.nets import copy_obs_, stored_zeros

__all__ = ["ReplayBuffer", "ReplayBatch", "SumTree", "space_arrays"]

_STATE_VERSION = 1


def space_arrays(space: gym.Space) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Storage spec of one env's observation (or action): `{key: (shape, dtype)}`.

    A non-Dict space has the single key `""`. uint8 images stay uint8 (4× smaller than float32).
    """
    if isinstance(space, gym.spaces.Dict):
        specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        for key, sub in space.spaces.items():
            if isinstance(sub, gym.spaces.Dict):
                raise ConfigError(
                    f"nested Dict observation at key {key!r} is not supported by the replay buffer; "
                    "flatten it into one Dict level (e.g. with gymnasium.wrappers.FlattenObservation)."
                )
            specs[key] = space_arrays(sub)[""]
        return specs
    if isinstance(space, gym.spaces.Discrete):
        return {"": ((), np.dtype(np.int64))}
    if isinstance(space, (gym.spaces.Box, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)):
        return {"": (tuple(space.shape), np.dtype(space.dtype))}
    raise ConfigError(
        f"the replay buffer cannot store a {type(space).__name__} space; use Box, Discrete, MultiDiscrete, "
        "MultiBinary or a Dict of those (text observations need a feature wrapper such as LLMFeatures)."
    )


class SumTree:
    """Binary sum tree over `capacity` leaves (float64), with vectorised update and prefix-sum search.

    Node 1 is the root, node j has children 2j and 2j+1, leaf k is node `size + k`.
    """

    def __init__(self, capacity: int):
        self.size = 1 << max(0, math.ceil(math.log2(max(capacity, 1))))
        self.capacity = capacity
        self.nodes = np.zeros(2 * self.size, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.nodes[1])

    def get(self, leaves: np.ndarray) -> np.ndarray:
        return self.nodes[np.asarray(leaves) + self.size]

    def update(self, leaves: np.ndarray, values: np.ndarray) -> None:
        """Set leaf values and recompute their ancestors, one tree level per numpy op."""
        idx = np.asarray(leaves, dtype=np.int64).ravel() + self.size
        self.nodes[idx] = np.asarray(values, dtype=np.float64).ravel()
        idx = np.unique(idx >> 1)
        while idx[0] >= 1:
            self.nodes[idx] = self.nodes[2 * idx] + self.nodes[2 * idx + 1]
            if idx[0] == 1:
                break
            idx = np.unique(idx >> 1)

    def find(self, prefix: np.ndarray) -> np.ndarray:
        """For each value v in [0, total): the leaf k with sum(leaves[:k]) <= v < sum(leaves[:k+1])."""
        v = np.asarray(prefix, dtype=np.float64).copy()
        idx = np.ones(v.shape, dtype=np.int64)
        while idx[0] < self.size:
            left = self.nodes[2 * idx]
            right = self.nodes[2 * idx + 1]
            # Go right when v is past the left subtree; never into an empty subtree (float round-off).
            go_right = ((v >= left) & (right > 0)) | (left <= 0)
            v = np.where(go_right, np.minimum(v - left, right), np.minimum(v, left))
            idx = 2 * idx + go_right
        return idx - self.size


@dataclass
class ReplayBatch:
    """A sampled batch (numpy). B = batch size; obs arrays are dicts for Dict spaces, else arrays.

    The (n-step) target is `returns + discounts * V(next_obs)`; `discounts` is 0 after a termination.
    """

    obs: Any  # (B, *obs_shape) or {key: (B, *shape)}
    actions: np.ndarray  # (B, *action_shape)
    returns: np.ndarray  # (B,) float32, Σ_k γ^k r_{t+k} up to n steps or the episode end
    next_obs: Any  # (B, *obs_shape): observation to bootstrap from (after m <= n steps)
    discounts: np.ndarray  # (B,) float32, γ^m, or 0 when the episode terminated inside the window
    weights: np.ndarray  # (B,) float32 importance weights (ones without prioritized replay)
    indices: np.ndarray  # (B,) int64 flat slot index t * num_envs + env, for update_priorities


class ReplayBuffer:
    """Replay buffer for a vector env of `num_envs` envs holding at most `capacity` transitions.

    >>> buf = ReplayBuffer(env.single_observation_space, env.single_action_space, 100_000, num_envs=8)
    >>> buf.add(obs, next_obs, actions, rewards, terminated, truncated, valid=~prev_done)
    >>> batch = buf.sample(32)
    """

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        capacity: int,
        *,
        num_envs: int = 1,
        n_step: int = 1,
        gamma: float = 0.99,
        prioritized: bool = False,
        alpha: float = 0.6,
        priority_eps: float = 1e-6,
        optimize_memory: bool = True,
        seed: int | None = None,
    ):
        if num_envs < 1:
            raise ConfigError(f"num_envs={num_envs} must be at least 1.")
        min_cap = 2 * num_envs
        if capacity < min_cap:
            raise ConfigError(
                f"buffer capacity={capacity} is too small for num_envs={num_envs}; use at least {min_cap}."
            )
        if n_step < 1:
            raise ConfigError(f"n_step={n_step} must be at least 1 (1 = the classic 1-step target).")
        if not 0.0 <= gamma <= 1.0:
            raise ConfigError(f"gamma={gamma} must be in [0, 1].")
        if prioritized and not (alpha >= 0.0 and priority_eps > 0.0):
            raise ConfigError(
                f"prioritized replay needs alpha >= 0 and priority_eps > 0, got {alpha}, {priority_eps}."
            )
        self.observation_space = observation_space
        self.action_space = action_space
        self.num_envs = num_envs
        self.slots = capacity // num_envs  # T: slots per env column
        self.n_step = n_step
        self.gamma = gamma
        self.prioritized = prioritized
        self.alpha = alpha
        self.priority_eps = priority_eps
        self.optimize_memory = optimize_memory
        self.is_dict = isinstance(observation_space, gym.spaces.Dict)

        T, N = self.slots, num_envs
        self._obs_spec = space_arrays(observation_space)
        self.obs = self._empty_obs()
        self.next_obs = None if optimize_memory else self._empty_obs()
        (a_shape, a_dtype) = space_arrays(action_space)[""]
        self.actions = np.zeros((T, N, *a_shape), dtype=a_dtype)
        self.rewards = np.zeros((T, N), dtype=np.float32)
        self.terminated = np.zeros((T, N), dtype=bool)
        self.truncated = np.zeros((T, N), dtype=bool)
        self.valid = np.zeros((T, N), dtype=bool)  # sampleable transition starts
        self.pos = 0  # next slot to write
        self.added = 0  # vector steps added in total
        self.n_valid = 0
        self.max_priority = 1.0
        self.tree = SumTree(T * N) if prioritized else None
        self._gamma_pow = (gamma ** np.arange(n_step + 1)).astype(np.float32)  # (n+1,)
        self.rng = np.random.default_rng(seed)

    # -- writing ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of transitions that can be sampled."""
        return self.n_valid

    @property
    def size(self) -> int:
        """Number of slots per env written so far."""
        return min(self.added, self.slots)

    def _empty_obs(self) -> dict[str, np.ndarray]:
        """(T, N, *shape) arrays per key; images laid out channels-last in memory, as the conv stack
        reads them (see `llmrl.nets.empty_obs_storage`)."""
        lead = (self.slots, self.num_envs)
        return {
            k: stored_zeros(lead, shape, torch.from_numpy(np.zeros(0, dtype)).dtype).numpy()
            for k, (shape, dtype) in self._obs_spec.items()
        }

    def _put(self, store: dict[str, np.ndarray], slot: int, obs: Any) -> None:
        if self.is_dict:
            for k, arr in store.items():
                copy_obs_(arr[slot], obs[k])
        else:
            copy_obs_(store[""][slot], obs)

    def _set_valid(self, slot: int, valid: np.ndarray) -> None:
        self.n_valid += int(valid.sum()) - int(self.valid[slot].sum())
        self.valid[slot] = valid
        if self.tree is not None:
            leaves = slot * self.num_envs + np.arange(self.num_envs)
            self.tree.update(leaves, np.where(valid, self.max_priority**self.alpha, 0.0))

    def add(
        self,
        obs: Any,
        next_obs: Any,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        valid: np.ndarray | None = None,
    ) -> None:
        """Store one vector step: arrays with a leading `num_envs` axis (obs may be a dict of them).

        `valid[i] = False` marks env i's step as not a transition to learn from (with NEXT_STEP
        autoreset: the step right after an episode ended, whose action the env ignored).
        """
        p = self.pos
        self._put(self.obs, p, obs)
        if self.next_obs is not None:
            self._put(self.next_obs, p, next_obs)
        self.actions[p] = actions
        self.rewards[p] = rewards
        self.terminated[p] = terminated
        self.truncated[p] = truncated
        self._set_valid(p, np.ones(self.num_envs, bool) if valid is None else np.asarray(valid, bool))
        if self.next_obs is None:
            # The next observation goes into the next slot's obs; that slot (the oldest once the buffer
            # is full) no longer holds a whole transition until it is written again.
            q = (p + 1) % self.slots
            self._put(self.obs, q, next_obs)
            self._set_valid(q, np.zeros(self.num_envs, bool))
        self.pos = (p + 1) % self.slots
        self.added += 1

    def relabel(self, env_index: int, added_rewards: np.ndarray) -> int:
        """Add `added_rewards` (L,) to env `env_index`'s last L stored transitions (last entry = newest).

        Call right after `add` of the step that carried `info["reward_relabel"]`. Walks back across
        the ring's wrap-around and stops at the start of the episode or at the oldest transition still
        stored; returns how many transitions were changed. With prioritized replay the changed
        transitions get the highest priority, since their targets changed.
        """
        added = np.asarray(added_rewards, dtype=np.float32).ravel()
        limit = min(len(added), self.size)
        slots = (self.pos - 1 - np.arange(limit)) % self.slots  # newest first
        ok = self.valid[slots, env_index]
        n = limit if ok.all() else int(np.argmin(ok))  # contiguous run of this episode's transitions
        slots = slots[:n]
        self.rewards[slots, env_index] += added[::-1][:n]
        if self.tree is not None and n:
            self.tree.update(slots * self.num_envs + env_index, np.full(n, self.max_priority**self.alpha))
        return n

    # -- sampling --------------------------------------------------------------------------------

    def _draw_uniform(self, batch_size: int) -> np.ndarray:
        """Flat indices of valid slots, uniform, by rejection (invalid slots are a small minority)."""
        high = self.size * self.num_envs
        flat_valid = self.valid.reshape(-1)
        out = np.empty(0, dtype=np.int64)
        while out.size < batch_size:
            cand = self.rng.integers(0, high, size=2 * batch_size)
            out = np.concatenate([out, cand[flat_valid[cand]]])
        return out[:batch_size]

    def _draw_prioritized(self, batch_size: int) -> np.ndarray:
        # Stratified: one uniform draw in each of batch_size equal segments of the total priority.
        assert self.tree is not None
        total = self.tree.total
        bounds = np.arange(batch_size) * (total / batch_size)
        prefix = bounds + self.rng.random(batch_size) * (total / batch_size)
        idx = self.tree.find(np.minimum(prefix, np.nextafter(total, 0)))
        return idx.astype(np.int64)

    def sample(self, batch_size: int, *, beta: float = 0.4) -> ReplayBatch:
        """Sample `batch_size` transitions with n-step returns (and IS weights with exponent `beta`)."""
        if self.n_valid == 0:
            raise ConfigError("the replay buffer holds no transitions yet; add some before sampling.")
        flat = self._draw_prioritized(batch_size) if self.tree is not None else self._draw_uniform(batch_size)
        return self.get_batch(flat, beta=beta)

    def get_batch(self, indices: np.ndarray, *, beta: float = 0.4) -> ReplayBatch:
        """The batch for given flat slot indices (`t * num_envs + env`), as `sample` builds it."""
        flat = np.asarray(indices, dtype=np.int64)
        batch_size = len(flat)
        t, env = np.divmod(flat, self.num_envs)  # (B,), (B,)

        # n-step return from stored 1-step rewards, stopping after the first episode end (terminated
        # or truncated) and at the newest stored step.
        n, T = self.n_step, self.slots
        k = np.arange(n)  # (n,)
        window = (t[:, None] + k) % T  # (B, n)
        ended = (self.terminated | self.truncated)[window, env[:, None]]  # (B, n)
        avail = (self.pos - 1 - t) % T + 1  # (B,) steps stored from t up to the newest
        ended_before = (np.cumsum(ended, axis=1) - ended) > 0
        use = (k[None, :] < avail[:, None]) & ~ended_before  # (B, n)
        r = self.rewards[window, env[:, None]]  # (B, n)
        returns = (r * self._gamma_pow[:n] * use).sum(axis=1, dtype=np.float32)
        m = use.sum(axis=1)  # (B,) steps used, >= 1
        last = (t + m - 1) % T  # (B,) last slot inside the window
        discounts = self._gamma_pow[m] * ~self.terminated[last, env]
        if self.next_obs is None:
            next_obs = self._gather(self.obs, (last + 1) % T, env)
        else:
            next_obs = self._gather(self.next_obs, last, env)

        if self.tree is not None:
            # w_i = (N P(i))^-β / max_j w_j  (Schaul et al. 2016, eq. in sec. 3.4), batch max.
            probs = self.tree.get(flat) / self.tree.total
            w = (self.n_valid * probs) ** (-beta)
            weights = (w / w.max()).astype(np.float32)
        else:
            weights = np.ones(batch_size, dtype=np.float32)
        return ReplayBatch(
            obs=self._gather(self.obs, t, env),
            actions=self.actions[t, env],
            returns=returns.astype(np.float32),
            next_obs=next_obs,
            discounts=discounts.astype(np.float32),
            weights=weights,
            indices=flat,
        )

    def _gather(self, store: dict[str, np.ndarray], t: np.ndarray, env: np.ndarray) -> Any:
        if self.is_dict:
            return {k: arr[t, env] for k, arr in store.items()}
        return store[""][t, env]

    def update_priorities(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """Set the priorities (e.g. |TD error|) of sampled transitions; p^α goes into the tree."""
        if self.tree is None:
            return
        p = np.abs(np.asarray(priorities, dtype=np.float64)) + self.priority_eps
        idx = np.asarray(indices, dtype=np.int64)
        still = self.valid.reshape(-1)[idx]  # a slot may have been overwritten since it was sampled
        self.tree.update(idx[still], p[still] ** self.alpha)
        self.max_priority = max(self.max_priority, float(p.max()))

    # -- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, metadata): numpy arrays for safetensors and a JSON-able dict; exact resume."""
        n = self.size + (1 if self.next_obs is None and self.added < self.slots else 0)
        arrays: dict[str, np.ndarray] = {}
        for k, v in self.obs.items():
            arrays[f"obs/{k}"] = np.ascontiguousarray(v[:n])
        if self.next_obs is not None:
            for k, v in self.next_obs.items():
                arrays[f"next_obs/{k}"] = np.ascontiguousarray(v[:n])
        for name in ("actions", "rewards", "terminated", "truncated", "valid"):
            arrays[name] = np.ascontiguousarray(getattr(self, name)[:n])
        if self.tree is not None:
            arrays["tree"] = self.tree.nodes.copy()
        meta = {
            "version": _STATE_VERSION,
            "slots": self.slots,
            "num_envs": self.num_envs,
            "n_step": self.n_step,
            "gamma": self.gamma,
            "prioritized": self.prioritized,
            "alpha": self.alpha,
            "optimize_memory": self.optimize_memory,
            "stored": n,
            "pos": self.pos,
            "added": self.added,
            "n_valid": self.n_valid,
            "max_priority": self.max_priority,
            "rng": self.rng.bit_generator.state,
        }
        return arrays, meta

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Restore what `state_dict` returned, into a buffer built with the same settings."""
        for key in ("slots", "num_envs", "n_step", "prioritized", "optimize_memory"):
            mine = self.slots if key == "slots" else getattr(self, key)
            if meta.get(key) != mine:
                raise CheckpointError(
                    f"replay buffer checkpoint has {key}={meta.get(key)!r} but this buffer has {mine!r}; "
                    "build the agent with the configuration saved in the checkpoint."
                )
        n = int(meta["stored"])
        for k, v in self.obs.items():
            v[:n] = arrays[f"obs/{k}"]
        if self.next_obs is not None:
            for k, v in self.next_obs.items():
                v[:n] = arrays[f"next_obs/{k}"]
        for name in ("actions", "rewards", "terminated", "truncated", "valid"):
            getattr(self, name)[:n] = arrays[name]
        if self.tree is not None:
            self.tree.nodes[:] = arrays["tree"]
        self.pos, self.added, self.n_valid = int(meta["pos"]), int(meta["added"]), int(meta["n_valid"])
        self.max_priority = float(meta["max_priority"])
        self.rng.bit_generator.state = meta["rng"]
