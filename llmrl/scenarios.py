"""The seed's three scenarios, one call each: a DQN reading the frame and LLM features, then a GIF of
the trained agent with the LLM's advice and the Q-values beside each frame.

    from llmrl.scenarios import seed_scenario
    result = seed_scenario("grid")                       # embedded Gemma 3 270M, state text
    result = seed_scenario("breakout", total_timesteps=20_000)
    result = seed_scenario("montezuma", llm="hf:llava-hf/llava-v1.6-mistral-7b-hf",
                           llm_kwargs={"load_in_4bit": True}, language="Japanese")   # the seed's VLM

With a text model the LLM reads the state in words (`WithText`); with an image-text model it reads the
frame itself, as the seed did. The Q-network is the seed's two-input network: the image through the
Atari conv stack, the LLM vector beside it (llmrl's Dict encoder), then an MLP head.

This module sits above roles and agents (it uses both), at the level of the CLI.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym

from llmrl.errors import ConfigError

__all__ = ["SeedScenario", "SEED_SCENARIOS", "ScenarioResult", "seed_scenario", "scenario_env"]


@dataclass(frozen=True)
class SeedScenario:
    """One of the seed's experiments."""

    env_id: str
    """Environment id for `llmrl.make`."""
    prompt: str
    """The question asked about every state (the seed's wording)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor arguments (the seed's Atari settings)."""
    image_obs: bool = False
    """The seed's `observation_mode="image"`: the rendered frame, 84x84 grey, is the observation."""
    total_timesteps: int = 10_000
    """The short default training budget."""
    every: int = 1
    """LLMFeatures recomputes at most every `every` steps (Atari states rarely repeat exactly)."""
    dqn: dict[str, Any] = field(default_factory=dict)
    """DQN settings on top of the seed's recipe (llmrl's DQN defaults)."""
    gif_steps: int = 100
    """Decisions shown in the GIF."""


SEED_SCENARIOS: dict[str, SeedScenario] = {
    "grid": SeedScenario(
        "llmrl/Grid-v0",
        "Please tell me in 200 characters where the cat should move next.",
        image_obs=True,
        total_timesteps=10_000,
        dqn={"learning_starts": 500, "exploration_fraction": 0.3},
        gif_steps=30,
    ),
    "breakout": SeedScenario(
        "ALE/Breakout-v5",
        "Please tell me in 200 characters whether it is better to move the bar to the left or right.",
        total_timesteps=10_000,
        every=8,  # Atari texts rarely repeat: every=8 keeps LLMFeatures >= 100x faster than naive generation
        dqn={"buffer_size": 20_000, "train_freq": 4, "learning_starts": 1000},
        gif_steps=200,
    ),
    "montezuma": SeedScenario(
        "ALE/MontezumaRevenge-v5",
        "What should I do first in this image? Please answer in 200 characters.",
        # the seed's settings; with llmrl's Atari preprocessing frameskip is the wrapper's action repeat
        env_kwargs={"frameskip": 9, "repeat_action_probability": 0.0, "full_action_space": False},
        total_timesteps=10_000,
        every=8,  # Atari texts rarely repeat: every=8 keeps LLMFeatures >= 100x faster than naive generation
        dqn={"buffer_size": 20_000, "train_freq": 4, "learning_starts": 1000},
        gif_steps=200,
    ),
}


@dataclass
class ScenarioResult:
    """What `seed_scenario` made."""

    agent: Any
    env: gym.Env
    run_dir: Path
    gif: Path | None
    metrics: dict[str, float]
    """The LLMFeatures counters (calls, hits, hit rate, seconds)."""


def scenario_env(
    name: str, llm: Any, *, source: str | None = None, prompt: str | None = None
) -> tuple[gym.Env, SeedScenario, str]:
    """The training env of scenario `name` wrapped in `LLMFeatures`, its settings, and the source used."""
    from llmrl.envs import ImageObservation, WithText, make
    from llmrl.roles.features import LLMFeatures

    if name not in SEED_SCENARIOS:
        raise ConfigError(f"unknown seed scenario {name!r}; choose one of {sorted(SEED_SCENARIOS)}")
    sc = SEED_SCENARIOS[name]
    source = source or ("image" if "images" in getattr(llm, "capabilities", ()) else "text")
    env: Any = make(sc.env_id, render_mode="rgb_array", **sc.env_kwargs)  # one env: a gymnasium.Env
    if source == "text":
        env = WithText(env)
    if sc.image_obs:
        env = ImageObservation(env, size=84, grey=True)
    features = LLMFeatures(env, llm, prompt=prompt or sc.prompt, source=source, every=sc.every)  # type: ignore[arg-type]
    return features, sc, source


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
    """Train DQN + LLMFeatures on one of the seed's scenarios ("grid", "breakout", "montezuma"), write
    the learning curve and a GIF with the LLM's advice and the Q-values into `run_dir`.

    llm: an LLM spec ("embedded", "hf:<LLaVA-NeXT path>", "openai:<model>") or an LLM object.
    llm_kwargs: backend options for a spec (e.g. `{"load_in_4bit": True}` for the seed's 7B VLM).
    source: "text" (state in words) or "image" (the frame); default: "image" if the model takes images.
    language: the advice in the GIF is asked for in this language (e.g. "Japanese", as the seed showed).
    cache: the persistent LLM cache (True = the default path; a path; False = none).
    dqn: DQN settings on top of the scenario's.
    """
    import llmrl.llm
    from llmrl.agents.dqn import DQN
    from llmrl.render import save_gif
    from llmrl.roles.advice import Advisor
    from llmrl.training import plot_learning_curve

    if name not in SEED_SCENARIOS:
        raise ConfigError(f"unknown seed scenario {name!r}; choose one of {sorted(SEED_SCENARIOS)}")
    if isinstance(llm, str):
        llm = llmrl.llm.load(llm, cache=cache if cache is not False else None, **(llm_kwargs or {}))
    env: Any
    env, sc, source = scenario_env(name, llm, source=source, prompt=prompt)
    steps = total_timesteps if total_timesteps is not None else sc.total_timesteps
    run = Path(run_dir) if run_dir is not None else Path("runs") / f"seed-{name}"
    agent = DQN(env, seed=seed, **{**sc.dqn, **(dqn or {})})
    agent.learn(steps, progress_bar=progress_bar, run_dir=run)
    with contextlib.suppress(Exception):  # too few episodes for a curve is not a failure of the run
        plot_learning_curve(run, title=f"{name}: DQN + LLMFeatures ({llm.name})")
    gif_path = None
    if gif:
        advise = Advisor(llm, prompt or sc.prompt, env=env, source=source, language=language,  # type: ignore[arg-type]
                         max_tokens=advice_tokens)  # fmt: skip
        gif_path = save_gif(agent, env, run / f"{name}.gif", max_steps=gif_steps or sc.gif_steps,
                            annotate=advise, seed=seed)  # fmt: skip
    return ScenarioResult(agent, env, run, gif_path, env.llmrl_metrics())
