"""`make`: one call for any environment id — llmrl's own, Gymnasium's, ALE (Atari) and MiniGrid/BabyAI.

    env = make("CartPole-v1")                 # a gymnasium.Env
    venv = make("ALE/Breakout-v5", num_envs=8)  # a VectorEnv, observations uint8 (8, 4, 84, 84)

Families that live in optional packages are registered with Gymnasium the first time one of their ids is
asked for, so a user never calls `gym.register_envs(ale_py)` or `import minigrid` by hand. Vector envs
always use NEXT_STEP autoreset (Gymnasium's default), which the agents rely on.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
from collections.abc import Callable
from typing import Any

import gymnasium as gym
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv

from llmrl.envs.families import FAMILIES, Family, family_of_id
from llmrl.errors import ConfigError, DependencyNotInstalled, UnknownEnvError

__all__ = [
    "make",
    "ATARI_FRAME_SKIP",
    "ATARI_NOOP_MAX",
    "ATARI_SCREEN_SIZE",
    "ATARI_STACK",
    "is_atari",
]

# The standard Atari preprocessing (Mnih et al. 2015, Machado et al. 2018): random no-op starts, action
# repeat with a max over the last two frames, 84x84 grey, the last 4 frames stacked -> uint8 (4, 84, 84).
ATARI_NOOP_MAX = 30
ATARI_FRAME_SKIP = 4
ATARI_SCREEN_SIZE = 84
ATARI_STACK = 4
_ATARI_ENTRY_POINT = "ale_py.env:AtariEnv"
# Keys the native ALE vector env (ale_py.vector_env.AtariVectorEnv) understands from a spec's kwargs.
_ATARI_VECTOR_KEYS = {"game", "repeat_action_probability", "full_action_space", "max_num_frames_per_episode"}


# The families that live in optional packages (llmrl.envs.families.FAMILIES is the one table).
_OPTIONAL = tuple(f for f in FAMILIES if f.package is not None)


def _register_family(family: Family, *, required: bool) -> bool:
    """Import the family's package and register its ids; False (or DependencyNotInstalled) if missing."""
    try:
        module = importlib.import_module(str(family.package))
    except ImportError as err:
        if not required:
            return False
        raise DependencyNotInstalled(
            f"{family.package} is not installed; it provides the environments named "
            f"{' / '.join(repr(p) for p in family.ids)}. Install it with: pip install 'llmrl[{family.extra}]'"
        ) from err
    gym.register_envs(module)
    return True


MAX_ENVS = 65_536
"""More envs than this in one process do not fit in memory or time; scale out with more processes."""


def _resolve(env_id: str) -> gym.envs.registration.EnvSpec:
    """The registered spec for `env_id`, registering optional families on demand."""
    import llmrl.envs  # noqa: F401  (registers llmrl's own ids)

    if not isinstance(env_id, str) or not env_id:
        raise UnknownEnvError(f"env_id must be a non-empty string such as 'CartPole-v1', got {env_id!r}")
    candidates = (env_id, f"llmrl/{env_id}")
    name = family_of_id(env_id)
    for family in _OPTIONAL:
        if family.name == name:
            _register_family(family, required=True)
    for cand in candidates:
        if cand in gym.registry:
            return gym.registry[cand]
    # Maybe a family id without a telling prefix ("Breakout-v4"): register every installed family and retry.
    for family in _OPTIONAL:
        _register_family(family, required=False)
    for cand in candidates:
        if cand in gym.registry:
            return gym.registry[cand]
    # difflib is quadratic in the id's length: a pasted file must not take minutes to be refused
    close = (
        difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6) if len(env_id) <= 200 else []
    )
    if len(env_id) > 200:
        env_id = env_id[:60] + f"... ({len(env_id)} characters)"
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    missing = [str(f.extra) for f in _OPTIONAL if importlib.util.find_spec(str(f.package)) is None]
    extra = (
        f" (Atari and MiniGrid ids need the extras: pip install 'llmrl[{','.join(missing)}]')"
        if missing
        else ""
    )
    raise UnknownEnvError(f"No environment registered with id {env_id!r}.{hint}{extra}")


def is_atari(env_id: str) -> bool:
    """Whether `env_id` is an ALE (Atari) environment."""
    return _resolve(env_id).entry_point == _ATARI_ENTRY_POINT


def _make_single(spec: gym.envs.registration.EnvSpec, preprocess: bool, kwargs: dict[str, Any]) -> gym.Env:
    if preprocess and family_of_id(spec.id) == "minigrid":
        from llmrl.envs.minigrid import minigrid_env

        return minigrid_env(spec.id, **kwargs)
    if spec.entry_point == _ATARI_ENTRY_POINT and preprocess:
        from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

        kwargs = dict(kwargs)
        # The wrapper repeats the action itself (and max-pools the last two frames), so the ALE env must
        # not skip frames too; a user `frameskip=` is taken as the wrapper's skip.
        frame_skip = int(kwargs.pop("frameskip", ATARI_FRAME_SKIP))
        env = gym.make(spec.id, frameskip=1, **kwargs)
        env = AtariPreprocessing(
            env,
            noop_max=ATARI_NOOP_MAX,
            frame_skip=frame_skip,
            screen_size=ATARI_SCREEN_SIZE,
            terminal_on_life_loss=False,
            grayscale_obs=True,
            scale_obs=False,
        )
        return FrameStackObservation(env, ATARI_STACK)
    return gym.make(spec.id, **kwargs)


def _make_atari_vector(
    spec: gym.envs.registration.EnvSpec, num_envs: int, kwargs: dict[str, Any]
) -> VectorEnv | None:
    """ale_py's C++ vector env with the same preprocessing as `_make_single` (≈2x faster than sync on
    2 cores), or None when a kwarg needs the Python path."""
    settings = {k: v for k, v in spec.kwargs.items() if k in _ATARI_VECTOR_KEYS}
    frame_skip = int(kwargs.get("frameskip", ATARI_FRAME_SKIP))
    rest = {k: v for k, v in kwargs.items() if k != "frameskip"}
    if set(rest) - _ATARI_VECTOR_KEYS:
        return None
    settings.update(rest)
    from ale_py.vector_env import AtariVectorEnv

    # AtariVectorEnv's defaults differ from AtariPreprocessing's (reward clipping, FIRE on reset,
    # sticky actions 0): set them so both paths give the same MDP.
    return AtariVectorEnv(
        num_envs=num_envs,
        frameskip=frame_skip,
        noop_max=ATARI_NOOP_MAX,
        img_height=ATARI_SCREEN_SIZE,
        img_width=ATARI_SCREEN_SIZE,
        grayscale=True,
        stack_num=ATARI_STACK,
        maxpool=True,
        episodic_life=False,
        reward_clipping=False,
        use_fire_reset=False,
        autoreset_mode=AutoresetMode.NEXT_STEP,
        **settings,
    )


def make(env_id: str, num_envs: int = 1, *, preprocess: bool = True, **kwargs: Any) -> gym.Env | VectorEnv:
    """Build `env_id`: a `gymnasium.Env` when `num_envs == 1`, a `VectorEnv` (NEXT_STEP autoreset) otherwise.

    Resolves llmrl ids (`"llmrl/Grid-v0"`, or just `"Grid-v0"`), any Gymnasium id, ALE ids (`"ALE/Pong-v5"`)
    and MiniGrid/BabyAI ids, and gives the observations the agents train on (`preprocess=False`: the env as
    its package builds it). ALE ids: the standard Atari preprocessing (no-op reset ≤ 30, frame skip 4 with
    max-pooling, 84x84 grey, 4 frames stacked → uint8 (4, 84, 84), no terminal on life loss). MiniGrid and
    BabyAI ids: the egocentric view as a flat float vector (147,) (`llmrl.envs.minigrid.minigrid_env`, which
    also takes `oracle=True`); the mission and the state in words come from `llmrl.envs.WithText`.
    `kwargs` go to the environment's constructor. When the id has a native vectorised implementation
    (CartPole, ALE) it is used, otherwise a `SyncVectorEnv`.

    >>> make("CartPole-v1").observation_space.shape
    (4,)
    """
    if not isinstance(num_envs, int) or isinstance(num_envs, bool) or not 1 <= num_envs <= MAX_ENVS:
        raise ConfigError(
            f"num_envs must be an integer from 1 to {MAX_ENVS:,} (envs stepped in one process), got {num_envs!r}"
        )
    if "atari_preprocessing" in kwargs:
        raise ConfigError("make(..., atari_preprocessing=) is now make(..., preprocess=)")
    spec = _resolve(env_id)
    if kwargs.get("render_mode") == "rgb_array" and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        # Off-screen frames on a machine without a display: SDL's dummy video driver, which pygame-drawn
        # envs (classic control) need no more than that; without it SDL prints an XDG_RUNTIME_DIR error.
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    if num_envs == 1 or kwargs:
        try:  # one env first when there are kwargs: a wrong keyword is reported once, by name
            single = _make_single(spec, preprocess, kwargs)
        except TypeError as err:
            if not kwargs:
                raise
            raise ConfigError(
                f"{spec.id} does not take the argument(s) {sorted(kwargs)} ({' '.join(str(err).split())[:160]}); "
                "check their names against the environment's constructor"
            ) from err
        if num_envs == 1:
            return single
        single.close()
    if spec.entry_point == _ATARI_ENTRY_POINT:
        # The native ALE vector env always preprocesses; without preprocessing, sync envs are built below.
        venv = _make_atari_vector(spec, num_envs, kwargs) if preprocess else None
        if venv is not None:
            return venv
    elif spec.vector_entry_point is not None and not spec.additional_wrappers:
        try:
            venv = gym.make_vec(spec.id, num_envs, vectorization_mode="vector_entry_point", **kwargs)
        except TypeError:  # the native vector env does not take one of the kwargs: fall back to sync
            venv = None
        if (
            venv is not None
            and venv.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP) == AutoresetMode.NEXT_STEP
        ):
            return venv
    thunk: Callable[[], gym.Env] = lambda: _make_single(spec, preprocess, kwargs)  # noqa: E731
    return SyncVectorEnv([thunk for _ in range(num_envs)], autoreset_mode=AutoresetMode.NEXT_STEP)
