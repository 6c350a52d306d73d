"""Atari in words, from OCAtari's object list read out of the console RAM (no pixels, no vision model).

    Breakout: "paddle at x=96; ball at x=24, y=104, moving down-left, left of the paddle; 5 lives"
    Pong:     "your paddle (right) at y=72; opponent paddle at y=128; ball at x=40, y=128, moving down-left,
               below your paddle"
    Montezuma's Revenge: "room 1; player at x=80, y=80; key at x=16, y=104; skull at x=88, y=168, moving
               right; doors at x=24, 136; rope at x=112; ladders at x=80, 24, 136; 5 lives"

The describer works on any ALE env, preprocessed or not: it reads `env.unwrapped.ale.getRAM()` and runs
OCAtari's RAM extractor for the game (Delfosse et al. 2023, "OCAtari: Object-Centric Atari 2600 RL
Environments"). Positions are object centres in screen pixels (160x210), quantised to 8 pixels so that
near-identical frames give identical text. Motion comes from the previous step's positions.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np

from llmrl.envs.text import SnapshotDescriber
from llmrl.errors import ConfigError, optional_import

__all__ = ["AtariDescriber", "GRID_PX"]

GRID_PX = 8
"""Positions in the text are multiples of this many pixels."""

_MOVING = {"Ball", "Skull", "Spider", "Snake", "Enemy"}
# Montezuma's Revenge: what to list (and its name in the text); platforms, walls and belts are left out.
_MR_ITEMS = {"Key": "key", "Amulet": "amulet", "Torch": "torch", "Sword": "sword", "Ruby": "jewel"}
_MR_ENEMIES = {"Skull": "skull", "Spider": "spider", "Snake": "snake", "Beam": "laser beam"}
_MR_PLACES = {"Barrier": "doors", "Rope": "rope", "Ladder": "ladders"}


def _q(v: float) -> int:
    return int(round(float(v) / GRID_PX) * GRID_PX)


def _motion(dx: float, dy: float) -> str:
    vertical = "down" if dy > 0 else "up" if dy < 0 else ""
    horizontal = "right" if dx > 0 else "left" if dx < 0 else ""
    return "-".join(p for p in (vertical, horizontal) if p)


class AtariDescriber(SnapshotDescriber):
    """Describer for ALE games that OCAtari's RAM mode supports; Breakout, Pong and Montezuma's Revenge get
    game-specific text, the others a list of objects."""

    family = "atari"

    def __init__(self, base: Any) -> None:
        super().__init__()
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # OCAtari imports pygame
        ram_info = optional_import("ocatari.ram.extract_ram_info", "atari", package="ocatari")
        self.game = str(getattr(base, "_game", "")).replace("_", "").lower()
        try:
            ram_info.init_objects(self.game, False)
        except (KeyError, AttributeError) as err:
            raise ConfigError(
                f"OCAtari has no RAM object extractor for the Atari game {self.game!r}"
            ) from err
        self._ram_info = ram_info
        self._objects: list[Any] = []
        self._last: dict[tuple[str, int], tuple[float, float]] = {}

    # snapshot: (game state tuple) = (objects ((category, qx, qy, motion), ...), lives, room)
    def snapshot(
        self, env: gym.Env | None, obs: Any
    ) -> tuple[tuple[tuple[str, int, int, str], ...], int, int]:
        if env is None:
            raise ValueError("AtariDescriber reads the console RAM; pass the env")
        ale = env.unwrapped.ale  # type: ignore[attr-defined]
        # int64 copy: some extractors do arithmetic that overflows uint8 under NumPy 2 rules.
        ram = ale.getRAM().astype(np.int64)
        if not self._objects:
            self._objects = self._ram_info.init_objects(self.game, False)
        self._ram_info.detect_objects_ram(self._objects, ram, self.game, False)
        objects: list[tuple[str, int, int, str]] = []
        last: dict[tuple[str, int], tuple[float, float]] = {}
        counts: dict[str, int] = {}
        for obj in self._objects:
            if not obj:
                continue
            cat = obj.category
            k = counts.get(cat, 0)
            counts[cat] = k + 1
            cx, cy = obj.x + obj.w / 2, obj.y + obj.h / 2
            last[(cat, k)] = (cx, cy)
            motion = ""
            if cat in _MOVING and (cat, k) in self._last:
                px, py = self._last[(cat, k)]
                motion = _motion(np.sign(round(cx - px)), np.sign(round(cy - py)))
            objects.append((cat, _q(cx), _q(cy), motion))
        self._last = last
        room = int(ram[3]) if self.game == "montezumarevenge" else -1
        return tuple(objects), int(ale.lives()), room

    def reset(self, env: gym.Env | None, obs: Any) -> str:
        self._objects, self._last = [], {}
        return super().reset(env, obs)

    def text(self, snap: Any) -> str:
        objects, lives, room = snap
        by_cat: dict[str, list[tuple[str, int, int, str]]] = {}
        for o in objects:
            by_cat.setdefault(o[0], []).append(o)
        lives_text = f"{lives} {'life' if lives == 1 else 'lives'}" if lives > 0 else ""  # Pong has none
        if self.game == "breakout":
            parts = [self._breakout(by_cat)]
        elif self.game == "pong":
            parts = [self._pong(by_cat)]
        elif self.game == "montezumarevenge":
            parts = [f"room {room}", self._montezuma(by_cat)]
        else:
            parts = [self._generic(objects)]
        return "; ".join(p for p in (*parts, lives_text) if p)

    @staticmethod
    def _at(o: tuple[str, int, int, str], *, x: bool = True, y: bool = True) -> str:
        coords = ([f"x={o[1]}"] if x else []) + ([f"y={o[2]}"] if y else [])
        return "at " + ", ".join(coords) + (f", moving {o[3]}" if o[3] else "")

    def _breakout(self, by_cat: dict) -> str:
        paddle = by_cat.get("Player", [None])[0]
        ball = by_cat.get("Ball", [None])[0]
        parts = [f"paddle at x={paddle[1]}" if paddle else "no paddle"]
        if ball is None:
            parts.append("no ball in play")
        else:
            rel = ""
            if paddle:
                rel = (
                    "above the paddle"
                    if ball[1] == paddle[1]
                    else f"{'left' if ball[1] < paddle[1] else 'right'} of the paddle"
                )
            parts.append(f"ball {self._at(ball)}" + (f", {rel}" if rel else ""))
        return "; ".join(parts)

    def _pong(self, by_cat: dict) -> str:
        me, them = by_cat.get("Player", [None])[0], by_cat.get("Enemy", [None])[0]
        ball = by_cat.get("Ball", [None])[0]
        parts = [
            f"your paddle (right) at y={me[2]}" if me else "your paddle not visible",
            f"opponent paddle at y={them[2]}" if them else "",
        ]
        if ball is None:
            parts.append("no ball in play")
        else:
            rel = ""
            if me:
                rel = (
                    "level with your paddle"
                    if ball[2] == me[2]
                    else f"{'above' if ball[2] < me[2] else 'below'} your paddle"
                )
            parts.append(f"ball {self._at(ball)}" + (f", {rel}" if rel else ""))
        return "; ".join(p for p in parts if p)

    def _montezuma(self, by_cat: dict) -> str:
        parts = []
        for player in by_cat.get("Player", [])[:1]:
            parts.append(f"player {self._at(player)}")
        for cat, name in {**_MR_ITEMS, **_MR_ENEMIES}.items():
            parts.extend(f"{name} {self._at(o)}" for o in by_cat.get(cat, []))
        for cat, name in _MR_PLACES.items():
            xs = sorted({o[1] for o in by_cat.get(cat, [])})
            if xs:
                parts.append(f"{name if len(xs) > 1 else name.rstrip('s')} at x={', '.join(map(str, xs))}")
        return "; ".join(parts)

    def _generic(self, objects: tuple) -> str:
        listed = [o for o in objects if o[0] == "Player"] + [o for o in objects if o[0] != "Player"]
        return "; ".join(f"{o[0].lower().replace('_', ' ')} {self._at(o)}" for o in listed[:8])

    def caption(
        self, prev: Any, snap: Any, action: Any, reward: float, terminated: bool, truncated: bool, info: dict
    ) -> str:
        (prev_objs, prev_lives, prev_room), (objs, lives, room) = prev, snap
        events = []
        if self.game == "montezumarevenge":
            if room != prev_room:
                events.append(f"entered room {room}")
            elif reward > 0:
                before = {c: sum(o[0] == c for o in prev_objs) for c in (*_MR_ITEMS, "Barrier")}
                after = {c: sum(o[0] == c for o in objs) for c in (*_MR_ITEMS, "Barrier")}
                events += [f"picked up the {name}" for c, name in _MR_ITEMS.items() if after[c] < before[c]]
                if after["Barrier"] < before["Barrier"]:
                    events.append("opened a door")
                if not events:
                    events.append(f"scored {reward:g} points")
        elif self.game == "breakout" and reward > 0:
            events.append("hit a brick")
        elif self.game == "pong" and reward != 0:
            events.append("won the point" if reward > 0 else "lost the point")
        elif reward > 0:
            events.append(f"scored {reward:g} points")
        if lives < prev_lives:
            events.append("lost a life")
        return " and ".join(events)
