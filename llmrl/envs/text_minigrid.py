"""MiniGrid and BabyAI in words: the mission, what the agent sees in its own frame, what it carries.

    "Mission: use the key to open the door and then get to the goal. You see a yellow key 1 step ahead;
     a locked yellow door 1 step left. You carry nothing."

Positions are in the agent's frame ("2 steps left, 1 step ahead"), read from the agent's partial view
(the standard 7x7 egocentric grid, agent at the bottom centre facing up), so the text says only what the
agent could know. Captions come from the difference between two snapshots: what it carries, the cell in
front of it, the cell it stands on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from llmrl.envs.minigrid import FlatImage
from llmrl.envs.text import SnapshotDescriber, steps_phrase

__all__ = ["MiniGridDescriber", "MiniGridSnapshot", "MAX_OBJECTS", "minigrid_summary"]

MAX_OBJECTS = 8
"""At most this many seen objects are listed, nearest first (LavaCrossing shows dozens of lava cells)."""

# minigrid.core.constants, copied as plain tuples so that this module imports without minigrid.
_OBJECTS = ("unseen", "empty", "wall", "floor", "door", "key", "ball", "box", "goal", "lava", "agent")
_COLORS = ("red", "green", "blue", "purple", "yellow", "grey")
_DOOR_STATES = ("open", "closed", "locked")
_SKIP = {"unseen", "empty", "wall", "floor", "agent"}
_DROP, _TOGGLE = 4, 5  # MiniGrid's Actions.drop / Actions.toggle


@dataclass(frozen=True)
class MiniGridSnapshot:
    """What the MiniGrid describer keeps of a state (plain, hashable data)."""

    mission: str
    seen: tuple[tuple[str, int, int], ...]
    """(noun phrase, steps right (negative: left), steps ahead), nearest first."""
    carrying: str | None
    """Noun phrase of the carried object ("yellow key") or None."""
    front: tuple[str, str, str]
    """(type, colour, state) of the cell in front of the agent ("door", "yellow", "locked")."""
    under: str
    """Type of the cell the agent stands on ("goal", "lava", "empty")."""
    pose: tuple[int, int, int]
    """(x, y, direction) of the agent in the full grid, to tell a toggle from a move."""


def _phrase(kind: str, color: str, state: str) -> str:
    if kind == "goal":
        return "the goal"
    if kind == "lava":
        return "lava"
    if kind == "door":
        words = f"{state} {color} door"
        return ("an " if state == "open" else "a ") + words
    return f"a {color} {kind}"


def _where(right: int, ahead: int) -> str:
    parts = [steps_phrase(right, "right", "left"), steps_phrase(ahead, "ahead", "behind")]
    return ", ".join(p for p in parts if p)


class MiniGridDescriber(SnapshotDescriber):
    """Describer for every `minigrid.MiniGridEnv` (MiniGrid and BabyAI); needs the env, not only its obs."""

    family = "minigrid"

    def snapshot(self, env: gym.Env | None, obs: Any) -> MiniGridSnapshot:
        if env is None:
            raise ValueError("MiniGridDescriber reads the env's state; pass the env")
        base: Any = env.unwrapped
        view = int(base.agent_view_size)
        image = obs.get("image") if isinstance(obs, dict) else obs
        if not (isinstance(image, np.ndarray) and image.shape == (view, view, 3)):
            # an observation wrapper changed the obs: the view the flat-view wrapper kept, else rebuilt
            image = _kept_view(env)
            if image is None or image.shape != (view, view, 3):
                image = base.gen_obs()["image"]
        cx, cy = view // 2, view - 1  # the agent's cell in its view, facing up (towards y = 0)
        seen = []
        for i, j in zip(*np.nonzero(image[:, :, 0] > 3)):  # door, key, ball, box, goal, lava
            if (i, j) == (cx, cy):
                continue  # the carried object is drawn on the agent's own cell
            kind, color, state = (
                _OBJECTS[image[i, j, 0]],
                _COLORS[image[i, j, 1]],
                _DOOR_STATES[image[i, j, 2] % 3],
            )
            if kind not in _SKIP:
                seen.append((_phrase(kind, color, state), int(i) - cx, cy - int(j)))
        seen.sort(key=lambda s: (abs(s[1]) + abs(s[2]), s[2], s[1], s[0]))
        carrying = base.carrying
        front_cell = base.grid.get(*base.front_pos) if _inside(base, base.front_pos) else None
        under = base.grid.get(*base.agent_pos)
        return MiniGridSnapshot(
            mission=str(base.mission),
            seen=tuple(seen[:MAX_OBJECTS]),
            carrying=None if carrying is None else f"{carrying.color} {carrying.type}",
            front=_cell_key(front_cell),
            under="empty" if under is None else under.type,
            pose=(int(base.agent_pos[0]), int(base.agent_pos[1]), int(base.agent_dir)),
        )

    def text(self, snap: MiniGridSnapshot) -> str:
        seen = "; ".join(f"{name} {_where(r, a)}" for name, r, a in snap.seen) or "nothing special"
        if snap.front[0] == "wall":
            seen = "a wall right in front" if not snap.seen else f"{seen}; a wall right in front"
        carry = f"a {snap.carrying}" if snap.carrying else "nothing"
        mission = snap.mission.rstrip(".")
        return f"Mission: {mission}. You see {seen}. You carry {carry}."

    def caption(
        self,
        prev: MiniGridSnapshot,
        snap: MiniGridSnapshot,
        action: Any,
        reward: float,
        terminated: bool,
        truncated: bool,
        info: dict,
    ) -> str:
        events = []
        if snap.carrying != prev.carrying:
            if prev.carrying is not None and int(action) == _DROP:
                events.append(f"dropped the {prev.carrying}")
            if snap.carrying is not None:
                events.append(f"picked up the {snap.carrying}")
        if snap.pose == prev.pose and int(action) == _TOGGLE and snap.front != prev.front:
            kind, color, state = prev.front
            if kind == "door" and snap.front[2] == "open":
                events.append(f"opened the {color} door")
            elif kind == "door" and snap.front[2] == "closed":
                events.append(f"closed the {color} door")
            elif kind == "box":
                events.append(f"opened the {color} box")
        if terminated:
            if snap.under == "lava":
                events.append("fell into the lava")
            elif snap.under == "goal" and reward > 0:
                events.append("reached the goal")
            elif reward > 0:
                events.append("completed the mission")
        return " and ".join(events)


def _kept_view(env: gym.Env) -> np.ndarray | None:
    """The last view a `FlatImage` in `env`'s wrapper chain turned into its flat observation, or None."""
    e: Any = env
    while isinstance(e, gym.Wrapper):
        if isinstance(e, FlatImage):
            return e.view
        e = e.env
    return None


def _inside(base: Any, pos: Any) -> bool:
    return 0 <= int(pos[0]) < base.grid.width and 0 <= int(pos[1]) < base.grid.height


def _cell_key(cell: Any) -> tuple[str, str, str]:
    if cell is None:
        return ("empty", "", "")
    state = ""
    if cell.type == "door":
        state = "open" if cell.is_open else "locked" if cell.is_locked else "closed"
    return (cell.type, cell.color, state)


def minigrid_summary(text: str) -> str:
    """Keep only the mission and what the agent carries from a MiniGrid state text.

    Positions make almost every state's text unique; the mission and the inventory (what ELLM's
    Crafter captions also hold) are what decides the next sub-goal, and they repeat, so the LLM is
    asked a handful of distinct prompts per task instead of one per episode.

    >>> minigrid_summary("Mission: open the door. You see a yellow key 1 step left. You carry nothing.")
    'Mission: open the door. You carry nothing.'
    """
    keep = [s for s in re.split(r"(?<=\.)\s+", text.strip()) if s.startswith(("Mission", "You carry"))]
    return " ".join(keep) if keep else text
