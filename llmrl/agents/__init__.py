"""RL algorithms, one a file: PPO (ppo.py), DQN (dqn.py), on the shared `Agent` base (base.py)."""

from llmrl.agents.base import Agent
from llmrl.agents.dqn import DQN, DQNConfig
from llmrl.agents.ppo import PPO, PPOConfig

__all__ = ["Agent", "PPO", "PPOConfig", "DQN", "DQNConfig"]
