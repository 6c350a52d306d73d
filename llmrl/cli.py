"""`llmrl train | eval | gif | bench | demo | presets` — the command line, a thin parser over
`llmrl.experiments`.

Every command's options come from one typed dataclass (the same configs the Python API uses:
`--ppo.learning-rate` is `PPOConfig.learning_rate`), parsed by tyro. A named preset (YAML, see
`llmrl presets`) fills the defaults, and the command line overrides them:

    llmrl train --preset grid-features --steps 20000
    llmrl eval runs/grid-features --episodes 100
    llmrl gif runs/grid-features --out cat.gif

Bad input prints one line naming the problem and exits with status 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tyro
import yaml

from llmrl.errors import ConfigError, LLMRLError
from llmrl.experiments.demo import DemoConfig, run_demo
from llmrl.experiments.presets import list_presets, load_preset
from llmrl.experiments.run import (
    EvalConfig,
    GifConfig,
    TrainConfig,
    evaluate_run,
    gif,
    train,
    train_config,
)

__all__ = ["main", "run", "BenchConfig"]


@dataclass
class BenchConfig:
    """Run a benchmark script from benchmarks/ (in a source checkout) and print its table."""

    name: tyro.conf.Positional[
        Literal["rl_core", "llm_ops", "envs_text", "llm_features", "rewards", "planner", "distributed"]
    ] = "llm_ops"
    """Which benchmark."""
    quick: bool = True
    """A short run (--quick); turn off for the full measurement recorded in RESULTS.md."""


# -- commands (train, eval, gif and demo live in llmrl.experiments) ---------------------------------


def bench(cfg: BenchConfig) -> int:
    """Run benchmarks/<name>.py from the source checkout."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / f"{cfg.name}.py"
    if not script.is_file():
        raise ConfigError(f"{script} not found: benchmarks run from a source checkout of llmrl (git clone)")
    args = [sys.executable, str(script)] + (["--quick"] if cfg.quick else [])
    code = subprocess.call(args, cwd=script.parent.parent)
    if code != 0:
        raise LLMRLError(f"benchmark {cfg.name} failed (exit status {code}); its output is above")
    return code


def presets(args: Sequence[str] = ()) -> None:
    """List the presets (`llmrl train --preset NAME` uses one)."""
    for name, description in list_presets().items():
        print(f"{name:24s} {description}")


COMMANDS: dict[str, tuple[type | None, Callable[..., Any]]] = {
    "train": (TrainConfig, train),
    "eval": (EvalConfig, evaluate_run),
    "gif": (GifConfig, gif),
    "bench": (BenchConfig, bench),
    "demo": (DemoConfig, run_demo),
    "presets": (None, presets),
}


def _usage() -> str:
    lines = ["usage: llmrl COMMAND [--help] [options]", "", "commands:"]
    for name, (config, _fn) in COMMANDS.items():
        doc = (config or presets).__doc__ or ""
        lines.append(f"  {name:9s} {doc.strip().splitlines()[0]}")
    lines += ["", "Every command takes --help. `llmrl train --preset NAME` starts from a preset."]
    return "\n".join(lines)


def _pop_preset(args: list[str]) -> tuple[str | None, list[str]]:
    for i, a in enumerate(args):
        if a == "--preset":
            if i + 1 >= len(args):
                raise ConfigError("--preset needs a name; `llmrl presets` lists them")
            return args[i + 1], args[:i] + args[i + 2 :]
        if a.startswith("--preset="):
            return a.split("=", 1)[1], args[:i] + args[i + 1 :]
    return None, args


def run(argv: Sequence[str] | None = None) -> Any:
    """Parse `argv` and run the command; raises LLMRLError on bad input (main() turns it into one line)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return None
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown command {name!r}.{hint} Commands: {', '.join(COMMANDS)}")
    config_cls, fn = COMMANDS[name]
    if config_cls is None:
        return fn(rest)
    default = None
    if config_cls is TrainConfig:
        preset, rest = _pop_preset(rest)
        if preset is not None:
            default = train_config(load_preset(preset))
    cfg = _parse(config_cls, rest, default, name, fn.__doc__)
    return fn(cfg)


def _parse(config_cls: type, args: list[str], default: Any, name: str, description: str | None) -> Any:
    """tyro's parse, with its boxed error message turned into one line (ConfigError)."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.cli(
                config_cls, args=args, default=default, prog=f"llmrl {name}", description=description
            )
    except SystemExit as exit_:
        if not exit_.code:
            raise
        message = _box_text(captured.getvalue())
        raise ConfigError(f"{message} (see `llmrl {name} --help`)") from None


def _box_text(text: str) -> str:
    """The body of tyro's error box, up to its first separator, as one line (the box is drawn with
    Unicode lines on a terminal and with ASCII dashes when stderr is not one)."""
    body: list[str] = []
    for line in [x for x in text.splitlines() if x.strip()][1:]:  # the first line is the box's title
        inner = line.strip().strip("│|").strip()
        if not inner or inner.startswith("╰"):
            continue
        if set(inner) <= set("─-"):  # a separator: the message is above it
            if body:
                break
            continue
        body.append(inner)
    return " ".join(" ".join(body).split()) or text.strip()


def gym_error() -> type[Exception]:
    """Gymnasium's root error (bad env ids and arguments)."""
    import gymnasium

    return gymnasium.error.Error


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(argv)
    except LLMRLError as err:
        print(f"llmrl: error: {err}", file=sys.stderr)
        return 2
    except (OSError, MemoryError, yaml.YAMLError, gym_error()) as err:
        # bad input met outside llmrl's own checks (a path that is not a folder, a YAML value, an env
        # id Gymnasium refuses): still one line, no traceback
        text = " ".join(str(err).split())[:300] or type(err).__name__
        print(f"llmrl: error: {type(err).__name__}: {text}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`
        return 0
    except KeyboardInterrupt:
        print("llmrl: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
