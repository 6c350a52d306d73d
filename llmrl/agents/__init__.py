"""RL algorithms, one a file: PPO (ppo.py), DQN (dqn.py), on the shared `Agent` base (base.py)."""

from llmrl.agents.base import Agent
from llmrl.agents.ppo import PPO, PPOConfig

__all__ = ["Agent", "PPO", "PPOConfig"]

try:  # DQN lands in parallel; export it when present
    from llmrl.agents.dqn import DQN, DQNConfig  # noqa: F401

    __all__ += ["DQN", "DQNConfig"]
except ImportError:  # pragma: no cover
    pass
