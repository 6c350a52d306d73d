"""States in words: one describer per environment family, and captions of what a transition did.

A describer is created per environment (`llmrl.envs.describers.describer_for(env)` picks the family's) and
keeps the previous state, so that
`step` can caption the transition from the difference ("picked up the yellow key", "lost a life").
Texts are deterministic and short, and continuous values are quantised, so that near-identical states
give identical text: that is what lets an LLM cache hit (benchmarks/envs_text.py measures how often).

    d = describer_for(env)
    obs, info = env.reset(seed=0);  text = d.reset(env, obs)
    obs, r, term, trunc, info = env.step(a);  text, caption = d.step(env, obs, a, r, term, trunc, info)

`WithText` (wrappers.py) does exactly this and puts both into `info`.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

from llmrl.envs.families import family_of
from llmrl.envs.grid import ACTION_NAMES, GridEnv

__all__ = [
    "Describer",
    "SnapshotDescriber",
    "GridDescriber",
    "CartPoleDescriber",
    "AcrobotDescriber",
    "MountainCarDescriber",
    "PendulumDescriber",
    "family_of",  # re-exported from llmrl.envs.families, where the families are
    "quantise",
    "steps_phrase",
]


# -- small helpers ------------------------------------------------------------------------------


def quantise(value: float, step: float) -> float:
    """Round `value` to a multiple of `step` (and turn -0.0 into 0.0, so the text does not flicker)."""
    x = float(value) / step
    q = math.copysign(math.floor(abs(x) + 0.5), x) * step  # half away from zero, symmetric about 0
    return 0.0 if q == 0 else round(q, 6)


def steps_phrase(n: int, positive: str, negative: str, unit: str = "step") -> str:
    """'2 steps left', '1 step ahead', '' for 0."""
    if n == 0:
        return ""
    word = positive if n > 0 else negative
    k = abs(n)
    return f"{k} {unit}{'' if k == 1 else 's'} {word}"


def _sign_word(v: float, positive: str, negative: str, still: str = "still") -> str:
    return positive if v > 0 else negative if v < 0 else still


# -- the protocol and its common implementation ---------------------------------------------------


class Describer:
    """Turns an environment's state into words. One instance per environment (it remembers the last state).

    Subclasses implement `reset` and `step`; most do it through `SnapshotDescriber`.
    """

    family: str = "generic"

    def reset(self, env: gym.Env | None, obs: Any) -> str:
        """The text of the first state of an episode."""
        raise NotImplementedError

    def step(
        self,
        env: gym.Env | None,
        obs: Any,
        action: Any,
        reward: float,
        terminated: bool,
        truncated: bool,
        info: dict,
    ) -> tuple[str, str]:
        """(text of the new state, caption of the transition; "" when nothing notable happened)."""
        raise NotImplementedError


class SnapshotDescriber(Describer):
    """A describer built from three pure functions: `snapshot` (the state that matters, as plain data),
    `text(snapshot)` and `caption(previous, snapshot, ...)`."""

    def __init__(self) -> None:
        self._prev: Any = None

    def snapshot(self, env: gym.Env | None, obs: Any) -> Any:
        raise NotImplementedError

    def text(self, snap: Any) -> str:
        raise NotImplementedError

    def caption(
        self, prev: Any, snap: Any, action: Any, reward: float, terminated: bool, truncated: bool, info: dict
    ) -> str:
        return ""

    def reset(self, env: gym.Env | None, obs: Any) -> str:
        self._prev = self.snapshot(env, obs)
        return self.text(self._prev)

    def step(
        self,
        env: gym.Env | None,
        obs: Any,
        action: Any,
        reward: float,
        terminated: bool,
        truncated: bool,
        info: dict,
    ) -> tuple[str, str]:
        snap = self.snapshot(env, obs)
        caption = self.caption(
            self._prev, snap, action, float(reward), bool(terminated), bool(truncated), info
        )
        self._prev = snap
        return self.text(snap), caption


# -- the Grid world -------------------------------------------------------------------------------


class GridDescriber(SnapshotDescriber):
    """'cat at column 1, row 1; goal 3 cells right, 2 cells up; puddle 3 cells right, 1 cell up; blocked: down, left'.

    Columns count from the left and rows from the bottom, from 1 (the classic 4x3 convention), so "up"
    in the text is UP in the action space.
    """

    family = "grid"

    def __init__(self, env: GridEnv) -> None:
        super().__init__()
        grid = env.grid
        self._h = env.height
        self._goals = [(int(r), int(c)) for r, c in np.argwhere(grid == "G")]
        self._pits = [(int(r), int(c)) for r, c in np.argwhere(grid == "P")]
        self._env = env
        self._cache: dict[tuple[int, int], str] = {}  # one text per cell: the state is the cell

    def snapshot(self, env: gym.Env | None, obs: Any) -> tuple[int, int]:
        w = self._env.width
        return divmod(int(obs), w)

    def _rel(self, pos: tuple[int, int], target: tuple[int, int]) -> str:
        up, right = pos[0] - target[0], target[1] - pos[1]
        parts = [steps_phrase(right, "right", "left", "cell"), steps_phrase(up, "up", "down", "cell")]
        return ", ".join(p for p in parts if p) or "here"

    def _targets(self, name: str, plural: str, pos: tuple[int, int], cells: list[tuple[int, int]]) -> str:
        if not cells:
            return ""
        near = sorted(cells, key=lambda t: (abs(t[0] - pos[0]) + abs(t[1] - pos[1]), t))[:3]
        return f"{name if len(cells) == 1 else plural} {'; '.join(self._rel(pos, t) for t in near)}"

    def text(self, snap: tuple[int, int]) -> str:
        if snap in self._cache:
            return self._cache[snap]
        r, c = snap
        blocked = [ACTION_NAMES[a].lower() for a in range(4) if self._env._target(snap, a) == snap]
        parts = [
            f"cat at column {c + 1}, row {self._h - r}",
            self._targets("goal", "goals", snap, self._goals),
            self._targets("puddle", "puddles", snap, self._pits),
            f"blocked: {', '.join(blocked)}" if blocked else "",
        ]
        text = "; ".join(p for p in parts if p)
        self._cache[snap] = text
        return text

    def caption(
        self, prev: Any, snap: Any, action: Any, reward: float, terminated: bool, truncated: bool, info: dict
    ) -> str:
        cell = info["cell"] if "cell" in info else self._env.cell(snap)
        if terminated and cell == "G":
            return "reached the goal"
        if terminated and cell == "P":
            return "fell into the puddle"
        events = []
        direction = info.get("direction")
        if direction is not None and direction != ACTION_NAMES[int(action)]:
            events.append(f"slipped {direction.lower()}")
        if prev == snap:
            events.append("bumped into a wall")
        return " and ".join(events)


# -- classic control (from the observation alone, so native vector envs work too) ----------------


class CartPoleDescriber(SnapshotDescriber):
    """'cart at x=+0.1 moving right; pole leans right 4 deg, turning right'. Angles in 2-degree bins."""

    family = "cartpole"

    def snapshot(self, env: gym.Env | None, obs: Any) -> tuple[float, ...]:
        x, v, th, w = (float(o) for o in np.asarray(obs).reshape(-1)[:4])
        return (
            quantise(x, 0.1),
            quantise(v, 0.5),
            quantise(math.degrees(th), 2),
            quantise(math.degrees(w), 20),
        )

    def text(self, snap: tuple[float, ...]) -> str:
        x, v, th, w = snap
        cart = f"cart at x={x:+.1f}" + ("" if v == 0 else f" moving {_sign_word(v, 'right', 'left')}")
        pole = (
            "pole upright" if th == 0 else f"pole leans {_sign_word(th, 'right', 'left')} {abs(th):.0f} deg"
        )
        turn = "" if w == 0 else f", turning {_sign_word(w, 'right', 'left')}"
        return f"{cart}; {pole}{turn}"

    def caption(
        self, prev: Any, snap: Any, action: Any, reward: float, terminated: bool, truncated: bool, info: dict
    ) -> str:
        if not terminated:
            return ""
        return "the cart left the track" if abs(snap[0]) >= 2.4 else "the pole fell"


class AcrobotDescriber(SnapshotDescriber):
    """'tip height -1.5 (goal above +1.0); upper link 30 deg right of down, lower link bent 45 deg left;
    swinging right'. Angles in 15-degree bins."""

    family = "acrobot"

    def snapshot(self, env: gym.Env | None, obs: Any) -> tuple[float, ...]:
        c1, s1, c2, s2, w1, w2 = (float(o) for o in np.asarray(obs).reshape(-1)[:6])
        t1, t2 = math.atan2(s1, c1), math.atan2(s2, c2)
        height = -c1 - math.cos(t1 + t2)
        return (
            quantise(height, 0.25),
            quantise(math.degrees(t1), 15),
            quantise(math.degrees(t2), 15),
            quantise(w1, 1.0),
        )

    def text(self, snap: tuple[float, ...]) -> str:
        h, t1, t2, w1 = snap
        upper = (
            "upper link hangs down"
            if t1 == 0
            else f"upper link {abs(t1):.0f} deg {_sign_word(t1, 'right', 'left')} of down"
        )
        lower = (
            "lower link straight"
            if t2 == 0
            else f"lower link bent {abs(t2):.0f} deg {_sign_word(t2, 'right', 'left')}"
        )
        swing = "" if w1 == 0 else f"; swinging {_sign_word(w1, 'right', 'left')}"
        return f"tip height {h:+.2f} (goal above +1.00); {upper}, {lower}{swing}"

    def caption(
        self, prev: Any, snap: Any, action: Any, reward: float, terminated: bool, truncated: bool, info: dict
    ) -> str:
        return "swung the tip above the line" if terminated else ""


class MountainCarDescriber(SnapshotDescriber):
    """'car at x=-0.50 (flag at +0.50), moving right at speed 0.010'. Position in 0.05, speed in 0.005 bins."""

    family = "mountaincar"

    def snapshot(self, env: gym.Env | None, obs: Any) -> tuple[float, float]:
        x, v = (float(o) for o in np.asarray(obs).reshape(-1)[:2])
        return quantise(x, 0.05), quantise(v, 0.005)

    def text(self, snap: tuple[float, float]) -> str:
        x, v = snap
        motion = (
            "standing still" if v == 0 else f"moving {_sign_word(v, 'right', 'left')} at speed {abs(v):.3f}"
        )
        return f"car at x={x:+.2f} (valley bottom -0.52, flag at +0.50), {motion}"

    def caption(
        self, prev: Any, snap: Any, action: Any, reward: float, terminated: bool, truncated: bool, info: dict
    ) -> str:
        return "reached the flag" if terminated else ""


class PendulumDescriber(SnapshotDescriber):
    """'pendulum 30 deg right of upright, turning left at 2.0 rad/s'. Angle in 10-degree, speed in 0.5 bins."""

    family = "pendulum"

    def snapshot(self, env: gym.Env | None, obs: Any) -> tuple[float, float]:
        c, s, w = (float(o) for o in np.asarray(obs).reshape(-1)[:3])
        # theta = 0 is upright; positive theta is counter-clockwise, i.e. to the left seen from the front.
        return quantise(math.degrees(math.atan2(s, c)), 10), quantise(w, 0.5)

    def text(self, snap: tuple[float, float]) -> str:
        th, w = snap
        where = (
            "pendulum upright"
            if th == 0
            else f"pendulum {abs(th):.0f} deg {_sign_word(th, 'left', 'right')} of upright"
        )
        turn = "still" if w == 0 else f"turning {_sign_word(w, 'left', 'right')} at {abs(w):.1f} rad/s"
        return f"{where}, {turn}"
