"""Gymnasium environments and wrappers, with every state also available in words. No torch, no LLM.

from llmrl.envs import make, WithText
env = WithText(make("llmrl/Grid-v0"))
obs, info = env.reset(seed=0)
info["text"]     # the state in words
"""

from __future__ import annotations

from llmrl.envs.make import is_atari, make

__all__ = ["make", "is_atari"]
