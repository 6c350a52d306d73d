"""Goal-similarity rewards: CLIP frame vs goal sentence (VLM-RM, arXiv 2310.12921), and a text variant.

VLM-RM: embed the goal sentence(s) g and baseline sentence(s) b (e.g. "a grid world") with CLIP's
text tower and each frame x with its image tower, all L2-normalised; with the direction d = g - b and
the projection P = alpha * d d^T / |d|^2 + (1 - alpha) * I,

    reward(x) = 1 - |(x - g) P|^2 / 2          (the paper's goal-baseline regularisation)

alpha = 0 gives 1 - |x - g|^2 / 2 = cos(x, g) (plain CLIP similarity); alpha = 1 keeps only the
component along the baseline -> goal direction. g and b are means of the normalised embeddings of
their sentences (the paper averages several prompts), as in the authors' code.

Scoring is deferred by default: frames are buffered and embedded in one batch at episode end, and the
rewards go to the stored transitions through `info["reward_relabel"]` (llmrl's DQN and PPO apply
it). `defer=False` scores every step (batched across a vector env) and adds the reward at once --
the mode for agents that ignore relabelling (Stable-Baselines3).

`TextGoalReward` is the same formula with the state text (`info["text"]`) and the sentence embedder
of an LLM backend (MiniLM in the embedded default), so the idea runs without a VLM.

Using a real CLIP checkpoint (downloaded beforehand; nothing is fetched at run time when
HF_HUB_OFFLINE=1):

    clip = CLIPEmbedder("openai/clip-vit-base-patch32")
    env = CLIPReward(gymnasium.make("llmrl/Grid-v0", render_mode="rgb_array"), clip,
                     goal="a cat standing on the goal square", baseline="a cat on a grid", alpha=0.5)
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from llmrl.errors import ConfigError, optional_import
from llmrl.llm.base import LLM
from llmrl.llm.cache import checked
from llmrl.roles.rewards.common import BadOutputPolicy, RewardRole, check_llm

__all__ = [
    "CLIPEmbedder",
    "CLIPReward",
    "TextGoalReward",
    "GoalSimilarityReward",
    "StateEmbedder",
    "vlmrm_projection",
    "vlmrm_reward",
]


# -- the paper's formula ---------------------------------------------------------------------------


def _unit_mean(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64).reshape(-1, emb.shape[-1])
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    return emb.mean(axis=0)


def vlmrm_projection(goal: np.ndarray, baseline: np.ndarray, alpha: float) -> np.ndarray:
    """P = alpha * d d^T / |d|^2 + (1 - alpha) I with d = goal - baseline. Shape (D, D)."""
    d = (goal - baseline).reshape(1, -1)  # (1, D)
    norm2 = float((d**2).sum())
    line = d.T @ d / norm2 if norm2 > 0 else np.zeros((d.shape[1], d.shape[1]))
    return alpha * line + (1.0 - alpha) * np.eye(d.shape[1])


def vlmrm_reward(states: np.ndarray, goal: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """1 - |(x - g) P|^2 / 2 for each row x of `states` (normalised here). (N, D) -> (N,)."""
    x = np.asarray(states, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    return 1.0 - 0.5 * (((x - goal) @ projection) ** 2).sum(axis=1)


# -- embedders -----------------------------------------------------------------------------------------


class StateEmbedder(Protocol):
    """Embeds goal sentences and states (frames or texts) into one space."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_states(self, states: Sequence[Any]) -> np.ndarray: ...


class CLIPEmbedder:
    """CLIP's two towers via transformers' `CLIPModel`, from a hub id or a local folder.

    Frames are uint8 RGB (H, W, 3); they are resized and normalised by the checkpoint's image
    processor. Embeddings of identical frames are memoised (keyed by a hash of the bytes), since
    small worlds repeat frames constantly.
    """

    def __init__(
        self, model: str = "openai/clip-vit-base-patch32", *, device: str = "cpu", batch_size: int = 64
    ):
        transformers = optional_import("transformers", "hf")
        import torch

        self.torch = torch
        try:
            self.model = transformers.CLIPModel.from_pretrained(model).to(device).eval()
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(model)
            self.processor = transformers.CLIPImageProcessor.from_pretrained(model)
        except OSError as err:
            raise ConfigError(
                f"Could not load CLIP {model!r}: {err}. Pass a local folder, or download it first "
                f"(with network: `huggingface-cli download {model}`); nothing is fetched when HF_HUB_OFFLINE=1."
            ) from err
        self.name = f"clip:{model}"
        self.device, self.batch_size = device, batch_size
        self._memo: dict[bytes, np.ndarray] = {}
        self.stats = {"frames": 0, "hits": 0, "seconds": 0.0}

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        with self.torch.no_grad():
            tok = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(
                self.device
            )
            feats = self.model.get_text_features(
                input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]
            )
        return _as_array(feats)  # (n, D)

    def embed_states(self, states: Sequence[np.ndarray]) -> np.ndarray:
        keys = [hashlib.blake2b(np.ascontiguousarray(f).tobytes(), digest_size=16).digest() for f in states]
        todo = list(dict.fromkeys(k for k in keys if k not in self._memo))
        self.stats["frames"] += len(keys)
        self.stats["hits"] += len(keys) - len(todo)
        if todo:
            t0 = time.perf_counter()
            frame_of = dict(zip(keys, states))
            for s in range(0, len(todo), self.batch_size):
                chunk = todo[s : s + self.batch_size]
                pix = self.processor(images=[np.asarray(frame_of[k]) for k in chunk], return_tensors="pt")
                with self.torch.no_grad():
                    feats = self.model.get_image_features(pixel_values=pix["pixel_values"].to(self.device))
                for k, e in zip(chunk, _as_array(feats)):
                    self._memo[k] = e
            self.stats["seconds"] += time.perf_counter() - t0
        return np.stack([self._memo[k] for k in keys])

    def llmrl_state(self) -> dict[str, Any]:
        """The memo of frame embeddings, for checkpoints.

        Exact resume needs it: an embedding's last bits depend on the batch it was computed in, so a
        frame re-embedded after a resume (in another batch) can differ from the memoised one. Costs
        4 * D bytes per distinct frame seen (2 KiB at D = 512).
        """
        keys = list(self._memo)
        emb = np.stack([self._memo[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)
        return {"keys": [k.hex() for k in keys], "embeddings": emb, "stats": dict(self.stats)}

    def llmrl_set_state(self, state: dict[str, Any]) -> None:
        emb = np.asarray(state["embeddings"])
        self._memo = {bytes.fromhex(k): emb[i] for i, k in enumerate(state["keys"])}
        self.stats = dict(state["stats"])


def _as_array(feats: Any) -> np.ndarray:
    # transformers >= 5 returns an output object whose pooler_output holds the projected features
    if not hasattr(feats, "detach"):
        feats = feats.pooler_output
    return feats.detach().float().cpu().numpy()


class _LLMTextEmbedder:
    """States are texts; both sides go through the LLM backend's sentence embedder (memoised)."""

    def __init__(self, llm: LLM):
        self.llm = checked(llm)
        self._memo: dict[str, np.ndarray] = {}

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if todo:
            for t, e in zip(todo, np.asarray(self.llm.embed(todo))):
                self._memo[t] = e
        return np.stack([self._memo[t] for t in texts])

    embed_states = embed_texts


# -- the wrapper --------------------------------------------------------------------------------------


class GoalSimilarityReward(RewardRole):
    """Reward = VLM-RM similarity of each new state to a goal, via any `StateEmbedder`.

    Subclasses say where a state comes from (`state_of`): a rendered frame or the state text.
    """

    metric_name = "similarity"

    def __init__(
        self,
        env: Any,
        embedder: StateEmbedder,
        goal: str | Sequence[str],
        *,
        baseline: str | Sequence[str] = (),
        alpha: float = 0.0,
        scale: float = 1.0,
        offset: float = 0.0,
        defer: bool = True,
        every: int = 1,
        llm: LLM | None = None,
        on_bad_output: BadOutputPolicy = "raise",
        fallback_reward: float = 0.0,
    ):
        """
        Args:
            embedder: embeds goal/baseline sentences and states into one space.
            goal: the goal sentence(s); several are averaged.
            baseline: neutral sentence(s) describing the environment in general; needed when alpha > 0.
            alpha: goal-baseline regularisation strength in [0, 1]; 0 = plain cosine similarity.
            scale, offset: reward = scale * (similarity - offset).
            defer: buffer states and score them in one batch at episode end, handing rewards to the
                agent via info["reward_relabel"]; False scores every step and adds the reward at once.
            every: score every k-th state of an episode and hold the value in between (saves calls).
            on_bad_output, fallback_reward: what a bad LLM answer (NaN, wrong count) does; see RewardRole.
        """
        super().__init__(env, llm=llm, on_bad_output=on_bad_output, fallback_reward=fallback_reward)
        goals = [goal] if isinstance(goal, str) else list(goal)
        bases = [baseline] if isinstance(baseline, str) else list(baseline)
        if not goals or not all(g.strip() for g in goals):
            raise ConfigError(f"goal must be a non-empty sentence (or list of them), got {goal!r}.")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"alpha must lie in [0, 1] (0 = plain cosine), got {alpha}.")
        if alpha > 0 and not bases:
            raise ConfigError(
                f"alpha={alpha} regularises towards a baseline; pass baseline='a description of the "
                "environment in general' or set alpha=0."
            )
        if every < 1:
            raise ConfigError(f"every must be a positive number of steps, got {every}.")
        self.embedder, self.alpha, self.scale, self.offset = embedder, alpha, scale, offset
        self.defer, self.every = defer, every
        self.goal = _unit_mean(embedder.embed_texts(goals))  # (D,)
        base = _unit_mean(embedder.embed_texts(bases)) if bases else self.goal
        self.projection = vlmrm_projection(self.goal, base, alpha)  # (D, D)
        n = self.num_envs
        self._buffer: list[list[Any]] = [[] for _ in range(n)]
        self._held = np.zeros(n, dtype=np.float64)
        self._t = np.zeros(n, dtype=np.int64)
        self.counters.update(states_scored=0)

    def llmrl_state(self) -> dict[str, Any]:
        """The embedder's memo (when it keeps one), for checkpoints; the buffers, held values and step
        counts are plain attributes, saved with the env state."""
        hook = getattr(self.embedder, "llmrl_state", None)
        return {"embedder": hook() if hook is not None else None}

    def llmrl_set_state(self, state: dict[str, Any]) -> None:
        if state["embedder"] is not None:
            self.embedder.llmrl_set_state(state["embedder"])  # type: ignore[attr-defined]

    def state_of(self, obs: Any, infos: list[dict], idx: Sequence[int]) -> list[Any]:
        """The states (frames or texts) of envs `idx` after this step."""
        raise NotImplementedError

    def similarity(self, states: Sequence[Any]) -> np.ndarray:
        """scale * (VLM-RM reward - offset) of each state, embedded in one batch. (N,)."""
        if not states:
            return np.zeros(0)
        self.counters["states_scored"] += len(states)
        sim = vlmrm_reward(self.embedder.embed_states(states), self.goal, self.projection)
        return self.scale * (sim - self.offset)

    def intrinsic(self, obs, rewards, terminated, truncated, infos, starts):
        n = len(rewards)
        out = np.zeros(n, dtype=np.float64)
        live = [i for i in range(n) if not starts[i]]
        for i in range(n):
            if starts[i]:
                self._buffer[i], self._t[i] = [], 0
        # states needed now: every k-th state (and the last) in online mode; all of them when deferring
        keep = [i for i in live if self.defer or self._t[i] % self.every == 0]
        states = dict(zip(keep, self.state_of(obs, infos, keep))) if keep else {}
        if self.defer:
            for i in live:
                self._buffer[i].append(states[i])
        else:
            fresh = self.similarity([states[i] for i in keep])
            for j, i in enumerate(keep):
                self._held[i] = fresh[j]
            out[live] = self._held[live]
        for i in live:
            self._t[i] += 1
        if self.defer:
            ended = [i for i in live if terminated[i] or truncated[i]]
            for i in ended:
                self.relabel(i, infos[i], self._episode_rewards(self._buffer[i]))
                self._buffer[i] = []
        return out

    def _episode_rewards(self, states: list[Any]) -> np.ndarray:
        """Score states 0, k, 2k, ... in one batch and hold each value for k steps. (L,)."""
        picked = list(range(0, len(states), self.every))
        scores = self.similarity([states[t] for t in picked])
        return np.repeat(scores, self.every)[: len(states)]


class CLIPReward(GoalSimilarityReward):
    """VLM-RM: CLIP similarity of the rendered frame to a goal sentence (env needs render_mode="rgb_array").

    env = CLIPReward(gymnasium.make("llmrl/Grid-v0", render_mode="rgb_array"),
                     CLIPEmbedder("openai/clip-vit-base-patch32"), goal="a cat on the goal")
    """

    metric_name = "clip"

    def __init__(self, env: Any, clip: CLIPEmbedder | str, goal: str | Sequence[str], **kwargs: Any):
        embedder = CLIPEmbedder(clip) if isinstance(clip, str) else clip
        mode = getattr(env, "render_mode", None)
        if mode != "rgb_array":
            raise ConfigError(
                f"CLIPReward scores rendered frames, but the env's render_mode is {mode!r}; "
                "build it with render_mode='rgb_array' (e.g. gymnasium.make(id, render_mode='rgb_array'))."
            )
        super().__init__(env, embedder, goal, **kwargs)

    def state_of(self, obs, infos, idx):
        frames = self.env.render()
        if not self.is_vector:
            frames = [frames]
        return [np.asarray(frames[i]) for i in idx]

    def extra_metrics(self) -> dict[str, float]:
        st = getattr(self.embedder, "stats", {})
        return {f"clip/{k}": float(v) for k, v in st.items()}


class TextGoalReward(GoalSimilarityReward):
    """VLM-RM's formula without a VLM: the state text (`info["text"]`) vs the goal, by sentence embedding.

    env = TextGoalReward(WithText(gymnasium.make("llmrl/Grid-v0")), llm, goal="the cat is on the goal")
    """

    metric_name = "textgoal"

    def __init__(self, env: Any, llm: LLM, goal: str | Sequence[str], *, key: str = "text", **kwargs: Any):
        check_llm(llm, ["embed"], "TextGoalReward")
        self.key = key
        llm = checked(llm)
        super().__init__(env, _LLMTextEmbedder(llm), goal, llm=llm, **kwargs)

    def state_of(self, obs, infos, idx):
        out = []
        for i in idx:
            if self.key not in infos[i]:
                raise ConfigError(
                    f"TextGoalReward reads info[{self.key!r}], which the env does not provide; "
                    "wrap it with llmrl.envs.WithText(env) first."
                )
            out.append(str(infos[i][self.key]))
        return out
