"""Watch an agent: a GIF of env frames with a side panel of action values, or the same in the terminal.

    llmrl.save_gif(agent, gymnasium.make("CartPole-v1", render_mode="rgb_array"), "cartpole.gif")

The panel lists every action with its value — Q-values for DQN, probabilities for PPO (from
`agent.action_values(obs)`) — with the chosen action highlighted, and below it the text of the optional
`annotate(obs, info) -> str` (e.g. an LLM's advice, generated only when rendering).
"""

from __future__ import annotations

import enum as enum_module
import functools
import math
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from llmrl.errors import ConfigError

__all__ = ["save_gif", "render_terminal", "action_names", "compose_frame"]

Annotate = Callable[[Any, dict], str]

PANEL_WIDTH = 260
_BG, _FG, _HI, _BAR, _DIM = (24, 24, 32), (230, 230, 230), (255, 196, 0), (70, 130, 220), (150, 150, 160)


def action_names(env: gym.Env) -> list[str]:
    """Names of the env's actions: `get_action_meanings()` (ALE, llmrl's Grid), MiniGrid's `actions`
    enum, else indices."""
    space = env.action_space
    # an outer wrapper may name the actions it offers (the LLM policy's action strings), else the env does
    getter = getattr(env, "get_action_meanings", None) or getattr(env.unwrapped, "get_action_meanings", None)
    enum = getattr(env.unwrapped, "actions", None)  # MiniGrid: IntEnum left, right, forward, pickup, ...
    if isinstance(space, spaces.Discrete):
        names: list[str] = []
        if callable(getter):
            names = [str(n) for n in getter()]
        elif isinstance(enum, type) and issubclass(enum, enum_module.Enum):
            names = [m.name for m in sorted(enum, key=lambda m: m.value)]
        if len(names) == int(space.n):
            return names
        return [str(i) for i in range(int(space.n))]
    if isinstance(space, spaces.Box):
        return [f"a[{i}]" for i in range(int(np.prod(space.shape)))]
    return [str(space)]


def _font(size: int, text: str = ""):
    """Pillow's default font; for text beyond Latin (the seed showed Japanese advice) the IPAex Gothic
    font that the `matplotlib-fontja` package ships, when it is installed (`pip install 'llmrl[llm]'`)."""
    from PIL import ImageFont

    if any(ord(c) > 0x2FF for c in text):
        path = _cjk_font_path()
        if path is not None:
            return ImageFont.truetype(path, size)
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


@functools.cache
def _cjk_font_path() -> str | None:
    try:
        import matplotlib_fontja  # noqa: F401
    except ImportError:
        return None
    path = Path(matplotlib_fontja.__file__).parent / "fonts" / "ipaexg.ttf"
    return str(path) if path.is_file() else None


def compose_frame(
    frame: np.ndarray,
    label: str,
    values: np.ndarray,
    names: list[str],
    chosen: int | None,
    text: str = "",
    header: str = "",
) -> np.ndarray:
    """An env frame (H, W, 3) with the panel to its right -> (H', W' + PANEL_WIDTH, 3) uint8.
    Small frames are scaled up (nearest neighbour) to at least 256 pixels high so the panel is readable."""
    from PIL import Image, ImageDraw

    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=2)
    frame = frame[..., :3].astype(np.uint8)
    scale = max(1, math.ceil(256 / frame.shape[0]))
    if scale > 1:
        frame = frame.repeat(scale, axis=0).repeat(scale, axis=1)
    h = frame.shape[0]
    panel = Image.new("RGB", (PANEL_WIDTH, h), _BG)
    draw = ImageDraw.Draw(panel)
    font, small = _font(14), _font(12)
    y = 6
    if header:
        draw.text((8, y), header, fill=_DIM, font=small)
        y += 18
    draw.text((8, y), f"action   {label}", fill=_FG, font=font)
    y += 20
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    span = max(float(np.max(np.abs(values))), 1e-9) if len(values) else 1.0
    for i, (name, v) in enumerate(zip(names, values)):
        if y > h - 16:
            break
        color = _HI if i == chosen else _FG
        bar = int(90 * (v / span if label != "p" else v))
        draw.rectangle([150, y + 3, 150 + max(bar, 0), y + 13], fill=_HI if i == chosen else _BAR)
        mark = ">" if i == chosen else " "
        draw.text((8, y), f"{mark} {name[:12]:<12} {v:7.3f}", fill=color, font=small)
        y += 17
    if text:
        y += 6
        wide = sum(ord(c) > 0x2FF for c in text) > len(text) // 2  # CJK glyphs are about twice as wide
        text_font = _font(12, text)
        for line in textwrap.wrap(text, width=18 if wide else 34)[: max(0, (h - y) // 15)]:
            draw.text((8, y), line, fill=_FG, font=text_font)
            y += 15
    return np.concatenate([frame, np.asarray(panel)], axis=1)


def _episode(agent: Any, env: gym.Env, max_steps: int, annotate: Annotate | None, seed: int | None):
    """Yield (obs, info, label, values, action, text, step, episode return) per decision, then a final
    entry with action None after the episode ends or max_steps is reached."""
    if hasattr(env, "num_envs") and not isinstance(env, gym.Env):
        raise ConfigError(
            "rendering needs a single env (gymnasium.make(..., render_mode='rgb_array')), not a vector env."
        )
    obs, info = env.reset(seed=seed)
    total = 0.0
    for step in range(max_steps):
        label, values = agent.action_values(obs)
        action = agent.predict(obs, deterministic=True)
        text = annotate(obs, info) if annotate is not None else ""
        yield obs, info, label, values, action, text, step, total
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        if terminated or truncated:
            break
    label, values = agent.action_values(obs)
    yield (
        obs,
        info,
        label,
        values,
        None,
        "episode over" if annotate is None else annotate(obs, info),
        -1,
        total,
    )


def save_gif(
    agent: Any,
    env: gym.Env,
    path: str | os.PathLike,
    *,
    max_steps: int = 500,
    annotate: Annotate | None = None,
    fps: int = 20,
    seed: int | None = None,
) -> Path:
    """Play one episode (at most `max_steps` decisions) greedily and write it as a GIF.

    One frame per decision plus a final frame, so an episode of L steps gives L + 1 frames. `env` must
    be a single env made with `render_mode="rgb_array"`.
    """
    from PIL import Image

    if getattr(env, "render_mode", None) != "rgb_array":
        raise ConfigError(
            f"save_gif needs frames; env.render_mode={getattr(env, 'render_mode', None)!r}. "
            "Create the env with render_mode='rgb_array'."
        )
    names = action_names(env)
    frames = []
    for _obs, _info, label, values, action, text, step, ret in _episode(
        agent, env, max_steps, annotate, seed
    ):
        chosen = int(action) if action is not None and np.ndim(action) == 0 else None
        header = f"step {step}  return {ret:.1f}" if step >= 0 else f"end  return {ret:.1f}"
        frames.append(compose_frame(np.asarray(env.render()), label, values, names, chosen, text, header))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    # optimize=False keeps one GIF frame per decision (Pillow would merge identical neighbours otherwise)
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0, optimize=False
    )
    return path


def render_terminal(
    agent: Any,
    env: gym.Env,
    *,
    max_steps: int = 500,
    annotate: Annotate | None = None,
    seed: int | None = None,
    file: TextIO | None = None,
) -> float:
    """Print, for each step, the action values (chosen action marked) and the annotation; return the
    episode return. Works with any single env (no rendering needed)."""
    out = file or sys.stdout
    names = action_names(env)
    ret = 0.0
    for _obs, _info, label, values, action, text, step, ret in _episode(
        agent, env, max_steps, annotate, seed
    ):
        chosen = int(action) if action is not None and np.ndim(action) == 0 else None
        cells = [
            f"{'*' if i == chosen else ' '}{name}={float(v):.3f}"
            for i, (name, v) in enumerate(zip(names, np.asarray(values).reshape(-1)))
        ]
        head = f"step {step:4d}" if step >= 0 else "end      "
        print(f"{head} return {ret:8.2f} | {label}: " + " ".join(cells), file=out)
        if text:
            print("          " + text, file=out)
    return ret
