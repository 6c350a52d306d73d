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
import operator
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import numpy as np

from llmrl.errors import ConfigError, optional_import
from llmrl.llm.base import Image, LLMError, LLMOutputError, LLMUnavailableError, UnsupportedOperationError
from llmrl.llm.common import Backend

__all__ = ["OpenAILLM", "LLMRequestError"]


class LLMRequestError(LLMError):
    """The server answered an HTTP error that retrying cannot fix (401, 403, 404, 400, ...)."""

    def __init__(self, message: str, *, status: int):
        super().__init__(message)
        self.status = status


def _short(err: BaseException, n: int = 160) -> str:
    """An error's text on one line, cut to `n` characters (a server may send a whole HTML page)."""
    text = " ".join(str(err).split())
    return text if len(text) <= n else text[: n - 3] + "..."


class _Hung(Exception):
    """An attempt ran past its time (the server accepted the request but never finished answering)."""


def _first_choice(r: Any, name: str) -> Any:
    choices = getattr(r, "choices", None)
    if not choices:
        raise LLMOutputError(
            f"{name} answered with no choices ({_short(Exception(repr(r)))}); check the server's log"
        )
    return choices[0]


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
    timeout: seconds one attempt may take in all (a server trickling bytes cannot stretch it). The
        default leaves room for a CPU server: llama.cpp's server spends ~0.5 s a token on echoed
        log-probs of a 262k vocabulary (it sorts the vocabulary per token), more on a busy machine.
    deadline: seconds a request may take over all its attempts (default 2 * timeout): a hung server is
        reported (LLMUnavailableError) after at most this long.
    retries: attempts after the first (connection errors, timeouts, 5xx, 429); backoff: first wait (doubles).
    HTTP errors (401, 404, 400, ...) are one LLMRequestError line with the fix; a body that is not the
    OpenAI API's JSON, or one without choices, is an LLMOutputError.
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
        timeout: float = 60.0,
        deadline: float | None = None,
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
        if not (timeout > 0 and retries >= 0 and backoff >= 0):
            raise ConfigError(
                f"need timeout > 0, retries >= 0, backoff >= 0; got {timeout}, {retries}, {backoff}"
            )
        if deadline is None:
            deadline = 2 * timeout
        if not deadline >= timeout:
            raise ConfigError(
                f"need deadline >= timeout (seconds per request in total), got {deadline} < {timeout}"
            )
        self.model, self.base_url, self._api_key = model, base_url, api_key
        self.timeout, self.deadline = float(timeout), float(deadline)
        self.retries, self.backoff, self.chat = retries, backoff, chat
        self.client = self._new_client()
        self.embeddings_model = model if embeddings_model == "" else embeddings_model
        self.name = f"openai:{model}"
        caps = {"generate", "score"} | ({"images"} if images else set())
        if self.embeddings_model is not None:
            caps.add("embed")
        self.capabilities = frozenset(caps)
        self._score_ok: bool | None = None
        if check:
            self._call("models.list")

    def _call(self, endpoint: str, /, **kwargs: Any) -> Any:
        """`self.client.<endpoint>(**kwargs)` (endpoint like "chat.completions.create"): one request, retried with exponential backoff on connection errors, timeouts,
        5xx and 429, all within `deadline` seconds in total. Every failure is one LLMError line."""
        o = self._openai
        transient = (o.APIConnectionError, o.APITimeoutError, o.RateLimitError, o.InternalServerError, _Hung)
        end = time.monotonic() + self.deadline
        wait, attempt = self.backoff, 0
        while True:
            attempt += 1
            left = end - time.monotonic()
            try:
                # looked up at each attempt: a hung attempt replaces the client
                fn = operator.attrgetter(endpoint)(self.client)
                return self._within(min(self.timeout, left), fn, kwargs)
            except transient as err:
                left = end - time.monotonic()
                if attempt > self.retries or left <= wait:
                    raise LLMUnavailableError(
                        f"{self.name} at {self._where} did not answer after {attempt} attempts in "
                        f"{self.deadline - max(left, 0):.0f} s (last: {type(err).__name__}: {_short(err)}); "
                        "start the server or check base_url, or raise timeout=/deadline=/retries="
                    ) from err
                time.sleep(wait)
                wait *= 2
            except o.APIStatusError as err:
                raise LLMRequestError(self._status_message(err), status=err.status_code) from err
            except (o.APIResponseValidationError, ValueError, TypeError, AttributeError) as err:
                raise LLMOutputError(
                    f"{self.name} at {self._where} answered something that is not an OpenAI API response "
                    f"({type(err).__name__}: {_short(err)}); check that base_url points at an "
                    "OpenAI-compatible server (it usually ends in /v1)"
                ) from err

    def _within(self, seconds: float, fn: Callable[..., T], kwargs: dict[str, Any]) -> T:
        """Run one request in a helper thread and give up after `seconds` in total. httpx's timeout
        restarts with every byte received, so a server trickling one byte every few seconds would hold
        the caller forever; this bound does not restart."""
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn(**kwargs)
            except BaseException as err:  # noqa: BLE001 - handed to the caller's thread below
                box["error"] = err

        worker = threading.Thread(target=run, name=f"{self.name} request", daemon=True)
        worker.start()
        worker.join(max(seconds, 0.0))
        if worker.is_alive():  # hung: drop the connection (the abandoned request then fails and ends)
            self.client.close()
            self.client = self._new_client()
            raise _Hung(f"no complete answer within {seconds:.1f} s")
        if "error" in box:
            raise box["error"]
        value = box["value"]
        if isinstance(value, (str, bytes)):  # a non-JSON body comes back as text from the client
            raise ValueError(f"a text body instead of JSON: {value[:60]!r}")
        return value

    @property
    def _where(self) -> str:
        return self.base_url or "api.openai.com"

    def _status_message(self, err: Any) -> str:
        fixes = {
            401: "check api_key= or $OPENAI_API_KEY",
            403: "the key lacks access to this model or endpoint; check api_key= and the model name",
            404: f"check the model name ({self.model!r}) and base_url (it usually ends in /v1)",
            400: "the server refused the request's parameters; check the model and the call's arguments",
            422: "the server refused the request's parameters; check the model and the call's arguments",
        }
        fix = fixes.get(err.status_code, "see the server's log")
        return f"{self.name} at {self._where}: HTTP {err.status_code} ({_short(err)}); {fix}"

    def _new_client(self) -> Any:
        # The client's own retries are off: ours in _call are bounded and end in LLMUnavailableError.
        return self._openai.OpenAI(
            base_url=self.base_url, api_key=self._api_key, timeout=self.timeout, max_retries=0
        )

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
                        "chat.completions.create",
                        model=self.model,
                        messages=[{"role": "user", "content": content}],
                        max_tokens=max_tokens,
                        temperature=temperature,
                        stop=stop_list,
                    )
                    out.append(_first_choice(r, self.name).message.content or "")
                else:
                    r = self._call(
                        "completions.create",
                        model=self.model,
                        prompt=prompt,
                        max_tokens=max_tokens,
                        temperature=temperature,
                        stop=stop_list,
                    )
                    out.append(_first_choice(r, self.name).text)
                if getattr(r, "usage", None) is not None:
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
                        "completions.create",
                        model=self.model, prompt=text, max_tokens=1, echo=True, logprobs=1, temperature=0.0,
                    )  # fmt: skip
                except LLMRequestError as err:
                    if err.status not in (400, 404, 422):
                        raise
                    raise UnsupportedOperationError(
                        f"{self.name}: the server refused log-prob scoring (completions with echo=True and "
                        f"logprobs): {err}. Use a server that supports it (llama.cpp server started with "
                        '--logits_all true, vLLM), or "embedded" / "hf:<model>" for score'
                    ) from err
                lp = _first_choice(r, self.name).logprobs
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
            r = self._call("embeddings.create", model=self.embeddings_model, input=texts)
            if getattr(r, "usage", None) is not None:
                tokens.append(r.usage.total_tokens)
        # A server without pooling (llama.cpp serving a generative model) returns one vector per
        # token, (T, d): mean-pool those so the protocol's (n, d) holds.
        data = getattr(r, "data", None)
        if not data:
            raise LLMOutputError(f"{self.name} answered /v1/embeddings with no data; check the server's log")
        try:
            e = np.stack(
                [
                    np.asarray(d.embedding, dtype=np.float32).reshape(-1, _len_last(d.embedding)).mean(0)
                    for d in data
                ]
            )
        except (TypeError, ValueError) as err:
            raise LLMOutputError(
                f"{self.name} answered /v1/embeddings with vectors that are not numbers of one width ({_short(err)})"
            ) from err
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
