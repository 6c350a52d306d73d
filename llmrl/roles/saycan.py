"""SayCan (Ahn et al., "Do As I Can, Not As I Say", arXiv 2204.01691): the LLM scores each skill's
description given the instruction and what has been done; each skill's affordance says whether it
can succeed now; the product picks the next skill, which runs until it ends.

    agent = SayCan(llm, minigrid_skills(env), instruction=mission)
    result = agent.run(env, seed=0)

`minigrid_skills` are scripted skills for DoorKey-like tasks (paths from `llmrl.envs.minigrid`), so
SayCan can be tested without training a policy per skill; `doorkey_walkthrough` solves DoorKey with
them to collect fixed states for judging goal suggestions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from llmrl.envs.minigrid import DROP, FORWARD, PICKUP, TOGGLE, facing, find_object, plan_action
from llmrl.errors import ConfigError
from llmrl.llm.base import LLM
from llmrl.llm.cache import checked

__all__ = ["Skill", "SayCan", "SayCanResult", "minigrid_skills", "doorkey_walkthrough"]


@dataclass
class Skill:
    """One skill: a description the LLM scores, a low-level policy, an end test and an affordance.

    policy(obs, info) -> action; done(obs, info) -> bool (the skill reached its end);
    affordance(obs, info) -> float in [0, 1] (SayCan's value function: the chance the skill succeeds
    from here; a learned value or a feasibility check).
    """

    name: str
    policy: Callable[[Any, dict], Any]
    done: Callable[[Any, dict], bool]
    affordance: Callable[[Any, dict], float] = field(default=lambda obs, info: 1.0)
    max_steps: int = 100
    """Steps after which the skill is stopped even if `done` never says so."""

    @classmethod
    def from_agent(
        cls,
        name: str,
        agent: Any,
        *,
        done: Callable[[Any, dict], bool],
        affordance: Callable[[Any, dict], float] | None = None,
        max_steps: int = 100,
    ) -> Skill:
        """A skill whose policy is a trained llmrl (or SB3) agent: `agent.predict(obs)`.

        Without `affordance`, the agent's value estimate `agent.value(obs)` (if it has one) squashed
        to [0, 1] with a sigmoid is used, as SayCan uses the skill's learned value function.
        """

        def policy(obs: Any, info: dict) -> Any:
            out = agent.predict(obs, deterministic=True)
            act = out[0] if isinstance(out, tuple) else out
            return np.asarray(act).reshape(-1)[0] if np.ndim(act) else act

        if affordance is None and hasattr(agent, "value"):

            def affordance(obs: Any, info: dict) -> float:
                v = float(np.asarray(agent.value(obs)).reshape(-1)[0])
                return float(1.0 / (1.0 + np.exp(-v)))

        return cls(name, policy, done, affordance or (lambda obs, info: 1.0), max_steps)


@dataclass
class SayCanResult:
    """What one SayCan episode did."""

    success: bool
    """The episode ended with a positive environment reward on termination."""
    steps: int
    total_reward: float
    plan: list[str]
    """The skills run, in order."""
    choices: list[dict[str, dict[str, float]]]
    """Per choice: each skill's {"llm": probability, "affordance": value, "combined": product}."""


class SayCan:
    """SayCan: pick the skill that maximises p_LLM(skill | instruction, done) x affordance(skill, state).

    `score` of each skill description (as " " + name + ".") after the prompt gives the LLM part
    (softmaxed over skills); `calibrate` subtracts the scores under a content-free prompt. The
    chosen skill runs until its `done` test passes, the episode ends, or `max_steps`.

    Use `act(obs, info)` step by step (e.g. inside `save_gif`), or `run(env)` for a whole episode.
    """

    TEMPLATE = "Task: {instruction}\nSteps done so far: {done}.\nNext step: I will"

    def __init__(
        self,
        llm: LLM,
        skills: Sequence[Skill],
        *,
        instruction: str | None = None,
        template: str | None = None,
        calibrate: bool = True,
        use_affordance: bool = True,
    ):
        if not skills:
            raise ConfigError("SayCan needs at least one Skill; got an empty list.")
        names = [s.name for s in skills]
        if len(set(names)) != len(names):
            raise ConfigError(f"SayCan skill names must be distinct; got {names}.")
        self.llm, self.skills, self.instruction = checked(llm), list(skills), instruction
        self.template, self.calibrate, self.use_affordance = (
            template or self.TEMPLATE,
            calibrate,
            use_affordance,
        )
        self._memo: dict[str, np.ndarray] = {}
        self.llm_calls = 0
        self.reset()

    def reset(self, instruction: str | None = None) -> None:
        """Start a new episode (optionally with a new instruction)."""
        if instruction is not None:
            self.instruction = instruction
        self.done_skills: list[str] = []
        self.choices: list[dict[str, dict[str, float]]] = []
        self._current: Skill | None = None
        self._steps_in_skill = 0

    def llm_probs(self, instruction: str, done: Sequence[str]) -> np.ndarray:
        """p_LLM over the skills, shape (len(skills),); one `score` call per distinct prompt."""
        prompt = self.template.format(instruction=instruction, done=", ".join(done) or "nothing")
        if prompt not in self._memo:
            conts = [" " + s.name + "." for s in self.skills]
            scores = np.asarray(self.llm.score(prompt, conts), dtype=np.float64)
            self.llm_calls += 1
            if self.calibrate:
                free = self.template.format(instruction="N/A", done="N/A")
                if free not in self._memo:
                    self._memo[free] = np.asarray(self.llm.score(free, conts), dtype=np.float64)
                    self.llm_calls += 1
                scores = scores - self._memo[free]
            self._memo[prompt] = scores
        s = self._memo[prompt]
        p = np.exp(s - s.max())
        return p / p.sum()

    def select(self, obs: Any, info: dict) -> Skill:
        """The next skill for this state: argmax of p_LLM x affordance."""
        instruction = self.instruction or str(info.get("mission") or info.get("text") or "")
        p = self.llm_probs(instruction, self.done_skills)
        # A skill whose end test already holds has nothing left to do: affordance 0 (else a
        # "go to the door" while facing it would be picked, end at once, and be picked again).
        aff = np.array(
            [
                0.0 if s.done(obs, info) else float(s.affordance(obs, info)) if self.use_affordance else 1.0
                for s in self.skills
            ]
        )
        combined = p * aff
        self.choices.append(
            {
                s.name: {"llm": float(p[j]), "affordance": float(aff[j]), "combined": float(combined[j])}
                for j, s in enumerate(self.skills)
            }
        )
        return self.skills[int(np.argmax(combined))]

    def act(self, obs: Any, info: dict) -> Any:
        """The primitive action for this step; picks a new skill when the current one has ended."""
        cur = self._current
        if cur is not None and (cur.done(obs, info) or self._steps_in_skill >= cur.max_steps):
            self.done_skills.append(cur.name)
            cur = self._current = None
        if cur is None:
            cur = self._current = self.select(obs, info)
            self._steps_in_skill = 0
        self._steps_in_skill += 1
        return cur.policy(obs, info)

    @property
    def current_skill(self) -> str | None:
        return self._current.name if self._current else None

    def run(self, env: gym.Env, *, seed: int | None = None, max_steps: int = 1000) -> SayCanResult:
        """One episode on a single env with SayCan choosing skills."""
        obs, info = env.reset(seed=seed)
        self.reset(self.instruction)
        plan: list[str] = []
        total, steps, terminated, reward = 0.0, 0, False, 0.0
        for steps in range(1, max_steps + 1):  # noqa: B007 - steps is read after the loop
            action = self.act(obs, info)
            if self._steps_in_skill == 1:  # a skill was (re)chosen this step
                plan.append(self.current_skill or "")
            obs, r, terminated, truncated, info = env.step(action)
            reward = float(r)
            total += float(reward)
            if terminated or truncated:
                break
        return SayCanResult(
            success=bool(terminated and reward > 0),
            steps=steps,
            total_reward=total,
            plan=plan,
            choices=list(self.choices),
        )


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
        return plan_action(u, pos, face=True) is not None or facing(u, pos)

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
                lambda o, i: facing(u, find_object(u, "door")),
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
