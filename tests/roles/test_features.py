"""LLMFeatures and Advisor: the logic on a scripted fake model, then the real embedded model."""

from __future__ import annotations

import hashlib

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from llmrl.envs import TextSource
from llmrl.errors import ConfigError
from llmrl.llm.base import CallStats, UnsupportedOperationError
from llmrl.roles.advice import Advisor
from llmrl.roles.features import DEFAULT_TEMPLATE, LLMFeatures


class FakeLLM:
    """Deterministic features from a hash of the input; records every batched call."""

    name = "fake:hash"

    def __init__(self, dim: int = 8, images: bool = False):
        self.dim = dim
        self.capabilities = frozenset({"features", "generate"} | ({"images"} if images else set()))
        self.stats = CallStats()
        self.batches: list[list[str]] = []
        self.image_batches: list[list] = []
        self.generated: list[str] = []

    def vector(self, prompt: str, image=None) -> np.ndarray:
        h = hashlib.md5(prompt.encode() + (image.tobytes() if image is not None else b"")).digest()
        return np.random.default_rng(int.from_bytes(h[:8], "little")).normal(size=self.dim).astype(np.float32)

    def features(self, prompts, *, images=None, kind="hidden", tokens=None):
        self.batches.append(list(prompts))
        self.image_batches.append(list(images) if images is not None else [])
        self.stats.calls += len(prompts)
        self.stats.misses += len(prompts)
        if kind == "logits":
            return np.stack([self.vector(p)[: len(tokens)] for p in prompts])
        imgs = images if images is not None else [None] * len(prompts)
        return np.stack([self.vector(p, im) for p, im in zip(prompts, imgs)])

    def generate(self, prompts, *, max_tokens=32, temperature=0.0, stop=None, images=None):
        self.generated.extend(prompts)
        return [f"  advice\nfor {len(p)}  " for p in prompts]


class ChainEnv(TextSource, gym.Env):
    """Positions 0..4; action 1 moves right, 0 stays; info['text'] names the position."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, image: bool = False, render_mode: str | None = "rgb_array"):
        self.image, self.render_mode = image, render_mode
        self.observation_space = spaces.Box(0, 255, (6, 6, 3), np.uint8) if image else spaces.Discrete(5)
        self.action_space = spaces.Discrete(2)
        self.pos = 0

    def _obs(self):
        return self.render() if self.image else self.pos

    def render(self):
        frame = np.zeros((6, 6, 3), np.uint8)
        frame[0, self.pos] = 255
        return frame

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = 0
        return self._obs(), {"text": f"at {self.pos}"}

    def step(self, action):
        self.pos = min(4, self.pos + int(action))
        done = self.pos == 4
        return self._obs(), float(done), done, False, {"text": f"at {self.pos}"}


def expected(llm: FakeLLM, text: str, prompt: str = "Where?") -> np.ndarray:
    v = llm.vector(DEFAULT_TEMPLATE.format(state=text, prompt=prompt))
    return np.clip((v - v.mean()) / (v.std() + 1e-6), -5, 5)


def test_space_and_values_single_env():
    llm = FakeLLM()
    env = LLMFeatures(ChainEnv(), llm, prompt="Where?")
    assert env.observation_space == spaces.Dict(
        {"obs": spaces.Discrete(5), "llm": spaces.Box(-np.inf, np.inf, (8,), np.float32)}
    )
    obs, info = env.reset(seed=0)
    assert obs["obs"] == 0 and obs["llm"].dtype == np.float32
    np.testing.assert_allclose(obs["llm"], expected(llm, "at 0"), rtol=1e-5)
    assert info["text"] == "at 0"
    obs, r, term, trunc, info = env.step(1)
    assert obs["obs"] == 1 and isinstance(r, float) and not term
    np.testing.assert_allclose(obs["llm"], expected(llm, "at 1"), rtol=1e-5)
    assert env.observation_space.contains(obs)


def test_memo_and_on_change_avoid_repeated_passes():
    llm = FakeLLM()
    env = LLMFeatures(ChainEnv(), llm, prompt="Where?")
    probe_calls = len(llm.batches)
    for _ in range(3):  # three episodes over the same 5 states
        env.reset()
        for a in (0, 1, 1, 0, 1, 1):
            env.step(a)
    # 5 distinct texts -> 5 model inputs, whatever the number of steps
    assert sum(len(b) for b in llm.batches[probe_calls:]) == 5
    m = env.llmrl_metrics()
    assert m["llm/steps"] == 21 and m["llm/calls"] == 6  # 5 states + 1 probe pass at construction
    assert m["llm/reused"] == 3 * 2  # the two "stay" steps (text unchanged) of each episode
    assert m["llm/memo_hits"] == 21 - 6 - 5
    assert m["llm/hit_rate"] == pytest.approx(1 - 6 / 21)


def test_vector_env_batches_one_call_per_step():
    llm = FakeLLM()
    venv = gym.vector.SyncVectorEnv([ChainEnv for _ in range(3)])
    env = LLMFeatures(venv, llm, prompt="Where?")
    assert isinstance(env, gym.vector.VectorWrapper)
    assert env.single_observation_space["llm"].shape == (8,)
    obs, _ = env.reset(seed=0)
    assert obs["llm"].shape == (3, 8) and obs["obs"].shape == (3,)
    n0 = len(llm.batches)
    obs, *_ = env.step(np.array([1, 0, 1]))
    # envs 0 and 2 moved to "at 1" (one input, deduplicated), env 1 stayed at "at 0": one call, one input
    assert len(llm.batches) == n0 + 1 and llm.batches[-1] == [
        DEFAULT_TEMPLATE.format(state="at 1", prompt="Where?")
    ]
    np.testing.assert_allclose(obs["llm"][0], expected(llm, "at 1"), rtol=1e-5)
    np.testing.assert_allclose(obs["llm"][1], expected(llm, "at 0"), rtol=1e-5)
    np.testing.assert_array_equal(obs["llm"][0], obs["llm"][2])
    for _ in range(4):  # episode ends -> autoreset gives "at 0" again, from the memo
        obs, rew, term, trunc, info = env.step(np.array([1, 1, 1]))
    np.testing.assert_allclose(obs["llm"][0], expected(llm, "at 0"), rtol=1e-5)
    assert env.observation_space.contains(obs)


def test_every_k_steps():
    llm = FakeLLM()
    env = LLMFeatures(ChainEnv(), llm, prompt="Where?", every=2)
    env.reset()
    feats = [env.step(1)[0]["llm"] for _ in range(4)]  # texts at 1, 2, 3, 4
    np.testing.assert_allclose(feats[0], expected(llm, "at 0"), rtol=1e-5)  # kept from reset
    np.testing.assert_allclose(feats[1], expected(llm, "at 2"), rtol=1e-5)
    np.testing.assert_allclose(feats[2], expected(llm, "at 2"), rtol=1e-5)
    np.testing.assert_allclose(feats[3], expected(llm, "at 4"), rtol=1e-5)


def test_logits_kind_and_dict_observation():
    llm = FakeLLM()
    inner = gym.wrappers.TransformObservation(
        ChainEnv(), lambda o: {"pos": o}, spaces.Dict({"pos": spaces.Discrete(5)})
    )
    env = LLMFeatures(inner, llm, prompt="Where?", kind="logits", tokens=[" left", " right"], normalize=False)
    assert set(env.observation_space.spaces) == {"pos", "llm"}
    obs, _ = env.reset()
    assert obs["llm"].shape == (2,)
    np.testing.assert_allclose(
        obs["llm"], llm.vector(DEFAULT_TEMPLATE.format(state="at 0", prompt="Where?"))[:2]
    )


def test_image_source_hashes_frames():
    llm = FakeLLM(images=True)
    env = LLMFeatures(ChainEnv(image=True), llm, prompt="Where?", source="image")
    obs, _ = env.reset()
    assert obs["obs"].shape == (6, 6, 3) and obs["llm"].shape == (8,)
    for _ in range(6):
        env.step(1)
    env.reset()
    env.step(1)
    assert [len(b) for b in llm.image_batches[1:]] == [1] * 5  # five distinct frames, each computed once
    assert all(b == ["Where?"] for b in llm.batches)
    # a non-image observation takes the frame from env.render()
    env2 = LLMFeatures(ChainEnv(), FakeLLM(images=True), prompt="Where?", source="image")
    o, _ = env2.reset()
    v = env2.llm.vector("Where?", ChainEnv().render())
    np.testing.assert_allclose(o["llm"], np.clip((v - v.mean()) / (v.std() + 1e-6), -5, 5), rtol=1e-5)


def test_clear_errors():
    with pytest.raises(ConfigError, match="every=0"):
        LLMFeatures(ChainEnv(), FakeLLM(), every=0)
    with pytest.raises(ConfigError, match="kind='probs'"):
        LLMFeatures(ChainEnv(), FakeLLM(), kind="probs")
    with pytest.raises(UnsupportedOperationError, match="image-text model"):
        LLMFeatures(ChainEnv(), FakeLLM(), source="image")

    class NoText(ChainEnv):  # claims to provide text (so nothing wraps it) but does not
        def reset(self, *, seed=None, options=None):
            return super().reset(seed=seed)[0], {}

    env = LLMFeatures(NoText(), FakeLLM())
    with pytest.raises(ConfigError, match="info\\['text'\\]"):
        env.reset()


def test_advisor_memo_language_and_panel_text():
    llm = FakeLLM()
    advise = Advisor(llm, "Where?", language="Japanese")
    a = advise(None, {"text": "at 0"})
    assert (
        a == f"advice for {len(DEFAULT_TEMPLATE.format(state='at 0', prompt='Where? Answer in Japanese.'))}"
    )
    assert advise(None, {"text": "at 0"}) == a and len(llm.generated) == 1
    assert llm.generated[0] == "Question: Where? Answer in Japanese.\nGame state: at 0\nAnswer:"
    with pytest.raises(ConfigError, match="WithText"):
        advise(None, {})


# -- the real embedded model (Gemma 3 270M on llama.cpp) ---------------------------------------------

GRID_PROMPT = "Please tell me in 200 characters where the cat should move next."


def test_embedded_features_on_grid_text(embedded):
    from llmrl.envs import make

    env = LLMFeatures(make("llmrl/Grid-v0"), embedded, prompt=GRID_PROMPT)  # WithText added for us
    assert env.observation_space["llm"].shape == (640,)  # Gemma 3 270M width
    obs, info = env.reset(seed=0)
    assert info["text"].startswith("cat at column 1, row 1")
    feat0 = obs["llm"]
    # standardised, then the few outlier dimensions clipped to ±5: mean near 0, std just under 1
    assert np.isfinite(feat0).all() and abs(feat0.mean()) < 0.05 and 0.7 < feat0.std() <= 1.0
    assert np.abs(feat0).max() == pytest.approx(5.0)
    again = embedded.features([DEFAULT_TEMPLATE.format(state=info["text"], prompt=GRID_PROMPT)])[0]
    np.testing.assert_allclose(
        feat0, np.clip((again - again.mean()) / (again.std() + 1e-6), -5, 5), atol=1e-4
    )
    texts, feats = {info["text"]}, {info["text"]: feat0}
    for a in [1, 1, 0, 0, 1, 1, 2, 3, 3, 0]:
        obs, _, term, trunc, info = env.step(a)
        texts.add(info["text"])
        feats[info["text"]] = obs["llm"]
        if term or trunc:
            obs, info = env.reset()
    # one forward pass per distinct state (plus the probe at construction), and states are told apart
    assert env.llmrl_metrics()["llm/calls"] == len(texts) + 1
    vs = list(feats.values())
    assert len(vs) >= 2 and not np.allclose(vs[0], vs[1], atol=1e-2)


def test_dqn_and_ppo_train_on_embedded_features_vector_env(embedded):
    from llmrl.agents.dqn import DQN
    from llmrl.agents.ppo import PPO
    from llmrl.envs import make

    env = LLMFeatures(
        make("llmrl/Grid-v0", num_envs=2),
        embedded,
        prompt=GRID_PROMPT,
        kind="logits",
        tokens=[" up", " down", " left", " right"],
    )
    assert env.observation_space["llm"].shape == (2, 4)
    dqn = DQN(env, seed=0, learning_starts=50)
    dqn.learn(200, progress_bar=False)
    ppo = PPO(env, seed=0, n_steps=32)
    ppo.learn(128, progress_bar=False)
    obs, _ = env.reset(seed=1)
    label, q = dqn.action_values({k: v[0] for k, v in obs.items()})
    assert label == "Q" and q.shape == (4,) and np.isfinite(q).all()
    assert dqn.predict(obs).shape == (2,) and ppo.predict(obs).shape == (2,)
    assert env.llmrl_metrics()["llm/hit_rate"] > 0.9  # 11 states: nearly every step is a memo hit


def _replay_length(agent, env, seed: int, max_steps: int) -> int:
    """Decisions save_gif makes: the greedy episode from reset(seed), cut at max_steps."""
    obs, _ = env.reset(seed=seed)
    for step in range(max_steps):
        obs, _, term, trunc, _ = env.step(agent.predict(obs))
        if term or trunc:
            return step + 1
    return max_steps


@pytest.mark.parametrize("model", ["fake", pytest.param("embedded", marks=pytest.mark.slow)])
def test_gif_shows_frame_q_values_and_llm_advice(tmp_path, model, request):
    import io

    from PIL import Image

    from llmrl.agents.dqn import DQN
    from llmrl.envs import make
    from llmrl.render import PANEL_WIDTH, action_names, compose_frame, render_terminal, save_gif

    llm = FakeLLM(dim=16) if model == "fake" else request.getfixturevalue("embedded")
    env = LLMFeatures(make("llmrl/Grid-v0", render_mode="rgb_array"), llm, prompt=GRID_PROMPT)
    agent = DQN(env, seed=0, learning_starts=50)
    agent.learn(150, progress_bar=False)
    advise = Advisor(llm, GRID_PROMPT, max_tokens=10)
    path = save_gif(agent, env, tmp_path / "grid.gif", max_steps=3, annotate=advise, seed=0)
    gif = Image.open(path)
    assert gif.n_frames == _replay_length(agent, env, 0, 3) + 1  # one frame per decision + the last
    h, w = env.render().shape[:2]
    scale = -(-256 // h)
    assert gif.size == (w * scale + PANEL_WIDTH, h * scale)
    # the first frame is the env frame + a panel with the Q-values and the model's advice for the state
    obs, info = env.reset(seed=0)
    text = advise(obs, info)
    assert len(text) > 0 and len(advise._memo) >= 1
    label, q = agent.action_values(obs)
    args = (env.render(), label, q, action_names(env), int(agent.predict(obs)))
    want = compose_frame(*args, text, "step 0  return 0.0")
    without_text = compose_frame(*args, "", "step 0  return 0.0")
    gif.seek(0)
    got = np.asarray(gif.convert("RGB")).astype(int)
    assert np.abs(got - want).mean() < 2.0  # GIF palette rounding only
    panel = (slice(None), slice(w * scale, None))
    assert np.abs(got[panel] - without_text[panel]).mean() > 4 * np.abs(got[panel] - want[panel]).mean()
    # the terminal render prints the same: Q-values per action and the advice
    out = io.StringIO()
    render_terminal(agent, env, max_steps=2, annotate=advise, seed=0, file=out)
    chosen = int(agent.predict(obs))
    assert f"*{action_names(env)[chosen]}={q[chosen]:.3f}" in out.getvalue().splitlines()[0]
    assert text in out.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["breakout", "montezuma"])
def test_seed_scenario_atari_trains_and_writes_gif(tmp_path, embedded, name):
    from PIL import Image

    from llmrl.experiments.scenarios import seed_scenario

    res = seed_scenario(
        name, llm=embedded, total_timesteps=64, run_dir=tmp_path, gif_steps=2, advice_tokens=4,
        progress_bar=False, dqn={"learning_starts": 32, "buffer_size": 1000},
    )  # fmt: skip
    assert res.env.observation_space["obs"].shape == (4, 84, 84)  # the Atari stack beside the LLM vector
    assert res.agent.num_timesteps >= 64
    gif = Image.open(res.gif)
    assert gif.n_frames in (2, 3) and gif.size[0] > 160 + 200  # frame + panel


@pytest.mark.slow
def test_seed_scenario_grid_trains_and_writes_gif(tmp_path, embedded):
    from PIL import Image

    from llmrl.experiments.scenarios import seed_scenario

    res = seed_scenario(
        "grid", llm=embedded, total_timesteps=200, run_dir=tmp_path, gif_steps=3, advice_tokens=8,
        progress_bar=False, dqn={"learning_starts": 50},
    )  # fmt: skip
    space = res.env.observation_space
    assert space["obs"].shape == (84, 84, 1) and space["llm"].shape == (640,)  # image + LLM vector
    assert res.agent.num_timesteps >= 200 and (tmp_path / "episodes.csv").exists()
    assert Image.open(res.gif).n_frames >= 2
    assert res.metrics["llm/hit_rate"] > 0.5


# -- the image path: a tiny random-weight LLaVA-NeXT built here -------------------------------------


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    """A LLaVA-NeXT-class model (CLIP vision tower + Llama text model) with random weights, ~100 kB."""
    pytest.importorskip("transformers")
    from llmrl.testing import tiny_llava_next

    return tiny_llava_next(tmp_path_factory.mktemp("tiny_llava"))


def test_image_path_end_to_end_with_tiny_llava_next(tmp_path, tiny_llava):
    from PIL import Image

    import llmrl.llm
    from llmrl.agents.dqn import DQN
    from llmrl.envs import make
    from llmrl.render import save_gif

    vlm = llmrl.llm.load(f"hf:{tiny_llava}", require=("features", "images"), device="cpu")
    env = LLMFeatures(make("llmrl/Grid-v0", render_mode="rgb_array"), vlm, prompt=GRID_PROMPT, source="image")
    assert env.observation_space["llm"].shape == (32,)  # the tiny model's width
    obs, _ = env.reset(seed=0)
    frame = env.render()
    direct = vlm.features([GRID_PROMPT], images=[frame])[0]
    np.testing.assert_allclose(
        obs["llm"], np.clip((direct - direct.mean()) / (direct.std() + 1e-6), -5, 5), atol=1e-4
    )
    agent = DQN(env, seed=0, learning_starts=30)
    agent.learn(100, progress_bar=False)
    m = env.llmrl_metrics()
    assert m["llm/calls"] <= 12  # one pass per distinct frame (11 cells) + the probe
    advise = Advisor(vlm, GRID_PROMPT, env=env, source="image", max_tokens=5)
    gif = Image.open(save_gif(agent, env, tmp_path / "vlm.gif", max_steps=3, annotate=advise, seed=0))
    assert gif.n_frames == _replay_length(agent, env, 0, 3) + 1
    assert len(advise._memo) >= 1 and all(isinstance(v, str) for v in advise._memo.values())
