"""llmrl.envs.make: ids of every family, vector envs, Atari preprocessing, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv

from llmrl.envs import make
from llmrl.errors import ConfigError, DependencyNotInstalled, UnknownEnvError


def test_single_env_and_native_vector() -> None:
    env = make("CartPole-v1")
    assert isinstance(env, gym.Env) and env.observation_space.shape == (4,)
    venv = make("CartPole-v1", num_envs=4)
    assert isinstance(venv, VectorEnv) and not isinstance(venv, SyncVectorEnv)  # native CartPoleVectorEnv
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (4, 4)


def test_sync_vector_uses_next_step_autoreset() -> None:
    venv = make("Acrobot-v1", num_envs=3)
    assert isinstance(venv, SyncVectorEnv)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP


def test_atari_preprocessing_single_and_vector() -> None:
    pytest.importorskip("ale_py")
    env = make("ALE/Breakout-v5")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    assert env.unwrapped._frameskip == 1  # the wrapper skips, not the emulator
    venv = make("ALE/Breakout-v5", num_envs=2)
    assert venv.single_observation_space == env.observation_space
    obs, _ = venv.reset(seed=0)
    obs, *_ = venv.step(np.zeros(2, dtype=np.int64))
    assert obs.shape == (2, 4, 84, 84)
    raw = make("ALE/Breakout-v5", preprocess=False)
    assert raw.observation_space.shape == (210, 160, 3)
    raw_vec = make("ALE/Breakout-v5", num_envs=2, preprocess=False)
    assert raw_vec.single_observation_space.shape == (210, 160, 3)


def test_minigrid_ids_are_registered_on_demand() -> None:
    pytest.importorskip("minigrid")
    env = make("MiniGrid-DoorKey-6x6-v0")
    assert env.unwrapped.spec.id == "MiniGrid-DoorKey-6x6-v0"
    assert isinstance(make("BabyAI-GoToRedBall-v0", num_envs=2), SyncVectorEnv)


def test_misspelled_id_suggests_close_ids() -> None:
    with pytest.raises(UnknownEnvError, match="Did you mean 'CartPole-v1'"):
        make("CartPol-v1")
    with pytest.raises(UnknownEnvError, match="ALE/Breakout-v5"):
        make("ALE/Breakot-v5")


def test_bad_num_envs() -> None:
    with pytest.raises(ConfigError, match="num_envs"):
        make("CartPole-v1", num_envs=0)


def test_missing_extra_names_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name.startswith("minigrid"):
            raise ImportError("no minigrid here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr("importlib.import_module", lambda name: fake_import(name))
    with pytest.raises(DependencyNotInstalled, match=r"pip install 'llmrl\[minigrid\]'"):
        make("MiniGrid-Empty-5x5-v0")


def test_offscreen_frames_without_a_display_print_no_sdl_errors():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    env.pop("XDG_RUNTIME_DIR", None)
    code = "import llmrl; e = llmrl.make('CartPole-v1', render_mode='rgb_array'); e.reset(seed=0); print(e.render().shape)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "(400, 600, 3)", out.stderr
    assert "XDG_RUNTIME_DIR" not in out.stderr + out.stdout
