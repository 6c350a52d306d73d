"""llmrl.distributed on a local Ray (2 CPUs): the LLM server's batching, de-duplication and restarts,
distributed PPO with a worker and the LLM actor killed mid-run, checkpoints across distributed and local.

Ray's start and its worker processes cost tens of seconds on a small machine: one Ray session serves
the whole module and the tests are few."""

from __future__ import annotations

import csv
import os
import sys
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import llmrl
from llmrl.distributed import DistributedPPO, FixedLatencyLLM, LLMServer, for_rllib
from llmrl.envs import WithText
from llmrl.errors import ConfigError
from llmrl.roles.features import LLMFeatures
from llmrl.roles.rewards import ManualReward

CFG = dict(n_steps=32, batch_size=64, n_epochs=2)


# -- no Ray needed --------------------------------------------------------------------------------


def test_bad_arguments_fail_before_ray_starts():
    with pytest.raises(ConfigError, match="make_env"):
        DistributedPPO(llmrl.make("CartPole-v1"), workers=2)  # an env, not a function
    with pytest.raises(ConfigError, match="workers=0"):
        DistributedPPO(lambda: llmrl.make("CartPole-v1"), workers=0)
    with pytest.raises(ConfigError, match="n_stpes"):
        DistributedPPO(lambda: llmrl.make("CartPole-v1"), workers=1, n_stpes=8)
    with pytest.raises(ConfigError, match="restart"):
        LLMServer(lambda: FixedLatencyLLM(0.0), cache=":memory:")


def test_cli_workers_are_for_ppo(capsys):
    from llmrl.cli import main

    assert main(["train", "--algo", "dqn", "--workers", "2", "--no-progress"]) == 2
    assert "workers=2 (algo=dqn)" in capsys.readouterr().err


def test_fixed_latency_llm_takes_its_latency_per_call_whatever_the_batch():
    llm = FixedLatencyLLM(0.02, dim=8)
    t0 = time.perf_counter()
    a = llm.features(["x", "y", "x"])
    assert time.perf_counter() - t0 >= 0.02 and llm.model_calls == 1
    assert a.shape == (3, 8) and np.array_equal(a[0], a[2]) and not np.array_equal(a[0], a[1])
    assert llm.features(["p"], kind="logits", tokens=[" a", " b"]).shape == (1, 2)


def test_for_rllib_makes_a_float_box_of_a_role_wrappers_discrete_observation():
    env = ManualReward(WithText(gym.make("llmrl/Grid-v0")), FixedLatencyLLM(0.0))
    assert isinstance(env.observation_space, gym.spaces.Discrete)
    flat = for_rllib(env)
    assert flat.observation_space.dtype == np.float32 and flat.observation_space.shape == (
        env.observation_space.n,
    )
    obs, _ = flat.reset(seed=0)
    assert obs.dtype == np.float32 and obs.sum() == 1.0  # one-hot
    obs, *_ = flat.step(flat.action_space.sample())
    assert flat.observation_space.contains(obs)
    box = gym.make("CartPole-v1")
    assert for_rllib(box) is box  # already what RLlib takes


# -- on a local Ray ---------------------------------------------------------------------------------

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    import llmrl.distributed as dist

    # test-module functions go to the workers by value (the workers cannot import this file)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    dist.init(num_cpus=2, object_store_memory=150 * 2**20)
    yield
    dist.shutdown()
    assert not ray.is_initialized()


def _first(marker: str) -> bool:
    """True for the one process (of all the workers) that creates `marker`; atomic, so exactly one crashes."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


class CrashOnce(gym.Wrapper):
    """Kills its process (as a crashed node would) at its `at`-th step, once per marker file."""

    def __init__(self, env, marker: str, at: int):
        super().__init__(env)
        self.marker, self.at, self.steps = marker, at, 0

    def step(self, action):
        self.steps += 1
        if self.steps == self.at and _first(self.marker):
            os._exit(1)
        return self.env.step(action)


class CrashingLLM(FixedLatencyLLM):
    """The stand-in model whose process dies at its `at`-th call, once per marker file."""

    def __init__(self, marker: str, at: int):
        super().__init__(0.001, dim=8)
        self.marker, self.at = marker, at

    def features(self, prompts, **kw):
        if self.model_calls + 1 == self.at and _first(self.marker):
            os._exit(1)
        return super().features(prompts, **kw)


def test_llm_server_batches_workers_calls_dedups_and_keeps_its_cache_across_a_restart(local_ray, tmp_path):
    # 0.2 s a call: the other callers arrive while the first call runs, even on a busy machine
    server = LLMServer(lambda: FixedLatencyLLM(0.2, dim=8), cache=tmp_path / "llm.sqlite", num_cpus=0)
    try:
        llm = server.client()
        assert isinstance(llm, llmrl.llm.LLM) and "features" in llm.capabilities
        direct = FixedLatencyLLM(0.0, dim=8)
        barrier = threading.Barrier(4)
        out: dict[int, np.ndarray] = {}

        def client(k: int) -> None:  # four clients (threads) calling at once, two inputs each, one shared
            barrier.wait()
            out[k] = llm.features([f"state {k}", "shared state"])

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for k in range(4):  # each caller gets its own answers, the same a direct call gives
            assert np.allclose(out[k], direct.features([f"state {k}", "shared state"]))
        s = server.stats()
        assert s["server/requests"] == 4 and s["server/inputs"] == 8
        assert s["server/batches"] <= 2  # one backend call for (nearly) all four callers
        assert s["server/unique"] <= s["server/inputs"] - 1  # "shared state" went to the model once per batch

        # the other operations go through the server unchanged
        assert llm.generate(["Q: 2+2? A:", "Hi"], max_tokens=4) == direct.generate(["Q: 2+2? A:", "Hi"])
        assert np.allclose(
            llm.score("The sky is", [" blue", " green"]), direct.score("The sky is", [" blue", " green"])
        )
        assert llm.embed(["a cat", "a dog"]).shape == (2, 8)
        started = server.stats()["server/started"]
        server.kill()  # Ray restarts it (the kill takes effect a moment later: wait for the new actor)
        deadline = time.monotonic() + 120
        while server.stats()["server/started"] == started and time.monotonic() < deadline:
            time.sleep(0.1)
        again = llm.features(["state 0", "shared state"])
        assert np.allclose(again, out[0])
        s = server.stats()
        assert s["server/started"] > started  # a new actor...
        assert s["server/cache_hits"] == 2 and s["server/model_inputs"] == 0  # ...that lost no answer
    finally:
        server.close()


def test_distributed_ppo_survives_a_dead_worker_and_llm_actor_and_resumes_locally(local_ray, tmp_path):
    server = LLMServer(lambda m=str(tmp_path / "llm.died"): CrashingLLM(m, at=6), cache=tmp_path / "llm.sqlite",
                       num_cpus=0)  # fmt: skip
    llm = server.client()
    marker = str(tmp_path / "worker.died")

    def make_env():  # 2 envs per worker, CartPole + its text + LLM features from the shared server
        envs = gym.vector.SyncVectorEnv([lambda: CrashOnce(gym.make("CartPole-v1"), marker, at=40)] * 2)
        return LLMFeatures(WithText(envs), llm, memo_size=0)

    history: list[dict[str, float]] = []
    trainer = DistributedPPO(make_env, workers=2, worker_cpus=0.25, seed=0, **CFG)
    try:
        # 3 iterations of 2 workers x 2 envs x 32 steps (fewer than 128 valid steps each: reset steps)
        agent = trainer.learn(2 * 128 + 1, progress_bar=False, run_dir=tmp_path / "run",
                              callback=lambda a, m: history.append(dict(m, steps=a.num_timesteps)))  # fmt: skip
        assert os.path.exists(marker) and os.path.exists(tmp_path / "llm.died")  # both faults happened
        assert trainer.faults.worker_restarts == 1
        # every iteration merged exactly one chunk per worker: the dead worker's partial rollout was
        # dropped (not counted) and collected again
        assert len(history) == 3
        assert all(m["ray/chunks"] == 2 and m["ray/rows"] == 2 * 2 * 32 for m in history)
        # steps = transitions of the accepted chunks less one reset step after each episode that ended
        # in them; a reset step is missing for an episode that ended on the run's last step (at most one
        # per env: 4) or before its worker died (its replacement starts afresh: at most 2)
        with open(tmp_path / "run" / "episodes.csv", newline="") as f:
            episodes = list(csv.DictReader(f))
        ended = len(episodes)
        assert 3 * 128 - ended <= agent.num_timesteps <= 3 * 128 - ended + 4 + 2
        assert sum(int(e["length"]) for e in episodes) <= agent.num_timesteps
        assert agent.num_timesteps == history[-1]["steps"]
        assert history[-1]["llm/calls"] > 0 and "llm/dim" not in history[-1]
        trainer.save(tmp_path / "ckpt")

        # the distributed checkpoint continues on one machine...
        local_env = LLMFeatures(WithText(gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2)),
                                llm, memo_size=0)  # fmt: skip
        local = llmrl.PPO.load(tmp_path / "ckpt", env=local_env)
        assert local.num_timesteps == agent.num_timesteps
        local.learn(agent.num_timesteps + 64, progress_bar=False)
        assert local.num_timesteps >= agent.num_timesteps + 64
        local.save(tmp_path / "ckpt-local")
    finally:
        trainer.close()

    # ...and a local checkpoint continues distributed, from its weights and step count
    resumed = DistributedPPO.load(tmp_path / "ckpt-local", make_env, workers=1, worker_cpus=0.25)
    try:
        w0 = resumed.agent.flat_params.detach().clone()
        assert np.allclose(w0.numpy(), local.flat_params.detach().numpy())
        end = resumed.learn(local.num_timesteps + 64, progress_bar=False)
        assert end.num_timesteps >= local.num_timesteps + 64 and not np.allclose(w0, end.flat_params.detach())
    finally:
        resumed.close()
        server.close()


def test_cli_trains_on_ray_workers_and_resumes_in_process(local_ray, tmp_path, capsys):
    from llmrl.cli import main

    run = tmp_path / "cp"
    args = ["train", "--preset", "cartpole-ppo", "--num-envs", "2", "--out", str(run), "--no-progress"]
    assert main([*args, "--steps", "200", "--workers", "2"]) == 0, capsys.readouterr().err
    assert "2 Ray workers" in capsys.readouterr().out
    assert (run / "checkpoint").exists() and (run / "metrics.csv").exists()
    first = llmrl.PPO.load(run / "checkpoint").num_timesteps
    assert 200 <= first <= 2 * 2 * 32 * 2  # whole iterations of 2 workers x 2 envs x n_steps 32
    assert main([*args, "--steps", str(first + 64), "--resume"]) == 0  # the same run, in this process
    assert llmrl.PPO.load(run / "checkpoint").num_timesteps >= first + 64


def test_distributed_ppo_learns_cartpole_like_local_ppo(local_ray):
    """In the default suite (about 8 s on 2 quiet cores): the issue asks for this in CI."""
    cfg = dict(n_steps=256, batch_size=256, n_epochs=10, learning_rate=3e-3, ent_coef=0.0, gae_lambda=0.95)
    steps = 40_000
    local = llmrl.PPO(llmrl.make("CartPole-v1", num_envs=4), seed=0, **cfg).learn(steps, progress_bar=False)
    trainer = DistributedPPO(lambda: llmrl.make("CartPole-v1", num_envs=2), workers=2, worker_cpus=0.5, seed=0,
                             **cfg)  # fmt: skip
    try:
        dist = trainer.learn(steps, progress_bar=False)
    finally:
        trainer.close()
    eval_env = gym.make("CartPole-v1")
    r_local = llmrl.evaluate(local, eval_env, 10, seed=0).mean
    r_dist = llmrl.evaluate(dist, eval_env, 10, seed=0).mean
    assert r_local >= 195, r_local
    assert r_dist >= 0.8 * r_local, (r_dist, r_local)


@pytest.mark.slow
def test_rllib_ppo_trains_on_an_llmrl_role_wrapper(local_ray):
    """The README's claim, as a new user would try it: RLlib's PPO on ManualReward over the Grid."""
    pytest.importorskip("ray.rllib.algorithms.ppo")  # RLlib pins its own gymnasium: often not installed
    sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
    try:
        import rllib_role
    finally:
        sys.path.pop(0)
    returns = rllib_role.train(iterations=2, llm="fixed", batch=256)
    assert len(returns) == 2
