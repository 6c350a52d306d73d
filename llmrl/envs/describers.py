"""Which describer puts an env's states into words: one per family (`llmrl.envs.families`), plus any the
user registers.

    d = describer_for(env)                               # the family's describer, fresh
    register_describer(MyEnv, lambda env: MyDescriber())  # teach it another family
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym

from llmrl.envs.families import family_of
from llmrl.envs.text import (
    AcrobotDescriber,
    CartPoleDescriber,
    Describer,
    GridDescriber,
    MountainCarDescriber,
    PendulumDescriber,
)
from llmrl.envs.text_atari import AtariDescriber
from llmrl.envs.text_minigrid import MiniGridDescriber
from llmrl.errors import ConfigError

__all__ = ["describer_for", "register_describer"]

_Factory = Callable[[Any], Describer]
_REGISTERED: list[tuple[Callable[[Any], bool], _Factory]] = []

# family -> a describer for `env.unwrapped` of that family
_BUILT_IN: dict[str, _Factory] = {
    "grid": GridDescriber,
    "minigrid": lambda base: MiniGridDescriber(),
    "atari": AtariDescriber,
    # classic control: the describers read the observation alone (so native vector envs work too)
    "cartpole": lambda base: CartPoleDescriber(),
    "acrobot": lambda base: AcrobotDescriber(),
    "mountaincar": lambda base: MountainCarDescriber(),
    "pendulum": lambda base: PendulumDescriber(),
}


def register_describer(match: type | Callable[[Any], bool], factory: _Factory) -> None:
    """Teach `describer_for` a new family: `match` is an env class (of `env.unwrapped`) or a predicate.
    Registered describers are tried before the built-in ones."""
    pred = (lambda env: isinstance(env.unwrapped, match)) if isinstance(match, type) else match
    _REGISTERED.insert(0, (pred, factory))


def describer_for(env: gym.Env | gym.vector.VectorEnv) -> Describer:
    """A fresh describer for `env` (a gymnasium.Env; or a native vector env whose describer reads the
    observation alone, such as CartPole's). Raises ConfigError for families without one."""
    for pred, factory in _REGISTERED:
        if pred(env):
            return factory(env)
    base: Any = env.unwrapped
    built_in = _BUILT_IN.get(family_of(env))
    if built_in is None:
        raise ConfigError(
            f"No describer for {type(base).__name__} (spec {getattr(env.spec, 'id', None)!r}). Supported: llmrl "
            "Grid, MiniGrid/BabyAI, Atari (via OCAtari), CartPole, Acrobot, MountainCar, Pendulum; teach it "
            "another with llmrl.envs.register_describer(EnvClass, factory)."
        )
    return built_in(base)
