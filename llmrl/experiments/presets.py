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

__all__ = ["PRESET_DIR", "list_presets", "load_preset", "load_yaml"]

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description."""
    out = {}
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        try:  # one broken preset must not hide the others
            out[path.stem] = str(load_yaml(path, "preset").get("description", ""))
        except ConfigError as err:
            out[path.stem] = f"(broken: {err})"
    return out


def load_yaml(path: Path, what: str) -> dict[str, Any]:
    """A YAML mapping from `path` ({} when empty), or ConfigError naming the file, the problem and the fix."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as err:
        problem = " ".join(str(err).split())[:200]
        raise ConfigError(
            f"{what} {path} cannot be read ({type(err).__name__}: {problem}); fix or restore it"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{what} {path} must be a YAML mapping of settings, not a {type(data).__name__}; fix or restore it"
        )
    return data


def load_preset(name: str) -> dict[str, Any]:
    """The preset's settings (a TrainConfig's fields), without its description."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        names = list(list_presets())
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}.{hint} Known presets: {', '.join(names)}")
    data = load_yaml(path, "preset")
    data.pop("description", None)
    return data
