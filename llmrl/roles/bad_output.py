"""What a role does with a bad LLM answer (`LLMOutputError`: wrong count or shape, NaN/inf): one policy.

Every role that asks an LLM takes `on_bad_output`, with the values that make sense for it:

- "raise" (the default everywhere): stop with the error; nothing silent.
- "fallback": use a fixed stand-in (a reward role's `fallback_reward`; zero features for LLMFeatures).
- "skip": go on without this answer (a reward role adds nothing; LLMFeatures keeps each env's previous
  feature; ELLMGoals keeps the previous suggestions and asks again at the next step).

Each bad call is counted in the role's `bad_outputs` counter (in the log as `<role metric>/bad_outputs`)
and warned about once; bad answers are never cached (the cost-control layer refuses them).
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping, Sequence
from typing import Literal

from llmrl.errors import ConfigError
from llmrl.llm.base import LLMOutputError

__all__ = ["BadOutputPolicy", "check_bad_output_policy", "handle_bad_output"]

BadOutputPolicy = Literal["raise", "fallback", "skip"]
"""What a role does with a bad LLM answer: stop, use a fixed stand-in, or go on without it."""

log = logging.getLogger("llmrl.roles")


def check_bad_output_policy(policy: str, allowed: Sequence[str], role: str) -> None:
    """ConfigError at construction when `policy` is not one of the values `role` supports."""
    if policy not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ConfigError(f"{role}: on_bad_output must be one of {choices}, not {policy!r}.")


def handle_bad_output(
    err: LLMOutputError, policy: str, counters: MutableMapping[str, float], role: str, metric: str
) -> None:
    """Count a bad answer in `counters["bad_outputs"]`; re-raise it under "raise", else warn once."""
    counters["bad_outputs"] = counters.get("bad_outputs", 0) + 1
    if policy == "raise":
        raise err
    if counters["bad_outputs"] == 1:  # once: the count is in the log from then on
        log.warning(
            "%s: %s -> on_bad_output=%r: going on (counted as %s/bad_outputs)", role, err, policy, metric
        )
