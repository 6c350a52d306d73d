"""Auxiliary rewards from the game's manual (Read and Reap the Rewards, arXiv 2302.04449).

The LLM reads the environment's manual (`llmrl.envs.manual(env_id)` or your own text) and answers a
fixed set of questions about events -- is falling into a puddle good or bad for the player? -- once,
at construction. Each answer gives the event a sign; the event captions of `llmrl.envs.WithText`
(`info["caption"]`, e.g. "fell into the puddle") then earn `scale * sign`.

The question is put as a completion, "According to the manual, falling into a puddle is", and
answered by the margin log p(" good") - log p(" bad"), calibrated by subtracting the same margin for
a content-free event ("N/A"; Zhao et al. 2021). Measured with the embedded base model (Gemma 3 270M)
on the Grid and MiniGrid events, this got all 9 signs right, while a Yes/No question ("Is ... good
for the player?") leaned "Yes" for everything and got the puddle and the wall wrong. The answers are
listed in the log (`logging` at INFO, `role.table()`), cached by the LLM backend, and exposed as
`role.answers`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmrl.envs.families import family_of_id
from llmrl.errors import ConfigError
from llmrl.llm.base import LLM
from llmrl.roles.rewards.common import BadOutputPolicy, RewardRole, check_llm, yes_no_prompt_logit

__all__ = ["ManualReward", "ManualAnswer", "DEFAULT_EVENTS", "env_id_of"]

log = logging.getLogger("llmrl.roles.rewards")

_CONTENT_FREE = "N/A"

DEFAULT_EVENTS: dict[str, dict[str, str]] = {
    "grid": {
        r"reached the goal": "reaching the goal",
        r"fell into the puddle": "falling into a puddle",
        r"bumped into a wall": "bumping into a wall",
    },
    "minigrid": {
        r"picked up the \w+ key": "picking up the key",
        r"opened the \w+ door": "opening the door",
        r"reached the goal": "reaching the goal",
        r"completed the mission": "completing the mission",
        r"fell into the lava": "touching the lava",
        r"dropped the \w+ key": "dropping the key",
    },
    "atari": {
        r"lost a life": "losing a life",
        r"hit a brick": "hitting a brick",
        r"won the point": "winning a point",
        r"lost the point": "losing a point",
        r"opened a door": "opening a door",
    },
}
"""Per family: caption pattern (regex, matched anywhere in the caption) -> the event as a noun phrase."""


def env_id_of(env: Any) -> str | None:
    """The registered id of `env` (single or vector), or None."""
    for e in (env, getattr(env, "unwrapped", None)):
        spec = getattr(e, "spec", None)
        if spec is not None and getattr(spec, "id", None):
            return str(spec.id)
    envs = getattr(env.unwrapped if hasattr(env, "unwrapped") else env, "envs", None)
    return env_id_of(envs[0]) if envs else None


@dataclass(frozen=True)
class ManualAnswer:
    """What the LLM concluded about one event."""

    pattern: str
    """Caption regex the event is recognised by."""
    event: str
    """The event as a noun phrase, as asked ("falling into a puddle")."""
    margin: float
    """log p(" good") - log p(" bad") after "According to the manual, <event> is", calibrated."""
    sign: int
    """+1 (good), -1 (bad) or 0 (undecided: |margin| <= the role's margin)."""


class ManualReward(RewardRole):
    """Adds `scale * sign(event)` for each event the step's caption mentions; signs derived from a manual.

    env = ManualReward(WithText(gymnasium.make("llmrl/Grid-v0")), llm)   # manual and events by env id
    """

    metric_name = "manual"

    def __init__(
        self,
        env: Any,
        llm: LLM,
        *,
        manual: str | None = None,
        events: Mapping[str, str] | None = None,
        scale: float = 0.1,
        margin: float = 0.0,
        key: str = "caption",
        on_bad_output: BadOutputPolicy = "raise",
        fallback_reward: float = 0.0,
    ):
        """
        Args:
            manual: the manual text; default `llmrl.envs.manual(<the env's id>)`.
            events: caption regex -> event noun phrase ("fell into the puddle" -> "falling into a puddle");
                default `DEFAULT_EVENTS` of the env's family.
            scale: auxiliary reward per event (Read and Reap used about 5% of the game's reward scale).
            margin: the calibrated good-bad log-prob margin must exceed it for a sign; else the event gives 0.
            key: info key holding the caption of the step.
            on_bad_output, fallback_reward: what a bad LLM answer (NaN, wrong count) does; see RewardRole.
        """
        super().__init__(env, llm=llm, on_bad_output=on_bad_output, fallback_reward=fallback_reward)
        check_llm(llm, ["score"], "ManualReward")
        env_id = env_id_of(env) or ""
        if manual is None:
            from llmrl.envs import manual as find_manual

            if not env_id:
                raise ConfigError("ManualReward cannot tell the env's id; pass manual='<the manual text>'.")
            manual = find_manual(env_id)
        if events is None:
            events = DEFAULT_EVENTS.get(family_of_id(env_id) or "")
            if not events:
                raise ConfigError(
                    f"No default events for env {env_id!r}; pass events={{'caption regex': 'event phrase'}}, "
                    "e.g. {'lost a life': 'losing a life'}."
                )
        if scale < 0 or margin < 0:
            raise ConfigError(f"scale and margin must be >= 0, got scale={scale}, margin={margin}.")
        self.manual, self.scale, self.margin, self.key = manual.strip(), scale, margin, key
        self._patterns = [(re.compile(p, re.IGNORECASE), p) for p in events]
        self.answers: dict[str, ManualAnswer] = self._ask(dict(events))
        self.counters.update(events=0)
        log.info("ManualReward answers:\n%s", self.table())

    # -- the questions, asked once ----------------------------------------------------------------

    def question(self, event: str) -> str:
        """The question about `event`, as a prompt that " good" or " bad" continues."""
        return f"Manual: {self.manual}\n\nAccording to the manual, {event} is"

    def _ask(self, events: dict[str, str]) -> dict[str, ManualAnswer]:
        items = list(events.items())
        self.spend(len(items) + 1)
        prompts = [self.question(ev) for _, ev in [("", _CONTENT_FREE), *items]]
        margins = yes_no_prompt_logit(self.llm, prompts, (" good", " bad"))  # (1 + events,)
        self.bias = float(margins[0])
        out = {}
        for (pattern, event), m in zip(items, margins[1:] - self.bias):
            sign = 0 if abs(m) <= self.margin else int(np.sign(m))
            out[pattern] = ManualAnswer(pattern, event, float(m), sign)
        return out

    def table(self) -> str:
        """The questions and answers as a Markdown table (what the log lists)."""
        rows = ["| event | good - bad (log-prob, calibrated) | reward |", "|---|---|---|"]
        for a in self.answers.values():
            rows.append(f"| {a.event} | {a.margin:+.2f} | {a.sign * self.scale:+g} |")
        return "\n".join(rows)

    # -- the reward ---------------------------------------------------------------------------------

    def reward_of(self, caption: str) -> float:
        """Sum of `scale * sign` over the events the caption mentions."""
        total = 0.0
        for regex, pattern in self._patterns:
            if caption and regex.search(caption):
                total += self.scale * self.answers[pattern].sign
                self.counters["events"] += 1
        return total

    def intrinsic(self, obs, rewards, terminated, truncated, infos, starts):
        return np.array(
            [
                0.0 if starts[i] else self.reward_of(str(infos[i].get(self.key, "") or ""))
                for i in range(len(rewards))
            ]
        )

    def extra_metrics(self) -> dict[str, float]:
        return {f"manual/sign/{a.event}": float(a.sign) for a in self.answers.values()}
