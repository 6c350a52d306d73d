"""The LLM as planner: ELLM goal suggestions, a reward wrapper.

ELLM (Du et al., "Guiding Pretraining in Reinforcement Learning with Large Language Models",
arXiv 2302.06692): from the state text the LLM suggests k goals; when the caption of a transition
says the agent did one of them (sentence-embedding cosine >= threshold), the agent earns an intrinsic
reward, and a goal achieved once is not suggested again in that episode (novelty).

    env = ELLMGoals(WithText(gymnasium.make("MiniGrid-DoorKey-6x6-v0")), llmrl.llm.load("embedded"))

It talks to the model only through the protocol (`score`, `generate`, `embed`) and reads the state
only from `info["text"]` / `info["caption"]` (llmrl.envs.WithText); `suggest="oracle"` reads the
ground truth `llmrl.envs.minigrid.MiniGridSubgoals` puts in `info["oracle_goals"]`, on purpose.
SayCan, the LLM choosing skills, is in `llmrl.roles.saycan`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from llmrl.envs.text_minigrid import minigrid_summary
from llmrl.errors import ConfigError
from llmrl.llm.base import LLM, LLMOutputError
from llmrl.llm.cache import checked
from llmrl.roles.bad_output import BadOutputPolicy, check_bad_output_policy, handle_bad_output
from llmrl.roles.base import RoleWrapper, require_capabilities
from llmrl.roles.registry import text_filter as resolve_text_filter

__all__ = [
    "ELLMGoals",
    "GoalSuggester",
    "vocabulary_candidates",
    "minigrid_summary",
    "parse_goal_list",
    "EmbeddingCache",
    "RANK_TEMPLATE",
    "GENERATE_TEMPLATE",
]

RANK_TEMPLATE = "{manual}{text}\nDone so far: {done}.\nThe next thing to do is to"
"""Prompt for ranking candidate goals with `score`; each candidate is scored as " " + goal + "."."""

GENERATE_TEMPLATE = "{manual}{text}\nDone so far: {done}.\nList {k} short goals to do next, one a line:\n-"
"""Prompt for free generation; the completion is parsed into a list by `parse_goal_list`."""

# The action and object vocabulary of MiniGrid/BabyAI, from which candidate goals are built.
# Verbs per object type follow what MiniGrid's actions can do to it (pickup, toggle, walk onto).
_MINIGRID_VERBS: dict[str, tuple[str, ...]] = {
    "key": ("pick up the {o}", "go to the {o}"),
    "ball": ("pick up the {o}", "go to the {o}"),
    "box": ("pick up the {o}", "open the {o}", "go to the {o}"),
    "door": ("open the {o}", "go to the {o}", "go through the {o}"),
    "goal": ("reach the {o}",),
}


def vocabulary_candidates(text: str) -> list[str]:
    """Candidate goals from the action and object vocabulary named in `text` (MiniGrid/BabyAI words).

    Objects are found by name ("key", "door", ...) anywhere in the text (the mission included).
    An object the text says the agent carries ("carrying a yellow key", "You carry ...") gets
    "drop the <object>" instead of "pick up" / "go to".

    >>> vocabulary_candidates("Mission: use the key to open the door and then get to the goal")
    ['pick up the key', 'go to the key', 'open the door', 'go to the door', 'go through the door', 'reach the goal']
    """
    low = text.lower()
    out: list[str] = []
    for obj, verbs in _MINIGRID_VERBS.items():
        if not re.search(rf"\b{obj}s?\b", low):
            continue
        if re.search(rf"\b(carrying|carry|carries|holding)\b[^.;\n]*\b{obj}\b", low):
            out.append(f"drop the {obj}")
        else:
            out.extend(v.format(o=obj) for v in verbs)
    return out


def parse_goal_list(completion: str, k: int | None = None) -> list[str]:
    """A generated list ("- a\\n- b", "1. a 2. b", "a; b") -> goal strings, cleaned and deduplicated.

    >>> parse_goal_list(" pick up the key\\n- open the door.\\n3) Go to the goal\\n\\n")
    ['pick up the key', 'open the door', 'go to the goal']
    """
    parts = re.split(r"\n|;|(?:^|\s)(?:\d+[.)]|-|\*)\s", completion)
    out: list[str] = []
    for p in parts:
        g = re.sub(r"^\s*(?:\d+[.)]|[-*•])\s*", "", p or "").strip().strip(".").strip().lower()
        if 2 <= len(g) <= 80 and g not in out:
            out.append(g)
    return out[:k] if k else out


class EmbeddingCache:
    """Sentence embeddings of short strings (goals, captions), computed once each and batched."""

    def __init__(self, llm: LLM):
        self.llm = checked(llm)
        self._vectors: dict[str, np.ndarray] = {}
        self.calls = 0
        """Strings sent to `llm.embed` (the rest came from this cache)."""

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings, shape (len(texts), d), L2-normalised."""
        missing = sorted({t for t in texts if t not in self._vectors})
        if missing:
            vecs = np.asarray(self.llm.embed(missing), dtype=np.float32)
            vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-8)
            self._vectors.update(zip(missing, vecs))
            self.calls += len(missing)
        if not texts:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        return np.stack([self._vectors[t] for t in texts])

    @property
    def dim(self) -> int | None:
        return next(iter(self._vectors.values())).shape[0] if self._vectors else None


class GoalSuggester:
    """Ranks (or generates) goals for a prompt context; every distinct prompt reaches the LLM once.

    mode="rank": score(prompt, [" " + c + "." for c in candidates]), minus the same scores under a
    content-free prompt when `calibrate` (Zhao et al., arXiv 2102.09690: removes the model's prior for
    a candidate's wording and length, which dominates a 270M base model's raw log-probs).
    mode="generate": generate(prompt) parsed with `parse_goal_list`.
    """

    def __init__(
        self,
        llm: LLM,
        *,
        mode: Literal["rank", "generate"] = "rank",
        template: str | None = None,
        calibrate: bool = True,
        max_tokens: int = 40,
        k: int = 3,
    ):
        self.llm, self.mode, self.calibrate, self.max_tokens, self.k = (
            checked(llm),
            mode,
            calibrate,
            max_tokens,
            k,
        )
        self.template = template or (RANK_TEMPLATE if mode == "rank" else GENERATE_TEMPLATE)
        self._ranked: dict[tuple[str, tuple[str, ...]], list[tuple[str, float]]] = {}
        self._generated: dict[str, list[str]] = {}
        self._prior: dict[tuple[str, ...], np.ndarray] = {}
        self.prompts = 0
        """Distinct prompts sent to the LLM (score or generate calls)."""
        self.lookups = 0
        """Requests for suggestions, answered by the LLM or by this object's memo."""

    def prompt(self, text: str, done: Sequence[str], manual: str = "") -> str:
        """The prompt for a state; `done` (captions so far) is deduplicated in first-seen order, so
        an agent that picks up and drops a key ten times does not make ten new prompts."""
        manual = manual.strip() + "\n" if manual else ""
        done = list(dict.fromkeys(done))
        return self.template.format(
            manual=manual, text=text.strip(), done=", ".join(done) or "nothing", k=self.k
        )

    def rank(self, prompt: str, candidates: Sequence[str]) -> list[tuple[str, float]]:
        """Candidates with their (calibrated) scores, best first."""
        cands = tuple(candidates)
        key = (prompt, cands)
        self.lookups += 1
        if key not in self._ranked:
            conts = [" " + c + "." for c in cands]
            scores = np.asarray(self.llm.score(prompt, conts), dtype=np.float64)
            self.prompts += 1
            if self.calibrate:
                if cands not in self._prior:
                    # Content-free prompt: same template, the state replaced by "N/A".
                    free = self.template.format(manual="", text="N/A", done="N/A", k=self.k)
                    self._prior[cands] = np.asarray(self.llm.score(free, conts), dtype=np.float64)
                    self.prompts += 1
                scores = scores - self._prior[cands]
            order = np.argsort(-scores, kind="stable")
            self._ranked[key] = [(cands[j], float(scores[j])) for j in order]
        return self._ranked[key]

    def generate(self, prompts: Sequence[str]) -> list[list[str]]:
        """Parsed goal lists, one per prompt; distinct uncached prompts go to the LLM in one batch."""
        self.lookups += len(prompts)
        todo = sorted({p for p in prompts if p not in self._generated})
        if todo:
            outs = self.llm.generate(todo, max_tokens=self.max_tokens, temperature=0.0, stop=["\n\n"])
            self.prompts += len(todo)
            for p, o in zip(todo, outs):
                self._generated[p] = parse_goal_list(o)
        return [list(self._generated[p]) for p in prompts]


class ELLMGoals(RoleWrapper):
    """ELLM: intrinsic reward for doing what the LLM suggests, each goal once per episode.

    Reads `info["text"]` and `info["caption"]` (wrap the env in `llmrl.envs.WithText` first).
    Adds to every info: `"goals"` (the current suggestions, best first), `"intrinsic_reward"`
    (this step's intrinsic part, already added to the returned reward) and, when a goal is achieved,
    `"goal_achieved"`.

    Args:
        env: a single env or a vector env (NEXT_STEP autoreset) with text infos.
        llm: the backend; needs `embed`, plus `score` (suggest="rank") or `generate` ("generate").
            Unused parts may be `None`-free: for suggest="oracle" it is only used to embed.
        k: suggestions kept per state (the top k after dropping achieved goals).
        suggest: "rank" (score a candidate list, best for small base models), "generate" (free text
            parsed into a list) or "oracle" (the ground-truth next sub-goal from `info["oracle_goals"]`,
            see `llmrl.envs.minigrid.MiniGridSubgoals`; the upper bound for comparisons).
        threshold: cosine between the caption's and a goal's embedding above which the goal counts
            as done (ELLM uses a high threshold so only close paraphrases count).
        scale: intrinsic reward for achieving a suggested goal.
        reward_similarity: if True the reward is `scale * cosine` as in the ELLM paper, else `scale`.
        manual: text prepended to every prompt (e.g. `llmrl.envs.manual(env_id)`).
        candidates: the goals to rank; a list, or a function of the state text; default
            `vocabulary_candidates` (MiniGrid/BabyAI action and object words found in the text).
        refresh: when to ask for new suggestions: "event" (episode start and after every non-empty
            caption: few distinct prompts, cheap) or "text" (whenever the state text changes).
        calibrate: subtract the candidates' scores under a content-free prompt (suggest="rank").
        template: prompt template with `{manual}`, `{text}`, `{done}` (and `{k}`) fields.
        goal_in_obs: append the top goal's embedding to the observation (goal-conditioned agent):
            a 1-D Box gets it concatenated, a Dict gets a `"goal"` key, anything else becomes
            Dict(obs=..., goal=...).
        extrinsic: if False, the environment's reward is dropped (pure ELLM pre-training).
        text_filter: applied to `info["text"]` before it enters the prompt (and the candidate
            builder), e.g. `minigrid_summary` to keep the mission and inventory only: fewer
            distinct prompts, so far fewer LLM calls. A string names a registered filter
            (`llmrl.roles.registry.TEXT_FILTERS`), so presets can hold it.
        on_bad_output: what a bad answer (`LLMOutputError`: NaN/inf scores or embeddings, a wrong
            count) does (`llmrl.roles.bad_output`): "raise" stops; "skip" goes on without it: a bad
            suggestion call keeps the previous goals and asks again at the next step, a bad caption
            embedding gives no intrinsic reward that step. Counted as `goals/bad_outputs`.
    """

    def __init__(
        self,
        env: gym.Env | gym.vector.VectorEnv,
        llm: LLM,
        *,
        k: int = 3,
        suggest: Literal["rank", "generate", "oracle"] = "rank",
        threshold: float = 0.6,
        scale: float = 0.2,
        reward_similarity: bool = False,
        manual: str | None = None,
        candidates: Sequence[str] | Callable[[str], Sequence[str]] | None = None,
        refresh: Literal["event", "text"] = "event",
        calibrate: bool = True,
        template: str | None = None,
        goal_in_obs: bool = False,
        extrinsic: bool = True,
        text_filter: str | Callable[[str], str] | None = None,
        max_tokens: int = 40,
        on_bad_output: BadOutputPolicy = "raise",
    ):
        check_bad_output_policy(on_bad_output, ("raise", "skip"), "ELLMGoals")
        if k < 1:
            raise ConfigError(f"ELLMGoals k={k} must be >= 1 (number of goals suggested per state).")
        if suggest not in ("rank", "generate", "oracle"):
            raise ConfigError(f"ELLMGoals suggest={suggest!r} must be 'rank', 'generate' or 'oracle'.")
        if refresh not in ("event", "text"):
            raise ConfigError(f"ELLMGoals refresh={refresh!r} must be 'event' or 'text'.")
        if not -1.0 <= threshold <= 1.0:
            raise ConfigError(f"ELLMGoals threshold={threshold} must be a cosine in [-1, 1], e.g. 0.6.")
        needs = {"embed"} | (
            {"score"} if suggest == "rank" else {"generate"} if suggest == "generate" else set()
        )
        require_capabilities(llm, sorted(needs), f"ELLMGoals(suggest={suggest!r})",
                             "use llmrl.llm.load('embedded') or choose suggest='rank'/'oracle'.")  # fmt: skip
        self.llm, self.k, self.suggest, self.threshold, self.scale = (
            checked(llm),
            k,
            suggest,
            threshold,
            scale,
        )
        self.reward_similarity, self.manual, self.refresh = reward_similarity, manual or "", refresh
        self.goal_in_obs, self.extrinsic = goal_in_obs, extrinsic
        self.text_filter = resolve_text_filter(text_filter)
        self.candidates = candidates if candidates is not None else vocabulary_candidates
        self.embeddings = EmbeddingCache(llm)
        self.suggester = GoalSuggester(
            llm,
            mode="generate" if suggest == "generate" else "rank",
            template=template,
            calibrate=calibrate,
            max_tokens=max_tokens,
            k=k,
        )
        # The goal embedding's width must be known to build the observation space.
        self._goal_dim = int(self.embeddings(["reach the goal"]).shape[1]) if goal_in_obs else 0
        super().__init__(env)
        n = self.num_envs
        self._goals: list[list[str]] = [[] for _ in range(n)]
        self._done: list[list[str]] = [[] for _ in range(n)]  # captions achieved or seen this episode
        self._achieved: list[list[str]] = [[] for _ in range(n)]
        self._context: list[str | None] = [None for _ in range(n)]
        self._intrinsic_total = 0.0
        self._achieved_total = 0
        self._steps = 0
        self._refreshes = 0
        self.on_bad_output = on_bad_output
        self.counters: dict[str, float] = {"bad_outputs": 0}

    # -- observation space ------------------------------------------------------------------------

    def transform_space(self, space: gym.Space) -> gym.Space:
        if not self.goal_in_obs:
            return space
        goal = gym.spaces.Box(-1.0, 1.0, (self._goal_dim,), np.float32)
        if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
            low = np.concatenate([space.low.astype(np.float32), goal.low])
            high = np.concatenate([space.high.astype(np.float32), goal.high])
            return gym.spaces.Box(low, high, dtype=np.float32)
        if isinstance(space, gym.spaces.Dict):
            return gym.spaces.Dict({**space.spaces, "goal": goal})
        return gym.spaces.Dict({"obs": space, "goal": goal})

    def _with_goal(self, obs: Any) -> Any:
        inner = self.env.single_observation_space if self.is_vector else self.env.observation_space
        tops = [g[0] if g else "" for g in self._goals]
        emb = self.embeddings([t for t in tops if t])
        vecs = np.zeros((self.num_envs, self._goal_dim), dtype=np.float32)  # (n, d); zeros = no goal
        rows = [i for i, t in enumerate(tops) if t]
        if rows:
            vecs[rows] = emb
        if isinstance(inner, gym.spaces.Box) and len(inner.shape) == 1:
            return np.concatenate([np.asarray(obs, dtype=np.float32), vecs], axis=1)
        if isinstance(inner, gym.spaces.Dict):
            return {**obs, "goal": vecs}
        return {"obs": obs, "goal": vecs}

    # -- the role ---------------------------------------------------------------------------------

    def process(self, obs, rewards, terminated, truncated, infos, starts):
        n = self.num_envs
        intrinsic = np.zeros(n, dtype=np.float32)
        for i in np.flatnonzero(starts):
            self._goals[i], self._done[i], self._achieved[i], self._context[i] = [], [], [], None
        captions = ["" if starts[i] else str(infos[i].get("caption", "") or "") for i in range(n)]
        try:
            self._reward_captions(captions, intrinsic, infos)
        except LLMOutputError as err:  # "skip": no intrinsic reward this step
            handle_bad_output(err, self.on_bad_output, self.counters, "ELLMGoals", "goals")
            intrinsic[:] = 0.0
            for i, c in enumerate(captions):  # the captions are still seen (the LLM calls come first)
                if c:
                    self._done[i].append(c)
        # An episode's last step needs no new suggestions: the next observation starts a new episode.
        contexts = list(self._context)
        try:
            self._refresh(infos, captions, starts, skip=terminated | truncated)
        except LLMOutputError as err:  # "skip": keep the goals; the changed contexts ask again next step
            handle_bad_output(err, self.on_bad_output, self.counters, "ELLMGoals", "goals")
            self._context = [None if new != old else old for new, old in zip(self._context, contexts)]
        for i in range(n):
            infos[i]["goals"] = list(self._goals[i])
            infos[i]["intrinsic_reward"] = float(intrinsic[i])
        self._steps += int((~starts).sum())
        self._intrinsic_total += float(intrinsic.sum())
        base = rewards if self.extrinsic else np.zeros_like(rewards)
        if self.goal_in_obs:
            obs = self._with_goal(obs)
        return obs, (base + intrinsic).astype(np.float32)

    def _reward_captions(self, captions: list[str], intrinsic: np.ndarray, infos: list[dict]) -> None:
        """A caption that matches one of the env's current goals earns the intrinsic reward."""
        rows = [i for i, c in enumerate(captions) if c and self._goals[i]]
        if not rows:
            for i, c in enumerate(captions):
                if c:
                    self._done[i].append(c)
            return
        cap = self.embeddings([captions[i] for i in rows])  # (m, d)
        for r, i in enumerate(rows):
            goals = self._goals[i]
            sims = self.embeddings(goals) @ cap[r]  # (len(goals),)
            j = int(np.argmax(sims))
            if sims[j] >= self.threshold:
                intrinsic[i] = self.scale * (float(sims[j]) if self.reward_similarity else 1.0)
                self._achieved[i].append(goals[j])
                infos[i]["goal_achieved"] = goals[j]
                self._achieved_total += 1
        for i, c in enumerate(captions):
            if c:
                self._done[i].append(c)

    def _refresh(self, infos: list[dict], captions: list[str], starts: np.ndarray, skip: np.ndarray) -> None:
        """New suggestions for the envs whose context changed, one LLM call per distinct prompt."""
        need: list[int] = []
        for i, info in enumerate(infos):
            if skip[i] and not starts[i]:
                continue
            if self.suggest == "oracle":
                goals = [str(g) for g in info.get("oracle_goals", ())]
                if "oracle_goals" not in info:
                    raise ConfigError(
                        "ELLMGoals(suggest='oracle') needs info['oracle_goals']; wrap each env in "
                        "llmrl.envs.minigrid.MiniGridSubgoals (or a wrapper of your own that sets it)."
                    )
                self._goals[i] = self._novel(goals, i)[: self.k]
                continue
            if "text" not in info:
                raise ConfigError(
                    "ELLMGoals needs info['text'] and info['caption']; wrap the env in "
                    "llmrl.envs.WithText before ELLMGoals."
                )
            text = str(info["text"])
            text = self.text_filter(text) if self.text_filter else text
            if self.refresh == "event":
                changed = bool(starts[i] or captions[i] or self._context[i] is None)
                ctx = self.suggester.prompt(text, self._done[i], self.manual) if changed else self._context[i]
            else:
                ctx = self.suggester.prompt(text, self._done[i], self.manual)
                changed = ctx != self._context[i]
            if changed:
                self._context[i] = ctx
                need.append(i)
        if not need:
            return
        self._refreshes += len(need)
        prompts = [self._context[i] for i in need]
        if self.suggest == "generate":
            lists = self.suggester.generate(prompts)  # type: ignore[arg-type]
        else:
            lists = []
            for i, p in zip(need, prompts):
                text = str(infos[i]["text"])
                text = self.text_filter(text) if self.text_filter else text
                cands = self.candidates(text) if callable(self.candidates) else self.candidates
                lists.append([c for c, _ in self.suggester.rank(p, list(cands))])  # type: ignore[arg-type]
        for i, goals in zip(need, lists):
            self._goals[i] = self._novel(goals, i)[: self.k]

    def _novel(self, goals: list[str], i: int) -> list[str]:
        """Drop goals already achieved this episode (ELLM's novelty filter): those matched before and
        those a caption of this episode already says were done."""
        goals = [g for g in goals if g not in self._achieved[i]]
        if not goals or not self._done[i]:
            return goals
        sims = self.embeddings(goals) @ self.embeddings(self._done[i]).T  # (goals, captions)
        return [g for g, s in zip(goals, sims.max(axis=1)) if s < self.threshold]

    def llmrl_metrics(self) -> dict[str, float]:
        stats = getattr(self.llm, "stats", None)
        out = stats.as_dict() if stats is not None else {}
        out.update(
            {
                "goals/prompts": float(self.suggester.prompts),
                "goals/refreshes": float(self._refreshes),
                "goals/embeds": float(self.embeddings.calls),
                "goals/achieved": float(self._achieved_total),
                "goals/bad_outputs": float(self.counters["bad_outputs"]),
                # a running total, so not `reward/intrinsic` (the reward roles' mean episode intrinsic return)
                "goals/intrinsic_total": float(self._intrinsic_total),
                "goals/intrinsic_per_step": self._intrinsic_total / max(self._steps, 1),
            }
        )
        return out
