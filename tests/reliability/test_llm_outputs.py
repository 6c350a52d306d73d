"""Bad answers at the LLM protocol boundary: counted, never cached, one named error, no silent NaN."""

from __future__ import annotations

import sqlite3

import gymnasium as gym
import numpy as np
import pytest

import llmrl
from llmrl.envs import WithText
from llmrl.llm import CachedLLM, LLMCache, LLMCacheError, LLMOutputError, load
from llmrl.roles import SayCan, Skill
from llmrl.roles.rewards import TextGoalReward


@pytest.mark.parametrize("fault", ["nan", "inf", "huge", "fewer", "ragged"])
@pytest.mark.parametrize("op", ["embed", "features"])
def test_bad_vectors_raise_are_counted_and_never_cached(faulty, tmp_path, fault, op):
    path = tmp_path / "c.sqlite"
    llm = load(faulty(fault), cache=path)
    texts = ["a", "bb", "ccc"]
    with pytest.raises(LLMOutputError, match=r"faulty:v1 gave .*(answer|answers)") as info:
        getattr(llm, op)(texts)
    assert "\n" not in str(info.value) and "on_bad_output" in str(info.value)
    assert llm.stats.bad_outputs >= 1
    # a good model now: every input that was bad is asked again, nothing bad was stored
    good = faulty(None)
    again = load(good, cache=path)
    out = getattr(again, op)(texts)
    assert np.isfinite(out).all() and out.shape == (3, 4)
    bad = set(texts) if fault == "fewer" else {"a"} if fault == "ragged" else {"ccc"}
    assert set(good.asked) == bad  # the good answers of the bad call were cached
    stored = sqlite3.connect(path).execute("SELECT value FROM llm_calls").fetchall()
    assert all(np.isfinite(np.frombuffer(v, np.float32)).all() for (v,) in stored)


@pytest.mark.parametrize("fault", ["nan", "inf", "fewer"])
def test_bad_scores_and_generations(faulty, fault):
    llm = load(faulty(fault))  # no cache: still checked
    assert isinstance(llm, CachedLLM) and llm.cache is None
    with pytest.raises(LLMOutputError, match="faulty:v1"):
        llm.score("p", [" a", " b"])
    if fault == "fewer":
        with pytest.raises(LLMOutputError, match="1 generate answers for 2 inputs"):
            llm.generate(["x", "y"])


def test_a_cache_poisoned_by_an_older_version_is_asked_again(faulty, tmp_path):
    path = tmp_path / "c.sqlite"
    good = faulty(None)
    llm = load(good, cache=path)
    llm.embed(["a"])
    conn = sqlite3.connect(path)
    conn.execute("UPDATE llm_calls SET value = ?", (np.full(4, np.nan, np.float32).tobytes(),))
    conn.commit()
    again = load(good, cache=path)
    assert np.isfinite(again.embed(["a"])).all() and good.asked == ["a", "a"]


def test_a_bare_backend_given_to_a_role_is_checked_too(faulty):
    env = WithText(llmrl.make("llmrl/Grid-v0"))
    with pytest.raises(LLMOutputError, match="faulty:v1"):  # the goal's embedding, at construction
        TextGoalReward(env, faulty("nan"), goal="The cat reaches the goal.", defer=False)
    llm = faulty(None)
    role = TextGoalReward(env, llm, goal="The cat reaches the goal.", defer=False)
    llm.fault = "nan"
    role.reset(seed=0)
    with pytest.raises(LLMOutputError, match="faulty:v1"):
        for _ in range(5):
            role.step(role.action_space.sample())


@pytest.mark.parametrize("policy", ["fallback", "skip"])
def test_reward_role_policy_keeps_training_going_and_counts(faulty, policy):
    env = WithText(llmrl.make("llmrl/Grid-v0"))
    llm = load(faulty(None))
    role = TextGoalReward(env, llm, goal="The cat reaches the goal.", defer=False, on_bad_output=policy,
                          fallback_reward=-0.5)  # fmt: skip
    llm.backend.fault = "nan"  # the server goes bad mid-run
    role.reset(seed=0)
    rewards = [role.step(role.action_space.sample())[1] for _ in range(3)]
    assert np.isfinite(rewards).all()
    m = role.llmrl_metrics()
    assert m[f"{role.metric_name}/bad_outputs"] == 3 and m["llm/bad_outputs"] >= 3
    assert role.llmrl_metrics()["llm/calls"] >= 3
    if policy == "fallback":
        assert all(r <= -0.5 + 1.0 for r in rewards)


def test_saycan_with_nan_scores_raises_instead_of_picking_skill_0(faulty):
    class Env(gym.Env):
        observation_space = gym.spaces.Discrete(1)
        action_space = gym.spaces.Discrete(1)

        def reset(self, *, seed=None, options=None):
            return 0, {}

        def step(self, action):
            return 0, 0.0, True, False, {}

    skills = [
        Skill(n, policy=lambda o, i: 0, done=lambda o, i: True) for n in ("go left", "go right", "wait")
    ]
    agent = SayCan(faulty("nan"), skills, instruction="go", calibrate=False)
    with pytest.raises(LLMOutputError, match="nan instead of a finite log-probability"):
        agent.run(Env(), seed=0, max_steps=3)


@pytest.mark.parametrize(
    "damage",
    ["garbage", "truncated", "zero_header", "directory", "text"],
)
def test_a_damaged_sqlite_cache_is_one_named_error(tmp_path, faulty, damage):
    path = tmp_path / "c.sqlite"
    llm = load(faulty(None), cache=path)
    llm.embed([f"t{i}" for i in range(200)])
    llm.close()
    for extra in ("-wal", "-shm"):
        (tmp_path / f"c.sqlite{extra}").unlink(missing_ok=True)
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif damage == "zero_header":
        path.write_bytes(b"\0" * 100 + data[100:])
    elif damage == "directory":
        path.unlink()
        path.mkdir()
    else:
        path.write_text("not a database\n" * 50)
    with pytest.raises(LLMCacheError, match=f"LLM cache {path}.*(delete it|another cache=)") as info:
        cache = LLMCache(path)
        cache.get_many([f"k{i}" for i in range(10)])
        len(cache)
    assert "\n" not in str(info.value)


def test_judge_without_state_text_is_an_error_not_a_silent_nothing_happened(faulty):
    from llmrl.roles import JudgeReward

    env = JudgeReward(llmrl.make("llmrl/Grid-v0"), load(faulty(None)), objective="Reach the goal.")
    env.reset(seed=0)
    with pytest.raises(llmrl.errors.ConfigError, match="WithText"):
        env.step(0)
