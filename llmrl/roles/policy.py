"""The LLM as the policy (GLAM, Carta et al. 2023, arXiv 2302.02662; TWOSOME, Tan et al. 2024, arXiv
2401.14151): each action string is scored as a continuation of a prompt that holds the task, the state in
words, a short history and the action list; the softmax over the scores is the policy, a value head reads
the prompt's last hidden state, and llmrl's PPO trains LoRA adapters (or heads only) on top.

    llm = HFLLM.from_gguf()                                        # the embedded Gemma 3 270M, trainable
    policy = LLMPolicy(llm, GLAM_ACTIONS, train="lora")            # top layer adapted, value head
    env = policy.wrap(llmrl.make("BabyAI-GoToRedBallNoDists-v0", num_envs=4))
    agent = PPO(env, policy=policy, n_steps=64, batch_size=64, learning_rate=1e-4).learn(4_000)

The agent knows nothing about text: `policy.wrap(env)` turns each state's prompt into an integer id (the
observation, a `Discrete` space) and the policy owns the table from ids back to texts (saved with its
state, so checkpoints resume exactly). What makes it train on two CPU cores:

- **one pass per state, all actions in it.** The prompt and every action's tokens are packed into one
  sequence with a tree-shaped attention mask (each action attends to the prompt and to itself, with the
  positions it would have as a plain continuation), so the prompt is encoded once and shared by all actions;
- **frozen lower layers cached.** Below the adapted layers nothing changes during training, so their output
  is computed once per distinct state text (one state at a time, so it is bit-identical whenever it is
  recomputed) and rollouts and PPO epochs only run the top layers;
- **only the action tokens' output rows** (`vocab="actions"`): the scores come from the rows of the output
  layer that the actions' tokens use (a softmax over that set at each position) instead of all 262k words;
- **batched** across the vector env and the PPO minibatch; cache hits and LLM seconds go into the log.

`train="heads"` freezes the whole LLM (a prior): its action scores and last hidden state are cached per
state, and PPO trains a zero-initialised logit head and the value head on them. `train="none"` acts
zero-shot with any backend, llama.cpp included, through the protocol's `score()`.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from llmrl.errors import ConfigError, optional_import
from llmrl.llm.base import UnsupportedOperationError
from llmrl.roles._decoder import Stack as _Stack
from llmrl.roles.base import RoleWrapper, with_text

__all__ = [
    "LLMPolicy",
    "TextIds",
    "TextTable",
    "PolicyRole",
    "PolicyObservation",
    "GLAM_ACTIONS",
    "DEFAULT_TEMPLATE",
    "action_names",
]

GLAM_ACTIONS: tuple[str, ...] = ("turn left", "turn right", "go forward", "pick up", "drop", "toggle")
"""MiniGrid/BabyAI actions 0-5 as GLAM words them (action 6, "done", is left out as GLAM does)."""

DEFAULT_TEMPLATE = "Possible actions: {actions}.\n{task}{state}\n{history}Next action:"
"""The prompt: the action list, the task (empty for BabyAI, whose state text starts with the mission), the
state in words, the history line ("Previous actions: ...\\n" when `history > 0`), and the cue the action
strings continue (each is scored as " " + action)."""

Train = Literal["lora", "heads", "none"]
Normalise = Literal["sum", "token", "word"]


def action_names(env: Any) -> tuple[str, ...]:
    """The action strings for `env` (single or vector): GLAM's words for MiniGrid/BabyAI, else the env's
    `get_action_meanings()`."""
    e = env
    while isinstance(getattr(e, "env", None), (gym.Env, gym.vector.VectorEnv)):  # down the wrapper chain
        e = e.env
    base = (getattr(e, "envs", None) or [e])[0]  # a sync vector env's first env
    base = getattr(base, "unwrapped", base)
    if type(base).__module__.startswith("minigrid"):
        return GLAM_ACTIONS
    meanings = getattr(base, "get_action_meanings", None)
    if meanings is not None:
        return tuple(str(m).lower().replace("_", " ") for m in meanings())
    raise ConfigError(f"{type(base).__name__} has no action names; pass actions=[...] to LLMPolicy")


class TextTable:
    """Distinct prompt texts and their integer ids (the observation PPO stores), in order of first sight."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.texts: list[str] = []
        self._ids: dict[str, int] = {}

    def intern(self, text: str) -> int:
        i = self._ids.get(text)
        if i is None:
            if len(self.texts) >= self.limit:
                raise ConfigError(
                    f"more than {self.limit} distinct state texts; raise LLMPolicy(max_texts=...)"
                )
            i = self._ids[text] = len(self.texts)
            self.texts.append(text)
        return i

    def __getitem__(self, i: int) -> str:
        return self.texts[i]

    def __len__(self) -> int:
        return len(self.texts)

    def load(self, texts: Sequence[str]) -> None:
        self.texts = list(texts)
        self._ids = {t: i for i, t in enumerate(self.texts)}


class PolicyObservation(RoleWrapper):
    """What the wrappers of the policy modules share (`TextIds`, `llmrl.roles.vlm_policy.FrameIds`): the env
    offers the policy's actions (the first `policy.n` of the env's), names them for GIF panels and terminal
    renders, and the policy's counters go to the training log."""

    def __init__(self, env: Any, policy: Any) -> None:
        self.policy = policy  # before the base class asks transform_space
        super().__init__(env)

    def offer_actions(self) -> None:
        """Restrict the action space to the policy's actions (call from `transform_space`)."""
        if self.is_vector:
            self.single_action_space = spaces.Discrete(self.policy.n)
            self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        else:
            self.action_space = spaces.Discrete(self.policy.n)

    def get_action_meanings(self) -> list[str]:
        """The policy's action strings (GIF panels and terminal renders label the probabilities with them)."""
        return list(self.policy.actions)

    def llmrl_metrics(self) -> dict[str, float]:
        return self.policy.metrics()


def check_action_space(env: Any, policy: Any) -> None:
    """ConfigError unless `env` has a Discrete action space with at least the policy's `n` actions."""
    space = env.single_action_space if isinstance(env, gym.vector.VectorEnv) else env.action_space
    if not isinstance(space, spaces.Discrete) or int(space.n) < policy.n:
        raise ConfigError(
            f"the env has action space {space} but the policy has {policy.n} actions {list(policy.actions)}; "
            "give one string per Discrete action"
        )


def gradient_llm(llm: Any) -> Any:
    """The model behind a cost-control wrapper; the embedded llama.cpp model swapped for the same GGUF
    de-quantised through transformers (a policy that trains needs gradients through it)."""
    llm = getattr(llm, "backend", None) or llm
    from llmrl.llm.llamacpp import EMBEDDED_NAME

    if getattr(llm, "module", None) is None and getattr(llm, "name", "") == EMBEDDED_NAME:
        from llmrl.llm.hf import HFLLM

        return HFLLM.from_gguf()
    return llm


def mlp_head(d: int, hidden: int, n_out: int, gain: float) -> nn.Sequential:
    """LayerNorm (no affine) -> Linear(d, hidden) -> Tanh -> Linear(hidden, n_out): a head on an LLM's hidden
    state (orthogonal init, `gain` on the output layer, zero biases)."""
    first, out = nn.Linear(d, hidden), nn.Linear(hidden, n_out)
    nn.init.orthogonal_(first.weight, math.sqrt(2))
    nn.init.zeros_(first.bias)
    nn.init.orthogonal_(out.weight, gain)
    nn.init.zeros_(out.bias)
    return nn.Sequential(nn.LayerNorm(d, elementwise_affine=False), first, nn.Tanh(), out)


class TextIds(PolicyObservation):
    """The observation becomes the id of the state's prompt in `policy.texts` (`Discrete`); made by
    `LLMPolicy.wrap(env)`. Reads `info["text"]` (adds `WithText` when missing) and keeps each env's last
    `policy.history` action names for the prompt's history line."""

    def __init__(self, env: Any, policy: LLMPolicy) -> None:
        super().__init__(with_text(env), policy)
        # plain lists, so the env-state snapshot of a checkpoint holds them (exact resume)
        self.past: list[list[str]] = [[] for _ in range(self.num_envs)]
        self.last_actions: list[int] = [-1] * self.num_envs

    def transform_space(self, space: gym.Space) -> gym.Space:
        self.offer_actions()
        return spaces.Discrete(self.policy.texts.limit)

    def step(self, action: Any):
        self.last_actions = [int(a) for a in np.asarray(action).reshape(-1)]
        return super().step(action)

    def process(self, obs, rewards, terminated, truncated, infos, starts):
        ids = np.zeros(self.num_envs, dtype=np.int64)
        keep = self.policy.history
        for i, info in enumerate(infos):
            if "text" not in info:
                raise ConfigError(
                    "LLMPolicy needs info['text'] (the state in words); wrap the env in llmrl.envs.WithText "
                    "or give it a describer"
                )
            if starts[i]:
                self.past[i] = []
            elif keep:
                self.past[i] = [*self.past[i], self.policy.actions[self.last_actions[i]]][-keep:]
            ids[i] = self.policy.texts.intern(self.policy.prompt(str(info["text"]), self.past[i]))
        return ids, rewards


class LLMPolicy(nn.Module):
    """A policy module for llmrl's PPO: ids of prompt texts (B,) -> (action logits (B, n), value (B,)).

    llm: `llmrl.llm.hf.HFLLM` (or anything with `.module` and `.tokenizer` of a transformers causal LM
        with a Llama-style decoder stack, Gemma 3 included) for train="lora"/"heads"; any backend with
        `score()` (llama.cpp, served models) for train="none".
    actions: one string per Discrete action, in action order (`GLAM_ACTIONS`, `action_names(env)`).
    task: text put before the state (the goal, when the state text does not say it).
    template: the prompt, with {actions}, {task}, {state} and {history} fields (`DEFAULT_TEMPLATE`).
    history: how many previous actions the prompt lists (0: none).
    train: "lora" (adapters on the top `lora_layers` layers plus the value head), "heads" (the LLM frozen:
        a zero-initialised logit head and the value head on its cached last hidden state) or "none".
    lora_layers: how many top layers get adapters (None: all); the layers below are frozen and cached.
    lora_rank, lora_alpha, lora_targets: the adapters (TWOSOME: r=8, alpha=16 on q/v projections).
    normalise: an action's score is the sum of its token log-probs ("sum", GLAM), divided by its token
        count ("token") or word count ("word", TWOSOME).
    vocab: "actions" (each position's softmax over the tokens the actions use: the output layer's rows for
        those tokens only) or "full" (over the whole vocabulary, GLAM's exact log-probs).
    value_hidden: width of the value head's hidden layer.
    cache_mb: memory for the cached frozen activations (least recently used states are dropped).
    max_texts: the most distinct prompts (the size of the id observation space).
    frozen_dtype: the frozen layers run (in place, on the model given) and are cached in this dtype;
        "bfloat16" makes a first visit ~2.5x faster on CPUs with avx512_bf16 or AMX (0.058 s against 0.145 s
        for a 100-token Gemma 3 270M prompt) and halves the cache, at bfloat16's precision in the prior.
    seed: initialises the heads and adapters (independent of the global RNG).
    """

    norm: torch.Tensor
    out_rows: torch.Tensor | None
    feature_offset: torch.Tensor
    feat_n: torch.Tensor
    feat_sum: torch.Tensor
    feat_sq: torch.Tensor
    llm: Any
    net: Any

    def __init__(
        self,
        llm: Any,
        actions: Sequence[str],
        *,
        task: str = "",
        template: str = DEFAULT_TEMPLATE,
        history: int = 0,
        train: Train = "lora",
        lora_layers: int | None = 1,
        lora_rank: int = 8,
        lora_alpha: float = 16.0,
        lora_targets: Sequence[str] = ("q_proj", "v_proj"),
        normalise: Normalise = "sum",
        vocab: Literal["actions", "full"] = "actions",
        value_hidden: int = 256,
        cache_mb: float = 2048.0,
        max_texts: int = 2**31 - 1,
        frozen_dtype: Literal["float32", "bfloat16"] = "float32",
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_options(train, normalise, vocab, history, lora_layers, lora_rank, template)
        if frozen_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"frozen_dtype={frozen_dtype!r} is invalid: use float32 or bfloat16")
        self.frozen_dtype = getattr(torch, frozen_dtype)
        self.actions = tuple(str(a) for a in actions)
        if len(self.actions) < 2:
            raise ConfigError(f"actions={self.actions!r}: a policy needs at least two action strings")
        self.task, self.template, self.history = task, template, int(history)
        self.train_mode, self.normalise, self.vocab = train, normalise, vocab
        self.texts = TextTable(int(max_texts))
        self._stats = {"states": 0, "hits": 0, "misses": 0, "seconds": 0.0, "cache_mb": 0.0}
        self._cache = StateCache(cache_mb, self._stats)
        self.n = len(self.actions)
        words = torch.tensor([len(a.split()) for a in self.actions], dtype=torch.float32)
        # the LLM is held outside the module tree: the policy's state (checkpoints) is adapters + heads only
        object.__setattr__(self, "llm", llm)
        net = getattr(llm, "module", None)
        if net is None or getattr(llm, "tokenizer", None) is None:
            if train != "none":
                raise ConfigError(
                    f"train={train!r} needs gradients through the model, which {getattr(llm, 'name', llm)!r} "
                    "cannot give; use llmrl.llm.hf.HFLLM.from_gguf() (or 'hf:<model>'), or train='none'"
                )
            if "score" not in getattr(llm, "capabilities", {"score"}):
                raise UnsupportedOperationError(
                    f"{llm.name} cannot score continuations; LLMPolicy needs score()"
                )
            self.stack: Any = None
            self.value_bias = nn.Parameter(torch.zeros(()))  # so PPO can be built (nothing else to train)
            self.register_buffer("norm", _norm_divisor(normalise, [1.0] * self.n, words), persistent=False)
            self._check_prompt_length(None)
            return
        object.__setattr__(self, "net", net)
        self.stack = _Stack(net)
        tok = llm.tokenizer
        ids = [list(tok(" " + a, add_special_tokens=False)["input_ids"]) for a in self.actions]
        _check_action_ids(self.actions, ids)
        self.action_ids = ids
        self.register_buffer("norm", _norm_divisor(normalise, [len(i) for i in ids], words), persistent=False)
        self._layout(ids)
        self._check_prompt_length(tok)
        for p in net.parameters():
            p.requires_grad_(False)
        # heads and adapters from their own seed: the same policy whatever the global RNG state
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._build_trainable(train, lora_layers, lora_rank, lora_alpha, lora_targets, value_hidden)
        for layer in self.stack.layers[: self.first_trained]:  # in place: the frozen layers are ours to run
            layer.to(self.frozen_dtype)
        self.register_buffer("out_rows", self.stack.output_rows(self.unique_ids) if vocab == "actions" else None,
                             persistent=False)  # fmt: skip
        # the heads read the last hidden state minus the same state under a content-free prompt (no state text):
        # a base model's final states differ little between states next to what all prompts share, and
        # without the shared part taken out the heads could barely tell states apart (DESIGN: calibrate
        # against a content-free prompt). Fixed at construction, so it is exact on every reload.
        self.register_buffer("feature_offset", self._content_free_hidden(), persistent=False)
        # heads mode: the features are standardised by their mean and spread over the distinct states seen so
        # far (each state counted once, when first computed; saved with the policy, so a resumed run goes on
        # with the same statistics). Subtracting the content-free prompt alone leaves what every state of a
        # task shares (the mission), which dominated the features and collapsed the policy onto one action.
        d = self.stack.hidden
        self.register_buffer("feat_n", torch.zeros((), dtype=torch.float64))
        self.register_buffer("feat_sum", torch.zeros(d, dtype=torch.float64))
        self.register_buffer("feat_sq", torch.zeros(d, dtype=torch.float64))
        self._counted: set[int] = set()

    def _build_trainable(self, train, lora_layers, lora_rank, lora_alpha, lora_targets, value_hidden) -> None:
        net, d = self.net, self.stack.hidden
        self.value_head = mlp_head(d, value_hidden, 1, 1.0)
        n_layers = len(self.stack.layers)
        if train == "lora":
            k = n_layers if lora_layers is None else min(int(lora_layers), n_layers)
            self.first_trained = n_layers - k
            self.adapters = nn.ParameterList(
                _inject_lora(
                    net, list(range(self.first_trained, n_layers)), lora_rank, lora_alpha, lora_targets
                )
            )
        else:
            self.first_trained = n_layers  # everything frozen: the cache holds the final hidden states
            if train == "heads":
                head = nn.Linear(d, self.n)  # zero: training starts from the LLM's own policy
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)
                self.logit_head = nn.Sequential(nn.LayerNorm(d, elementwise_affine=False), head)

    def _content_free_hidden(self) -> torch.Tensor:
        """Final hidden state (d,) at the last token of the prompt with an empty state."""
        with torch.inference_mode(False), torch.no_grad():
            ids = list(self.llm.tokenizer(self.prompt(""))["input_ids"])
            seq = torch.tensor(ids + [t for a in self.action_ids for t in a])
            mask, pos = self._mask_positions([len(ids)], len(seq))
            h = self.stack.run(
                self._frozen(seq, mask, pos), self.first_trained, len(self.stack.layers), mask, pos
            )
            return self.stack.final_norm(h[0, len(ids) - 1]).float().clone()

    # -- prompts and the env side ------------------------------------------------------------------------

    def prompt(self, state: str, past: Sequence[str] = ()) -> str:
        """The prompt for one state text and the previous actions (oldest first)."""
        hist = f"Previous actions: {', '.join(past)}.\n" if past else ""
        task = f"{self.task}\n" if self.task else ""
        return self.template.format(actions=", ".join(self.actions), task=task, state=state, history=hist)

    def wrap(self, env: Any) -> TextIds:
        """`env` (single or vector) with observations turned into prompt ids for this policy. An env with more
        actions than the policy has strings (MiniGrid's unused "done") is offered the first `n` only."""
        check_action_space(env, self)
        return TextIds(env, self)

    def metrics(self) -> dict[str, float]:
        """Counters for the training log: states scored, cache hits/misses, LLM seconds, cache size."""
        return {f"llm/{k}": float(v) for k, v in self._stats.items()}

    # -- the module PPO calls ----------------------------------------------------------------------------

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B,) -> logits (B, n), value (B,)."""
        keys = [int(i) for i in ids.reshape(-1).tolist()]
        t0 = time.perf_counter()
        self._stats["states"] += len(keys)
        if self.stack is None:
            logits = torch.stack([self._zero_shot(k) for k in keys])
            value = self.value_bias.expand(len(keys))
        elif self.first_trained == len(self.stack.layers):
            cached = [self._entry(k) for k in keys]
            prior = torch.stack([c[0] for c in cached])  # (B, n)
            h = torch.stack([c[1] for c in cached])  # (B, d) final hidden state, last prompt token
            h = self._standardise(h)
            logits = prior + self.logit_head(h) if self.train_mode == "heads" else prior
            value = self.value_head(h).squeeze(-1)
        else:
            logits, value = self._upper([self._entry(k) for k in keys])
        self._stats["seconds"] += time.perf_counter() - t0
        return logits, value

    def _standardise(self, h: torch.Tensor) -> torch.Tensor:
        """(h - mean) / std over the distinct states seen so far (before two: minus the content-free state)."""
        if self.feat_n < 2:
            return h - self.feature_offset
        mean = self.feat_sum / self.feat_n
        var = (self.feat_sq / self.feat_n - mean**2).clamp_(min=0.0)
        return ((h.double() - mean) / (var.sqrt() + 1e-3)).to(h.dtype)

    def _count(self, key: int, h: torch.Tensor) -> None:
        if key not in self._counted:
            self._counted.add(key)
            self.feat_n += 1
            self.feat_sum += h.double()
            self.feat_sq += h.double() ** 2

    def _zero_shot(self, key: int) -> torch.Tensor:
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        scores = np.asarray(
            self.llm.score(self.texts[key], [" " + a for a in self.actions]), dtype=np.float32
        )
        out = torch.as_tensor(scores) / self.norm
        self._cache.put(key, out)
        return out

    # -- structure of one packed sequence: prompt, then every action's tokens ----------------------------

    def _layout(self, ids: list[list[int]]) -> None:
        """Index tensors for the action block that follows a prompt of any length P (see `_positions`)."""
        self.unique_ids = sorted({t for a in ids for t in a})
        col = {t: j for j, t in enumerate(self.unique_ids)}
        offsets = np.cumsum([0] + [len(a) for a in ids])[:-1]
        self.n_action_tokens = int(sum(len(a) for a in ids))
        # query row (relative to the action block, -1 = the prompt's last token) predicting each action token
        q, tgt, owner, rel = [], [], [], []
        block = torch.zeros(self.n_action_tokens, self.n_action_tokens, dtype=torch.bool)
        for a, (toks, off) in enumerate(zip(ids, offsets)):
            for j, t in enumerate(toks):
                q.append(-1 if j == 0 else int(off) + j - 1)
                tgt.append(col[t] if self.vocab == "actions" else t)
                owner.append(a)
                rel.append(j)
                block[off + j, off : off + j + 1] = True  # an action token sees its own earlier tokens
        # the distinct query rows (row 0 is the prompt's last token) and, per action token, its row among them
        self._qrows = torch.tensor(sorted(set(q)))
        self._qidx = torch.tensor([sorted(set(q)).index(r) for r in q])
        self._tgt = torch.tensor(tgt)
        self._owner = torch.tensor(owner)
        self._rel = torch.tensor(rel)  # position after the prompt
        self._block = block

    def _sequence(self, key: int) -> tuple[torch.Tensor, int]:
        ids = self.llm.tokenizer(self.texts[key])["input_ids"]
        limit = self.stack.context
        if len(ids) + max(len(a) for a in self.action_ids) > limit:
            raise ConfigError(
                f"a prompt of {len(ids)} tokens plus its action is longer than the model's usable context "
                f"({limit} tokens); shorten the template or the history (history={self.history})"
            )
        return torch.tensor(list(ids) + [t for a in self.action_ids for t in a]), len(ids)

    def _mask_positions(self, lengths: Sequence[int], total: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention masks (B, 1, S, S) bool and position ids (B, S) for packed sequences, right-padded to S."""
        T = self.n_action_tokens
        mask = torch.zeros(len(lengths), 1, total, total, dtype=torch.bool)
        pos = torch.zeros(len(lengths), total, dtype=torch.long)
        for b, P in enumerate(lengths):
            mask[b, 0, :P, :P] = torch.ones(P, P, dtype=torch.bool).tril()
            mask[b, 0, P : P + T, :P] = True
            mask[b, 0, P : P + T, P : P + T] = self._block
            pos[b, :P] = torch.arange(P)
            pos[b, P : P + T] = P + self._rel
            if total > P + T:  # padding rows attend to themselves only (no empty softmax rows)
                idx = torch.arange(P + T, total)
                mask[b, 0, idx, idx] = True
        return mask, pos

    def _rows(self, lengths: Sequence[int]) -> torch.Tensor:
        """(B, R) rows of the packed sequences whose final hidden state is read: the prompt's last token
        (value, first action tokens) then each action token that predicts the next one."""
        P = torch.tensor(list(lengths))[:, None]
        return torch.where(self._qrows[None] < 0, P - 1, P + self._qrows[None])

    def _action_scores(self, h: torch.Tensor) -> torch.Tensor:
        """Final hidden states at `_rows` (B, R, d) -> normalised action scores (B, n)."""
        B = h.shape[0]
        logits = self.stack.logits(h, self.out_rows)  # (B, R, V or U)
        logp = torch.log_softmax(logits.float(), -1)[:, self._qidx, self._tgt]  # (B, action tokens)
        scores = torch.zeros(B, self.n, dtype=logp.dtype).index_add_(1, self._owner, logp)
        return scores / self.norm

    # -- cached frozen part ------------------------------------------------------------------------------

    def _entry(self, key: int) -> Any:
        """The frozen computation for one state, from the cache or computed now (without a graph)."""
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        # normal tensors even inside PPO's inference_mode rollout: the update's autograd reuses them
        with torch.inference_mode(False), torch.no_grad():
            seq, P = self._sequence(key)
            mask, pos = self._mask_positions([P], len(seq))
            stack = self.stack
            h = self._frozen(seq, mask, pos)  # (1, S, d)
            if self.first_trained < len(stack.layers):
                entry: Any = (h[0].to(self.frozen_dtype).clone(), P)  # bfloat16 halves the cache
            else:
                h = stack.final_norm(h[0, self._rows([P])[0]])[None]  # (1, R, d)
                entry = (self._action_scores(h)[0], h[0, 0].float().clone())
                self._count(key, entry[1])
        self._cache.put(key, entry)
        return entry

    def _frozen(self, seq: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """The frozen layers over one packed sequence (S,) -> float32 hidden states (1, S, d)."""
        h = self.stack.embed(seq[None]).to(self.frozen_dtype)
        return self.stack.run(h, 0, self.first_trained, mask, pos).float()

    def _upper(self, entries: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The trainable top layers over cached inputs, batched (right-padded), then scores and value."""
        stack = self.stack
        lengths = [P for _, P in entries]
        total = max(h.shape[0] for h, _ in entries)
        d = entries[0][0].shape[-1]
        # float32 on the cache's device (the cache may hold bfloat16)
        x = entries[0][0].new_zeros(len(entries), total, d, dtype=torch.float32)
        for b, (h, _) in enumerate(entries):
            x[b, : h.shape[0]] = h
        mask, pos = self._mask_positions(lengths, total)
        rows = self._rows(lengths)  # (B, R)
        last = len(stack.layers) - 1
        if stack.fast_rows:  # the last layer only where its output is read
            h = stack.run(x, self.first_trained, last, mask, pos)
            h = stack.final_norm(stack.last_rows(h, mask, pos, rows))
        else:
            h = stack.run(x, self.first_trained, last + 1, mask, pos)
            h = stack.final_norm(h[torch.arange(len(entries))[:, None], rows])
        value = self.value_head(h[:, 0].float() - self.feature_offset).squeeze(-1)
        return self._action_scores(h), value

    def _check_prompt_length(self, tok: Any) -> None:
        """The template with an empty state must leave room for a state in the context."""
        if tok is None:
            return
        skeleton = self.prompt("", ["x"] * self.history)
        n = len(tok(skeleton)["input_ids"]) + max(len(a) for a in self.action_ids)
        if n >= self.stack.context:
            raise ConfigError(
                f"the prompt template alone is {n} tokens, the model's usable context is "
                f"{self.stack.context}; shorten the template, task or history"
            )

    # -- checkpoints: adapters, heads and the text table (the ids in the rollout refer to it) -------------

    def get_extra_state(self) -> Any:
        return {"texts": list(self.texts.texts), "counted": sorted(getattr(self, "_counted", ()))}

    def set_extra_state(self, state: Any) -> None:
        self.texts.load(state["texts"])
        self._counted = set(state.get("counted", ()))
        self._cache.clear()


def tensor_bytes(entry: Any) -> int:
    """Bytes held by the tensors in `entry` (a tensor, or nested tuples and lists of them)."""
    if isinstance(entry, torch.Tensor):
        return entry.numel() * entry.element_size()
    if isinstance(entry, (tuple, list)):
        return sum(tensor_bytes(e) for e in entry)
    return 0


class StateCache:
    """Per-state results of the frozen model, least recently used dropped first once over `limit_mb`.

    Counts hits and misses (and its size, `cache_mb`) into `stats`, the policy's training-log counters.
    """

    def __init__(self, limit_mb: float, stats: dict[str, float]) -> None:
        self.limit = int(limit_mb * 2**20)
        self.stats = stats
        self.entries: OrderedDict[int, Any] = OrderedDict()
        self.bytes = 0

    def get(self, key: int) -> Any | None:
        """The entry for `key` (now the most recently used), or None (a miss, counted)."""
        hit = self.entries.get(key)
        if hit is None:
            self.stats["misses"] += 1
            return None
        self.entries.move_to_end(key)
        self.stats["hits"] += 1
        return hit

    def put(self, key: int, entry: Any) -> None:
        self.entries[key] = entry
        self.bytes += tensor_bytes(entry)
        while self.bytes > self.limit and len(self.entries) > 1:
            _, old = self.entries.popitem(last=False)
            self.bytes -= tensor_bytes(old)
        self.stats["cache_mb"] = self.bytes / 2**20

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0
        self.stats["cache_mb"] = 0.0


def _norm_divisor(normalise: str, n_tokens: Sequence[float], words: torch.Tensor) -> torch.Tensor:
    if normalise == "token":
        return torch.tensor(n_tokens, dtype=torch.float32)
    if normalise == "word":
        return words
    return torch.ones(len(words))


def _check_options(train, normalise, vocab, history, lora_layers, lora_rank, template) -> None:
    choices = {"train": (train, ("lora", "heads", "none")), "normalise": (normalise, ("sum", "token", "word")),
               "vocab": (vocab, ("actions", "full"))}  # fmt: skip
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{name}={value!r} is invalid: use one of {', '.join(allowed)}")
    if not (isinstance(history, int) and history >= 0):
        raise ConfigError(f"history={history!r} is invalid: use an int >= 0")
    if lora_layers is not None and not (isinstance(lora_layers, int) and lora_layers >= 1):
        raise ConfigError(f"lora_layers={lora_layers!r} is invalid: use an int >= 1 or None (all layers)")
    if not (isinstance(lora_rank, int) and lora_rank >= 1):
        raise ConfigError(f"lora_rank={lora_rank!r} is invalid: use an int >= 1")
    try:
        template.format(actions="", task="", state="", history="")
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(
            f"template={template!r} is invalid ({err!r}): use only the fields {{actions}}, {{task}}, {{state}}, "
            "{history}"
        ) from err
    if "{state}" not in template:
        raise ConfigError(f"template={template!r} has no {{state}} field: the policy would not see the state")


def _check_action_ids(actions: Sequence[str], ids: Sequence[Sequence[int]]) -> None:
    for a, t in zip(actions, ids):
        if not a.strip() or not t:
            raise ConfigError(f"action {a!r} tokenises to nothing; give every action a word")
    seen: dict[tuple[int, ...], str] = {}
    for a, t in zip(actions, ids):
        other = seen.setdefault(tuple(t), a)
        if other != a or sum(1 for b in actions if b == a) > 1:
            raise ConfigError(
                f"actions {other!r} and {a!r} tokenise to the same tokens {list(t)}: the policy could not tell "
                "them apart; give distinct strings"
            )


def _inject_lora(net: nn.Module, layers: list[int], rank: int, alpha: float,
                 targets: Sequence[str]) -> list[nn.Parameter]:  # fmt: skip
    """LoRA adapters (peft) on `targets` of the given decoder layers; returns their parameters in name order."""
    peft = optional_import("peft", "hf")
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0,
                             layers_to_transform=layers, bias="none")  # fmt: skip
    try:
        peft.inject_adapter_in_model(config, net)
    except ValueError as err:
        raise ConfigError(f"cannot put LoRA adapters on {list(targets)} of layers {layers}: {err}") from err
    named = sorted((n, p) for n, p in net.named_parameters() if "lora_" in n)
    if not named:
        raise ConfigError(f"no module named {list(targets)} in layers {layers}; set lora_targets")
    for _, p in named:
        p.requires_grad_(True)
    return [p for _, p in named]


class PolicyRole(TextIds):
    """`LLMPolicy` as a registered role (`llmrl train --role policy`, a preset's `role: policy`): builds the
    policy for `env` and wraps the env with its prompt ids; the agent takes the module from `env.policy`.

    The LLM given is used as it is when it can give gradients (`hf:<model>`); with `train="lora"` or
    `"heads"` the embedded llama.cpp model is swapped for the same GGUF de-quantised through transformers.
    `actions` defaults to `action_names(env)`; the other options are `LLMPolicy`'s.
    """

    def __init__(self, env: Any, llm: Any, *, actions: Sequence[str] | None = None, train: Train = "heads",
                 **options: Any) -> None:  # fmt: skip
        llm = gradient_llm(llm) if train != "none" else getattr(llm, "backend", None) or llm
        names = tuple(actions) if actions is not None else action_names(env)
        super().__init__(env, LLMPolicy(llm, names, train=train, **options))
