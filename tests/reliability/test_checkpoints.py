"""Damaged and interrupted checkpoints: one line naming the file and the fix, or a clean recovery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import llmrl
from llmrl import PPO
from llmrl.errors import CheckpointError
from llmrl.training import load_checkpoint, recover_checkpoint, save_checkpoint


@pytest.fixture
def saved(tmp_path):
    agent = PPO(llmrl.make("CartPole-v1"), seed=0, n_steps=64)
    agent.learn(128, progress_bar=False)
    return agent.save(tmp_path / "checkpoint")


def _one_line_error(path, match):
    with pytest.raises(CheckpointError, match=match) as info:
        PPO.load(path)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("cut", [0, 7, 100, -100, -1])
def test_truncated_tensors(saved, cut):
    f = saved / "tensors.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:cut] if cut else b"")
    _one_line_error(saved, "tensors.safetensors.*(checksum|re-save)")


@pytest.mark.parametrize("where", ["header", "weights"])
def test_garbled_tensors_are_caught_by_the_checksum(saved, where):
    f = saved / "tensors.safetensors"
    data = bytearray(f.read_bytes())
    start = 8 if where == "header" else len(data) - 1024
    data[start : start + 1024] = np.random.default_rng(0).integers(0, 256, 1024, dtype=np.uint8).tobytes()
    f.write_bytes(bytes(data))
    _one_line_error(saved, "tensors.safetensors does not match the checksum")


@pytest.mark.parametrize("damage", ["truncate", "not_json", "edit", "binary", "empty", "missing", "list"])
def test_broken_state_json(saved, damage):
    f = saved / "state.json"
    text = f.read_text()
    if damage == "truncate":
        f.write_text(text[: len(text) // 2])
    elif damage == "not_json":
        f.write_text("algo: PPO\n")
    elif damage == "edit":
        edited = text.replace('"seed": 0', '"seed": 1')
        assert edited != text
        f.write_text(edited)
    elif damage == "binary":
        f.write_bytes(b"\xff\xfe" + os.urandom(64))
    elif damage == "empty":
        f.write_text("")
    elif damage == "list":
        f.write_text("[1, 2]")
    else:
        f.unlink()
    _one_line_error(saved, "state.json|re-save|complete llmrl checkpoint")


_KILL_SAVE = textwrap.dedent(
    """
    import os, sys
    import llmrl
    from llmrl import PPO
    agent = PPO(llmrl.make("CartPole-v1"), seed=0, n_steps=64)
    agent.learn(128, progress_bar=False)
    agent.save(sys.argv[1])                      # the first checkpoint, complete
    agent.learn(256, progress_bar=False)
    real, calls = os.replace, []
    def replace(a, b):
        calls.append(a)
        if len(calls) == int(sys.argv[2]):
            os._exit(9)                          # as if killed -9 right here
        real(a, b)
    os.replace = replace
    if sys.argv[3] == "save_file":
        import safetensors.torch
        def dies(*a, **k):
            with open(a[1], "wb") as f:
                f.write(b"half a file")
            os._exit(9)
        safetensors.torch.save_file = dies
    agent.save(sys.argv[1])
    """
)


def _killed_save(tmp_path, at_rename: int, how: str = "rename"):
    ckpt = tmp_path / "checkpoint"
    proc = subprocess.run([sys.executable, "-c", _KILL_SAVE, str(ckpt), str(at_rename), how],
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=300)  # fmt: skip
    assert proc.returncode == 9
    return ckpt


def test_kill_between_the_two_renames_is_recovered_with_the_newer_state(tmp_path):
    ckpt = _killed_save(tmp_path, at_rename=2)  # old renamed away, new not yet in place
    assert not ckpt.exists() and len(list(tmp_path.glob(".checkpoint.*"))) == 2
    agent = PPO.load(ckpt, env=llmrl.make("CartPole-v1"))  # what `llmrl train --resume` does
    assert agent.num_timesteps >= 256 and ckpt.is_dir()
    agent.save(ckpt)  # the next save removes what the killed one left behind
    assert list(tmp_path.glob(".checkpoint.*")) == []


def test_kill_after_the_first_rename_only(tmp_path):
    ckpt = _killed_save(tmp_path, at_rename=1)  # killed before anything moved: the old one stays
    assert load_checkpoint(ckpt)["num_timesteps"] < 256
    assert len(list(tmp_path.glob(".checkpoint.tmp-*"))) == 1
    save_checkpoint(ckpt, {"x": 1})
    assert list(tmp_path.glob(".checkpoint.*")) == []


def test_kill_while_writing_tensors_keeps_the_old_checkpoint_and_cleans_up(tmp_path):
    ckpt = _killed_save(tmp_path, at_rename=99, how="save_file")
    assert load_checkpoint(ckpt)["num_timesteps"] < 256
    assert not recover_checkpoint(ckpt)  # present: nothing to recover
    (tmp_path / "checkpoint").rename(tmp_path / "gone")
    assert not recover_checkpoint(ckpt)  # the half-written temp folder is never taken for a checkpoint
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(ckpt)


def test_checksums_are_in_state_json(saved):
    skeleton = json.loads((saved / "state.json").read_text())
    assert len(skeleton["tensors_sha256"]) == 64 and len(skeleton["state_sha256"]) == 64
