"""The VLM as the policy (LLaRP, Szot et al. 2024, arXiv 2310.17722): a frozen language model reads the
instruction, then a few input embeddings that a small trainable image encoder makes from the frame; an
action head and a value head read its last hidden state, and llmrl's PPO trains the encoder and the heads
(the gradients flow through the frozen model into the encoder).

    llm = HFLLM.from_gguf()                                      # the embedded Gemma 3 270M, frozen
    env = llmrl.make("BabyAI-GoToLocalS6N3-v0", num_envs=8)
    policy = VLMPolicy(llm, GLAM_ACTIONS[:3], image_shape=frame_space(env).shape)
    agent = PPO(policy.wrap(env), policy=policy, n_steps=32, batch_size=64).learn(4_000)

The agent knows nothing about images or text beyond a `Dict` observation: `policy.wrap(env)` makes it
`{"image": the frame (uint8), "instruction": the id of the instruction in the policy's table}`; PPO stores
both like any image and Discrete observation, and the policy owns the table from ids back to texts (saved
with its state, so checkpoints resume exactly). The frame is the env's image observation (an image env,
`llmrl.envs.ImageObservation` for any env's rgb render, MiniGrid's RGB observation wrappers) or, on
MiniGrid/BabyAI, the agent's partial view drawn as an image (`get_pov_render`, 7x7 cells of `tile_size`
pixels). The instruction is BabyAI's mission (the observation's or the env's `mission`) or `task`.

What one step costs: the model is frozen, so each distinct instruction's keys and values are computed once
(`prefix_cache`) and reused; a step runs only the `tokens` image embeddings through the layers, attending
to that cache (exact: the same numbers as running instruction and image tokens as one sequence).

With a LLaVA-NeXT model (`hf:` path, `encoder="vision"`) the model's own vision tower and projector (frozen)
replace the conv encoder: their patch embeddings are pooled to `tokens` embeddings, plus a trained
zero-initialised residual adapter, and its language model is the frozen model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from llmrl.errors import ConfigError
from llmrl.llm.base import UnsupportedOperationError
from llmrl.nets import build_encoder, image_channels_first, is_image_space
from llmrl.roles._decoder import KV, Stack, fast_rows_supported, layer_rows, prefix_cache
from llmrl.roles.policy import (
    PolicyObservation,
    StateCache,
    TextTable,
    action_names,
    check_action_space,
    gradient_llm,
    mlp_head,
)

__all__ = ["VLMPolicy", "FrameIds", "VLMPolicyRole", "frame_space", "DEFAULT_INSTRUCTION"]

DEFAULT_INSTRUCTION = "Instruction: {instruction}\nObservation:"
"""The text before the image embeddings ({instruction}: BabyAI's mission or `task`)."""

Frame = Literal["auto", "obs", "pov"]
Encoder = Literal["conv", "vision"]


# -- where the frames come from -----------------------------------------------------------------------


def _base_envs(env: Any) -> list[Any] | None:
    """The unwrapped envs under `env` (one for a single env; a sync vector env's), or None when they cannot
    be reached (an async vector env)."""
    e = env
    while isinstance(getattr(e, "env", None), (gym.Env, gym.vector.VectorEnv)):  # down the wrapper chain
        e = e.env
    if isinstance(e, gym.vector.VectorEnv):
        envs = getattr(e, "envs", None)
        return None if envs is None else [x.unwrapped for x in envs]
    return [e.unwrapped]


def _image_part(space: gym.Space) -> gym.Space | None:
    """The image in an observation space: the space itself or a Dict's "image" entry."""
    if isinstance(space, spaces.Dict):
        return space.spaces.get("image")
    return space


def _single_space(env: Any) -> gym.Space:
    return env.single_observation_space if isinstance(env, gym.vector.VectorEnv) else env.observation_space


def _resolve_frame(env: Any, frame: Frame, tile_size: int) -> tuple[str, spaces.Box]:
    """("obs" or "pov", the frame's Box space) for `env`, or one ConfigError saying what is missing."""
    if frame not in ("auto", "obs", "pov"):
        raise ConfigError(f"frame={frame!r} is invalid: use 'auto', 'obs' or 'pov'")
    image = _image_part(_single_space(env))
    usable = isinstance(image, spaces.Box) and is_image_space(image)
    base = _base_envs(env)
    minigrid = base is not None and hasattr(base[0], "get_pov_render")
    view = int(getattr(base[0], "agent_view_size", 0)) if base is not None and minigrid else 0
    shape = tuple(image.shape or ()) if isinstance(image, spaces.Box) else ()
    symbolic = usable and shape == (view, view, 3)  # MiniGrid's cell codes, not pixels
    if frame == "obs" or (frame == "auto" and usable and not symbolic):
        if not usable:
            raise ConfigError(
                f"frame='obs' needs image observations (uint8 (H, W, C) or (C, H, W), or a Dict with an "
                f"'image' entry), the env's are {_single_space(env)}; wrap it in llmrl.envs.ImageObservation "
                "(render_mode='rgb_array') for its rgb render"
            )
        return "obs", image  # type: ignore[return-value]
    if not minigrid:
        if frame == "pov":
            raise ConfigError("frame='pov' (the agent's view drawn as an image) needs a MiniGrid/BabyAI env "
                              "whose envs can be reached (a single env or a sync vector env)")  # fmt: skip
        raise ConfigError(
            f"the env has no frames: its observations are {_single_space(env)}, not images; give it image "
            "observations (llmrl.envs.ImageObservation over render_mode='rgb_array', or an image env)"
        )
    if not (isinstance(tile_size, int) and tile_size >= 1):
        raise ConfigError(f"tile_size={tile_size!r} is invalid: use an int >= 1 (pixels per cell)")
    side = view * tile_size
    return "pov", spaces.Box(0, 255, (side, side, 3), np.uint8)


def frame_space(env: Any, frame: Frame = "auto", tile_size: int = 8) -> spaces.Box:
    """The frames `VLMPolicy.wrap(env, frame, tile_size)` gives the policy (uint8 image space); its shape is
    the policy's `image_shape`."""
    return _resolve_frame(env, frame, tile_size)[1]


class FrameIds(PolicyObservation):
    """The observation becomes `{"image": frame, "instruction": id in policy.instructions}`; made by
    `VLMPolicy.wrap(env)`."""

    def __init__(self, env: Any, policy: VLMPolicy, frame: Frame = "auto", tile_size: int = 8) -> None:
        self.kind, self.image_space = _resolve_frame(env, frame, tile_size)
        if tuple(self.image_space.shape) != tuple(policy.image_shape):
            raise ConfigError(
                f"the env's frames are {tuple(self.image_space.shape)}, the policy's encoder was built for "
                f"{tuple(policy.image_shape)}; build the policy with image_shape=frame_space(env).shape"
            )
        self.tile_size = int(tile_size)
        super().__init__(env, policy)

    def transform_space(self, space: gym.Space) -> gym.Space:
        self.offer_actions()
        return spaces.Dict(
            {"image": self.image_space, "instruction": spaces.Discrete(self.policy.instructions.limit)}
        )

    def process(self, obs, rewards, terminated, truncated, infos, starts):
        base = _base_envs(self.env) if self.kind == "pov" or not self.policy.task else None
        if self.kind == "obs":
            images = np.asarray(obs["image"] if isinstance(obs, dict) else obs, dtype=np.uint8)
        else:  # the current state of each env is the one `obs` shows (NEXT_STEP autoreset)
            images = np.stack([e.get_pov_render(tile_size=self.tile_size) for e in base or ()])
        ids = np.zeros(self.num_envs, dtype=np.int64)
        for i in range(self.num_envs):
            ids[i] = self.policy.instructions.intern(self.policy.instruction(self._mission(obs, base, i)))
        return {"image": images, "instruction": ids}, rewards

    def _mission(self, obs: Any, base: list[Any] | None, i: int) -> str:
        if self.policy.task:
            return self.policy.task
        if isinstance(obs, dict) and "mission" in obs:
            return str(obs["mission"][i])
        return str(getattr(base[i], "mission", "")) if base is not None else ""


# -- the policy module --------------------------------------------------------------------------------


class VLMPolicy(nn.Module):
    """A policy module for llmrl's PPO: `{"image": (B, *image_shape) uint8, "instruction": (B,) ids}` ->
    (action logits (B, n), value (B,)).

    llm: `llmrl.llm.hf.HFLLM` (or anything with `.module` and `.tokenizer`) of a transformers causal LM with a
        Llama-style decoder stack (Gemma 3 included), or a LLaVA-NeXT model; frozen.
    actions: one name per Discrete action, in action order (labels for GIF panels; the head has one logit each).
    image_shape: the frames' shape, uint8 (H, W, C) or (C, H, W) (`frame_space(env).shape`).
    encoder: "conv" (llmrl's conv stack, `llmrl.nets`, then a linear map to `tokens` embeddings, scaled to the
        model's token embeddings) or "vision" (a LLaVA-NeXT's own vision tower and projector, frozen, pooled to
        `tokens` embeddings, plus a trained residual adapter).
    tokens: how many input embeddings the image becomes.
    task: the instruction for every episode (default: the env's mission).
    template: the text before the image embeddings, with an {instruction} field.
    layers: run only the model's first `layers` decoder layers (then its final norm; None: all of them) —
        a cost knob for CPUs, not part of LLaRP.
    head_hidden: width of the action and value heads' hidden layer.
    cache_mb: memory for the instructions' cached keys and values (least recently used dropped).
    max_texts: the most distinct instructions (the size of the id observation space).
    frozen_dtype: the frozen layers run (in place, on the model given) in this dtype, forward and backward;
        "bfloat16" is ~2.5x faster on CPUs with avx512_bf16 or AMX (as `LLMPolicy`'s option).
    seed: initialises the encoder and heads (independent of the global RNG).
    """

    llm: Any
    net: Any
    tower: Any
    projector: Any
    embed_scale: torch.Tensor
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(
        self,
        llm: Any,
        actions: Sequence[str],
        *,
        image_shape: Sequence[int] = (56, 56, 3),
        encoder: Encoder = "conv",
        tokens: int = 2,
        task: str = "",
        template: str = DEFAULT_INSTRUCTION,
        layers: int | None = None,
        head_hidden: int = 256,
        cache_mb: float = 256.0,
        max_texts: int = 2**31 - 1,
        frozen_dtype: Literal["float32", "bfloat16"] = "float32",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if frozen_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"frozen_dtype={frozen_dtype!r} is invalid: use float32 or bfloat16")
        self.frozen_dtype = getattr(torch, frozen_dtype)
        self.actions = tuple(str(a) for a in actions)
        self.n = len(self.actions)
        if self.n < 2:
            raise ConfigError(f"actions={self.actions!r}: a policy needs at least two actions")
        if not (isinstance(tokens, int) and tokens >= 1):
            raise ConfigError(f"tokens={tokens!r} is invalid: use an int >= 1 (image embeddings per frame)")
        if encoder not in ("conv", "vision"):
            raise ConfigError(f"encoder={encoder!r} is invalid: use 'conv' or 'vision'")
        try:
            template.format(instruction="")
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(
                f"template={template!r} is invalid ({err!r}): use only the field {{instruction}}"
            ) from err
        self.image_shape = tuple(int(x) for x in image_shape)
        image = spaces.Box(0, 255, self.image_shape, np.uint8)
        if not is_image_space(image):
            raise ConfigError(
                f"image_shape={self.image_shape} is not an image: use (H, W, C) or (C, H, W) with C in 1..4"
            )
        net = getattr(llm, "module", None)
        if net is None or getattr(llm, "tokenizer", None) is None:
            raise ConfigError(
                f"VLMPolicy needs gradients through the model, which {getattr(llm, 'name', llm)!r} cannot give; "
                "use llmrl.llm.hf.HFLLM.from_gguf() (or 'hf:<model>')"
            )
        object.__setattr__(self, "llm", llm)  # outside the module tree: checkpoints hold what is trained only
        object.__setattr__(self, "net", net)
        self.stack = Stack(net)
        if not fast_rows_supported(self.stack):
            raise ConfigError(f"{type(net).__name__}'s decoder layers are not Llama-style; VLMPolicy runs "
                              "Llama, Qwen2, Mistral, Gemma and Gemma 3 stacks (or a LLaVA-NeXT's)")  # fmt: skip
        n_layers = len(self.stack.layers)
        if layers is not None and not (isinstance(layers, int) and 1 <= layers <= n_layers):
            raise ConfigError(f"layers={layers!r} is invalid: use an int from 1 to {n_layers}, or None (all)")
        self.n_layers = n_layers if layers is None else layers
        self.tokens, self.task, self.template, self.encoder_kind = tokens, task, template, encoder
        self.instructions = TextTable(int(max_texts))
        self._stats = {"steps": 0, "hits": 0, "misses": 0, "seconds": 0.0, "model_seconds": 0.0}
        self._cache = StateCache(cache_mb, self._stats)
        for p in net.parameters():
            p.requires_grad_(False)
        for layer in self.stack.layers[: self.n_layers]:  # in place: the frozen layers are ours to run
            layer.to(self.frozen_dtype)
        d = self.stack.hidden
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if encoder == "conv":
                self.conv, dim = build_encoder(image)
                self.to_tokens = nn.Linear(dim, tokens * d)
            else:
                self._vision_parts(llm, net, d)
            self.action_head = mlp_head(d, head_hidden, self.n, 0.01)
            self.value_head = mlp_head(d, head_hidden, 1, 1.0)
        # the conv encoder's embeddings are normalised, then scaled to the size of the model's own token
        # embeddings (Gemma multiplies them by sqrt(d)): inputs of the size the layers were trained on
        with torch.no_grad():
            sample = self.stack.embed(torch.arange(min(4096, int(net.get_input_embeddings().num_embeddings))))
            self.register_buffer(
                "embed_scale", sample.float().pow(2).mean(-1).sqrt().mean(), persistent=False
            )
        self._check_prefix_length()

    def _vision_parts(self, llm: Any, net: Any, d: int) -> None:
        """The LLaVA-NeXT's vision tower and projector (frozen) and the trained adapter after them."""
        inner = getattr(net, "model", None)
        tower = getattr(inner, "vision_tower", None)
        projector = getattr(inner, "multi_modal_projector", None)
        if tower is None or projector is None:
            raise UnsupportedOperationError(
                f"encoder='vision' needs an image-text model with its own vision tower (LLaVA-NeXT, 'hf:<path>'); "
                f"{getattr(llm, 'name', type(net).__name__)!r} is text-only: use encoder='conv'"
            )
        shape = self.image_shape
        if len(shape) != 3 or shape[0 if image_channels_first(shape) else -1] != 3:
            raise ConfigError(
                f"encoder='vision' needs RGB frames (3 channels), image_shape={self.image_shape}"
            )
        object.__setattr__(self, "tower", tower)
        object.__setattr__(self, "projector", projector)
        cfg = net.config
        self.feature_layer = int(getattr(cfg, "vision_feature_layer", -1))
        self.drop_cls = getattr(cfg, "vision_feature_select_strategy", "default") == "default"
        self.tower_size = int(tower.config.image_size)
        images = getattr(getattr(llm, "processor", None), "image_processor", None)
        mean = getattr(images, "image_mean", None) or [0.48145466, 0.4578275, 0.40821073]  # CLIP's
        std = getattr(images, "image_std", None) or [0.26862954, 0.26130258, 0.27577711]
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.adapter = nn.Linear(d, d)  # zero: training starts from the model's own image embeddings
        nn.init.zeros_(self.adapter.weight)
        nn.init.zeros_(self.adapter.bias)

    # -- the env side -------------------------------------------------------------------------------------

    def instruction(self, mission: str) -> str:
        """The text before the image embeddings for one mission."""
        return self.template.format(instruction=mission)

    def wrap(self, env: Any, frame: Frame = "auto", tile_size: int = 8) -> FrameIds:
        """`env` (single or vector) with observations turned into frames and instruction ids for this policy.
        frame: "obs" (the env's image observation), "pov" (MiniGrid's agent view drawn with `tile_size`
        pixels a cell) or "auto" (the image observation when there is one, else MiniGrid's view)."""
        check_action_space(env, self)
        return FrameIds(env, self, frame, tile_size)

    def metrics(self) -> dict[str, float]:
        """Counters for the training log: frames, instruction cache hits/misses, seconds in the policy and in
        the frozen model's layers."""
        return {f"llm/{k}": float(v) for k, v in self._stats.items()}

    # -- the module PPO calls -----------------------------------------------------------------------------

    def forward(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """{"image": (B, *image_shape), "instruction": (B,)} -> logits (B, n), value (B,)."""
        t0 = time.perf_counter()
        keys = [int(i) for i in obs["instruction"].reshape(-1).tolist()]
        self._stats["steps"] += len(keys)
        x = self.encode(obs["image"])  # (B, k, d)
        t1 = time.perf_counter()
        h = self.run(x, keys)  # (B, d)
        self._stats["model_seconds"] += time.perf_counter() - t1
        logits, value = self.action_head(h.float()), self.value_head(h.float()).squeeze(-1)
        self._stats["seconds"] += time.perf_counter() - t0
        return logits, value

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Frames (B, *image_shape) uint8 -> image embeddings (B, tokens, d) in the frozen layers' dtype."""
        B, d = image.shape[0], self.stack.hidden
        if self.encoder_kind == "conv":
            z = self.to_tokens(self.conv(image)).view(B, self.tokens, d)
            z = nn.functional.layer_norm(z, (d,)) * self.embed_scale
            return z.to(self.frozen_dtype)
        x = image if image_channels_first(self.image_shape) else image.permute(0, 3, 1, 2)  # (B, 3, H, W)
        with torch.no_grad():
            x = nn.functional.interpolate(x.float() / 255.0, size=(self.tower_size, self.tower_size),
                                          mode="bilinear", align_corners=False)  # fmt: skip
            x = ((x - self.pixel_mean) / self.pixel_std).to(self.stack.dtype)
            feats = self.tower(x, output_hidden_states=True).hidden_states[
                self.feature_layer
            ]  # (B, 1 + N, dv)
            patches = self.projector(feats[:, 1:] if self.drop_cls else feats)  # (B, N, d)
            z = nn.functional.adaptive_avg_pool1d(patches.transpose(1, 2), self.tokens).transpose(1, 2)
        return (z.float() + self.adapter(z.float())).to(self.frozen_dtype)  # (B, tokens, d)

    def run(self, x: torch.Tensor, keys: Sequence[int]) -> torch.Tensor:
        """The image embeddings x (B, k, d) after each one's instruction, through the frozen layers -> the
        final hidden state (B, d) of the last image embedding."""
        B, k, _ = x.shape
        entries = [self._prefix(key) for key in keys]
        lengths = torch.tensor([P for _, P in entries])
        P = int(lengths.max())
        # keys/values of the instructions, right-padded to the longest (padding is masked out)
        pasts = []
        for layer in range(self.n_layers):
            kk = [e[0][layer][0] for e in entries]
            vv = [e[0][layer][1] for e in entries]
            pasts.append((_pad_stack(kk, P), _pad_stack(vv, P)))  # (B, KV, P, hd)
        mask = torch.zeros(B, k, P + k, dtype=torch.bool)
        mask[:, :, :P] = torch.arange(P)[None, None] < lengths[:, None, None]
        mask[:, :, P:] = torch.ones(k, k, dtype=torch.bool).tril()
        pos = lengths[:, None] + torch.arange(k)[None]  # (B, k): the image embeddings follow the instruction
        h = x
        last = torch.full((B, 1), k - 1)
        for layer in range(self.n_layers):
            final = layer == self.n_layers - 1
            rows = last if final else None  # the last layer only where its output is read
            h, _ = layer_rows(self.stack, layer, h, pos, mask[:, k - 1 :] if final else mask,
                              past=pasts[layer], rows=rows)  # fmt: skip
        return self.stack.final_norm(h[:, 0]).float()

    def _prefix(self, key: int) -> tuple[list[KV], int]:
        """The instruction's keys and values in every layer, from the cache or computed now."""
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        # normal tensors even inside PPO's inference_mode rollout: the update's autograd reuses them
        with torch.inference_mode(False), torch.no_grad():
            ids = torch.tensor(list(self.llm.tokenizer(self.instructions[key])["input_ids"]))
            if len(ids) + self.tokens > self.stack.context:
                raise ConfigError(
                    f"an instruction of {len(ids)} tokens plus {self.tokens} image embeddings is longer than the "
                    f"model's usable context ({self.stack.context} tokens); shorten the template or the task"
                )
            kv = prefix_cache(self.stack, ids, stop=self.n_layers)
        entry = (kv, len(ids))
        self._cache.put(key, entry)
        return entry

    def _check_prefix_length(self) -> None:
        n = len(self.llm.tokenizer(self.instruction(self.task))["input_ids"]) + self.tokens
        if n >= self.stack.context:
            raise ConfigError(
                f"the instruction template alone is {n} tokens with the image embeddings, the model's usable "
                f"context is {self.stack.context}; shorten the template or the task"
            )

    # -- checkpoints: encoder, heads and the instruction table (the ids in the rollout refer to it) --------

    def get_extra_state(self) -> Any:
        return {"instructions": list(self.instructions.texts)}

    def set_extra_state(self, state: Any) -> None:
        self.instructions.load(state["instructions"])
        self._cache.clear()


def _pad_stack(ts: Sequence[torch.Tensor], length: int) -> torch.Tensor:
    """(1, KV, P_i, hd) tensors -> (B, KV, length, hd), zero-padded on the right."""
    if all(t.shape[2] == length for t in ts):
        return torch.cat(list(ts))
    out = ts[0].new_zeros(len(ts), ts[0].shape[1], length, ts[0].shape[3])
    for b, t in enumerate(ts):
        out[b, :, : t.shape[2]] = t[0]
    return out


class VLMPolicyRole(FrameIds):
    """`VLMPolicy` as a registered role (`llmrl train --role vlm-policy`, a preset's `role: vlm-policy`): builds
    the policy for `env`'s frames and wraps the env; the agent takes the module from `env.policy`.

    The embedded llama.cpp model is swapped for the same GGUF de-quantised through transformers (gradients
    flow through it to the encoder). `actions` defaults to `action_names(env)` (the first `n_actions`);
    `frame` and `tile_size` are `VLMPolicy.wrap`'s, the other options `VLMPolicy`'s.
    """

    def __init__(self, env: Any, llm: Any, *, actions: Sequence[str] | None = None, n_actions: int | None = None,
                 frame: Frame = "auto", tile_size: int = 8, **options: Any) -> None:  # fmt: skip
        names = tuple(actions) if actions is not None else action_names(env)
        if n_actions is not None:
            names = names[: int(n_actions)]
        shape = frame_space(env, frame, tile_size).shape
        policy = VLMPolicy(gradient_llm(llm), names, image_shape=shape, **options)
        check_action_space(env, policy)
        super().__init__(env, policy, frame, tile_size)
