"""save_gif and the terminal render: frame count, panel, chosen action highlighted, annotations."""

from __future__ import annotations

import io

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

from llmrl.agents import PPO
from llmrl.errors import ConfigError
from llmrl.render import action_names, render_terminal, save_gif


@pytest.fixture(scope="module")
def agent():
    return PPO(gym.make("CartPole-v1"), seed=0, n_steps=32, batch_size=32, n_epochs=1)


def test_gif_has_one_frame_per_step_plus_final_and_a_panel(agent, tmp_path):
    env = gym.make("CartPole-v1", render_mode="rgb_array")
    seen = []
    path = save_gif(
        agent, env, tmp_path / "a.gif", max_steps=7, annotate=lambda o, i: seen.append(1) or "go left"
    )
    frame_w = env.render().shape[1]
    im = Image.open(path)
    assert im.n_frames == 8  # 7 decisions + the final frame (CartPole lasts > 7 steps)
    assert im.size[0] > frame_w and im.size[1] == 400  # a panel to the right of the 600x400 frame
    assert len(seen) == 8
    panel = np.asarray(im.convert("RGB"))[:, frame_w:]
    assert (panel == (255, 196, 0)).all(-1).any()  # the chosen action is highlighted


def test_gif_needs_rgb_frames(agent, tmp_path):
    with pytest.raises(ConfigError, match="render_mode='rgb_array'"):
        save_gif(agent, gym.make("CartPole-v1"), tmp_path / "a.gif")


def test_terminal_render_prints_values_and_advice(agent):
    out = io.StringIO()
    render_terminal(agent, gym.make("CartPole-v1"), max_steps=3, annotate=lambda o, i: "push right", file=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("step    0") and "p:" in lines[0] and "*" in lines[0]
    assert lines[1].strip() == "push right"
    assert sum(line.startswith("step") for line in lines) == 3


def test_action_names_use_env_meanings():
    class Named(gym.Env):
        action_space = gym.spaces.Discrete(2)
        observation_space = gym.spaces.Discrete(1)

        def get_action_meanings(self):
            return ["NOOP", "FIRE"]

    assert action_names(Named()) == ["NOOP", "FIRE"]
    assert action_names(gym.make("CartPole-v1")) == ["0", "1"]


def test_japanese_advice_uses_a_font_with_japanese_glyphs():
    """The seed showed the advice in Japanese: Pillow's default font has no such glyphs."""
    from llmrl.render import _font

    pytest.importorskip("matplotlib_fontja")

    def font_file(text: str) -> str:
        return str(getattr(_font(12, text), "path", ""))

    assert font_file("猫は右へ").endswith("ipaexg.ttf")
    assert not font_file("move right").endswith("ipaexg.ttf")
