"""Baseline vs LLM-guided PPO on a sparse-reward MiniGrid task, side by side: the comparison harness.

    from llmrl.experiments.compare import compare, markdown_table, plot_success
    results = compare(methods=("baseline", "ellm", "oracle"), seeds=(0, 1))
    print(markdown_table(results)); plot_success(results, "success.png")

Every method is a preset (`METHODS`): "baseline" is `doorkey-ppo`, "ellm" is `doorkey-ellm` (goals
ranked by the LLM, with the manual and text filter the role takes on MiniGrid), "oracle" is `doorkey-ellm`
taking the ground-truth next sub-goal instead. Each run logs every finished episode's success (extrinsic
reward > 0 on termination) and returns it with the LLM counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from llmrl.errors import ConfigError
from llmrl.experiments.presets import load_preset
from llmrl.experiments.run import TrainConfig, agent_class, build_env, train_config
from llmrl.roles.base import RoleWrapper

__all__ = [
    "METHODS",
    "RunResult",
    "EpisodeLog",
    "method_config",
    "compare",
    "run_one",
    "markdown_table",
    "plot_success",
]

METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "baseline": ("doorkey-ppo", {}),
    "ellm": ("doorkey-ellm", {}),
    "oracle": ("doorkey-ellm", {"role_args": {"suggest": "oracle"}, "env_args": {"oracle": True}}),
}
"""Method -> (preset, settings over it)."""


def method_config(
    method: str,
    *,
    seed: int = 0,
    env_id: str | None = None,
    total_timesteps: int | None = None,
    num_envs: int | None = None,
    ppo: dict[str, Any] | None = None,
) -> TrainConfig:
    """The TrainConfig of `method`: its preset, the method's settings, then the given overrides."""
    if method not in METHODS:
        raise ConfigError(f"method={method!r} is not one of {tuple(METHODS)}.")
    preset, extra = METHODS[method]
    data = load_preset(preset)
    for key in ("role_args", "env_args"):
        data[key] = {**(data.get(key) or {}), **extra.get(key, {})}
    data["ppo"] = {**(data.get("ppo") or {}), **(ppo or {})}
    data["seed"] = seed
    for key, value in (("env", env_id), ("steps", total_timesteps), ("num_envs", num_envs)):
        if value is not None:
            data[key] = value
    return train_config(data)


class EpisodeLog(RoleWrapper):
    """Records (env step, success) of every finished episode; success = terminated with reward > 0.

    Sits under ELLMGoals, so it sees the environment's reward only."""

    def __init__(self, env: gym.Env | gym.vector.VectorEnv):
        super().__init__(env)
        self.steps = 0
        self.episodes: list[tuple[int, bool]] = []

    def process(self, obs, rewards, terminated, truncated, infos, starts):
        self.steps += int((~starts).sum())
        for i in np.flatnonzero((terminated | truncated) & ~starts):
            self.episodes.append((self.steps, bool(terminated[i] and rewards[i] > 0)))
        return obs, rewards

    def success_rate(self, window: int) -> float | None:
        """Success over the last `window` episodes (None until that many have ended)."""
        if len(self.episodes) < window:
            return None
        return float(np.mean([s for _, s in self.episodes[-window:]]))


@dataclass
class RunResult:
    """One training run: every finished episode's end step and success, and the LLM counters."""

    method: str
    seed: int
    episode_steps: np.ndarray
    """Env steps (all envs together) at which each episode ended, shape (E,)."""
    episode_success: np.ndarray
    """Whether each episode reached the goal, shape (E,) bool."""
    timesteps: int
    """Env steps trained."""
    wall_s: float
    metrics: dict[str, float] = field(default_factory=dict)
    """The ELLM wrapper's counters (llm/calls, llm/hits, goals/prompts, goals/intrinsic_total, ...)."""

    def rolling(self, window: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """(steps, success rate over the last `window` episodes), one point per episode from the
        window-th on."""
        s = self.episode_success.astype(np.float64)
        if len(s) < window:
            return np.zeros(0), np.zeros(0)
        c = np.concatenate([[0.0], np.cumsum(s)])
        rate = (c[window:] - c[:-window]) / window
        return self.episode_steps[window - 1 :], rate

    def steps_to(self, level: float = 0.9, window: int = 100) -> int | None:
        """First env step at which the rolling success rate reached `level`; None if never."""
        steps, rate = self.rolling(window)
        hit = np.flatnonzero(rate >= level)
        return int(steps[hit[0]]) if len(hit) else None

    def final_success(self, window: int = 100) -> float:
        return float(self.episode_success[-window:].mean()) if len(self.episode_success) else 0.0


def run_one(
    method: str,
    seed: int,
    *,
    env_id: str | None = None,
    total_timesteps: int | None = None,
    num_envs: int | None = None,
    llm: Any = None,
    ellm: dict[str, Any] | None = None,
    ppo: dict[str, Any] | None = None,
    stop_at: float | None = 0.95,
    window: int = 100,
    progress_bar: bool = False,
    callback: Callable[[Any, dict], Any] | None = None,
) -> RunResult:
    """Train one PPO run of `method` ("baseline", "ellm" or "oracle") from its preset (`METHODS`).

    env_id, total_timesteps, num_envs: override the preset's env, steps and num_envs. `ellm`: role
    options over the preset's (Python values, callables included); `ppo`: PPO settings over the preset's.
    stop_at: end the run early once the rolling success over `window` episodes reaches this
    (None: train the whole budget). `llm` is an LLM object or a spec for `llmrl.llm.load`
    (needed by "ellm"; "oracle" uses it only to embed captions).
    """
    cfg = method_config(method, seed=seed, env_id=env_id, total_timesteps=total_timesteps, num_envs=num_envs,
                        ppo=ppo)  # fmt: skip
    if cfg.role != "none" and (llm is None or isinstance(llm, str)):
        from llmrl.llm import load

        llm = load(llm or cfg.llm)
    logs: list[EpisodeLog] = []

    def log_episodes(env: Any) -> EpisodeLog:
        logs.append(EpisodeLog(env))
        return logs[-1]

    env, _ = build_env(cfg, llm=llm, inner=log_episodes, role_kwargs=ellm)
    log = logs[0]
    agent: Any = agent_class(cfg.algo)(env, seed=seed, **cfg.algo_config())

    def cb(a: Any, metrics: dict) -> Any:
        if callback is not None and callback(a, metrics) is False:
            return False
        rate = log.success_rate(window)
        return not (stop_at is not None and rate is not None and rate >= stop_at)

    t0 = time.perf_counter()
    agent.learn(cfg.steps, progress_bar=progress_bar, callback=cb)
    wall = time.perf_counter() - t0
    env.close()
    eps = log.episodes
    return RunResult(
        method=method,
        seed=seed,
        episode_steps=np.array([s for s, _ in eps], dtype=np.int64),
        episode_success=np.array([ok for _, ok in eps], dtype=bool),
        timesteps=int(agent.num_timesteps),
        wall_s=wall,
        metrics=env.llmrl_metrics() if env is not log else {},
    )


def compare(
    env_id: str | None = None,
    *,
    methods: Sequence[str] = tuple(METHODS),
    seeds: Sequence[int] = (0,),
    total_timesteps: int | None = None,
    num_envs: int | None = None,
    llm: Any = None,
    ellm: dict[str, Any] | None = None,
    ppo: dict[str, Any] | None = None,
    stop_at: float | None = 0.95,
    window: int = 100,
    progress_bar: bool = False,
    on_result: Callable[[RunResult], Any] | None = None,
) -> list[RunResult]:
    """Every method x seed, one after the other, sharing one LLM (so its cache warms once).

    Arguments as in `run_one`. Returns the runs in order; `on_result` is called after each (e.g. to
    print progress).
    """
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"methods contains {m!r}; choose from {tuple(METHODS)}.")
    if any(m != "baseline" for m in methods) and (llm is None or isinstance(llm, str)):
        from llmrl.llm import load

        llm = load(llm or "embedded")
    out = []
    for m in methods:
        for s in seeds:
            r = run_one(m, s, env_id=env_id, total_timesteps=total_timesteps, num_envs=num_envs, llm=llm,
                        ellm=ellm, ppo=ppo, stop_at=stop_at, window=window, progress_bar=progress_bar)  # fmt: skip
            out.append(r)
            if on_result is not None:
                on_result(r)
    return out


def markdown_table(results: Sequence[RunResult], *, level: float = 0.9, window: int = 100) -> str:
    """Per method: runs reaching `level`, median steps to it (a run that never did counts as its
    budget, marked ">"), its ratio to the baseline, final success, wall time and LLM counters."""
    by: dict[str, list[RunResult]] = {}
    for r in results:
        by.setdefault(r.method, []).append(r)

    def median_steps(rs: list[RunResult]) -> tuple[float, bool]:
        vals = [r.steps_to(level, window) for r in rs]
        censored = any(v is None for v in vals)
        return float(np.median([v if v is not None else r.timesteps for v, r in zip(vals, rs)])), censored

    base = median_steps(by["baseline"])[0] if "baseline" in by else None
    rows = [
        f"| method | runs at {level:.0%} | median steps to {level:.0%} | vs baseline | final success | "
        "wall s (mean) | LLM prompts | LLM calls | cache hits | intrinsic reward/step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, rs in by.items():
        med, cens = median_steps(rs)
        reached = sum(r.steps_to(level, window) is not None for r in rs)
        ratio = f"{med / base:.2f}" if base else "-"
        mean = lambda key, rs=rs: np.mean([r.metrics.get(key, 0.0) for r in rs])  # noqa: E731
        rows.append(
            f"| {m} | {reached}/{len(rs)} | {'>' if cens else ''}{med:,.0f} | {ratio} | "
            f"{np.mean([r.final_success(window) for r in rs]):.2f} | {np.mean([r.wall_s for r in rs]):.0f} | "
            f"{mean('goals/prompts'):.0f} | {mean('llm/calls'):.0f} | {mean('llm/hits'):.0f} | "
            f"{mean('goals/intrinsic_per_step'):.4f} |"
        )
    return "\n".join(rows)


def plot_success(results: Sequence[RunResult], path: str, *, window: int = 100, level: float = 0.9) -> str:
    """Rolling success rate vs env steps, one line per run, a colour per method; writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"baseline": "tab:grey", "ellm": "tab:blue", "oracle": "tab:green"}
    fig, ax = plt.subplots(figsize=(7, 4))
    seen: set[str] = set()
    for r in results:
        steps, rate = r.rolling(window)
        if not len(steps):
            steps, rate = np.array([0, r.timesteps]), np.zeros(2)
        label = r.method if r.method not in seen else None
        seen.add(r.method)
        ax.plot(steps, rate, color=colours.get(r.method), alpha=0.8, label=label)
    ax.axhline(level, color="k", lw=0.5, ls="--")
    ax.set_xlabel("env steps")
    ax.set_ylabel(f"success (last {window} episodes)")
    ax.set_ylim(0, 1.02)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
