"""llmrl's RL core against Stable-Baselines3, side by side in one run with the same settings.

    python benchmarks/rl_core.py                 # every case
    python benchmarks/rl_core.py --quick         # fewer seeds, episodes and steps
    python benchmarks/rl_core.py --only ppo-cartpole-1env ppo-breakout-8env

Each case is a small function registered with `@case(name)` that returns Markdown table rows; add a case
by writing one more such function (DQN cases live next to the PPO ones). Steps/s are wall-clock training
throughput (env steps / learn() seconds); both libraries run with torch.set_num_threads(1) in the same
process, one after the other, on the same seeds. Evaluations use the same `llmrl.evaluate` loop for both
(100 episodes, deterministic actions).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import llmrl.agents as agents  # noqa: E402
from llmrl.evaluate import evaluate  # noqa: E402

CASES: dict[str, Callable[[argparse.Namespace], list[str]]] = {}


def case(name: str):
    """Register a benchmark case: fn(args) -> list of Markdown rows (see `row`)."""

    def deco(fn):
        CASES[name] = fn
        return fn

    return deco


HEADER = "| case | library | setting | seeds | steps/s (mean) | speed ratio | eval mean ± std | note |"


def row(case_name, lib, setting, seeds, sps, ratio, ev, note=""):
    ratio_s = f"{ratio:.2f}×" if ratio is not None else ""
    return f"| {case_name} | {lib} | {setting} | {seeds} | {sps:,.0f} | {ratio_s} | {ev} | {note} |"


class SB3Predictor:
    """SB3 model behind llmrl's predict(obs) -> actions, so both sides use the same evaluate loop."""

    def __init__(self, model):
        self.model = model

    def predict(self, obs, deterministic=True):
        return self.model.predict(obs, deterministic=deterministic)[0]


def timed_learn(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def eval_str(results) -> str:
    means = [r.mean for r in results]
    pooled = np.concatenate([r.returns for r in results])
    per_seed = ", ".join(f"{m:.0f}" for m in means)
    return f"{pooled.mean():.1f} ± {pooled.std():.1f} (seeds: {per_seed})"


def cartpole_eval_env(n=10):
    return gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="vector_entry_point")


# -- PPO -----------------------------------------------------------------------------------------------

SB3_PPO_DEFAULTS = dict(n_steps=2048, batch_size=64, n_epochs=10, learning_rate=3e-4, gamma=0.99, gae_lambda=0.95,
                        clip_range=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5)  # fmt: skip
# RL-Zoo's tuned PPO for CartPole-v1 (lin_0.001 learning rate; clip range kept constant on both sides)
ZOO_PPO_CARTPOLE = dict(n_steps=32, batch_size=256, n_epochs=20, learning_rate=1e-3, gamma=0.98, gae_lambda=0.8,
                        clip_range=0.2, ent_coef=0.0)  # fmt: skip


def _ppo_pair(args, name, steps, n_envs, cfg, anneal, llmrl_env, sb3_env):
    from stable_baselines3 import PPO as SB3PPO

    seeds = list(range(args.seeds))
    ours_sps, sb3_sps, ours_ev, sb3_ev = [], [], [], []
    lr = cfg["learning_rate"]
    sb3_cfg = dict(cfg, learning_rate=(lambda f, lr=lr: f * lr) if anneal else lr)

    def run_ours(seed, steps=steps, **over):
        agent = agents.PPO(llmrl_env(), seed=seed, anneal_lr=anneal, **dict(cfg, **over))
        dt = timed_learn(lambda: agent.learn(steps, progress_bar=False))
        return agent, agent.num_timesteps / dt

    def run_sb3(seed, steps=steps, **over):
        model = SB3PPO("MlpPolicy", sb3_env(), seed=seed, device="cpu", verbose=0, **dict(sb3_cfg, **over))
        dt = timed_learn(lambda: model.learn(steps))
        return model, model.num_timesteps / dt

    # untimed warm-up of both (the first calls pay one-off costs: lazy imports, allocations)
    run_ours(0, 64 * n_envs, n_steps=64, batch_size=64, n_epochs=1)
    run_sb3(0, 64 * n_envs, n_steps=64, batch_size=64, n_epochs=1)
    for seed in seeds:
        # alternate which library runs first, so drifting machine load does not favour one side
        if seed % 2 == 0:
            (agent, sps), (model, sps3) = run_ours(seed), run_sb3(seed)
        else:
            (model, sps3), (agent, sps) = run_sb3(seed), run_ours(seed)
        ours_sps.append(sps)
        sb3_sps.append(sps3)
        ours_ev.append(evaluate(agent, cartpole_eval_env(), n_episodes=args.episodes, seed=1000 + seed))
        sb3_ev.append(
            evaluate(SB3Predictor(model), cartpole_eval_env(), n_episodes=args.episodes, seed=1000 + seed)
        )
        print(f"  {name} seed {seed}: llmrl {ours_sps[-1]:.0f} sps {ours_ev[-1]}; SB3 {sb3_sps[-1]:.0f} sps {sb3_ev[-1]}",
              flush=True)  # fmt: skip
    setting = f"{n_envs} env(s), {steps:,} steps"
    ratio = statistics.mean(ours_sps) / statistics.mean(sb3_sps)
    solved = sum(r.mean >= 475 for r in ours_ev)
    return [
        row(name, "llmrl", setting, len(seeds), statistics.mean(ours_sps), ratio, eval_str(ours_ev),
            f"{solved}/{len(seeds)} seeds ≥ 475"),
        row(name, "SB3", setting, len(seeds), statistics.mean(sb3_sps), 1.0, eval_str(sb3_ev),
            f"{sum(r.mean >= 475 for r in sb3_ev)}/{len(seeds)} seeds ≥ 475"),
    ]  # fmt: skip


@case("ppo-cartpole-1env")
def ppo_cartpole_1env(args):
    """SB3's defaults, 1 env, 10,000 steps (the seed quotes SB3 at 351.68 ± 107.47)."""
    from stable_baselines3.common.env_util import make_vec_env

    return _ppo_pair(args, "ppo-cartpole-1env", args.steps_1env, 1, SB3_PPO_DEFAULTS, False,
                     lambda: gym.make("CartPole-v1"), lambda: make_vec_env("CartPole-v1", n_envs=1))  # fmt: skip


@case("ppo-cartpole-8env")
def ppo_cartpole_8env(args):
    """8 envs, RL-Zoo's tuned CartPole PPO, 50,000 steps. llmrl on Gymnasium's native vector CartPole,
    SB3 on its DummyVecEnv (the same dynamics; each library's usual vector env)."""
    from stable_baselines3.common.env_util import make_vec_env

    return _ppo_pair(args, "ppo-cartpole-8env", args.steps_8env, 8, ZOO_PPO_CARTPOLE, True,
                     lambda: gym.make_vec("CartPole-v1", num_envs=8, vectorization_mode="vector_entry_point"),
                     lambda: make_vec_env("CartPole-v1", n_envs=8))  # fmt: skip


# llmrl's fastest CartPole config found in a small search (5 seeds each; 8-64 envs, 4-20 epochs, batch 256-512,
# lr 1e-3-4e-3, checked every 2,000 steps): RL-Zoo's discounting on 32 native-vectorised envs, rollouts of
# 32 x 16 = 512 steps taken as one minibatch, 6 epochs, a larger learning rate (annealed over 100k)
LLMRL_FAST_ENVS = 32
LLMRL_FAST_CARTPOLE = dict(n_steps=16, batch_size=512, n_epochs=6, learning_rate=4e-3, gamma=0.98, gae_lambda=0.8,
                           clip_range=0.2, ent_coef=0.0)  # fmt: skip


@case("ppo-cartpole-time-to-solve")
def ppo_time_to_solve(args):
    """Training wall clock until the 100-episode mean (deterministic actions) reaches 475, checked every
    `check` steps (the same for both libraries) with a 100-env vectorised evaluation; evaluation time is
    excluded. llmrl with its LLMRL_FAST_CARTPOLE on LLMRL_FAST_ENVS native-vectorised envs (LR annealed over 100k).
    SB3's best is the better median of two configs: RL-Zoo's tuned PPO on 8 envs (lin_0.001 over its
    100k budget) and llmrl's fast config on as many DummyVecEnv envs (the same hyperparameters as llmrl)."""
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    check = args.check_every

    class Clock:
        """Training time until solved: the clock stops for each evaluation."""

        def __init__(self):
            self.train, self.t0, self.next, self.solved = 0.0, time.perf_counter(), check, None

        def tick(self, predictor, steps) -> bool:  # True = solved, stop training
            if steps < self.next:
                return False
            self.train += time.perf_counter() - self.t0
            while self.next <= steps:
                self.next += check
            # 100 envs: each plays one episode in one batched pass (cheap, so the check can be frequent)
            if evaluate(predictor, cartpole_eval_env(100), n_episodes=args.episodes, seed=7).mean >= 475:
                self.solved = (self.train, steps)
                return True
            self.t0 = time.perf_counter()
            return False

    class SB3Check(BaseCallback):
        def __init__(self):
            super().__init__()
            self.clock = Clock()

        def _on_step(self):
            return not self.clock.tick(SB3Predictor(self.model), self.num_timesteps)

    def ours(seed):
        env = gym.make_vec("CartPole-v1", num_envs=LLMRL_FAST_ENVS, vectorization_mode="vector_entry_point")
        agent = agents.PPO(env, seed=seed, anneal_lr=True, **LLMRL_FAST_CARTPOLE)
        clock = Clock()
        agent.learn(
            100_000, progress_bar=False, callback=lambda a, m, c=clock: not c.tick(a, a.num_timesteps)
        )
        return clock.solved

    def sb3(seed, n_envs, cfg):
        cb3, lr = SB3Check(), cfg["learning_rate"]
        model = SB3PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=n_envs), seed=seed, device="cpu", verbose=0,
                       **dict(cfg, learning_rate=lambda f, lr=lr: f * lr))  # fmt: skip
        model.learn(100_000, callback=cb3)
        return cb3.clock.solved

    runs = {
        "llmrl": (f"{LLMRL_FAST_ENVS} envs, llmrl's fast config", ours),
        "SB3": ("8 envs, RL-Zoo config", lambda s: sb3(s, 8, ZOO_PPO_CARTPOLE)),
        "SB3 ": (
            f"{LLMRL_FAST_ENVS} envs, llmrl's fast config",
            lambda s: sb3(s, LLMRL_FAST_ENVS, LLMRL_FAST_CARTPOLE),
        ),
    }
    res: dict[str, list] = {lib: [] for lib in runs}
    for seed in range(args.seeds):
        order = list(runs) if seed % 2 == 0 else list(runs)[::-1]  # alternate against drifting load
        for lib in order:
            res[lib].append(runs[lib][1](seed))
        print(f"  time-to-solve seed {seed}: " + "; ".join(f"{lib.strip()} {runs[lib][0]}: {res[lib][-1]}"
                                                          for lib in runs), flush=True)  # fmt: skip
    rows, med = [], {}
    for lib, (setting, _) in runs.items():
        ok = [r for r in res[lib] if r is not None]
        # an unsolved seed counts as infinitely slow in the median
        med[lib] = statistics.median(r[0] if r else float("inf") for r in res[lib])
        steps = statistics.median(s for _, s in ok) if ok else float("nan")
        sps = sum(s for _, s in ok) / sum(t for t, _ in ok) if ok else float("nan")
        best = min(t for t, _ in ok) if ok else float("nan")
        rows.append(f"| ppo-cartpole-time-to-solve | {lib.strip()} | {setting}, checked every {check:,} steps | "
                    f"{len(res[lib])} | {sps:,.0f} | | solved {len(ok)}/{len(res[lib])}; median {med[lib]:.2f} s "
                    f"(best {best:.2f} s) training wall clock, median {steps:,.0f} steps | |")  # fmt: skip
    best_sb3 = min(med["SB3"], med["SB3 "])
    rows[0] = rows[0][: -len(" |")] + f"median time ratio SB3's best / llmrl {best_sb3 / med['llmrl']:.1f}× |"
    return rows


def _atari_single():
    """One Breakout env with llmrl's standard Atari preprocessing (Gymnasium's AtariPreprocessing: no-op
    reset <= 30, frame skip 4 with max-pooling, 84x84 grey; 4-frame stack; sticky actions 0.25 as in v5)."""
    import llmrl

    return llmrl.make("ALE/Breakout-v5")


def _env_rate(venv, steps: int, n: int) -> float:
    """Env-only steps/s (random actions) of a vector env, Gymnasium or SB3 VecEnv."""
    venv.reset()
    actions = np.random.default_rng(0).integers(0, 4, (steps, n))
    t0 = time.perf_counter()
    for a in actions:
        venv.step(a)
    rate = steps * n / (time.perf_counter() - t0)
    venv.close()
    return rate


def _ceiling(network_sps: float, env_sps: float, sb3_sps: float) -> str:
    """The best llmrl could do: its network's arithmetic plus the env stepping alone, nothing else."""
    both = 1.0 / (1.0 / network_sps + 1.0 / env_sps)
    return (f"network arithmetic alone: {network_sps:,.0f} steps/s ({network_sps / sb3_sps:.2f}× SB3); "
            f"with the env: {both:,.0f} steps/s = {both / sb3_sps:.2f}× SB3 (the ceiling)")  # fmt: skip


def _network_floor(agent, n_envs: int) -> float:
    """Steps/s llmrl's PPO would reach if it did nothing but its network's arithmetic: per 128 x n_envs
    rollout, 128 acting forwards at batch n_envs plus n_epochs x (rollout / batch) forward+backward passes
    at the minibatch size, on stored (channels-last) frames; no env, no optimizer, no data handling."""
    from llmrl.nets import empty_obs_storage

    cfg, model = agent.config, agent.model
    rollout = cfg.n_steps * n_envs
    frames = empty_obs_storage(agent.observation_space, (rollout,))
    frames.copy_(torch.randint(0, 256, frames.shape, dtype=torch.uint8))

    def once():
        with torch.no_grad():
            for t in range(cfg.n_steps):
                model(frames[t * n_envs : (t + 1) * n_envs])
        for _ in range(cfg.n_epochs * rollout // cfg.batch_size):
            out, v = model.forward_train(frames[: cfg.batch_size])
            model.backward(out, v, torch.ones_like(out), torch.ones_like(v))

    once()  # warm-up
    t0 = time.perf_counter()
    for _ in range(2):
        once()
    return 2 * rollout / (time.perf_counter() - t0)


@case("ppo-breakout-8env")
def ppo_breakout_8env(args):
    """Breakout, 8 envs, RL-Zoo's Atari PPO settings, a short run (steps/s only), the same preprocessing on
    both sides. llmrl runs on its default `llmrl.make(id, num_envs=8)` (ale_py's C++ vector env, same
    preprocessing settings) and, to separate engine speed from env speed, on a SyncVectorEnv of the very
    single envs that SB3 runs in its DummyVecEnv. Env-only rates (random actions) are reported too."""
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    import llmrl

    cfg = dict(n_steps=128, batch_size=256, n_epochs=4, learning_rate=2.5e-4, clip_range=0.1, ent_coef=0.01,
               vf_coef=0.5)  # fmt: skip
    steps, warm, n = args.steps_atari, 8 * 128, 8
    envs = {
        "native": lambda: llmrl.make("ALE/Breakout-v5", num_envs=n),
        "sync": lambda: gym.vector.SyncVectorEnv([_atari_single] * n),
        "dummy": lambda: DummyVecEnv([_atari_single] * n),
    }
    env_sps = {name: _env_rate(make(), 200, n) for name, make in envs.items()}

    def timed(learner, learn):
        """(wall-clock steps/s, CPU-time steps/s of this process and its threads) of one learn call.
        Steps are counted, not assumed: llmrl does not count the step that resets a finished env."""
        start, wall, cpu = learner.num_timesteps, time.perf_counter(), time.process_time()
        learn()
        done = learner.num_timesteps - start
        return done / (time.perf_counter() - wall), done / (time.process_time() - cpu)

    def ours(env_name):
        # one untimed iteration first: the first conv calls pay a large one-off set-up cost
        agent = agents.PPO(envs[env_name](), seed=0, **cfg)
        agent.learn(warm, progress_bar=False)
        return timed(agent, lambda: agent.learn(agent.num_timesteps + steps, progress_bar=False))

    def sb3():
        model = SB3PPO("CnnPolicy", envs["dummy"](), seed=0, device="cpu", verbose=0, **cfg)
        model.learn(warm)
        return timed(model, lambda: model.learn(steps, reset_num_timesteps=False))

    native, sb3_sps, sync = ours("native"), sb3(), ours("sync")
    floor = _network_floor(agents.PPO(envs["native"](), seed=0, **cfg), n)
    setting = f"8 envs, {steps:,} steps"
    name = "ppo-breakout-8env"
    return [
        row(name, "llmrl", setting + ", llmrl.make (ALE C++ vector env)", 1, native[0], native[0] / sb3_sps[0], "",
            f"CPU-time ratio {native[1] / sb3_sps[1]:.2f}×; env alone: {env_sps['native']:,.0f} steps/s; "
            + _ceiling(floor, env_sps["native"], sb3_sps[0])),
        row(name, "llmrl", setting + ", SyncVectorEnv of SB3's envs", 1, sync[0], sync[0] / sb3_sps[0], "",
            f"CPU-time ratio {sync[1] / sb3_sps[1]:.2f}×; env alone: {env_sps['sync']:,.0f} steps/s"),
        row(name, "SB3", setting + ", DummyVecEnv", 1, sb3_sps[0], 1.0, "",
            f"CPU time {sb3_sps[1]:,.0f} steps/s; env alone: {env_sps['dummy']:,.0f} steps/s"),
    ]  # fmt: skip


# -- DQN (the runs themselves live in rl_core_dqn.py, which also prints CPU-time rates) ------------------


@case("dqn-cartpole-1env")
def dqn_cartpole_1env(args):
    """RL-Zoo's tuned SB3 DQN for CartPole-v1, 1 env, 50,000 steps; llmrl with SB3's vanilla target.
    Both are evaluated every `--eval-every` steps (outside the timed training) and at the end: "within
    50k" counts seeds whose 100-episode mean reached 475 at some evaluation, "final" those at the end."""
    import rl_core_dqn as dqn

    steps = 6_000 if args.quick else 50_000
    runs = {"llmrl": [], "SB3": []}
    for seed in range(args.seeds):
        order = [("SB3", lambda s=seed: dqn.cartpole_sb3(s, steps, args.episodes, args.eval_every)),
                 ("llmrl", lambda s=seed: dqn.cartpole_llmrl(s, steps, args.episodes, False, args.eval_every))]  # fmt: skip
        for lib, fn in order if seed % 2 == 0 else order[::-1]:  # alternate against drifting load
            runs[lib].append(fn())
            r = runs[lib][-1]
            print(f"seed {seed} {lib}: {steps / r['wall']:,.0f} steps/s (CPU {steps / r['cpu']:,.0f}), final "
                  f"{r['mean']:.0f}, best {r['best']:.0f}, first ≥ 475 at {r['first_solved']}", flush=True)  # fmt: skip
    out = []
    base, base_cpu = sum(r["wall"] for r in runs["SB3"]), sum(r["cpu"] for r in runs["SB3"])
    for lib, rs in runs.items():
        final = sum(r["mean"] >= 475 for r in rs)
        within = sum(r["best"] >= 475 for r in rs)
        ev = ", ".join(f"{r['mean']:.0f}" for r in rs)
        first = ", ".join(f"{r['first_solved'] // 1000}k" if r["first_solved"] else "—" for r in rs)
        out.append(row("dqn-cartpole-1env (RL-Zoo config)", lib, f"1 env, {steps:,} steps", len(rs),
                       np.mean([steps / r["wall"] for r in rs]), base / sum(r["wall"] for r in rs),
                       f"final: {ev}",
                       f"≥ 475 within {steps // 1000}k: {within}/{len(rs)} (first at {first}); final: {final}/{len(rs)}; "
                       f"CPU-time ratio {base_cpu / sum(r['cpu'] for r in rs):.2f}×"))  # fmt: skip
    return out


@case("dqn-breakout-8env")
def dqn_breakout_8env(args):
    """Breakout, 8 envs, RL-Zoo's Atari DQN settings scaled down (buffer 20k, learning_starts 2k), steps/s."""
    import rl_core_dqn as dqn

    import llmrl

    steps = 4_000 if args.quick else 20_000
    ours, sb3 = dqn.breakout_llmrl(0, steps), dqn.breakout_sb3(0, steps)
    floor, env_sps = dqn.breakout_floor(steps), _env_rate(llmrl.make("ALE/Breakout-v5", num_envs=8), 200, 8)
    notes = {"llmrl": f"CPU-time ratio {sb3['cpu'] / ours['cpu']:.2f}×; env alone: {env_sps:,.0f} steps/s; "
                      + _ceiling(floor, env_sps, steps / sb3["wall"]),
             "SB3": ""}  # fmt: skip
    return [row("dqn-breakout-8env", lib, f"8 envs, {steps:,} steps", 1, steps / r["wall"], sb3["wall"] / r["wall"],
                "", notes[lib]) for lib, r in (("llmrl", ours), ("SB3", sb3))]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 seeds, 20 eval episodes, shorter runs")
    p.add_argument("--only", nargs="*", help=f"cases to run: {', '.join(CASES)}")
    p.add_argument(
        "--check-every",
        type=int,
        default=None,
        help="time-to-solve: evaluate every N env steps (default 2,000; the same for both libraries)",
    )
    p.add_argument("--eval-every", type=int, default=5_000,
                   help="DQN CartPole: evaluate every N training steps, outside the timing (0: only at the end)")  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="torch threads for both libraries")
    args = p.parse_args()
    args.seeds = 2 if args.quick else 5
    args.episodes = 20 if args.quick else 100
    args.steps_1env, args.steps_8env = 10_000, 50_000
    args.steps_atari = 2048 if args.quick else 4096
    args.check_every = args.check_every or 2_000
    torch.set_num_threads(args.threads)
    os.environ["LLMRL_THREADS"] = str(args.threads)  # learn() would otherwise pick its own default
    print(f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    import stable_baselines3

    print(f"# versions: llmrl (this tree), torch {torch.__version__}, gymnasium {gym.__version__}, "
          f"stable-baselines3 {stable_baselines3.__version__}, numpy {np.__version__}; torch threads {args.threads}; "
          f"seeds 0..{args.seeds - 1}; eval episodes {args.episodes}")  # fmt: skip
    rows = []
    for name, fn in CASES.items():
        if args.only and name not in args.only:
            continue
        print(f"## {name}", flush=True)
        rows += fn(args)
    print()
    print(HEADER)
    print("|---|---|---|---:|---:|---:|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
