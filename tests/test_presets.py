"""Every preset builds: its env, its role (with the fake model) and its agent, so a preset that drifts
from the code fails here. And the presets are the experiments: doorkey-ellm is the benchmarked ELLM."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from fakes import EchoLLM

from llmrl.errors import ConfigError, DependencyNotInstalled
from llmrl.experiments import build_env, list_presets, load_preset, train_config
from llmrl.experiments.compare import method_config
from llmrl.experiments.run import agent_class
from llmrl.roles.registry import role_names


def _tiny_gradient_model(folder):
    """The VLM policy needs gradients through its model, which the fake cannot give: a tiny random Gemma 3."""
    pytest.importorskip("transformers")
    from llmrl.llm.hf import HFLLM
    from llmrl.testing import tiny_gemma

    return HFLLM(tiny_gemma(folder, ["go", "to", "the", "red", "ball"]), device="cpu")


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_every_preset_builds_its_env_role_and_agent(name, tmp_path):
    cfg = train_config(load_preset(name))
    if cfg.role == "policy":  # the fake model has no gradients: the LLM policy acts zero-shot here
        cfg = dataclasses.replace(cfg, role_args={**cfg.role_args, "train": "none"})
    model = _tiny_gradient_model(tmp_path / "model") if cfg.role == "vlm-policy" else EchoLLM()
    try:
        env, llm = build_env(cfg, num_envs=min(cfg.num_envs, 2), llm=model)
    except DependencyNotInstalled as err:
        pytest.skip(str(err))
    assert (llm is None) == (cfg.role == "none")
    algo = cfg.algo_config()
    if cfg.algo == "dqn":
        algo["buffer_size"] = 64  # an Atari preset's buffer would take gigabytes
    agent = agent_class(cfg.algo)(env, seed=0, policy=getattr(env, "policy", None), **algo)
    obs, _ = env.reset(seed=0)
    action = agent.predict(obs)
    action = action[0] if isinstance(action, tuple) else action
    env.step(np.asarray(action) if min(cfg.num_envs, 2) > 1 else action)
    env.close()


def test_doorkey_ellm_preset_is_the_benchmarked_ellm():
    pytest.importorskip("minigrid")
    from llmrl.envs import manual
    from llmrl.roles.goals import ELLMGoals, minigrid_summary

    cfg = train_config(load_preset("doorkey-ellm"))
    env, _ = build_env(cfg, num_envs=2, llm=EchoLLM())
    assert isinstance(env, ELLMGoals)
    # the game manual and the mission + inventory filter the benchmark chose (benchmarks/planner.py)
    assert env.text_filter is minigrid_summary and env.manual == manual(cfg.env)
    assert (env.k, env.threshold, env.scale, env.suggest) == (3, 0.6, 0.2, "rank")
    assert method_config("ellm") == dataclasses.replace(cfg, seed=0)
    env.close()


def test_the_oracle_method_reads_the_ground_truth():
    pytest.importorskip("minigrid")
    env, _ = build_env(method_config("oracle"), num_envs=1, llm=EchoLLM())
    _, info = env.reset(seed=0)
    assert info["oracle_goals"] == ["pick up the key"] and info["goals"] == ["pick up the key"]


def test_role_choices_come_from_the_one_registry():
    from llmrl.roles import ROLES

    assert tuple(ROLES) == role_names()
    with pytest.raises(ConfigError, match="unknown role 'vlm-reward'"):
        train_config({"role": "vlm-reward"})
