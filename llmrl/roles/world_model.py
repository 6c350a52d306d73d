"""The LLM as a world model: predict the next state in words, the reward and the end; plan with it.

    wm = LLMWorldModel(llmrl.llm.load("embedded"), examples=train[:3], manual=manual("minigrid"))
    p = wm.predict([state_text], ["move forward"])    # p.next_states, p.rewards, p.dones, p.confidences

    wm = LLMWorldModel(HFLLM.from_gguf(), target="diff")  # the embedded Gemma through transformers
    wm.fit(train, max_minutes=10)                        # LoRA fine-tuning on transitions (needs gradients)

    agent = WorldModelPlanner(wm, actions, value=my_value)   # agent.act(obs, info) reads info["text"]
    env = Dyna(TextFeatures(WithText(env, describer=FullMiniGridDescriber()), MiniGridTextFeatures(5)), wm)
    DQN(env, imagined_fraction=0.5)                      # imagined transitions in half of each batch

The prompt shows the state text, the action and asks for the next state (or only the lines that change,
`target="diff"`, see `llmrl.envs.transitions.state_diff`), then `reward: <number>` and `done: yes|no`.
Published picture (ByteSized32, Word2World): prompted LLMs are poor simulators, fine-tuned ones good;
so both backends share one prompt and one parser, and the fine-tuned one drops the few-shot examples.

The model's output is data: it is parsed and checked (a full state must have the same `name:` lines as
the current one; a difference may only name lines the state has), never executed. A prediction that fails
is counted (`unparseable`) and marked invalid; callers fall back to the real env.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from llmrl.envs.transitions import Transition, apply_diff, state_diff, strip_derived
from llmrl.errors import ConfigError
from llmrl.llm.base import LLM
from llmrl.llm.common import check_capabilities
from llmrl.llm.lora import LORA_TARGETS, add_lora
from llmrl.roles.base import RoleWrapper

__all__ = [
    "LLMWorldModel",
    "Prediction",
    "WorldModel",
    "SimulatorModel",
    "FitReport",
    "WorldModelPlanner",
    "lookahead",
    "useful_actions",
    "imagine",
    "accuracy",
    "WorldModelMonitor",
    "Dyna",
    "WM_LORA_TARGETS",
]

Target = Literal["full", "diff"]
WM_LORA_TARGETS = ("q_proj", "k_proj", *LORA_TARGETS)
"""What `LLMWorldModel.fit` adapts by default: attention's queries and keys too (they export to llama.cpp
for Gemma 3 as they are: `tests/roles/test_world_model.py`)."""
_INSTRUCTION = "Predict the next state, the reward and whether the episode ends."
_STOP = "\n\n"


@dataclass
class Prediction:
    """What a world model says about a batch of (state, action) pairs. Arrays have shape (n,)."""

    next_states: list[str | None]
    """The predicted next state text; None where the model's output could not be parsed."""
    rewards: np.ndarray
    dones: np.ndarray
    confidences: np.ndarray
    """exp(sum of the output's token log-probabilities): the model's probability of its own answer."""
    valid: np.ndarray
    raw: list[str] = field(default_factory=list)
    """The model's outputs as generated (for logs and GIFs)."""


class WorldModel:
    """Anything with `predict(states, actions) -> Prediction` (the LLM world model, the true simulator)."""

    def predict(self, states: Sequence[str], actions: Sequence[str]) -> Prediction:
        raise NotImplementedError


class SimulatorModel(WorldModel):
    """The true dynamics behind the world-model interface, for planning baselines and tests.

    It knows the states it was shown: `observe(env)` stores a copy of `env` under its state text, and
    every prediction stores the copy it stepped, so a search can go deeper. An unknown text is invalid.
    """

    def __init__(self, describer: Any, actions: Sequence[str]) -> None:
        self.describer, self.actions = describer, list(actions)
        self._envs: dict[str, Any] = {}

    def observe(self, env: Any) -> str:
        """Remember a copy of `env` (a gymnasium.Env, at its current state); returns its state text."""
        import copy

        u = copy.deepcopy(env.unwrapped)
        text = self.describer.text(
            self.describer.snapshot(u, u.gen_obs() if hasattr(u, "gen_obs") else _obs_of(u))
        )
        self._envs[text] = u
        return text

    def predict(self, states: Sequence[str], actions: Sequence[str]) -> Prediction:
        import copy

        n = len(states)
        nxt: list[str | None] = [None] * n
        rewards, dones = np.zeros(n), np.zeros(n, dtype=bool)
        for i, (s, a) in enumerate(zip(states, actions)):
            if s not in self._envs or a not in self.actions:
                continue
            u = copy.deepcopy(self._envs[s])
            obs, r, term, _trunc, _info = u.step(self.actions.index(a))
            text = self.describer.text(self.describer.snapshot(u, obs))
            self._envs.setdefault(text, u)
            nxt[i], rewards[i], dones[i] = text, float(r), bool(term)
        valid = np.array([x is not None for x in nxt], dtype=bool)
        return Prediction(nxt, rewards, dones, valid.astype(np.float64), valid, ["" for _ in nxt])


def _obs_of(u: Any) -> Any:
    # the Grid's observation is its cell index; other envs expose gen_obs (MiniGrid)
    return u._obs()


def _keys(text: str) -> list[str] | None:
    """The line names of a structured state (two or more `name: value` lines), else None (free text)."""
    lines = text.split("\n")
    keys = [ln.partition(": ")[0] for ln in lines if ": " in ln]
    return keys if len(keys) == len(lines) > 1 else None


def _parse(
    completion: str, state: str, target: Target, derive: Callable[[str], str] | None = None
) -> tuple[str, float, bool] | None:
    """(next state, reward, done) from a completion, or None when it does not follow the format. `state`
    is without its derived lines; `derive` adds them to the next state."""
    lines = completion.strip("\n").split("\n")
    r_at = next((i for i, ln in enumerate(lines) if ln.startswith("reward:")), None)
    if r_at is None or r_at + 1 >= len(lines) or not lines[r_at + 1].startswith("done:"):
        return None
    try:
        reward = float(lines[r_at].partition(":")[2].strip())
    except ValueError:
        return None
    if not math.isfinite(reward):
        return None
    done_word = lines[r_at + 1].partition(":")[2].strip()
    if done_word not in ("yes", "no"):
        return None
    body = "\n".join(lines[:r_at]).strip()
    if not body:
        return None
    if target == "diff":
        try:
            nxt = apply_diff(state, body)
        except (ValueError, ConfigError):
            return None
    else:
        nxt = body
        # a structured state must keep its lines: same names, same order
        if _keys(state) is not None and _keys(nxt) != _keys(state):
            return None
    if derive is not None:
        try:
            nxt = derive(nxt)
        except (ValueError, KeyError, IndexError):  # a line the model garbled (a ConfigError is the user's)
            return None
    return nxt, reward, done_word == "yes"


def _format_reward(r: float) -> str:
    return f"{r:.2f}".rstrip("0").rstrip(".") if r != 0 else "0"


class LLMWorldModel(WorldModel):
    """A language model that predicts transitions, prompted few-shot or fine-tuned (see module docstring).

    llm: any LLM of the protocol (a CachedLLM caches every prediction on disk); needs `generate`, and
        `score` when confidence=True. examples: transitions shown before each query (few-shot).
    manual: a game manual put first (`llmrl.envs.manual(env_id)`). target: "full" next state or "diff"
        (only the changed `name: value` lines, merged into the state by code).
    max_tokens: the longest output; confidence: score each output (one more forward pass each).
    describer: the states' describer, when its texts end in derived lines (`describer.derived`, e.g. the
        `ahead:` hint of `FullMiniGridDescriber`): the model reads them, but is taught and asked only the
        other lines, and `describer.derive` adds them to each prediction.
    """

    def __init__(
        self,
        llm: LLM,
        *,
        examples: Sequence[Transition] = (),
        manual: str | None = None,
        target: Target = "full",
        max_tokens: int = 96,
        confidence: bool = True,
        describer: Any = None,
    ) -> None:
        if target not in ("full", "diff"):
            raise ConfigError(f"target must be 'full' or 'diff', got {target!r}")
        if max_tokens < 4:
            raise ConfigError(
                f"max_tokens must be >= 4 (the reward and done lines alone need that), got {max_tokens}"
            )
        check_capabilities(llm.name, llm.capabilities, ("generate", "score") if confidence else ("generate",))
        self.llm = llm
        self.target: Target = target
        self.max_tokens = int(max_tokens)
        self.confidence = bool(confidence)
        self.manual = manual
        self.derived: tuple[str, ...] = tuple(getattr(describer, "derived", ()))
        self._derive: Callable[[str], str] | None = describer.derive if self.derived else None
        self.examples = list(examples)
        head = (manual.strip() + "\n\n" if manual else "") + _INSTRUCTION + "\n\n"
        self._head = head + "".join(
            self.prompt(e.state, e.action, head="") + self.completion(e) for e in examples
        )
        self._memo: dict[tuple[str, str], tuple[str | None, float, bool, float, str]] = {}
        self.counters = {"predictions": 0, "memo_hits": 0, "unparseable": 0}

    # -- text in, text out -------------------------------------------------------------------------

    def prompt(self, state: str, action: str, *, head: str | None = None) -> str:
        """The model's input for one (state, action); the few-shot head first unless head="" is given."""
        return f"{self._head if head is None else head}State:\n{state}\nAction: {action}\nNext:\n"

    def completion(self, tr: Transition) -> str:
        """The output the model should give for a transition (what fine-tuning teaches), ending in a blank line."""
        state, nxt = strip_derived(tr.state, self.derived), strip_derived(tr.next_state, self.derived)
        body = state_diff(state, nxt) if self.target == "diff" else nxt
        return f"{body}\nreward: {_format_reward(tr.reward)}\ndone: {'yes' if tr.terminated else 'no'}{_STOP}"

    # -- prediction --------------------------------------------------------------------------------

    def predict(self, states: Sequence[str], actions: Sequence[str]) -> Prediction:
        """One prediction per (state, action), in one batched call for the pairs not seen before."""
        if len(states) != len(actions):
            raise ConfigError(
                f"predict needs one action per state, got {len(states)} states, {len(actions)} actions"
            )
        pairs = list(zip(states, actions))
        todo = list(dict.fromkeys(p for p in pairs if p not in self._memo))
        self.counters["predictions"] += len(pairs)
        self.counters["memo_hits"] += len(pairs) - len(todo)
        if todo:
            prompts = [self.prompt(s, a) for s, a in todo]
            outs = self.llm.generate(prompts, max_tokens=self.max_tokens, stop=[_STOP])
            for (s, a), p, out in zip(todo, prompts, outs):
                parsed = _parse(out, strip_derived(s, self.derived), self.target, self._derive)
                conf = 0.0
                if parsed is None:
                    self.counters["unparseable"] += 1
                elif self.confidence:
                    # the probability of the answer as given, stop included (what fine-tuning taught)
                    conf = float(np.exp(self.llm.score(p, [out.rstrip("\n") + _STOP])[0]))
                nxt, r, d = parsed if parsed is not None else (None, 0.0, False)
                self._memo[(s, a)] = (nxt, r, d, conf, out)
        got = [self._memo[p] for p in pairs]
        return Prediction(
            next_states=[g[0] for g in got],
            rewards=np.array([g[1] for g in got], dtype=np.float64),
            dones=np.array([g[2] for g in got], dtype=bool),
            confidences=np.array([g[3] for g in got], dtype=np.float64),
            valid=np.array([g[0] is not None for g in got], dtype=bool),
            raw=[g[4] for g in got],
        )

    def llmrl_metrics(self) -> dict[str, float]:
        """Counters for the training log: predictions asked, answered from memory, unparseable."""
        return {f"wm/{k}": float(v) for k, v in self.counters.items()}

    # -- fine-tuning -------------------------------------------------------------------------------

    def fit(
        self,
        transitions: Sequence[Transition],
        *,
        epochs: int = 3,
        lr: float = 1e-3,
        rank: int = 16,
        layers: int = 6,
        batch_size: int = 8,
        targets: Sequence[str] = WM_LORA_TARGETS,
        max_minutes: float | None = None,
        seed: int = 0,
        log: Callable[[dict[str, float]], None] | None = None,
    ) -> FitReport:
        """LoRA supervised fine-tuning on `transitions`: the loss is on the output tokens only.

        Adapters (`llmrl.llm.lora.add_lora`: rank `rank`, alpha 2*rank) go on the `targets` linears (by
        default all of them, `WM_LORA_TARGETS`: with q/k adapted, attention learns where to look, which
        the frozen q/k of `LORA_TARGETS` could not) of the last `layers` decoder layers; everything else is frozen, so gradients flow through those layers
        only, and the adapters export to llama.cpp (`export_lora_gguf`). The frozen layers run
        once per example (their output is kept), and the last layer and the output layer only at the rows
        that predict the answer: the exact loss of the whole model at ~1/10 of its cost on a CPU (a
        bfloat16 model, `HFLLM(..., dtype="bfloat16")`, halves it again; the adapters stay float32).
        Stops after `epochs` or `max_minutes` (checked after each step; it counts the frozen layers). Afterwards the model answers without the few-shot examples (they are
        dropped from the prompt) and under a new name, so no cached answer of the base model is reused.
        Needs a backend with gradients (`llmrl.llm.HFLLM`): others raise ConfigError.
        """
        module, tok = _trainable(self.llm)
        if not transitions:
            raise ConfigError("fit needs at least one transition")
        if epochs < 1 or rank < 1 or layers < 1 or batch_size < 1 or lr <= 0:
            raise ConfigError(
                f"fit needs epochs, rank, layers, batch_size >= 1 and lr > 0; got {epochs}, {rank}, {layers}, "
                f"{batch_size}, {lr}"
            )
        import torch

        self.examples, self._head = [], _INSTRUCTION + "\n\n"  # the fine-tuned model needs no examples
        if self.manual:
            self._head = self.manual.strip() + "\n\n" + self._head
        params = add_lora(module, rank=rank, layers=layers, targets=targets, seed=seed)
        t0 = time.perf_counter()
        tuner = _Tuner(module, tok, batch_size=batch_size)
        data = [
            tuner.example(self.prompt(tr.state, tr.action), self.completion(tr).rstrip("\n") + _STOP)
            for tr in transitions
        ]
        # the frozen layers run for each example the first time a batch holds it (so max_minutes holds)
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        rng = np.random.default_rng(seed)
        steps, losses = 0, []
        total_steps = epochs * math.ceil(len(data) / batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / 10) * max(0.05, 1 - s / total_steps)
        )
        module.train()
        stop = False
        epoch = 0
        for epoch in range(epochs):  # noqa: B007 (reported below)
            order = rng.permutation(len(data))
            for b in range(0, len(data), batch_size):
                loss = tuner.loss([data[int(i)] for i in order[b : b + batch_size]])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                steps += 1
                losses.append(loss.item())
                if log is not None:
                    log(
                        {
                            "wm/loss": losses[-1],
                            "wm/step": float(steps),
                            "wm/epoch": float(epoch),
                            "wm/seconds": time.perf_counter() - t0,
                        }
                    )
                if max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes:
                    stop = True
                    break
            if stop:
                break
        module.eval()
        settings = (len(data), epochs, lr, rank, layers, tuple(targets), seed, steps, self.target)
        digest = hashlib.sha256(repr((settings, [d.ids[-8:] for d in data[:64]])).encode()).hexdigest()[:12]
        _rename(self.llm, f"+wm-lora-{digest}")
        self._memo.clear()
        return FitReport(
            transitions=len(data),
            steps=steps,
            epochs=epoch + 1,
            seconds=time.perf_counter() - t0,
            first_loss=float(np.mean(losses[:5])) if losses else float("nan"),
            last_loss=float(np.mean(losses[-5:])) if losses else float("nan"),
            trainable_parameters=int(sum(p.numel() for p in params)),
            cache_seconds=tuner.frozen_seconds,
        )


@dataclass(frozen=True)
class FitReport:
    """What a fine-tuning run did."""

    transitions: int
    steps: int
    epochs: int
    seconds: float
    first_loss: float
    last_loss: float
    trainable_parameters: int
    cache_seconds: float = 0.0
    """Of `seconds`, the time spent running the frozen lower layers once per example."""


@dataclass
class _Example:
    """One fine-tuning sequence: token ids (prompt + answer), the prompt's length, the frozen layers' output."""

    ids: list[int]
    prompt_len: int
    frozen: Any = None  # (len(ids) - 1, d): the input of the first adapted layer, computed once


class _Tuner:
    """The fine-tuning forward pass, done the way `LLMPolicy` trains on a CPU (see `roles/_decoder.py`).

    The layers below the first adapted one are frozen, so their output for a sequence never changes: it is
    computed once per example (`cache_frozen`) and each step runs only the adapted top layers. The last
    layer and the 262k-word output layer run only at the rows that predict an answer token (the loss is
    on those alone), so the result is the full model's cross-entropy at a fraction of the cost.
    """

    def __init__(self, module: Any, tok: Any, *, batch_size: int) -> None:
        from llmrl.roles._decoder import Stack

        self.stack, self.tok, self.batch_size = Stack(module), tok, batch_size
        adapted = [
            int(m.group(1))
            for name, mod in module.named_modules()
            if hasattr(mod, "lora_a") and (m := re.search(r"(?:^|\.)layers\.(\d+)\.", name))
        ]
        self.first = min(adapted) if adapted else len(self.stack.layers) - 1
        eos = tok.eos_token_id
        self.tail = [eos] if eos is not None else []
        self.frozen_seconds = 0.0  # time spent in the frozen layers (FitReport.cache_seconds)

    def example(self, prompt: str, answer: str) -> _Example:
        p = list(self.tok(prompt, add_special_tokens=True)["input_ids"])
        c = list(self.tok(answer, add_special_tokens=False)["input_ids"]) + self.tail
        if len(p) + len(c) > self.stack.context:
            raise ConfigError(
                f"a fine-tuning example of {len(p) + len(c)} tokens is longer than the model's usable context "
                f"({self.stack.context} tokens); shorten the state text"
            )
        return _Example(p + c, len(p))

    def _batch(self, batch: Sequence[_Example]) -> tuple[Any, Any, Any]:
        """Right-padded inputs' mask (B, 1, S, S) bool, positions (B, S) and lengths (B,)."""
        import torch

        lengths = torch.tensor([len(e.ids) - 1 for e in batch])  # the last token is only a target
        S = int(lengths.max())
        causal = torch.ones(S, S, dtype=torch.bool).tril()
        real = torch.arange(S)[None, :] < lengths[:, None]  # (B, S)
        mask = (causal[None] & real[:, None, :])[:, None]
        mask |= torch.eye(S, dtype=torch.bool)[None, None]  # padding rows attend to themselves only
        pos = torch.arange(S)[None].expand(len(batch), S)
        return mask, pos, lengths

    def cache_frozen(self, data: Sequence[_Example]) -> None:
        """Run the frozen lower layers once for every example not seen before (batched, no graph)."""
        import torch

        t0 = time.perf_counter()
        todo = [e for e in data if e.frozen is None]
        stack = self.stack
        with torch.no_grad():
            for b in range(0, len(todo), self.batch_size):
                chunk = todo[b : b + self.batch_size]
                mask, pos, lengths = self._batch(chunk)
                ids = torch.zeros(mask.shape[0], mask.shape[-1], dtype=torch.long)
                for i, e in enumerate(chunk):
                    ids[i, : len(e.ids) - 1] = torch.tensor(e.ids[:-1])
                h = stack.run(stack.embed(ids), 0, self.first, mask, pos)  # (B, S, d)
                for i, e in enumerate(chunk):
                    e.frozen = h[i, : int(lengths[i])].clone()
        self.frozen_seconds += time.perf_counter() - t0

    def loss(self, batch: Sequence[_Example]) -> Any:
        """Mean cross-entropy of the answer tokens (the eos included) over `batch`, with a graph."""
        import torch

        stack = self.stack
        self.cache_frozen(batch)
        mask, pos, lengths = self._batch(batch)
        B, S = pos.shape
        x = batch[0].frozen.new_zeros(B, S, batch[0].frozen.shape[-1])
        for i, e in enumerate(batch):
            x[i, : e.frozen.shape[0]] = e.frozen
        # row t predicts token t + 1: the answer's tokens are predicted by rows P - 1 .. len - 2
        n_ans = [len(e.ids) - e.prompt_len for e in batch]
        R = max(n_ans)
        rows = torch.tensor(
            [[e.prompt_len - 1 + min(j, n - 1) for j in range(R)] for e, n in zip(batch, n_ans)]
        )
        valid = torch.arange(R)[None, :] < torch.tensor(n_ans)[:, None]  # (B, R)
        targets = torch.tensor([e.ids[e.prompt_len :] + [0] * (R - n) for e, n in zip(batch, n_ans)])
        last = len(stack.layers) - 1
        if stack.fast_rows:  # the last layer only where its output is read
            h = stack.run(x, self.first, last, mask, pos)
            h = stack.last_rows(h, mask, pos, rows)  # (B, R, d)
        else:
            h = stack.run(x, self.first, last + 1, mask, pos)
            h = h[torch.arange(B)[:, None], rows]
        logits = stack.logits(stack.final_norm(h[valid]), None).float()  # (answer tokens, vocab)
        return torch.nn.functional.cross_entropy(logits, targets[valid])


def _trainable(llm: Any) -> tuple[Any, Any]:
    """(module, tokenizer) of a backend with gradients, else a ConfigError that names one."""
    backend = llm.__dict__.get("backend", llm) if hasattr(llm, "__dict__") else llm
    get = getattr(backend, "trainable", None)
    if get is None:
        raise ConfigError(
            f"{llm.name} has no gradients, so it cannot be fine-tuned; load the model through transformers "
            "instead: llmrl.llm.HFLLM.from_gguf() (the embedded Gemma) or llmrl.llm.load('hf:<path>')"
        )
    return get()


def _rename(llm: Any, suffix: str) -> None:
    base = re.sub(r"\+wm-lora-[0-9a-f]+$", "", llm.name)
    llm.name = base + suffix
    inner = llm.__dict__.get("backend") if hasattr(llm, "__dict__") else None
    if inner is not None and inner is not llm:
        inner.name = re.sub(r"\+wm-lora-[0-9a-f]+$", "", inner.name) + suffix


# -- measuring ------------------------------------------------------------------------------------------


def accuracy(
    model: WorldModel, transitions: Sequence[Transition], *, batch_size: int = 16
) -> dict[str, float]:
    """Exact match of the next state, reward within 0.1, done; overall and split by `predictable`.

    Keys: n, exact, reward, done, valid, and exact_predictable / exact_unpredictable with their counts
    (n_predictable, n_unpredictable) when both kinds occur.
    """
    hits, rew, don, val = [], [], [], []
    for b in range(0, len(transitions), batch_size):
        chunk = transitions[b : b + batch_size]
        p = model.predict([t.state for t in chunk], [t.action for t in chunk])
        for i, t in enumerate(chunk):
            hits.append(p.next_states[i] == t.next_state)
            rew.append(bool(p.valid[i]) and abs(p.rewards[i] - t.reward) <= 0.1)
            don.append(bool(p.valid[i]) and bool(p.dones[i]) == t.terminated)
            val.append(bool(p.valid[i]))
    out = {
        "n": float(len(hits)),
        "exact": float(np.mean(hits)) if hits else float("nan"),
        "reward": float(np.mean(rew)) if rew else float("nan"),
        "done": float(np.mean(don)) if don else float("nan"),
        "valid": float(np.mean(val)) if val else float("nan"),
    }
    pred = np.array([t.predictable for t in transitions], dtype=bool)
    if pred.any() and (~pred).any():
        h = np.array(hits)
        out.update(
            exact_predictable=float(h[pred].mean()),
            exact_unpredictable=float(h[~pred].mean()),
            n_predictable=float(pred.sum()),
            n_unpredictable=float((~pred).sum()),
        )
    return out


# -- using the model: plan, filter, imagine --------------------------------------------------------------


def lookahead(
    model: WorldModel,
    state: str,
    actions: Sequence[str],
    *,
    depth: int = 1,
    value: Callable[[str], float] | None = None,
    gamma: float = 0.95,
) -> np.ndarray:
    """Q estimates of each action from `state` by exhaustive search over predicted states, `depth` deep.

    Each level's distinct states are predicted in one batched call. A leaf is worth `value(text)` (0 if
    no value function); an episode end is worth its reward; an invalid prediction is worth the state's
    own value (the model said nothing usable). Shape (len(actions),).
    """
    if depth < 1:
        raise ConfigError(f"depth must be >= 1, got {depth}")
    v = value or (lambda _s: 0.0)
    levels: list[list[str]] = [[state]]
    preds: list[dict[str, Prediction]] = []
    for d in range(depth):
        frontier = levels[-1]
        p = model.predict([s for s in frontier for _ in actions], [a for _ in frontier for a in actions])
        table = {}
        nxt: list[str] = []
        for i, s in enumerate(frontier):
            sl = slice(i * len(actions), (i + 1) * len(actions))
            table[s] = Prediction(
                p.next_states[sl], p.rewards[sl], p.dones[sl], p.confidences[sl], p.valid[sl]
            )
            if d + 1 < depth:
                nxt += [
                    n for n, done in zip(table[s].next_states, table[s].dones) if n is not None and not done
                ]
        preds.append(table)
        levels.append(list(dict.fromkeys(nxt)))

    def q(s: str, d: int) -> np.ndarray:
        pr = preds[d][s]
        out = np.empty(len(actions))
        for j in range(len(actions)):
            n = pr.next_states[j]
            if n is None:
                out[j] = v(s)
            elif pr.dones[j]:
                out[j] = pr.rewards[j]
            elif d + 1 < depth:
                out[j] = pr.rewards[j] + gamma * float(q(n, d + 1).max())
            else:
                out[j] = pr.rewards[j] + gamma * v(n)
        return out

    return q(state, 0)


def useful_actions(model: WorldModel, states: Sequence[str], actions: Sequence[str]) -> np.ndarray:
    """Action filter: (len(states), len(actions)) bool, False for actions predicted to change nothing
    (same state, no reward, no end). Invalid predictions are kept (never prune on no information); a row
    with every action pruned keeps them all."""
    p = model.predict([s for s in states for _ in actions], [a for _ in states for a in actions])
    same = np.array([n == s for n, s in zip(p.next_states, (s for s in states for _ in actions))])
    keep = ~(p.valid & same & (p.rewards == 0) & ~p.dones)
    keep = keep.reshape(len(states), len(actions))
    keep[~keep.any(axis=1)] = True
    return keep


class WorldModelPlanner:
    """An agent that acts by lookahead in a world model: `act(obs, info)` reads `info["text"]`.

    actions: the action words, in action-id order. value: leaf value of a state text (a goal test is a
    value of 1 at the goal). Ties are broken at random (seeded), so a flat value does not freeze it.
    """

    def __init__(
        self,
        model: WorldModel,
        actions: Sequence[str],
        *,
        depth: int = 1,
        value: Callable[[str], float] | None = None,
        gamma: float = 0.95,
        seed: int = 0,
        text_key: str = "text",
    ) -> None:
        if not actions:
            raise ConfigError("WorldModelPlanner needs at least one action word")
        self.model, self.actions = model, list(actions)
        self.depth, self.value, self.gamma, self.text_key = depth, value, gamma, text_key
        self.rng = np.random.default_rng(seed)

    def q_values(self, text: str) -> np.ndarray:
        return lookahead(self.model, text, self.actions, depth=self.depth, value=self.value, gamma=self.gamma)

    def act(self, obs: Any, info: dict) -> int:
        if self.text_key not in info:
            raise ConfigError(f"WorldModelPlanner reads info[{self.text_key!r}]: wrap the env in WithText")
        q = self.q_values(info[self.text_key])
        best = np.flatnonzero(q >= q.max() - 1e-9)
        return int(self.rng.choice(best))


def imagine(
    model: WorldModel,
    states: Sequence[str],
    actions: Sequence[str],
    *,
    min_confidence: float = 0.0,
) -> list[Transition]:
    """Dyna-style imagined transitions: predictions for (state, action) pairs, kept when valid and at
    least `min_confidence` (the gate). The caller picks how many to ask for (the imagination ratio)."""
    p = model.predict(states, actions)
    out = []
    for i, (s, a) in enumerate(zip(states, actions)):
        nxt = p.next_states[i]
        if nxt is not None and p.confidences[i] >= min_confidence:
            out.append(Transition(s, a, nxt, float(p.rewards[i]), bool(p.dones[i]), source="imagined"))
    return out


# -- the role: the world model's accuracy in the training log ---------------------------------------------


def _action_words(env: Any) -> tuple[str, ...]:
    """The action words of the first env found down the wrapper chain (vector envs: their first env)."""
    from llmrl.envs.transitions import action_names

    e = env
    while e is not None:
        for candidate in (e, *(getattr(e, "envs", None) or ())[:1]):
            try:
                return action_names(candidate)
            except (ConfigError, AttributeError):
                continue
        e = getattr(e, "env", None)
    raise ConfigError("no action words for this env; pass actions=[...] (one word per action id)")


class WorldModelMonitor(RoleWrapper):
    """`llmrl train --role world-model`: the LLM predicts each next state text while the agent trains,
    and the training log gets its accuracy (`wm/exact`, `wm/reward`, `wm/done`, `wm/unparseable`).

    The first `shots` real transitions with distinct actions become the few-shot examples; then one env
    step in `every` is predicted (per env). The env's reward and observations are unchanged: the role
    only measures, so an agent trains as without it. `info["wm_prediction"]` holds the last prediction.
    """

    def __init__(
        self,
        env: Any,
        llm: LLM,
        *,
        shots: int = 3,
        every: int = 1,
        target: Target = "full",
        manual: str | None = None,
        actions: Sequence[str] | None = None,
        max_tokens: int = 96,
    ) -> None:
        super().__init__(env)
        if shots < 1 or every < 1:
            raise ConfigError(f"shots and every must be >= 1, got {shots} and {every}")
        self.words = tuple(actions) if actions is not None else _action_words(env)
        self.llm, self.shots, self.every = llm, int(shots), int(every)
        self.settings = {"target": target, "manual": manual, "max_tokens": max_tokens,
                         "describer": _describer_below(env)}  # fmt: skip
        self.model: LLMWorldModel | None = None
        self.examples: list[Transition] = []
        self._texts: list[str | None] = [None] * self.num_envs
        self._actions = np.zeros(self.num_envs, dtype=np.int64)
        self._count = 0
        self.scores = {"predicted": 0, "exact": 0, "reward": 0, "done": 0}
        check_capabilities(llm.name, llm.capabilities, ("generate", "score"))

    def step(self, action: Any):
        self._actions = np.asarray(action, dtype=np.int64).reshape(self.num_envs)
        return super().step(action)

    def process(self, obs, rewards, terminated, truncated, infos, starts):
        asked: list[tuple[int, Transition]] = []
        for i, info in enumerate(infos):
            text, prev = info.get("text"), self._texts[i]
            if text is None:
                raise ConfigError("WorldModelMonitor reads info['text']: wrap the env in llmrl.envs.WithText")
            if not starts[i] and prev is not None:
                tr = Transition(
                    prev, self.words[int(self._actions[i])], text, float(rewards[i]), bool(terminated[i])
                )
                if self.model is None:
                    if all(e.action != tr.action for e in self.examples):
                        self.examples.append(tr)
                    if len(self.examples) >= self.shots:
                        self.model = LLMWorldModel(self.llm, examples=self.examples, **self.settings)
                else:
                    self._count += 1
                    if self._count % self.every == 0:
                        asked.append((i, tr))
            # an episode's last text is not the next state of the reset's first one
            self._texts[i] = None if (terminated[i] or truncated[i]) else text
        if asked and self.model is not None:
            p = self.model.predict([t.state for _, t in asked], [t.action for _, t in asked])
            for j, (i, tr) in enumerate(asked):
                self.scores["predicted"] += 1
                self.scores["exact"] += int(p.next_states[j] == tr.next_state)
                self.scores["reward"] += int(bool(p.valid[j]) and abs(p.rewards[j] - tr.reward) <= 0.1)
                self.scores["done"] += int(bool(p.valid[j]) and bool(p.dones[j]) == tr.terminated)
                infos[i]["wm_prediction"] = p.next_states[j] if p.valid[j] else p.raw[j]
        return obs, rewards

    def llmrl_metrics(self) -> dict[str, float]:
        n = max(self.scores["predicted"], 1)
        out = {"wm/predicted": float(self.scores["predicted"])}
        out.update({f"wm/{k}": self.scores[k] / n for k in ("exact", "reward", "done")})
        if self.model is not None:
            out["wm/unparseable"] = float(self.model.counters["unparseable"])
            out.update(self.llm.stats.as_dict())
        return out


# -- imagination: Dyna-style transitions for an agent's replay ---------------------------------------------


class Dyna(RoleWrapper):
    """Imagined transitions from a world model for an agent that learns from replay (Dyna, Sutton 1990).

        env = TextFeatures(WithText(make("MiniGrid-DoorKey-5x5-v0"), describer=FullMiniGridDescriber()),
                           MiniGridTextFeatures(5))
        env = Dyna(env, world_model, ratio=1.0, min_confidence=0.5)
        DQN(env, imagined_fraction=0.5).learn(50_000)

    It remembers the distinct state texts the real env visited (`info["text"]`, the last `memory` of
    them) and owes `ratio` imagined transitions per real env step. `llmrl_imagined()` (the agent calls it
    after each step) starts that many / `horizon` rollouts from remembered states and runs each up to
    `horizon` steps with random actions, one batched model call per step, continuing from the predicted
    next state (so imagination reaches states the agent has not visited yet; a rollout ends at a predicted
    end, an invalid answer or the gate). It returns the predictions that are valid and at least
    `min_confidence` (the gate) as arrays: obs / next_obs through `features` (default: the `TextFeatures`
    wrapper's below, so real and imagined observations are made alike), actions, rewards, terminated.
    The env itself is unchanged.
    A model with `observe(env)` (`SimulatorModel`, the true dynamics) is shown every real state.
    """

    def __init__(
        self,
        env: Any,
        model: WorldModel,
        *,
        ratio: float = 1.0,
        horizon: int = 1,
        min_confidence: float = 0.0,
        features: Callable[[str], np.ndarray] | None = None,
        actions: Sequence[str] | None = None,
        memory: int = 10_000,
        seed: int = 0,
    ) -> None:
        super().__init__(env)
        if (
            not (ratio > 0 and math.isfinite(ratio))
            or memory < 1
            or horizon < 1
            or not 0.0 <= min_confidence <= 1.0
        ):
            raise ConfigError(
                f"Dyna needs ratio > 0, horizon >= 1, memory >= 1 and min_confidence in [0, 1]; got {ratio}, "
                f"{horizon}, {memory}, {min_confidence}"
            )
        self.model, self.ratio, self.min_confidence, self.memory = model, float(ratio), min_confidence, memory
        self.horizon = int(horizon)
        self.words = tuple(actions) if actions is not None else _action_words(env)
        self.features = features if features is not None else _features_below(env)
        self._observe = getattr(model, "observe", None)
        if self._observe is not None and self.is_vector and getattr(env, "envs", None) is None:
            raise ConfigError(
                "a model that observes the env (SimulatorModel) needs a sync vector env (env.envs)"
            )
        self._states: dict[str, None] = {}  # insertion-ordered set: the oldest is dropped first
        self._owed = 0.0
        self.rng = np.random.default_rng(seed)
        self.counters = {"asked": 0, "imagined": 0, "invalid": 0, "gated": 0}

    def process(self, obs, rewards, terminated, truncated, infos, starts):
        for i, info in enumerate(infos):
            if "text" not in info:
                raise ConfigError("Dyna reads info['text']: wrap the env in llmrl.envs.WithText")
            if terminated[i] or truncated[i]:
                continue  # an episode's last state is never acted in
            new = self._states.pop(info["text"], 0) is not None
            self._states[info["text"]] = None
            if new and self._observe is not None:  # the simulator copies each state once
                self._observe(self.env.envs[i] if self.is_vector else self.env)
        while len(self._states) > self.memory:
            del self._states[next(iter(self._states))]
        self._owed += self.ratio * (0 if starts.all() else len(infos))
        return obs, rewards

    def llmrl_imagined(self) -> dict[str, np.ndarray] | None:
        """The imagined transitions owed so far (None when none are due or none pass the gate)."""
        n = int(self._owed)
        if n < 1 or not self._states:
            return None
        self._owed -= n
        known = list(self._states)
        states = [known[int(i)] for i in self.rng.integers(len(known), size=math.ceil(n / self.horizon))]
        got: dict[str, list] = {"states": [], "actions": [], "rewards": [], "next": [], "terminated": []}
        for _ in range(self.horizon):
            action_ids = self.rng.integers(len(self.words), size=len(states))
            p = self.model.predict(states, [self.words[int(a)] for a in action_ids])
            keep = np.flatnonzero(p.valid & (p.confidences >= self.min_confidence))
            self.counters["asked"] += len(states)
            self.counters["invalid"] += int((~p.valid).sum())
            self.counters["gated"] += int(p.valid.sum()) - len(keep)
            for i in keep[: n - len(got["states"])]:
                got["states"].append(states[i])
                got["actions"].append(int(action_ids[i]))
                got["rewards"].append(float(p.rewards[i]))
                got["next"].append(str(p.next_states[i]))  # valid: not None
                got["terminated"].append(bool(p.dones[i]))
            states = [str(p.next_states[i]) for i in keep if not p.dones[i]]  # the rollouts go on
            if not states or len(got["states"]) >= n:
                break
        self.counters["imagined"] += len(got["states"])
        if not got["states"]:
            return None
        return {
            "obs": np.stack([self.features(s) for s in got["states"]]),
            "actions": np.array(got["actions"], dtype=np.int64),
            "rewards": np.array(got["rewards"], dtype=np.float32),
            "next_obs": np.stack([self.features(s) for s in got["next"]]),
            "terminated": np.array(got["terminated"], dtype=bool),
        }

    def llmrl_metrics(self) -> dict[str, float]:
        return {f"dyna/{k}": float(v) for k, v in self.counters.items()}


def _describer_below(env: Any) -> Any:
    """The describer of the first `WithText` in `env`'s chain (None when there is none)."""
    e = env
    while e is not None:
        if getattr(e, "describer", None) is not None:
            return e.describer
        e = getattr(e, "env", None)
    return None


def _features_below(env: Any) -> Callable[[str], np.ndarray]:
    from llmrl.envs.transitions import TextFeatures

    e = env
    while e is not None:
        if isinstance(e, TextFeatures):
            return e.features
        e = getattr(e, "env", None)
    raise ConfigError(
        "Dyna needs features(text) -> observation: pass features=..., or wrap the env in "
        "llmrl.envs.transitions.TextFeatures first (the agent then sees the same features)"
    )
