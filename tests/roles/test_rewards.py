"""Reward roles: exact logic with a scripted fake LLM, then the real embedded model (and a tiny CLIP)."""

from __future__ import annotations

import os
import re

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from llmrl.errors import ConfigError
from llmrl.llm.base import CallStats
from llmrl.roles.rewards import (
    JudgeReward,
    ManualReward,
    PreferenceReward,
    TextGoalReward,
    transcript,
    vlmrm_projection,
    vlmrm_reward,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# -- a scripted env and a scripted LLM -----------------------------------------------------------------


class CaptionEnv(gym.Env):
    """Plays scripted episodes: each is a list of (caption, text, reward); obs = step index."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, episodes, render_mode=None):
        self.episodes, self.k, self.t = episodes, -1, 0
        self.observation_space = spaces.Discrete(100)
        self.action_space = spaces.Discrete(2)
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.k, self.t = (self.k + 1) % len(self.episodes), 0
        return 0, {"caption": "", "text": "start"}

    def step(self, action):
        cap, text, r = self.episodes[self.k][self.t]
        self.t += 1
        done = self.t == len(self.episodes[self.k])
        return self.t, float(r), done, False, {"caption": cap, "text": text}

    def render(self):
        frame = np.zeros((8, 8, 3), np.uint8)
        frame[:, :, 0] = 30 * self.t
        return frame


class FakeLLM:
    """score(prompt, conts) = score_fn(prompt, cont); embed = bag of known words."""

    name = "fake"
    capabilities = frozenset({"generate", "score", "embed"})

    def __init__(self, score_fn=None, gen_fn=None, vocab=("goal", "pit", "key", "door", "start", "near")):
        self.stats = CallStats()
        self.score_fn, self.gen_fn, self.vocab = score_fn, gen_fn, vocab
        self.prompts: list[str] = []

    def score(self, prompt, continuations):
        self.prompts.append(prompt)
        self.stats.calls += len(continuations)
        return np.array([self.score_fn(prompt, c) for c in continuations], dtype=np.float32)

    def generate(self, prompts, *, max_tokens=32, temperature=0.0, stop=None, images=None):
        self.stats.calls += len(prompts)
        return [self.gen_fn(p) for p in prompts]

    def embed(self, texts):
        self.stats.calls += len(texts)
        e = np.array([[t.count(w) for w in self.vocab] + [1.0] for t in texts], dtype=np.float32)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    def features(self, prompts, **kw):
        raise NotImplementedError


def run_episode(env, n_steps):
    env.reset()
    out = []
    for _ in range(n_steps):
        _, r, term, trunc, info = env.step(0)
        out.append((r, info))
        if term or trunc:
            break
    return out


def episode_part(prompt):
    return prompt.rsplit("Episode:\n", 1)[1]


def yes_leaning_judge(prompt, cont):
    """A small model's lean: 'Yes' +1 everywhere, +2 for a goal, -0.5 for a pit (still Yes uncalibrated)."""
    ep = episode_part(prompt)
    yes = 1.0 + (2.0 if "reached the goal" in ep else -0.5 if "pit" in ep else 0.0)
    return yes if cont == " Yes" else 0.0


SUCCESS = [("moved", "", 0.0), ("moved", "", 0.0), ("reached the goal", "", 1.0)]
FAILURE = [("moved", "", 0.0), ("fell into the pit", "", -1.0)]


# -- transcript and judge -------------------------------------------------------------------------------


def test_transcript_folds_repeats_and_drops_empty():
    assert transcript(["", "moved up", "moved up", "", "moved up", "reached the goal"]) == (
        "- moved up (x3)\n- reached the goal"
    )
    assert transcript([]) == "- nothing happened"
    assert transcript([str(i) for i in range(30)], max_lines=2) == "- 28\n- 29"


def test_judge_calibration_turns_a_yes_leaning_model_into_a_judge():
    llm = FakeLLM(yes_leaning_judge)
    env = JudgeReward(CaptionEnv([SUCCESS, FAILURE]), llm, objective="Reach the goal.", method="score")
    succ, fail = run_episode(env, 10), run_episode(env, 10)
    assert [r for r, _ in succ] == [0.0, 0.0, 2.0]  # env +1, judge +1 on the last step only
    assert [r for r, _ in fail] == [0.0, -1.0]  # judge says No -> failure reward 0
    assert succ[-1][1]["intrinsic_reward"] == 1.0 and fail[-1][1]["intrinsic_reward"] == 0.0
    assert succ[-1][1]["judge_p"] == pytest.approx(1 / (1 + np.exp(-2.0)))
    m = env.llmrl_metrics()
    assert m["judge/judgements"] == 2 and m["judge/yes"] == 1 and m["judge/bias"] == 1.0
    assert m["reward/intrinsic"] == 0.5 and m["reward/extrinsic"] == 0.0
    # uncalibrated, the same model says Yes to the failure too (fail margin 0.5 > 0)
    raw = JudgeReward(
        CaptionEnv([FAILURE]), FakeLLM(yes_leaning_judge), objective="x", method="score", calibrate=False
    )
    assert run_episode(raw, 10)[-1][1]["intrinsic_reward"] == 1.0


def channel_judge(prompt, cont):
    """log p(transcript | verdict): success transcripts likelier under 'succeeded', and vice versa."""
    succeeded = prompt.endswith("agent succeeded.\nEpisode:\n")
    good = "reached the goal" in cont
    return -1.0 if succeeded == good else -3.0


def test_judge_channel_scores_the_transcript_under_both_verdicts():
    llm = FakeLLM(channel_judge)
    env = JudgeReward(
        CaptionEnv([SUCCESS, FAILURE]),
        llm,
        objective="Reach the goal.",
        examples=[(["reached the goal"], True)],
    )
    assert run_episode(env, 10)[-1][1]["judge_p"] == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert run_episode(env, 10)[-1][1]["intrinsic_reward"] == 0.0
    assert len(llm.prompts) == 4 and "agent succeeded.\nEpisode:\n- reached the goal\n\n" in llm.prompts[0]
    assert env.llmrl_metrics()["judge/yes"] == 1


def test_judge_every_k_rewards_sum_to_the_final_verdict():
    llm = FakeLLM(yes_leaning_judge)
    long_success = [("moved", "", 0.0)] * 4 + [("reached the goal", "", 1.0)]
    env = JudgeReward(
        CaptionEnv([long_success]),
        llm,
        objective="Reach the goal.",
        every=2,
        output="probability",
        method="score",
    )
    steps = run_episode(env, 10)
    intr = [info["intrinsic_reward"] for _, info in steps]
    assert intr[0] == intr[2] == 0.0  # judged at steps 2, 4 and the end (5)
    assert sum(intr) == pytest.approx(1 / (1 + np.exp(-2.0)), abs=1e-6)
    assert intr[1] == pytest.approx(0.5, abs=1e-6)  # "moved" alone: calibrated margin 0


def test_judge_free_text_counts_unparseable_and_uses_fallback():
    answers = iter([" Yes, it did.", " I think so", " no"])
    llm = FakeLLM(gen_fn=lambda p: next(answers))
    env = JudgeReward(CaptionEnv([SUCCESS]), llm, objective="x", method="generate", fallback=-0.5)
    got = [run_episode(env, 10)[-1][1]["intrinsic_reward"] for _ in range(3)]
    assert got == [1.0, -0.5, 0.0]
    assert env.llmrl_metrics()["judge/unparseable"] == 1


def test_judge_budget_gives_fallback():
    env = JudgeReward(
        CaptionEnv([SUCCESS]),
        FakeLLM(yes_leaning_judge),
        objective="x",
        max_calls=1,
        fallback=0.25,
        method="score",
    )
    assert run_episode(env, 10)[-1][1]["intrinsic_reward"] == 1.0
    assert run_episode(env, 10)[-1][1]["intrinsic_reward"] == 0.25
    m = env.llmrl_metrics()
    assert m["judge/calls"] == 1 and m["judge/over_budget"] == 1


def test_judge_batches_over_a_vector_env():
    llm = FakeLLM(yes_leaning_judge)
    venv = gym.vector.SyncVectorEnv([lambda: CaptionEnv([SUCCESS]), lambda: CaptionEnv([FAILURE])])
    env = JudgeReward(venv, llm, objective="Reach the goal.", method="score")
    env.reset(seed=0)
    rewards = []
    for _ in range(3):
        _, r, term, trunc, info = env.step(np.zeros(2, dtype=np.int64))
        rewards.append(r.tolist())
    # env 1 ends at step 2 (judged No), env 0 at step 3 (judged Yes); step 3 of env 1 is its reset
    assert rewards == [[0.0, 0.0], [0.0, -1.0], [2.0, 0.0]]
    assert info["intrinsic_reward"].tolist() == [1.0, 0.0]
    assert len(llm.prompts) == 3  # the content-free prompt + one per ended episode


def test_judge_rejects_bad_config():
    with pytest.raises(ConfigError, match="method"):
        JudgeReward(CaptionEnv([SUCCESS]), FakeLLM(yes_leaning_judge), objective="x", method="parse")
    with pytest.raises(ConfigError, match="objective"):
        JudgeReward(CaptionEnv([SUCCESS]), FakeLLM(yes_leaning_judge), objective=" ")
    with pytest.raises(ConfigError, match="LLM backend"):
        JudgeReward(CaptionEnv([SUCCESS]), object(), objective="x")


# -- VLM-RM formula and the similarity rewards ---------------------------------------------------------


def test_vlmrm_formula_against_hand_values():
    g, b = np.array([0.0, 1.0]), np.array([1.0, 0.0])
    x = np.array([[1.0, 0.0], [0.0, 1.0], [np.sqrt(0.5), np.sqrt(0.5)]])
    # alpha = 0: plain cosine similarity with a unit goal
    assert vlmrm_reward(x, g, vlmrm_projection(g, b, 0.0)) == pytest.approx([0.0, 1.0, np.sqrt(0.5)])
    # alpha = 1: only the component of x - g along d = g - b counts; d/|d| = (-1, 1)/sqrt2
    p1 = vlmrm_projection(g, b, 1.0)
    assert p1 == pytest.approx(np.array([[0.5, -0.5], [-0.5, 0.5]]))
    r = vlmrm_reward(x, g, p1)
    a = np.sqrt(0.5)
    proj = ((a - 0.0) * -1 + (a - 1.0) * 1) / np.sqrt(2)  # (x - g) . d/|d|
    assert r == pytest.approx([0.0, 1.0, 1 - 0.5 * proj**2])
    # unnormalised states are normalised first
    assert vlmrm_reward(3 * x, g, p1) == pytest.approx(r)


def _text_episode(*texts):
    return [("", t, 0.0) for t in texts]


def test_text_goal_reward_deferred_equals_online_and_relabels():
    episodes = [_text_episode("start", "near key", "goal"), _text_episode("pit", "goal goal")]
    online = TextGoalReward(CaptionEnv(episodes), FakeLLM(), goal="goal", defer=False)
    deferred = TextGoalReward(CaptionEnv(episodes), FakeLLM(), goal="goal", defer=True)
    sums = []
    for _ in range(2):
        on, de = run_episode(online, 10), run_episode(deferred, 10)
        on_r = np.array([info["intrinsic_reward"] for _, info in on])
        assert all(info["intrinsic_reward"] == 0.0 for _, info in de)
        assert "reward_relabel" not in de[0][1]
        assert de[-1][1]["reward_relabel"] == pytest.approx(on_r, abs=1e-6)
        sums.append(on_r.sum())
    # "goal goal" embeds as (2, 0, .., 1)/sqrt5, the goal as (1, 0, .., 1)/sqrt2: cosine 3/sqrt10
    assert on_r[-1] == pytest.approx(3 / np.sqrt(10), abs=1e-6)
    assert deferred.llmrl_metrics()["reward/intrinsic"] == pytest.approx(np.mean(sums), abs=1e-5)


def test_text_goal_every_k_holds_values():
    ep = [_text_episode("start", "goal", "pit", "goal", "near")]
    full = run_episode(TextGoalReward(CaptionEnv(ep), FakeLLM(), goal="goal", defer=False), 10)
    every2 = run_episode(TextGoalReward(CaptionEnv(ep), FakeLLM(), goal="goal", every=2), 10)
    f = [info["intrinsic_reward"] for _, info in full]
    assert every2[-1][1]["reward_relabel"] == pytest.approx([f[0], f[0], f[2], f[2], f[4]], abs=1e-6)


def test_relabel_lands_in_the_right_transitions_across_buffer_wraparound():
    from llmrl.buffers import ReplayBuffer

    lengths = [3, 5]
    eps = {
        n: [
            _text_episode(*(["start", "near", "goal", "pit", "key"][(k + j) % 5] for j in range(n)))
            for k in range(3)
        ]
        for n in lengths
    }
    venv = gym.vector.SyncVectorEnv([lambda n=n: CaptionEnv(eps[n]) for n in lengths])
    env = TextGoalReward(venv, FakeLLM(), goal="goal", alpha=0.5, baseline="start")
    online = TextGoalReward(
        gym.vector.SyncVectorEnv([lambda n=n: CaptionEnv(eps[n]) for n in lengths]),
        FakeLLM(),
        goal="goal",
        alpha=0.5,
        baseline="start",
        defer=False,
    )
    buf = ReplayBuffer(env.single_observation_space, env.single_action_space, capacity=14, num_envs=2)
    obs, _ = env.reset(seed=0)
    online.reset(seed=0)
    prev_done = np.zeros(2, bool)
    expected = np.zeros((buf.slots, 2), np.float32)
    changed, pending = [], [[], []]  # slots of each env's episode not yet ended (not yet relabelled)
    for _ in range(17):  # > 7 slots per column: the ring wraps twice
        act = np.zeros(2, dtype=np.int64)
        nobs, r, term, trunc, info = env.step(act)
        _, r_on, *_ = online.step(act)
        slot = buf.pos
        buf.add(obs, nobs, act, r, term, trunc, valid=~prev_done)
        expected[slot] = np.where(prev_done, 0.0, r_on)  # what the rewards should read in the end
        for i in range(2):
            pending[i].append(slot)
            if info.get("_reward_relabel", np.zeros(2, bool))[i]:
                changed.append(buf.relabel(i, info["reward_relabel"][i]))
                pending[i] = []
        obs, prev_done = nobs, term | trunc
    live = buf.valid.copy()  # transitions still whole in the ring, of episodes that ended
    for i in range(2):
        live[pending[i], i] = False
    assert buf.added > buf.slots and changed and min(changed) >= 1
    assert buf.rewards[live] == pytest.approx(expected[live], abs=1e-6)
    assert np.abs(buf.rewards[live]).sum() > 0


# -- manual ---------------------------------------------------------------------------------------------


def manual_judge(prompt, cont):
    """Leans ' good' by 2 everywhere (content-free too); +1 good for the goal, +1 bad for the pit."""
    q = prompt.rsplit("According to the manual,", 1)[1]
    return 2.0 + ("goal" in q) if cont == " good" else 0.0 + ("pit" in q)


def test_manual_reward_signs_and_event_rewards():
    llm = FakeLLM(manual_judge)
    eps = [[("moved", "", 0.0), ("fell into the pit", "", -1.0)], [("reached the goal and more", "", 1.0)]]
    env = ManualReward(
        CaptionEnv(eps),
        llm,
        manual="Reach the goal. Avoid the pit.",
        scale=0.5,
        events={
            r"reached the goal": "reaching the goal",
            r"fell into the \w+": "falling into the pit",
            r"nothing": "doing nothing",
        },
    )
    signs = {a.event: a.sign for a in env.answers.values()}
    assert signs == {"reaching the goal": 1, "falling into the pit": -1, "doing nothing": 0}
    assert [a.margin for a in env.answers.values()] == [1.0, -1.0, 0.0]  # after subtracting the lean
    assert len(llm.prompts) == 4  # asked once: the content-free event + one question per event
    assert [r for r, _ in run_episode(env, 10)] == [0.0, -1.5]
    assert [r for r, _ in run_episode(env, 10)] == [1.5]
    assert len(llm.prompts) == 4
    assert "| falling into the pit |" in env.table()
    assert env.llmrl_metrics()["manual/events"] == 2


def test_manual_reward_needs_events_for_unknown_families():
    with pytest.raises(ConfigError, match="events="):
        ManualReward(CaptionEnv([SUCCESS]), FakeLLM(manual_judge), manual="text")


# -- preference -----------------------------------------------------------------------------------------


def count_preference(prompt, cont):
    """Prefers the option with more 'goal' words; plus a strong bias for ' A' that both orders cancel."""
    a = re.search(r"\nA: (.*)\n", prompt).group(1)
    b = re.search(r"\nB: (.*)\n", prompt).group(1)
    margin = a.count("goal") - b.count("goal")
    return (3.0 + margin) if cont == " A" else 0.0


def test_preference_reward_learns_the_llm_ranking_and_resumes(tmp_path):
    texts = ["start", "near", "goal", "goal goal", "goal goal goal", "pit"]
    eps = [_text_episode(*texts)]
    path = tmp_path / "labels.jsonl"
    llm = FakeLLM(count_preference)
    env = PreferenceReward(
        CaptionEnv(eps), llm, goal="goal", warmup_steps=6, n_pairs=10, labels_path=path, epochs=400
    )
    first = run_episode(env, 10)  # the 6th step fits the model
    assert all(info["intrinsic_reward"] == 0.0 for _, info in first)
    assert env.net is not None and env.counters["labelled"] == 10 and len(path.read_text().splitlines()) == 10
    r = env.reward_of(["goal goal goal", "goal goal", "goal", "start"])
    assert r[0] > r[1] > r[2] > r[3]
    second = run_episode(env, 10)
    assert second[-1][1]["intrinsic_reward"] > second[0][1]["intrinsic_reward"]
    # a new run with the same labels file asks the LLM nothing
    llm2 = FakeLLM(count_preference)
    env2 = PreferenceReward(CaptionEnv(eps), llm2, goal="goal", warmup_steps=6, n_pairs=10, labels_path=path)
    run_episode(env2, 10)
    assert env2.net is not None and llm2.prompts == []


# -- the real embedded model (and a tiny random CLIP) on Grid and MiniGrid ----------------------------------

GRID = "llmrl/Grid-v0"
GRID_OBJECTIVE = "The cat reaches the goal cell without falling into a puddle."
DOORKEY = "MiniGrid-DoorKey-5x5-v0"
DOORKEY_OBJECTIVE = "Pick up the key, open the door and reach the green goal square."
DOORKEY_SEED0_SOLUTION = [1, 3, 2, 2, 1, 5, 2, 2, 1, 2, 2]  # found by breadth-first search, checked below


@pytest.fixture(scope="module")
def embedded_cached(embedded):
    """The session's embedded model behind an in-memory cache (these tests ask repeated prompts)."""
    from llmrl.llm.cache import CachedLLM

    return CachedLLM(embedded, cache=":memory:")


def grid_policy(target: str):
    """Scripted Grid policies from the state text: 'goal' goes up then right, 'puddle' right then up."""

    def act(text: str) -> int:
        col, row = map(int, re.match(r"cat at column (\d+), row (\d+)", text).groups())
        if target == "goal":
            return 0 if row < 3 else 1  # UP, RIGHT
        return 1 if col < 4 else 0

    return act


def play(env, policy, seed):
    """One episode with `policy(text) -> action`; returns the infos and rewards of its steps."""
    _, info = env.reset(seed=seed)
    steps = []
    for _ in range(300):
        _, r, term, trunc, info = env.step(policy(info.get("text", "")))
        steps.append((r, info))
        if term or trunc:
            return steps
    raise AssertionError("episode did not end")


def first_seed(policy, caption, *, min_events=1):
    """The first seed whose episode ends with `caption` after at least `min_events` events (slips, bumps)."""
    from llmrl.envs import WithText

    env = WithText(gym.make(GRID))
    for seed in range(200):
        caps = [i["caption"] for _, i in play(env, policy, seed) if i["caption"]]
        if caps[-1] == caption and len(caps) >= min_events:
            return seed
    raise AssertionError(f"no seed gives {caption!r}")


def test_real_judge_says_yes_to_success_and_no_to_failure_on_grid(embedded_cached):
    from llmrl.envs import WithText

    win, lose = grid_policy("goal"), grid_policy("puddle")
    env = JudgeReward(WithText(gym.make(GRID)), embedded_cached, objective=GRID_OBJECTIVE)
    # episodes with slips and bumps on the way: the default judge reads the outcome (the last event)
    success = play(env, win, first_seed(win, "reached the goal", min_events=3))
    failure = play(env, lose, first_seed(lose, "fell into the puddle", min_events=3))
    assert success[-1][1]["intrinsic_reward"] == 1.0 and success[-1][0] == pytest.approx(2.0)
    assert failure[-1][1]["intrinsic_reward"] == 0.0 and failure[-1][0] == pytest.approx(-1.0)
    m = env.llmrl_metrics()
    assert m["judge/judgements"] == 2 and m["judge/yes"] == 1 and m["llm/calls"] >= 4


def test_real_judge_says_yes_to_success_and_no_to_failure_on_doorkey(embedded_cached):
    pytest.importorskip("minigrid")
    import minigrid  # noqa: F401  (registers the ids)

    from llmrl.envs import WithText

    env = JudgeReward(WithText(gym.make(DOORKEY)), embedded_cached, objective=DOORKEY_OBJECTIVE)
    env.reset(seed=0)
    infos = [env.step(a)[-1] for a in DOORKEY_SEED0_SOLUTION]
    assert [i["caption"] for i in infos if i["caption"]] == [
        "picked up the yellow key",
        "opened the yellow door",
        "reached the goal",
    ]
    assert infos[-1]["intrinsic_reward"] == 1.0
    failure = play(env, lambda text: 0, seed=0)  # turns left until time runs out
    assert len(failure) == 250 and failure[-1][1]["intrinsic_reward"] == 0.0


def test_real_manual_reward_signs_for_grid_goal_and_puddle(embedded_cached):
    from llmrl.envs import WithText

    env = ManualReward(WithText(gym.make(GRID)), embedded_cached, scale=0.5)
    signs = {a.event: a.sign for a in env.answers.values()}
    assert signs["reaching the goal"] == 1 and signs["falling into a puddle"] == -1
    lose = grid_policy("puddle")
    steps = play(env, lose, first_seed(lose, "fell into the puddle"))
    assert steps[-1][1]["intrinsic_reward"] == -0.5 and steps[-1][0] == pytest.approx(-1.5)


def test_real_text_goal_reward_relabels_a_grid_episode(embedded_cached):
    from llmrl.envs import WithText

    env = TextGoalReward(
        WithText(gym.make(GRID)),
        embedded_cached,
        goal="the cat is on the goal",
        alpha=0.5,
        baseline="a cat on a grid",
    )
    win = grid_policy("goal")
    steps = play(env, win, first_seed(win, "reached the goal"))
    relabel = steps[-1][1]["reward_relabel"]
    assert relabel.shape == (len(steps),) and np.isfinite(relabel).all()
    assert "reward_relabel" not in steps[0][1] or len(steps) == 1
    assert env.llmrl_metrics()["textgoal/states_scored"] == len(steps)


def test_real_preference_reward_fits_and_rewards(embedded_cached, tmp_path):
    from llmrl.envs import WithText

    env = PreferenceReward(
        WithText(gym.make(GRID)),
        embedded_cached,
        goal=GRID_OBJECTIVE,
        warmup_steps=30,
        n_pairs=4,
        labels_path=tmp_path / "labels.jsonl",
        epochs=100,
    )
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    intr = []
    for _ in range(50):
        _, _, term, trunc, info = env.step(int(rng.integers(4)))
        intr.append(info["intrinsic_reward"])
        if term or trunc:
            env.reset()
    n = len(env._texts)  # distinct texts seen in the warm-up; all pairs when fewer than n_pairs
    assert env.net is not None and len(env.labels) == min(4, n * (n - 1) // 2)
    assert all(0.0 <= p <= 1.0 for p in env.labels.values())
    assert any(v != 0.0 for v in intr[35:])


def _tiny_clip(path):
    pytest.importorskip("transformers")
    from llmrl.testing import tiny_clip

    return tiny_clip(path)


def test_tiny_clip_reward_scores_grid_frames_and_relabels(tmp_path):
    from llmrl.roles.rewards import CLIPEmbedder, CLIPReward

    clip = CLIPEmbedder(_tiny_clip(tmp_path / "clip"))
    goal = "a cat on the goal"
    env = CLIPReward(gym.make(GRID, render_mode="rgb_array"), clip, goal=goal, alpha=0.0)
    obs, _ = env.reset(seed=0)
    frames, infos = [], []
    for _ in range(200):
        obs, _, term, trunc, info = env.step(0 if obs // 4 > 0 else 1)  # up to the top row, then right
        frames.append(env.render())
        infos.append(info)
        if term or trunc:
            break
    relabel = infos[-1]["reward_relabel"]
    # alpha = 0: plain cosine between each frame's and the goal's CLIP embeddings
    x, g = clip.embed_states(frames), clip.embed_texts([goal])[0]
    cos = x @ g / np.linalg.norm(x, axis=1) / np.linalg.norm(g)
    assert relabel == pytest.approx(cos, abs=1e-5)
    assert clip.stats["hits"] > 0  # repeated frames are embedded once
    with pytest.raises(ConfigError, match="render_mode"):
        CLIPReward(gym.make(GRID), clip, goal=goal)


def test_sb3_ppo_trains_on_a_manual_reward_env(embedded_cached):
    sb3 = pytest.importorskip("stable_baselines3")
    import torch

    from llmrl.envs import WithText

    torch.set_num_threads(1)
    env = ManualReward(WithText(gym.make(GRID)), embedded_cached, scale=0.1)
    model = sb3.PPO("MlpPolicy", env, n_steps=256, batch_size=64, n_epochs=4, seed=0, verbose=0)
    model.learn(3072)
    m = env.llmrl_metrics()
    assert m["manual/steps"] >= 3072 and m["manual/events"] > 0
    assert "reward/intrinsic" in m and m["reward/intrinsic"] != 0.0


@pytest.mark.slow
def test_llmrl_dqn_applies_deferred_text_goal_rewards_on_a_vector_env(embedded_cached):
    import llmrl
    from llmrl.envs import WithText

    env = TextGoalReward(
        WithText(llmrl.make(GRID, num_envs=2)), embedded_cached, goal="the cat is at the goal", scale=0.1
    )
    agent = llmrl.DQN(env, seed=0, learning_starts=50)
    agent.learn(200, progress_bar=False)
    stored = agent.buffer.rewards[agent.buffer.valid]
    env_only = np.isin(np.round(stored, 4), [-0.04, 1.0, -1.0])
    assert env.llmrl_metrics()["textgoal/states_scored"] > 0 and (~env_only).mean() > 0.5
