"""Beyond one machine, on Ray: rollout workers, one shared LLM server, the learner on the driver.

The split every large system with a model in the loop uses (Sample Factory, SEED RL, lamorel, verl):

    driver: the learner (llmrl's PPO) ──── weights ────▶ N rollout workers (Ray actors, each a vector
                                      ◀── one chunk ───  env with its role wrappers)
    the workers' roles ── LLM calls ──▶ one LLMServer actor: batches the calls of all workers into one
                                        backend call, de-duplicates them, sits behind the persistent cache

    from llmrl.distributed import DistributedPPO, LLMServer
    server = LLMServer("embedded", cache="runs/llm.sqlite")
    llm = server.client()                       # an object of the LLM protocol; roles take it unchanged

    def make_env():                             # runs inside each worker
        return LLMFeatures(llmrl.make("llmrl/Grid-v0", num_envs=8), llm)

    trainer = DistributedPPO(make_env, workers=4, seed=0, n_steps=128)
    agent = trainer.learn(200_000, run_dir="runs/grid")   # a plain llmrl.PPO: save, load, evaluate locally
    trainer.close(); server.close()

Instead of the actor, the workers' roles may call an external OpenAI-compatible server (vLLM, llama.cpp
server) directly: build `llmrl.llm.load("openai:<model>", base_url=...)` inside `make_env`; or put the
actor in front of it (`LLMServer("openai:<model>", base_url=...)`) to share one cache and batch.

Data moves in chunks: each worker returns one whole rollout (n_steps x its envs) per iteration, so a
synchronous Ray call (~0.5 ms) is paid once per chunk, not per step. PPO stays on-policy: every chunk
of an iteration comes from the weights the learner just sent.

Faults: a worker that dies mid-rollout is replaced by a fresh one (new env seeds) and its rollout is
collected again with the same weights; the dead worker's partial rollout never reaches the learner, so
no step is counted twice. The LLM server actor is restarted by Ray and its in-flight calls retried
(every call is idempotent: same input, same answer); answers are committed to the SQLite cache before
they are returned, so a restart loses none. Checkpoints are ordinary `llmrl.PPO` checkpoints: a
distributed run resumes on one machine (`PPO.load(dir, env)`) and a local one distributed
(`DistributedPPO.load(dir, make_env, workers=N)`); the workers' env states are not saved (they reset).

RLlib can train on the roles directly; `for_rllib(env)` flattens the observation to the float32 Box its
default models expect (a Discrete observation becomes one-hot).
"""

from __future__ import annotations

import asyncio
import hashlib
import operator
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch

from llmrl.agents.base import space_to_data_eq
from llmrl.agents.ppo import PPO, CustomActorCritic, Rollout
from llmrl.errors import ConfigError, LLMRLError, optional_import
from llmrl.llm.base import LLM, CallStats, Image
from llmrl.llm.common import Backend, check_feature_args, check_images, image_digest
from llmrl.nets import copy_obs_, empty_obs_storage, tree_map
from llmrl.training import RunLogger, collect_env_metrics

__all__ = [
    "DistributedPPO",
    "DistributedError",
    "LLMServer",
    "RemoteLLM",
    "FixedLatencyLLM",
    "for_rllib",
    "init",
    "shutdown",
]


class DistributedError(LLMRLError):
    """A distributed run cannot go on (e.g. a rollout worker keeps dying as soon as it starts)."""


EnvFn = Callable[[], Any]
"""Builds one worker's env (a gymnasium Env or VectorEnv, role wrappers included); runs in the worker."""


def _ray() -> Any:
    return optional_import("ray", "ray")


def init(address: str | None = None, *, num_cpus: int | None = None, **kwargs: Any) -> bool:
    """Connect to Ray at `address` ("auto" or "ray://host:10001"), or start a local Ray with `num_cpus`
    CPUs when address is None. Does nothing if Ray is already up in this process. Returns whether this
    call connected (so the caller knows to `shutdown()`)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    if address is None:
        kwargs.setdefault("num_cpus", num_cpus)
        # a local Ray's workers import llmrl from the driver's path (a source checkout wins over an
        # installed copy); a cluster's nodes have their own install (or pass runtime_env=...)
        if os.environ.get("PYTHONPATH"):
            kwargs.setdefault("runtime_env", {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
    kwargs.setdefault("include_dashboard", False)
    kwargs.setdefault("logging_level", "warning")
    ray.init(address=address, **kwargs)
    return True


def shutdown() -> None:
    """Stop this process's connection to Ray (and the local Ray it started, with all actors)."""
    ray = _ray()
    if ray.is_initialized():
        ray.shutdown()


# -- the LLM server: one actor, batched across workers ---------------------------------------------------


class FixedLatencyLLM(Backend):
    """A stand-in for a served model: every call takes `latency` seconds whatever its batch size (what a
    GPU server looks like to a client), and answers deterministically from a hash of each input.

    For measuring batching and faults without a model; its answers mean nothing.
    """

    capabilities = frozenset({"generate", "score", "embed", "features"})

    def __init__(self, latency: float = 0.05, dim: int = 16):
        super().__init__()
        if latency < 0 or dim < 1:
            raise ConfigError(f"FixedLatencyLLM(latency={latency}, dim={dim}): use latency >= 0 and dim >= 1")
        self.latency, self.dim = float(latency), int(dim)
        self.name = f"fixed-latency:{latency:g}s"
        self.model_calls = 0
        """Backend calls (one per batch), the quantity batching reduces."""

    def _vec(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)

    def _wait(self, n: int) -> None:
        with self._count(n):
            if self.latency > 0:  # sleep(0) still yields the core, which costs on a busy machine
                time.sleep(self.latency)
        self.model_calls += 1

    def generate(self, prompts, *, max_tokens=32, temperature=0.0, stop=None, images=None) -> list[str]:
        self._wait(len(prompts))
        return [f" {int(abs(self._vec(p)[0]) * 1000) % 97}" for p in prompts]  # same in every process

    def score(self, prompt: str, continuations: Sequence[str]) -> np.ndarray:
        self._wait(len(continuations))
        return np.array([float(self._vec(prompt + c)[0]) for c in continuations])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self._wait(len(texts))
        v = np.stack([self._vec(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True).clip(1e-6)

    def features(self, prompts, *, images=None, kind="hidden", tokens=None) -> np.ndarray:
        toks = check_feature_args(kind, tokens)
        self._wait(len(prompts))
        d = len(toks) if kind == "logits" else self.dim
        return np.stack([self._vec(p)[:d] for p in prompts]) if prompts else np.zeros((0, d), np.float32)


@dataclass
class _Request:
    """One client call waiting in the server's queue."""

    client: str
    group: tuple  # requests with equal groups are merged into one backend call
    items: list  # the inputs, each hashable through _item_key
    future: asyncio.Future
    arrived: float


def _item_key(item: Any) -> Any:
    """A hashable identity of one input (an image by the digest of its pixels)."""
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], np.ndarray):
        return (item[0], image_digest(item[1]))
    return item


class _LLMServerActor:
    """The Ray actor behind `LLMServer` (async: it keeps accepting calls while the backend runs)."""

    def __init__(self, llm: str | Callable[[], LLM], cache: Any, backend_kwargs: dict, max_wait_s: float,
                 max_batch: int, active_window_s: float):  # fmt: skip
        import llmrl.llm

        backend = llmrl.llm.load(llm, **backend_kwargs) if isinstance(llm, str) else llm()
        # cache=None: no cache (every call reaches the model); a path: the persistent cache, which is
        # what makes a restart lose no answer (each answer is committed before it is returned)
        self.llm = backend if cache is None else llmrl.llm.load(backend, cache=cache)
        self.max_wait_s, self.max_batch, self.active_window_s = max_wait_s, max_batch, active_window_s
        self.queue: list[_Request] = []
        self.last_seen: dict[str, float] = {}
        self.counts = dict.fromkeys(("requests", "inputs", "unique", "batches", "backend_calls"), 0)
        self.started = time.time()
        # one thread: backends such as llama.cpp must not run two calls at once
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.arrived: asyncio.Event | None = None
        self.dispatcher: asyncio.Task | None = None

    async def identity(self) -> tuple[str, frozenset[str]]:
        return self.llm.name, frozenset(self.llm.capabilities)

    async def stats(self) -> dict[str, float]:
        s = getattr(self.llm, "stats", CallStats())
        out = {f"server/{k}": float(v) for k, v in self.counts.items()}
        out.update({"server/cache_hits": float(s.hits), "server/model_inputs": float(s.misses),
                    "server/model_seconds": float(s.seconds), "server/started": self.started})  # fmt: skip
        return out

    async def call(self, client: str, op: str, group: tuple, items: list) -> list:
        loop = asyncio.get_running_loop()
        if self.dispatcher is None:
            self.arrived = asyncio.Event()
            self.dispatcher = loop.create_task(self._dispatch())
        req = _Request(client, (op, *group), items, loop.create_future(), time.monotonic())
        self.queue.append(req)
        self.last_seen[client] = req.arrived
        self.counts["requests"] += 1
        self.counts["inputs"] += len(items)
        self.arrived.set()  # type: ignore[union-attr]
        return await req.future

    def _ready(self) -> float:
        """0 when the queue should go to the backend now, else how long at most to wait for more."""
        now = time.monotonic()
        wait = self.queue[0].arrived + self.max_wait_s - now
        if wait <= 0 or sum(len(r.items) for r in self.queue) >= self.max_batch:
            return 0.0
        # every client active lately has a call waiting: nobody else is coming, go
        active = {c for c, t in self.last_seen.items() if now - t < self.active_window_s}
        return 0.0 if active <= {r.client for r in self.queue} else wait

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        arrived: asyncio.Event = self.arrived  # type: ignore[assignment]
        while True:
            await arrived.wait()
            while (wait := self._ready()) > 0:
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), timeout=wait)
                except asyncio.TimeoutError:
                    break
            arrived.clear()
            batch, self.queue = self.queue, []
            if not batch:
                continue
            self.counts["batches"] += 1
            results = await loop.run_in_executor(self.pool, self._serve, batch)
            for req, res in zip(batch, results):
                if not req.future.done():
                    if isinstance(res, BaseException):
                        req.future.set_exception(res)
                    else:
                        req.future.set_result(res)
            if self.queue:
                arrived.set()

    def _serve(self, batch: list[_Request]) -> list[Any]:
        """One backend call per group of compatible requests, each input sent once."""
        out: list[Any] = [None] * len(batch)
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(batch):
            groups.setdefault(req.group, []).append(i)
        for group, idx in groups.items():
            unique: dict[Any, int] = {}
            for i in idx:
                for item in batch[i].items:
                    unique.setdefault(_item_key(item), len(unique))
            firsts: list[Any] = [None] * len(unique)
            for i in idx:
                for item in batch[i].items:
                    firsts[unique[_item_key(item)]] = item
            self.counts["unique"] += len(unique)
            self.counts["backend_calls"] += 1
            try:
                answers = self._run(group, firsts)
            except Exception as e:  # noqa: BLE001 - the callers get the backend's own error
                for i in idx:
                    out[i] = e
                continue
            for i in idx:
                mine = [answers[unique[_item_key(item)]] for item in batch[i].items]
                # vectors go back as one (n, d) array: one buffer to send instead of n small objects
                out[i] = np.stack(mine) if group[0] in ("embed", "features") and mine else mine
        return out

    def _run(self, group: tuple, items: list) -> list:
        op, *params = group
        if op == "embed":
            return list(np.asarray(self.llm.embed(items), dtype=np.float32))
        if op == "score":
            (prompt,) = params
            return [float(x) for x in self.llm.score(prompt, items)]
        prompts = [p for p, _ in items]
        images = [im for _, im in items]
        has_images = any(im is not None for im in images)
        if op == "generate":
            max_tokens, temperature, stop = params
            return list(self.llm.generate(prompts, max_tokens=max_tokens, temperature=temperature,
                                          stop=list(stop) or None, images=images if has_images else None))  # fmt: skip
        kind, tokens = params
        feats = self.llm.features(prompts, images=images if has_images else None, kind=kind,
                                  tokens=list(tokens) if tokens is not None else None)  # fmt: skip
        return list(np.asarray(feats, dtype=np.float32))


_HOST = socket.gethostname()


class RemoteLLM:
    """An object of the LLM protocol whose calls go to an `LLMServer` actor. Picklable: the same object
    is shipped inside `make_env` to every worker, and each process calls the one server.

    `stats` counts this process's inputs and the seconds it waited; cache hits are counted by the server
    (`LLMServer.stats()`), where the cache is.
    """

    def __init__(self, actor: Any, name: str, capabilities: frozenset[str]):
        self._actor = actor
        self.name = name
        self.capabilities = capabilities
        self.stats = CallStats()

    def __repr__(self) -> str:
        return f"<RemoteLLM {self.name} can {sorted(self.capabilities)}>"

    def __getstate__(self) -> dict:
        return {"_actor": self._actor, "name": self.name, "capabilities": self.capabilities}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.stats = CallStats()

    def _call(self, op: str, group: tuple, items: list) -> Any:
        ray = _ray()
        t0 = time.perf_counter()
        client = f"{_HOST}:{os.getpid()}:{threading.get_ident()}"  # the server waits for each active client
        out = ray.get(self._actor.call.remote(client, op, group, items))
        self.stats.calls += len(items)
        self.stats.seconds += time.perf_counter() - t0
        return out

    def generate(self, prompts: Sequence[str], *, max_tokens: int = 32, temperature: float = 0.0,
                 stop: Sequence[str] | None = None, images: Sequence[Image | None] | None = None) -> list[str]:  # fmt: skip
        prompts = list(prompts)
        items = list(zip(prompts, check_images(images, len(prompts))))
        return self._call("generate", (max_tokens, float(temperature), tuple(stop or ())), items)

    def score(self, prompt: str, continuations: Sequence[str]) -> np.ndarray:
        return np.asarray(self._call("score", (prompt,), list(continuations)), dtype=np.float64)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = self._call("embed", (), list(texts))
        return np.array(out, dtype=np.float32) if len(out) else np.zeros((0, 0), np.float32)

    def features(self, prompts: Sequence[str], *, images: Sequence[Image | None] | None = None,
                 kind: Literal["hidden", "logits"] = "hidden", tokens: Sequence[str] | None = None) -> np.ndarray:  # fmt: skip
        prompts = list(prompts)
        toks = check_feature_args(kind, tokens)
        items = list(zip(prompts, check_images(images, len(prompts))))
        out = self._call("features", (kind, tuple(toks) if kind == "logits" else None), items)
        return np.array(out, dtype=np.float32) if len(out) else np.zeros((0, 0), np.float32)


class LLMServer:
    """One Ray actor serving an LLM to every rollout worker.

    Calls that arrive while the backend is busy, or within `max_wait_s` of each other, go to the
    backend as one batched call, each distinct input once; the call goes out early as soon as every
    client seen in the last `active_window_s` seconds has a call waiting. The backend sits behind the
    persistent cache, so identical calls over the whole run reach the model once.

    llm: an LLM spec ("embedded", "hf:<model>", "openai:<model>", ...) built inside the actor, or a
        zero-argument function returning an LLM object (it is pickled to the actor).
    cache: the SQLite cache path (True: `llmrl.llm.default_cache_path()`), or None for no cache. Only a
        file cache survives a restart of the actor.
    num_cpus, num_gpus: the actor's Ray resources (put it on the GPU node with num_gpus=1).
    backend_kwargs: passed to the backend's constructor (spec strings only).
    """

    def __init__(self, llm: str | Callable[[], LLM] = "embedded", *, cache: str | Path | bool | None = True,
                 max_wait_s: float = 0.02, max_batch: int = 512, active_window_s: float = 1.0,
                 num_cpus: float = 1.0, num_gpus: float = 0.0, ray_address: str | None = None,
                 **backend_kwargs: Any):  # fmt: skip
        if not (isinstance(llm, str) or callable(llm)):
            raise ConfigError(f"llm={llm!r} must be an LLM spec string or a function returning an LLM")
        if not isinstance(llm, str) and backend_kwargs:
            raise ConfigError(
                f"backend options {sorted(backend_kwargs)} only apply when llm is a spec string"
            )
        if cache is True:
            from llmrl.llm import default_cache_path

            cache = default_cache_path()
        if cache is False or cache == ":memory:":
            raise ConfigError(
                f"cache={cache!r} would not survive a restart of the server; pass a file path, or None for no cache"
            )
        for name, v in (("max_wait_s", max_wait_s), ("active_window_s", active_window_s)):
            if not v >= 0:
                raise ConfigError(f"{name}={v!r} is invalid: use a number of seconds >= 0")
        if not (isinstance(max_batch, int) and max_batch > 0):
            raise ConfigError(f"max_batch={max_batch!r} is invalid: use a positive int")
        init(ray_address)
        ray = _ray()
        # max_restarts / max_task_retries: Ray brings a dead server back and re-sends the calls in flight
        actor_cls = ray.remote(_LLMServerActor).options(
            max_restarts=-1, max_task_retries=-1, max_concurrency=1000, num_cpus=num_cpus, num_gpus=num_gpus
        )
        self.actor = actor_cls.remote(llm, None if cache is None else str(cache), backend_kwargs,
                                      max_wait_s, max_batch, active_window_s)  # fmt: skip
        self.name, self.capabilities = ray.get(self.actor.identity.remote())

    def client(self) -> RemoteLLM:
        """An LLM-protocol object calling this server; give it to the roles inside `make_env`."""
        return RemoteLLM(self.actor, self.name, self.capabilities)

    def stats(self) -> dict[str, float]:
        """Counters since the actor (last) started: requests, inputs, unique inputs, batches, backend
        calls, cache hits, inputs and seconds in the model; `server/started` is its start time."""
        return dict(_ray().get(self.actor.stats.remote()))

    def kill(self) -> None:
        """Kill the actor as a crash would; Ray restarts it (for fault tests)."""
        _ray().kill(self.actor, no_restart=False)

    def close(self) -> None:
        if _ray().is_initialized():
            _ray().kill(self.actor, no_restart=True)

    def __enter__(self) -> LLMServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- rollout workers and the learner ---------------------------------------------------------------------


class _RolloutWorker:
    """A Ray actor: one vector env (with its roles) and a copy of the policy that collects rollouts."""

    def __init__(self, make_env: EnvFn, config: dict, seed: int, policy: torch.nn.Module | None):
        torch.set_num_threads(1)  # many workers share a node's cores
        self.agent = PPO(make_env(), seed=seed, policy=policy, **config)
        self.agent._reset_env()

    def spaces(self) -> tuple[gym.Space, gym.Space, int]:
        return self.agent.observation_space, self.agent.action_space, self.agent.num_envs

    def rollout(self, weights: dict[str, np.ndarray]) -> dict[str, Any]:
        """One rollout with `weights`, as numpy arrays, plus the episodes that ended and the roles' metrics."""
        t0, cpu0 = time.perf_counter(), time.process_time()
        agent = self.agent
        agent.model.load_state_dict(
            {k: torch.tensor(v) for k, v in weights.items()}
        )  # copies: Ray's are read-only
        start = agent.num_timesteps
        r = agent._collect()
        episodes = [(step - start, ret, length) for step, ret, length in agent._finished]
        agent._finished.clear()
        return {
            "rollout": Rollout(*(tree_map(_to_numpy, x) for x in r)),
            "steps": agent.num_timesteps - start,
            "episodes": episodes,
            "metrics": collect_env_metrics(agent.env),
            "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - cpu0,
        }


def _to_numpy(x: Any) -> Any:
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else x


# counters that add up over workers; every other metric is averaged
_SUMMED = {"steps", "calls", "hits", "misses", "reused", "memo_hits", "cache_hits", "seconds", "tokens",
           "fallbacks", "goals", "achieved"}  # fmt: skip


def _merge_metrics(per_worker: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in {k for m in per_worker for k in m}:
        vals = [m[key] for m in per_worker if key in m]
        out[key] = float(np.sum(vals) if key.rsplit("/", 1)[-1] in _SUMMED else np.mean(vals))
    return out


@dataclass
class _Faults:
    worker_restarts: int = 0


class DistributedPPO:
    """llmrl's PPO with its rollouts collected by `workers` Ray actors; the update runs on the driver.

    make_env: a zero-argument function building one worker's env (single or vector env, roles
        included); it is pickled to the workers, so build LLMs inside it or use an `LLMServer.client()`.
    workers: rollout workers. Each iteration gathers n_steps x (envs per worker) x workers steps.
    worker_cpus: Ray CPUs reserved per worker (fractions let many workers that mostly wait on the
        LLM share a core); None: 1, or less when the cluster has fewer CPUs than workers.
    ray_address: an existing cluster ("auto", "ray://head:10001"); None starts a local Ray.
    max_restarts: replacements of one worker within one iteration before the run gives up.
    seed, policy, device, **config: as `llmrl.PPO` (device is the learner's; workers act on CPU).
    """

    def __init__(self, make_env: EnvFn, *, workers: int = 2, seed: int = 0, policy: torch.nn.Module | None = None,
                 device: str | torch.device = "cpu", worker_cpus: float | None = None,
                 ray_address: str | None = None, max_restarts: int = 3, _agent: PPO | None = None,
                 **config: Any):  # fmt: skip
        if not callable(make_env):
            raise ConfigError(
                f"make_env={make_env!r} must be a function that builds the env (it runs in each worker), "
                "e.g. lambda: llmrl.make('CartPole-v1', num_envs=8)"
            )
        if not (isinstance(workers, int) and not isinstance(workers, bool) and workers > 0):
            raise ConfigError(f"workers={workers!r} is invalid: use a positive int")
        if worker_cpus is not None and not worker_cpus >= 0:
            raise ConfigError(f"worker_cpus={worker_cpus!r} is invalid: use a number >= 0 or None")
        # the learner: validates the config now, before any Ray process starts
        self.agent = _agent if _agent is not None else PPO(
            None, seed=seed, policy=policy, device=device,
            _spaces=(gym.spaces.Box(-1, 1, (1,)), gym.spaces.Discrete(2)), **config,
        )  # fmt: skip
        self.make_env, self.num_workers, self.worker_cpus = make_env, workers, worker_cpus
        self.max_restarts = max_restarts
        self._policy = policy
        self.faults = _Faults()
        init(ray_address)
        if worker_cpus is None:  # all workers must fit at once, or the missing ones would wait forever
            self.worker_cpus = min(1.0, float(_ray().cluster_resources().get("CPU", 1)) / workers)
        self.workers = [self._start_worker(i) for i in range(workers)]
        obs_space, act_space, _ = _ray().get(self.workers[0].spaces.remote())
        if _agent is None:  # now the spaces are known: the real learner
            self.agent = PPO(None, seed=seed, policy=policy, device=device, _spaces=(obs_space, act_space),
                             **config)  # fmt: skip
        elif not (space_to_data_eq(obs_space, _agent.observation_space)
                  and space_to_data_eq(act_space, _agent.action_space)):  # fmt: skip
            self.close()
            raise ConfigError(
                f"make_env builds envs with spaces ({obs_space}, {act_space}) but the agent was trained on "
                f"({_agent.observation_space}, {_agent.action_space}); pass the env the agent was trained on."
            )

    # -- workers --------------------------------------------------------------------------------------

    def _start_worker(self, index: int) -> Any:
        ray = _ray()
        cfg = {f: getattr(self.agent.config, f) for f in self.agent.config.__dataclass_fields__}
        # a replacement worker gets new env seeds: it does not replay the episodes its predecessor began
        seed = self.agent.seed + 1000 * (index + 1) + 1_000_000 * self.faults.worker_restarts
        cls = ray.remote(_RolloutWorker).options(num_cpus=self.worker_cpus, max_restarts=0)
        return cls.remote(self.make_env, cfg, seed, self._policy)

    def _gather(self, weights: Any) -> list[dict[str, Any]]:
        """One chunk from every worker; a worker that dies is replaced and asked again (same weights)."""
        ray = _ray()
        pending = {w.rollout.remote(weights): i for i, w in enumerate(self.workers)}
        chunks: dict[int, dict[str, Any]] = {}
        deaths = [0] * len(self.workers)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            try:
                chunks[i] = ray.get(done[0])
            except ray.exceptions.RayActorError as e:
                # the dead worker's partial rollout is gone with it: nothing of it is counted
                deaths[i] += 1
                if deaths[i] > self.max_restarts:
                    raise DistributedError(
                        f"rollout worker {i} died {deaths[i]} times in one iteration (last: {e}); "
                        "check that make_env works on its own: make_env().reset()"
                    ) from e
                self.faults.worker_restarts += 1
                ray.kill(self.workers[i], no_restart=True)
                self.workers[i] = self._start_worker(i)
                pending[self.workers[i].rollout.remote(weights)] = i
        return [chunks[i] for i in range(len(self.workers))]

    def _merge(self, chunks: list[dict[str, Any]]) -> Rollout:
        """The workers' (T, n_i) rollouts side by side as one (T, sum n_i) rollout on the learner's device."""
        agent, dev = self.agent, self.agent.device
        parts = [c["rollout"] for c in chunks]
        T = parts[0].rewards.shape[0]
        N = sum(p.rewards.shape[1] for p in parts)
        obs = empty_obs_storage(agent.observation_space, (T, N))  # the learner's memory layout
        col = 0
        for p in parts:
            n = p.rewards.shape[1]
            # (T, n, ...): this worker's columns
            dst = tree_map(operator.itemgetter((slice(None), slice(col, col + n))), obs)
            copy_obs_(dst, tree_map(np.array, p.obs))  # np.array: a writable copy of Ray's read-only arrays
            col += n

        def side_by_side(xs: list[np.ndarray], axis: int = 1) -> np.ndarray:
            return np.concatenate(xs, axis=axis)

        def tensor(xs: list[np.ndarray], axis: int = 1) -> torch.Tensor:
            return torch.as_tensor(side_by_side(xs, axis), device=dev)

        return Rollout(
            tree_map(lambda x: x.to(dev), obs),
            tensor([p.actions for p in parts]),
            tensor([p.logps for p in parts]),
            tensor([p.values for p in parts]),
            tensor([p.next_value for p in parts], 0),
            side_by_side([p.rewards for p in parts]),
            side_by_side([p.terminated for p in parts]),
            side_by_side([p.truncated for p in parts]),
            side_by_side([p.valid for p in parts]),
        )

    # -- learning -------------------------------------------------------------------------------------

    def learn(self, total_timesteps: int, *, progress_bar: bool = True,
              callback: Callable[[PPO, dict[str, float]], Any] | None = None,
              run_dir: str | os.PathLike | None = None, checkpoint_every: int | None = None) -> PPO:  # fmt: skip
        """Train until the learner's `num_timesteps` reaches `total_timesteps` (a total, as `PPO.learn`).
        Logs like `PPO.learn` plus `ray/*` timings and `faults/*` counts. Returns the learner, a `PPO`."""
        agent = self.agent
        if not (isinstance(total_timesteps, int) and total_timesteps > 0):
            raise ConfigError(f"total_timesteps={total_timesteps!r} is invalid: pass a positive int")
        if checkpoint_every is not None and run_dir is None:
            raise ConfigError("checkpoint_every needs run_dir (the checkpoint goes to run_dir/checkpoint).")
        ray = _ray()
        logger = RunLogger(run_dir, total_timesteps=total_timesteps, start_step=agent.num_timesteps,
                           progress_bar=progress_bar)  # fmt: skip
        last_ckpt = agent.num_timesteps
        threads = torch.get_num_threads()
        torch.set_num_threads(agent._train_threads())  # as PPO.learn; restored below
        try:
            while agent.num_timesteps < total_timesteps:
                t0 = time.perf_counter()
                agent._anneal_lr(total_timesteps)
                weights = ray.put({k: v.detach().cpu().numpy() for k, v in agent.model.state_dict().items()})
                chunks = self._gather(weights)
                t1 = time.perf_counter()
                rollout = self._merge(chunks)
                for c in chunks:  # the steps of accepted chunks, and nothing else, count
                    for offset, ret, length in c["episodes"]:
                        logger.episode(agent.num_timesteps + offset, ret, length)
                    agent.num_timesteps += c["steps"]
                metrics = agent._train_on(rollout)
                agent._check_training(metrics)  # a non-finite loss or weight stops the run, as in PPO.learn
                t2 = time.perf_counter()
                metrics.update(_merge_metrics([c["metrics"] for c in chunks]))
                slowest = max(c["seconds"] for c in chunks)
                metrics.update({
                    "ray/rollout_s": t1 - t0, "ray/worker_s": slowest, "ray/overhead_s": t1 - t0 - slowest,
                    "ray/train_s": t2 - t1, "ray/chunks": float(len(chunks)),
                    "ray/rows": float(rollout.rewards.size),
                    "ray/worker_cpu_s": sum(c["cpu_seconds"] for c in chunks),
                    "faults/worker_restarts": float(self.faults.worker_restarts),
                })  # fmt: skip
                logger.log(agent.num_timesteps, metrics)
                if checkpoint_every is not None and agent.num_timesteps - last_ckpt >= checkpoint_every:
                    agent.save(Path(run_dir) / "checkpoint")  # type: ignore[arg-type]
                    last_ckpt = agent.num_timesteps
                if callback is not None and callback(agent, metrics) is False:
                    break
        finally:
            logger.close()
            torch.set_num_threads(threads)
        return agent

    # -- checkpoints ----------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """An ordinary PPO checkpoint (loadable by `PPO.load` on one machine); the workers' envs are not in it."""
        return self.agent.save(path)

    @classmethod
    def load(cls, path: str | os.PathLike, make_env: EnvFn, *, workers: int = 2,
             policy: torch.nn.Module | None = None, device: str | torch.device = "cpu",
             worker_cpus: float | None = None, ray_address: str | None = None) -> DistributedPPO:  # fmt: skip
        """Continue a PPO checkpoint (from a distributed or a local run) with `workers` rollout workers."""
        return cls.from_agent(PPO.load(path, policy=policy, device=device), make_env, workers=workers,
                              worker_cpus=worker_cpus, ray_address=ray_address)  # fmt: skip

    @classmethod
    def from_agent(cls, agent: PPO, make_env: EnvFn, *, workers: int = 2, worker_cpus: float | None = None,
                   ray_address: str | None = None) -> DistributedPPO:  # fmt: skip
        """Train an existing PPO (its weights, optimizer and step count) with rollout workers."""
        if not isinstance(agent, PPO):
            raise ConfigError(f"agent={agent!r} must be an llmrl.PPO")
        body = agent.model.body if isinstance(agent.model, CustomActorCritic) else None
        return cls(make_env, workers=workers, seed=agent.seed, worker_cpus=worker_cpus, ray_address=ray_address,
                   policy=body, _agent=agent)  # fmt: skip

    def close(self) -> None:
        """Stop the workers (Ray itself stays up; `llmrl.distributed.shutdown()` stops it)."""
        ray = _ray()
        if ray.is_initialized():
            for w in self.workers:
                ray.kill(w, no_restart=True)
        self.workers = []

    def __enter__(self) -> DistributedPPO:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- RLlib ----------------------------------------------------------------------------------------------


def for_rllib(env: gym.Env) -> gym.Env:
    """`env` (an llmrl role wrapper, or any env) with its observation flattened to a float32 Box, what
    RLlib's default models take: a Discrete observation becomes one-hot, a Dict is concatenated."""
    from gymnasium.wrappers import DtypeObservation, FlattenObservation

    space = env.observation_space
    if isinstance(space, gym.spaces.Box) and space.dtype == np.float32 and len(space.shape or ()) == 1:
        return env
    return DtypeObservation(FlattenObservation(env), np.float32)
