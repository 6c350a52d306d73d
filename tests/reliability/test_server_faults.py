"""A misbehaving OpenAI-compatible server: one clear line each, a total deadline, no hang."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("openai")

from llmrl.errors import ConfigError  # noqa: E402
from llmrl.llm import LLMError, LLMOutputError, LLMUnavailableError, load  # noqa: E402
from llmrl.llm.openai import LLMRequestError  # noqa: E402

GOOD_CHAT = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
             "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}]}  # fmt: skip


class Handler(BaseHTTPRequestHandler):
    mode = "good"

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status, body: bytes, ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # models.list at construction
        self._send(200, json.dumps({"object": "list", "data": []}).encode())

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        mode = type(self).mode
        if mode in ("401", "403", "404", "400"):
            self._send(int(mode), json.dumps({"error": {"message": f"error {mode} from the fake"}}).encode())
        elif mode == "html":
            self._send(200, b"<html><body>Welcome to nginx</body></html>", "text/html")
        elif mode == "not_json":
            self._send(200, b"this is not json at all")
        elif mode == "truncated":
            self._send(200, json.dumps(GOOD_CHAT).encode()[:40])
        elif mode == "empty_choices":
            self._send(200, json.dumps({**GOOD_CHAT, "choices": []}).encode())
        elif mode == "nan_embeddings":
            body = {"object": "list", "model": "m", "data": [{"object": "embedding", "index": 0,
                                                              "embedding": [float("nan"), 1.0]}]}  # fmt: skip
            self._send(200, json.dumps(body).encode())  # json.dumps writes NaN, as some servers do
        elif mode == "hang":
            time.sleep(30)
        elif mode == "trickle":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(60):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.5)
            except OSError:  # the client gave up (what the test wants)
                pass
        else:
            self._send(200, json.dumps(GOOD_CHAT).encode())


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    Handler.mode = "good"
    srv.shutdown()


@pytest.mark.parametrize(
    "mode,error,match",
    [
        ("401", LLMRequestError, "HTTP 401.*api_key"),
        ("403", LLMRequestError, "HTTP 403"),
        ("404", LLMRequestError, "HTTP 404.*model name"),
        ("400", LLMRequestError, "HTTP 400"),
        ("html", LLMOutputError, "not an OpenAI API response"),
        ("not_json", LLMOutputError, "not an OpenAI API response"),
        ("truncated", LLMOutputError, "not an OpenAI API response"),
        ("empty_choices", LLMOutputError, "no choices"),
    ],
)
def test_http_errors_and_malformed_answers_are_one_line(server, mode, error, match):
    llm = load("openai:m", base_url=server, timeout=5, retries=0)
    assert llm.generate(["hi"]) == ["hi"]
    Handler.mode = mode
    with pytest.raises(error, match=match) as info:
        llm.generate(["hello"])
    assert isinstance(info.value, LLMError) and "\n" not in str(info.value) and len(str(info.value)) < 400


def test_nan_embeddings_from_a_server_are_refused(server):
    Handler.mode = "nan_embeddings"
    llm = load("openai:m", base_url=server, timeout=5, retries=0)
    with pytest.raises(LLMOutputError, match="non-finite"):
        llm.embed(["a"])


@pytest.mark.parametrize("mode", ["hang", "trickle"])
def test_a_hung_or_trickling_server_is_reported_within_the_deadline(server, mode):
    llm = load("openai:m", base_url=server, timeout=1.0, deadline=2.5, retries=5, backoff=0.1)
    Handler.mode = mode
    t0 = time.monotonic()
    with pytest.raises(LLMUnavailableError, match="did not answer"):
        llm.generate(["hello"])
    assert time.monotonic() - t0 < 4.0


def test_deadline_settings_are_checked():
    with pytest.raises(ConfigError, match="deadline >= timeout"):
        load("openai:m", base_url="http://127.0.0.1:9/v1", timeout=5, deadline=1, check=False)
