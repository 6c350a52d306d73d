"""`llmrl eval` of a role run answers from the persistent cache with the LLM server down."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("openai")

from llmrl import cli  # noqa: E402
from llmrl.llm import LLMUnavailableError, load  # noqa: E402


class EmbeddingServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible embeddings endpoint; each answer is a function of the text (and counted)."""

    calls = 0

    def log_message(self, *args):  # quiet
        pass

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # models.list at construction
        self._send({"object": "list", "data": []})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        texts = req["input"] if isinstance(req["input"], list) else [req["input"]]
        type(self).calls += 1
        data = [{"object": "embedding", "index": i,
                 "embedding": [len(t) % 7 + 1.0, t.count("a") + 1.0, t.count(" ") + 0.5, 1.0]}
                for i, t in enumerate(texts)]  # fmt: skip
        self._send({"object": "list", "model": "m", "data": data})


@pytest.fixture
def server(monkeypatch, tmp_path):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), EmbeddingServer)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{srv.server_address[1]}/v1")
    monkeypatch.setenv("LLMRL_CACHE_DIR", str(tmp_path / "cache"))
    yield srv
    srv.shutdown()
    srv.server_close()


def test_eval_of_a_role_run_needs_no_server_when_the_cache_answers(server, tmp_path, capsys):
    run = tmp_path / "run"
    train = ["train", "--env", "llmrl/Grid-v0", "--role", "text-reward", "--llm", "openai:m",
             "--role-args", "goal", "the cat is on the goal", "--steps", "64", "--num-envs", "1",
             "--no-progress", "--out", str(run)]  # fmt: skip
    assert cli.main(train) == 0
    eval_ = ["eval", str(run), "--episodes", "2"]
    assert cli.main(eval_) == 0  # with the server up: what eval asks is now in the cache too
    up = json.loads((run / "eval.json").read_text())
    calls = EmbeddingServer.calls
    server.shutdown()
    server.server_close()
    capsys.readouterr()
    assert cli.main(eval_) == 0, capsys.readouterr().err  # the server is down: every answer is cached
    assert json.loads((run / "eval.json").read_text()) == up
    assert EmbeddingServer.calls == calls

    (tmp_path / "cache" / "llm.sqlite").unlink()  # now a miss needs the server
    assert cli.main(eval_) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is not in the cache" in err and "openai:m could not be reached" in err, err


def test_a_lazy_llm_builds_its_backend_at_the_first_miss_only(server, tmp_path):
    cache = tmp_path / "lazy.sqlite"
    eager = load("openai:m", cache=cache)
    first = eager.embed(["a cat", "a dog"])
    lazy = load("openai:m", cache=cache, lazy=True)
    assert lazy.backend is None
    assert (lazy.embed(["a dog", "a cat"]) == first[::-1]).all() and lazy.backend is None  # hits only
    lazy.embed(["a bird"])  # a miss: the backend is built now
    assert lazy.backend is not None and lazy.stats.misses == 1
    extra = load("openai:m", cache=cache, lazy=True)
    assert extra.base_url.endswith("/v1") and extra.backend is not None  # a backend's own attribute builds it
    server.shutdown()
    server.server_close()
    offline = load("openai:m", cache=cache, lazy=True, retries=0, timeout=1.0)
    assert offline.embed(["a bird"]).shape == (1, 4)
    with pytest.raises(LLMUnavailableError, match="'a fish'.* is not in the cache .*could not be reached"):
        offline.embed(["a fish"])
