"""DQN: the Double-DQN target by hand, save/load, exact resume, smoke runs per observation kind, errors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from torch import nn

from llmrl.agents.dqn import DQN, QNetwork
from llmrl.errors import ConfigError

torch.set_num_threads(1)
SMALL = dict(learning_starts=50, batch_size=16, buffer_size=500, train_freq=2, target_update_interval=20,
             log_interval=50, net_arch=(16,))  # fmt: skip


class ToyEnv(gym.Env):
    """Box(2) or Dict(image (1, 36, 36) uint8 + vector) observations; reward 1 for action == parity of
    the step; episodes of 5 steps, each ending terminated; optionally a deferred reward at the end."""

    def __init__(self, obs_kind: str = "box", relabel: bool = False):
        self.obs_kind, self.relabel = obs_kind, relabel
        vec = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        if obs_kind == "dict":
            img = gym.spaces.Box(0, 255, (1, 36, 36), np.uint8)
            self.observation_space = gym.spaces.Dict({"image": img, "llm": vec})
        elif obs_kind == "discrete":
            self.observation_space = gym.spaces.Discrete(6)
        else:
            self.observation_space = vec
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def _obs(self):
        v = np.array([self.t % 2, self.t / 5], np.float32)
        if self.obs_kind == "dict":
            return {"image": np.full((1, 36, 36), 40 * self.t, np.uint8), "llm": v}
        return self.t if self.obs_kind == "discrete" else v

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        reward = float(int(action) == self.t % 2)
        self.t += 1
        info = {"reward_relabel": np.full(5, 10.0, np.float32)} if self.relabel and self.t == 5 else {}
        return self._obs(), reward, self.t == 5, False, info


def _vec(n=2, **kw):
    return SyncVectorEnv([lambda: ToyEnv(**kw) for _ in range(n)], autoreset_mode=AutoresetMode.NEXT_STEP)


def _linear(w: list[list[float]]) -> nn.Linear:
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(w))
    return layer


@pytest.mark.parametrize("double_q", [True, False])
def test_double_dqn_target_and_huber_loss_hand_computed(double_q):
    agent = DQN(ToyEnv(), seed=0, policy=_linear([[1.0, 0.0], [0.0, 1.0]]), double_q=double_q, gamma=0.5)
    with torch.no_grad():
        agent.q_target.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
    next_obs = torch.tensor([[1.0, 2.0], [3.0, 1.0], [1.0, 2.0]])
    # online Q(s') = s' -> argmax [1, 0, 1]; target Q(s') = [2 s'_0, 3 s'_1] = [[2, 6], [6, 3], [2, 6]]
    returns, discounts = torch.tensor([1.0, 0.5, 2.0]), torch.tensor([0.5, 0.25, 0.0])
    y = agent._td_target(next_obs, returns, discounts, agent.q_target(next_obs))
    assert y.tolist() == [1.0 + 0.5 * 6, 0.5 + 0.25 * 6, 2.0]
    # Online and target nets disagree: online Q(s') = [1.4, 1.0] picks action 0, which the target values
    # at 2.8, while the target's own max is 3.0 (action 1).
    s = torch.tensor([[1.4, 1.0]])
    y = agent._td_target(s, torch.zeros(1), torch.ones(1), agent.q_target(s))
    assert y.item() == pytest.approx(2.8 if double_q else 3.0)

    # Huber loss of one update: q(s, a) vs y.
    data = {
        "obs": torch.tensor([[1.0, 0.0], [0.0, 4.0]]),
        "next_obs": torch.tensor([[1.4, 1.0], [1.4, 1.0]]),
        "actions": torch.tensor([0, 1]),
        "returns": torch.tensor([0.0, 1.0]),
        "discounts": torch.tensor([1.0, 0.0]),
        "weights": torch.ones(2),
    }
    q, y = agent._update(data, slice(0, 2), agent.q_target(data["next_obs"]))
    loss, _, td = agent._huber(q, y, data["actions"], data["weights"])
    y0 = 2.8 if double_q else 3.0
    d = np.array([1.0 - y0, 4.0 - 1.0])  # q - y
    huber = np.where(np.abs(d) <= 1, 0.5 * d**2, np.abs(d) - 0.5)
    assert loss.item() == pytest.approx(huber.mean(), rel=1e-6)
    np.testing.assert_allclose(td.numpy(), np.abs(d), rtol=1e-6)


def test_save_load_identical_predictions(tmp_path):
    agent = DQN(gym.make("CartPole-v1"), seed=1, **SMALL)
    agent.learn(200, progress_bar=False)
    agent.save(tmp_path / "ckpt")
    loaded = DQN.load(tmp_path / "ckpt")
    obs = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    np.testing.assert_array_equal(agent.predict(obs), loaded.predict(obs))
    label, q = loaded.action_values(obs[0])
    assert label == "Q" and q.shape == (2,)
    np.testing.assert_array_equal(q, agent.action_values(obs[0])[1])


@pytest.mark.parametrize("extra", [{}, {"prioritized": True, "n_step": 3, "dueling": True}])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, extra):
    total = 400
    full = DQN(gym.make("CartPole-v1"), seed=3, **SMALL, **extra)
    full.learn(total, progress_bar=False)

    part = DQN(gym.make("CartPole-v1"), seed=3, **SMALL, **extra)
    part.learn(total, progress_bar=False, callback=lambda a, m: a.num_timesteps < 200)  # stops at 200
    assert part.num_timesteps == 200
    part.save(tmp_path / "ckpt")
    del part
    resumed = DQN.load(tmp_path / "ckpt", env=gym.make("CartPole-v1"))
    resumed.learn(total, progress_bar=False)

    assert resumed.num_timesteps == full.num_timesteps == total
    assert resumed.n_updates == full.n_updates > 0
    for a, b in zip(full.q_net.state_dict().values(), resumed.q_net.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.q_target.state_dict().values(), resumed.q_target.state_dict().values()):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(full.buffer.rewards, resumed.buffer.rewards)
    np.testing.assert_array_equal(full.buffer.obs[""], resumed.buffer.obs[""])


@pytest.mark.parametrize(
    "kind, extra",
    [
        ("box", {"n_step": 3, "prioritized": True}),
        ("discrete", {"dueling": True}),
        ("dict", {"net_arch": (32,), "optimize_memory": False}),
    ],
)
def test_smoke_train_each_observation_kind(kind, extra):
    env = _vec(2, obs_kind=kind)
    agent = DQN(env, seed=0, **{**SMALL, **extra})
    agent.learn(300, progress_bar=False)
    assert agent.n_updates > 0
    obs, _ = env.reset(seed=1)
    q = agent.action_values(_first(obs))[1]
    assert q.shape == (2,) and np.isfinite(q).all()
    assert agent.predict(obs).shape == (2,)
    if kind == "dict":
        assert agent.buffer.obs["image"].dtype == np.uint8


def _first(obs):
    return {k: v[0] for k, v in obs.items()} if isinstance(obs, dict) else obs[0]


def test_toy_task_is_learned():
    # reward 1 for action == step parity: greedy policy must reach return 5 of 5.
    agent = DQN(_vec(2), seed=0, learning_starts=100, batch_size=32, buffer_size=2000, train_freq=1,
                target_update_interval=50, exploration_fraction=0.3, net_arch=(32,), log_interval=500)  # fmt: skip
    agent.learn(2500, progress_bar=False)
    env = ToyEnv()
    obs, _ = env.reset()
    total = 0.0
    for _ in range(5):
        obs, r, *_ = env.step(agent.predict(obs))
        total += r
    assert total == 5.0


def test_relabel_from_info_reaches_the_buffer():
    agent = DQN(_vec(2, relabel=True), seed=0, **{**SMALL, "learning_starts": 10_000})
    agent.learn(20, progress_bar=False)
    # 20 env steps = 2 envs x 2 episodes (vector steps 0-4, reset step 5, 6-10); every stored transition
    # got +10 from the deferred reward of its episode, the reset step none.
    buf = agent.buffer
    assert buf.added == 11
    ep = np.r_[0:5, 6:11]
    assert buf.rewards[ep].min() >= 10.0 and buf.rewards[ep].max() <= 11.0
    assert buf.rewards[5].tolist() == [0.0, 0.0]


def test_bad_config_raises_clear_errors():
    env = gym.make("CartPole-v1")
    with pytest.raises(ConfigError, match=r"batch_size=0 .*integer >= 1"):
        DQN(env, batch_size=0)
    with pytest.raises(ConfigError, match=r"tau=1.5"):
        DQN(env, tau=1.5)
    with pytest.raises(ConfigError, match="Did you mean 'learning_rate'"):
        DQN(env, learning_rat=1e-3)
    with pytest.raises(ConfigError, match="Discrete action space"):
        DQN(gym.make("Pendulum-v1"))


@pytest.mark.parametrize("prioritized", [False, True])
def test_update_gradient_equals_autograd_huber(prioritized):
    # The hand-written dL/dQ must give autograd's gradient of mean(w * smooth_l1(q_taken, y)).
    torch.manual_seed(0)
    agent = DQN(gym.make("CartPole-v1"), seed=0, net_arch=(8,), max_grad_norm=None, prioritized=prioritized)
    data = {
        "obs": torch.randn(16, 4) * 3,
        "next_obs": torch.randn(16, 4),
        "actions": torch.randint(0, 2, (16,)),
        "returns": torch.randn(16) * 3,
        "discounts": torch.rand(16),
        "weights": torch.rand(16),
    }
    next_q_target = agent.q_target(data["next_obs"]).detach()
    q = agent.q_net(data["obs"]).gather(1, data["actions"][:, None]).squeeze(1)
    y = agent._td_target(data["next_obs"], data["returns"], data["discounts"], next_q_target)
    per_sample = nn.functional.smooth_l1_loss(q, y, reduction="none")
    loss = (data["weights"] * per_sample).mean() if prioritized else per_sample.mean()
    expected = torch.autograd.grad(loss, list(agent.q_net.parameters()))
    q_got, y_got = agent._update(data, slice(0, 16), next_q_target)
    got_loss, _, _ = agent._huber(q_got, y_got, data["actions"], data["weights"])
    assert got_loss.item() == pytest.approx(loss.item(), rel=1e-6)
    # The default Q-network's head runs the hand-written backward (no autograd): same gradients.
    assert isinstance(agent.q_net, QNetwork) and agent.q_net.hand_backward
    for e, p in zip(expected, agent.q_net.parameters()):
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-7)


def test_hand_backward_with_conv_encoder_equals_autograd():
    # Dict(image + vector): the conv encoder runs on autograd, fed the hand-written head's input gradient.
    torch.manual_seed(0)
    space = ToyEnv("dict").observation_space
    net = QNetwork(space, 3, (16,))
    assert net.encoder_trains and net.hand_backward
    obs = {"image": torch.randint(0, 256, (5, 1, 36, 36), dtype=torch.uint8), "llm": torch.randn(5, 2)}
    grad_q = torch.randn(5, 3)
    expected = torch.autograd.grad(net(obs), list(net.parameters()), grad_q)
    q = net.forward_train(obs)
    torch.testing.assert_close(q, net(obs).detach())
    net.backward_train(grad_q)  # no .grad yet: the head creates its own, autograd the encoder's
    for e, p in zip(expected, net.parameters()):
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-6)


def test_direct_acting_gives_the_module_forward_values():
    net = QNetwork(gym.spaces.Box(-1, 1, (2, 3), np.float32), 4, (16, 16))
    assert (
        net.direct_acting and not QNetwork(gym.spaces.Box(-1, 1, (3,)), 2, (8,), dueling=True).direct_acting
    )
    obs = np.random.default_rng(0).normal(size=(5, 2, 3))
    with torch.no_grad():
        expected = net(torch.as_tensor(obs, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(net.act_values(obs), expected, rtol=1e-6, atol=1e-6)


class _Imagination(gym.Wrapper):
    """Hands over two fixed imagined transitions after every step (obs 0.5 -> reward 7), as a world model's
    Dyna wrapper would."""

    def llmrl_imagined(self):
        obs = np.full((2, 2), 0.5, np.float32)
        return {"obs": obs, "next_obs": obs, "actions": np.array([0, 1]), "rewards": np.array([7.0, 7.0]),
                "terminated": np.array([True, True])}  # fmt: skip


def test_imagined_transitions_fill_their_share_of_each_batch(tmp_path):
    agent = DQN(_Imagination(ToyEnv()), seed=0, imagined_fraction=0.25, **SMALL)
    agent.learn(100, progress_bar=False)
    assert len(agent.imagined) == 2 * agent._vector_steps and agent.n_updates > 0  # 2 per step, kept apart
    # the batches: per gradient step, 12 real rows then 4 imagined ones (reward 7, terminal)
    real, imagined = agent.buffer.sample(2 * 12), agent.imagined.sample(2 * 4)
    from llmrl.agents.dqn import _mixed

    mixed = _mixed(real, imagined, 2)
    is_imagined = mixed.returns == 7.0
    assert is_imagined.tolist() == ([False] * 12 + [True] * 4) * 2
    assert (mixed.discounts[is_imagined] == 0).all() and (mixed.obs[is_imagined] == 0.5).all()
    agent.save(tmp_path / "ckpt")  # the imagined buffer is part of the checkpoint
    loaded = DQN.load(tmp_path / "ckpt", env=_Imagination(ToyEnv()))
    np.testing.assert_array_equal(loaded.imagined.rewards, agent.imagined.rewards)


def test_imagined_fraction_needs_a_source_and_uniform_replay():
    with pytest.raises(ConfigError, match="prioritized=False"):
        DQN(ToyEnv(), imagined_fraction=0.5, prioritized=True, **SMALL)
    with pytest.raises(ConfigError, match="imagined_fraction"):
        DQN(ToyEnv(), imagined_fraction=1.0, **SMALL)
    with pytest.raises(ConfigError, match="llmrl_imagined"):
        DQN(ToyEnv(), imagined_fraction=0.5, **SMALL).learn(10, progress_bar=False)
