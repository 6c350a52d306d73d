"""Short manuals, one per supported family, written for this project: the goal, the objects, what helps
and what hurts. Roles feed them to an LLM (rewards from a manual, ELLM's context), so they use the same
words as the describers and captions ("puddle", "key", "door", "skull").

    manual("MiniGrid-DoorKey-6x6-v0")   # no env is built
"""

from __future__ import annotations

from llmrl.envs.families import atari_game, family_of_id
from llmrl.errors import ConfigError

__all__ = ["manual", "MANUALS"]

MANUALS: dict[str, str] = {
    "grid": (
        "Grid world. A cat walks on a small grid of cells. Goal: reach the goal cell with the flag (+1, the "
        "episode ends). Objects: the flag (goal), puddles (falling into a puddle gives -1 and ends the "
        "episode), walls (block movement). Actions: up, right, down, left. The floor is slippery: a move "
        "goes the intended way 8 times in 10, otherwise sideways. Every step costs -0.04, so short paths "
        "are better. Helps: moving towards the goal while keeping away from puddles. Hurts: puddles, "
        "bumping into walls, wandering."
    ),
    "minigrid": (
        "MiniGrid. An agent (a red triangle) moves in rooms of a grid world and must complete the mission "
        "written in words. It sees only a 7x7 square in front of it. Actions: turn left, turn right, move "
        "forward, pick up, drop, toggle (open a door or a box), done. Objects: keys, balls and boxes of six "
        "colours; doors (open, closed, or locked: a locked door opens only with a key of the same colour, "
        "carried); the goal square (green); lava (touching it ends the episode with nothing); walls. The "
        "agent carries at most one object. Reward: 1 minus a penalty for the steps taken, only when the "
        "mission is completed. Helps: picking up the key that matches a locked door, opening doors, "
        "reaching the goal, following the mission. Hurts: lava, wasting steps, dropping the needed key."
    ),
    "breakout": (
        "Breakout (Atari). A paddle at the bottom moves left and right; a ball bounces between it and a wall "
        "of coloured bricks at the top. Goal: break as many bricks as possible. Actions: NOOP, FIRE (serve "
        "a new ball), RIGHT, LEFT. Hitting a brick scores points (higher rows score more). Missing the ball "
        "loses a life; the game ends after 5 lost lives. Helps: keeping the paddle under the ball, serving "
        "with FIRE. Hurts: letting the ball pass the paddle."
    ),
    "pong": (
        "Pong (Atari). You control the right paddle, moving it up and down; the computer controls the left "
        "paddle. Goal: get the ball past the opponent's paddle. Actions: NOOP, FIRE, RIGHT (up), LEFT "
        "(down) and combinations. Winning a point gives +1, losing one gives -1; a game ends when a side "
        "reaches 21. Helps: keeping your paddle level with the ball, hitting it with the paddle's edge to "
        "angle it. Hurts: missing the ball."
    ),
    "montezumarevenge": (
        "Montezuma's Revenge (Atari). The player explores the rooms of a pyramid. Goal: collect items and "
        "treasure and get through the rooms. Objects: keys (picking one up scores points; a key opens one "
        "door), doors (blue barriers that open with a key), ladders and ropes (climb them), platforms and "
        "conveyor belts, jewels, swords (kill an enemy), torches, amulets. Enemies: rolling skulls, "
        "spiders, snakes, laser beams. Touching an enemy or a laser beam, or falling from too high, loses a "
        "life. Helps: getting the key first, then opening the doors, jumping over skulls. Hurts: touching "
        "skulls, snakes, spiders or lasers, falling from a height."
    ),
    "atari": (
        "An Atari 2600 game. The score goes up by playing well; losing all lives ends the game. Objects "
        "are listed with their positions on a 160x210 screen (x to the right, y downwards). Helps: "
        "scoring points. Hurts: losing lives."
    ),
    "cartpole": (
        "CartPole. A pole is hinged on a cart that moves left or right along a track. Goal: keep the pole "
        "upright as long as possible (+1 per step, at most 500). Actions: push the cart left, push it "
        "right. The episode ends when the pole leans more than 12 degrees or the cart leaves the track "
        "(2.4 from the centre). Helps: pushing the cart towards the side the pole leans to. Hurts: large "
        "swings, drifting to the track's end."
    ),
    "acrobot": (
        "Acrobot. Two links hang from a fixed joint; only the joint between them is driven. Goal: swing the "
        "tip above a line one link-length above the top joint, as fast as possible (-1 per step until "
        "then). Actions: torque -1, 0, +1 on the middle joint. Helps: pumping energy in time with the "
        "swing. Hurts: torque against the motion."
    ),
    "mountaincar": (
        "MountainCar. A car sits in a valley between two hills; its engine is too weak to drive straight "
        "up the right hill to the flag. Goal: reach the flag at x=0.5 (-1 per step until then). Actions: "
        "accelerate left, do nothing, accelerate right (or a continuous force). Helps: driving back and "
        "forth to build speed, accelerating in the direction of motion. Hurts: fighting the motion."
    ),
    "pendulum": (
        "Pendulum. A pendulum hangs from a pivot and a limited torque drives it. Goal: swing it up and hold "
        "it upright; the cost grows with the angle from upright, the speed and the torque used. Actions: a "
        "torque between -2 and 2. Helps: swinging to build energy, then balancing gently at the top. "
        "Hurts: large torques, spinning."
    ),
}


def manual(env_id: str) -> str:
    """The manual of the family `env_id` belongs to ("llmrl/Grid-v0", "MiniGrid-DoorKey-6x6-v0",
    "ALE/MontezumaRevenge-v5", "CartPole-v1", ...), or of a family name ("minigrid", "atari", ...)."""
    key = str(env_id).lower()
    if key in MANUALS:
        return MANUALS[key]
    family = family_of_id(env_id)
    if family == "atari":  # a game's own manual where there is one, else the one of all Atari games
        return MANUALS.get(atari_game(env_id), MANUALS["atari"])
    if family in MANUALS:
        return MANUALS[family]
    raise ConfigError(
        f"No manual for {env_id!r}. Manuals exist for: {', '.join(sorted(MANUALS))}; "
        "pass your own text to the role instead."
    )
