"""Training I/O shared by every agent: run-folder logging, progress bar, learning curves,
checkpoints (safetensors + JSON, atomic, no pickle), RNG state, and env state for exact resume.

Run folder layout (`run_dir`):
    metrics.csv      one row per log call (agent update): step, time, steps/s, losses, role metrics …
    episodes.csv     one row per finished episode: step, return, length
    tb/              TensorBoard events, when tensorboard is installed
    checkpoint/      the latest checkpoint, if the agent was asked to write one
    learning_curve.png   from `plot_learning_curve(run_dir)`

Checkpoint folder layout: `tensors.safetensors` (every tensor and numpy array) and `state.json`
(everything else, with references to the tensors), written to a temporary sibling folder and renamed
into place, so a crash never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmrl.errors import CheckpointError

__all__ = [
    "RunLogger",
    "plot_learning_curve",
    "save_checkpoint",
    "load_checkpoint",
    "recover_checkpoint",
    "to_serializable",
    "from_serializable",
    "get_rng_state",
    "set_rng_state",
    "env_chain",
    "get_env_state",
    "set_env_state",
    "collect_env_metrics",
]

CHECKPOINT_VERSION = 1

# -- logging ---------------------------------------------------------------------------------------


class RunLogger:
    """Metrics to CSV (when `run_dir` is set), TensorBoard (when also installed), and a tqdm bar.

    `episode(step, ret, length)` records a finished episode; `log(step, metrics)` records one row of
    scalars and flushes the episode rows. The bar shows steps/s and the mean return of the last 20
    episodes. In an existing `run_dir` the rows up to `start_step` are kept and later ones dropped.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike | None,
        *,
        total_timesteps: int,
        start_step: int = 0,
        progress_bar: bool = True,
        tensorboard: bool = True,
    ):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.recent_returns: deque[float] = deque(maxlen=20)
        self._rows: list[dict[str, Any]] = []
        self._fields: list[str] = []
        self._tb = None
        self._t0, self._step0 = time.perf_counter(), start_step
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # The logs describe this agent's history: rows up to `start_step` (a resumed checkpoint's
            # step) are kept, later ones (written after that checkpoint, before a kill) are dropped, so
            # a resume neither loses nor duplicates a row.
            self._fields, self._rows = _read_rows(self.run_dir / "metrics.csv", start_step)
            if self._rows:
                _write_csv(self.run_dir / "metrics.csv", self._fields, self._rows)
            else:
                (self.run_dir / "metrics.csv").unlink(missing_ok=True)
            _, episodes = _read_rows(self.run_dir / "episodes.csv", start_step)
            _write_csv(self.run_dir / "episodes.csv", ["step", "return", "length"], episodes)
            self._episodes_file = open(self.run_dir / "episodes.csv", "a", newline="")  # noqa: SIM115
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(str(self.run_dir / "tb"))
                except ImportError:  # tensorboard not installed: CSV only
                    self._tb = None
        self._bar = None
        if progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_timesteps, initial=start_step, unit="step", dynamic_ncols=True)

    @property
    def steps_per_second(self) -> float:
        return self._sps

    _sps = 0.0

    def episode(self, step: int, ret: float, length: int) -> None:
        self.recent_returns.append(float(ret))
        if self.run_dir is not None:
            self._episodes_file.write(f"{step},{ret:.6g},{length}\n")
        if self._tb is not None:
            self._tb.add_scalar("episode/return", ret, step)
            self._tb.add_scalar("episode/length", length, step)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        elapsed = time.perf_counter() - self._t0
        self._sps = (step - self._step0) / max(elapsed, 1e-9)
        row = {"step": step, "time": round(elapsed, 4), "steps_per_s": round(self._sps, 2)}
        if self.recent_returns:
            row["return_mean20"] = float(np.mean(self.recent_returns))
        row.update({k: float(v) for k, v in metrics.items()})
        if self._bar is not None:
            self._bar.n = step
            post = {"sps": f"{self._sps:.0f}"}
            if self.recent_returns:
                post["return"] = f"{row['return_mean20']:.1f}"
            self._bar.set_postfix(post, refresh=False)
            self._bar.refresh()
        if self.run_dir is None:
            return
        self._rows.append(row)
        new = [k for k in row if k not in self._fields]
        path = self.run_dir / "metrics.csv"
        if new or not path.exists():  # a new column: rewrite the whole file with the wider header
            self._fields += new
            _write_csv(path, self._fields, self._rows)
        else:
            with open(path, "a", newline="") as f:
                csv.DictWriter(f, self._fields).writerow(row)
        self.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def flush(self) -> None:
        """Push the episode rows to the OS (once per log call: a kill -9 then loses no finished row)."""
        if self.run_dir is not None:
            self._episodes_file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self.run_dir is not None:
            self._episodes_file.close()
        if self._tb is not None:
            self._tb.close()


def _read_rows(path: Path, max_step: int) -> tuple[list[str], list[dict[str, Any]]]:
    """(header, rows with step <= max_step) of a CSV log; rows torn by a kill (unparsable) are dropped."""
    if max_step <= 0 or not path.exists():
        return [], []
    with open(path, newline="", errors="replace") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = []
        for row in reader:
            try:
                step = float(row.get("step") or "nan")
            except ValueError:
                continue
            if None in row or any(v is None for v in row.values()) or not step <= max_step:
                continue  # a torn last line, or written after the checkpoint
            rows.append(dict(row))  # the text as written: kept rows stay byte-identical
    return fields, rows


def _write_csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    """Rewrite a CSV atomically (temporary file + rename): a kill mid-write keeps the old file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def plot_learning_curve(run_dir: str | os.PathLike, *, window: int = 20, title: str | None = None) -> Path:
    """Episode return against env steps (raw and a `window`-episode moving mean) -> run_dir/learning_curve.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    path = run_dir / "episodes.csv"
    if not path.exists():
        raise CheckpointError(
            f"{path} does not exist; train with learn(..., run_dir={str(run_dir)!r}) first."
        )
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    fig, ax = plt.subplots(figsize=(7, 4))
    if rows:
        steps = np.array([float(r["step"]) for r in rows])
        rets = np.array([float(r["return"]) for r in rows])
        ax.plot(steps, rets, alpha=0.3, lw=0.8, label="episode return")
        if len(rets) >= window:
            mean = np.convolve(rets, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1 :], mean, lw=2, label=f"mean of {window}")
    ax.set_xlabel("env steps")
    ax.set_ylabel("return")
    ax.set_title(title or run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    out = run_dir / "learning_curve.png"
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# -- checkpoints -------------------------------------------------------------------------------------
# Nested python state (dicts, lists, tuples, scalars, tensors, arrays) is split into a JSON skeleton and
# a flat dict of tensors. Markers keep the types JSON lacks: {"__tensor__": name}, {"__ndarray__": name},
# {"__tuple__": [...]}, {"__items__": [[key, value], ...]} for dicts with non-string keys.


def to_serializable(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """`obj` as JSON-able data; tensors and arrays moved into `tensors` under fresh names."""
    if isinstance(obj, torch.Tensor):
        name = f"{prefix}{len(tensors)}"
        tensors[name] = obj.detach().cpu().clone().contiguous()
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise CheckpointError(
                "object arrays cannot be checkpointed without pickle; convert them to numbers."
            )
        name = f"{prefix}{len(tensors)}"
        tensors[name] = torch.from_numpy(np.array(obj, copy=True, order="C"))
        return {"__ndarray__": name, "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: to_serializable(v, tensors, prefix) for k, v in obj.items()}
        return {"__items__": [[to_serializable(k, tensors, prefix), to_serializable(v, tensors, prefix)]
                              for k, v in obj.items()]}  # fmt: skip
    if isinstance(obj, tuple):
        return {"__tuple__": [to_serializable(v, tensors, prefix) for v in obj]}
    if isinstance(obj, list):
        return [to_serializable(v, tensors, prefix) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(
        f"cannot checkpoint a value of type {type(obj).__name__} ({obj!r:.80}) without pickle."
    )


def from_serializable(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `to_serializable`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy().astype(obj["dtype"], copy=False)
        if "__tuple__" in obj:
            return tuple(from_serializable(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {
                _hashable(from_serializable(k, tensors)): from_serializable(v, tensors)
                for k, v in obj["__items__"]
            }
        return {k: from_serializable(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_serializable(v, tensors) for v in obj]
    return obj


def _hashable(x: Any) -> Any:
    return tuple(x) if isinstance(x, list) else x


def save_checkpoint(directory: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write `state` (nested dicts of tensors, arrays, scalars) to `directory` atomically.

    The tensors file's SHA-256 goes into state.json (checked by `load_checkpoint`). The new folder is
    written as a temporary sibling and renamed into place; a kill between the two renames (old away,
    new in) leaves both complete, and `recover_checkpoint` (run here and by `load_checkpoint`) puts
    the newer one back. Temporary folders of killed saves are removed here.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover_checkpoint(directory)  # before cleaning: a killed save's folder may be the only complete one
    for stale in _siblings(directory):
        shutil.rmtree(stale, ignore_errors=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton: dict[str, Any] = {"version": CHECKPOINT_VERSION, "state": to_serializable(state, tensors)}
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        save_file(tensors, str(tmp / "tensors.safetensors"))
        skeleton["tensors_sha256"] = _sha256(tmp / "tensors.safetensors")
        skeleton["state_sha256"] = _state_sha256(skeleton["state"])
        with open(tmp / "state.json", "w") as f:
            json.dump(skeleton, f)
            f.flush()
            os.fsync(f.fileno())
        old = None
        if directory.exists():  # rename the old one away first: rename onto a non-empty dir fails
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}-{time.monotonic_ns()}")
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _state_sha256(state: Any) -> str:
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode("utf-8")).hexdigest()


def _siblings(directory: Path) -> list[Path]:
    """Folders left by saves of `directory` that were killed: `.<name>.tmp-*` and `.<name>.old-*`."""
    return sorted(
        p
        for pattern in (f".{directory.name}.tmp-*", f".{directory.name}.old-*")
        for p in directory.parent.glob(pattern)
        if p.is_dir()
    )


def _verify(directory: Path) -> dict[str, Any]:
    """The parsed state.json of a complete checkpoint whose tensors match their checksum, else CheckpointError."""
    fix = "re-save it, or resume from an earlier copy"
    missing = [n for n in ("tensors.safetensors", "state.json") if not (directory / n).is_file()]
    if missing:
        raise CheckpointError(
            f"{directory} is not a complete llmrl checkpoint (missing {', '.join(missing)}); "
            "pass the folder given to agent.save(...)."
        )
    try:
        with open(directory / "state.json", "rb") as f:
            skeleton = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"{directory / 'state.json'} is damaged ({type(err).__name__}: {err}); {fix}."
        ) from err
    if not isinstance(skeleton, dict) or "state" not in skeleton:
        raise CheckpointError(f"{directory / 'state.json'} is not an llmrl checkpoint's state; {fix}.")
    if skeleton.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{directory} has checkpoint version {skeleton.get('version')}, this llmrl reads {CHECKPOINT_VERSION}."
        )
    if skeleton.get("state_sha256", _state_sha256(skeleton["state"])) != _state_sha256(skeleton["state"]):
        raise CheckpointError(
            f"{directory / 'state.json'} does not match its checksum (edited or damaged after saving); {fix}."
        )
    expected = skeleton.get("tensors_sha256")
    if expected is not None and _sha256(directory / "tensors.safetensors") != expected:
        raise CheckpointError(
            f"{directory / 'tensors.safetensors'} does not match the checksum in state.json (the file was "
            f"changed or damaged after saving); {fix}."
        )
    return skeleton


def recover_checkpoint(directory: str | os.PathLike) -> bool:
    """Put back a checkpoint whose save was killed between its two renames; True if one was put back.

    Only when `directory` itself is missing: the newest complete, verified `.<name>.tmp-*` or
    `.<name>.old-*` sibling is renamed to `directory`.
    """
    directory = Path(directory)
    if directory.exists():
        return False
    candidates = []
    for folder in _siblings(directory):
        try:
            _verify(folder)
        except CheckpointError:
            continue
        candidates.append((os.stat(folder / "state.json").st_mtime_ns, str(folder), folder))
    if not candidates:
        return False
    os.replace(max(candidates)[2], directory)
    return True


def load_checkpoint(directory: str | os.PathLike) -> dict[str, Any]:
    """Read a folder written by `save_checkpoint`; CheckpointError (one line: the file and the fix) if it
    is missing, incomplete, damaged or does not match its checksum."""
    from safetensors.torch import load_file

    directory = Path(directory)
    recover_checkpoint(directory)
    skeleton = _verify(directory)
    try:
        tensors = load_file(str(directory / "tensors.safetensors"))
        return from_serializable(skeleton["state"], tensors)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types; any is a damaged file
        raise CheckpointError(
            f"{directory / 'tensors.safetensors'} cannot be read ({type(err).__name__}: {err}); "
            "re-save it, or resume from an earlier copy."
        ) from err


# -- RNG state ----------------------------------------------------------------------------------------


def get_rng_state() -> dict[str, Any]:
    """Global RNG states of python, numpy (legacy global) and torch (CPU)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


# -- env state ----------------------------------------------------------------------------------------
# Exact resume needs the env where it was. We snapshot, for every object in the env chain (wrappers,
# the vector env, its sub-envs), the plain attributes: numbers, strings, numpy arrays, deques and
# tuples/lists of those, and numpy Generators (as bit-generator state). That covers classic control
# (CartPole, Acrobot, MountainCar, Pendulum, their native vector versions), gymnasium's common wrappers
# (TimeLimit, RecordEpisodeStatistics, ...) and simple pure-python envs (llmrl's Grid, MiniGrid's grid
# is NOT covered: it is an object graph). Limits: state held in C (ALE emulator, Box2D, MuJoCo), in
# other objects, or in subprocesses (AsyncVectorEnv) is not captured; resuming those continues from a
# fresh reset instead (`set_env_state` returns False). Flat dicts of scalars (a role's counters) are
# plain too. An object with other state (a role's fitted model, a describer's previous snapshot)
# defines `llmrl_state() -> dict` (anything `to_serializable` takes) and `llmrl_set_state(dict)`.

_SKIP = {"spec", "metadata", "render_mode", "_saved_kwargs", "_cached_spec", "_metadata"}


def env_chain(env: Any) -> Iterator[Any]:
    """Every object in the chain of an env or vector env: wrappers outermost first, then sub-envs."""
    seen: set[int] = set()
    stack = [env]
    while stack:
        obj = stack.pop(0)
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        inner = obj.__dict__.get("env") if hasattr(obj, "__dict__") else None
        if inner is not None:
            stack.append(inner)
        subs = obj.__dict__.get("envs") if hasattr(obj, "__dict__") else None
        if isinstance(subs, (list, tuple)):
            stack.extend(subs)


def collect_env_metrics(env: Any) -> dict[str, float]:
    """Merge `llmrl_metrics()` of every wrapper in the chain that has it (outermost wins on a clash)."""
    out: dict[str, float] = {}
    for obj in env_chain(env):
        fn = getattr(type(obj), "llmrl_metrics", None)
        if fn is not None:
            for k, v in fn(obj).items():
                out.setdefault(k, float(v))
    return out


def _plain(value: Any) -> Any:
    """A snapshot of `value` if it is plain data, else a sentinel."""
    if value is None or isinstance(value, (bool, int, float, str, np.generic)):
        return value
    if isinstance(value, dict):  # e.g. a role's counters; only flat str -> scalar dicts
        flat = all(
            isinstance(k, str)
            and not k.startswith("__")
            and (v is None or isinstance(v, (bool, int, float, str)))
            for k, v in value.items()
        )
        return dict(value) if flat else _NOT_PLAIN
    if isinstance(value, np.ndarray):
        # numbers only: text arrays (e.g. the last state texts of WithText) are recomputed on the next step
        return value.copy() if value.dtype.kind in "biufc" else _NOT_PLAIN
    if isinstance(value, np.random.Generator):
        return {"__generator__": value.bit_generator.state}
    if isinstance(value, deque):
        items = [_plain(v) for v in value]
        return (
            _NOT_PLAIN
            if any(v is _NOT_PLAIN for v in items)
            else {"__deque__": items, "maxlen": value.maxlen}
        )
    if isinstance(value, (tuple, list)):
        items = [_plain(v) for v in value]
        if any(v is _NOT_PLAIN for v in items):
            return _NOT_PLAIN
        return tuple(items) if isinstance(value, tuple) else items
    return _NOT_PLAIN


_NOT_PLAIN = object()


def get_env_state(env: Any) -> list[dict[str, Any]]:
    """Plain attributes of every object in the env chain (see the comment above for what is covered)."""
    out = []
    for obj in env_chain(env):
        attrs = {}
        for key, value in getattr(obj, "__dict__", {}).items():
            if key in _SKIP:
                continue
            snap = _plain(value)
            if snap is not _NOT_PLAIN:
                attrs[key] = snap
        entry = {"type": f"{type(obj).__module__}.{type(obj).__qualname__}", "attrs": attrs}
        hook = getattr(type(obj), "llmrl_state", None)
        if (
            hook is not None
        ):  # state that is not a plain attribute (a role's fitted model, a describer's memory)
            entry["state"] = hook(obj)
        out.append(entry)
    return out


def set_env_state(env: Any, state: Iterable[dict[str, Any]]) -> bool:
    """Restore `get_env_state` output into an env of the same structure; False (nothing changed) if the
    chain differs (other wrappers or env types)."""
    state = list(state)
    chain = list(env_chain(env))
    types = [f"{type(o).__module__}.{type(o).__qualname__}" for o in chain]
    if types != [s["type"] for s in state]:
        return False
    for obj, snap in zip(chain, state):
        for key, value in snap["attrs"].items():
            current = obj.__dict__.get(key)
            if isinstance(value, dict) and "__generator__" in value:
                if isinstance(current, np.random.Generator):
                    current.bit_generator.state = value["__generator__"]
                else:
                    gen = np.random.Generator(getattr(np.random, value["__generator__"]["bit_generator"])())
                    gen.bit_generator.state = value["__generator__"]
                    obj.__dict__[key] = gen
            elif isinstance(value, dict) and "__deque__" in value:
                obj.__dict__[key] = deque(value["__deque__"], maxlen=value["maxlen"])
            elif isinstance(value, np.ndarray):
                obj.__dict__[key] = value.copy()
            else:
                obj.__dict__[key] = value
        if "state" in snap:
            obj.llmrl_set_state(snap["state"])
    return True
