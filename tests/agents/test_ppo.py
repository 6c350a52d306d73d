"""PPO: GAE against hand-computed values, exact resume, save/load, every observation kind, config errors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from llmrl.agents import PPO
from llmrl.agents.ppo import compute_gae, ppo_loss, ppo_loss_and_grads
from llmrl.errors import CheckpointError, ConfigError

FAST = dict(n_steps=32, batch_size=16, n_epochs=2)


def test_gae_matches_hand_computed_values_with_termination_and_truncation():
    g, lam = 0.9, 0.5
    # one env, 4 steps: step 1 terminates, step 2 is the reset step, step 3 is truncated
    rewards = np.array([[1.0], [2.0], [0.0], [3.0]], dtype=np.float32)
    values = np.array([[0.5], [1.0], [4.0], [2.0]], dtype=np.float32)  # values[2] = V(final obs of ep 1)
    term = np.array([[0], [1], [0], [0]], dtype=bool)
    trunc = np.array([[0], [0], [0], [1]], dtype=bool)
    next_value = np.array([7.0], dtype=np.float32)  # V(final obs after the truncated step)
    adv = compute_gae(rewards, values, next_value, term, trunc, g, lam)[:, 0]
    d3 = 3.0 + g * 7.0 - 2.0  # truncated: bootstrap from the final observation
    d1 = 2.0 - 1.0  # terminated: no bootstrap
    d0 = 1.0 + g * 1.0 - 0.5
    assert adv[3] == pytest.approx(d3)
    assert adv[1] == pytest.approx(d1)
    assert adv[0] == pytest.approx(d0 + g * lam * d1)


def test_gae_two_envs_independent():
    rewards = np.ones((3, 2), dtype=np.float32)
    values = np.zeros((3, 2), dtype=np.float32)
    no = np.zeros((3, 2), dtype=bool)
    adv = compute_gae(rewards, values, np.zeros(2, np.float32), no, no, 1.0, 1.0)
    np.testing.assert_allclose(adv, [[3, 3], [2, 2], [1, 1]])


def _stop_after(k, path):
    calls = [0]

    def cb(agent, metrics):
        calls[0] += 1
        if calls[0] == k:
            agent.save(path)
            return False
        return None

    return cb


@pytest.mark.parametrize("vector", [False, True])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, vector):
    def make():
        if vector:
            return gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="vector_entry_point")
        return gym.make("CartPole-v1")

    cfg = dict(FAST, anneal_lr=True)
    full = PPO(make(), seed=3, **cfg).learn(1200, progress_bar=False)
    PPO(make(), seed=3, **cfg).learn(1200, progress_bar=False, callback=_stop_after(5, tmp_path / "ck"))
    resumed = PPO.load(tmp_path / "ck", env=make())
    assert 0 < resumed.num_timesteps < 1200
    resumed.learn(1200, progress_bar=False)
    assert resumed.num_timesteps == full.num_timesteps
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_save_load_gives_identical_predictions(tmp_path):
    agent = PPO(gym.make("CartPole-v1"), seed=0, **FAST).learn(200, progress_bar=False)
    agent.save(tmp_path / "a")
    loaded = PPO.load(tmp_path / "a")  # no env needed for inference
    obs = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    np.testing.assert_array_equal(agent.predict(obs), loaded.predict(obs))
    np.testing.assert_array_equal(agent.action_values(obs[0])[1], loaded.action_values(obs[0])[1])
    assert isinstance(agent.predict(obs[0]), np.integer | int)


def test_missing_or_partial_checkpoint_raises(tmp_path):
    with pytest.raises(CheckpointError, match="not a complete"):
        PPO.load(tmp_path / "nothing")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "state.json").write_text("{}")
    with pytest.raises(CheckpointError, match="tensors.safetensors"):
        PPO.load(tmp_path / "partial")


class _ToyEnv(gym.Env):
    """A tiny env with any observation space; reward 1 for action 0, 10-step episodes."""

    def __init__(self, observation_space, action_space=None):
        self.observation_space = observation_space
        self.action_space = action_space or spaces.Discrete(3)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        reward = (
            float(np.all(np.asarray(action) == 0))
            if isinstance(self.action_space, spaces.Discrete)
            else -float(np.sum(np.square(action)))
        )
        return self.observation_space.sample(), reward, False, self.t >= 10, {}


IMAGE = spaces.Box(0, 255, (36, 36, 3), np.uint8)  # HWC
IMAGE_CHW = spaces.Box(0, 255, (2, 36, 36), np.uint8)


@pytest.mark.parametrize(
    "space",
    [
        spaces.Box(-1, 1, (5,), np.float32),
        IMAGE,
        IMAGE_CHW,
        spaces.Discrete(4),
        spaces.Dict({"image": IMAGE, "llm": spaces.Box(-1, 1, (8,), np.float32)}),
    ],
    ids=["box", "image-hwc", "image-chw", "discrete", "dict-image-llm"],
)
def test_each_observation_kind_trains(space):
    agent = PPO(_ToyEnv(space), seed=0, n_steps=16, batch_size=8, n_epochs=1).learn(32, progress_bar=False)
    assert agent.num_timesteps >= 32
    label, values = agent.action_values(space.sample())
    assert label == "p" and values.shape == (3,) and values.sum() == pytest.approx(1.0, abs=1e-5)


def test_continuous_actions_learn_towards_zero():
    env = _ToyEnv(spaces.Box(-1, 1, (2,), np.float32), spaces.Box(-2, 2, (2,), np.float32))
    agent = PPO(env, seed=0, n_steps=64, batch_size=32, n_epochs=4, learning_rate=3e-3)
    agent.learn(64 * 20, progress_bar=False)
    a = agent.predict(np.zeros(2, np.float32))
    assert a.shape == (2,)
    assert float(agent.model.log_std.detach().mean()) < 0  # the policy narrowed


def test_reward_relabel_is_added_to_the_episode_in_the_rollout():
    class Judge(gym.Wrapper):
        def step(self, action):
            obs, r, term, trunc, info = self.env.step(action)
            if term or trunc:
                info["reward_relabel"] = np.full(self.env.unwrapped.t, 100.0, dtype=np.float32)
            return obs, r, term, trunc, info

    agent = PPO(
        Judge(_ToyEnv(spaces.Box(-1, 1, (2,), np.float32))), seed=0, n_steps=25, batch_size=25, n_epochs=1
    )
    captured = {}
    original = agent._update

    def spy(obs, actions, logp, values, adv, returns, valid):
        captured.setdefault("returns", returns.numpy().copy())
        captured.setdefault("valid", valid.copy())
        return original(obs, actions, logp, values, adv, returns, valid)

    agent._update = spy
    agent.learn(25, progress_bar=False)
    # first rollout of 25: steps 0-9 episode 1, 10 reset, 11-20 episode 2, 21 reset, 22-24 unfinished episode 3
    valid = captured["valid"][:, 0]
    assert valid[:10].all() and not valid[10] and valid[11:21].all() and not valid[21]
    # episodes that ended inside the rollout got +100 per step: their returns are far above the last one's
    assert captured["returns"][:10, 0].min() > 90
    assert captured["returns"][11:21, 0].min() > 90
    assert captured["returns"][22:, 0].max() < 50


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(n_steps=0), "n_steps=0"),
        (dict(gamma=1.5), r"gamma=1.5 is invalid: use a number in \[0, 1\]"),
        (dict(learning_rate=-1.0), "learning_rate=-1.0"),
        (dict(activation="sigmoid"), "activation='sigmoid'"),
        (dict(net_arch=(64, 0)), "net_arch"),
        (dict(lr=1e-3), "did you mean 'learning_rate'"),
    ],
)
def test_bad_configs_raise_clear_errors(bad, match):
    with pytest.raises(ConfigError, match=f"(?i){match}"):
        PPO(gym.make("CartPole-v1"), **bad)


@pytest.mark.parametrize("discrete", [True, False])
@pytest.mark.parametrize("clip_range_vf", [None, 0.3])
@pytest.mark.parametrize("ent_coef", [0.0, 0.05])
def test_hand_written_loss_gradients_match_autograd(discrete, clip_range_vf, ent_coef):
    action_space = spaces.Discrete(4) if discrete else spaces.Box(-1, 1, (3,), np.float32)
    env = _ToyEnv(spaces.Box(-1, 1, (5,), np.float32), action_space)
    agent = PPO(env, seed=0, clip_range_vf=clip_range_vf, ent_coef=ent_coef, log_std_init=-0.3)
    model, cfg, B = agent.model, agent.config, 32
    g = torch.Generator().manual_seed(1)
    out = torch.randn(B, model.n_out, generator=g)
    value, old_values, returns, adv = (torch.randn(B, generator=g) for _ in range(4))
    actions = torch.randint(0, 4, (B,), generator=g) if discrete else torch.randn(B, 3, generator=g)
    # old log-probs near the new ones, so some ratios fall inside the clip range and some outside
    old_logp = model.log_prob(out, actions).detach() + 0.3 * torch.randn(B, generator=g)

    step = ppo_loss_and_grads(model, out, value, actions, old_logp, old_values, adv, returns, cfg)
    out_, value_ = out.clone().requires_grad_(), value.clone().requires_grad_()
    params = [out_, value_] + ([] if discrete else [model.log_std])
    loss = ppo_loss(model, out_, value_, actions, old_logp, old_values, adv, returns, cfg).loss
    grads = torch.autograd.grad(loss, params)
    torch.testing.assert_close(step.grad_out, grads[0])
    torch.testing.assert_close(step.grad_value, grads[1])
    if not discrete:
        torch.testing.assert_close(step.grad_log_std, grads[2])
    assert step.pg_loss + cfg.vf_coef * step.v_loss == pytest.approx(
        float(loss.detach()) + ent_coef * float(model.entropy(out).mean().detach()), abs=1e-5
    )


@pytest.mark.parametrize("discrete", [True, False])
def test_a_whole_hand_written_update_equals_the_autograd_update(discrete):
    """The stacked MLP's fast path (hand-written loss gradient and backward) against the reference path
    (autograd through ppo_loss) on the same rollouts: the same parameters after several minibatches."""
    action_space = spaces.Discrete(3) if discrete else spaces.Box(-1, 1, (2,), np.float32)

    class SameObservations(_ToyEnv):  # both agents must see the same rollout
        def reset(self, *, seed=None, options=None):
            return super().reset(seed=0 if seed is None else seed)

    agents = []
    for hand in (True, False):
        env = SameObservations(spaces.Box(-1, 1, (5,), np.float32), action_space)
        agent = PPO(env, seed=0, n_steps=64, batch_size=16, n_epochs=2, ent_coef=0.01, clip_range_vf=0.2,
                    log_std_init=-0.3)  # fmt: skip
        assert agent.hand_written_loss  # a vector observation gets the stacked MLP
        agent.hand_written_loss = hand
        agent.learn(64, progress_bar=False)
        agents.append(agent)
    fast, ref = agents
    assert fast.n_updates == ref.n_updates >= 8
    for p, q in zip(fast.model.parameters(), ref.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("discrete", [True, False])
def test_hand_written_distribution_matches_torch_distributions(discrete):
    action_space = spaces.Discrete(4) if discrete else spaces.Box(-1, 1, (3,), np.float32)
    agent = PPO(_ToyEnv(spaces.Box(-1, 1, (5,), np.float32), action_space), seed=0, log_std_init=-0.3)
    model, g = agent.model, torch.Generator().manual_seed(2)
    out = torch.randn(64, model.n_out, generator=g)
    if discrete:
        dist: torch.distributions.Distribution = torch.distributions.Categorical(logits=out)
        actions = torch.randint(0, 4, (64,), generator=g)
    else:
        std = model.log_std.exp().expand_as(out)
        dist = torch.distributions.Independent(torch.distributions.Normal(out, std), 1)
        actions = torch.randn(64, 3, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(out, actions), dist.log_prob(actions))
        torch.testing.assert_close(model.entropy(out), dist.entropy())
        # sampling: the empirical distribution of many draws from one state matches the policy's
        torch.manual_seed(3)
        one = out[:1].expand(20_000, -1)
        draws = model.sample(one, deterministic=False)
        if discrete:
            freq = torch.bincount(draws, minlength=4).float() / len(draws)
            torch.testing.assert_close(freq, torch.softmax(out[0], -1), atol=0.015, rtol=0)
        else:
            torch.testing.assert_close(draws.mean(0), out[0], atol=0.02, rtol=0)
            torch.testing.assert_close(draws.std(0), model.log_std.exp(), atol=0.02, rtol=0)
        assert torch.equal(model.sample(out, deterministic=True), out.argmax(-1) if discrete else out)
