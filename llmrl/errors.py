"""Named errors under one root, and the lazy import of optional dependencies.

Every error says what is wrong and how to fix it. Nothing here imports torch or an LLM library.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = [
    "LLMRLError",
    "ConfigError",
    "DependencyNotInstalled",
    "UnknownEnvError",
    "CheckpointError",
    "NonFiniteError",
    "optional_import",
]


class LLMRLError(Exception):
    """Root of every error llmrl raises on purpose."""


class ConfigError(LLMRLError):
    """A configuration value is invalid; the message names the field, the value and the fix.

    Deliberately not a ValueError: the CLI parser would swallow it into a help box; catch LLMRLError.
    """


class DependencyNotInstalled(LLMRLError, ImportError):
    """An optional dependency is missing; the message gives the pip command that installs it."""


class UnknownEnvError(LLMRLError):
    """An environment id is not registered; the message suggests close ids."""


class CheckpointError(LLMRLError, OSError):
    """A checkpoint folder is missing, incomplete or was written by an incompatible version."""


class NonFiniteError(LLMRLError):
    """A NaN or inf reached training (a reward, an observation, a loss or the weights); the run stops.

    The message names the first bad value and where it came from; the last checkpoint written before
    it is kept as it was.
    """


def optional_import(module: str, extra: str, *, package: str | None = None) -> ModuleType:
    """Import `module` or raise DependencyNotInstalled naming the llmrl extra that provides it.

    >>> optional_import("json", "dev").__name__
    'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise DependencyNotInstalled(
            f"{package or module.split('.')[0]} is not installed; it is needed here. "
            f"Install it with: pip install 'llmrl[{extra}]'"
        ) from err
