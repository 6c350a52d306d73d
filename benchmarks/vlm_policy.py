"""The VLM as the policy (LLaRP-style) against the LLM policy and plain PPO, on a BabyAI go-to task.

    python benchmarks/vlm_policy.py compare --seeds 0 1 --steps 2048   # 1 + 2: learning, held-out missions
    python benchmarks/vlm_policy.py compare --strict --steps 20480     # where the words must be read
    python benchmarks/vlm_policy.py speed                                # 3: what a training step costs

`compare` trains three agents with the same PPO settings, env steps and seeds on BabyAI-GoToLocalS5N2-v0
(a 3x3 room, the target and one distractor; the mission names the target by colour and type), all on the
*training* missions only — six (colour, type) pairs are held out, one per colour, each type twice:
- `pixels` (`VLMPolicy`): the agent's 7x7 view drawn as a 56x56 image -> llmrl's conv stack -> 2 input
  embeddings after "Instruction: <mission>\\nObservation:" in the frozen embedded Gemma 3 270M; action and
  value heads on its last hidden state; PPO trains the encoder and heads through the frozen model;
- `words` (`LLMPolicy(train="heads")`): the state in words (mission + what the agent sees), the same
  frozen model as a prior, PPO trains a logit head and the value head (benchmarks/llm_policy.py's setting);
- `conv`: llmrl's plain PPO on the same 56x56 view (its conv stack) plus the mission's colour and type
  words as a multi-hot vector (what an agent without a language model gets).
and `untrained` (the conv agent before any update: nearly uniform over the three actions) as the floor.
Then each is evaluated (sampled actions) on fresh episodes of the training missions and of the held-out
ones: LLaRP's question is whether the frozen language model carries the policy to instructions it was
not trained on, where the multi-hot input of a held-out pair is a combination the conv net never saw.
Two more evaluations say whether an agent reads the words at all:
- `paraphrased`: every mission in words no agent trained on ("walk up to the crimson sphere");
- `misled`: the mission names the *other* object while success is still judged on the real target — an
  agent that follows the words loses success here, one that ignores them keeps it.
`--strict` ends an episode unrewarded when the agent faces the wrong object (`WrongObjectEnds`), in
training and evaluation: in the plain task going to the nearest object succeeds ~80% of the time, so a
language-blind agent looks good; under `--strict` it gets a coin flip.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import llmrl
from llmrl.agents import PPO
from llmrl.evaluate import evaluate
from llmrl.llm.hf import HFLLM
from llmrl.roles.policy import GLAM_ACTIONS, LLMPolicy
from llmrl.roles.vlm_policy import VLMPolicy, frame_space

sys.path.insert(0, os.path.dirname(__file__))
from llm_policy import episodes, provenance, rolling  # noqa: E402

ENV = "BabyAI-GoToLocalS5N2-v0"
ACTIONS = GLAM_ACTIONS[:3]  # turn left, turn right, go forward: all a go-to task needs
COLOURS = ("red", "green", "blue", "purple", "yellow", "grey")
TYPES = ("ball", "box", "key")
HELD_OUT = {("red", "ball"), ("green", "box"), ("blue", "key"), ("purple", "ball"), ("yellow", "box"),
            ("grey", "key")}  # fmt: skip
PARAPHRASES = {"go to the": "walk up to the", "red": "crimson", "green": "lime", "blue": "navy",
               "purple": "violet", "yellow": "golden", "grey": "silver", "ball": "sphere", "box": "crate"}  # fmt: skip
"""Words no agent trains on, for the paraphrase split (a key stays a key)."""
PPO_SETTINGS = dict(n_steps=16, batch_size=64, n_epochs=2, learning_rate=3e-4, ent_coef=0.01, gamma=0.99,
                    gae_lambda=0.95, clip_range=0.2, max_grad_norm=0.5)  # fmt: skip


def target(mission: str) -> tuple[str, str]:
    """("red", "ball") for "go to the red ball"."""
    words = mission.split()
    return words[-2], words[-1]


class Missions(gym.Wrapper):
    """Only episodes whose mission's (colour, type) is in the chosen split: resets until one is."""

    def __init__(self, env: gym.Env, held_out: bool) -> None:
        super().__init__(env)
        self.held_out = held_out

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        while (target(self.env.unwrapped.mission) in HELD_OUT) != self.held_out:  # type: ignore[attr-defined]
            obs, info = self.env.reset()
        return obs, info


class Paraphrased(gym.Wrapper):
    """The mission in other words (`PARAPHRASES`), set on the env, where every method reads it."""

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        u: Any = self.env.unwrapped
        for old, new in PARAPHRASES.items():
            u.mission = re.sub(rf"\b{old}\b", new, u.mission)
        return obs, info


class Misled(gym.Wrapper):
    """The mission names the other object in the room; success is still judged on the real target. An agent
    that follows the words succeeds less here; one that ignores them succeeds as often as with the truth."""

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        u: Any = self.env.unwrapped
        goal = (u.instrs.desc.color, u.instrs.desc.type)
        others = [(c.color, c.type) for c in u.grid.grid if c is not None and c.type in TYPES]
        other = next((o for o in others if o != goal), goal)
        u.mission = f"go to the {other[0]} {other[1]}"
        return obs, info


class PixelsAndWords(gym.ObservationWrapper):
    """The agent's view as a 56x56 RGB image and the mission's colour and type words multi-hot."""

    WORDS = COLOURS + TYPES

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, (56, 56, 3), np.uint8),
            "words": gym.spaces.Box(0.0, 1.0, (len(self.WORDS),), np.float32),
        })  # fmt: skip

    def observation(self, obs: dict) -> dict:
        u = self.env.unwrapped
        words = set(u.mission.split())  # type: ignore[attr-defined]
        return {"image": u.get_pov_render(tile_size=8),  # type: ignore[attr-defined]
                "words": np.array([w in words for w in self.WORDS], np.float32)}  # fmt: skip


class WrongObjectEnds(gym.Wrapper):
    """Facing the other object ends the episode unrewarded (`--strict`): going to the nearest object is then a
    coin flip, so the words must be read to do better (in the plain task a language-blind agent gets ~0.8)."""

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        u: Any = self.env.unwrapped
        front = u.grid.get(*u.front_pos)
        if (
            not terminated
            and front is not None
            and front.type in TYPES
            and tuple(u.front_pos) not in {tuple(p) for p in u.instrs.desc.obj_poss}
        ):
            terminated = True
        return obs, reward, terminated, truncated, info


class ThreeActions(gym.ActionWrapper):
    """MiniGrid's first three actions only (turn left, turn right, go forward), for every method alike."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.action_space = gym.spaces.Discrete(len(ACTIONS))

    def action(self, action: Any) -> Any:
        return action


def vector_env(
    n: int, held_out: bool = False, words: str = "true", strict: bool = False
) -> gym.vector.SyncVectorEnv:
    """`n` envs of the training missions (or the held-out ones), the mission told as it is (`words="true"`);
    or all missions, `"paraphrased"` (`Paraphrased`) or `"misled"` (`Misled`). `strict`: `WrongObjectEnds`."""

    def one() -> gym.Env:
        env = llmrl.make(ENV)
        if strict:
            env = WrongObjectEnds(env)
        if words != "true":
            return ThreeActions(PixelsAndWords({"paraphrased": Paraphrased, "misled": Misled}[words](env)))
        return ThreeActions(Missions(PixelsAndWords(env), held_out))

    return gym.vector.SyncVectorEnv([one] * n)


def build(method: str, args: argparse.Namespace, seed: int) -> tuple[PPO, Any]:
    """(agent, the wrapping that turns a `vector_env` into the agent's observations)."""
    env = vector_env(args.envs, strict=args.strict)
    settings = dict(PPO_SETTINGS, n_steps=args.n_steps, n_epochs=args.epochs, learning_rate=args.lr)
    if method in ("conv", "untrained"):
        return PPO(env, seed=seed, **settings), lambda e: e
    llm = HFLLM.from_gguf(
        device="cpu"
    )  # fresh per run: the policies change the frozen layers' dtype in place
    if method == "pixels":
        policy: Any = VLMPolicy(llm, ACTIONS, image_shape=frame_space(env).shape, tokens=args.tokens,
                                frozen_dtype=args.dtype, seed=seed)  # fmt: skip
    else:
        policy = LLMPolicy(llm, ACTIONS, train="heads", frozen_dtype=args.dtype, seed=seed)
    return PPO(policy.wrap(env), policy=policy, seed=seed, **settings), policy.wrap


def success(
    agent: PPO, wrap: Any, args: argparse.Namespace, held_out: bool, seed: int, words: str = "true"
) -> dict[str, float]:
    env = wrap(vector_env(8, held_out, words, args.strict))
    n = args.eval
    res = evaluate(agent, env, n_episodes=n, deterministic=False, seed=seed)
    env.close()
    returns = np.asarray(res.returns)
    return {"success": round(float(np.mean(returns > 0)), 3), "return": round(float(returns.mean()), 3)}


def bench_compare(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"env": ENV, "steps": args.steps, "seeds": args.seeds, "envs": args.envs,
                           "ppo": dict(PPO_SETTINGS, n_steps=args.n_steps, n_epochs=args.epochs, learning_rate=args.lr),
                           "held_out": sorted(HELD_OUT), "strict": args.strict, "tokens": args.tokens, "dtype": args.dtype, **provenance()}  # fmt: skip
    for seed in args.seeds:
        for method in args.methods:
            with tempfile.TemporaryDirectory() as tmp:
                agent, wrap = build(method, args, seed)
                t0 = time.perf_counter()
                row: dict[str, Any] = {}
                if (
                    method != "untrained"
                ):  # the conv net before any update: close to uniform over the 3 actions
                    agent.learn(args.steps, progress_bar=False, run_dir=Path(tmp) / "run")
                    wall = time.perf_counter() - t0
                    steps, succ = episodes(Path(tmp) / "run")
                    row = {"train_wall_s": round(wall, 1), "steps_per_s": round(agent.num_timesteps / wall, 2),
                           "load": os.getloadavg()[0],
                           "training_success": rolling(steps, succ, every=max(args.steps // 8, 1))}  # fmt: skip
                body = getattr(agent.model, "body", None)  # the LLM policies' module
                if body is not None:
                    row["metrics"] = {k: round(v, 2) for k, v in body.metrics().items()}
                row["train_missions"] = success(agent, wrap, args, False, 1000 + seed)
                row["held_out_missions"] = success(agent, wrap, args, True, 2000 + seed)
                row["paraphrased_missions"] = success(agent, wrap, args, False, 3000 + seed, "paraphrased")
                row["misled_missions"] = success(agent, wrap, args, False, 3000 + seed, "misled")
                out[f"{method}/seed{seed}"] = row
                print(method, seed, json.dumps(row), flush=True)
                del agent, wrap
    return out


def bench_speed(args: argparse.Namespace) -> dict[str, Any]:
    """PPO iterations of the VLM policy from a cold start (env steps/s, the share of the policy's forward time
    in the frozen model's layers), and one 64-frame minibatch's forward+backward with and without them."""
    out: dict[str, Any] = {
        "env": ENV,
        "envs": args.envs,
        "tokens": args.tokens,
        "dtype": args.dtype,
        **provenance(),
    }
    agent, _ = build("pixels", args, 0)
    policy: VLMPolicy = agent.model.body  # type: ignore[assignment]
    t0 = time.perf_counter()
    agent.learn(args.steps, progress_bar=False)
    wall = time.perf_counter() - t0
    m = policy.metrics()
    out["ppo"] = {"steps": agent.num_timesteps, "wall_s": round(wall, 1), "steps_per_s": round(agent.num_timesteps / wall, 2),
                  "policy_forward_share": round(m["llm/seconds"] / wall, 3),
                  "frozen_model_forward_share": round(m["llm/model_seconds"] / wall, 3),
                  "instruction_prefixes": m["llm/misses"], "prefix_hits": m["llm/hits"], "load": os.getloadavg()[0]}  # fmt: skip
    env = policy.wrap(vector_env(8))
    obs, _ = env.reset(seed=0)
    batch = {
        k: torch.as_tensor(np.asarray(v)).repeat(8, *[1] * (np.asarray(v).ndim - 1)) for k, v in obs.items()
    }

    def timed(fn: Any) -> float:
        fn()  # warm
        t = time.perf_counter()
        for _ in range(3):
            fn()
        return (time.perf_counter() - t) / 3

    def full() -> None:
        logits, value = policy(batch)
        (logits.sum() + value.sum()).backward()

    def without_model() -> None:  # encoder and heads alone: the image embeddings' mean in place of the model
        h = policy.encode(batch["image"]).float().mean(1)
        (policy.action_head(h).sum() + policy.value_head(h).sum()).backward()

    a, b = timed(full), timed(without_model)
    out["minibatch64"] = {"forward_backward_s": round(a, 3), "encoder_and_heads_only_s": round(b, 3),
                          "frozen_model_share": round(1 - b / a, 3), "load": os.getloadavg()[0]}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("compare", "speed"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=["untrained", "conv", "pixels", "words"])
    parser.add_argument("--steps", type=int, default=2048)
    parser.add_argument("--envs", type=int, default=16)
    parser.add_argument("--n-steps", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--eval", type=int, default=40, help="evaluation episodes per mission split")
    parser.add_argument("--lr", type=float, default=PPO_SETTINGS["learning_rate"])
    parser.add_argument("--strict", action="store_true", help="facing the wrong object ends the episode")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (1 on a machine shared with others)"
    )
    parser.add_argument("--out", default=None, help="write the JSON here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = bench_compare(args) if args.what == "compare" else bench_speed(args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
