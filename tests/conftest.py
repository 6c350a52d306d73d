"""Shared test setup: offline model hubs, one torch thread (the machine is shared), small helpers."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def tmp_run(tmp_path):
    """A fresh run folder."""
    return tmp_path / "run"
