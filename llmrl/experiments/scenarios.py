"""The seed's three scenarios, one call each: its preset trained (a DQN reading the observation and LLM
features of it), then a GIF of the trained agent with the LLM's advice and the Q-values beside each frame.

    from llmrl.experiments.scenarios import seed_scenario
    result = seed_scenario("grid")                       # embedded Gemma 3 270M, state text
    result = seed_scenario("breakout", total_timesteps=20_000)
    result = seed_scenario("montezuma", llm="hf:llava-hf/llava-v1.6-mistral-7b-hf",
                           llm_kwargs={"load_in_4bit": True}, language="Japanese")   # the seed's VLM

Each scenario IS a preset (`SCENARIOS`: grid-features, breakout-features, montezuma-features), so
`llmrl train --preset grid-features` trains the same thing. With a text model the LLM reads the state
in words (`WithText`); with an image-text model it reads the frame itself, as the seed did.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmrl.errors import ConfigError
from llmrl.experiments.presets import load_preset
from llmrl.experiments.run import train_config, train_run

__all__ = ["SCENARIOS", "ScenarioResult", "seed_scenario"]

SCENARIOS: dict[str, str] = {
    "grid": "grid-features",
    "breakout": "breakout-features",
    "montezuma": "montezuma-features",
}
"""Seed scenario -> its preset."""


@dataclass
class ScenarioResult:
    """What `seed_scenario` made."""

    agent: Any
    env: Any
    run_dir: Path
    gif: Path | None
    metrics: dict[str, float]
    """The LLMFeatures counters (calls, hits, hit rate, seconds)."""


def seed_scenario(
    name: str,
    *,
    llm: Any = "embedded",
    llm_kwargs: dict[str, Any] | None = None,
    total_timesteps: int | None = None,
    seed: int = 0,
    run_dir: str | os.PathLike | None = None,
    prompt: str | None = None,
    language: str | None = None,
    source: str | None = None,
    gif: bool = True,
    gif_steps: int | None = None,
    advice_tokens: int = 50,
    progress_bar: bool = True,
    cache: Any = True,
    dqn: dict[str, Any] | None = None,
) -> ScenarioResult:
    """Train scenario `name`'s preset ("grid", "breakout", "montezuma"), write the learning curve and a
    GIF with the LLM's advice and the Q-values into `run_dir` (default runs/seed-<name>, reused).

    llm: an LLM spec ("embedded", "hf:<LLaVA-NeXT path>", "openai:<model>") or an LLM object.
    llm_kwargs: backend options for a spec (e.g. `{"load_in_4bit": True}` for the seed's 7B VLM).
    source: "text" (state in words) or "image" (the frame); default: "image" if the model takes images.
    language: the advice in the GIF is asked for in this language (e.g. "Japanese", as the seed showed).
    cache: the persistent LLM cache (True = the default path; a path; False = none).
    total_timesteps, prompt, gif_steps, dqn: over the preset's steps, prompt, gif_steps, DQN settings.
    """
    import llmrl.llm
    from llmrl.render import save_gif
    from llmrl.roles.advice import Advisor
    from llmrl.training import plot_learning_curve

    if name not in SCENARIOS:
        raise ConfigError(f"unknown seed scenario {name!r}; choose one of {sorted(SCENARIOS)}")
    if isinstance(llm, str):
        llm = llmrl.llm.load(llm, cache=cache if cache is not False else None, **(llm_kwargs or {}))
    data = load_preset(SCENARIOS[name])
    source = source or ("image" if "images" in getattr(llm, "capabilities", ()) else "text")
    role_args = {**(data.get("role_args") or {}), "source": source}
    if prompt is not None:
        role_args["prompt"] = prompt
    run = Path(run_dir) if run_dir is not None else Path("runs") / f"seed-{name}"
    data.update(role_args=role_args, seed=seed, out=run, progress=progress_bar)
    data["dqn"] = {**(data.get("dqn") or {}), **(dqn or {})}
    if total_timesteps is not None:
        data["steps"] = total_timesteps
    if gif_steps is not None:
        data["gif_steps"] = gif_steps
    cfg = train_config(data)
    result = train_run(cfg, llm=llm, render_mode="rgb_array", overwrite=True)
    env, agent = result.env, result.agent
    with contextlib.suppress(Exception):  # too few episodes for a curve is not a failure of the run
        plot_learning_curve(run, title=f"{name}: DQN + LLMFeatures ({llm.name})")
    gif_path = None
    if gif:
        advise = Advisor(llm, str(role_args.get("prompt", "")), env=env, source=source,  # type: ignore[arg-type]
                         language=language, max_tokens=advice_tokens)  # fmt: skip
        gif_path = save_gif(
            agent, env, run / f"{name}.gif", max_steps=cfg.gif_steps, annotate=advise, seed=seed
        )
    return ScenarioResult(agent, env, run, gif_path, env.llmrl_metrics())
