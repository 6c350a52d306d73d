"""ELLM goals and SayCan: exact logic with a scripted fake LLM, then the real embedded model."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest

from llmrl.envs.minigrid import MiniGridSubgoals, doorkey_subgoal, plan_action
from llmrl.errors import ConfigError
from llmrl.llm.base import CallStats
from llmrl.roles.goals import (
    ELLMGoals,
    GoalSuggester,
    parse_goal_list,
    vocabulary_candidates,
)
from llmrl.roles.saycan import SayCan, Skill, minigrid_skills

pytest.importorskip("minigrid")


# -- a scripted fake LLM -------------------------------------------------------------------------

_STEM = {"picked": "pick", "opened": "open", "reached": "reach", "dropped": "drop", "went": "go"}


class FakeLLM:
    """score: a fixed preference per continuation word (+ a bonus if the prompt names it);
    embed: a bag of stemmed words, one dim each (up to 64) (paraphrases sharing words are close)."""

    name = "fake"
    capabilities = frozenset({"generate", "score", "embed"})

    def __init__(
        self, prefs: dict[str, float] | None = None, completion: str = "- open the door\n- reach the goal"
    ):
        self.prefs = prefs or {}
        self.completion = completion
        self.stats = CallStats()
        self.words: dict[str, int] = {}
        self.score_prompts: list[str] = []
        self.generate_prompts: list[str] = []

    def score(self, prompt, continuations):
        self.score_prompts.append(prompt)
        self.stats.calls += len(continuations)
        out = []
        for c in continuations:
            s = sum(v for w, v in self.prefs.items() if w in c)
            s += 0.5 if "N/A" not in prompt and any(w in prompt for w in c.split() if len(w) > 3) else 0.0
            out.append(s)
        return np.array(out)

    def generate(self, prompts, *, max_tokens=32, temperature=0.0, stop=None, images=None):
        self.generate_prompts.extend(prompts)
        return [self.completion for _ in prompts]

    def embed(self, texts):
        vecs = np.zeros((len(texts), 64))
        for r, t in enumerate(texts):
            for w in re.findall(r"[a-z]+", t.lower()):
                w = _STEM.get(w, w)
                vecs[r, self.words.setdefault(w, len(self.words))] += 1.0  # one dim per word
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-8)


class ScriptedTextEnv(gym.Env):
    """Emits a fixed sequence of (text, caption) infos; the episode ends after the script."""

    observation_space = gym.spaces.Box(0, 1, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)
    MISSION = "Mission: use the key to open the door and then get to the goal."

    def __init__(self, script=("", "picked up the yellow key", "", "opened the door", "reached the goal")):
        self.script = list(script)

    def _info(self):
        carrying = "You carry a yellow key." if self.t >= 1 else ""
        return {
            "text": f"{self.MISSION} {carrying}".strip(),
            "caption": self.script[self.t] if self.t else "",
        }

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), self._info()

    def step(self, action):
        self.t += 1
        done = self.t == len(self.script) - 1
        return np.zeros(2, np.float32), float(done), done, False, self._info()


PREFS = {"pick up": 4.0, "open": 2.0, "goal": 1.0}


# -- pure functions ----------------------------------------------------------------------------


def test_vocabulary_candidates_from_text():
    assert vocabulary_candidates("a red ball 2 steps ahead; You are carrying a yellow key.") == [
        "drop the key",
        "pick up the ball",
        "go to the ball",
    ]
    assert vocabulary_candidates("nothing here") == []


def test_parse_goal_list():
    assert parse_goal_list("1. Pick up the key\n2. Open the door.\n3. reach the goal", k=2) == [
        "pick up the key",
        "open the door",
    ]
    assert parse_goal_list("- a key\n- a key\n-") == ["a key"]


def test_rank_calibration_removes_the_prior():
    llm = FakeLLM(PREFS)
    cands = ["reach the goal", "open the door", "pick up the key"]
    raw = GoalSuggester(llm, calibrate=False).rank("You see a door.", cands)
    assert [c for c, _ in raw] == ["pick up the key", "open the door", "reach the goal"]
    cal = GoalSuggester(llm, calibrate=True).rank("You see a door.", cands)
    # Only the prompt-dependent bonus is left: "door" is named in the prompt.
    assert cal[0] == ("open the door", 0.5)
    assert [s for _, s in cal[1:]] == [0.0, 0.0]


# -- ELLM -------------------------------------------------------------------------------------------


def _run(env, n_steps):
    obs, info = env.reset(seed=0)
    rewards, infos = [], [info]
    for _ in range(n_steps):
        obs, r, term, trunc, info = env.step(0)
        rewards.append(r)
        infos.append(info)
        if term or trunc:
            break
    return rewards, infos


def test_ellm_rewards_suggested_goals_once_and_drops_them():
    llm = FakeLLM(PREFS)
    env = ELLMGoals(ScriptedTextEnv(), llm, k=2, threshold=0.6, scale=0.5, calibrate=False)
    rewards, infos = _run(env, 10)
    assert infos[0]["goals"] == ["pick up the key", "open the door"]
    # step 1: key picked up (suggested); 2: nothing; 3: door opened; 4: goal reached + the env's reward
    assert rewards == [0.5, 0.0, 0.5, 1.5]
    assert infos[1]["goal_achieved"] == "pick up the key"
    assert infos[1]["goals"] == ["open the door", "reach the goal"]
    assert [i["intrinsic_reward"] for i in infos] == [0.0, 0.5, 0.0, 0.5, 0.5]
    m = env.llmrl_metrics()
    assert m["goals/achieved"] == 3 and m["goals/intrinsic_total"] == 1.5
    # event refresh: a prompt at reset and after each of the 2 captions -> 3 distinct prompts
    assert m["goals/prompts"] == 3 and len(llm.score_prompts) == 3


def test_ellm_no_reward_for_unsuggested_or_dissimilar_captions():
    llm = FakeLLM({"goal": 5.0})  # suggests only goal-related things first
    env = ELLMGoals(ScriptedTextEnv(), llm, k=1, threshold=0.6, scale=0.5, calibrate=False)
    rewards, infos = _run(env, 10)
    assert infos[0]["goals"] == ["reach the goal"]
    assert rewards[:3] == [0.0, 0.0, 0.0]  # "picked up the yellow key" is not the suggested goal


def test_ellm_extrinsic_off_and_similarity_reward():
    env = ELLMGoals(
        ScriptedTextEnv(),
        FakeLLM(PREFS),
        k=1,
        scale=1.0,
        extrinsic=False,
        reward_similarity=True,
        calibrate=False,
    )
    rewards, _ = _run(env, 10)
    # cos("picked up the yellow key", "pick up the key") = 4 / sqrt(5 * 4)
    assert rewards[0] == pytest.approx(4 / np.sqrt(20), abs=1e-6)
    assert rewards[2] == pytest.approx(1.0, abs=1e-6)
    assert rewards[3] == pytest.approx(1.0, abs=1e-6)  # intrinsic only: the env's 1.0 is dropped


def test_ellm_vector_env_batches_and_caches_prompts():
    llm = FakeLLM(PREFS)
    venv = gym.vector.SyncVectorEnv([ScriptedTextEnv for _ in range(4)])
    env = ELLMGoals(venv, llm, k=2, scale=0.5, calibrate=False)
    env.reset(seed=0)
    total = np.zeros(4)
    for _ in range(4):
        _, r, term, trunc, info = env.step(np.zeros(4, dtype=int))
        total += r
    np.testing.assert_allclose(total, [2.5] * 4)  # 3 x 0.5 intrinsic + 1 at the goal
    # 4 identical envs: 3 distinct prompts reach the LLM, not 12
    assert len(llm.score_prompts) == 3
    assert list(info["goals"][0]) == ["reach the goal", "drop the key"]  # the last step keeps them
    _, r, _, _, info = env.step(np.zeros(4, dtype=int))  # NEXT_STEP autoreset: a new episode
    np.testing.assert_allclose(r, 0.0)
    assert list(info["goals"][0]) == ["pick up the key", "open the door"]
    # The second round of episodes is answered from memory.
    for _ in range(4):
        _, r, _, _, _ = env.step(np.zeros(4, dtype=int))
        total += r
    np.testing.assert_allclose(total, [5.0] * 4)
    assert len(llm.score_prompts) == 3


def test_ellm_text_refresh_calls_on_text_change_only():
    llm = FakeLLM(PREFS)
    env = ELLMGoals(ScriptedTextEnv(), llm, k=2, refresh="text", calibrate=False)
    _run(env, 10)
    # texts: no-carry (steps 0-1), carry (2..4); "done" changes after captions -> prompts differ per caption
    assert len(set(llm.score_prompts)) == len(llm.score_prompts) == 3


def test_ellm_generate_mode_parses_the_list():
    llm = FakeLLM(completion=" pick up the key\n- open the door\n- reach the goal")
    env = ELLMGoals(ScriptedTextEnv(), llm, k=2, suggest="generate", scale=0.5)
    rewards, infos = _run(env, 10)
    assert infos[0]["goals"] == ["pick up the key", "open the door"]
    assert rewards == [0.5, 0.0, 0.5, 1.5]
    assert len(llm.generate_prompts) == 3


def test_ellm_goal_in_obs_shapes():
    llm = FakeLLM(PREFS)
    env = ELLMGoals(ScriptedTextEnv(), llm, goal_in_obs=True, calibrate=False)
    assert env.observation_space.shape == (2 + 64,)
    obs, info = env.reset(seed=0)
    assert obs.shape == (66,) and env.observation_space.contains(obs)
    np.testing.assert_allclose(obs[2:], llm.embed(["pick up the key"])[0], atol=1e-6)
    mg = ELLMGoals(gym.make("MiniGrid-DoorKey-5x5-v0"), llm, goal_in_obs=True, suggest="oracle")
    assert set(mg.observation_space.spaces) == {"image", "direction", "mission", "goal"}


def test_ellm_config_errors():
    with pytest.raises(ConfigError, match="k=0"):
        ELLMGoals(ScriptedTextEnv(), FakeLLM(), k=0)
    with pytest.raises(ConfigError, match="suggest='ask'"):
        ELLMGoals(ScriptedTextEnv(), FakeLLM(), suggest="ask")

    class EmbedOnly(FakeLLM):
        capabilities = frozenset({"embed"})

    with pytest.raises(ConfigError, match="needs an LLM that can"):
        ELLMGoals(ScriptedTextEnv(), EmbedOnly(), suggest="rank")
    env = ELLMGoals(gym.make("MiniGrid-DoorKey-5x5-v0"), FakeLLM())
    with pytest.raises(ConfigError, match="WithText"):
        env.reset(seed=0)


# -- ground truth on DoorKey --------------------------------------------------------------------


def _solve_doorkey(env, skills, order=("pick up the key", "open the door", "reach the goal")):
    """Run the scripted skills in order; returns the oracle's sub-goals seen and the final reward."""
    by_name = {s.name: s for s in skills}
    obs, info = env.reset(seed=3)
    seen, reward, term = [info["oracle_goals"][0]], 0.0, False
    for name in order:
        s = by_name[name]
        for _ in range(s.max_steps):
            if s.done(obs, info) or term:
                break
            obs, reward, term, trunc, info = env.step(s.policy(obs, info))
            if info["oracle_goals"][0] != seen[-1]:
                seen.append(info["oracle_goals"][0])
    return seen, reward, term


def test_oracle_subgoals_follow_key_door_goal():
    env = MiniGridSubgoals(gym.make("MiniGrid-DoorKey-6x6-v0"))
    seen, reward, term = _solve_doorkey(env, minigrid_skills(env))
    assert seen == ["pick up the key", "open the door", "reach the goal"]
    assert term and reward > 0
    assert doorkey_subgoal(env.unwrapped) == "reach the goal"


def test_plan_action_turns_towards_target():
    env = gym.make("MiniGrid-DoorKey-5x5-v0")
    env.reset(seed=0)
    u = env.unwrapped
    x, y = u.agent_pos
    behind = (int(x) - [1, 0, -1, 0][u.agent_dir], int(y) - [0, 1, 0, -1][u.agent_dir])
    # A cell right behind the agent: two turns are needed; a turn is the first action either way.
    assert plan_action(u, behind, face=True) in (0, 1)


def test_saycan_with_fake_llm_and_scripted_skills():
    env = MiniGridSubgoals(gym.make("MiniGrid-DoorKey-6x6-v0"))
    skills = minigrid_skills(env)
    # The LLM here prefers "drop the key" above all: only the affordances keep SayCan on track
    # until the key is held; then the feasible "drop the key" wins and the task is not done.
    llm = FakeLLM({"drop": 9.0, "pick up": 3.0, "open": 2.0, "goal": 1.0})
    res = SayCan(llm, skills, instruction="get the key, open the door, reach the goal", calibrate=False).run(
        env, seed=3, max_steps=60
    )
    assert res.plan[:2] == ["pick up the key", "drop the key"] and not res.success
    # Without the bad preference it completes key -> door -> goal.
    good = FakeLLM({"pick up": 3.0, "open": 2.0, "goal": 1.0})
    agent = SayCan(good, skills, instruction="get the key, open the door, reach the goal", calibrate=False)
    res = agent.run(env, seed=3)
    assert res.success and res.plan == ["pick up the key", "open the door", "reach the goal"]
    assert res.choices[0]["open the door"]["affordance"] == 0.0
    assert agent.llm_calls == 3  # one score call per distinct "done so far"


def test_skill_from_agent_uses_predict_and_value():
    class Agent:
        def predict(self, obs, deterministic=True):
            return np.array([2]), None

        def value(self, obs):
            return np.array([0.0])

    s = Skill.from_agent("walk", Agent(), done=lambda o, i: False)
    assert s.policy(None, {}) == 2 and s.affordance(None, {}) == 0.5
    with pytest.raises(ConfigError):
        SayCan(FakeLLM(), [s, s])


# -- the real embedded model (Gemma 3 270M on llama.cpp, MiniLM for embeddings) ---------------------


def test_embedded_similarity_reward_fires_for_the_matching_goal_only(embedded):
    script = ("", "picked up the yellow key")
    fired = {}
    for goal in ("pick up the key", "open the door"):
        env = ELLMGoals(ScriptedTextEnv(script), embedded, candidates=[goal], k=1, threshold=0.6, scale=1.0)
        rewards, infos = _run(env, 1)
        fired[goal] = infos[1].get("goal_achieved")
        assert rewards == [1.0 + (1.0 if goal == "pick up the key" else 0.0)]  # + the scripted env's 1.0
    assert fired == {"pick up the key": "pick up the key", "open the door": None}
    cos = (
        env.embeddings(["picked up the yellow key"]) @ env.embeddings(["pick up the key", "open the door"]).T
    )
    assert cos[0, 0] >= 0.6 > cos[0, 1]


def test_embedded_ranked_suggestions_hold_the_oracle_subgoal(embedded):
    from llmrl.envs import WithText, manual
    from llmrl.roles.goals import minigrid_summary
    from llmrl.roles.saycan import doorkey_walkthrough

    env_id = "MiniGrid-DoorKey-6x6-v0"
    env = ELLMGoals(
        MiniGridSubgoals(WithText(gym.make(env_id))),
        embedded,
        k=3,
        manual=manual(env_id),
        text_filter=minigrid_summary,
    )
    recs = doorkey_walkthrough(env, range(5))
    assert [r["phase"] for r in recs] == [0, 1, 2] * 5
    top3 = np.mean([r["oracle"] in r["goals"][:3] for r in recs])
    assert top3 >= 0.9, [(r["oracle"], r["goals"]) for r in recs]
    # the summary makes states of a phase share one prompt: a handful of LLM prompts in all
    assert env.llmrl_metrics()["goals/prompts"] <= 8


def test_embedded_saycan_completes_doorkey_with_scripted_skills(embedded):
    env = MiniGridSubgoals(gym.make("MiniGrid-DoorKey-6x6-v0"))
    agent = SayCan(embedded, minigrid_skills(env), instruction=env.unwrapped.mission)
    for seed in (0, 1, 2):
        res = agent.run(env, seed=seed)
        assert res.success, (seed, res.plan)
        assert res.plan[-1] == "reach the goal"
        assert res.plan.index("pick up the key") < res.plan.index("open the door")
