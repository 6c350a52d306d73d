"""Replay buffer: n-step returns, prioritized replay and relabelling against hand-computed values."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from llmrl.buffers import ReplayBuffer, SumTree
from llmrl.errors import ConfigError

BOX1 = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
ACT = gym.spaces.Discrete(2)


def feed(buf: ReplayBuffer, episodes: list[tuple[list[float], list[float], str]], start_obs: float = 0.0):
    """Feed one env the way a NEXT_STEP vector env produces steps.

    Each episode is (observations, rewards, end) where end is "term", "trunc" or "" (still running);
    observations has one more entry than rewards (the last one is the final observation).
    """
    prev_done = False
    prev_obs = None
    for obs_seq, rew_seq, end in episodes:
        if prev_done:  # the reset step: final obs -> first obs of the next episode, not a transition
            buf.add(
                np.array([[prev_obs]], np.float32),
                np.array([[obs_seq[0]]], np.float32),
                np.zeros(1, int),
                np.zeros(1),
                np.zeros(1, bool),
                np.zeros(1, bool),
                valid=np.zeros(1, bool),
            )
        for i, r in enumerate(rew_seq):
            last = i == len(rew_seq) - 1
            buf.add(
                np.array([[obs_seq[i]]], np.float32),
                np.array([[obs_seq[i + 1]]], np.float32),
                np.zeros(1, int),
                np.array([r]),
                np.array([last and end == "term"]),
                np.array([last and end == "trunc"]),
                valid=np.ones(1, bool),
            )
        prev_done, prev_obs = end != "", obs_seq[-1]


def test_nstep_returns_hand_computed():
    # gamma 0.5, n = 3. Episode 1: 4 steps, rewards 1..4, terminated. Episode 2: 2 steps, rewards 5, 6,
    # truncated. Episode 3: 1 step so far, reward 7.
    for optimize in (True, False):
        buf = ReplayBuffer(BOX1, ACT, 20, n_step=3, gamma=0.5, optimize_memory=optimize)
        feed(
            buf,
            [([0, 1, 2, 3, 4], [1, 2, 3, 4], "term"), ([10, 11, 12], [5, 6], "trunc"), ([20, 21], [7], "")],
        )
        # slots: 0-3 episode 1, 4 reset step, 5-6 episode 2, 7 reset step, 8 episode 3
        assert buf.valid[:, 0].tolist()[:9] == [True] * 4 + [False] + [True] * 2 + [False, True]
        assert len(buf) == 7
        b = buf.get_batch(np.array([0, 1, 2, 3, 5, 6, 8]))
        np.testing.assert_allclose(b.returns, [1 + 1 + 0.75, 2 + 1.5 + 1, 3 + 2, 4, 5 + 3, 6, 7])
        np.testing.assert_allclose(b.discounts, [0.125, 0, 0, 0, 0.25, 0.5, 0.5])
        # bootstrap observations: 3 steps on, the final obs of a truncated episode, the newest obs
        assert b.next_obs[:, 0].tolist() == [3, 4, 4, 4, 12, 12, 21]
        assert b.obs[:, 0].tolist() == [0, 1, 2, 3, 10, 11, 20]


def test_nstep_across_wraparound():
    # 6 slots: 9 steps of one endless episode, rewards 0..8 -> slots hold rewards 6,7,8,3,4,5.
    buf = ReplayBuffer(BOX1, ACT, 6, n_step=3, gamma=0.5, optimize_memory=False)
    feed(buf, [(list(range(10)), list(range(9)), "")])
    assert buf.pos == 3 and buf.rewards[:, 0].tolist() == [6, 7, 8, 3, 4, 5]
    b = buf.get_batch(np.array([4, 5, 0, 2]))  # steps 4, 5, 6 (window wraps), 8 (newest)
    np.testing.assert_allclose(b.returns, [4 + 2.5 + 1.5, 5 + 3 + 1.75, 6 + 3.5 + 2, 8])
    np.testing.assert_allclose(b.discounts, [0.125, 0.125, 0.125, 0.5])
    assert b.next_obs[:, 0].tolist() == [7, 8, 9, 9]


def test_optimize_memory_matches_full_storage_and_keeps_uint8():
    space = gym.spaces.Dict(
        {"image": gym.spaces.Box(0, 255, (4, 4, 1), np.uint8), "vec": gym.spaces.Box(-1, 1, (2,), np.float32)}
    )
    rng = np.random.default_rng(0)
    bufs = [
        ReplayBuffer(space, ACT, 24, num_envs=3, n_step=2, optimize_memory=o, seed=1) for o in (True, False)
    ]
    obs = space.sample()
    obs = {k: np.stack([space.sample()[k] for _ in range(3)]) for k in obs}
    done = np.zeros(3, bool)
    for _ in range(30):
        nxt = {k: np.stack([space.sample()[k] for _ in range(3)]) for k in obs}
        term, trunc, act = rng.random(3) < 0.2, rng.random(3) < 0.1, rng.integers(0, 2, 3)
        rew = rng.random(3)
        for b in bufs:
            b.add(obs, nxt, act, rew, term, trunc, valid=~done)
        done, obs = term | trunc, nxt
    assert bufs[0].obs["image"].dtype == np.uint8
    # Memory-saving drops the slot at the head, everything else is the same.
    common = np.flatnonzero(bufs[0].valid.reshape(-1))
    assert set(common) <= set(np.flatnonzero(bufs[1].valid.reshape(-1)))
    a, b = bufs[0].get_batch(common), bufs[1].get_batch(common)
    for k in ("image", "vec"):
        np.testing.assert_array_equal(a.next_obs[k], b.next_obs[k])
        np.testing.assert_array_equal(a.obs[k], b.obs[k])
    np.testing.assert_array_equal(a.returns, b.returns)
    np.testing.assert_array_equal(a.discounts, b.discounts)


def test_channels_first_images_round_trip_through_storage_and_checkpoint():
    space = gym.spaces.Box(0, 255, (4, 12, 12), np.uint8)
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(space, ACT, 16, num_envs=2, seed=0)
    frames = [rng.integers(0, 256, (2, 4, 12, 12), dtype=np.uint8) for _ in range(6)]
    for a, b in zip(frames, frames[1:]):
        buf.add(a, b, np.zeros(2, np.int64), np.zeros(2), np.zeros(2, bool), np.zeros(2, bool))
    batch = buf.get_batch(np.arange(10))
    np.testing.assert_array_equal(batch.obs, np.stack(frames[:5]).reshape(10, 4, 12, 12))
    np.testing.assert_array_equal(batch.next_obs, np.stack(frames[1:]).reshape(10, 4, 12, 12))
    arrays, meta = buf.state_dict()
    assert arrays["obs/"].flags.c_contiguous  # saved in the logical (C, H, W) order
    again = ReplayBuffer(space, ACT, 16, num_envs=2, seed=0)
    again.load_state_dict(arrays, meta)
    np.testing.assert_array_equal(again.get_batch(np.arange(10)).obs, batch.obs)


def test_relabel_across_wraparound_and_episode_start():
    # 2 envs, 5 slots each. Env 1 runs one long episode; env 0 ends an episode at step 3.
    buf = ReplayBuffer(BOX1, ACT, 10, num_envs=2, optimize_memory=True)
    prev_done = np.zeros(2, bool)
    for step in range(7):
        term = np.array([step == 3, False])
        buf.add(
            np.full((2, 1), step, np.float32),
            np.full((2, 1), step + 1, np.float32),
            np.zeros(2, int),
            np.zeros(2),
            term,
            np.zeros(2, bool),
            valid=~prev_done,
        )
        prev_done = term
    # pos = 7 % 5 = 2; newest slot 1 (step 6), then slot 0 (step 5), slot 4 (step 4), slot 3 (step 3).
    assert buf.pos == 2
    assert buf.relabel(1, np.array([1.0, 2.0, 3.0])) == 3
    assert buf.rewards[:, 1].tolist() == [2.0, 3.0, 0.0, 0.0, 1.0]
    # Asking for more than is stored stops at the head slot (overwritten by the newest next obs).
    assert buf.relabel(1, np.full(10, 10.0)) == 4
    assert buf.rewards[:, 1].tolist() == [12.0, 13.0, 0.0, 10.0, 11.0]
    # Env 0: its episode started at step 5 (step 4 was the reset step), so only 2 transitions exist.
    assert buf.relabel(0, np.array([7.0, 8.0, 9.0])) == 2
    assert buf.rewards[:, 0].tolist() == [8.0, 9.0, 0.0, 0.0, 0.0]


def test_sum_tree_find_and_update():
    tree = SumTree(5)
    tree.update(np.arange(5), np.array([1.0, 0.0, 2.0, 3.0, 0.5]))
    assert tree.total == 6.5
    got = tree.find(np.array([0.0, 0.999, 1.0, 2.999, 3.0, 5.999, 6.0, 6.4999]))
    assert got.tolist() == [0, 0, 2, 2, 3, 3, 4, 4]
    tree.update(np.array([3, 3]), np.array([0.0, 0.0]))
    assert tree.total == 3.5 and tree.find(np.array([3.2])).tolist() == [4]


def _per_buffer(priorities: np.ndarray, alpha: float) -> ReplayBuffer:
    buf = ReplayBuffer(BOX1, ACT, len(priorities) + 1, prioritized=True, alpha=alpha, seed=3)
    feed(buf, [(list(range(len(priorities) + 1)), [0.0] * len(priorities), "")])
    buf.update_priorities(np.arange(len(priorities)), priorities)
    return buf


def test_prioritized_sampling_probabilities():
    p = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    alpha = 0.7
    buf = _per_buffer(p, alpha)
    expected = (p + 1e-6) ** alpha / ((p + 1e-6) ** alpha).sum()
    draws = np.concatenate([buf.sample(50).indices for _ in range(2000)])  # 100k draws
    freq = np.bincount(draws, minlength=6)[:5] / draws.size
    assert np.bincount(draws, minlength=6)[5] == 0  # the head slot is never drawn
    # standard error of a frequency ~ sqrt(p(1-p)/n) <= 0.0016; allow 4 of them
    np.testing.assert_allclose(freq, expected, atol=0.0065)


def test_prioritized_weights_exact_and_new_transitions_at_max():
    p = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    alpha, beta = 0.7, 0.5
    buf = _per_buffer(p, alpha)
    probs = (p + 1e-6) ** alpha / ((p + 1e-6) ** alpha).sum()
    idx = np.array([0, 4, 2])
    w = (5 * probs[idx]) ** -beta
    np.testing.assert_allclose(buf.get_batch(idx, beta=beta).weights, w / w.max(), rtol=1e-6)
    # A new transition enters at the highest priority seen so far (10 + eps)^alpha.
    buf2 = ReplayBuffer(BOX1, ACT, 20, prioritized=True, alpha=alpha)
    feed(buf2, [(list(range(7)), [0.0] * 6, "")])
    buf2.update_priorities(np.arange(5), p)
    feed(buf2, [([6, 7], [0.0], "")])
    np.testing.assert_allclose(buf2.tree.get(np.array([6])), (10 + 1e-6) ** alpha)


def test_state_dict_roundtrip_resumes_exactly():
    def fill(buf, rng, steps):
        for _ in range(steps):
            term = rng.random(2) < 0.1
            buf.add(
                rng.random((2, 1)),
                rng.random((2, 1)),
                rng.integers(0, 2, 2),
                rng.random(2),
                term,
                np.zeros(2, bool),
            )

    a = ReplayBuffer(BOX1, ACT, 40, num_envs=2, n_step=3, prioritized=True, seed=0)
    rng = np.random.default_rng(0)
    fill(a, rng, 9)
    a.update_priorities(a.sample(4).indices, np.array([0.5, 3.0, 1.0, 2.0]))
    arrays, meta = a.state_dict()
    import json

    meta = json.loads(json.dumps(meta))
    b = ReplayBuffer(BOX1, ACT, 40, num_envs=2, n_step=3, prioritized=True, seed=123)
    b.load_state_dict(arrays, meta)
    rng_b = np.random.default_rng(0)
    rng_b.bit_generator.state = rng.bit_generator.state
    fill(a, rng, 30)
    fill(b, rng_b, 30)
    x, y = a.sample(16), b.sample(16)
    np.testing.assert_array_equal(x.indices, y.indices)
    np.testing.assert_array_equal(x.returns, y.returns)
    np.testing.assert_array_equal(x.weights, y.weights)


def test_bad_settings_raise_config_error():
    with pytest.raises(ConfigError, match="capacity=3"):
        ReplayBuffer(BOX1, ACT, 3, num_envs=2)
    with pytest.raises(ConfigError, match="n_step=0"):
        ReplayBuffer(BOX1, ACT, 10, n_step=0)
    with pytest.raises(ConfigError, match="Text"):
        ReplayBuffer(gym.spaces.Text(5), ACT, 10)
