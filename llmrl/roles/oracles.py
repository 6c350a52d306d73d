"""Ground truth for the planner roles on MiniGrid: the oracle's next sub-goal and scripted skills.

These read the environment's internals on purpose (`env.unwrapped.grid`, `.carrying`, ...): the
oracle is the upper bound ELLM is compared against, and scripted skills let SayCan be tested
without training a policy per skill. The LLM roles themselves never look inside an env.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import gymnasium as gym

from llmrl.roles.goals import Skill

__all__ = [
    "doorkey_subgoal",
    "doorkey_walkthrough",
    "MiniGridSubgoals",
    "minigrid_skills",
    "find_object",
    "plan_action",
]

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


class MiniGridSubgoals(gym.Wrapper):
    """Puts the ground-truth next sub-goal in `info["oracle_goals"]` (a one-item list) for ELLM's
    `suggest="oracle"`. Wrap each env before vectorising it."""

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


def minigrid_skills(env: gym.Env, *, distractors: bool = True) -> list[Skill]:
    """Scripted skills for DoorKey-like MiniGrid tasks, with feasibility checks as affordances.

    "pick up the key", "open the door", "reach the goal" (and, with `distractors`, "drop the key"
    and "go to the door", feasible but useless: the LLM part has to rule them out).
    """
    u: Any = env.unwrapped

    def front() -> Any:
        x, y = u.front_pos
        return u.grid.get(int(x), int(y))

    def reach(kind: str, act: int, *, face: bool = True):
        def policy(obs: Any, info: dict) -> int:
            pos = find_object(u, kind)
            if pos is None:
                return act
            step = plan_action(u, pos, face=face)
            return act if step is None else step

        return policy

    def can_face(kind: str) -> bool:
        pos = find_object(u, kind)
        if pos is None:
            return False
        return plan_action(u, pos, face=True) is not None or _facing(u, pos)

    def key_aff(obs: Any, info: dict) -> float:
        return float(u.carrying is None and can_face("key"))

    def door_aff(obs: Any, info: dict) -> float:
        pos = find_object(u, "door")
        if pos is None or u.grid.get(*pos).is_open:
            return 0.0
        door = u.grid.get(*pos)
        has_key = u.carrying is not None and u.carrying.type == "key" and u.carrying.color == door.color
        return float((has_key or not door.is_locked) and can_face("door"))

    def goal_aff(obs: Any, info: dict) -> float:
        pos = find_object(u, "goal")
        return float(pos is not None and plan_action(u, pos, face=False) is not None)

    def door_open(obs: Any, info: dict) -> bool:
        pos = find_object(u, "door")
        return pos is None or u.grid.get(*pos).is_open

    skills = [
        Skill(
            "pick up the key",
            reach("key", PICKUP),
            lambda o, i: u.carrying is not None and u.carrying.type == "key",
            key_aff,
        ),
        Skill("open the door", reach("door", TOGGLE), door_open, door_aff),
        Skill(
            "reach the goal",
            reach("goal", FORWARD, face=False),
            lambda o, i: (int(u.agent_pos[0]), int(u.agent_pos[1])) == find_object(u, "goal"),
            goal_aff,
        ),
    ]
    if distractors:
        skills += [
            Skill(
                "drop the key",
                lambda o, i: DROP,
                lambda o, i: u.carrying is None,
                lambda o, i: float(u.carrying is not None and front() is None),
                max_steps=1,
            ),
            Skill(
                "go to the door",
                reach("door", FORWARD),
                lambda o, i: _facing(u, find_object(u, "door")),
                lambda o, i: float(can_face("door")),
            ),
        ]
    return skills


def doorkey_walkthrough(env: gym.Env, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Solve DoorKey with the scripted skills from each seed and keep the info at the start of every
    phase (reset, key picked up, door opened): a fixed set of states for judging suggestions.

    `env` must set `info["oracle_goals"]` (MiniGridSubgoals inside it); wrap it in ELLMGoals to get
    its suggestions in `info["goals"]`. Returns dicts with seed, phase (0, 1, 2), text, goals, oracle.
    """
    skills = {s.name: s for s in minigrid_skills(env, distractors=False)}
    out: list[dict[str, Any]] = []
    for seed in seeds:
        obs, info = env.reset(seed=int(seed))
        for phase, name in enumerate(("pick up the key", "open the door", "reach the goal")):
            out.append(
                {
                    "seed": int(seed),
                    "phase": phase,
                    "text": info.get("text", ""),
                    "goals": list(info.get("goals", [])),
                    "oracle": info["oracle_goals"][0],
                }
            )
            skill = skills[name]
            for _ in range(skill.max_steps):
                obs, _, term, trunc, info = env.step(skill.policy(obs, info))
                if skill.done(obs, info) or term or trunc:
                    break
    return out


def _facing(u: Any, pos: tuple[int, int] | None) -> bool:
    if pos is None:
        return False
    x, y = u.front_pos
    return (int(x), int(y)) == tuple(pos)
