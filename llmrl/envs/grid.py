"""The seed's Grid world: a cat on a small stochastic grid with a goal and puddles, `llmrl/Grid-v0`.

The default layout is the classic 4x3 world of Russell & Norvig (AIMA, ch. 17):

    . . . G      G  goal (+1, ends the episode)
    . # . P      P  puddle, the pit (-1, ends the episode)
    S . . .      #  wall; S start (bottom-left)

An intended move succeeds with probability 0.8, otherwise the cat slips to one of the two perpendicular
directions (0.1 each); moving into a wall or the border leaves it in place. Every step costs -0.04.

Observation: `Discrete(width * height)`, the index `row * width + col` of the cat's cell (row 0 at the top).
A single integer trains best here: the agents one-hot it, the MDP is fully observed, and tabular methods
apply; use `ImageObservation` for the seed's pixel observation. Variants: `layout=` (rows of the
characters above, top row first), `slip=`, `step_reward=`, `max_steps=`.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from llmrl.errors import ConfigError

__all__ = ["GridEnv", "DEFAULT_LAYOUT", "ACTION_NAMES", "MOVES"]

DEFAULT_LAYOUT = ("...G", ".#.P", "S...")
ACTION_NAMES = ("UP", "RIGHT", "DOWN", "LEFT")
# (d_row, d_col) per action; row 0 is the top row.
MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))
_CELL_CHARS = set(".#GPS")

# 16x16 pixel-art sprites, one character a pixel (drawn with numpy, no asset files).
_CAT = (
    "................",
    "..k..........k..",
    "..kk........kk..",
    "..kok......kok..",
    "..kookkkkkkook..",
    "..kooooooooook..",
    "..kowkoooowkok..",
    "..kokkooookkok..",
    "..kooooppooook..",
    "..kooookkooook..",
    "...kooooooook...",
    "..kooooooooook..",
    "..kooooooooook..",
    "..kowwoooowwok..",
    "...kkkkkkkkkk...",
    "................",
)
_FLAG = (
    "................",
    "....kk..........",
    "....kfff........",
    "....kffffff.....",
    "....kfffffffff..",
    "....kffffff.....",
    "....kfff........",
    "....kk..........",
    "....kk..........",
    "....kk..........",
    "....kk..........",
    "....kk..........",
    "...kkkk.........",
    "..kkkkkk........",
    "................",
    "................",
)
_PUDDLE = (
    "................",
    "................",
    "................",
    ".....bbbbbb.....",
    "...bbbbbbbbbb...",
    "..bbbllbbbbbbb..",
    ".bbbbbbbbbbllbb.",
    ".bbbbbbbbbbbbbb.",
    ".bbllbbbbbbbbbb.",
    "..bbbbbbbbllbb..",
    "...bbbbbbbbbb...",
    ".....bbbbbb.....",
    "................",
    "................",
    "................",
    "................",
)
_PALETTE = {
    "k": (40, 30, 30),  # outline
    "o": (240, 150, 50),  # orange fur
    "w": (255, 255, 255),
    "p": (240, 120, 150),  # nose
    "f": (230, 40, 40),  # flag
    "b": (70, 130, 220),  # water
    "l": (170, 210, 255),  # highlight
}
_FLOOR = (225, 215, 180)
_FLOOR_ALT = (215, 204, 166)
_WALL = (110, 80, 60)
_MORTAR = (150, 120, 95)
_GRID_LINE = (180, 168, 130)


def _sprite(rows: tuple[str, ...], cell: int) -> tuple[np.ndarray, np.ndarray]:
    """(cell, cell, 3) uint8 colours and (cell, cell) bool mask of a 16x16 character sprite."""
    n = len(rows)
    colour = np.zeros((n, n, 3), dtype=np.uint8)
    mask = np.zeros((n, n), dtype=bool)
    for r, row in enumerate(rows):
        for c, ch in enumerate(row[:n]):
            if ch in _PALETTE:
                colour[r, c] = _PALETTE[ch]
                mask[r, c] = True
    idx = np.arange(cell) * n // cell  # nearest-neighbour scale keeps the pixel-art look
    return colour[idx][:, idx], mask[idx][:, idx]


def _parse_layout(layout: Any) -> np.ndarray:
    rows = layout.strip().splitlines() if isinstance(layout, str) else list(layout)
    rows = [r.strip() for r in rows if r.strip()]
    if not rows or len({len(r) for r in rows}) != 1:
        raise ConfigError(f"Grid layout must be equal-length rows of '.#GPS', got {layout!r}")
    bad = {ch for r in rows for ch in r} - _CELL_CHARS
    if bad:
        raise ConfigError(f"Grid layout has unknown cells {sorted(bad)}; use . # G P S, got {layout!r}")
    grid = np.array([list(r) for r in rows])
    if (grid == "S").sum() != 1 or (grid == "G").sum() < 1:
        raise ConfigError(
            f"Grid layout needs exactly one start 'S' and at least one goal 'G', got {layout!r}"
        )
    return grid


class GridEnv(gym.Env[np.int64, np.int64]):
    """The seed's Grid world (see the module docstring). Actions: 0 UP, 1 RIGHT, 2 DOWN, 3 LEFT."""

    metadata = {"render_modes": ["rgb_array", "ansi"], "render_fps": 4}

    def __init__(
        self,
        render_mode: str | None = None,
        *,
        layout: Any = DEFAULT_LAYOUT,
        slip: float = 0.2,
        step_reward: float = -0.04,
        goal_reward: float = 1.0,
        pit_reward: float = -1.0,
        max_steps: int = 100,
        cell_px: int = 32,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(
                f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}"
            )
        if not 0.0 <= slip <= 1.0:
            raise ConfigError(f"slip is a probability in [0, 1], got {slip!r}")
        if max_steps < 1 or cell_px < 8:
            raise ConfigError(f"max_steps must be >= 1 and cell_px >= 8, got {max_steps!r} and {cell_px!r}")
        self.render_mode = render_mode
        self.grid = _parse_layout(layout)
        self.height, self.width = self.grid.shape
        self.slip, self.step_reward = float(slip), float(step_reward)
        self.goal_reward, self.pit_reward = float(goal_reward), float(pit_reward)
        self.max_steps, self.cell_px = int(max_steps), int(cell_px)
        r0, c0 = (int(v) for v in np.argwhere(self.grid == "S")[0])
        self.start: tuple[int, int] = (r0, c0)
        self.observation_space = spaces.Discrete(self.width * self.height)
        self.action_space = spaces.Discrete(4)
        self.pos: tuple[int, int] = self.start  # (row, col)
        self.steps = 0
        self._background: np.ndarray | None = None

    def get_action_meanings(self) -> list[str]:
        return list(ACTION_NAMES)

    def cell(self, pos: tuple[int, int] | None = None) -> str:
        """The layout character under `pos` (default: the cat)."""
        r, c = self.pos if pos is None else pos
        return str(self.grid[r, c])

    def _obs(self) -> np.int64:
        return np.int64(self.pos[0] * self.width + self.pos[1])

    def _target(self, pos: tuple[int, int], direction: int) -> tuple[int, int]:
        r, c = pos[0] + MOVES[direction][0], pos[1] + MOVES[direction][1]
        if 0 <= r < self.height and 0 <= c < self.width and self.grid[r, c] != "#":
            return r, c
        return pos

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.int64, dict]:
        super().reset(seed=seed)
        self.pos, self.steps = self.start, 0
        return self._obs(), {"cell": self.cell()}

    def step(self, action: Any) -> tuple[np.int64, float, bool, bool, dict]:
        action = int(action)
        if not 0 <= action < 4:
            raise ConfigError(f"Grid actions are 0..3 (UP, RIGHT, DOWN, LEFT), got {action!r}")
        u = self.np_random.random()
        # Slip to the perpendicular directions (action +-1 mod 4) with slip/2 each.
        direction = action if u >= self.slip else (action + (1 if u < self.slip / 2 else 3)) % 4
        old = self.pos
        self.pos = self._target(old, direction)
        self.steps += 1
        here = self.cell()
        terminated = here in "GP"
        reward = self.goal_reward if here == "G" else self.pit_reward if here == "P" else self.step_reward
        truncated = not terminated and self.steps >= self.max_steps
        info = {
            "cell": here,
            "action": ACTION_NAMES[action],
            "direction": ACTION_NAMES[direction],
            "moved": self.pos != old,
        }
        return self._obs(), float(reward), terminated, truncated, info

    # -- rendering -----------------------------------------------------------------------

    def render(self) -> Any:
        if self.render_mode == "ansi":
            return self._render_ansi()
        if self.render_mode == "rgb_array":
            return self._render_rgb()
        return None

    def _render_ansi(self) -> str:
        rows = []
        for r in range(self.height):
            chars = [
                "C" if (r, c) == self.pos else ("." if self.grid[r, c] == "S" else self.grid[r, c])
                for c in range(self.width)
            ]
            rows.append(" ".join(chars))
        return "\n".join(rows) + "\n"

    def _render_rgb(self) -> np.ndarray:
        """(height * cell_px, width * cell_px, 3) uint8: floor tiles, brick walls, puddles, a flag, the cat."""
        cp = self.cell_px
        if self._background is None:
            img = np.zeros((self.height * cp, self.width * cp, 3), dtype=np.uint8)
            puddle, pmask = _sprite(_PUDDLE, cp)
            flag, fmask = _sprite(_FLAG, cp)
            for r in range(self.height):
                for c in range(self.width):
                    tile = img[r * cp : (r + 1) * cp, c * cp : (c + 1) * cp]
                    tile[:] = _FLOOR if (r + c) % 2 == 0 else _FLOOR_ALT
                    tile[0, :] = tile[:, 0] = _GRID_LINE
                    ch = self.grid[r, c]
                    if ch == "#":
                        tile[:] = _WALL
                        tile[:: max(cp // 4, 2), :] = _MORTAR  # brick courses
                        tile[:, :: max(cp // 2, 2)] = _MORTAR
                    elif ch == "P":
                        tile[pmask] = puddle[pmask]
                    elif ch == "G":
                        tile[fmask] = flag[fmask]
            self._background = img
        img = self._background.copy()
        cat, cmask = _sprite(_CAT, cp)
        r, c = self.pos
        tile = img[r * cp : (r + 1) * cp, c * cp : (c + 1) * cp]
        tile[cmask] = cat[cmask]
        return img
