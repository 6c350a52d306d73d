"""llmrl: reinforcement learning with a language model in the loop.

    import llmrl
    env = llmrl.make("CartPole-v1", num_envs=8)
    agent = llmrl.PPO(env, seed=0).learn(50_000)
    print(llmrl.evaluate(agent, llmrl.make("CartPole-v1"), n_episodes=100))

The LLM roles live in `llmrl.roles` (features, rewards, goals), the backends in `llmrl.llm`
(`llmrl.llm.load("embedded")`), the environments and their text in `llmrl.envs`.
"""

from llmrl import envs, llm, roles
from llmrl.agents import DQN, PPO, Agent, DQNConfig, PPOConfig
from llmrl.envs import make
from llmrl.errors import ConfigError, DependencyNotInstalled, LLMRLError
from llmrl.evaluate import EvalResult, evaluate
from llmrl.render import render_terminal, save_gif
from llmrl.training import plot_learning_curve

__version__ = "0.1.0"

__all__ = [
    "make",
    "PPO",
    "PPOConfig",
    "DQN",
    "DQNConfig",
    "Agent",
    "evaluate",
    "EvalResult",
    "save_gif",
    "render_terminal",
    "plot_learning_curve",
    "envs",
    "llm",
    "roles",
    "LLMRLError",
    "ConfigError",
    "DependencyNotInstalled",
    "__version__",
]
