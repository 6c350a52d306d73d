"""LLM features: one forward pass of prompt + state adds an `"llm"` vector to the observation.

The seed's system (a DQN whose Q-network reads the frame and a VLM's output) could not train
because every environment step generated 50 tokens. Here the feature is **one forward pass**
(no generation) of the prompt and the state — the last token's hidden state by default, or the
next-token log-probabilities restricted to a few tokens — and every repeated state is free:

- states are keyed by their text (or a hash of the frame) in an in-memory memo that sits in front
  of the backend's persistent cache, so a state the agent has seen costs one dict lookup;
- the pass runs only when the state text changes (`on_change`) and at most every `every` steps;
- all envs of a vector env that need a pass go to the backend in one batched call.

    env = LLMFeatures(WithText(gymnasium.make("llmrl/Grid-v0")), llmrl.llm.load("embedded"),
                      prompt="Please tell me in 200 characters where the cat should move next.")
    DQN(env).learn(20_000)          # the multimodal Dict network reads {"obs", "llm"}

Nothing here looks inside an environment: the text comes from `info["text"]` (`WithText`), the
frame from the observation or `env.render()`.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from llmrl.errors import ConfigError
from llmrl.llm.base import LLM, LLMOutputError
from llmrl.llm.cache import checked
from llmrl.roles.bad_output import BadOutputPolicy, check_bad_output_policy, handle_bad_output
from llmrl.roles.base import RoleWrapper, has_text, require_capabilities, with_text

__all__ = [
    "LLMFeatures",
    "DEFAULT_TEMPLATE",
    "DEFAULT_TOKENS",
    "DEFAULT_PROMPT",
    "is_rgb_frame_space",
    "has_text",
]

DEFAULT_PROMPT = "What should I do first in this image? Please answer in 200 characters."
"""The seed's default question (its Montezuma's Revenge prompt)."""

DEFAULT_TEMPLATE = "Question: {prompt}\nGame state: {state}\nAnswer:"
"""How the prompt and the state text make one input; the feature is read at its last token. The prompt
comes first so that backends with prefix reuse (llama.cpp) evaluate it once for every state."""

DEFAULT_TOKENS: tuple[str, ...] = (" up", " down", " left", " right", " stay", " yes", " no", " fire")
"""Next-token candidates for `kind="logits"` when none are given: moves and yes/no."""

Source = Literal["text", "image"]
Kind = Literal["hidden", "logits"]


def is_rgb_frame_space(space: gym.Space) -> bool:
    """True for an RGB frame space: uint8 Box of shape (H, W, 3) (what an image-text model reads;
    `llmrl.nets.is_image_space` is wider: any uint8 Box of rank 2 or 3, what a conv net reads)."""
    return (
        isinstance(space, spaces.Box)
        and space.dtype == np.uint8
        and len(space.shape) == 3
        and space.shape[-1] == 3
    )


class LLMFeatures(RoleWrapper):
    """Adds `obs["llm"]`, a float32 vector from one LLM forward pass of prompt + state.

    The new observation is a `Dict`: the original observation under `"obs"` (or, if it already is a
    `Dict`, its own keys) plus `"llm"` of shape (d,) — d is the model width for `kind="hidden"`,
    `len(tokens)` for `kind="logits"`.

    Counters (`llmrl_metrics()`): `llm/steps` env steps seen, `llm/reused` steps that kept the last
    feature (`every`/`on_change`), `llm/memo_hits` lookups answered from memory, `llm/calls` inputs
    sent to the backend, `llm/cache_hits` of those answered by its persistent cache, `llm/seconds`
    spent in the backend, `llm/hit_rate` the fraction of steps that needed no model forward pass.

    Batches: the llama.cpp backends decode a batch of prompts together, and a prompt's feature then
    depends on the others in its batch by up to ~4% of its largest value (measured with the embedded
    model; one prompt alone is reproduced exactly). `tests/reliability/test_features_batch.py` holds that
    tolerance. A resumed run therefore differs slightly unless its features come from a persistent cache
    (`llmrl.llm.load(spec, cache="run/llm.sqlite")`): a prompt's first answer is then reused for good.
    """

    def __init__(
        self,
        env: gym.Env | gym.vector.VectorEnv,
        llm: LLM,
        *,
        prompt: str = DEFAULT_PROMPT,
        source: Source = "text",
        kind: Kind = "hidden",
        tokens: Sequence[str] | None = None,
        template: str = DEFAULT_TEMPLATE,
        every: int = 1,
        on_change: bool = True,
        normalize: bool = True,
        memo_size: int = 50_000,
        key: str = "llm",
        on_bad_output: BadOutputPolicy = "raise",
    ):
        """
        Args:
            env: a single env or a vector env (NEXT_STEP autoreset). For `source="text"` it must put
                `info["text"]` (wrap it in `llmrl.envs.WithText`; single envs are wrapped automatically).
            llm: any backend of the protocol with the "features" capability ("images" for frames).
            prompt: the question asked about every state (the seed's per-environment prompts).
            source: "text" reads `info["text"]`; "image" sends the frame to an image-text model.
            kind: "hidden" = the last token's final hidden state; "logits" = next-token log-probs of `tokens`.
            tokens: the candidate next tokens for kind="logits" (default `DEFAULT_TOKENS`).
            template: text source only: how `{state}` and `{prompt}` make the model input.
            every: recompute at most every `every` steps of an env (always at an episode's start).
            on_change: reuse the last feature while the state text (or frame) is unchanged.
            normalize: standardise each vector (zero mean, unit variance, clipped to ±5), like a
                LayerNorm without weights: raw hidden states have a few huge dimensions that would
                swamp the other inputs of the Q-network.
            memo_size: states kept in the in-memory memo (least recently used are dropped).
            key: the observation key of the feature vector.
            on_bad_output: what a bad answer (`LLMOutputError`: NaN/inf, wrong count or shape) does
                (`llmrl.roles.bad_output`): "raise" stops; "fallback" gives those envs zero features;
                "skip" keeps each env's previous feature. Either way the state is asked again at the
                next step and the call is counted as `llm/bad_outputs`.
        """
        if source not in ("text", "image"):
            raise ConfigError(f"source={source!r} is not supported; use 'text' (info['text']) or 'image'.")
        if kind not in ("hidden", "logits"):
            raise ConfigError(f"kind={kind!r} is not supported; use 'hidden' or 'logits'.")
        if int(every) < 1:
            raise ConfigError(f"every={every!r} must be an integer >= 1 (1 = every step).")
        if memo_size < 0:
            raise ConfigError(f"memo_size={memo_size!r} must be >= 0 (0 turns the memo off).")
        check_bad_output_policy(on_bad_output, ("raise", "fallback", "skip"), "LLMFeatures")
        if source == "text" and "{state}" not in template:
            raise ConfigError(f"template={template!r} has no '{{state}}' placeholder for the state text.")
        if source == "image":
            require_capabilities(llm, ["features", "images"], "LLMFeatures(source='image')",
                                 "source='image' needs an image-text model: use source='text' (with WithText) "
                                 "or an 'hf:' LLaVA-NeXT model.")  # fmt: skip
        require_capabilities(
            llm, ["features"], "LLMFeatures", "use llmrl.llm.load('embedded') or an 'hf:' model."
        )
        if kind == "logits":
            tokens = tuple(tokens) if tokens is not None else DEFAULT_TOKENS
            if not tokens:
                raise ConfigError("tokens=() is empty; give the candidate next tokens for kind='logits'.")
        self.llm, self.prompt, self.source, self.kind = checked(llm), prompt, source, kind
        self.tokens = tokens
        self.template, self.every, self.on_change = template, int(every), on_change
        self.normalize, self.memo_size, self.key = normalize, memo_size, key
        self.on_bad_output = on_bad_output
        self._memo: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._counts = dict.fromkeys(
            ("steps", "reused", "memo_hits", "calls", "cache_hits", "bad_outputs"), 0
        )
        self._seconds = 0.0
        if source == "text":
            env = with_text(env)
        # The width is only known from the model: one probe pass (cached like any other).
        probe = self._model([self._input("")], [self._blank_image(env)] if source == "image" else None)
        self.dim = int(probe.shape[1])
        super().__init__(env)
        n = self.num_envs
        self._last_feat = np.zeros((n, self.dim), dtype=np.float32)
        self._last_key: list[Any] = [None] * n
        self._since = np.zeros(n, dtype=np.int64)
        self._inner_is_image = is_rgb_frame_space(
            env.single_observation_space if self.is_vector else env.observation_space  # type: ignore[union-attr]
        )

    # -- spaces ----------------------------------------------------------------------------------

    def transform_space(self, space: gym.Space) -> gym.Space:
        feat = spaces.Box(-np.inf, np.inf, shape=(self.dim,), dtype=np.float32)
        if isinstance(space, spaces.Dict):
            if self.key in space.spaces:
                raise ConfigError(f"the observation already has a key {self.key!r}; pass key='llm2'.")
            return spaces.Dict({**space.spaces, self.key: feat})
        return spaces.Dict({"obs": space, self.key: feat})

    # -- the batched step ------------------------------------------------------------------------

    def process(self, obs, rewards, terminated, truncated, infos, starts):
        n = self.num_envs
        self._counts["steps"] += n
        keys = self._state_keys(obs, infos)
        todo: list[int] = []
        for i in range(n):
            fresh = bool(starts[i]) or self._since[i] + 1 >= self.every
            changed = keys[i][0] != self._last_key[i]
            if fresh and (changed or not self.on_change or bool(starts[i])):
                todo.append(i)
            else:
                self._since[i] += 1
                self._counts["reused"] += 1
        if todo:
            try:
                feats = self._lookup([keys[i] for i in todo])
            except LLMOutputError as err:
                handle_bad_output(err, self.on_bad_output, self._counts, "LLMFeatures", "llm")
                for i in todo:  # "skip" keeps the previous feature; both ask again at the next step
                    if self.on_bad_output == "fallback":
                        self._last_feat[i] = 0.0
                    self._last_key[i], self._since[i] = None, self.every - 1
            else:
                for i, f in zip(todo, feats):
                    self._last_feat[i], self._last_key[i], self._since[i] = f, keys[i][0], 0
        out = dict(obs) if isinstance(obs, dict) else {"obs": obs}
        out[self.key] = self._last_feat.copy()  # (n, d)
        return out, rewards

    def _state_keys(self, obs: Any, infos: list[dict]) -> list[tuple[Any, Any]]:
        """(memo key, model input) per env: the state text, or (frame hash, frame)."""
        if self.source == "text":
            out = []
            for i, info in enumerate(infos):
                text = info.get("text")
                if not isinstance(text, str):
                    raise ConfigError(
                        f"LLMFeatures(source='text') found no info['text'] in env {i}; wrap the env in "
                        "llmrl.envs.WithText (a native vector env such as ALE's cannot be described: use "
                        "gymnasium.vector.SyncVectorEnv([lambda: WithText(llmrl.make(env_id))] * n)), "
                        "or use source='image' with an image-text model."
                    )
                out.append((text, text))
            return out
        frames = self._frames(obs)
        return [(_frame_key(f), f) for f in frames]

    def _frames(self, obs: Any) -> list[np.ndarray]:
        if self._inner_is_image:
            return list(np.asarray(obs))
        rendered = self.env.render()
        if rendered is None:
            raise ConfigError(
                "LLMFeatures(source='image') needs frames: the observation is not an RGB image and "
                "env.render() returned None; build the env with render_mode='rgb_array'."
            )
        frames = list(rendered) if self.is_vector else [rendered]
        return [np.asarray(f, dtype=np.uint8) for f in frames]

    def _lookup(self, items: list[tuple[Any, Any]]) -> list[np.ndarray]:
        """Features for (key, input) pairs: memo first, then one batched backend call for the rest."""
        found: dict[Any, np.ndarray] = {}
        missing: dict[Any, Any] = {}
        for k, x in items:
            if k in found or k in missing:
                self._counts["memo_hits"] += 1  # a duplicate within the batch is computed once
                continue
            v = self._memo.get(k)
            if v is not None:
                self._memo.move_to_end(k)
                found[k] = v
                self._counts["memo_hits"] += 1
            else:
                missing[k] = x
        if missing:
            ks = list(missing)
            if self.source == "text":
                feats = self._model([self._input(missing[k]) for k in ks], None)
            else:
                feats = self._model([self._input("")] * len(ks), [missing[k] for k in ks])
            for k, f in zip(ks, feats):
                found[k] = f
                if self.memo_size:
                    self._memo[k] = f
            while len(self._memo) > self.memo_size:
                self._memo.popitem(last=False)
        return [found[k] for k, _ in items]

    def _input(self, state: str) -> str:
        if self.source == "image":
            return self.prompt  # the backend places the image before the question
        return self.template.format(state=state, prompt=self.prompt)

    def _model(self, prompts: list[str], images: list[np.ndarray] | None) -> np.ndarray:
        """One batched forward pass: (n, d) float32, normalised if asked."""
        stats = getattr(self.llm, "stats", None)
        hits0 = getattr(stats, "hits", 0)
        t0 = time.perf_counter()
        feats = self.llm.features(prompts, images=images, kind=self.kind, tokens=self.tokens)
        self._seconds += time.perf_counter() - t0
        self._counts["calls"] += len(prompts)
        self._counts["cache_hits"] += max(0, getattr(stats, "hits", 0) - hits0)
        feats = np.asarray(feats, dtype=np.float32).reshape(len(prompts), -1)
        if self.normalize:
            mu = feats.mean(axis=1, keepdims=True)
            sd = feats.std(axis=1, keepdims=True) + 1e-6
            feats = np.clip((feats - mu) / sd, -5.0, 5.0)
        return feats

    def _blank_image(self, env: Any) -> np.ndarray:
        space = (
            env.single_observation_space if isinstance(env, gym.vector.VectorEnv) else env.observation_space
        )
        shape = tuple(space.shape or ()) if is_rgb_frame_space(space) else (64, 64, 3)
        return np.zeros(shape, dtype=np.uint8)

    # -- counters --------------------------------------------------------------------------------

    def llmrl_metrics(self) -> dict[str, float]:
        c = self._counts
        model = c["calls"] - c["cache_hits"]
        steps = max(1, c["steps"])
        return {
            **{f"llm/{k}": float(v) for k, v in c.items()},
            "llm/seconds": self._seconds,
            "llm/hit_rate": 1.0 - model / steps,
        }


def _frame_key(frame: np.ndarray) -> tuple:
    """Memo key of a frame: shape and a 128-bit hash of its bytes (identical frames share a feature)."""
    f = np.ascontiguousarray(frame)
    return ("img", f.shape, hashlib.blake2b(f.tobytes(), digest_size=16).hexdigest())
