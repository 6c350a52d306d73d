"""Checkpoints (atomic, no pickle), RNG and env state round trips, run logging and learning curves."""

from __future__ import annotations

import random

import gymnasium as gym
import numpy as np
import pytest
import torch

from llmrl.errors import CheckpointError
from llmrl.training import (
    RunLogger,
    get_env_state,
    get_rng_state,
    load_checkpoint,
    plot_learning_curve,
    save_checkpoint,
    set_env_state,
    set_rng_state,
)


def test_checkpoint_round_trip_keeps_types(tmp_path):
    state = {
        "w": torch.arange(6.0).view(2, 3),
        "buf": np.arange(5, dtype=np.uint8),
        "nested": {1: (2, 3.5, "x", None), "flag": True, "__odd": [1]},
        "big": 2**100,
    }
    save_checkpoint(tmp_path / "ck", state)
    out = load_checkpoint(tmp_path / "ck")
    assert torch.equal(out["w"], state["w"])
    assert out["buf"].dtype == np.uint8 and np.array_equal(out["buf"], state["buf"])
    assert out["nested"] == state["nested"] and out["big"] == 2**100
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["state.json", "tensors.safetensors"]


def test_checkpoint_overwrite_is_atomic_and_leaves_no_temp_folders(tmp_path):
    save_checkpoint(tmp_path / "ck", {"v": 1})
    save_checkpoint(tmp_path / "ck", {"v": 2})
    assert load_checkpoint(tmp_path / "ck")["v"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_checkpoint_refuses_objects_that_need_pickle(tmp_path):
    with pytest.raises(CheckpointError, match="without pickle"):
        save_checkpoint(tmp_path / "ck", {"f": object()})
    assert not (tmp_path / "ck").exists()


def test_rng_state_round_trip():
    state = get_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_rt(state))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def load_rt(state, tmp=None):
    import tempfile

    d = tempfile.mkdtemp()
    save_checkpoint(f"{d}/r", state)
    return load_checkpoint(f"{d}/r")


@pytest.mark.parametrize("kind", ["single", "native-vector", "sync-vector"])
def test_env_state_restores_classic_control_exactly(kind):
    def make():
        if kind == "single":
            return gym.make("CartPole-v1")
        mode = "vector_entry_point" if kind == "native-vector" else "sync"
        return gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode=mode)

    def run(env, n):
        out = []
        for i in range(n):
            action = i % 3 % 2 if kind == "single" else np.array([i % 3 % 2, i % 2])
            obs, _, term, trunc, _ = env.step(action)
            if kind == "single" and (term or trunc):
                obs, _ = env.reset()
            out.append(obs)
        return out

    env = make()
    env.reset(seed=0)
    run(env, 30)
    snap = load_rt({"s": get_env_state(env)})["s"]
    ref = run(env, 60)
    fresh = make()
    assert set_env_state(fresh, snap)
    got = run(fresh, 60)
    for r, g in zip(ref, got):
        np.testing.assert_array_equal(r, g)


def test_env_state_refuses_a_different_chain():
    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    assert not set_env_state(gym.make("Acrobot-v1"), get_env_state(env))


def test_run_logger_writes_csv_and_curve(tmp_path):
    log = RunLogger(tmp_path, total_timesteps=100, progress_bar=False, tensorboard=False)
    for i in range(30):
        log.episode(i * 3, float(i), 3)
    log.log(50, {"loss": 1.0})
    log.log(100, {"loss": 0.5, "llm/calls": 3})  # a new column widens the header
    log.close()
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",")[-1] == "llm/calls" and len(lines) == 3
    assert len((tmp_path / "episodes.csv").read_text().splitlines()) == 31
    png = plot_learning_curve(tmp_path)
    assert png.exists() and png.stat().st_size > 1000
