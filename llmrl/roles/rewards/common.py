"""What every reward role shares: intrinsic vs environment reward bookkeeping, budgets, relabelling.

A reward role adds an *intrinsic* reward to the environment's. The two are kept apart everywhere a
user looks: `info["intrinsic_reward"]` holds the part this role added at this step (the env's own
reward is the returned reward minus it), and `llmrl_metrics()` reports mean episode returns of both
(`reward/intrinsic`, `reward/extrinsic`) next to the role's LLM counters (`llm/calls`, ...).

Rewards known only at episode end (a CLIP score of every frame, computed in one batch) are handed
to the agent through `info["reward_relabel"]` (see ARCHITECTURE.md): an array (L,) of rewards to add
to the last L transitions of that env, the last entry being this step. llmrl's DQN buffer and PPO
rollout apply it; an agent that ignores it (SB3) never sees those rewards, so such roles also offer
an online mode.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmrl.errors import ConfigError
from llmrl.llm.base import LLM, LLMOutputError
from llmrl.llm.cache import checked
from llmrl.roles.bad_output import BadOutputPolicy, check_bad_output_policy, handle_bad_output
from llmrl.roles.base import RoleWrapper, require_capabilities

__all__ = ["RewardRole", "BadOutputPolicy", "add_relabel", "yes_no_prompt_logit", "check_llm"]


log = logging.getLogger("llmrl.roles.rewards")


def add_relabel(info: dict, values: np.ndarray) -> None:
    """Merge `values` (L,) into `info["reward_relabel"]`, aligned on the last entry (this step).

    Two deferring roles in one wrapper chain both write the key; their arrays add up.
    """
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    old = info.get("reward_relabel")
    if old is None or len(np.asarray(old)) == 0:
        info["reward_relabel"] = values
        return
    old = np.asarray(old, dtype=np.float32).reshape(-1)
    n = max(len(old), len(values))
    merged = np.zeros(n, dtype=np.float32)
    merged[n - len(old) :] += old
    merged[n - len(values) :] += values
    info["reward_relabel"] = merged


def check_llm(llm: Any, need: Sequence[str], role: str) -> None:
    """Fail at construction when `llm` lacks an operation the role needs."""
    if not isinstance(llm, LLM):
        raise ConfigError(
            f"{role} needs an LLM backend (llmrl.llm.load('embedded') or similar), got {type(llm).__name__}."
        )
    require_capabilities(llm, need, role)


def yes_no_prompt_logit(
    llm: LLM, prompts: Sequence[str], answers: tuple[str, str] = (" Yes", " No")
) -> np.ndarray:
    """log p(answers[0]) - log p(answers[1]) for each prompt. Shape (n,).

    Ranking two fixed continuations is robust with small base models where parsing free text is not.
    """
    return np.array([float(np.subtract(*llm.score(p, list(answers)))) for p in prompts], dtype=np.float64)


class RewardRole(RoleWrapper):
    """Base of the reward roles: the env's reward plus an intrinsic one, both reported.

    Subclasses implement `intrinsic(...)` (same arguments as `process`) returning the rewards (n,)
    to add at this step, and call `self.relabel(i, info, values)` for deferred rewards.
    """

    metric_name: str = "reward"
    llm: LLM
    """The backend; None only for roles that need none (CLIPReward)."""

    def __init__(
        self,
        env: Any,
        *,
        llm: LLM | None = None,
        max_calls: int | None = None,
        window: int = 100,
        on_bad_output: BadOutputPolicy = "raise",
        fallback_reward: float = 0.0,
    ):
        """on_bad_output: what a bad LLM answer (wrong count or shape, NaN/inf: `LLMOutputError`) does.
        "raise" stops training with the error (the default: nothing silent); "fallback" gives every
        env of that step `fallback_reward` instead; "skip" gives them no intrinsic reward. Each bad
        call is counted as `<metric_name>/bad_outputs` in the log; bad answers are never cached."""
        super().__init__(env)
        if max_calls is not None and max_calls < 0:
            raise ConfigError(f"max_calls must be >= 0 or None (no budget), got {max_calls}.")
        check_bad_output_policy(on_bad_output, ("raise", "fallback", "skip"), type(self).__name__)
        if not np.isfinite(fallback_reward):
            raise ConfigError(f"fallback_reward must be a finite number, not {fallback_reward!r}.")
        self.on_bad_output, self.fallback_reward = on_bad_output, float(fallback_reward)
        if window < 1:
            raise ConfigError(f"window must be >= 1 (episodes averaged in the metrics), got {window}.")
        self.llm = checked(llm)
        self.max_calls = max_calls
        n = self.num_envs
        self._ep_env = np.zeros(n, dtype=np.float64)
        self._ep_int = np.zeros(n, dtype=np.float64)
        self._env_returns: deque[float] = deque(maxlen=window)
        self._int_returns: deque[float] = deque(maxlen=window)
        self.counters: dict[str, float] = {"steps": 0, "calls": 0, "over_budget": 0, "bad_outputs": 0}
        """Role-level counters, reported as `<metric_name>/<key>`; `calls` = LLM inputs this role asked."""

    # -- what a reward role implements -----------------------------------------------------

    def intrinsic(
        self,
        obs: Any,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        infos: list[dict],
        starts: np.ndarray,
    ) -> np.ndarray:
        """Intrinsic rewards (n,) to add at this step (0 where `starts`)."""
        return np.zeros(len(rewards), dtype=np.float32)

    def extra_metrics(self) -> dict[str, float]:
        return {}

    # -- shared machinery ------------------------------------------------------------------------

    def spend(self, n: int) -> bool:
        """Ask the budget for `n` LLM inputs: True (and counted) if allowed, else counted as over budget."""
        if self.max_calls is not None and self.counters["calls"] + n > self.max_calls:
            self.counters["over_budget"] += n
            return False
        self.counters["calls"] += n
        return True

    def relabel(self, i: int, info: dict, values: np.ndarray) -> None:
        """Hand deferred rewards (L,) for env `i`'s last L transitions (ending now) to the agent."""
        values = np.asarray(values, dtype=np.float32).reshape(-1)
        add_relabel(info, values)
        info["intrinsic_relabel"] = values
        self._ep_int[i] += float(values.sum())

    def process(self, obs, rewards, terminated, truncated, infos, starts):
        try:
            intr = np.asarray(
                self.intrinsic(obs, rewards, terminated, truncated, infos, starts), dtype=np.float32
            )
        except LLMOutputError as err:
            handle_bad_output(err, self.on_bad_output, self.counters, type(self).__name__, self.metric_name)
            value = self.fallback_reward if self.on_bad_output == "fallback" else 0.0
            intr = np.full(len(rewards), value, dtype=np.float32)
        if not np.isfinite(intr).all():  # a role's own arithmetic must not smuggle NaN into training
            raise LLMOutputError(
                f"{type(self).__name__} computed a non-finite intrinsic reward {intr.tolist()} from its "
                "LLM's answers; check the model's outputs (llm/bad_outputs) and the role's settings."
            )
        intr = np.where(starts, 0.0, intr).astype(np.float32)
        done = (terminated | truncated) & ~starts
        for i in range(len(rewards)):
            infos[i]["intrinsic_reward"] = float(intr[i])
            if starts[i]:
                self._ep_env[i] = self._ep_int[i] = 0.0
                continue
            self.counters["steps"] += 1
            self._ep_env[i] += float(rewards[i])
            self._ep_int[i] += float(intr[i])
            if done[i]:
                self._env_returns.append(self._ep_env[i])
                self._int_returns.append(self._ep_int[i])
                self._ep_env[i] = self._ep_int[i] = 0.0
        return obs, (np.asarray(rewards, dtype=np.float32) + intr)

    def llmrl_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self._int_returns:
            out["reward/intrinsic"] = float(np.mean(self._int_returns))
            out["reward/extrinsic"] = float(np.mean(self._env_returns))
        out.update({f"{self.metric_name}/{k}": float(v) for k, v in self.counters.items()})
        out.update(self.extra_metrics())
        if self.llm is not None:
            out.update(self.llm.stats.as_dict())
        return out
