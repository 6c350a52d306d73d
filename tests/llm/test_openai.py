"""The OpenAI-compatible backend against a real llama.cpp server on loopback serving the embedded model.

The server is started as the README says, `python -m llmrl.llm.server` (llama.cpp's own server behind
llmrl's self-check): plain `python -m llama_cpp.server` segfaults on its first request on AMX CPUs.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from llmrl.llm import LLMUnavailableError, UnsupportedOperationError, load

pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server]")
pytest.importorskip("openai")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(port: int, *extra: str) -> subprocess.Popen:
    from llmrl.llm.llamacpp import embedded_gguf_path

    cmd = [
        sys.executable,
        "-m",
        "llmrl.llm.server",  # llama_cpp.server with the self-check's buffer setting (safe on AMX CPUs)
        "--model",
        str(embedded_gguf_path()),
        "--model_alias",
        "gemma",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "512",
        "--n_threads",
        "1",
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("llama_cpp.server exited at start") from None
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("llama_cpp.server did not start within 90 s")


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    proc = _start(port, "--logits_all", "true")
    yield f"http://127.0.0.1:{port}/v1"
    proc.kill()
    proc.wait(10)


def test_generate_and_score(server, embedded):
    # a busy 2-core machine makes the server's echoed log-probs slow (measured > 4 x 30 s at load ~13)
    llm = load(
        "openai:gemma",
        base_url=server,
        chat=False,
        embeddings_model=None,
        require=("generate", "score"),
        timeout=300,
    )
    a = llm.generate(["1, 2, 3,"], max_tokens=6)
    assert a == llm.generate(["1, 2, 3,"], max_tokens=6) and a[0].startswith(" 4")
    s = llm.score("The capital of France is", [" Paris", " London"])
    assert s[0] > s[1]
    # the same model in-process: the server's echo log-probs agree
    np.testing.assert_allclose(s, embedded.score("The capital of France is", [" Paris", " London"]), atol=0.2)
    assert llm.stats.calls == 4 and llm.stats.tokens > 0
    with pytest.raises(UnsupportedOperationError, match="features"):
        load("openai:gemma", base_url=server, require=("features",))


def test_embed():
    port = _free_port()
    proc = _start(port, "--embedding", "true")
    try:
        llm = load("openai:gemma", base_url=f"http://127.0.0.1:{port}/v1", chat=False)
        e = llm.embed(["a red key", "a blue door"])
        assert e.shape == (2, 640)
        np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    finally:
        proc.kill()
        proc.wait(10)


def test_server_killed_during_a_call_gives_unavailable_not_a_hang():
    port = _free_port()
    proc = _start(port)
    llm = load(
        "openai:gemma", base_url=f"http://127.0.0.1:{port}/v1", chat=False, timeout=5, retries=2, backoff=0.2
    )
    # killed during a call: retries, then LLMUnavailableError within bounded time, never a hang
    threading.Timer(1.0, proc.kill).start()
    t0 = time.time()
    with pytest.raises(LLMUnavailableError, match="did not answer after 3 attempts"):
        llm.generate(["Once upon a time"] * 50, max_tokens=200)
    assert time.time() - t0 < 30
    proc.wait(10)
    with pytest.raises(LLMUnavailableError):  # down at construction: fails now, not mid-training
        load("openai:gemma", base_url=f"http://127.0.0.1:{port}/v1", retries=1, backoff=0.1)
