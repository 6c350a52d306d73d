"""The LLM as a world model (issue 17): how well does the embedded Gemma predict the next state, and can
a planner use it?

    python benchmarks/world_model.py                       # every stage, the sizes below
    python benchmarks/world_model.py --stages zeroshot     # one stage; data and adapters are reused

Stages (artifacts in --work, so a stage can be rerun alone):
  data      transitions in words: the Grid (slip 0), DoorKey-5x5 fully observable and egocentric (random
            play + a scripted expert with 30% random actions), BabyAI-GoToRedBallNoDists fully observable
            (random play), split by episode. The fully observable texts end in their hint line (`around:`,
            `ahead:`), which the model reads but is never asked to write.
  zeroshot  the embedded model on llama.cpp, 3 examples + the manual, on held-out transitions.
  finetune  LoRA (q/k/v/o + MLP of the last --layers blocks) on the embedded GGUF de-quantised through
            transformers, on the distinct training pairs of --fit-sets (state differences); the adapters
            are exported to llama.cpp's GGUF adapter format (and checked to give the same answers there).
  eval      the fine-tuned adapters on llama.cpp (quantised base), on the held-out transitions of --eval-sets.
  gate      (not in the default list) the confidence of right vs wrong answers, and a 0.5 gate.
  plan      --plan-envs (DoorKey-5x5, BabyAI go-to): one-step lookahead with a value function read from the
            state text, with the true simulator vs the fine-tuned model; success over seeds.
  dyna      (not in the default list) DQN on DoorKey-5x5's text features with imagined rollouts
            (--dyna-horizon, --dyna-ratio, --dyna-fraction) from no model, the true simulator or the
            fine-tuned model: env steps to 90% greedy success.
Accuracy = exact match of the whole next state; reward within 0.1; done exact. `no_change_baseline`
is the accuracy of always answering "no change" on the same transitions. Results: --out (JSON) and
a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DOORKEY = "MiniGrid-DoorKey-5x5-v0"
GOTO = "BabyAI-GoToRedBallNoDists-v0"  # the BabyAI go-to task: an 8x8 room, the red ball somewhere in it
PLAN_ACTIONS = ("turn left", "turn right", "move forward", "pick up", "toggle")


def versions() -> str:
    import torch
    import transformers

    return (
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} at start"
    )


# -- data -------------------------------------------------------------------------------------------------


def expert_policy(env: Any, eps: float, seed: int):
    """The scripted DoorKey skills (key, door, goal) with `eps` random actions, for coverage."""
    from llmrl.envs.minigrid import doorkey_subgoal
    from llmrl.roles.saycan import minigrid_skills

    skills = {s.name: s for s in minigrid_skills(env, distractors=False)}
    rng = np.random.default_rng(seed)

    def act(obs: Any, info: dict) -> int:
        if rng.random() < eps:
            return int(rng.integers(6))
        return int(skills[doorkey_subgoal(env.unwrapped)].policy(obs, info))

    return act


def stage_data(work: Path, n: int) -> None:
    import llmrl
    from llmrl.envs.transitions import EgocentricDescriber, collect, save_jsonl, split

    grid = llmrl.make("llmrl/Grid-v0", slip=0.0)
    sets: dict[str, list] = {"grid": collect(grid, n, seed=0)}
    for name, describer in (("doorkey", None), ("doorkey_ego", EgocentricDescriber)):
        env = llmrl.make(DOORKEY)
        d = None if describer is None else describer()
        rand = collect(env, n // 2, describer=d, seed=0, source="random")
        d = None if describer is None else describer()
        exp = collect(
            env, n // 2, describer=d, policy=expert_policy(env, 0.3, 1), seed=10_000, source="expert"
        )
        sets[name] = rand + exp
    sets["goto"] = collect(llmrl.make(GOTO), n, seed=20_000)  # random play
    for name, data in sets.items():
        train, test = split(data, test_fraction=0.25, seed=0)
        save_jsonl(train, work / f"{name}_train.jsonl")
        save_jsonl(test, work / f"{name}_test.jsonl")
        print(f"{name}: {len(train)} train / {len(test)} test transitions", flush=True)


def load(work: Path, name: str, part: str) -> list:
    from llmrl.envs.transitions import load_jsonl

    return load_jsonl(work / f"{name}_{part}.jsonl")


def sample(data: list, n: int, seed: int = 0) -> list:
    """`n` held-out transitions, drawn evenly over actions so turns do not swamp the rest."""
    rng = random.Random(seed)
    by_action: dict[str, list] = {}
    for t in data:
        by_action.setdefault(t.action, []).append(t)
    out: list = []
    for pool in by_action.values():
        rng.shuffle(pool)
    while len(out) < min(n, len(data)):
        for pool in by_action.values():
            if pool and len(out) < n:
                out.append(pool.pop())
    return out


def distinct(data: list) -> list:
    seen: dict[tuple[str, str], Any] = {}
    for t in data:
        seen.setdefault((t.state, t.action), t)
    return list(seen.values())


# -- accuracy ------------------------------------------------------------------------------------------


def stage_zeroshot(work: Path, n: int, results: dict) -> None:
    from llmrl.envs import manual
    from llmrl.llm import load as load_llm
    from llmrl.roles.world_model import LLMWorldModel, accuracy

    llm = load_llm("embedded", cache=work / "llm.sqlite")
    for name, env_id, target in (
        ("grid", "llmrl/Grid-v0", "diff"),
        ("doorkey", DOORKEY, "diff"),
        ("doorkey_ego", DOORKEY, "full"),
    ):
        train, test = load(work, name, "train"), load(work, name, "test")
        shots = [sample([t for t in train if t.state != t.next_state], 2, 1)[0], sample(train, 3, 2)[1]]
        shots.append(next(t for t in train if t.state == t.next_state))
        wm = LLMWorldModel(
            llm,
            examples=shots,
            manual=manual(env_id),
            target=target,
            max_tokens=48 if target == "diff" else 96,
            describer=Hints() if target == "diff" else None,
        )
        t0 = time.perf_counter()
        held_out = sample(test, n, 3)
        acc = accuracy(wm, held_out, batch_size=8)
        acc["seconds"] = time.perf_counter() - t0
        acc["no_change_baseline"] = float(np.mean([t.state == t.next_state for t in held_out]))
        acc["unparseable"] = float(wm.counters["unparseable"])
        results.setdefault("zeroshot", {})[name] = acc
        print(f"zero-shot {name} ({target}): {acc}", flush=True)
        save(results, work)
    llm.close()


def hf_base(work: Path, dtype: str = "float32") -> Any:
    """The embedded GGUF through transformers; de-quantised once (minutes on a busy CPU) and kept in `work`."""
    import torch
    from safetensors.torch import save_model

    from llmrl.llm.hf import HFLLM

    folder = work / "gemma3_270m_hf"
    if (folder / "model.safetensors").exists():
        return HFLLM(folder, device="cpu", dtype=dtype)
    llm = HFLLM.from_gguf(device="cpu")
    folder.mkdir(parents=True, exist_ok=True)
    cfg = llm.module.config.to_dict()
    cfg.pop("quantization_config", None)  # the de-quantised weights are plain float32
    (folder / "config.json").write_text(json.dumps(cfg))
    with torch.no_grad():
        save_model(llm.module, str(folder / "model.safetensors"))
    llm.tokenizer.save_pretrained(folder)
    return llm if dtype == "float32" else HFLLM(folder, device="cpu", dtype=dtype)


def finetuned_llamacpp(work: Path) -> Any:
    """The fine-tuned adapters on llama.cpp over the quantised embedded GGUF (the fast CPU path)."""
    from llmrl.llm.llamacpp import embedded_gguf_path
    from llmrl.llm.lora import llamacpp_with_lora

    return llamacpp_with_lora(embedded_gguf_path(), work / "wm-lora.gguf", n_threads=1)


class Hints:
    """The derived lines of both fully observable texts (the Grid's `around`, DoorKey's `ahead`), for the one
    model fine-tuned on both: each state text gets its own env's line back."""

    derived = ("around", "ahead")

    def __init__(self) -> None:
        import llmrl
        from llmrl.envs.transitions import FullGridDescriber, FullMiniGridDescriber

        self.grid = FullGridDescriber(llmrl.make("llmrl/Grid-v0").unwrapped)  # type: ignore[arg-type]
        self.doorkey = FullMiniGridDescriber(size=(5, 5))
        self.goto = FullMiniGridDescriber(size=(8, 8))

    def derive(self, core: str) -> str:
        if core.startswith("map: "):
            return self.grid.derive(core)
        return (self.doorkey if "\ngoal: " in core else self.goto).derive(core)  # only DoorKey has a goal


def finetuned_model(work: Path, llm: Any, *, confidence: bool = True) -> Any:
    from llmrl.roles.world_model import LLMWorldModel

    meta = json.loads((work / "adapters.json").read_text())
    wm = LLMWorldModel(llm, target="diff", max_tokens=48, confidence=confidence, describer=Hints())
    wm.examples, wm._head = [], meta["head"]  # the fine-tuned prompt: no examples
    return wm


def stage_finetune(work: Path, args: argparse.Namespace, results: dict) -> None:
    import torch

    from llmrl.llm.lora import export_lora_gguf, save_lora
    from llmrl.roles.world_model import LLMWorldModel

    torch.manual_seed(0)
    t0 = time.perf_counter()
    llm = hf_base(work, args.dtype)
    load_s = time.perf_counter() - t0
    before = {}
    if args.resume:  # keep training the adapters of an earlier run (same data, same settings)
        from llmrl.llm.lora import load_lora

        load_lora(llm.module, args.resume)
        before = json.loads((args.resume.parent / "results.json").read_text())["finetune"]["fit"]
    wm = LLMWorldModel(llm, target="diff", max_tokens=48, confidence=False, describer=Hints())
    sets = args.fit_sets.split(",")
    grid = distinct(load(work, "grid", "train")) if "grid" in sets else []
    door = distinct(load(work, "doorkey", "train")) if "doorkey" in sets else []
    if args.fit_doorkey:
        door = sample(door, args.fit_doorkey, 4)
    goto = distinct(load(work, "goto", "train")) if "goto" in sets else []
    if args.fit_goto:
        goto = sample(goto, args.fit_goto, 4)
    # repeats: the Grid's few pairs, and the transitions that change something (most answers are "no change")
    changes = [t for t in door if t.state != t.next_state]
    train = grid * args.grid_repeat + door + changes * (args.change_repeat - 1) + goto
    random.Random(0).shuffle(train)
    print(f"fine-tuning on {len(grid)} grid (x{args.grid_repeat}) + {len(door)} doorkey distinct transitions "
          f"({len(changes)} that change the state, x{args.change_repeat}) + {len(goto)} go-to", flush=True)  # fmt: skip

    def log(m: dict) -> None:
        print({k: round(v, 3) for k, v in m.items()}, f"load {os.getloadavg()[0]:.1f}", flush=True)
        if int(m["wm/step"]) % 100 == 0:  # a checkpoint now and then: a stopped run still leaves adapters
            save_lora(llm.module, work / "wm-lora.safetensors")

    report = wm.fit(
        train, epochs=args.epochs, lr=args.lr, rank=16, layers=args.layers, batch_size=args.batch_size,
        targets=args.targets.split(","), max_minutes=args.fit_minutes, log=log,
    )  # fmt: skip
    save_lora(llm.module, work / "wm-lora.safetensors")
    export_lora_gguf(llm.module, work / "wm-lora.gguf")
    (work / "adapters.json").write_text(json.dumps({"head": wm._head}))
    (work / "fit_pairs.json").write_text(json.dumps([[t.state, t.action] for t in train]))
    fit = {
        **report.__dict__, "load_seconds": load_s, "grid_pairs": len(grid), "doorkey_pairs": len(door), "goto_pairs": len(goto),
        "grid_repeat": args.grid_repeat, "change_repeat": args.change_repeat, "targets": args.targets,
        "dtype": args.dtype, "threads": args.threads, "load_average_end": os.getloadavg()[0],
    }  # fmt: skip
    if before:
        fit["seconds_before_resume"], fit["steps_before_resume"] = before["seconds"], before["steps"]
    results["finetune"] = {"fit": fit}
    print(f"fit: {fit}", flush=True)
    # the same answers from transformers and from llama.cpp (quantised base + the exported adapter)?
    probe = [t for name in sets for t in sample(load(work, name, "test"), 3, 5)]
    hf_out = llm.generate([wm.prompt(t.state, t.action) for t in probe], max_tokens=48, stop=["\n\n"])
    cpp = finetuned_llamacpp(work)
    cpp_out = cpp.generate([wm.prompt(t.state, t.action) for t in probe], max_tokens=48, stop=["\n\n"])
    results["finetune"]["hf_vs_llamacpp_same_answer"] = float(
        np.mean([a.strip() == b.strip() for a, b in zip(hf_out, cpp_out)])
    )
    print("hf vs llama.cpp:", list(zip(hf_out, cpp_out)), flush=True)
    cpp.close()
    save(results, work)


def plain_loss(module: Any, data: list) -> Any:
    """The answer tokens' cross-entropy through the whole model (left padding puts every answer at the end;
    logits only for the last positions), as the fine-tuning did before `_Tuner`."""
    import torch

    width = max(len(e.ids) for e in data)
    ids = torch.zeros(len(data), width, dtype=torch.long)
    mask = torch.zeros(len(data), width, dtype=torch.long)
    labels = torch.full((len(data), width), -100)
    for i, e in enumerate(data):
        ids[i, width - len(e.ids) :], mask[i, width - len(e.ids) :] = torch.tensor(e.ids), 1
        labels[i, width - len(e.ids) + e.prompt_len :] = torch.tensor(e.ids[e.prompt_len :])
    keep = max(len(e.ids) - e.prompt_len for e in data)
    logits = module(input_ids=ids, attention_mask=mask, logits_to_keep=keep + 1).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels[:, -keep:].reshape(-1), ignore_index=-100
    )


def stage_speed(work: Path, args: argparse.Namespace, results: dict) -> None:
    """One fine-tuning step (forward + backward, 8 DoorKey examples, adapters on the last 6 layers) the
    plain way (the whole model, logits for the answer's positions) vs `LLMWorldModel.fit`'s way, in
    float32 and bfloat16, side by side; median of 3 after a warm-up."""

    from llmrl.llm.lora import add_lora
    from llmrl.roles.world_model import LLMWorldModel, _Tuner

    batch = distinct(load(work, "doorkey", "train"))[: args.batch_size]
    out: dict[str, Any] = {"threads": args.threads, "batch": len(batch)}
    for dtype in ("float32", "bfloat16"):
        llm = hf_base(work, dtype)
        module, tok = llm.trainable()
        wm = LLMWorldModel(llm, target="diff", confidence=False)
        params = add_lora(module, rank=16, layers=6)
        tuner = _Tuner(module, tok, batch_size=len(batch))
        data = [tuner.example(wm.prompt(t.state, t.action), wm.completion(t)) for t in batch]

        t0 = time.perf_counter()
        tuner.cache_frozen(data)
        out[f"{dtype}_frozen_pass_s"] = time.perf_counter() - t0
        for name in ("plain", "fit"):
            times = []
            for _ in range(4):
                t0 = time.perf_counter()
                (plain_loss(module, data) if name == "plain" else tuner.loss(data)).backward()
                times.append(time.perf_counter() - t0)
                for p_ in params:
                    p_.grad = None
            out[f"{dtype}_{name}_step_s"] = float(np.median(times[1:]))
        out[f"{dtype}_speedup"] = out[f"{dtype}_plain_step_s"] / out[f"{dtype}_fit_step_s"]
        print(f"speed {dtype}: {out}", flush=True)
    out["load_average"] = os.getloadavg()[0]
    results["speed"] = out
    save(results, work)


def stage_eval(work: Path, args: argparse.Namespace, results: dict) -> None:
    from llmrl.roles.world_model import accuracy

    llm = finetuned_llamacpp(work)
    wm = finetuned_model(work, llm)
    seen = {tuple(p) for p in json.loads((work / "fit_pairs.json").read_text())}
    for name in args.eval_sets.split(","):
        held_out = load(work, name, "test")
        test = sample(held_out, args.test_n, 3) if args.test_n else held_out
        t1 = time.perf_counter()
        acc = accuracy(wm, test, batch_size=8)
        acc["seconds"] = time.perf_counter() - t1
        acc["load_average"] = os.getloadavg()[0]
        acc["seen_in_training"] = float(np.mean([(t.state, t.action) in seen for t in test]))
        acc["no_change_baseline"] = float(np.mean([t.state == t.next_state for t in test]))
        pairs = distinct(test)
        acc["distinct_pairs"], acc["exact_distinct"] = float(len(pairs)), accuracy(wm, pairs)["exact"]
        unseen = [t for t in test if (t.state, t.action) not in seen]
        if unseen:
            acc["n_unseen"], acc["exact_unseen"] = float(len(unseen)), accuracy(wm, unseen)["exact"]
            acc["distinct_unseen_pairs"] = float(len(distinct(unseen)))
        acc["unparseable"] = float(wm.counters["unparseable"])
        results.setdefault("finetune", {})[name] = acc
        print(f"fine-tuned {name}: {acc}", flush=True)
        save(results, work)
    llm.close()


def stage_gate(work: Path, args: argparse.Namespace, results: dict) -> None:
    """Does the confidence (the model's probability of its own answer) tell right answers from wrong?"""
    llm = finetuned_llamacpp(work)
    wm = finetuned_model(work, llm, confidence=True)
    for name in args.eval_sets.split(","):
        held_out = load(work, name, "test")
        test = sample(held_out, args.test_n, 3) if args.test_n else held_out
        p = wm.predict([t.state for t in test], [t.action for t in test])
        ok = np.array([n == t.next_state for n, t in zip(p.next_states, test)])
        keep = p.confidences >= 0.5
        row = {
            "confidence_right": float(p.confidences[ok].mean()) if ok.any() else float("nan"),
            "confidence_wrong": float(p.confidences[~ok].mean()) if (~ok).any() else float("nan"),
            "kept_at_0.5": float(keep.sum()),
            "exact_kept_at_0.5": float(ok[keep].mean()) if keep.any() else float("nan"),
        }
        results.setdefault("gate", {})[name] = row
        print(f"confidence gate {name}: {row}", flush=True)
    save(results, work)
    llm.close()


# -- planning ----------------------------------------------------------------------------------------


def _steps(lines: dict[str, str], target: tuple, face: bool, blocked: set, size: int) -> int | None:
    """Fewest actions (turns and moves) from the agent's pose to stand on `target` (face=False) or to face
    it (face=True), avoiding the `blocked` cells and the outer wall; None when it cannot be reached."""
    pos, _, facing = lines["agent"].partition(" facing ")
    x, y = (int(v) for v in pos.split(","))
    vec = ((1, 0), (0, 1), (-1, 0), (0, -1))
    start = (x, y, ("right", "down", "left", "up").index(facing))
    dist = {start: 0}
    queue = deque([start])
    while queue:
        cx, cy, cd = queue.popleft()
        fx, fy = cx + vec[cd][0], cy + vec[cd][1]
        if (face and (fx, fy) == target) or (not face and (cx, cy) == target):
            return dist[(cx, cy, cd)]
        nxt = [(cx, cy, (cd - 1) % 4), (cx, cy, (cd + 1) % 4)]
        if 0 < fx < size - 1 and 0 < fy < size - 1 and (fx, fy) not in blocked:
            nxt.append((fx, fy, cd))
        for st in nxt:
            if st not in dist:
                dist[st] = dist[(cx, cy, cd)] + 1
                queue.append(st)
    return None


def _cell(value: str) -> tuple[int, int]:
    return tuple(int(v) for v in value.split(" ")[0].split(","))  # type: ignore[return-value]


def doorkey_value(text: str, size: int = 5) -> float:
    """Minus the steps to the next sub-goal (face the key, face the door, stand on the goal), read from
    the fully observable text; a later phase is always worth more. Same function for every model."""
    lines = dict(line.split(": ", 1) for line in text.split("\n"))
    key = next((v for k, v in lines.items() if k.endswith(" key")), "carried")
    door_k = next(k for k in lines if k.endswith(" door"))
    door_state = lines[door_k].partition(" ")[2]
    blocked = {_cell(w) for w in lines["walls"].split() if w != "none"}
    if door_state != "open":
        blocked.add(_cell(lines[door_k]))
    if key != "carried":
        blocked.add(_cell(key))
    if door_state == "open":
        target, face, phase = _cell(lines["goal"]), False, 0
    elif key == "carried":
        target, face, phase = _cell(lines[door_k]), True, 1
    else:
        target, face, phase = _cell(key), True, 2
    steps = _steps(lines, target, face, blocked, size)
    return -0.01 * (20 * phase + (50 if steps is None else steps))


def goto_value(text: str, size: int = 8) -> float:
    """Minus the steps to face the red ball (BabyAI go-to), read from the fully observable text."""
    lines = dict(line.split(": ", 1) for line in text.split("\n"))
    if lines.get("red ball", "").split(" ")[0].count(",") != 1:
        return -0.5  # a prediction that lost the ball (or has it carried): never a real state before success
    ball = _cell(lines["red ball"])
    steps = _steps(lines, ball, True, {ball}, size)
    return -0.01 * (50 if steps is None else steps)


PLANNING = {"doorkey": (DOORKEY, doorkey_value), "goto": (GOTO, goto_value)}
"""The planning tasks: env id and the value of a state text (the same for every model)."""


def run_planner(
    model: Any, seeds: range, max_steps: int, sim: Any | None, task: str = "doorkey"
) -> dict[str, float]:
    import llmrl
    from llmrl.envs import WithText
    from llmrl.envs.transitions import FullMiniGridDescriber
    from llmrl.roles.world_model import WorldModelPlanner

    env_id, value = PLANNING[task]
    wins, steps_used = [], []
    t0 = time.perf_counter()
    for seed in seeds:
        env = WithText(llmrl.make(env_id), describer=FullMiniGridDescriber())
        agent = WorldModelPlanner(model, PLAN_ACTIONS, depth=1, value=value, seed=seed)
        obs, info = env.reset(seed=seed)
        won, k = False, 0
        for k in range(1, max_steps + 1):  # noqa: B007
            if sim is not None:
                sim.observe(env)
            a = ("turn left", "turn right", "move forward", "pick up", "drop", "toggle").index(
                PLAN_ACTIONS[agent.act(obs, info)]
            )
            obs, r, term, trunc, info = env.step(a)
            if term or trunc:
                won = term and r > 0
                break
        wins.append(won)
        steps_used.append(k)
        print(f"  seed {seed}: {'success' if won else 'fail'} in {k} steps", flush=True)
    return {
        "success": float(np.mean(wins)),
        "episodes": float(len(wins)),
        "mean_steps": float(np.mean(steps_used)),
        "seconds": time.perf_counter() - t0,
    }


def stage_plan(work: Path, args: argparse.Namespace, results: dict) -> None:
    from llmrl.envs.transitions import FullMiniGridDescriber
    from llmrl.roles.world_model import SimulatorModel

    seeds = range(1000, 1000 + args.plan_episodes)
    llm = finetuned_llamacpp(work)
    wm = finetuned_model(work, llm, confidence=False)
    results.setdefault("plan", {})
    for task in args.plan_envs.split(","):
        sim = SimulatorModel(
            FullMiniGridDescriber(),
            ("turn left", "turn right", "move forward", "pick up", "drop", "toggle", "done"),
        )
        out = {"simulator": run_planner(sim, seeds, args.plan_max_steps, sim, task)}
        print(f"planning {task}, simulator: {out['simulator']}", flush=True)
        before = dict(wm.counters)
        out["finetuned"] = run_planner(wm, seeds, args.plan_max_steps, None, task)
        out["finetuned"]["unparseable"] = float(wm.counters["unparseable"] - before["unparseable"])
        out["finetuned"]["predictions"] = float(
            wm.counters["predictions"]
            - wm.counters["memo_hits"]
            - before["predictions"]
            + before["memo_hits"]
        )
        out["ratio"] = out["finetuned"]["success"] / max(out["simulator"]["success"], 1e-9)
        results["plan"][task] = out
        print(f"planning {task}, fine-tuned model: {out['finetuned']}; ratio {out['ratio']:.2f}", flush=True)
        save(results, work)
    llm.close()


# -- imagination (Dyna) -------------------------------------------------------------------------------------

DYNA_DQN = dict(
    learning_starts=1000, exploration_fraction=0.5, exploration_final_eps=0.05, target_update_interval=500,
    buffer_size=50_000, learning_rate=5e-4, net_arch=(128, 128), train_freq=4, n_step=5, log_interval=2500,
)  # fmt: skip


def features_env() -> Any:
    """DoorKey-5x5 seen through the fully observable text's features: what real and imagined states share."""
    import llmrl
    from llmrl.envs import WithText
    from llmrl.envs.transitions import FullMiniGridDescriber, MiniGridTextFeatures, TextFeatures

    return TextFeatures(
        WithText(llmrl.make(DOORKEY), describer=FullMiniGridDescriber()), MiniGridTextFeatures(5)
    )


def dyna_run(model: Any, seed: int, args: argparse.Namespace) -> dict[str, float]:
    """DQN with (model given) or without imagined transitions; env steps until 20 greedy evaluation
    episodes succeed 90% of the time (checked every `log_interval` steps), up to --dyna-steps."""
    import llmrl
    from llmrl.roles.world_model import Dyna

    env = features_env()
    if model is not None:
        env = Dyna(env, model, ratio=args.dyna_ratio, horizon=args.dyna_horizon, min_confidence=args.dyna_gate,
                   seed=seed)  # fmt: skip
    fraction = args.dyna_fraction if model is not None else 0.0
    agent = llmrl.DQN(env, seed=seed, imagined_fraction=fraction, gradient_steps=args.dyna_gradient_steps,
                      **DYNA_DQN)  # fmt: skip
    evaluation = features_env()
    t0, reached, curve = time.perf_counter(), float("nan"), []

    def check(a: Any, _m: dict) -> bool:
        nonlocal reached
        r = llmrl.evaluate(a, evaluation, n_episodes=20, seed=10_000 + seed)
        success = float(np.mean(np.asarray(r.returns) > 0))
        curve.append(success)
        if success >= 0.9:
            reached = float(a.num_timesteps)
            return False
        return True

    agent.learn(args.dyna_steps, progress_bar=False, callback=check)
    out = {"steps_to_90": reached, "seconds": time.perf_counter() - t0, "load_average": os.getloadavg()[0],
           "last_success": curve[-1] if curve else float("nan"), "env_steps": float(agent.num_timesteps)}  # fmt: skip
    if model is not None:
        out.update(env.llmrl_metrics())
    print(f"  seed {seed}: {out}", flush=True)
    return out


def stage_dyna(work: Path, args: argparse.Namespace, results: dict) -> None:
    from llmrl.envs.transitions import MINIGRID_ACTIONS, FullMiniGridDescriber
    from llmrl.roles.world_model import SimulatorModel

    out: dict[str, Any] = {"settings": {**DYNA_DQN, "ratio": args.dyna_ratio, "fraction": args.dyna_fraction,
                                        "horizon": args.dyna_horizon, "gradient_steps": args.dyna_gradient_steps,
                                        "gate": args.dyna_gate, "max_steps": args.dyna_steps}}  # fmt: skip
    llm = None
    for name in args.dyna_models.split(","):
        runs = []
        for seed in range(args.dyna_seeds):
            if name == "none":
                model = None
            elif name == "simulator":
                model = SimulatorModel(FullMiniGridDescriber(), MINIGRID_ACTIONS)
            else:  # the fine-tuned LLM, one model (and its memory of predictions) for every seed
                if llm is None:
                    llm = finetuned_model(work, finetuned_llamacpp(work), confidence=args.dyna_gate > 0)
                model = llm
            runs.append(dyna_run(model, seed, args))
            out[name] = {"runs": runs}  # saved after every run: a stopped benchmark keeps what it measured
            results["dyna"] = out
            save(results, work)
        steps = [r["steps_to_90"] for r in runs]
        out[name] = {
            "runs": runs,
            "reached": float(np.sum(np.isfinite(steps))),
            "median_steps_to_90": float(np.median([x if np.isfinite(x) else np.inf for x in steps])),
            "mean_seconds": float(np.mean([r["seconds"] for r in runs])),
        }
        print(f"dyna {name}: {out[name]['reached']:.0f}/{len(runs)} reach 90%, median steps "
              f"{out[name]['median_steps_to_90']}", flush=True)  # fmt: skip
        results["dyna"] = out
        save(results, work)


# -- glue ------------------------------------------------------------------------------------------------


def save(results: dict, work: Path) -> None:
    """Merge this process's stages into results.json (stages may run in parallel processes)."""
    path = work / "results.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    for key, value in results.items():
        if isinstance(value, dict) and isinstance(current.get(key), dict):
            current[key].update(value)
        else:
            current[key] = value
    path.write_text(json.dumps(current, indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", default="data,zeroshot,finetune,eval,plan")
    p.add_argument("--work", type=Path, default=Path("/tmp/llmrl_world_model"))
    p.add_argument("--n", type=int, default=2000, help="transitions collected per dataset")
    p.add_argument("--zero-n", type=int, default=24, help="held-out transitions per dataset, zero-shot")
    p.add_argument(
        "--test-n", type=int, default=0, help="held-out transitions per dataset, fine-tuned (0: all of them)"
    )
    p.add_argument(
        "--fit-doorkey", type=int, default=0, help="distinct DoorKey transitions to fine-tune on (0: all)"
    )
    p.add_argument(
        "--fit-sets", default="grid,doorkey", help="training sets to fine-tune on (grid, doorkey, goto)"
    )
    p.add_argument(
        "--fit-goto", type=int, default=0, help="distinct go-to transitions to fine-tune on (0: all)"
    )
    p.add_argument("--eval-sets", default="grid,doorkey", help="held-out sets to score (grid, doorkey, goto)")
    p.add_argument("--plan-envs", default="doorkey", help="planning tasks: doorkey, goto")
    p.add_argument("--grid-repeat", type=int, default=1, help="copies of each Grid pair in an epoch")
    p.add_argument(
        "--change-repeat", type=int, default=1, help="copies of each DoorKey pair that changes the state"
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="bfloat16", help="the transformers model's dtype while fine-tuning")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a machine shared with others)"
    )
    p.add_argument("--layers", type=int, default=6, help="decoder layers (from the top) that get adapters")
    p.add_argument("--fit-minutes", type=float, default=30.0)
    p.add_argument(
        "--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", help="linears adapted"
    )
    p.add_argument("--resume", type=Path, default=None, help="adapters (.safetensors) to keep training")
    p.add_argument("--plan-episodes", type=int, default=6)
    p.add_argument("--plan-max-steps", type=int, default=40)
    p.add_argument("--dyna-models", default="none,simulator,finetuned", help="none, simulator, finetuned")
    p.add_argument("--dyna-seeds", type=int, default=5)
    p.add_argument("--dyna-steps", type=int, default=60_000, help="env steps at most per DQN run")
    p.add_argument("--dyna-ratio", type=float, default=1.0, help="imagined transitions per real env step")
    p.add_argument("--dyna-fraction", type=float, default=0.5, help="share of each batch that is imagined")
    p.add_argument("--dyna-horizon", type=int, default=1, help="steps of each imagined rollout")
    p.add_argument(
        "--dyna-gradient-steps", type=int, default=1, help="DQN gradient steps per training round (every run)"
    )
    p.add_argument("--dyna-gate", type=float, default=0.0, help="min confidence of an imagined transition")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": versions()}
    stages = args.stages.split(",")
    if "data" in stages:
        stage_data(args.work, args.n)
    if "zeroshot" in stages:
        stage_zeroshot(args.work, args.zero_n, results)
    if "finetune" in stages:
        stage_finetune(args.work, args, results)
    if "speed" in stages:
        stage_speed(args.work, args, results)
    if "eval" in stages:
        stage_eval(args.work, args, results)
    if "gate" in stages:
        stage_gate(args.work, args, results)
    if "plan" in stages:
        stage_plan(args.work, args, results)
    if "dyna" in stages:
        stage_dyna(args.work, args, results)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
