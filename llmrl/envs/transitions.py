"""Transitions in words, for learning and measuring world models: collect, save, load, split.

    env = llmrl.make("MiniGrid-DoorKey-5x5-v0")
    data = collect(env, 2000, describer=full_describer_for(env), seed=0)        # random play
    save_jsonl(data, "doorkey.jsonl"); data = load_jsonl("doorkey.jsonl")
    train, test = split(data, test_fraction=0.2, seed=0)                        # by episode

Two kinds of state text:
- fully observable (`FullGridDescriber`, `FullMiniGridDescriber`): one `name: value` line per part of the
  state (the agent, what it carries, each object, the walls), so the next state follows from this one and
  the action, and a state *difference* is just the lines that changed (`state_diff` / `apply_diff`).
  With `hints=True` (the default) a last line names what is next to the agent (`around:` on the Grid,
  `ahead:` on MiniGrid). It is *derived*: `describer.derive(text without it)` adds it back, so a world
  model reads it but is taught and asked only the other lines (`describer.derived` names it);
- the agent's egocentric partial view (`EgocentricDescriber`, the default MiniGrid text): part of the next
  state can be unknowable (an object that comes into view), so each transition records `predictable`:
  False when the next view shows an object the current view did not.

The file format (JSON Lines, one transition an object, UTF-8): `{"env_id": str, "episode": int, "t": int,
"state": str, "action": str, "action_id": int, "next_state": str, "reward": float, "terminated": bool,
"truncated": bool, "predictable": bool, "source": str}`. `source` names the policy that acted ("random",
"expert", ...). Nothing is downloaded: the data comes from llmrl's own envs and agents.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from llmrl.envs.adapters import BatchCore
from llmrl.envs.grid import ACTION_NAMES, GridEnv
from llmrl.envs.text import SnapshotDescriber, family_of
from llmrl.envs.text_minigrid import MiniGridDescriber, MiniGridSnapshot
from llmrl.errors import ConfigError

__all__ = [
    "Transition",
    "FullGridDescriber",
    "FullMiniGridDescriber",
    "EgocentricDescriber",
    "MINIGRID_ACTIONS",
    "action_names",
    "full_describer_for",
    "collect",
    "save_jsonl",
    "load_jsonl",
    "split",
    "state_diff",
    "apply_diff",
    "strip_derived",
    "NO_CHANGE",
    "MiniGridTextFeatures",
    "TextFeatures",
]

MINIGRID_ACTIONS = ("turn left", "turn right", "move forward", "pick up", "drop", "toggle", "done")
"""MiniGrid's seven actions in the manual's words, in action-id order."""
NO_CHANGE = "no change"
"""The state difference when nothing changed."""
_DIRECTIONS = ("right", "down", "left", "up")  # MiniGrid's agent_dir 0..3


@dataclass(frozen=True)
class Transition:
    """One step in words. `done` for a world model is `terminated` (a time limit is not dynamics)."""

    state: str
    action: str
    next_state: str
    reward: float
    terminated: bool
    action_id: int = -1
    truncated: bool = False
    predictable: bool = True
    """False when the next state shows something the state could not tell (a partial view)."""
    env_id: str = ""
    episode: int = 0
    t: int = 0
    source: str = ""


def action_names(env: gym.Env) -> tuple[str, ...]:
    """The env's actions in words ('up', ... for the Grid; 'turn left', ... for MiniGrid)."""
    family = family_of(env)
    if family == "grid":
        return tuple(a.lower() for a in ACTION_NAMES)
    if family == "minigrid":
        return MINIGRID_ACTIONS[: int(env.action_space.n)]  # type: ignore[attr-defined]
    raise ConfigError(f"no action words for the {family!r} family; pass action names explicitly")


# -- fully observable describers --------------------------------------------------------------------


def _derive(text: str, name: str, value: Callable[[dict[str, str]], str]) -> str:
    """`text` with the derived line `name` put last, its value computed from the other lines."""
    lines = _lines(text)
    if name in lines:
        raise ConfigError(f"derive() takes a state without its derived line {name!r}")
    return f"{text}\n{name}: {value(lines)}"


def strip_derived(text: str, derived: Sequence[str]) -> str:
    """`text` without its derived lines (those named in `derived`)."""
    if not derived:
        return text
    return "\n".join(ln for ln in text.split("\n") if ln.partition(": ")[0] not in derived)


class FullGridDescriber(SnapshotDescriber):
    """The whole Grid: the map (rows top to bottom), the cat's cell and (hints=True) what is around it.

        map: ...G/.#.P/S...
        cat: column 1, row 1
        around: up free, right free, down edge, left edge

    Columns count from the left and rows from the bottom, from 1, as in `GridDescriber`. `around` says,
    for each move, what the cell there holds: free, wall, goal, pit, or edge (off the map).
    """

    family = "grid"
    _CELLS = {"#": "wall", "G": "goal", "P": "pit"}
    _MOVES = (("up", -1, 0), ("right", 0, 1), ("down", 1, 0), ("left", 0, -1))

    def __init__(self, env: GridEnv, *, hints: bool = True) -> None:
        super().__init__()
        self._env = env
        self._map = "/".join("".join(row) for row in env.grid)
        self.derived: tuple[str, ...] = ("around",) if hints else ()

    def snapshot(self, env: gym.Env | None, obs: Any) -> tuple[int, int]:
        return divmod(int(obs), self._env.width)

    def text(self, snap: tuple[int, int]) -> str:
        r, c = snap
        core = f"map: {self._map}\ncat: column {c + 1}, row {self._env.height - r}"
        return self.derive(core) if self.derived else core

    def derive(self, core: str) -> str:
        """`core` (the map and cat lines) with the `around` line added."""

        def around(lines: dict[str, str]) -> str:
            rows = lines["map"].split("/")
            col, _, row = lines["cat"].removeprefix("column ").partition(", row ")
            r, c = len(rows) - int(row), int(col) - 1
            parts = []
            for name, dr, dc in self._MOVES:
                rr, cc = r + dr, c + dc
                inside = 0 <= rr < len(rows) and 0 <= cc < len(rows[rr])
                parts.append(f"{name} {self._CELLS.get(rows[rr][cc], 'free') if inside else 'edge'}")
            return ", ".join(parts)

        return _derive(core, "around", around)


class FullMiniGridDescriber(SnapshotDescriber):
    """Every part of a MiniGrid state that the dynamics use, one `name: value` line each (x right, y down):

        agent: 1,2 facing right
        carrying: nothing
        yellow key: 1,3
        yellow door: 2,1 locked
        goal: 3,3
        walls: 2,2 2,3
        ahead: 2,2 wall

    `walls` lists the inner walls (the outer border is always wall; the grid's size is the describer's
    `size`, read from the env). A carried object's line says `carried`, so the set of lines never changes
    within an episode. Objects with the same name are numbered (`blue ball 2`).
    `ahead` (hints=True) names the cell the agent faces and what is in it: nothing, wall, or an object's
    line name (a door with its state); a successful `move forward` goes there.
    """

    family = "minigrid"

    def __init__(self, *, hints: bool = True, size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.derived: tuple[str, ...] = ("ahead",) if hints else ()
        self.size = size
        """The grid's (width, height), outer walls included; read from the env at each snapshot, needed by
        `derive`."""

    def text(self, snap: tuple[str, ...]) -> str:
        core = "\n".join(snap)
        return self.derive(core) if self.derived else core

    def derive(self, core: str) -> str:
        """`core` (the lines above `ahead`) with the `ahead` line added."""
        if self.size is None:
            raise ConfigError(
                "FullMiniGridDescriber.derive needs the grid's size: pass size=(width, height) or describe a "
                "state first"
            )
        width, height = self.size

        def ahead(lines: dict[str, str]) -> str:
            cell, _, facing = lines["agent"].partition(" facing ")
            x, y = (int(v) for v in cell.split(","))
            dx, dy = ((1, 0), (0, 1), (-1, 0), (0, -1))[_DIRECTIONS.index(facing)]
            x, y = x + dx, y + dy
            here = f"{x},{y}"
            if not (0 < x < width - 1 and 0 < y < height - 1) or here in lines["walls"].split():
                return f"{here} wall"
            for name, value in lines.items():
                where, _, state = value.partition(" ")
                if name not in ("agent", "carrying", "walls") and where == here:
                    return f"{here} {name} {state}".strip()
            return f"{here} nothing"

        return _derive(core, "ahead", ahead)

    def snapshot(self, env: gym.Env | None, obs: Any) -> tuple[str, ...]:
        if env is None:
            raise ConfigError("FullMiniGridDescriber reads the env's state; pass the env")
        u: Any = env.unwrapped
        self.size = (int(u.grid.width), int(u.grid.height))
        x, y = (int(v) for v in u.agent_pos)
        carried = u.carrying
        lines = [
            f"agent: {x},{y} facing {_DIRECTIONS[int(u.agent_dir)]}",
            f"carrying: {'nothing' if carried is None else f'{carried.color} {carried.type}'}",
        ]
        objects: list[tuple[str, str]] = []
        walls = []
        for j in range(1, u.grid.height - 1):
            for i in range(1, u.grid.width - 1):
                cell = u.grid.get(i, j)
                if cell is None:
                    continue
                if cell.type == "wall":
                    walls.append(f"{i},{j}")
                    continue
                name = (
                    "goal"
                    if cell.type == "goal"
                    else "lava"
                    if cell.type == "lava"
                    else (f"{cell.color} {cell.type}")
                )
                value = f"{i},{j}"
                if cell.type == "door":
                    value += " open" if cell.is_open else " locked" if cell.is_locked else " closed"
                objects.append((name, value))
        if carried is not None:
            objects.append((f"{carried.color} {carried.type}", "carried"))
        # a stable order, so that picking up or dropping an object changes one line's value, not the order
        objects.sort(key=lambda o: (o[0], o[1] == "carried"))
        seen: dict[str, int] = {}
        for name, value in objects:
            seen[name] = seen.get(name, 0) + 1
            lines.append(f"{name}{'' if seen[name] == 1 else f' {seen[name]}'}: {value}")
        lines.append(f"walls: {' '.join(walls) if walls else 'none'}")
        return tuple(lines)


class EgocentricDescriber(MiniGridDescriber):
    """The default MiniGrid text (the agent's 7x7 view), plus a test of whether a step was predictable."""

    @staticmethod
    def predictable(prev: MiniGridSnapshot, snap: MiniGridSnapshot) -> bool:
        """False when the new view shows an object the previous view did not (nor the agent carried)."""
        known = {name for name, _, _ in prev.seen} | ({f"a {prev.carrying}"} if prev.carrying else set())
        known |= {n.replace("a locked", "an open").replace("a closed", "an open") for n in known}
        return all(name in known for name, _, _ in snap.seen)


def full_describer_for(env: gym.Env) -> SnapshotDescriber:
    """The fully observable describer of `env`'s family (Grid or MiniGrid/BabyAI)."""
    family = family_of(env)
    if family == "grid":
        return FullGridDescriber(env.unwrapped)  # type: ignore[arg-type]
    if family == "minigrid":
        u: Any = env.unwrapped
        return FullMiniGridDescriber(size=(int(u.width), int(u.height)))
    raise ConfigError(f"no fully observable describer for the {family!r} family (Grid and MiniGrid have one)")


# -- state differences ------------------------------------------------------------------------------


def _lines(text: str) -> dict[str, str]:
    out = {}
    for line in text.split("\n"):
        key, sep, value = line.partition(": ")
        if not sep:
            raise ConfigError(f"state differences need 'name: value' lines; got {line!r}")
        out[key] = value
    return out


def state_diff(state: str, next_state: str) -> str:
    """The lines of `next_state` whose value differs from `state`'s ("no change" if none)."""
    before, after = _lines(state), _lines(next_state)
    if list(before) != list(after):
        raise ConfigError("a state difference needs both states to have the same lines in the same order")
    changed = [f"{k}: {v}" for k, v in after.items() if before[k] != v]
    return "\n".join(changed) or NO_CHANGE


def apply_diff(state: str, diff: str) -> str:
    """`state` with the lines of `diff` put in; raises ValueError for a line naming no part of `state`."""
    if diff.strip() == NO_CHANGE:
        return state
    lines = _lines(state)
    for key, value in _lines(diff.strip()).items():
        if key not in lines:
            raise ValueError(f"the difference names {key!r}, which the state does not have")
        lines[key] = value
    return "\n".join(f"{k}: {v}" for k, v in lines.items())


# -- collecting, saving, splitting ------------------------------------------------------------------

Policy = Callable[[Any, dict], int]


def collect(
    env: gym.Env,
    n: int,
    *,
    describer: SnapshotDescriber | None = None,
    policy: Policy | None = None,
    source: str = "random",
    seed: int = 0,
    env_id: str | None = None,
) -> list[Transition]:
    """`n` transitions of `env` (a single gymnasium.Env) in words, episode after episode.

    describer: the state text (default: the family's fully observable one). policy(obs, info) -> action;
    None acts uniformly at random (seeded). Episodes reset with seeds seed, seed + 1, ...
    """
    if n < 1:
        raise ConfigError(f"collect needs n >= 1 transitions, got {n}")
    describer = describer if describer is not None else full_describer_for(env)
    names = action_names(env)
    rng = np.random.default_rng(seed)
    env_id = env_id if env_id is not None else getattr(env.spec, "id", "") or ""
    out: list[Transition] = []
    episode = 0
    while len(out) < n:
        obs, info = env.reset(seed=seed + episode)
        text = describer.reset(env, obs)
        done, t = False, 0
        while not done and len(out) < n:
            action = (
                int(rng.integers(len(names))) if policy is None else int(policy(obs, {**info, "text": text}))
            )
            prev = describer._prev
            obs, reward, terminated, truncated, info = env.step(action)
            nxt, _ = describer.step(env, obs, action, float(reward), terminated, truncated, info)
            ok = (
                describer.predictable(prev, describer._prev)
                if isinstance(describer, EgocentricDescriber)
                else True
            )
            out.append(
                Transition(
                    text, names[action], nxt, round(float(reward), 4), bool(terminated), action, bool(truncated),
                    ok, env_id, episode, t, source,
                )
            )  # fmt: skip
            text, t, done = nxt, t + 1, terminated or truncated
        episode += 1
    return out


def save_jsonl(transitions: Iterable[Transition], path: str | os.PathLike) -> Path:
    """Write one JSON object a line (see the module docstring); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for tr in transitions:
            f.write(json.dumps(asdict(tr), ensure_ascii=False) + "\n")
    return p


def load_jsonl(path: str | os.PathLike) -> list[Transition]:
    """Read a file written by `save_jsonl`; a line that is not a transition raises ConfigError with its number."""
    out = []
    fields = set(Transition.__dataclass_fields__)
    with Path(path).open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out.append(Transition(**{k: v for k, v in row.items() if k in fields}))
            except (json.JSONDecodeError, TypeError) as err:
                raise ConfigError(f"{path}:{i} is not a transition ({err})") from err
    return out


def split(
    transitions: Sequence[Transition], *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Transition], list[Transition]]:
    """(train, test), split by whole episodes (a test episode is never seen in training)."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    keys = sorted({(tr.source, tr.episode) for tr in transitions})
    rng = np.random.default_rng(seed)
    k = max(1, round(len(keys) * test_fraction))
    test_keys = {keys[i] for i in rng.permutation(len(keys))[:k]}
    train = [tr for tr in transitions if (tr.source, tr.episode) not in test_keys]
    test = [tr for tr in transitions if (tr.source, tr.episode) in test_keys]
    return train, test


# -- observations that real and imagined states both give -------------------------------------------


class MiniGridTextFeatures:
    """A vector read from the fully observable MiniGrid text (`FullMiniGridDescriber`), so an agent sees
    the same kind of observation in a real state and in a state a world model imagined (which exists
    only as text). Shape (len(CHANNELS) * size * size + 5,), float32, values 0/1:

    one plane per channel over the grid's cells (x right, y down, both 0..size-1; the outer wall is never
    marked, as the text does not list it), then the facing one-hot (right, down, left, up) and whether
    anything is carried. Colours are not encoded (one door and one key in DoorKey). A text that does not follow
    the describer's format raises ValueError (a world model's parser rejects those before they get here).
    """

    CHANNELS = (
        "agent",
        "wall",
        "goal",
        "lava",
        "key",
        "ball",
        "box",
        "door locked",
        "door closed",
        "door open",
    )

    def __init__(self, size: int) -> None:
        if size < 3:
            raise ConfigError(f"a MiniGrid is at least 3 cells wide, got size={size}")
        self.size = int(size)
        self.dim = len(self.CHANNELS) * self.size**2 + 5

    @property
    def space(self) -> gym.spaces.Box:
        return gym.spaces.Box(0.0, 1.0, (self.dim,), np.float32)

    def _put(self, out: np.ndarray, channel: str, cell: str) -> None:
        x, y = (int(v) for v in cell.split(","))
        if not (0 <= x < self.size and 0 <= y < self.size):
            raise ValueError(f"cell {cell!r} is outside a {self.size}x{self.size} grid")
        out[(self.CHANNELS.index(channel) * self.size + y) * self.size + x] = 1.0

    def __call__(self, text: str) -> np.ndarray:
        out = np.zeros(self.dim, dtype=np.float32)
        planes = len(self.CHANNELS) * self.size**2
        for line in text.split("\n"):
            name, sep, value = line.partition(": ")
            if not sep:
                raise ValueError(f"not a 'name: value' line: {line!r}")
            if name == "agent":
                cell, _, facing = value.partition(" facing ")
                self._put(out, "agent", cell)
                out[planes + _DIRECTIONS.index(facing)] = 1.0
            elif name == "carrying":
                out[planes + 4] = float(value != "nothing")
            elif name == "walls":
                for cell in value.split():
                    if cell != "none":
                        self._put(out, "wall", cell)
            elif name == "ahead":
                continue  # derived from the lines above
            elif value != "carried":
                cell, _, state = value.partition(" ")
                kind = next(
                    (k for k in ("goal", "lava", "key", "ball", "box", "door") if k in name.split()), None
                )
                if kind is None:
                    raise ValueError(f"unknown object {name!r}")
                self._put(out, f"door {state}" if kind == "door" else kind, cell)
        return out


class TextFeatures(BatchCore):
    """The observation becomes `features(info["text"])` (e.g. `MiniGridTextFeatures` over the fully
    observable text): what an agent needs when a world model's imagined states join its real ones.

        env = TextFeatures(WithText(llmrl.make("MiniGrid-DoorKey-5x5-v0"), describer=FullMiniGridDescriber()),
                           MiniGridTextFeatures(5))
    """

    def __init__(self, env: Any, features: Callable[[str], np.ndarray]) -> None:
        if not isinstance(getattr(features, "space", None), gym.spaces.Box):
            raise ConfigError(
                "TextFeatures needs features with a `space` (a Box), e.g. MiniGridTextFeatures(5)"
            )
        self.features = features  # before the base class asks transform_space
        super().__init__(env)

    def transform_space(self, space: gym.Space) -> gym.Space:
        return self.features.space  # type: ignore[attr-defined]

    def process(self, obs, rewards, terminated, truncated, infos, starts):
        if any("text" not in info for info in infos):
            raise ConfigError("TextFeatures reads info['text']: wrap the env in llmrl.envs.WithText first")
        return np.stack([self.features(info["text"]) for info in infos]), rewards
