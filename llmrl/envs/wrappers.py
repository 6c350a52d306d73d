"""Wrappers that put a state's words next to (or instead of) its numbers, and the seed's image observations.

- `WithText(env)`: `info["text"]` (the state in words) and `info["caption"]` (what the last transition did,
  "" when nothing notable) in every reset/step info; the observation is untouched, so SB3 and RLlib still
  accept the env. Wrapping a vector env gives a `VectorWithText`, with arrays of strings in `infos` (the
  same dispatch as the roles', `llmrl.envs.adapters.Adaptive`).
- `TextObservation(env)`: the text becomes part of the observation (`gymnasium.spaces.Text`).
- `ImageObservation(env, size=84, grey=False)`: the env's `rgb_array` render becomes the observation.
"""

from __future__ import annotations

import string
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv, VectorWrapper

from llmrl.envs.adapters import Adaptive
from llmrl.envs.describers import describer_for
from llmrl.envs.text import Describer
from llmrl.errors import ConfigError

__all__ = [
    "WithText",
    "VectorWithText",
    "TextSource",
    "has_text",
    "TextObservation",
    "ImageObservation",
    "TEXT_CHARSET",
    "TIMEOUT_CAPTION",
]

TIMEOUT_CAPTION = "ran out of time"
"""Caption of a truncated step when the family's describer saw nothing more notable."""

# Every character a describer writes (Gymnasium's default Text charset is alphanumeric only).
TEXT_CHARSET = "".join(
    sorted(set(string.ascii_letters + string.digits + " .,;:!?'\"()[]{}+-*/=<>_%#&@|~^`$\n"))
)


def _finish_caption(caption: str, truncated: bool) -> str:
    return TIMEOUT_CAPTION if truncated and not caption else caption


class TextSource:
    """Marks a wrapper or env that writes the state text into `info["text"]` (see `has_text`). `WithText`
    and `VectorWithText` are text sources; an env that writes the text itself derives from this too."""


def has_text(env: Any) -> bool:
    """True if `env` or a wrapper under it is a `TextSource`, or it is a sync vector env all of whose envs
    have text (their `info["text"]` is batched into the vector info)."""
    e: Any = env
    while e is not None:
        if isinstance(e, TextSource):
            return True
        if isinstance(e, SyncVectorEnv):
            return all(has_text(sub) for sub in e.envs)
        e = getattr(e, "env", None)
    return False


class WithText(TextSource, gym.Wrapper, gym.utils.RecordConstructorArgs, metaclass=Adaptive):
    """Adds `info["text"]` and `info["caption"]` to every reset and step. Observation and spaces unchanged.

    `describer=` overrides the family's default (see `llmrl.envs.describer_for`). Given a vector env,
    `WithText(venv)` builds a `VectorWithText` (`adapter_for`).

    >>> env = WithText(llmrl.make("llmrl/Grid-v0"))
    >>> env.reset(seed=0)[1]["text"]
    'cat at column 1, row 1; goal 3 cells right, 2 cells up; puddle 3 cells right, 1 cell up; blocked: down, left'
    """

    @classmethod
    def adapter_for(cls, env: Any) -> type:
        """`VectorWithText` for a vector env, else this class."""
        return VectorWithText if isinstance(env, VectorEnv) else cls

    def __init__(self, env: gym.Env, describer: Describer | None = None) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, describer=describer)
        gym.Wrapper.__init__(self, env)
        self.describer = describer if describer is not None else describer_for(env)
        self.text = ""
        self.caption = ""

    def llmrl_state(self) -> dict[str, Any]:
        """What a checkpoint keeps besides plain attributes: the describer's previous snapshot (the next
        caption compares against it). See `llmrl.training.get_env_state`."""
        return _describer_state([self.describer])

    def llmrl_set_state(self, state: dict[str, Any]) -> None:
        _set_describer_state([self.describer], state)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        self.text, self.caption = self.describer.reset(self.env, obs), ""
        return obs, {**info, "text": self.text, "caption": self.caption}

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        text, caption = self.describer.step(self.env, obs, action, float(reward), terminated, truncated, info)
        self.text, self.caption = text, _finish_caption(caption, truncated)
        return obs, reward, terminated, truncated, {**info, "text": self.text, "caption": self.caption}


def _is_plain(x: Any) -> bool:
    if x is None or isinstance(x, (bool, int, float, str)):
        return True
    return isinstance(x, (tuple, list)) and all(_is_plain(v) for v in x)


def _describer_state(describers: list[Describer]) -> dict[str, Any]:
    """The describers' previous snapshots when they are plain data (numbers, text, tuples of those);
    others (MiniGrid's object snapshots) are left out: those envs do not resume exactly anyway."""
    prev = [d.__dict__.get("_prev") for d in describers]
    return {"prev": prev} if all(_is_plain(p) for p in prev) else {}


def _set_describer_state(describers: list[Describer], state: dict[str, Any]) -> None:
    for d, p in zip(describers, state.get("prev", [])):
        d.__dict__["_prev"] = tuple(p) if isinstance(p, list) else p


def _item(obs: Any, i: int) -> Any:
    """Observation of env `i` in a batched observation (arrays, dicts, tuples)."""
    if isinstance(obs, dict):
        return {k: _item(v, i) for k, v in obs.items()}
    if isinstance(obs, tuple):
        return obs[i] if obs and isinstance(obs[0], str) else tuple(_item(v, i) for v in obs)
    return obs[i]


class VectorWithText(TextSource, VectorWrapper):
    """`WithText` for a vector env: `infos["text"]`, `infos["caption"]` are object arrays of shape (num_envs,)
    (with the usual `_text`/`_caption` masks). Needs a `SyncVectorEnv` (the describers read each env's state)
    or a native vector env whose describer reads the observation alone (CartPole); NEXT_STEP autoreset."""

    def __init__(self, env: VectorEnv, describer: Describer | None = None) -> None:
        super().__init__(env)
        mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if mode != AutoresetMode.NEXT_STEP:
            raise ConfigError(
                f"VectorWithText needs autoreset_mode=NEXT_STEP, not {mode}; build the env with llmrl.make"
            )
        if describer is not None:
            raise ConfigError(
                "VectorWithText builds one describer per env; wrap the single envs to pass your own"
            )
        self._subenvs: list[gym.Env | None]
        if isinstance(env, SyncVectorEnv):
            self._subenvs = list(env.envs)
            self.describers = [describer_for(e) for e in env.envs]
        else:
            self._subenvs = [None] * env.num_envs
            try:
                self.describers = [describer_for(env) for _ in range(env.num_envs)]
            except ConfigError as err:
                raise ConfigError(
                    f"{type(env.unwrapped).__name__} does not expose its envs' states, so their text cannot be read; "
                    "build a sync vector env of WithText envs instead, e.g. "
                    "gymnasium.vector.SyncVectorEnv([lambda: llmrl.make(env_id)] * n)"
                ) from err
        self._needs_reset = np.zeros(env.num_envs, dtype=bool)

    def llmrl_state(self) -> dict[str, Any]:
        return _describer_state(self.describers)

    def llmrl_set_state(self, state: dict[str, Any]) -> None:
        _set_describer_state(self.describers, state)

    def _put(self, infos: dict, texts: list[str], captions: list[str]) -> dict:
        n = self.num_envs
        infos = dict(infos)
        infos["text"], infos["_text"] = np.array(texts, dtype=object), np.ones(n, dtype=bool)
        infos["caption"], infos["_caption"] = np.array(captions, dtype=object), np.ones(n, dtype=bool)
        return infos

    def reset(self, *, seed: Any = None, options: dict | None = None) -> tuple[Any, dict]:
        obs, infos = self.env.reset(seed=seed, options=options)
        texts = [d.reset(e, _item(obs, i)) for i, (d, e) in enumerate(zip(self.describers, self._subenvs))]
        self._needs_reset[:] = False
        return obs, self._put(infos, texts, [""] * self.num_envs)

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict]:
        obs, rewards, terms, truncs, infos = self.env.step(actions)
        texts, captions = [], []
        for i, (d, e) in enumerate(zip(self.describers, self._subenvs)):
            if self._needs_reset[i]:  # NEXT_STEP autoreset: this step was the reset of env i
                texts.append(d.reset(e, _item(obs, i)))
                captions.append("")
                continue
            info = {
                k: v[i]
                for k, v in infos.items()
                if not k.startswith("_") and infos.get(f"_{k}", np.ones(1, bool))[i]
            }
            text, cap = d.step(
                e, _item(obs, i), actions[i], float(rewards[i]), bool(terms[i]), bool(truncs[i]), info
            )
            texts.append(text)
            captions.append(_finish_caption(cap, bool(truncs[i])))
        self._needs_reset = np.logical_or(terms, truncs)
        return obs, rewards, terms, truncs, self._put(infos, texts, captions)


class TextObservation(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """The state's text in the observation, for policies that read text.

    Default: `Dict({"obs": <original observation>, "text": Text})`, so a policy can use both; with
    `text_only=True` the observation is the text alone (`Text`). Texts longer than `max_length` characters
    are cut. `info["text"]` and `info["caption"]` are kept (it wraps `WithText`, adding it if missing).
    """

    def __init__(self, env: gym.Env, *, text_only: bool = False, max_length: int = 1024) -> None:
        if isinstance(env, VectorEnv):
            raise ConfigError("TextObservation wraps a single env; vectorise after wrapping")
        if max_length < 1:
            raise ConfigError(f"max_length must be >= 1, got {max_length!r}")
        gym.utils.RecordConstructorArgs.__init__(self, text_only=text_only, max_length=max_length)
        if not _has_wrapper(env, WithText):
            env = WithText(env)
        gym.Wrapper.__init__(self, env)
        self.text_only, self.max_length = text_only, int(max_length)
        text_space = spaces.Text(max_length=self.max_length, min_length=0, charset=TEXT_CHARSET)
        self.observation_space = (
            text_space if text_only else spaces.Dict({"obs": env.observation_space, "text": text_space})
        )

    def _observation(self, obs: Any, info: dict) -> Any:
        text = "".join(ch for ch in info["text"] if ch in TEXT_CHARSET)[: self.max_length]
        return text if self.text_only else {"obs": obs, "text": text}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        return self._observation(obs, info), info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._observation(obs, info), reward, terminated, truncated, info


def _has_wrapper(env: gym.Env, kind: type) -> bool:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, kind):
            return True
        env = env.env
    return False


class ImageObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """The seed's `observation_mode="image"`: the env's `rgb_array` render, resized, is the observation.

    Observation: uint8 `(size, size, 3)` (HWC), or `(size, size, 1)` with `grey=True`; `size` may be an
    int or `(height, width)`. The env must be made with `render_mode="rgb_array"`.
    """

    def __init__(self, env: gym.Env, size: int | tuple[int, int] = 84, grey: bool = False) -> None:
        if isinstance(env, VectorEnv):
            raise ConfigError("ImageObservation wraps a single env; vectorise after wrapping")
        if env.render_mode != "rgb_array":
            raise ConfigError(
                f"ImageObservation needs render_mode='rgb_array', the env has {env.render_mode!r}; "
                "make it with llmrl.make(env_id, render_mode='rgb_array')"
            )
        h, w = (size, size) if isinstance(size, int) else size
        if h < 1 or w < 1:
            raise ConfigError(f"size must be positive, got {size!r}")
        gym.utils.RecordConstructorArgs.__init__(self, size=size, grey=grey)
        gym.ObservationWrapper.__init__(self, env)
        self.size, self.grey = (int(h), int(w)), bool(grey)
        self.metadata = {**env.metadata, "render_modes": ["rgb_array"]}  # it only works with frames
        self.observation_space = spaces.Box(0, 255, (h, w, 1 if grey else 3), dtype=np.uint8)

    def observation(self, observation: Any) -> np.ndarray:
        from PIL import Image

        frame = np.asarray(self.env.render(), dtype=np.uint8)  # (H0, W0, 3)
        h, w = self.size
        img = Image.fromarray(frame)
        if self.grey:
            img = img.convert("L")
        if img.size != (w, h):
            # BOX (area average) when shrinking keeps thin lines visible; NEAREST keeps pixel art crisp when growing.
            shrinking = w < frame.shape[1] or h < frame.shape[0]
            img = img.resize((w, h), Image.Resampling.BOX if shrinking else Image.Resampling.NEAREST)
        out = np.asarray(img, dtype=np.uint8)
        return out[..., None] if self.grey else out
