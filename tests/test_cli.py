"""Every CLI command run for real on a tiny budget, and bad input answered with one line and status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from llmrl.cli import main
from llmrl.experiments import TrainConfig, list_presets, load_preset, train_config


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_command(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for name in ("train", "eval", "gif", "bench", "demo", "presets"):
        assert f"  {name} " in out


def test_console_script_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "llmrl.cli", "presets"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "cartpole-ppo" in proc.stdout


def test_every_preset_is_a_valid_train_config(capsys):
    names = list_presets()
    assert {
        "cartpole-ppo",
        "cartpole-dqn",
        "grid-features",
        "breakout-features",
        "montezuma-features",
    } <= set(names)
    for name in names:
        cfg = train_config(load_preset(name))
        assert isinstance(cfg, TrainConfig) and cfg.steps > 0
    code, out, _ = run_cli(capsys, "presets")
    assert code == 0 and all(n in out for n in names)


def test_train_eval_gif_resume(tmp_path, capsys):
    run = tmp_path / "cp"
    code, out, err = run_cli(capsys, "train", "--preset", "cartpole-ppo", "--steps", "512", "--num-envs", "4",
                             "--out", str(run), "--no-progress")  # fmt: skip
    assert code == 0, err
    for name in ("checkpoint", "config.yaml", "metrics.csv", "learning_curve.png"):
        assert (run / name).exists(), name
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["ppo"]["n_steps"] == 32 and saved["num_envs"] == 4

    code, out, err = run_cli(capsys, "eval", str(run), "--episodes", "3")
    assert code == 0, err
    assert "mean return" in out and (run / "eval.json").exists()

    code, out, err = run_cli(capsys, "gif", str(run), "--max-steps", "10")
    assert code == 0, err
    from PIL import Image

    with Image.open(run / "agent.gif") as im:
        assert im.n_frames >= 2

    code, out, err = run_cli(capsys, "train", "--out", str(run), "--resume", "--steps", "1024", "--no-progress",
                             "--preset", "cartpole-ppo", "--num-envs", "4")  # fmt: skip
    assert code == 0, err
    from llmrl import PPO

    assert PPO.load(run / "checkpoint").num_timesteps >= 1024


def test_train_without_resume_refuses_to_overwrite(tmp_path, capsys):
    run = tmp_path / "cp"
    args = (
        "train",
        "--steps",
        "256",
        "--num-envs",
        "2",
        "--out",
        str(run),
        "--no-progress",
        "--ppo.n-steps",
        "64",
    )
    assert run_cli(capsys, *args)[0] == 0
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "--resume" in err


def test_train_with_llm_features_and_gif_with_advice(tmp_path, capsys):
    """The seed's system from the command line, with the real embedded model."""
    run = tmp_path / "grid"
    code, out, err = run_cli(capsys, "train", "--preset", "grid-features", "--steps", "300", "--num-envs", "2",
                             "--dqn.learning-starts", "100", "--out", str(run), "--no-progress")  # fmt: skip
    assert code == 0, err
    metrics = (run / "metrics.csv").read_text().splitlines()[0]
    assert "llm/calls" in metrics
    code, out, err = run_cli(capsys, "gif", str(run), "--max-steps", "3")
    assert code == 0, err
    assert (run / "agent.gif").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (("train", "--env", "CartPle-v1", "--steps", "10"), "Did you mean 'CartPole-v1'"),
        (("train", "--steps", "-5"), "steps=-5"),
        (("train", "--preset", "cartpol-ppo"), "Did you mean 'cartpole-ppo'"),
        (("train", "--algo", "sac"), "invalid choice 'sac'"),
        (("train", "--ppo.gamma", "2"), "gamma=2.0"),
        (("trian",), "Did you mean 'train'"),
        (("eval", "/nonexistent/run"), "not a run folder"),
        (("train", "--env", "llmrl/Grid-v0", "--role", "judge", "--steps", "10"), "needs objective"),
    ],
)
def test_bad_input_is_one_line_and_status_2(capsys, args, expected):
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_extra_names_the_pip_command(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "minigrid", None)  # import minigrid now raises ImportError
    code, _, err = run_cli(capsys, "train", "--env", "MiniGrid-DoorKey-5x5-v0", "--steps", "10")
    assert code == 2
    assert "pip install 'llmrl[minigrid]'" in err and len(err.strip().splitlines()) == 1


def test_demo_on_a_tiny_budget(tmp_path, capsys, monkeypatch):
    """The main job, end to end with the real embedded model, on a budget far too small to learn."""
    monkeypatch.setenv("LLMRL_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    code, stdout, err = run_cli(capsys, "demo", "--steps", "1024", "--out", str(out))
    assert code == 0, err
    assert "| baseline |" in stdout and "| ellm |" in stdout
    for name in ("success.png", "agent.gif", "episodes.csv", "summary.csv", "comparison.md", "config.yaml"):
        assert (out / name).exists(), name
    summary = (out / "summary.csv").read_text()
    assert "llm/calls" in summary


def test_bench_runs_a_benchmark_script(capfd):
    code = main(["bench", "envs_text", "--quick"])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert "| grid | llmrl/Grid-v0 |" in out and "distinct texts / steps" in out
