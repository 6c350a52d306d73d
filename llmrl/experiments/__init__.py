"""Experiments: the layer above roles and agents that turns a preset into runs.

    from llmrl.experiments import load_preset, train, train_config
    run_dir = train(train_config(load_preset("doorkey-ellm")))       # = llmrl train --preset doorkey-ellm

- `presets`: the YAML presets, the only place an experiment is defined.
- `run`: one run from one config (train, evaluate, GIF); `llmrl train | eval | gif`.
- `compare`: baseline vs method over seeds (table, curves); benchmarks/planner.py.
- `scenarios`: the seed's three scenarios (their presets, then the GIF).
- `demo`: `llmrl demo`, with its own config.

The CLI (`llmrl.cli`) is a parser over this package; nothing below it imports it.
"""

from __future__ import annotations

from llmrl.experiments.presets import PRESET_DIR, list_presets, load_preset
from llmrl.experiments.run import (
    EvalConfig,
    GifConfig,
    TrainConfig,
    TrainResult,
    build_env,
    evaluate_run,
    gif,
    saved_config,
    train,
    train_config,
    train_run,
)

__all__ = [
    "PRESET_DIR",
    "list_presets",
    "load_preset",
    "TrainConfig",
    "EvalConfig",
    "GifConfig",
    "TrainResult",
    "train_config",
    "saved_config",
    "build_env",
    "train",
    "train_run",
    "evaluate_run",
    "gif",
]
