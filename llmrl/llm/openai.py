"""OpenAI-compatible servers (OpenAI, vLLM, Ollama, llama.cpp server) behind the LLM protocol.

    llm = OpenAILLM("gpt-4o-mini", base_url="https://.../v1", api_key=...)
    llm = llmrl.llm.load("openai:gemma", base_url="http://127.0.0.1:8000/v1")

generate uses chat completions (text and image content parts; images go as PNG data URLs);
`chat=False` uses plain completions. score uses completions with echo + logprobs (llama.cpp server
started with logits_all, vLLM); a server that refuses gets UnsupportedOperationError naming the
alternative. Every request has a timeout and is retried with exponential backoff; a server that
stays down gives LLMUnavailableError, never a hang.
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import numpy as np

from llmrl.errors import ConfigError, optional_import
from llmrl.llm.base import Image, LLMUnavailableError, UnsupportedOperationError
from llmrl.llm.common import Backend

__all__ = ["OpenAILLM"]

T = TypeVar("T")


def _len_last(vec: Any) -> int:
    """Width of an embedding that is either (d,) or a list of (d,) per token."""
    return len(vec[0]) if vec and isinstance(vec[0], list) else len(vec)


def _data_url(image: Image) -> str:
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAILLM(Backend):
    """A model served over the OpenAI API.

    model: the served model's name.
    base_url / api_key: default $OPENAI_BASE_URL / $OPENAI_API_KEY ("none" for local servers).
    timeout: seconds per request; retries: attempts after the first; backoff: first wait (doubles).
    chat: generate through chat completions (True) or plain completions (False).
    images: the model takes image content parts (a vision model).
    embeddings_model: model name for /v1/embeddings (default `model`); None disables embed.
    check: probe the server at construction (lists models) so a wrong URL fails now.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        chat: bool = True,
        images: bool = False,
        embeddings_model: str | None = "",
        check: bool = True,
    ):
        super().__init__()
        openai = optional_import("openai", "openai")
        self._openai = openai
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or ("none" if base_url else None)
        if api_key is None:
            raise ConfigError(
                f"openai:{model} needs an API key: pass api_key= or set OPENAI_API_KEY "
                "(or base_url= for a local server, which needs none)"
            )
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ConfigError(
                f"need timeout > 0, retries >= 0, backoff >= 0; got {timeout}, {retries}, {backoff}"
            )
        # The client's own retries are off: ours below are bounded and end in LLMUnavailableError.
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)
        self.model, self.base_url = model, base_url
        self.retries, self.backoff, self.chat = retries, backoff, chat
        self.embeddings_model = model if embeddings_model == "" else embeddings_model
        self.name = f"openai:{model}"
        caps = {"generate", "score"} | ({"images"} if images else set())
        if self.embeddings_model is not None:
            caps.add("embed")
        self.capabilities = frozenset(caps)
        self._score_ok: bool | None = None
        if check:
            self._call(lambda: self.client.models.list())

    def _call(self, fn: Callable[..., T], /, **kwargs: Any) -> T:
        """`fn(**kwargs)`: one request, with retries and exponential backoff on connection errors and 5xx/429."""
        o = self._openai
        transient = (o.APIConnectionError, o.APITimeoutError, o.RateLimitError, o.InternalServerError)
        wait = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return fn(**kwargs)
            except transient as err:
                if attempt == self.retries:
                    raise LLMUnavailableError(
                        f"{self.name} at {self.base_url or 'api.openai.com'} did not answer after "
                        f"{self.retries + 1} attempts ({type(err).__name__}: {err}); start the server or "
                        "check base_url, or raise retries=/timeout="
                    ) from err
                time.sleep(wait)
                wait *= 2
        raise AssertionError("unreachable")

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_tokens: int = 32,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        images: Sequence[Image | None] | None = None,
    ) -> list[str]:
        prompts = list(prompts)
        imgs = self._check_images_supported(images, len(prompts))
        out = []
        stop_list = list(stop) if stop else None
        with self._count(len(prompts)) as tokens:
            for prompt, img in zip(prompts, imgs):
                if self.chat or img is not None:
                    content: Any = prompt
                    if img is not None:
                        content = [
                            {"type": "text", "text": prompt},
                            {"type": "image_url", "image_url": {"url": _data_url(img)}},
                        ]
                    r = self._call(
                        self.client.chat.completions.create,
                        model=self.model,
                        messages=[{"role": "user", "content": content}],
                        max_tokens=max_tokens,
                        temperature=temperature,
                        stop=stop_list,
                    )
                    out.append(r.choices[0].message.content or "")
                else:
                    r = self._call(
                        self.client.completions.create,
                        model=self.model,
                        prompt=prompt,
                        max_tokens=max_tokens,
                        temperature=temperature,
                        stop=stop_list,
                    )
                    out.append(r.choices[0].text)
                if r.usage is not None:
                    tokens.append(r.usage.total_tokens)
        return out

    def score(self, prompt: str, continuations: Sequence[str]) -> np.ndarray:
        """Completions with echo=True, logprobs: sum over the tokens that end past the prompt.

        Over HTTP the prompt cannot be shared explicitly; servers with prefix caching (llama.cpp,
        vLLM) reuse it themselves.
        """
        out = np.zeros(len(continuations))
        with self._count(len(continuations)) as tokens:
            for i, cont in enumerate(continuations):
                text = prompt + cont
                try:
                    r = self._call(
                        self.client.completions.create,
                        model=self.model, prompt=text, max_tokens=1, echo=True, logprobs=1, temperature=0.0,
                    )  # fmt: skip
                except (self._openai.BadRequestError, self._openai.NotFoundError) as err:
                    raise UnsupportedOperationError(
                        f"{self.name}: the server refused log-prob scoring (completions with echo=True and "
                        f"logprobs): {err}. Use a server that supports it (llama.cpp server started with "
                        '--logits_all true, vLLM), or "embedded" / "hf:<model>" for score'
                    ) from err
                lp = r.choices[0].logprobs
                if lp is None or lp.token_logprobs is None or lp.text_offset is None:
                    raise UnsupportedOperationError(
                        f"{self.name}: the server returned no echoed log-probs; use llama.cpp server with "
                        '--logits_all true, vLLM, or "embedded" / "hf:<model>" for score'
                    )
                # The echoed prompt tokens come first; the one generated token comes last.
                n_text = len(lp.tokens) - 1
                for tok, off, logp in list(zip(lp.tokens, lp.text_offset, lp.token_logprobs))[:n_text]:
                    if off + len(tok) > len(prompt) and logp is not None:
                        out[i] += logp
                tokens.append(n_text)
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.embeddings_model is None:
            raise self._refuse("embed")
        texts = list(texts)
        with self._count(len(texts)) as tokens:
            r = self._call(lambda: self.client.embeddings.create(model=self.embeddings_model, input=texts))
            if r.usage is not None:
                tokens.append(r.usage.total_tokens)
        # A server without pooling (llama.cpp serving a generative model) returns one vector per
        # token, (T, d): mean-pool those so the protocol's (n, d) holds.
        e = np.stack(
            [
                np.asarray(d.embedding, dtype=np.float32).reshape(-1, _len_last(d.embedding)).mean(0)
                for d in r.data
            ]
        )
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)

    def features(
        self,
        prompts: Sequence[str],
        *,
        images: Sequence[Image | None] | None = None,
        kind: Literal["hidden", "logits"] = "hidden",
        tokens: Sequence[str] | None = None,
    ) -> np.ndarray:
        raise self._refuse("features")
