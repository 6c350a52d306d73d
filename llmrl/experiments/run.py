"""One run from one config (usually a preset): build the env and its role, train, checkpoint, evaluate,
and draw the GIF. `llmrl train | eval | gif` are these functions behind a parser.

    from llmrl.experiments import TrainConfig, load_preset, train, train_config
    run_dir = train(train_config({**load_preset("doorkey-ellm"), "steps": 20_000}))
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import tyro
import yaml

from llmrl.agents.dqn import DQNConfig
from llmrl.agents.ppo import PPOConfig
from llmrl.errors import ConfigError, LLMRLError
from llmrl.experiments.presets import load_yaml
from llmrl.roles.registry import role_names

__all__ = [
    "TrainConfig",
    "EvalConfig",
    "GifConfig",
    "TrainResult",
    "train_config",
    "config_data",
    "saved_config",
    "build_env",
    "role_options",
    "agent_class",
    "train",
    "train_run",
    "evaluate_run",
    "gif",
]

if TYPE_CHECKING:
    RoleName = str
else:
    # the CLI's choices come from the one role registry
    RoleName = Literal[("none", *role_names())]


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
    """Extra keyword arguments of the role, as YAML values: `--role-args prompt "Where next?" every 4`.
    The role's defaults for the env (e.g. ELLM's manual and text filter) apply under them."""
    env_args: dict[str, str] = field(default_factory=dict)
    """Extra keyword arguments of the environment, as YAML values (MiniGrid: `oracle true` adds the
    ground-truth sub-goal for ELLM's suggest=oracle)."""
    image_obs: bool = False
    """The observation is the rendered frame, 84x84 grey (the seed's observation_mode="image")."""
    gif_steps: int = 200
    """Frames at most in the run's GIF (`llmrl gif` default)."""
    out: Path | None = None
    """Run folder; default runs/<env>-<algo>-<role>-<time>."""
    resume: bool = False
    """Continue the run in `out` from its last checkpoint."""
    checkpoint_every: int = 0
    """Save a checkpoint every this many steps (0: only at the end)."""
    progress: bool = True
    """Show a progress bar."""
    workers: int = 0
    """Rollout workers on Ray (PPO only), each with its own copy of the env (num_envs envs) and the role's
    LLM served to all of them by one batching server (`llmrl.distributed`); 0 trains in this process."""
    ray_address: str | None = None
    """The Ray cluster for workers > 0 ("auto", "ray://head:10001"); default: a local Ray."""
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
        if self.workers < 0 or (self.workers and self.algo != "ppo"):
            raise ConfigError(
                f"workers={self.workers} (algo={self.algo}) is invalid: rollout workers on Ray train PPO; "
                "use --algo ppo, or --workers 0 to train in this process"
            )
        if self.role != "none" and self.role not in role_names():
            raise ConfigError(f"unknown role {self.role!r}; choose one of none, {', '.join(role_names())}")

    def algo_config(self) -> dict[str, Any]:
        """The chosen algorithm's settings as keyword arguments of its agent."""
        return dataclasses.asdict(self.ppo if self.algo == "ppo" else self.dqn)


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
    max_steps: int | None = None
    """Frames at most; default the run's gif_steps."""
    seed: int = 0
    """Seed of the episode shown."""
    advice: bool = True
    """Show the LLM's short advice beside the frames (runs with an LLM role only)."""
    language: str | None = None
    """Ask for the advice in this language (e.g. Japanese, as the seed showed)."""


# -- configs as plain data (presets, a run's config.yaml) ---------------------------------------------------


def train_config(data: dict[str, Any]) -> TrainConfig:
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
    data["role_args"] = {str(k): _yaml_text(v) for k, v in (data.get("role_args") or {}).items()}
    data["env_args"] = {str(k): _yaml_text(v) for k, v in (data.get("env_args") or {}).items()}
    return TrainConfig(ppo=ppo, dqn=dqn, **data)


def config_data(cfg: TrainConfig) -> dict[str, Any]:
    """`cfg` as plain data for YAML (what a run's config.yaml holds)."""
    data = dataclasses.asdict(cfg)
    data["out"] = str(cfg.out) if cfg.out else None
    data["ppo"] = {k: list(v) if isinstance(v, tuple) else v for k, v in data["ppo"].items()}
    data["dqn"] = {k: list(v) if isinstance(v, tuple) else v for k, v in data["dqn"].items()}
    return data


def saved_config(run: Path) -> TrainConfig:
    """The config a run folder was trained with."""
    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"{run} is not a run folder (no config.yaml); train one with `llmrl train --out {run}`"
        )
    return train_config(load_yaml(path, "run config"))


def _yaml_text(value: Any) -> str:
    # role_args/env_args hold YAML text (the CLI's form); a value read from a YAML file keeps its type and
    # a string that YAML would read as something else ("a: b", "yes") is quoted (JSON is YAML)
    if isinstance(value, str):
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value)


def role_options(cfg: TrainConfig) -> dict[str, Any]:
    """The keyword arguments the run's role gets: its defaults for the env, then `cfg.role_args`."""
    from llmrl.roles.registry import role_defaults

    if cfg.role == "none":
        return {}
    return {**role_defaults(cfg.role, cfg.env), **_yaml_values(cfg.role_args)}


def _yaml_values(args: dict[str, str]) -> dict[str, Any]:
    return {k: yaml.safe_load(v) if isinstance(v, str) else v for k, v in args.items()}


# -- building a run's env, role and agent ---------------------------------------------------------------


def build_env(
    cfg: TrainConfig,
    *,
    num_envs: int | None = None,
    render_mode: str | None = None,
    llm: Any = None,
    inner: Callable[[Any], Any] | None = None,
    role_kwargs: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """The environment of a run and its LLM (None without a role): the env, then `inner` (a wrapper
    that must sit under the role, e.g. an episode log), then the role with its env defaults,
    `cfg.role_args` and `role_kwargs` (Python values, e.g. callables) over them.

    `llm`: an LLM object to use instead of loading `cfg.llm`.
    """
    import gymnasium as gym

    from llmrl.envs import ImageObservation, make
    from llmrl.roles.base import with_text

    kwargs = _yaml_values(cfg.env_args)
    if render_mode or cfg.image_obs:
        kwargs["render_mode"] = "rgb_array" if cfg.image_obs else render_mode
    n = num_envs or cfg.num_envs
    text = cfg.role != "none"

    def single() -> Any:
        env: Any = make(cfg.env, **kwargs)
        # the text is described from the env, so it goes under the image
        return ImageObservation(with_text(env) if text else env, size=84, grey=True)

    env: Any
    if cfg.image_obs:
        # with n > 1 each env already writes info["text"] (described before the observation was changed),
        # which the sync vector env batches: has_text sees that, so the role does not describe it again
        env = single() if n == 1 else gym.vector.SyncVectorEnv([single] * n)
    else:  # the observations the agents train on (MiniGrid: the flat view)
        env = make(cfg.env, num_envs=n, **kwargs)
        if text:  # the state in words for the role, under `inner` (its describers read the envs themselves)
            env = with_text(env)
    if inner is not None:
        env = inner(env)
    if cfg.role == "none":
        return env, None
    from llmrl.roles import make_role

    if llm is None:
        from llmrl import llm as llm_module

        # the persistent cache (as the demo): a rerun or a resumed run gets a prompt's first answer again,
        # which makes resuming exact even where a backend's answer depends on its batch (LLMFeatures)
        llm = llm_module.load(cfg.llm, cache=True)
    return make_role(cfg.role, env, llm, **role_options(cfg), **(role_kwargs or {})), llm


def _policy_module(env: Any) -> Any:
    """The policy module a role brings for the agent (the `policy` role: the LLM policy), else None."""
    return getattr(env, "policy", None)


def agent_class(algo: str) -> type:
    """The agent class of `algo` ("ppo" or "dqn")."""
    from llmrl.agents.dqn import DQN
    from llmrl.agents.ppo import PPO

    classes: dict[str, type] = {"ppo": PPO, "dqn": DQN}
    if algo not in classes:
        raise ConfigError(f"unknown algo {algo!r}; choose one of {', '.join(classes)}")
    return classes[algo]


def _run_dir(cfg: TrainConfig) -> Path:
    if cfg.out is not None:
        return cfg.out
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.env.replace('/', '_')}-{cfg.algo}-{cfg.role}-{stamp}"


# -- the run ----------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What `train_run` made: the run folder, the trained agent, its env and the LLM (or None)."""

    run_dir: Path
    agent: Any
    env: Any
    llm: Any


def train_run(
    cfg: TrainConfig, *, llm: Any = None, render_mode: str | None = None, overwrite: bool = False
) -> TrainResult:
    """Train, checkpoint into the run folder, write the learning curve; return what was made.

    llm: an LLM object instead of loading `cfg.llm`; render_mode: of the training env (e.g. "rgb_array"
    to draw a GIF with it afterwards); overwrite: replace a finished run in `cfg.out` (else an error).
    """
    from llmrl.training import recover_checkpoint

    run = _run_dir(cfg)
    checkpoint = run / "checkpoint"
    if run.exists() and not run.is_dir():
        raise ConfigError(
            f"--out {run} is not a folder; pass a folder for the run (it is created if missing)"
        )
    recover_checkpoint(checkpoint)  # a save killed between its two renames
    earlier = [n for n in ("checkpoint", "metrics.csv", "episodes.csv") if (run / n).exists()]
    if earlier and not (cfg.resume or overwrite):
        raise ConfigError(f"{run} already holds a run ({', '.join(earlier)}); pass --resume to continue it "
                          "or choose another --out")  # fmt: skip
    if cfg.workers:
        return _train_on_ray(cfg, run, llm)
    env, llm = build_env(cfg, llm=llm, render_mode=render_mode)
    cls: Any = agent_class(cfg.algo)
    if cfg.resume:
        if not checkpoint.exists():
            raise ConfigError(f"nothing to resume: {checkpoint} does not exist")
        agent = cls.load(checkpoint, env=env, policy=_policy_module(env))
    else:
        agent = cls(env, seed=cfg.seed, policy=_policy_module(env), **cfg.algo_config())
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config_data(cfg), sort_keys=False))

    saved_at = [agent.num_timesteps // cfg.checkpoint_every if cfg.checkpoint_every else 0]

    def save_every(agent: Any, metrics: dict) -> None:
        """Checkpoint each time another `checkpoint_every` steps have passed."""
        if cfg.checkpoint_every and agent.num_timesteps // cfg.checkpoint_every != saved_at[0]:
            saved_at[0] = agent.num_timesteps // cfg.checkpoint_every
            agent.save(checkpoint)

    print(f"training {cfg.algo.upper()} on {cfg.env} ({cfg.num_envs} envs, role={cfg.role}) -> {run}")
    agent.learn(cfg.steps, progress_bar=cfg.progress, callback=save_every, run_dir=run)
    agent.save(checkpoint)
    _report(run, checkpoint)
    return TrainResult(run, agent, env, llm)


def _report(run: Path, checkpoint: Path) -> None:
    """The closing lines of a training run: where its learning curve and checkpoint are."""
    from llmrl.training import plot_learning_curve

    try:
        print(f"learning curve: {plot_learning_curve(run)}")
    except LLMRLError as err:
        print(f"no learning curve: {err}")
    print(f"checkpoint: {checkpoint}")


def _worker_env(cfg: TrainConfig, llm: Any) -> Any:
    """One rollout worker's env (module level, so Ray sends it to the workers by reference)."""
    return build_env(cfg, llm=llm)[0]


def _train_on_ray(cfg: TrainConfig, run: Path, llm: Any) -> TrainResult:
    """`train_run` with `cfg.workers` rollout workers on Ray; the role's LLM (if any) is one LLMServer
    actor behind the persistent cache. The result has no env (the envs lived in the workers)."""
    import functools

    from llmrl import distributed

    started_ray = distributed.init(cfg.ray_address)
    server = None
    if cfg.role != "none" and llm is None:
        server = distributed.LLMServer(cfg.llm, cache=True, num_cpus=0)
        llm = server.client()
    make_env = functools.partial(_worker_env, cfg, llm)
    checkpoint = run / "checkpoint"
    trainer = None
    try:
        if cfg.resume:
            if not checkpoint.exists():
                raise ConfigError(f"nothing to resume: {checkpoint} does not exist")
            trainer = distributed.DistributedPPO.load(checkpoint, make_env, workers=cfg.workers)
        else:
            trainer = distributed.DistributedPPO(make_env, workers=cfg.workers, seed=cfg.seed,
                                                 **cfg.algo_config())  # fmt: skip
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(yaml.safe_dump(config_data(cfg), sort_keys=False))
        print(
            f"training PPO on {cfg.env} ({cfg.workers} Ray workers x {cfg.num_envs} envs, role={cfg.role}) -> {run}"
        )
        every = cfg.checkpoint_every or None
        agent = trainer.learn(cfg.steps, progress_bar=cfg.progress, run_dir=run, checkpoint_every=every)
        agent.save(checkpoint)
    finally:
        if trainer is not None:
            trainer.close()
        if server is not None:
            server.close()
        if started_ray:
            distributed.shutdown()
    _report(run, checkpoint)
    return TrainResult(run, agent, None, None)


def train(cfg: TrainConfig) -> Path:
    """Train (see `train_run`); return the run folder."""
    return train_run(cfg).run_dir


def evaluate_run(cfg: EvalConfig) -> dict[str, float]:
    """Evaluate a run's checkpoint; print and return mean, std and episodes."""
    from llmrl import llm as llm_module
    from llmrl.evaluate import evaluate

    run = Path(cfg.run)
    tcfg = saved_config(run)
    # lazy: the answers the role needs are usually in the persistent cache from training, so the model
    # is loaded (or its server reached) only at the first miss; eval then runs with the server down
    llm = None if tcfg.role == "none" else llm_module.load(tcfg.llm, cache=True, lazy=True)
    env, _llm = build_env(tcfg, num_envs=1, llm=llm)
    agent: Any = agent_class(tcfg.algo).load(run / "checkpoint", env=env, policy=_policy_module(env))  # type: ignore[attr-defined]
    result = evaluate(agent, env, n_episodes=cfg.episodes, deterministic=cfg.deterministic, seed=cfg.seed)
    print(f"{tcfg.env}: mean return {result.mean:.2f} ± {result.std:.2f} over {cfg.episodes} episodes")
    summary = {"mean": float(result.mean), "std": float(result.std), "episodes": cfg.episodes}
    (run / "eval.json").write_text(json.dumps(summary, indent=2))
    return summary


def gif(cfg: GifConfig, *, llm: Any = None) -> Path:
    """Write the GIF of a run's agent (with the LLM's advice when the run has a role); return its path."""
    from llmrl.render import save_gif

    run = Path(cfg.run)
    tcfg = saved_config(run)
    env, llm = build_env(tcfg, num_envs=1, render_mode="rgb_array", llm=llm)
    agent: Any = agent_class(tcfg.algo).load(run / "checkpoint", env=env, policy=_policy_module(env))  # type: ignore[attr-defined]
    annotate = None
    if cfg.advice and llm is not None:
        from llmrl.roles import Advisor

        role_args = _yaml_values(tcfg.role_args)
        options = {k: role_args[k] for k in ("prompt", "source", "template") if k in role_args}
        annotate = Advisor(llm, env=env, language=cfg.language, **options)
    steps = cfg.max_steps if cfg.max_steps is not None else tcfg.gif_steps
    path = save_gif(
        agent, env, cfg.out or run / "agent.gif", max_steps=steps, annotate=annotate, seed=cfg.seed
    )
    print(f"wrote {path}")
    return Path(path)
