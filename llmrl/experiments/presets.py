"""Presets: the one place an experiment is defined. Each `llmrl/presets/<name>.yaml` holds a
`TrainConfig`'s fields (plus a one-line `description`); the CLI, the comparison harness, the seed
scenarios and the demo all start from one.

    load_preset("doorkey-ellm")     # {'env': 'MiniGrid-DoorKey-6x6-v0', 'algo': 'ppo', ...}
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from llmrl.errors import ConfigError

__all__ = ["PRESET_DIR", "list_presets", "load_preset"]

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description."""
    out = {}
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        out[path.stem] = str(data.get("description", ""))
    return out


def load_preset(name: str) -> dict[str, Any]:
    """The preset's settings (a TrainConfig's fields), without its description."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        names = list(list_presets())
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}.{hint} Known presets: {', '.join(names)}")
    data = yaml.safe_load(path.read_text()) or {}
    data.pop("description", None)
    return data
