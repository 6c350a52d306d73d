"""Logs survive kill -9 and resume: rows up to the checkpoint kept, later ones dropped, none doubled."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap

import llmrl
from llmrl import PPO

_TRAIN = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)  # as in the test process: same float reductions
    import llmrl
    from llmrl import PPO
    def die(agent, metrics):
        if agent.num_timesteps >= int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
    agent = PPO(llmrl.make("CartPole-v1"), seed=3, n_steps=128)
    agent.learn(2048, run_dir=sys.argv[1], checkpoint_every=512, progress_bar=False, callback=die)
    """
)


def _rows(path, cols):
    with open(path, newline="") as f:
        return [tuple(r[c] for c in cols) for r in csv.DictReader(f)]


def test_kill_9_then_resume_gives_the_uninterrupted_logs(tmp_path):
    whole = tmp_path / "whole"
    PPO(llmrl.make("CartPole-v1"), seed=3, n_steps=128).learn(2048, run_dir=whole, checkpoint_every=512,
                                                               progress_bar=False)  # fmt: skip
    run = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", _TRAIN, str(run), "1400"],
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=300)  # fmt: skip
    assert proc.returncode == -9
    episodes = _rows(run / "episodes.csv", ["step", "return", "length"])
    reference = _rows(whole / "episodes.csv", ["step", "return", "length"])
    # nothing finished before the kill was lost (flushed once per iteration)
    assert episodes == reference[: len(episodes)] and int(episodes[-1][0]) > 1300
    agent = PPO.load(run / "checkpoint", env=llmrl.make("CartPole-v1"))
    assert 512 <= agent.num_timesteps < int(episodes[-1][0])  # a checkpoint before the kill
    agent.learn(2048, run_dir=run, checkpoint_every=512, progress_bar=False)
    assert _rows(run / "episodes.csv", ["step", "return", "length"]) == reference  # none lost, none doubled
    cols = ["step", "loss/policy", "loss/value"]
    assert _rows(run / "metrics.csv", cols) == _rows(whole / "metrics.csv", cols)


def test_a_torn_last_line_is_dropped_on_resume(tmp_path):
    agent = PPO(llmrl.make("CartPole-v1"), seed=0, n_steps=128)
    agent.learn(512, run_dir=tmp_path, progress_bar=False)
    agent.save(tmp_path / "checkpoint")
    with open(tmp_path / "episodes.csv", "a") as f:
        f.write("600,12")  # a kill mid-write
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("640,0.1,")
    before = _rows(tmp_path / "episodes.csv", ["step"])[:-1]
    agent = PPO.load(tmp_path / "checkpoint", env=llmrl.make("CartPole-v1"))
    agent.learn(640, run_dir=tmp_path, progress_bar=False)
    steps = [int(s) for (s,) in _rows(tmp_path / "episodes.csv", ["step"])]
    assert steps[: len(before)] == [int(s) for (s,) in before] and steps == sorted(steps)
    assert [int(float(s)) for (s,) in _rows(tmp_path / "metrics.csv", ["step"])] == sorted(
        set(int(float(s)) for (s,) in _rows(tmp_path / "metrics.csv", ["step"]))
    )
