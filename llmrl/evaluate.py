"""Evaluate an agent: mean and std of episode returns over n episodes (like SB3's evaluate_policy).

result = llmrl.evaluate(agent, gymnasium.make("CartPole-v1"), n_episodes=100)
print(result)          # 500.00 ± 0.00 over 100 episodes
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import VectorEnv

from llmrl.agents.base import as_vector_env
from llmrl.errors import ConfigError

__all__ = ["evaluate", "EvalResult"]


@dataclass
class EvalResult:
    mean: float
    """Mean episode return."""
    std: float
    """Standard deviation of episode returns (population std, as SB3's evaluate_policy)."""
    returns: list[float] = field(default_factory=list)
    """Every episode's return, in completion order."""
    lengths: list[int] = field(default_factory=list)
    """Every episode's length in steps."""

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f} over {len(self.returns)} episodes"


def evaluate(
    agent: Any,
    env: gym.Env | VectorEnv,
    n_episodes: int = 100,
    *,
    deterministic: bool = True,
    seed: int | None = None,
) -> EvalResult:
    """Run `agent.predict` on `env` (a single or vector env) until `n_episodes` episodes have ended.

    With a vector env, episodes are counted in the order they finish, and each env runs at most
    ceil(n_episodes / num_envs) episodes so that short episodes do not dominate the sample (the bias
    SB3's evaluate_policy also corrects). The env is reset once, with `seed` if given.
    """
    if not isinstance(n_episodes, int) or n_episodes < 1:
        raise ConfigError(f"n_episodes={n_episodes!r} is invalid: pass a positive int.")
    venv = as_vector_env(env)
    n = venv.num_envs
    quota = np.full(n, -(-n_episodes // n))  # episodes each env may still contribute
    obs, _ = venv.reset(seed=seed)
    ep_ret, ep_len = np.zeros(n), np.zeros(n, dtype=np.int64)
    autoreset = np.zeros(n, dtype=bool)
    returns: list[float] = []
    lengths: list[int] = []
    while len(returns) < n_episodes:
        actions = agent.predict(obs, deterministic=deterministic)
        obs, rewards, term, trunc, _ = venv.step(actions)
        live = ~autoreset  # NEXT_STEP autoreset: a step right after an episode end only resets
        ep_ret += np.asarray(rewards, dtype=np.float64) * live
        ep_len += live
        done = (np.asarray(term) | np.asarray(trunc)) & live
        for i in np.flatnonzero(done):
            if quota[i] > 0 and len(returns) < n_episodes:
                returns.append(float(ep_ret[i]))
                lengths.append(int(ep_len[i]))
                quota[i] -= 1
        ep_ret[done], ep_len[done] = 0.0, 0
        autoreset = done
    arr = np.asarray(returns)
    return EvalResult(float(arr.mean()), float(arr.std()), returns, lengths)
