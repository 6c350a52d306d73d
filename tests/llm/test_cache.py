"""Cost controls: persistent cache, batching of misses, replay-only, budgets, several processes."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import numpy as np
import pytest
from fakes import EchoLLM

from llmrl.errors import ConfigError
from llmrl.llm import (
    Budget,
    BudgetExceededError,
    CachedLLM,
    CacheMissError,
    LLMCache,
    UnsupportedOperationError,
    load,
)


def test_hits_and_misses_batched(echo, tmp_path):
    llm = load(echo, cache=tmp_path / "c.sqlite")
    assert llm.generate(["abc", "de"], max_tokens=5) == ["cba", "ed"]
    # "abc" is a hit, "xy" twice is one miss: only the misses reach the model, in one batch.
    assert llm.generate(["abc", "xy", "xy"], max_tokens=5) == ["cba", "yx", "yx"]
    assert echo.batches == [2, 1]
    s = llm.stats
    assert (s.calls, s.hits, s.misses) == (5, 2, 3)  # the repeated "xy" counts as a hit
    assert s.tokens == 5 + 2 and s.seconds > 0
    # parameters are part of the key
    assert llm.generate(["abc"], max_tokens=1) == ["c"]
    assert llm.stats.misses == 4
    assert llm.stats.as_dict()["llm/hits"] == 2.0


def test_every_operation_round_trips(echo, tmp_path):
    llm = load(echo, cache=tmp_path / "c.sqlite")
    img = np.zeros((4, 4, 3), np.uint8)
    img2 = img.copy()
    img2[0, 0, 0] = 7
    for _ in range(2):
        np.testing.assert_array_equal(llm.score("p", ["a", "bb"]), [-2.0, -3.0])
        np.testing.assert_array_equal(llm.embed(["aa", "b"]), [[2, 2, 1], [1, 0, 1]])
        np.testing.assert_array_equal(llm.features(["xyz"]), [[3, 0.5]])
        assert llm.generate(["q", "q"], images=[img, img2]) == ["q|0", "q|7"]  # image bytes in the key
    assert llm.stats.hits == llm.stats.misses == 2 + 2 + 1 + 2
    assert echo.stats.calls == 7


def test_persists_across_restarts_and_replays_without_model(tmp_path):
    path = tmp_path / "c.sqlite"
    first = load(EchoLLM(), cache=path)
    first.generate(["hello"])
    first.close()
    # a new process/run: answers come from disk, the model is never asked
    model = EchoLLM()
    again = load(model, cache=path, replay=True)
    assert again.generate(["hello"]) == ["olleh"]
    assert model.stats.calls == 0
    with pytest.raises(CacheMissError, match="replay-only.*'other'"):
        again.generate(["other"])
    # no model object at all: a replay-only load by spec does not load the model
    replayed = CachedLLM(None, cache=path, replay=True, name="echo:v1", capabilities=EchoLLM.capabilities)
    assert replayed.generate(["hello"]) == ["olleh"]


def test_replay_by_spec_never_loads(tmp_path):
    llm = load("embedded", cache=tmp_path / "empty.sqlite", replay=True, require=("score",))
    assert llm.backend is None
    with pytest.raises(CacheMissError):
        llm.score("a", ["b"])
    with pytest.raises(ConfigError, match="cache"):
        load("embedded", replay=True)


def test_budget_error_and_fallback(echo):
    llm = load(echo, budget=Budget(calls=2))
    llm.generate(["a", "b"])
    assert llm.generate(["a"]) == ["a"]  # hits are free
    with pytest.raises(BudgetExceededError, match="calls: 2 used"):
        llm.generate(["c"])
    backup = EchoLLM()
    llm = load(EchoLLM(), budget=Budget(calls=1), fallback=backup)
    llm.generate(["a"])
    assert llm.generate(["bc"]) == ["cb"]
    assert llm.stats.fallbacks == 1 and backup.stats.calls == 1
    assert llm.generate(["bc"]) == ["cb"] and backup.stats.calls == 2  # fallback answers are not cached
    with pytest.raises(ConfigError):
        Budget(tokens=-1)


def test_require_and_specs(echo):
    with pytest.raises(ConfigError, match="valid forms"):
        load("gpt4")
    with pytest.raises(UnsupportedOperationError, match="embedded"):
        load("minilm", require=("generate",))
    e = EchoLLM()
    e.capabilities = frozenset({"embed"})
    with pytest.raises(UnsupportedOperationError, match="cannot do 'score'"):
        load(e, require=("score",))


def _writer(path: str, worker: int, n: int) -> None:
    llm = CachedLLM(EchoLLM(), cache=path)
    for i in range(n):
        llm.generate([f"w{worker}-{i}", "shared"])


def test_two_processes_write_at_once(tmp_path):
    path = str(tmp_path / "c.sqlite")
    LLMCache(path)  # create the file first
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 60)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(LLMCache(path)) == 2 * 60 + 1
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    replay = CachedLLM(None, cache=path, replay=True, name="echo:v1", capabilities=EchoLLM.capabilities)
    assert replay.generate(["w1-59", "w0-0"]) == ["95-1w", "0-0w"]
