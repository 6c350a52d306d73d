"""RLlib's PPO (new API stack) training on an llmrl role wrapper: the Grid with `ManualReward`.

The roles are Gymnasium wrappers, so RLlib takes them as they are; the one adapter it needs is
`llmrl.distributed.for_rllib`, which turns the Grid's Discrete observation into the float32 Box its
default models expect (one-hot). Each RLlib env runner builds its own env and LLM.

    pip install "ray[rllib]"          # RLlib pins its own gymnasium; a separate environment is wise
    python examples/rllib_role.py --iterations 5
    python examples/rllib_role.py --llm fixed    # a stand-in model instead of the embedded Gemma
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def make_env(config: dict[str, Any]) -> Any:
    """Grid in words + ManualReward (the game manual scores the events of each step), RLlib-ready."""
    import gymnasium as gym

    import llmrl  # noqa: F401  (registers llmrl/Grid-v0)
    from llmrl.distributed import FixedLatencyLLM, for_rllib
    from llmrl.envs import WithText
    from llmrl.roles.rewards import ManualReward

    if config.get("llm", "embedded") == "fixed":
        llm: Any = FixedLatencyLLM(0.0)
    else:
        import llmrl.llm

        llm = llmrl.llm.load("embedded", require=("score",))
    return for_rllib(ManualReward(WithText(gym.make("llmrl/Grid-v0")), llm))


def train(iterations: int = 5, llm: str = "embedded", batch: int = 512) -> list[float]:
    """Train RLlib's PPO for `iterations` (on the Ray this process is connected to); returns the mean
    episode return after each one."""
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.tune.registry import register_env

    if __name__ != "__main__":  # imported: the env runners cannot import this file, send make_env by value
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    register_env("llmrl-grid-manual", make_env)
    config = (
        PPOConfig()
        .environment("llmrl-grid-manual", env_config={"llm": llm})
        .env_runners(num_env_runners=1, num_envs_per_env_runner=1, num_cpus_per_env_runner=0.5)
        .training(train_batch_size_per_learner=batch, minibatch_size=64, num_epochs=2)
    )
    algo = config.build_algo()
    returns = []
    try:
        for i in range(iterations):
            result = algo.train()
            ret = float(result["env_runners"].get("episode_return_mean", float("nan")))
            returns.append(ret)
            print(f"iteration {i + 1}: episode return mean {ret:.3f}")
    finally:
        algo.stop()
    return returns


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--llm", choices=("embedded", "fixed"), default="embedded")
    args = ap.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        train(args.iterations, args.llm)
    finally:
        ray.shutdown()
