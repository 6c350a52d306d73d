"""`llmrl train | eval | gif | bench | demo | presets` — the command line.

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
import dataclasses
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tyro
import yaml

from llmrl.agents.dqn import DQNConfig
from llmrl.agents.ppo import PPOConfig
from llmrl.errors import ConfigError, LLMRLError

__all__ = ["main", "TrainConfig", "EvalConfig", "GifConfig", "BenchConfig", "DemoConfig", "load_preset"]

PRESET_DIR = Path(__file__).parent / "presets"
RoleName = Literal[
    "none", "features", "ellm", "judge", "manual-reward", "text-reward", "vlm-reward", "preference"
]


@dataclass
class TrainConfig:
    """Train an agent, optionally with an LLM role, and write a run folder."""

    env: str = "CartPole-v1"
    """Gymnasium or llmrl environment id (ALE and MiniGrid ids when their extras are installed)."""
    algo: Literal["ppo", "dqn"] = "ppo"
    """The RL algorithm."""
    steps: int = 50_000
    """Total environment steps to train for."""
    num_envs: int = 8
    """Environments stepped in parallel (LLM calls are batched across them)."""
    seed: int = 0
    """Seed of the agent and the environments."""
    role: RoleName = "none"
    """How the LLM takes part: features (observation), ellm (goals), judge / manual-reward /
    text-reward / preference (rewards), or none."""
    llm: str = "embedded"
    """LLM spec for the role: embedded, llamacpp:<path.gguf>, hf:<id or path>, openai:<model>."""
    role_args: dict[str, str] = field(default_factory=dict)
    """Extra keyword arguments of the role, as YAML values: `--role-args prompt "Where next?" every 4`."""
    env_args: dict[str, str] = field(default_factory=dict)
    """Extra keyword arguments of the environment, as YAML values."""
    out: Path | None = None
    """Run folder; default runs/<env>-<algo>-<role>-<time>."""
    resume: bool = False
    """Continue the run in `out` from its last checkpoint."""
    checkpoint_every: int = 0
    """Save a checkpoint every this many steps (0: only at the end)."""
    progress: bool = True
    """Show a progress bar."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO hyperparameters (used when algo=ppo)."""
    dqn: DQNConfig = field(default_factory=DQNConfig)
    """DQN hyperparameters (used when algo=dqn)."""

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ConfigError(f"steps={self.steps} is invalid: use a positive number of environment steps")
        if self.num_envs <= 0:
            raise ConfigError(f"num_envs={self.num_envs} is invalid: use 1 or more")
        if self.resume and self.out is None:
            raise ConfigError("resume needs the run folder: pass --out <run folder>")


@dataclass
class EvalConfig:
    """Evaluate a trained run over whole episodes and print the mean and std of the returns."""

    run: tyro.conf.Positional[Path]
    """Run folder written by `llmrl train`."""
    episodes: int = 100
    """Episodes to evaluate."""
    seed: int = 1000
    """Seed of the evaluation environment."""
    deterministic: bool = True
    """Take the greedy action instead of sampling."""


@dataclass
class GifConfig:
    """Write a GIF of a trained agent: frames, action values and (with a role) what the LLM says."""

    run: tyro.conf.Positional[Path]
    """Run folder written by `llmrl train`."""
    out: Path | None = None
    """GIF path; default <run>/agent.gif."""
    max_steps: int = 200
    """Frames at most."""
    seed: int = 0
    """Seed of the episode shown."""
    advice: bool = True
    """Show the LLM's short advice beside the frames (runs with an LLM role only)."""
    language: str | None = None
    """Ask for the advice in this language (e.g. Japanese, as the seed showed)."""


@dataclass
class BenchConfig:
    """Run a benchmark script from benchmarks/ (in a source checkout) and print its table."""

    name: tyro.conf.Positional[
        Literal["rl_core", "llm_ops", "envs_text", "llm_features", "rewards", "planner"]
    ] = "llm_ops"
    """Which benchmark."""
    quick: bool = True
    """A short run (--quick); turn off for the full measurement recorded in RESULTS.md."""


@dataclass
class DemoConfig:
    """Baseline PPO vs LLM-guided PPO (ELLM goals from the embedded model) on a sparse-reward task."""

    env: str = "MiniGrid-DoorKey-5x5-v0"
    """A MiniGrid task with sub-goals (key, door, goal)."""
    steps: int = 60_000
    """Environment steps for each agent."""
    seed: int = 0
    """Seed of both agents."""
    llm: str = "embedded"
    """LLM spec for the guided agent."""
    out: Path | None = None
    """Output folder; default runs/demo-<time>."""


# -- presets ----------------------------------------------------------------------------------------


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description."""
    out = {}
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        try:  # one broken preset must not hide the others
            out[path.stem] = str(_load_yaml(path, "preset").get("description", ""))
        except ConfigError as err:
            out[path.stem] = f"(broken: {err})"
    return out


def _load_yaml(path: Path, what: str) -> dict[str, Any]:
    """A YAML mapping from `path`, or ConfigError naming the file, the problem and the fix."""
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
        import difflib

        names = list(list_presets())
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}.{hint} Known presets: {', '.join(names)}")
    data = _load_yaml(path, "preset")
    data.pop("description", None)
    return data


def _train_config(data: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from plain data (a preset or a run's saved config)."""
    data = dict(data)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")
    for key in ("ppo", "dqn", "role_args", "env_args"):
        if not isinstance(data.get(key) or {}, dict):
            raise ConfigError(f"{key} must be a mapping of settings, not {data[key]!r}")
    try:
        ppo, dqn = PPOConfig(**data.pop("ppo", None) or {}), DQNConfig(**data.pop("dqn", None) or {})
    except TypeError as err:  # an unknown field
        raise ConfigError(f"{err}".replace("__init__()", "ppo/dqn settings:")) from None
    if data.get("out") is not None:
        data["out"] = Path(str(data["out"]))
    data["role_args"] = {str(k): str(v) for k, v in (data.get("role_args") or {}).items()}
    data["env_args"] = {str(k): str(v) for k, v in (data.get("env_args") or {}).items()}
    return TrainConfig(ppo=ppo, dqn=dqn, **data)


def _config_data(cfg: TrainConfig) -> dict[str, Any]:
    data = dataclasses.asdict(cfg)
    data["out"] = str(cfg.out) if cfg.out else None
    data["ppo"] = {k: list(v) if isinstance(v, tuple) else v for k, v in data["ppo"].items()}
    data["dqn"] = {k: list(v) if isinstance(v, tuple) else v for k, v in data["dqn"].items()}
    return data


def _yaml_values(args: dict[str, str]) -> dict[str, Any]:
    return {k: yaml.safe_load(v) if isinstance(v, str) else v for k, v in args.items()}


# -- building a run's env, role and agent ------------------------------------------------------------------


def build_env(cfg: TrainConfig, *, num_envs: int | None = None, render_mode: str | None = None):
    """The environment of a run: `llmrl.make` plus the role wrapper (and its LLM) if any."""
    import gymnasium as gym

    from llmrl.envs import make

    kwargs = _yaml_values(cfg.env_args)
    if render_mode:
        kwargs["render_mode"] = render_mode
    n = num_envs or cfg.num_envs
    if cfg.env.startswith(("MiniGrid-", "BabyAI-")):
        # MiniGrid's observation holds a text mission and a 7x7 symbolic view: give agents the view as a
        # flat vector (the state in words goes to info["text"] for the roles)
        from llmrl.planner import doorkey_env

        env: Any = doorkey_env(cfg.env, text=True, **kwargs)
        if n > 1:
            env.close()
            env = gym.vector.SyncVectorEnv([lambda: doorkey_env(cfg.env, text=True, **kwargs)] * n)
    else:
        env = make(cfg.env, num_envs=n, **kwargs)
    if cfg.role == "none":
        return env, None
    from llmrl import llm as llm_module
    from llmrl.roles import make_role

    llm = llm_module.load(cfg.llm)
    return make_role(cfg.role, env, llm, **_yaml_values(cfg.role_args)), llm


def _agent_class(algo: str):
    from llmrl.agents.dqn import DQN
    from llmrl.agents.ppo import PPO

    return {"ppo": PPO, "dqn": DQN}[algo]


def _run_dir(cfg: TrainConfig) -> Path:
    if cfg.out is not None:
        return cfg.out
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.env.replace('/', '_')}-{cfg.algo}-{cfg.role}-{stamp}"


def _saved_config(run: Path) -> TrainConfig:
    path = run / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"{run} is not a run folder (no config.yaml); train one with `llmrl train --out {run}`"
        )
    return _train_config(_load_yaml(path, "run config"))


# -- commands --------------------------------------------------------------------------------------------


def train(cfg: TrainConfig) -> Path:
    """Train, checkpoint into the run folder, write the learning curve; return the run folder."""
    from llmrl.training import plot_learning_curve, recover_checkpoint

    run = _run_dir(cfg)
    checkpoint = run / "checkpoint"
    if run.exists() and not run.is_dir():
        raise ConfigError(
            f"--out {run} is not a folder; pass a folder for the run (it is created if missing)"
        )
    recover_checkpoint(checkpoint)  # a save killed between its two renames
    earlier = [n for n in ("checkpoint", "metrics.csv", "episodes.csv") if (run / n).exists()]
    if earlier and not cfg.resume:
        raise ConfigError(f"{run} already holds a run ({', '.join(earlier)}); pass --resume to continue it "
                          "or choose another --out")  # fmt: skip
    env, _llm = build_env(cfg)
    cls = _agent_class(cfg.algo)
    if cfg.resume:
        if not checkpoint.exists():
            raise ConfigError(f"nothing to resume: {checkpoint} does not exist")
        agent = cls.load(checkpoint, env=env)
    else:
        algo_cfg = dataclasses.asdict(cfg.ppo if cfg.algo == "ppo" else cfg.dqn)
        agent = cls(env, seed=cfg.seed, **algo_cfg)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(_config_data(cfg), sort_keys=False))

    saved_at = [agent.num_timesteps // cfg.checkpoint_every if cfg.checkpoint_every else 0]

    def save_every(agent: Any, metrics: dict) -> None:
        """Checkpoint each time another `checkpoint_every` steps have passed."""
        if cfg.checkpoint_every and agent.num_timesteps // cfg.checkpoint_every != saved_at[0]:
            saved_at[0] = agent.num_timesteps // cfg.checkpoint_every
            agent.save(checkpoint)

    print(f"training {cfg.algo.upper()} on {cfg.env} ({cfg.num_envs} envs, role={cfg.role}) -> {run}")
    agent.learn(cfg.steps, progress_bar=cfg.progress, callback=save_every, run_dir=run)
    agent.save(checkpoint)
    try:
        print(f"learning curve: {plot_learning_curve(run)}")
    except LLMRLError as err:
        print(f"no learning curve: {err}")
    print(f"checkpoint: {checkpoint}")
    return run


def evaluate_run(cfg: EvalConfig) -> dict[str, float]:
    """Evaluate a run's checkpoint; print and return mean, std and episodes."""
    from llmrl.evaluate import evaluate

    tcfg = _saved_config(cfg.run)
    env, _llm = build_env(tcfg, num_envs=1)
    agent = _agent_class(tcfg.algo).load(cfg.run / "checkpoint", env=env)
    result = evaluate(agent, env, n_episodes=cfg.episodes, deterministic=cfg.deterministic, seed=cfg.seed)
    print(f"{tcfg.env}: mean return {result.mean:.2f} ± {result.std:.2f} over {cfg.episodes} episodes")
    summary = {"mean": float(result.mean), "std": float(result.std), "episodes": cfg.episodes}
    (cfg.run / "eval.json").write_text(json.dumps(summary, indent=2))
    return summary


def gif(cfg: GifConfig) -> Path:
    """Write the GIF of a run's agent; return its path."""
    from llmrl.render import save_gif

    tcfg = _saved_config(cfg.run)
    env, llm = build_env(tcfg, num_envs=1, render_mode="rgb_array")
    agent = _agent_class(tcfg.algo).load(cfg.run / "checkpoint", env=env)
    annotate = None
    if cfg.advice and llm is not None:
        from llmrl.roles import Advisor

        role_args = _yaml_values(tcfg.role_args)
        options = {k: role_args[k] for k in ("prompt", "source", "template") if k in role_args}
        annotate = Advisor(llm, env=env, language=cfg.language, **options)
    path = save_gif(agent, env, cfg.out or cfg.run / "agent.gif", max_steps=cfg.max_steps, annotate=annotate,
                    seed=cfg.seed)  # fmt: skip
    print(f"wrote {path}")
    return Path(path)


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


def demo(cfg: DemoConfig) -> Path:
    """The main job: baseline vs LLM-guided agent on a sparse-reward task, side by side."""
    from llmrl.demo import run_demo

    return run_demo(cfg)


def presets(args: Sequence[str] = ()) -> None:
    """List the presets (`llmrl train --preset NAME` uses one)."""
    for name, description in list_presets().items():
        print(f"{name:24s} {description}")


COMMANDS: dict[str, tuple[type | None, Callable[..., Any]]] = {
    "train": (TrainConfig, train),
    "eval": (EvalConfig, evaluate_run),
    "gif": (GifConfig, gif),
    "bench": (BenchConfig, bench),
    "demo": (DemoConfig, demo),
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
            default = _train_config(load_preset(preset))
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
