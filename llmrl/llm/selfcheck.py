"""A one-time self-check of llama.cpp on this machine, in a subprocess, so a native crash cannot kill a run.

Why: on CPUs with AMX (Sapphire Rapids class) llama.cpp repacks the weights into its AMX buffer type,
and the first AMX matmul can segfault (upstream ggml-org/llama.cpp#20824, Q4_K_M models; machine-
dependent). A segfault in a C library takes the whole Python process down, checkpoints or not. So before
llmrl loads a GGUF in-process with llama.cpp's *extra buffer types* (AMX, and the CPU "repack" layouts
that speed up quantised matmuls elsewhere), a child process runs the backend's three operations with them
on. If the child dies, the model is loaded with the plain CPU buffers instead (always safe; slower where
repacking helps), and a warning says so. The answer is remembered per CPU, llama.cpp build and model file
in `$LLMRL_CACHE_DIR/llamacpp-selfcheck.json` (default `~/.cache/llmrl/`), so the check runs once.

The switch, for users who know better (documented in the README):
    LLMRL_LLAMA_EXTRA_BUFFERS=auto   # default: the self-check decides
    LLMRL_LLAMA_EXTRA_BUFFERS=off    # plain CPU buffers, no check (safe everywhere)
    LLMRL_LLAMA_EXTRA_BUFFERS=on     # extra buffer types, no check (fastest where they work)
or `LlamaCppLLM(path, extra_buffers=True | False)` / `llmrl.llm.load("llamacpp:<path>", extra_buffers=...)`.

`llama_defaults(extra_buffers)` applies the same decision to `llama_cpp.Llama` objects made by other code
(llama.cpp's own server: `python -m llmrl.llm.server`, and the reference model in the tests).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmrl.errors import ConfigError, LLMRLError, optional_import

__all__ = [
    "ENV_VAR",
    "extra_buffers_setting",
    "NativeCrashError",
    "Probe",
    "extra_buffers_for",
    "llama_defaults",
    "probe",
]

ENV_VAR = "LLMRL_LLAMA_EXTRA_BUFFERS"
_LOG = logging.getLogger("llmrl.llama_cpp")
_TIMEOUT_S = 300.0  # a child on a loaded 2-core machine may take a while to load llama.cpp


class NativeCrashError(LLMRLError, RuntimeError):
    """llama.cpp crashed (or hung) in the self-check even with its safe settings."""


@dataclass(frozen=True)
class Probe:
    """What one self-check child did. `returncode` < 0 is the signal that killed it."""

    ok: bool
    returncode: int | None  # None: timed out
    seconds: float
    detail: str  # the last lines of the child's stderr (faulthandler's traceback on a crash)

    @property
    def load_failed(self) -> bool:
        return self.returncode == _LOAD_FAILED


_LOAD_FAILED = 3

# The child: load the model with the given setting and decode with it, one token at a time (generation)
# and many at once (scoring a prompt). It imports llama_cpp only (not llmrl, which would import torch), so a
# check costs about a second; the patch is `llama_defaults` inlined.
_CHILD = """
import sys
import llama_cpp
import llama_cpp.llama_cpp as lowlevel
original = lowlevel.llama_model_default_params
def patched():
    params = original()
    params.use_extra_bufts = sys.argv[2] == "1"
    return params
lowlevel.llama_model_default_params = patched
try:
    llm = llama_cpp.Llama(sys.argv[1], n_ctx=256, n_batch=64, n_threads=1, verbose=False)
except Exception as err:
    print(f"{type(err).__name__}: {err}", file=sys.stderr)
    sys.exit(3)
llm.create_completion("The capital of France is", max_tokens=4, temperature=0.0)
llm.reset()
llm.eval(llm.tokenize(b"The sky is blue, the grass is green and the sun is"))
llm.close()
"""


def probe(path: str | Path, *, extra_buffers: bool, timeout: float = _TIMEOUT_S) -> Probe:
    """Load `path` with this setting in a child process and decode with it (a token at a time and a batch);
    report whether the child survived."""
    start = time.perf_counter()
    env = dict(os.environ, **{ENV_VAR: "on" if extra_buffers else "off"})
    cmd = [sys.executable, "-X", "faulthandler", "-c", _CHILD, str(path), "1" if extra_buffers else "0"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as err:
        out = err.stderr or b""
        text = out.decode("utf-8", "replace") if isinstance(out, bytes) else out
        return Probe(
            False, None, time.perf_counter() - start, f"timed out after {timeout:.0f} s\n{text[-2000:]}"
        )
    tail = "\n".join(done.stderr.strip().splitlines()[-12:])
    return Probe(done.returncode == 0, done.returncode, time.perf_counter() - start, tail)


def _describe(p: Probe) -> str:
    if p.returncode is None:
        return "hung"
    if p.returncode < 0:
        try:
            return f"crashed ({signal.Signals(-p.returncode).name})"
        except ValueError:
            return f"crashed (signal {-p.returncode})"
    return f"failed (exit {p.returncode})"


def extra_buffers_setting() -> bool | None:
    """The $LLMRL_LLAMA_EXTRA_BUFFERS setting: True (on), False (off) or None (auto: the self-check decides)."""
    raw = os.environ.get(ENV_VAR, "auto").strip().lower()
    if raw in ("", "auto"):
        return None
    if raw in ("on", "1", "true", "yes"):
        return True
    if raw in ("off", "0", "false", "no"):
        return False
    raise ConfigError(f"{ENV_VAR}={raw!r} is not a setting; use auto, on or off")


def _cpu_signature() -> str:
    """CPU model and a hash of its feature flags (what decides llama.cpp's kernels)."""
    model, flags = "unknown", ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = " ".join(sorted(value.split()))
    return f"{model} [{hashlib.sha1(flags.encode()).hexdigest()[:12]}]"


def _key(path: Path) -> str:
    llama_cpp = optional_import("llama_cpp", "llm", package="llama-cpp-python")
    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")  # compiled CPU features
    build = hashlib.sha1(info.encode()).hexdigest()[:12]
    stat = path.stat()
    return f"{_cpu_signature()} | llama-cpp-python {llama_cpp.__version__} [{build}] | {path.name}:{stat.st_size}"


def _store_path() -> Path:
    root = os.environ.get("LLMRL_CACHE_DIR") or Path.home() / ".cache" / "llmrl"
    return Path(root) / "llamacpp-selfcheck.json"


def _read_store(store: Path) -> dict[str, Any]:
    try:
        data = json.loads(store.read_text())
    except (OSError, ValueError):
        return {}  # missing or damaged: the check simply runs again
    return data if isinstance(data, dict) else {}


def _remember(store: Path, key: str, value: dict[str, Any]) -> None:
    """Add one answer to the store atomically (a torn write would only cost a re-check)."""
    with contextlib.suppress(OSError):
        store.parent.mkdir(parents=True, exist_ok=True)
        data = _read_store(store)
        data[key] = value
        fd, tmp = tempfile.mkstemp(dir=store.parent, prefix=".selfcheck-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, store)


def extra_buffers_for(path: str | Path) -> bool:
    """Whether llama.cpp may use its extra buffer types for this model on this machine.

    `$LLMRL_LLAMA_EXTRA_BUFFERS` on/off decides outright; otherwise the remembered self-check answer,
    or a new self-check (a few seconds, once). Raises ConfigError if llama.cpp cannot load the file and
    NativeCrashError if it crashes even with plain buffers.
    """
    forced = extra_buffers_setting()
    if forced is not None:
        return forced
    path = Path(path).expanduser()
    store, key = _store_path(), _key(path)
    known = _read_store(store).get(key)
    if isinstance(known, dict) and isinstance(known.get("extra_buffers"), bool):
        return bool(known["extra_buffers"])

    fast = probe(path, extra_buffers=True)
    if fast.load_failed:
        raise ConfigError(
            f"llama.cpp cannot load {str(path)!r}: {fast.detail.splitlines()[-1] if fast.detail else ''}; "
            "give the path of a valid GGUF model file (llama.cpp's format, e.g. from convert_hf_to_gguf.py)"
        )
    if fast.ok:
        _remember(store, key, {"extra_buffers": True, "seconds": round(fast.seconds, 2)})
        return True
    safe = probe(path, extra_buffers=False)
    if not safe.ok:
        raise NativeCrashError(
            f"llama.cpp {_describe(safe)} running {str(path)!r} on this CPU, with and without its extra "
            f"buffer types (last output: {safe.detail[-500:]!r}). Check that the file is a valid GGUF, "
            "reinstall llama-cpp-python built on this machine (pip install --force-reinstall --no-cache-dir "
            "llama-cpp-python), or use another backend (hf:<path>, openai:<model>)"
        )
    message = (
        f"llama.cpp {_describe(fast)} with its extra buffer types (AMX / repacked weights) on this CPU "
        f"(a known upstream bug, ggml-org/llama.cpp#20824); using plain CPU buffers for {path.name}, "
        f"which work. Remembered in {store}; set {ENV_VAR}=on|off to decide yourself."
    )
    _LOG.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    _remember(store, key, {"extra_buffers": False, "seconds": round(fast.seconds + safe.seconds, 2)})
    return False


@contextlib.contextmanager
def llama_defaults(extra_buffers: bool) -> Iterator[None]:
    """Within the block, `llama_cpp.Llama` (which has no such argument) builds models with this setting.

    llama-cpp-python's `Llama` starts from `llama_model_default_params()`; this swaps that function for
    one that sets `use_extra_bufts`, and restores it on exit.
    """
    lowlevel: Any = optional_import("llama_cpp.llama_cpp", "llm", package="llama-cpp-python")
    original = lowlevel.llama_model_default_params

    def patched() -> Any:
        params = original()
        params.use_extra_bufts = extra_buffers
        return params

    lowlevel.llama_model_default_params = patched
    try:
        yield
    finally:
        lowlevel.llama_model_default_params = original
