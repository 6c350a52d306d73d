"""Gymnasium environments and wrappers, with every state also available in words. No torch, no LLM.

    from llmrl.envs import make, WithText
    env = WithText(make("llmrl/Grid-v0"))
    obs, info = env.reset(seed=0)
    info["text"]      # 'cat at column 1, row 1; goal 3 cells right, 2 cells up; ...'
    info["caption"]   # what the last step did: 'reached the goal', 'picked up the yellow key', ''

Importing this package registers llmrl's own ids (`llmrl/Grid-v0`) with Gymnasium.
"""

from __future__ import annotations

import gymnasium as gym

from llmrl.envs.describers import describer_for, register_describer
from llmrl.envs.families import FAMILIES, family_of, family_of_id
from llmrl.envs.grid import GridEnv
from llmrl.envs.make import is_atari, make
from llmrl.envs.manuals import MANUALS, manual
from llmrl.envs.text import Describer, SnapshotDescriber
from llmrl.envs.wrappers import (
    ImageObservation,
    TextObservation,
    TextSource,
    VectorWithText,
    WithText,
    has_text,
)

__all__ = [
    "make",
    "is_atari",
    "manual",
    "MANUALS",
    "GridEnv",
    "WithText",
    "VectorWithText",
    "TextSource",
    "has_text",
    "TextObservation",
    "ImageObservation",
    "Describer",
    "SnapshotDescriber",
    "describer_for",
    "register_describer",
    "family_of",
    "family_of_id",
    "FAMILIES",
]

if "llmrl/Grid-v0" not in gym.registry:
    gym.register(id="llmrl/Grid-v0", entry_point="llmrl.envs.grid:GridEnv")
