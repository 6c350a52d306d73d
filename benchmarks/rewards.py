"""Reward models (issue 6): cost per 1,000 env steps and overhead vs the bare env; judge and manual accuracy.

    python benchmarks/rewards.py            # 2,000 steps per (reward, env), 20 labelled episodes per env
    python benchmarks/rewards.py --quick    # 500 steps, 8 episodes

Part 1 -- cost. For each reward role on llmrl/Grid-v0 and MiniGrid-DoorKey-5x5-v0, random actions
(seed 0), the embedded model (Gemma 3 270M + MiniLM) with a fresh in-memory cache per role: LLM inputs
asked (`llm/calls`), of them reaching the model (`llm/misses`), model seconds, per 1,000 env steps, and
steps/s against the bare env (`WithText(gymnasium.make(id))`) timed in the same run. The CLIP reward
uses a tiny random-weight CLIP built here (no checkpoint can be downloaded), so its cost is a lower bound
for a real ViT-B/32.

Part 2 -- can the 270M model judge? Labelled episodes (Grid: a goal-seeking policy with 30% random
actions, label = reached the goal; DoorKey: a breadth-first-search solution = success, the same solution
cut at a random point then turning left until time runs out = failure), judged by each JudgeReward
method; the signs ManualReward derives for each event against the intended sign; and how often the
preference labels agree with the oracle on Grid (the state nearer the goal, by cells).
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import re
import sys
import tempfile
import time

import gymnasium as gym
import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import minigrid  # noqa: E402,F401  (registers MiniGrid ids)
import torch  # noqa: E402

import llmrl.llm  # noqa: E402
from llmrl.envs import WithText  # noqa: E402
from llmrl.roles.rewards import (  # noqa: E402
    CLIPEmbedder,
    CLIPReward,
    JudgeReward,
    ManualReward,
    PreferenceReward,
    TextGoalReward,
    transcript,
)
from llmrl.testing import tiny_clip  # noqa: E402

GRID, DOORKEY = "llmrl/Grid-v0", "MiniGrid-DoorKey-5x5-v0"
OBJECTIVE = {
    GRID: "The cat reaches the goal cell without falling into a puddle.",
    DOORKEY: "Pick up the key, open the door and reach the green goal square.",
}
GOAL_SENTENCE = {GRID: "the cat is at the goal", DOORKEY: "the agent is on the green goal square"}
EXPECTED_SIGN = {
    "reaching the goal": 1, "falling into a puddle": -1, "bumping into a wall": -1, "picking up the key": 1,
    "opening the door": 1, "completing the mission": 1, "touching the lava": -1, "dropping the key": -1,
}  # fmt: skip


# -- part 1: cost -----------------------------------------------------------------------------------------


def run(env: gym.Env, steps: int, seed: int = 0) -> float:
    """Random actions for `steps` steps; returns the wall seconds."""
    rng = np.random.default_rng(seed)
    n_act = env.action_space.n
    t0 = time.perf_counter()
    env.reset(seed=seed)
    for _ in range(steps):
        *_, term, trunc, _ = env.step(int(rng.integers(n_act)))
        if term or trunc:
            env.reset()
    return time.perf_counter() - t0


def build(name: str, env_id: str, llm, clip_path: str) -> gym.Env:
    base = WithText(gym.make(env_id, render_mode="rgb_array" if name == "clip (tiny)" else None))
    if name == "judge":
        return JudgeReward(base, llm, objective=OBJECTIVE[env_id])
    if name == "manual":
        return ManualReward(base, llm)
    if name == "text goal":
        return TextGoalReward(base, llm, goal=GOAL_SENTENCE[env_id])
    if name == "clip (tiny)":
        return CLIPReward(base, CLIPEmbedder(clip_path), goal=GOAL_SENTENCE[env_id])
    if name == "preference":
        return PreferenceReward(base, llm, goal=OBJECTIVE[env_id], warmup_steps=200, n_pairs=32, epochs=200)
    raise ValueError(name)


def cost_table(steps: int, clip_path: str) -> tuple[list[str], dict]:
    rows = [
        "| env | reward | steps | LLM inputs / 1k steps | reaching the model / 1k steps | model s / 1k steps "
        "| setup s (LLM) | steps/s | bare env steps/s | slowdown |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    kept = {}
    for env_id in (GRID, DOORKEY):
        bare_sps = steps / run(WithText(gym.make(env_id)), steps)
        for name in ("judge", "manual", "text goal", "clip (tiny)", "preference"):
            llm = llmrl.llm.load("embedded", cache=":memory:")
            t0 = time.perf_counter()
            env = build(name, env_id, llm, clip_path)
            setup = time.perf_counter() - t0
            before = llm.stats.as_dict()
            secs = run(env, steps)
            st = {k: v - before[k] for k, v in llm.stats.as_dict().items()}
            if name == "clip (tiny)":  # CLIP is not behind the LLM protocol: its own counters
                cs = env.embedder.stats
                st = {
                    "llm/calls": cs["frames"],
                    "llm/misses": cs["frames"] - cs["hits"],
                    "llm/seconds": cs["seconds"],
                }
            k = 1000.0 / steps
            sps = steps / secs
            rows.append(
                f"| {env_id} | {name} | {steps} | {st['llm/calls'] * k:.1f} | {st['llm/misses'] * k:.1f} | "
                f"{st['llm/seconds'] * k:.2f} | {setup:.1f} | {sps:,.0f} | {bare_sps:,.0f} | {bare_sps / sps:.1f}× |"
            )
            print(rows[-1], flush=True)
            kept[(env_id, name)] = env
    return rows, kept


# -- part 2: accuracy -----------------------------------------------------------------------------------


def grid_episodes(n: int, seed: int = 0) -> list[tuple[list[str], bool]]:
    """(captions, reached the goal) from a goal-seeking policy with 30% random actions."""
    env, rng, out = WithText(gym.make(GRID)), np.random.default_rng(seed), []
    while len(out) < n:
        _, info = env.reset(seed=int(rng.integers(1 << 30)))
        caps = []
        for _ in range(100):
            col, row = map(int, re.match(r"cat at column (\d+), row (\d+)", info["text"]).groups())
            a = int(rng.integers(4)) if rng.random() < 0.3 else (0 if row < 3 else 1)
            _, _, term, trunc, info = env.step(a)
            caps.append(info["caption"])
            if term or trunc:
                break
        ok = caps[-1] == "reached the goal"
        if sum(o == ok for _, o in out) < (n + 1) // 2:  # balance the classes
            out.append((caps, ok))
    return out


def doorkey_plan(env: gym.Env) -> list[int]:
    """Shortest action sequence solving DoorKey from the current state (breadth-first search)."""
    from minigrid.core.world_object import Door, Goal, Key

    u = env.unwrapped
    dirs = [(1, 0), (0, 1), (-1, 0), (0, -1)]
    key = next((x, y) for x in range(u.width) for y in range(u.height) if isinstance(u.grid.get(x, y), Key))
    start = (*map(int, u.agent_pos), int(u.agent_dir), False, False)
    queue, seen = collections.deque([(start, [])]), {start}
    while queue:
        (x, y, d, has, opened), path = queue.popleft()
        fx, fy = x + dirs[d][0], y + dirs[d][1]
        c = None if (fx, fy) == key and has else u.grid.get(fx, fy)
        for a in (0, 1, 2, 3, 5):
            s = [x, y, d, has, opened]
            if a in (0, 1):
                s[2] = (d + (1 if a else -1)) % 4
            elif a == 2 and (c is None or isinstance(c, Goal) or (isinstance(c, Door) and opened)):
                if isinstance(c, Goal):
                    return path + [a]
                s[0], s[1] = fx, fy
            elif a == 3 and isinstance(c, Key) and not has:
                s[3] = True
            elif a == 5 and isinstance(c, Door) and has and not opened:
                s[4] = True
            else:
                continue
            if tuple(s) not in seen:
                seen.add(tuple(s))
                queue.append((tuple(s), path + [a]))
    raise RuntimeError("DoorKey unsolvable")


def doorkey_episodes(n: int, seed: int = 0) -> list[tuple[list[str], bool]]:
    env, rng, out = WithText(gym.make(DOORKEY)), np.random.default_rng(seed), []
    for k in range(n):
        env.reset(seed=k)
        plan = doorkey_plan(env)
        ok = k % 2 == 0
        acts = plan if ok else plan[: int(rng.integers(1, len(plan)))]
        caps = []
        for a in acts:
            caps.append(env.step(a)[-1]["caption"])
        while not ok:  # turn left until time runs out
            *_, term, trunc, info = env.step(0)
            caps.append(info["caption"])
            if term or trunc:
                break
        out.append((caps, ok))
    return out


def judge_table(n: int, llm) -> list[str]:
    examples = {
        GRID: [
            (["slipped left", "bumped into a wall", "reached the goal"], True),
            (["slipped up", "fell into the puddle"], False),
        ],
        DOORKEY: [
            (["picked up the red key", "opened the red door", "reached the goal"], True),
            (["picked up the red key"], False),
        ],
    }
    methods = {
        "channel, last event (default)": dict(method="channel"),
        "channel, last 12 events": dict(method="channel", max_lines=12),
        "channel, last 12 + 2 examples": dict(method="channel", max_lines=12, examples="family"),
        "Yes/No calibrated, last event": dict(method="score"),
        "Yes/No calibrated, last 12 events": dict(method="score", max_lines=12),
        "Yes/No raw, last event": dict(method="score", calibrate=False),
    }
    rows = ["| env | judge (transcript) | episodes (success/fail) | accuracy | says Yes to successes | says No to failures | s / judgement |",
            "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for env_id, episodes in ((GRID, grid_episodes(n)), (DOORKEY, doorkey_episodes(n))):
        labels = np.array([ok for _, ok in episodes])
        for mname, kw in methods.items():
            texts = [transcript(caps, max_lines=kw.get("max_lines", 1)) for caps, _ in episodes]
            kw = dict(kw)
            if kw.get("examples") == "family":
                kw["examples"] = examples[env_id]
            judge = JudgeReward(WithText(gym.make(env_id)), llm, objective=OBJECTIVE[env_id], **kw)
            t0 = time.perf_counter()
            _, p = judge.judge(texts)
            dt = (time.perf_counter() - t0) / len(texts)
            yes = p > 0.5
            rows.append(
                f"| {env_id} | {mname} | {len(texts)} ({labels.sum()}/{(~labels).sum()}) | {np.mean(yes == labels):.2f} | "
                f"{yes[labels].mean():.2f} | {(~yes[~labels]).mean():.2f} | {dt:.2f} |"
            )
            print(rows[-1], flush=True)
    return rows


def manual_table(llm) -> list[str]:
    rows = [
        "| env | event | calibrated good − bad | derived sign | intended | right |",
        "|---|---|---:|---:|---:|---|",
    ]
    for env_id in (GRID, DOORKEY):
        role = ManualReward(WithText(gym.make(env_id)), llm)
        for a in role.answers.values():
            want = EXPECTED_SIGN[a.event]
            rows.append(
                f"| {env_id} | {a.event} | {a.margin:+.2f} | {a.sign:+d} | {want:+d} | {'yes' if a.sign == want else 'NO'} |"
            )
    return rows


def grid_distance(text: str) -> int:
    m = re.search(r"goal ([^;]*)", text)
    return (
        0
        if m is None or "here" in m.group(1)
        else sum(int(k) for k in re.findall(r"(\d+) cells?", m.group(1)))
    )


def preference_agreement(role: PreferenceReward) -> str:
    agree = total = 0
    for (a, b), p in role.labels.items():
        da, db = grid_distance(a), grid_distance(b)
        if da != db:
            total += 1
            agree += (p > 0.5) == (da < db)
    return f"Preference labels vs the oracle (state nearer the goal) on Grid: {agree}/{total} pairs agree."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="500 steps per case, 8 labelled episodes per env")
    args = ap.parse_args()
    steps, n_eps = (500, 8) if args.quick else (2000, 20)
    torch.set_num_threads(1)
    import llama_cpp
    import transformers

    print(f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"# versions: torch {torch.__version__}, gymnasium {gym.__version__}, minigrid {minigrid.__version__}, "
          f"llama-cpp-python {llama_cpp.__version__}, transformers {transformers.__version__}; seed 0; "
          f"random actions; model {llmrl.llm.load('embedded').name} + MiniLM")  # fmt: skip
    print(f"# command: python benchmarks/rewards.py{' --quick' if args.quick else ''}\n")
    with tempfile.TemporaryDirectory() as tmp:
        rows, kept = cost_table(steps, tiny_clip(os.path.join(tmp, "clip")))
    print("\n".join(["", *rows, ""]))
    llm = llmrl.llm.load("embedded", cache=":memory:")
    print("\n".join(judge_table(n_eps, llm)) + "\n")
    print("\n".join(manual_table(llm)) + "\n")
    print(preference_agreement(kept[(GRID, "preference")]))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
