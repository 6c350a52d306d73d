"""The LLM as the policy (GLAM-style PPO on the embedded Gemma 3 270M, de-quantised through transformers).

Four questions, one sub-command each; every number in RESULTS.md comes from one of these commands.

    python benchmarks/llm_policy.py speed      # training env steps/s: LLMPolicy vs a naive GLAM loop
    python benchmarks/llm_policy.py learn      # zero-shot -> fine-tuned success on a single-room go-to task
    python benchmarks/llm_policy.py gotolocal  # BabyAI-GoToLocal, LLMPolicy vs PPO on the symbolic view
    python benchmarks/llm_policy.py tasks      # BabyAI's five task types, zero-shot vs fine-tuned

`speed` runs both sides in one process on the same model, envs, seeds and PPO settings:
- `llm-policy`: `LLMPolicy` as built (prompt and all actions packed in one sequence, the 17 frozen layers
  cached per distinct state, LoRA on the top layer, the action tokens' output rows only);
- `naive`: GLAM's plain loop on the same model: each (state, action) pair is its own sequence through the
  whole model (padded into one batch per step), full-vocabulary log-softmax, LoRA adapters on every layer
  so gradients flow through all of them, nothing cached.
Both are measured over the same number of PPO iterations from a cold start (the cache starts empty), so
the ratio includes the cache misses a fresh run pays.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata as md
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

import llmrl
from llmrl.agents import PPO
from llmrl.evaluate import evaluate
from llmrl.llm.hf import HFLLM
from llmrl.roles.policy import GLAM_ACTIONS, LLMPolicy, _inject_lora

MACHINE = "2-core AMD EPYC (avx512_bf16, no AMX), machine shared with other jobs"
LEARN_ENV = "BabyAI-GoToRedBallNoDists-v0"
TASKS = {  # BabyAI's five task types (BALROG's set), one single-room level each
    "go to": "BabyAI-GoToLocal-v0",
    "pick up": "BabyAI-PickupLoc-v0",
    "put next to": "BabyAI-PutNextLocal-v0",
    "open/unlock": "BabyAI-UnlockLocal-v0",
    # minigrid has no single-room "pick up X then go to Y" level; SynthLoc mixes instructions incl. sequences
    "pick up then go to (SynthLoc)": "BabyAI-SynthLoc-v0",
}
PPO_SETTINGS = dict(n_steps=32, batch_size=64, n_epochs=2, learning_rate=3e-4, ent_coef=0.01, gamma=0.99,
                    gae_lambda=0.95, clip_range=0.2, max_grad_norm=0.5)  # fmt: skip


def load_llm() -> HFLLM:
    """The embedded GGUF through transformers (de-quantised once, then cached next to the GGUF)."""
    return HFLLM.from_gguf(device="cpu")


# -- the naive GLAM loop, for the speed comparison ----------------------------------------------------------


class NaiveGLAMPolicy(nn.Module):
    """Each (state, action) pair is its own full sequence through every layer; nothing cached.

    Same interface as LLMPolicy (ids -> logits, value) and the same prompt table, so PPO runs unchanged.
    """

    def __init__(self, llm: HFLLM, table: LLMPolicy) -> None:
        super().__init__()
        object.__setattr__(self, "llm", llm)
        object.__setattr__(self, "table", table)
        net = llm.module
        n_layers = len(net.model.layers)
        self.adapters = nn.ParameterList(
            _inject_lora(net, list(range(n_layers)), 8, 16, ("q_proj", "v_proj"))
        )
        d = net.config.hidden_size
        self.value_head = nn.Sequential(nn.Linear(d, 256), nn.Tanh(), nn.Linear(256, 1))
        tok = llm.tokenizer
        self.action_ids = [tok(" " + a, add_special_tokens=False)["input_ids"] for a in table.actions]

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tok, net = self.llm.tokenizer, self.llm.module
        scores, values = [], []
        for k in ids.reshape(-1).tolist():
            p = tok(self.table.texts[int(k)])["input_ids"]
            row = []
            for a in self.action_ids:  # its own forward per action; logits only where they are read
                out = net(
                    input_ids=torch.tensor([p + a]), logits_to_keep=len(a) + 1, output_hidden_states=True
                )
                logp = torch.log_softmax(out.logits[0, :-1].float(), -1)  # (len(a), V)
                row.append(logp[torch.arange(len(a)), torch.tensor(a)].sum())
            scores.append(torch.stack(row))
            values.append(self.value_head(out.hidden_states[-1][0, len(p) - 1]))
        return torch.stack(scores), torch.cat(values)


class FlatSymbolic(gym.ObservationWrapper):
    """MiniGrid's symbolic egocentric view (7, 7, 3) scaled to [0, 1], the direction one-hot, and the
    mission's colour and object words multi-hot (what GoToLocal's mission can name; llmrl's PPO has no
    text encoder, so the instruction reaches it as these 9 numbers)."""

    WORDS = ("red", "green", "blue", "purple", "yellow", "grey", "key", "ball", "box")

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (7 * 7 * 3 + 4 + len(self.WORDS),), np.float32)

    def observation(self, obs: dict) -> np.ndarray:
        direction = np.zeros(4, np.float32)
        direction[int(obs["direction"])] = 1.0
        words = str(obs["mission"]).split()
        mission = np.array([w in words for w in self.WORDS], np.float32)
        return np.concatenate([obs["image"].reshape(-1).astype(np.float32) / 10.0, direction, mission])


# -- helpers ----------------------------------------------------------------------------------------------


def save_cache(policy: LLMPolicy, path: str) -> None:
    """The policy's cached frozen computations, keyed by prompt text (they are exact, so a later run with the
    same model and mode can start from them instead of paying every first visit again)."""
    from safetensors.torch import save_file

    tensors, meta = {}, []
    for key, entry in policy._cache.entries.items():
        parts = []
        for j, x in enumerate(entry):
            if isinstance(x, torch.Tensor):
                tensors[f"{len(meta)}.{j}"] = x.contiguous()
            parts.append(None if isinstance(x, torch.Tensor) else x)
        meta.append([policy.texts[key], parts])
    save_file(tensors, path, metadata={"entries": json.dumps(meta), "mode": policy.train_mode})


def load_cache(policy: LLMPolicy, path: str) -> int:
    from safetensors import safe_open

    if not Path(path).is_file():
        return 0
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["entries"])
        for i, (text, parts) in enumerate(meta):
            entry = tuple(f.get_tensor(f"{i}.{j}") if p is None else p for j, p in enumerate(parts))
            key = policy.texts.intern(text)
            policy._cache.put(key, entry)
            if policy.first_trained == len(policy.stack.layers):  # heads: the states count for the statistics
                policy._count(key, entry[1])
    return len(meta)


def make_policy(llm: HFLLM, **kw: Any) -> LLMPolicy:
    return LLMPolicy(llm, GLAM_ACTIONS, **kw)


def make_env(env_ids: str, num_envs: int, **kw: Any) -> gym.vector.VectorEnv:
    """`num_envs` envs of `env_ids` (comma-separated: the levels take turns across the envs, a mixed task)."""
    ids = env_ids.split(",")
    if len(ids) == 1:
        return llmrl.make(ids[0], num_envs=num_envs, **kw)
    return gym.vector.SyncVectorEnv(
        [lambda i=i: llmrl.make(ids[i % len(ids)], **kw) for i in range(num_envs)]
    )


def success_rate(agent: PPO, env_ids: str, policy: LLMPolicy, n: int, seed: int, deterministic: bool,
                 **kw: Any) -> float:  # fmt: skip
    """Share of `n` episodes that reach the goal (BabyAI: a positive return) with the agent acting."""
    env = policy.wrap(make_env(env_ids, min(n, 8), **kw))
    res = evaluate(agent, env, n_episodes=n, deterministic=deterministic, seed=seed)
    env.close()
    return float(np.mean(np.asarray(res.returns) > 0))


def policy_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"train": args.train, "lora_layers": args.lora_layers, "normalise": args.normalise,
            "frozen_dtype": args.frozen_dtype}  # fmt: skip


def env_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_steps": args.max_steps} if args.max_steps else {}


def episodes(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(run_dir / "episodes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return np.array([int(r["step"]) for r in rows]), np.array([float(r["return"]) > 0 for r in rows])


def rolling(steps: np.ndarray, success: np.ndarray, every: int, window: int = 50) -> list[tuple[int, float]]:
    """Training success over the last `window` episodes, sampled every `every` env steps."""
    out = []
    for s in range(every, int(steps.max(initial=0)) + 1, every):
        done = success[steps <= s][-window:]
        if len(done):
            out.append((s, float(done.mean())))
    return out


def provenance() -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {"machine": MACHINE, "cpu": platform.processor() or platform.machine(), "commit": commit,
            "torch": torch.__version__, "transformers": md.version("transformers"), "peft": md.version("peft"),
            "threads": torch.get_num_threads()}  # fmt: skip


# -- 4. speed ---------------------------------------------------------------------------------------------


def bench_speed(args: argparse.Namespace) -> dict[str, Any]:
    """Real PPO training on both sides, same settings; the naive side runs fewer iterations (a rate)."""
    out: dict[str, Any] = {"env": LEARN_ENV, "num_envs": args.envs, "n_steps": args.n_steps,
                           "n_epochs": 1, "batch_size": args.n_steps * args.envs}  # fmt: skip
    settings = dict(PPO_SETTINGS, n_steps=args.n_steps, batch_size=args.n_steps * args.envs, n_epochs=1)
    for side, iters in (("llm-policy", args.iters), ("naive", args.naive_iters)):
        if side not in args.sides:
            continue
        llm = load_llm()
        # the naive side borrows only the prompt table (and the wrapper) of an adapter-free policy
        policy = make_policy(llm, lora_layers=1) if side == "llm-policy" else make_policy(llm, train="none")
        body: nn.Module = policy if side == "llm-policy" else NaiveGLAMPolicy(llm, policy)
        env = policy.wrap(llmrl.make(LEARN_ENV, num_envs=args.envs))
        agent = PPO(env, policy=body, seed=0, **settings)
        t0 = time.perf_counter()
        agent.learn(args.n_steps * args.envs * iters, progress_bar=False)
        wall = time.perf_counter() - t0
        out[side] = {"iterations": iters, "steps": agent.num_timesteps, "wall_s": round(wall, 1),
                     "steps_per_s": round(agent.num_timesteps / wall, 4)}  # fmt: skip
        if side == "llm-policy":
            out[side].update(policy.metrics())
        print(side, out[side], flush=True)
        env.close()
        del agent, body, policy, llm
    if len(args.sides) == 2:
        out["ratio"] = round(out["llm-policy"]["steps_per_s"] / out["naive"]["steps_per_s"], 1)
    return out


# -- 1. learning on a single-room go-to task ----------------------------------------------------------------


def train_run(env_id: str, seed: int, steps: int, args: argparse.Namespace, run_dir: Path,
              before: Any = None) -> tuple[PPO, LLMPolicy]:  # fmt: skip
    """PPO + LLMPolicy on `env_id`; `before(agent, policy)` runs first (the untrained policy is the zero-shot
    LLM exactly: LoRA's B and the logit head start at zero), sharing the policy's cache."""
    llm = load_llm()
    policy = make_policy(llm, **policy_options(args))
    env = policy.wrap(make_env(env_id, args.envs, **env_options(args)))
    settings = dict(PPO_SETTINGS, n_steps=args.n_steps, learning_rate=args.lr, n_epochs=args.epochs)
    # --resume goes on from a saved agent (its settings, step count and env state) up to `steps` in all
    if args.resume:
        agent = PPO.load(args.resume, env=env, policy=policy)
    else:
        agent = PPO(env, policy=policy, seed=seed, **settings)
    if args.cache_file:
        print("cached states loaded:", load_cache(policy, args.cache_file), flush=True)
    if before is not None:
        before(agent, policy)
    agent.learn(steps, progress_bar=False, run_dir=run_dir)
    if args.cache_file:
        save_cache(policy, args.cache_file)
    return agent, policy


def bench_learn(args: argparse.Namespace) -> dict[str, Any]:
    env_id = args.env
    out: dict[str, Any] = {"env": env_id, "steps": args.steps, "seed": args.seed, "envs": args.envs,
                           "n_steps": args.n_steps, "epochs": args.epochs, "lr": args.lr,
                           **policy_options(args), **env_options(args)}  # fmt: skip
    eval_seed = 1000 + args.seed
    kw = env_options(args)

    def zero_shot(agent: PPO, policy: LLMPolicy) -> None:
        out["zero_shot_sampled"] = success_rate(agent, env_id, policy, args.eval, eval_seed, False, **kw)
        out["zero_shot_greedy"] = success_rate(agent, env_id, policy, args.eval, eval_seed, True, **kw)
        out["zero_shot_metrics"] = policy.metrics()
        print("zero-shot", out, flush=True)

    run_dir = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp()) / "run"
    t0 = time.perf_counter()
    agent, policy = train_run(env_id, args.seed, args.steps, args, run_dir,
                              before=None if args.no_zero_shot or not args.eval else zero_shot)  # fmt: skip
    out["train_wall_s"] = round(time.perf_counter() - t0, 1)
    steps, succ = episodes(run_dir)
    out["training_success"] = rolling(steps, succ, every=max(args.steps // 10, 1))
    if args.eval:
        out["fine_tuned_sampled"] = success_rate(agent, env_id, policy, args.eval, eval_seed, False, **kw)
        out["fine_tuned_greedy"] = success_rate(agent, env_id, policy, args.eval, eval_seed, True, **kw)
    out["metrics"] = policy.metrics()
    if args.save:
        agent.save(args.save)
    return out


# -- 2. GoToLocal beside PPO on the symbolic view -------------------------------------------------------------


def bench_gotolocal(args: argparse.Namespace) -> dict[str, Any]:
    env_id = "BabyAI-GoToLocal-v0"
    out: dict[str, Any] = {"env": env_id, "steps": args.steps, "seeds": args.seeds}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            if not args.symbolic_only:
                _, policy = train_run(env_id, seed, args.steps, args, Path(tmp) / "llm")
                steps, succ = episodes(Path(tmp) / "llm")
                out[f"llm-policy/seed{seed}"] = {"success": rolling(steps, succ, every=max(args.steps // 10, 1)),
                                                 "wall_s": round(time.perf_counter() - t0, 1), **policy.metrics()}  # fmt: skip
            t0 = time.perf_counter()
            venv = gym.vector.SyncVectorEnv(
                [lambda: FlatSymbolic(llmrl.make(env_id, preprocess=False))] * args.envs
            )
            sym = PPO(venv, seed=seed, **dict(PPO_SETTINGS, n_steps=args.n_steps, learning_rate=3e-4))
            sym.learn(args.steps, progress_bar=False, run_dir=Path(tmp) / "sym")
            steps, succ = episodes(Path(tmp) / "sym")
            out[f"symbolic-ppo/seed{seed}"] = {"success": rolling(steps, succ, every=max(args.steps // 10, 1)),
                                               "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
            print(seed, {k: v for k, v in out.items() if str(seed) in k}, flush=True)
    return out


# -- 3. task types, zero-shot vs fine-tuned ---------------------------------------------------------------


def bench_tasks(args: argparse.Namespace) -> dict[str, Any]:
    """Zero-shot on llama.cpp (the embedded GGUF, `score()` only) and, with --checkpoint, the fine-tuned
    agent (transformers); each level capped at --max-steps steps per episode to bound the run."""
    from llmrl.llm import load

    out: dict[str, Any] = {"episodes": args.episodes, "max_steps": args.max_steps, "levels": TASKS}
    kw = env_options(args)
    zs_llm = load("embedded")
    zs = make_policy(zs_llm, train="none")
    for name, env_id in TASKS.items() if not args.tuned_only else ():
        env = zs.wrap(llmrl.make(env_id, num_envs=2, **kw))
        agent = PPO(env, policy=zs, seed=0)
        res = evaluate(agent, env, n_episodes=args.episodes, deterministic=False, seed=2000)
        out[f"zero-shot/{name}"] = float(np.mean(np.asarray(res.returns) > 0))
        print(name, out[f"zero-shot/{name}"], zs.metrics(), flush=True)
    zs_llm.close()
    if args.checkpoint:
        policy = make_policy(load_llm(), **policy_options(args))
        tuned = PPO.load(args.checkpoint, env=policy.wrap(llmrl.make(LEARN_ENV, num_envs=2)), policy=policy)
        for name, env_id in TASKS.items():
            env = policy.wrap(llmrl.make(env_id, num_envs=2, **kw))
            res = evaluate(tuned, env, n_episodes=args.episodes, deterministic=False, seed=2000)
            out[f"fine-tuned/{name}"] = float(np.mean(np.asarray(res.returns) > 0))
            print(name, out[f"fine-tuned/{name}"], policy.metrics(), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("question", choices=("speed", "learn", "gotolocal", "tasks"))
    parser.add_argument("--env", default=LEARN_ENV, help="env id, or ids separated by commas (a mixed task)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--n-steps", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--train", default="lora", choices=("lora", "heads"))
    parser.add_argument("--lora-layers", type=int, default=1)
    parser.add_argument("--normalise", default="sum", choices=("sum", "token", "word"))
    parser.add_argument("--frozen-dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--eval", type=int, default=50, help="evaluation episodes (learn)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task type (tasks)")
    parser.add_argument("--iters", type=int, default=64, help="PPO iterations measured (speed)")
    parser.add_argument("--sides", nargs="+", default=["llm-policy", "naive"], help="speed: sides to run")
    parser.add_argument("--naive-iters", type=int, default=1, help="PPO iterations of the naive loop (speed)")
    parser.add_argument("--tuned-only", action="store_true", help="skip the zero-shot side (tasks)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="episode step cap (tasks: default 64; learn: the level's own)")  # fmt: skip
    parser.add_argument("--checkpoint", default=None, help="fine-tuned agent to evaluate (tasks)")
    parser.add_argument("--save", default=None, help="save the fine-tuned agent here (learn)")
    parser.add_argument(
        "--resume", default=None, help="learn: continue this saved agent up to --steps in all"
    )
    parser.add_argument("--symbolic-only", action="store_true", help="gotolocal: the symbolic PPO side only")
    parser.add_argument("--no-zero-shot", action="store_true", help="learn: skip the zero-shot evaluation")
    parser.add_argument(
        "--cache-file", default=None, help="learn: start from / save the policy's state cache"
    )
    parser.add_argument("--run-dir", default=None, help="training log folder (learn)")
    parser.add_argument("--out", default=None, help="write the result JSON here")
    args = parser.parse_args()
    if args.question == "tasks" and args.max_steps is None:
        args.max_steps = 64
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    fn = {"speed": bench_speed, "learn": bench_learn, "gotolocal": bench_gotolocal, "tasks": bench_tasks}
    result = {"question": args.question, **fn[args.question](args), "provenance": provenance()}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
