"""MiniGrid for the agents: the flat view they train on, and the ground truth (oracle sub-goals, paths).

    env = llmrl.make("MiniGrid-DoorKey-6x6-v0")               # flat (147,) view: minigrid_env(...)
    env = llmrl.make("MiniGrid-DoorKey-6x6-v0", oracle=True)  # + info["oracle_goals"] (ground truth)

The ground truth reads the environment's internals on purpose (`env.unwrapped.grid`, `.carrying`, ...):
the oracle is the upper bound ELLM is compared against, and `plan_action` drives the scripted skills
SayCan is tested with (`llmrl.roles.saycan.minigrid_skills`). The LLM roles never look inside an env.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np

from llmrl.errors import optional_import

__all__ = [
    "FlatImage",
    "minigrid_env",
    "doorkey_subgoal",
    "MiniGridSubgoals",
    "find_object",
    "plan_action",
    "facing",
    "LEFT",
    "RIGHT",
    "FORWARD",
    "PICKUP",
    "DROP",
    "TOGGLE",
]


class FlatImage(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """MiniGrid's egocentric (7, 7, 3) view as a float32 vector (147,) scaled to [0, 1].

    `view` keeps the last (7, 7, 3) view, so that a describer above this wrapper (`WithText`) reads it
    instead of asking the env to build it again (which costs as much as the env's own step)."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        shape = env.observation_space["image"].shape  # type: ignore[index]
        self.observation_space = gym.spaces.Box(0.0, 1.0, (int(np.prod(shape)),), np.float32)
        self.view: np.ndarray | None = None

    def observation(self, obs: dict) -> np.ndarray:
        self.view = obs["image"]
        # object ids go up to 10, colours to 5, states to 2 (minigrid.core.constants)
        return obs["image"].reshape(-1).astype(np.float32) / 10.0


def minigrid_env(env_id: str = "MiniGrid-DoorKey-6x6-v0", *, oracle: bool = False, **kwargs: Any) -> gym.Env:
    """One MiniGrid/BabyAI env as the agents train on it, what `llmrl.make(env_id)` builds for these ids:
    the flat (147,) view (`FlatImage`); with `oracle`, `info["oracle_goals"]` (ground truth, under the view).
    `kwargs` go to `gym.make` (e.g. render_mode). The state in words comes from `WithText` over it."""
    optional_import("minigrid", "minigrid")  # registers the MiniGrid ids
    env: gym.Env = gym.make(env_id, **kwargs)
    if oracle:
        env = MiniGridSubgoals(env)
    return FlatImage(env)


# MiniGrid's actions and direction vectors (minigrid.core.constants.DIR_TO_VEC: 0 = east, then clockwise).
LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE = 0, 1, 2, 3, 4, 5
_DIRS = ((1, 0), (0, 1), (-1, 0), (0, -1))


def find_object(u: Any, kind: str) -> tuple[int, int] | None:
    """Position of the first object of type `kind` on the grid of a MiniGrid env `u`, or None."""
    for j in range(u.grid.height):
        for i in range(u.grid.width):
            cell = u.grid.get(i, j)
            if cell is not None and cell.type == kind:
                return (i, j)
    return None


def doorkey_subgoal(u: Any) -> str:
    """The right next sub-goal of a DoorKey-like MiniGrid env: key, then door, then goal."""
    door = find_object(u, "door")
    if door is not None:
        d = u.grid.get(*door)
        if not d.is_open:
            carrying_key = u.carrying is not None and u.carrying.type == "key"
            return "open the door" if carrying_key or not d.is_locked else "pick up the key"
    return "reach the goal"


class MiniGridSubgoals(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Puts the ground-truth next sub-goal in `info["oracle_goals"]` (a one-item list) for ELLM's
    `suggest="oracle"`. Wrap each env before vectorising it."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "oracle_goals": [doorkey_subgoal(self.env.unwrapped)]}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return (
            obs,
            reward,
            terminated,
            truncated,
            {**info, "oracle_goals": [doorkey_subgoal(self.env.unwrapped)]},
        )


def plan_action(u: Any, target: tuple[int, int], *, face: bool) -> int | None:
    """First action of a shortest path (breadth-first over position x direction) that ends facing
    `target` (face=True) or standing on it (face=False); None if unreachable or already there."""
    start = (int(u.agent_pos[0]), int(u.agent_pos[1]), int(u.agent_dir))

    def arrived(x: int, y: int, d: int) -> bool:
        if not face:
            return (x, y) == target
        dx, dy = _DIRS[d]
        return (x + dx, y + dy) == target

    def passable(x: int, y: int) -> bool:
        if not (0 <= x < u.grid.width and 0 <= y < u.grid.height):
            return False
        cell = u.grid.get(x, y)
        return cell is None or cell.can_overlap()

    if arrived(*start):
        return None
    first: dict[tuple[int, int, int], int] = {start: -1}
    queue = deque([start])
    while queue:
        x, y, d = queue.popleft()
        dx, dy = _DIRS[d]
        moves = [((x, y, (d - 1) % 4), LEFT), ((x, y, (d + 1) % 4), RIGHT)]
        if passable(x + dx, y + dy):
            moves.append(((x + dx, y + dy, d), FORWARD))
        for nxt, act in moves:
            if nxt in first:
                continue
            first[nxt] = act if first[(x, y, d)] == -1 else first[(x, y, d)]
            if arrived(*nxt):
                return first[nxt]
            queue.append(nxt)
    return None


def facing(u: Any, pos: tuple[int, int] | None) -> bool:
    """True if the agent of MiniGrid env `u` faces `pos`."""
    if pos is None:
        return False
    x, y = u.front_pos
    return (int(x), int(y)) == tuple(pos)
