"""What the LLM says about a state, for the GIF panel and the terminal render.

Training never generates text (that is what made the seed too slow); only rendering does, as in the
seed: `save_gif(agent, env, path, annotate=Advisor(llm, prompt, env=env))` shows each frame with
the model's short advice for it beside the action values.

    advise = Advisor(llm, "Please tell me in 200 characters where the cat should move next.",
                     language="Japanese")
    advise(obs, {"text": "The cat is at row 3, column 1 ..."})   # -> "Move up ..."
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from llmrl.errors import ConfigError
from llmrl.llm.base import LLM
from llmrl.llm.cache import checked
from llmrl.roles.base import require_capabilities
from llmrl.roles.features import DEFAULT_PROMPT, DEFAULT_TEMPLATE, Source

__all__ = ["Advisor"]


class Advisor:
    """`annotate(obs, info) -> str`: a short generated answer to `prompt` for the current state.

    Answers are memoised by state text (or frame bytes), so a GIF of a small world costs one
    generation per distinct state. `language` asks the model itself to answer in that language
    (the seed showed Japanese); small base models follow such requests loosely.
    """

    def __init__(
        self,
        llm: LLM,
        prompt: str = DEFAULT_PROMPT,
        *,
        env: gym.Env | None = None,
        source: Source = "text",
        language: str | None = None,
        template: str = DEFAULT_TEMPLATE,
        max_tokens: int = 50,
        max_chars: int = 200,
    ):
        """
        Args:
            llm: a backend with "generate" ("images" too for source="image").
            prompt: the question; the seed's per-environment prompts fit here.
            env: for source="image" when the observation is not an RGB frame: its `render()` is used.
            source: "text" reads `info["text"]`; "image" sends the frame.
            language: e.g. "Japanese": appends "Answer in Japanese." to the prompt.
            template: text source only: how `{state}` and `{prompt}` make the model input.
            max_tokens: generation length (the seed used 50).
            max_chars: the answer is cut to this many characters for the panel.
        """
        need = ["generate"] + (["images"] if source == "image" else [])
        require_capabilities(llm, need, f"Advisor(source={source!r})",
                             "source='image' needs an image-text model (an 'hf:' LLaVA-NeXT).")  # fmt: skip
        if source not in ("text", "image"):
            raise ConfigError(f"source={source!r} is not supported; use 'text' or 'image'.")
        if max_tokens < 1:
            raise ConfigError(f"max_tokens={max_tokens!r} must be >= 1.")
        self.llm, self.env, self.source = checked(llm), env, source
        self.prompt = prompt + (f" Answer in {language}." if language else "")
        self.template, self.max_tokens, self.max_chars = template, max_tokens, max_chars
        self.stop = ["Question:", "Game state:", "\n\n"]
        self._memo: dict[Any, str] = {}

    def __call__(self, obs: Any, info: Mapping[str, Any] | None = None) -> str:
        info = info or {}
        if self.source == "text":
            text = info.get("text")
            if not isinstance(text, str):
                raise ConfigError(
                    "Advisor(source='text') needs info['text']: wrap the env in llmrl.envs.WithText."
                )
            key: Any = text
            if key not in self._memo:
                prompt = self.template.format(state=text, prompt=self.prompt)
                self._memo[key] = self._generate(prompt, None)
        else:
            frame = self._frame(obs)
            key = (frame.shape, frame.tobytes())
            if key not in self._memo:
                self._memo[key] = self._generate(self.prompt, frame)
        return self._memo[key]

    def _generate(self, prompt: str, image: np.ndarray | None) -> str:
        images = [image] if image is not None else None
        # a base model goes on to invent the next question: stop there
        out = self.llm.generate(
            [prompt], max_tokens=self.max_tokens, temperature=0.0, stop=self.stop, images=images
        )[0]
        out = " ".join(out.split())  # one paragraph for the panel
        return out[: self.max_chars]

    def _frame(self, obs: Any) -> np.ndarray:
        if self.env is not None:
            frame = self.env.render()
            if frame is not None:
                return np.asarray(frame, dtype=np.uint8)
        candidates = obs.values() if isinstance(obs, Mapping) else [obs]
        for c in candidates:
            a = np.asarray(c)
            if a.dtype == np.uint8 and a.ndim == 3 and a.shape[-1] == 3:
                return a
        raise ConfigError(
            "Advisor(source='image') found no RGB frame: pass env= (render_mode='rgb_array') "
            "or use colour image observations."
        )
