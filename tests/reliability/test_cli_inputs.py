"""Bad command-line input: one clean line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import re
import shutil

import pytest

from llmrl import cli
from llmrl.experiments import presets as preset_module

OUT = ["--steps", "64", "--num-envs", "1", "--no-progress"]

CASES = {
    "unknown MiniGrid id": (["train", "--env", "MiniGrid-Nope-v0", *OUT], "MiniGrid-Nope"),
    "negative seed": (["train", "--seed", "-1", *OUT], "seed=-1 is invalid"),
    "seed 1e22": (["train", "--seed", "1e22", *OUT], "Error parsing --seed"),
    "huge seed": (["train", "--seed", "1" + "0" * 22, *OUT], "seed=1000"),
    "num-envs 1e9": (["train", "--num-envs", "1e9", "--steps", "64"], "Error parsing --num-envs"),
    "num-envs 10^9": (["train", "--steps", "64", "--num-envs", "1000000000"], "num_envs must be"),
    "buffer 1e12": (["train", "--algo", "dqn", "--dqn.buffer-size", "1e12", *OUT], "buffer-size"),
    "buffer 10^12": (["train", "--algo", "dqn", "--dqn.buffer-size", "1" + "0" * 12, *OUT], "GiB"),
    "bad YAML role args": (
        ["train", "--role", "judge", "--role-args", "objective", "[x", *OUT],
        "YAML|while parsing",
    ),
    "bad YAML env args": (["train", "--env-args", "max_episode_steps", "{a: [", *OUT], "while parsing"),
    "unknown role arg": (["train", "--role", "features", "--role-args", "k", "abc", *OUT], "no option k"),
    "unknown env arg": (["train", "--env-args", "nope", "3", *OUT], "does not take the argument"),
    "out is a file": (["train", *OUT, "--out", "/dev/null"], "not a folder"),
    "100k-character env id": (["train", "--env", "A" * 100_000, *OUT], r"File name too long"),
    "100k-character env id, --out": (
        ["train", "--env", "A" * 100_000, *OUT, "--out", "r"],
        r"\(100000 characters\)",
    ),
    "learning rate inf": (["train", "--ppo.learning-rate", "inf", *OUT], "learning_rate=inf"),
    "learning rate nan": (
        ["train", "--dqn.learning-rate", "nan", "--algo", "dqn", *OUT],
        "learning_rate=nan",
    ),
    "eval of no run": (["eval", "/nonexistent/run"], "not a run folder"),
    "unknown preset": (["train", "--preset", "nope"], "unknown preset"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_exit_2(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default run folders land here
    argv, match = CASES[name]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmrl: error:") and "\n" not in err and "Traceback" not in err
    assert re.search(match, err), err


def _a_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", *OUT, "--steps", "256", "--out", str(run)]) == 0
    capsys.readouterr()
    return run


BROKEN = {
    "not YAML": "ppo: [unclosed\n",
    "a list": "- 1\n- 2\n",
    "a string": "hello\n",
    "binary": "\udcff\udcfe",
    "unknown key": "nope: 1\n",
    "ppo not a mapping": "ppo: 3\n",
    "unknown ppo field": "ppo: {nope: 1}\n",
    "bad value": "steps: -5\n",
    "empty": "",
    "inf learning rate": "ppo: {learning_rate: .inf}\n",
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_config_yaml_is_one_line(name, tmp_path, capsys):
    run = _a_run(tmp_path, capsys)
    path = run / "config.yaml"
    if name == "binary":
        path.write_bytes(b"\xff\xfe\x00garbage")
    elif name == "empty":
        path.write_text("")
    else:
        path.write_text(BROKEN[name])
    code = cli.main(["eval", str(run), "--episodes", "1"])
    err = capsys.readouterr().err.strip()
    if name == "empty":  # all defaults: a sensible acceptance (CartPole PPO, as trained)
        assert code == 0
        return
    assert code == 2 and err.startswith("llmrl: error:") and "\n" not in err, err


def test_a_broken_preset_is_one_line_and_does_not_hide_the_others(tmp_path, capsys, monkeypatch):
    presets = tmp_path / "presets"
    shutil.copytree(preset_module.PRESET_DIR, presets)
    (presets / "broken.yaml").write_text("description: [oops\n")
    (presets / "alist.yaml").write_text("- 1\n")
    monkeypatch.setattr(preset_module, "PRESET_DIR", presets)
    assert cli.main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "cartpole-ppo" in out and "broken" in out and "(broken:" in out
    for name in ("broken", "alist"):
        assert cli.main(["train", "--preset", name]) == 2
        err = capsys.readouterr().err.strip()
        assert f"preset {presets / name}.yaml" in err and "\n" not in err


def test_no_silent_restart_over_an_earlier_run(tmp_path, capsys):
    run = _a_run(tmp_path, capsys)
    shutil.rmtree(run / "checkpoint")  # killed before its first checkpoint: only logs
    assert cli.main(["train", *OUT, "--out", str(run)]) == 2
    assert "already holds a run (metrics.csv, episodes.csv)" in capsys.readouterr().err


def test_resume_recovers_a_checkpoint_hidden_by_a_killed_save(tmp_path, capsys):
    run = _a_run(tmp_path, capsys)
    (run / "checkpoint").rename(run / ".checkpoint.tmp-killed")  # the state a kill between the renames leaves
    assert cli.main(["train", *OUT, "--out", str(run)]) == 2  # found again: no restart from 0 over it
    assert "already holds a run (checkpoint" in capsys.readouterr().err
    assert cli.main(["train", *OUT, "--steps", "384", "--out", str(run), "--resume"]) == 0
    assert not list(run.glob(".checkpoint.*"))
