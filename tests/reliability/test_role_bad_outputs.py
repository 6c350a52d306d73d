"""The bad-answer policy (`on_bad_output`) of the roles that are not rewards: LLMFeatures and ELLMGoals.

The backend is a deterministic fake that goes bad mid-run (NaN answers) and recovers, as a flaky
server does; the roles run on llmrl's Grid world with its state texts.
"""

from __future__ import annotations

import numpy as np
import pytest

import llmrl
from llmrl.envs import WithText
from llmrl.errors import ConfigError
from llmrl.llm import LLMOutputError, load
from llmrl.roles import ELLMGoals, LLMFeatures

RIGHT, UP = 1, 0


def _features(faulty, policy):
    llm = load(faulty(None))
    env = WithText(llmrl.make("llmrl/Grid-v0", num_envs=2))
    # ask the model at every step (no memo, no reuse), so every step of the bad spell reaches it
    role = LLMFeatures(env, llm, on_bad_output=policy, memo_size=0, on_change=False)
    role.reset(seed=0)
    return role, llm.backend


@pytest.mark.parametrize("policy", ["raise", "fallback", "skip"])
def test_features_policy(faulty, policy):
    role, backend = _features(faulty, policy)
    good, *_ = role.step(np.array([RIGHT, UP]))
    backend.fault = "nan"  # the server goes bad for two steps
    if policy == "raise":
        with pytest.raises(LLMOutputError, match="faulty:v1"):
            role.step(np.array([RIGHT, UP]))
        return
    bad = [role.step(np.array([RIGHT, UP]))[0]["llm"] for _ in range(2)]
    expected = np.zeros_like(good["llm"]) if policy == "fallback" else good["llm"]
    for feats in bad:
        np.testing.assert_array_equal(feats, expected)
    backend.fault = None  # recovered: the state is asked again at once
    after, *_ = role.step(np.array([RIGHT, UP]))
    assert np.isfinite(after["llm"]).all() and not np.array_equal(after["llm"], expected)
    assert role.llmrl_metrics()["llm/bad_outputs"] == 2


def _goals(faulty, policy):
    llm = load(faulty(None))
    env = WithText(llmrl.make("llmrl/Grid-v0", num_envs=2))
    role = ELLMGoals(env, llm, candidates=["go right", "go up", "reach the goal"], refresh="text",
                     on_bad_output=policy)  # fmt: skip
    role.reset(seed=0)
    return role, llm.backend


def test_goals_skip_keeps_the_suggestions_and_asks_again(faulty):
    role, backend = _goals(faulty, "skip")
    _, _, _, _, info = role.step(np.array([RIGHT, UP]))
    before = [list(g) for g in info["goals"]]
    assert all(before)  # every env has suggestions
    backend.fault = "nan"  # NaN scores and embeddings
    _, rewards, _, _, info = role.step(np.array([RIGHT, UP]))
    assert [list(g) for g in info["goals"]] == before and np.isfinite(rewards).all()
    assert role.llmrl_metrics()["goals/bad_outputs"] >= 1
    refreshes = role.llmrl_metrics()["goals/refreshes"]
    backend.fault = None
    role.step(np.array([RIGHT, UP]))
    assert role.llmrl_metrics()["goals/refreshes"] > refreshes  # the skipped contexts were asked again


def test_goals_raise_and_bad_policy_names(faulty):
    role, backend = _goals(faulty, "raise")
    role.step(np.array([RIGHT, UP]))
    backend.fault = "nan"
    with pytest.raises(LLMOutputError, match="faulty:v1"):
        role.step(np.array([RIGHT, UP]))
    env = WithText(llmrl.make("llmrl/Grid-v0"))
    with pytest.raises(ConfigError, match="ELLMGoals: on_bad_output must be one of 'raise', 'skip'"):
        ELLMGoals(env, load(faulty(None)), on_bad_output="fallback")
    with pytest.raises(ConfigError, match="LLMFeatures: on_bad_output must be one of"):
        LLMFeatures(env, load(faulty(None)), on_bad_output="zeros")
