"""DQN: the seed's recipe (Double-DQN target, Huber loss, Adam, ε-greedy, target sync) on vector envs,
with the options SB3 lacks: dueling head, n-step returns, prioritized replay.

    agent = DQN(llmrl.make("CartPole-v1"), seed=0, learning_rate=2.3e-3, batch_size=64)
    agent.learn(50_000)

One file, top to bottom: the config, the Q-network, acting (vectorised ε-greedy), the training loop
(collect `train_freq` vector steps, then `gradient_steps` updates), the update, checkpoint state.

Papers: Mnih et al. 2015 (DQN, Nature); van Hasselt et al. 2016 (Double DQN, arXiv 1509.06461);
Wang et al. 2016 (dueling networks, arXiv 1511.06581); Schaul et al. 2016 (prioritized replay,
arXiv 1511.05952); Sutton 1988 / Hessel et al. 2018 (n-step returns in Rainbow, arXiv 1710.02298).

Counting follows Stable-Baselines3, so its tuned hyperparameters carry over unchanged: `train_freq`
counts vector steps (calls to `env.step`), `target_update_interval` and `learning_starts` count env
steps (transitions), ε decays linearly over `exploration_fraction` of `learn`'s `total_timesteps`.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from llmrl.agents.base import Agent, check, check_numbers
from llmrl.buffers import ReplayBatch, ReplayBuffer
from llmrl.errors import ConfigError
from llmrl.nets import Flatten, Obs, StackedMLP, build_encoder, has_image, mlp, obs_to_tensor, tree_map
from llmrl.optim import FlatAdam
from llmrl.training import env_chain

__all__ = ["DQN", "DQNConfig", "QNetwork"]


@dataclass
class DQNConfig:
    """DQN settings. Defaults are the seed's recipe; SB3/RL-Zoo hyperparameters map one to one."""

    learning_rate: float = 1e-3
    """Adam step size."""
    batch_size: int = 32
    """Transitions per gradient step."""
    gamma: float = 0.99
    """Discount factor."""
    buffer_size: int = 100_000
    """Replay capacity in transitions (shared by all envs)."""
    learning_starts: int = 1000
    """Env steps of uniformly random actions before the first update."""
    train_freq: int = 1
    """Vector steps (calls to env.step) between training rounds, as in SB3."""
    gradient_steps: int = 1
    """Gradient steps per training round."""
    target_update_interval: int = 100
    """Env steps between target updates (with one env and train_freq = gradient_steps = 1: updates)."""
    tau: float = 1.0
    """Target update: 1.0 copies the online net (hard sync); < 1 moves it by tau (soft, Polyak)."""
    exploration_initial_eps: float = 1.0
    """ε at the start of learning."""
    exploration_final_eps: float = 0.1
    """ε after the linear decay (the seed's ε = 0.1)."""
    exploration_fraction: float = 0.1
    """Fraction of `learn`'s total_timesteps over which ε decays linearly."""
    double_q: bool = True
    """Double DQN target: the online net picks argmax_a Q(s', a), the target net evaluates it."""
    dueling: bool = False
    """Dueling head: Q = V + A - mean(A)."""
    n_step: int = 1
    """n-step returns (computed at sample time; stop at episode ends)."""
    prioritized: bool = False
    """Prioritized replay (proportional), priority = |TD error|."""
    per_alpha: float = 0.6
    """Prioritization exponent α (0 = uniform)."""
    per_beta0: float = 0.4
    """Initial importance-sampling exponent β, annealed linearly to 1 over learn's total_timesteps."""
    per_eps: float = 1e-6
    """Added to |TD error| so that no transition has zero priority."""
    max_grad_norm: float | None = 10.0
    """Clip the gradient's global norm (SB3's DQN default); None to disable."""
    net_arch: tuple[int, ...] | None = None
    """Hidden layer sizes of the MLP head; None: (512,) when the observation holds an image (the seed's
    Q-network), else (64, 64)."""
    optimize_memory: bool = True
    """Store each observation once (next observation = the following slot's observation)."""
    flush_denormal: bool = True
    """During updates on CPU, flush subnormal floats to zero (torch.set_flush_denormal). Adam's second
    moments of rarely-updated weights decay into the subnormal range, where CPU arithmetic is ~10x
    slower; flushing them changes values below 1e-38 only. The flag is switched off after each round."""
    log_interval: int = 1000
    """Env steps per training iteration: how often metrics are logged and callbacks run."""
    imagined_fraction: float = 0.0
    """Dyna (Sutton 1990): the share of each batch drawn from imagined transitions, which a wrapper in the
    env chain hands over through `llmrl_imagined()` after every env step (`llmrl.roles.world_model.Dyna`:
    a world model's predictions). They are 1-step transitions in a buffer of their own (`buffer_size`
    of them), as the replay buffer keeps each env's real steps consecutively. 0 = none."""

    def __post_init__(self) -> None:
        check_numbers(self)
        pos_int = "use an integer >= 1"
        for name in ("batch_size", "buffer_size", "train_freq", "gradient_steps", "target_update_interval",
                     "n_step", "log_interval"):  # fmt: skip
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name, value, pos_int)
        check(isinstance(self.learning_starts, int) and self.learning_starts >= 0, "learning_starts",
              self.learning_starts, "use an integer >= 0")  # fmt: skip
        check(
            self.learning_rate > 0, "learning_rate", self.learning_rate, "use a positive step size, e.g. 1e-3"
        )
        check(0.0 <= self.gamma <= 1.0, "gamma", self.gamma, "use a discount in [0, 1], e.g. 0.99")
        check(
            0.0 < self.tau <= 1.0,
            "tau",
            self.tau,
            "use 1.0 for hard target sync or a value in (0, 1) for soft",
        )
        for name in ("exploration_initial_eps", "exploration_final_eps"):
            check(0.0 <= getattr(self, name) <= 1.0, name, getattr(self, name), "use a probability in [0, 1]")
        check(0.0 < self.exploration_fraction <= 1.0, "exploration_fraction", self.exploration_fraction,
              "use a fraction in (0, 1] of the training steps")  # fmt: skip
        check(self.per_alpha >= 0, "per_alpha", self.per_alpha, "use alpha >= 0 (0 = uniform, 0.6 typical)")
        check(0.0 <= self.per_beta0 <= 1.0, "per_beta0", self.per_beta0, "use beta in [0, 1], e.g. 0.4")
        check(self.per_eps > 0, "per_eps", self.per_eps, "use a small positive number, e.g. 1e-6")
        check(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm", self.max_grad_norm,
              "use a positive norm or None to disable clipping")  # fmt: skip
        if self.net_arch is not None:
            self.net_arch = tuple(self.net_arch)
            check(all(isinstance(h, int) and h >= 1 for h in self.net_arch), "net_arch", self.net_arch,
                  "use a sequence of positive layer widths, e.g. (256, 256)")  # fmt: skip
        check(self.buffer_size >= self.batch_size, "buffer_size", self.buffer_size,
              f"use at least batch_size={self.batch_size}")  # fmt: skip
        check(0.0 <= self.imagined_fraction < 1.0, "imagined_fraction", self.imagined_fraction,
              "use a share in [0, 1) of each batch, e.g. 0.5 (real transitions fill the rest)")  # fmt: skip
        check(not (self.prioritized and self.imagined_fraction > 0), "imagined_fraction", self.imagined_fraction,
              "imagined transitions are sampled uniformly; use prioritized=False with them")  # fmt: skip


def _check_buffer_memory(space: gym.Space, size: int) -> None:
    """Refuse a replay buffer larger than this machine's memory now, not with a MemoryError later."""
    leaves = list(space.spaces.values()) if isinstance(space, spaces.Dict) else [space]
    per_item = sum(int(np.prod(s.shape or (1,))) * np.dtype(s.dtype or np.int64).itemsize for s in leaves)
    need = 2 * per_item * size + 16 * size  # obs and next obs, plus actions, rewards and flags
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no check
        return
    if need > have:
        raise ConfigError(
            f"buffer_size={size:,} needs about {need / 2**30:,.1f} GiB for these observations; this machine has "
            f"{have / 2**30:,.1f} GiB. Use a smaller buffer_size (1e5-1e6 is usual)."
        )


class _ReLU(nn.ReLU):
    """ReLU in place: the Linear output it overwrites is not needed by autograd (saves an allocation)."""

    def __init__(self) -> None:
        super().__init__(inplace=True)


class QNetwork(nn.Module):
    """encoder (from the observation space) -> MLP -> Q-values (B, n_actions); optionally dueling.

    With a Dict of an image and an "llm" vector this is the seed's two-input Q-network: Atari conv
    features ++ LLM features -> Linear(512) -> ReLU -> Linear(actions).

    Without the dueling head the MLP is a `StackedMLP` of one net, trained with its hand-written
    backward (`forward_train` / `backward_train`): no autograd graph for the head — on CartPole's
    [256, 256] net most of a gradient step's cost besides the matmuls. An encoder with weights (conv
    stack) still runs on autograd, fed the head's input gradient.
    """

    def __init__(self, space: spaces.Space, n_actions: int, hidden: tuple[int, ...], dueling: bool = False):
        super().__init__()
        # PyTorch's default init (as SB3's DQN and the seed), not PPO's orthogonal init.
        self.encoder, dim = build_encoder(space, orthogonal=False)
        self.dueling = dueling
        self.encoder_trains = any(p.requires_grad for p in self.encoder.parameters())
        self._features: torch.Tensor | None = None  # encoder output kept by forward_train for autograd
        if dueling:
            self.trunk = mlp(dim, hidden, None, activation=_ReLU, orthogonal=False)
            self.value = nn.Linear(hidden[-1] if hidden else dim, 1)
            self.advantage = nn.Linear(hidden[-1] if hidden else dim, n_actions)
        else:
            # same init draws as mlp(dim, hidden, n_actions, orthogonal=False); weights (1, in, out)
            self.head = StackedMLP(dim, hidden, (n_actions,), activation=nn.ReLU, orthogonal=False)

    @property
    def hand_backward(self) -> bool:
        """True if gradient steps can use `forward_train` + `backward_train` (no dueling head)."""
        return not self.dueling

    def forward(self, obs: Obs) -> torch.Tensor:
        x = self.encoder(obs)  # (B, features)
        if not self.dueling:
            return self.head.forward_one(x, 0)
        h = self.trunk(x)
        adv = self.advantage(h)  # (B, A)
        # Wang et al. 2016, eq. 9: subtract the mean advantage so V and A are identifiable.
        return self.value(h) + adv - adv.mean(dim=1, keepdim=True)

    @property
    def direct_acting(self) -> bool:
        """True if `act_values` applies: vector observations (a plain `Flatten` encoder) and the MLP head."""
        return not self.dueling and isinstance(self.encoder, Flatten)

    def act_values(self, obs: np.ndarray) -> np.ndarray:
        """Q-values (B, A) of a numpy batch of vector observations (CPU), straight to the head: the same
        arithmetic as `forward` without the module calls and tensor conversions around it, which cost
        more than the matmuls when acting one env step at a time on a small net."""
        x = torch.from_numpy(np.asarray(obs, dtype=np.float32)).reshape(len(obs), -1)
        with torch.no_grad():
            return self.head.forward_one(x, 0).numpy()

    def forward_train(self, obs: Obs) -> torch.Tensor:
        """Q-values (B, A) for a gradient step, keeping what `backward_train` needs (no head graph)."""
        if self.encoder_trains:
            self._features = self.encoder(obs)  # (B, features), with autograd through the conv stack
            x = self._features.detach()
        else:
            with torch.no_grad():
                x = self.encoder(obs)
        return self.head.forward_saved(x)[0]

    def backward_train(self, grad_q: torch.Tensor) -> None:
        """Given dL/dQ (B, A) for the last `forward_train`, write the head's gradients into `.grad`
        (overwriting) and accumulate the encoder's (zero them first)."""
        gx = self.head.backward(grad_q[None], input_grad=self._features is not None)
        if self._features is not None:
            self._features.backward(gx)
            self._features = None


class DQN(Agent):
    """Deep Q-learning on a Gymnasium env or vector env with Discrete actions. See `DQNConfig`."""

    config_class = DQNConfig
    config: DQNConfig

    # -- construction --------------------------------------------------------------------------

    def _build(self, policy: nn.Module | None) -> None:
        cfg = self.config
        if not isinstance(self.action_space, spaces.Discrete):
            raise ConfigError(
                f"DQN needs a Discrete action space, got {self.action_space}; use PPO for continuous or "
                "multi-dimensional actions."
            )
        self.n_actions = int(self.action_space.n)
        self._action_start = int(self.action_space.start)
        hidden = (
            cfg.net_arch
            if cfg.net_arch is not None
            else ((512,) if has_image(self.observation_space) else (64, 64))
        )
        self.q_net = (
            policy
            if policy is not None
            else QNetwork(self.observation_space, self.n_actions, hidden, cfg.dueling)
        )
        self.q_net.to(self.device)
        # the Q-network to act through `QNetwork.act_values`, when it applies
        q = self.q_net
        self._direct_q_net = (
            q if isinstance(q, QNetwork) and q.direct_acting and self.device.type == "cpu" else None
        )
        self.q_target = copy.deepcopy(self.q_net)
        self.q_target.requires_grad_(False)
        self.optimizer = FlatAdam(self.q_net, cfg.learning_rate)
        per_env = max(cfg.buffer_size // self.num_envs, 2)
        _check_buffer_memory(self.observation_space, per_env * self.num_envs)
        self.buffer = ReplayBuffer(
            self.observation_space,
            self.action_space,
            per_env * self.num_envs,
            num_envs=self.num_envs,
            n_step=cfg.n_step,
            gamma=cfg.gamma,
            prioritized=cfg.prioritized,
            alpha=cfg.per_alpha,
            priority_eps=cfg.per_eps,
            optimize_memory=cfg.optimize_memory,
            seed=self.seed,
        )
        # Dyna: imagined 1-step transitions, apart from the real ones (their slots are not consecutive steps)
        self.imagined = (
            ReplayBuffer(
                self.observation_space,
                self.action_space,
                cfg.buffer_size,
                num_envs=1,
                gamma=cfg.gamma,
                optimize_memory=False,
                seed=self.seed + 2,
            )  # fmt: skip
            if cfg.imagined_fraction > 0
            else None
        )
        self.rng = np.random.default_rng(self.seed + 1)  # exploration draws
        self.n_updates = 0
        self._vector_steps = 0  # calls to env.step, for train_freq
        self._last_target_step = 0  # num_timesteps at the last target update
        self._target_stale = False  # online weights changed since the last hard sync
        self.exploration_rate = cfg.exploration_initial_eps

    # -- acting ----------------------------------------------------------------------------------

    def _act(self, obs: Obs, deterministic: bool) -> torch.Tensor:
        greedy = self.q_net(obs).argmax(dim=1) + self._action_start
        if deterministic:
            return greedy
        n = greedy.shape[0]
        explore = torch.from_numpy(self.rng.random(n) < self.exploration_rate)
        rand = torch.from_numpy(self.rng.integers(0, self.n_actions, n) + self._action_start)
        return torch.where(explore, rand, greedy)

    def action_values(self, obs: Any) -> tuple[str, np.ndarray]:
        """("Q", Q-values of every action) for one observation."""
        batch, _ = self._batched(obs)
        with torch.inference_mode():
            return "Q", self.q_net(self._to_tensor(batch))[0].cpu().numpy()

    def _explore(self, eps: float) -> np.ndarray:
        """Vectorised ε-greedy for the current batch of observations; the net runs only if some env
        acts greedily this step."""
        n = self.num_envs
        random_actions = self.rng.integers(0, self.n_actions, n)
        explore = self.rng.random(n) < eps
        if explore.all():
            return random_actions + self._action_start
        if self._direct_q_net is not None:
            greedy = self._direct_q_net.act_values(self._obs).argmax(axis=1)
        else:
            with torch.inference_mode():
                greedy = self.q_net(self._to_tensor(self._obs)).argmax(dim=1).cpu().numpy()
        return np.where(explore, random_actions, greedy) + self._action_start

    def _epsilon(self, total_timesteps: int) -> float:
        cfg = self.config
        progress = min(1.0, self.num_timesteps / (cfg.exploration_fraction * total_timesteps))
        return cfg.exploration_initial_eps + progress * (
            cfg.exploration_final_eps - cfg.exploration_initial_eps
        )

    # -- the training loop -------------------------------------------------------------------------

    def _iteration(self, total_timesteps: int) -> dict[str, float]:
        cfg = self.config
        buf = self.buffer
        end = min(total_timesteps, self.num_timesteps + cfg.log_interval)
        loss_sum, q_sum, updates = torch.zeros(()), torch.zeros(()), 0
        while self.num_timesteps < end:
            # Act: uniformly random before learning starts, then ε-greedy.
            if self.num_timesteps < cfg.learning_starts:
                self.exploration_rate = 1.0
            else:
                self.exploration_rate = self._epsilon(total_timesteps)
            obs = self._obs
            actions = self._explore(self.exploration_rate)
            next_obs, rewards, terminated, truncated, infos, valid = self._env_step(actions)
            buf.add(obs, next_obs, actions - self._action_start, rewards, terminated, truncated, valid)
            # Deferred rewards for an episode that just ended (ARCHITECTURE.md, "relabelling").
            if "reward_relabel" in infos:
                mask = infos.get("_reward_relabel", np.ones(self.num_envs, bool))
                for i in np.flatnonzero(mask):
                    buf.relabel(int(i), np.asarray(infos["reward_relabel"][i], dtype=np.float32))
            self._vector_steps += 1
            if self.imagined is not None:
                self._add_imagined()

            # Learn: gradient_steps updates every train_freq vector steps once learning has started.
            if (
                self._vector_steps % cfg.train_freq == 0
                and self.num_timesteps >= cfg.learning_starts
                and len(buf) >= 1
            ):
                with _flush_denormal(cfg.flush_denormal and self.device.type == "cpu"):
                    loss, q = self._train(cfg.gradient_steps, total_timesteps)
                loss_sum += loss
                q_sum += q
                updates += cfg.gradient_steps

            # Target update every target_update_interval env steps (a hard sync is skipped when the online
            # net has not changed since the last one: the copy would be the same).
            if self.num_timesteps - self._last_target_step >= cfg.target_update_interval:
                self._last_target_step = self.num_timesteps - (
                    (self.num_timesteps - self._last_target_step) % cfg.target_update_interval
                )
                self._update_target()
        out = {
            "exploration_rate": self.exploration_rate,
            "n_updates": float(self.n_updates),
            "buffer": float(len(buf)),
        }
        if updates:
            out["loss"] = float(loss_sum) / updates
            out["q_mean"] = float(q_sum) / updates
        if self.imagined is not None:
            out["imagined"] = float(len(self.imagined))
        return out

    def _add_imagined(self) -> None:
        """Store what the env chain's imagination sources (`llmrl_imagined()`) hand over after this step."""
        sources = [o for o in env_chain(self.env) if callable(getattr(type(o), "llmrl_imagined", None))]
        if not sources:
            raise ConfigError(
                "imagined_fraction > 0 needs a wrapper in the env chain that supplies imagined transitions "
                "(llmrl_imagined()), e.g. llmrl.roles.world_model.Dyna(env, model)"
            )
        buf = self.imagined
        if buf is None:
            return
        for source in sources:
            got = source.llmrl_imagined()
            if got is None:
                continue
            n = len(got["actions"])
            no = np.zeros(1, dtype=bool)
            for i in range(n):
                one = slice(i, i + 1)

                def row(x: Any, one: slice = one) -> Any:
                    return np.asarray(x)[one]

                buf.add(
                    tree_map(row, got["obs"]),
                    tree_map(row, got["next_obs"]),
                    np.asarray(got["actions"])[one] - self._action_start,
                    np.asarray(got["rewards"], dtype=np.float32)[one],
                    np.asarray(got["terminated"], dtype=bool)[one],
                    no,
                )

    def _update_target(self) -> None:
        online: list[torch.Tensor] = list(self.q_net.parameters())
        target: list[torch.Tensor] = list(self.q_target.parameters())
        with torch.no_grad():
            if self.config.tau >= 1.0:
                if self._target_stale:
                    torch._foreach_copy_(target, online)
                    for b_t, b_o in zip(self.q_target.buffers(), self.q_net.buffers()):
                        b_t.copy_(b_o)
                    self._target_stale = False
            else:
                torch._foreach_lerp_(target, online, self.config.tau)

    def _train(self, gradient_steps: int, total_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`gradient_steps` updates; returns the summed loss and summed mean Q (detached scalars).

        The target net does not change during a training round (it is updated between env steps), so
        its Q-values for every batch of the round are computed in one forward pass.
        """
        cfg, buf = self.config, self.buffer
        beta = cfg.per_beta0 + (1.0 - cfg.per_beta0) * min(1.0, self.num_timesteps / total_timesteps)
        # With uniform replay the whole round's batches are drawn at once (the buffer does not change
        # during the round); prioritized replay draws each batch after the previous priority update.
        per_draw = 1 if cfg.prioritized else max(1, min(gradient_steps, 8192 // cfg.batch_size))
        loss_sum, q_sum = torch.zeros(()), torch.zeros(())
        done = 0
        # Dyna: m of each batch's rows are imagined (once there are any)
        m = (
            0
            if self.imagined is None or len(self.imagined) == 0
            else round(cfg.imagined_fraction * cfg.batch_size)
        )
        while done < gradient_steps:
            k = min(per_draw, gradient_steps - done)
            batch = buf.sample(k * (cfg.batch_size - m), beta=beta)
            if m:
                batch = _mixed(batch, self.imagined.sample(k * m), k)  # type: ignore[union-attr]
            data = self._batch_tensors(batch)  # each (k * B, ...)
            with torch.no_grad():
                next_q_target = self.q_target(data["next_obs"])  # (k*B, A)
                # The vanilla target needs no online net: the targets of the whole chunk in one pass.
                targets = (
                    None
                    if cfg.double_q
                    else self._td_target(data["next_obs"], data["returns"], data["discounts"], next_q_target)
                )
            qs, ys = [], []
            for j in range(k):
                part = slice(j * cfg.batch_size, (j + 1) * cfg.batch_size)
                q, y = self._update(
                    data, part, next_q_target[part], None if targets is None else targets[part]
                )
                qs.append(q)
                ys.append(y)
                if cfg.prioritized:
                    _, _, td = self._huber(q, y, data["actions"][part], data["weights"][part])
                    buf.update_priorities(batch.indices[part], td.cpu().numpy())
            # losses for logging once per chunk: mean over k*B rows = (sum of the k per-step means) / k
            loss, q_mean, _ = self._huber(torch.cat(qs), torch.cat(ys), data["actions"], data["weights"])
            loss_sum += k * loss
            q_sum += k * q_mean
            done += k
        self.n_updates += gradient_steps
        self._target_stale = True
        return loss_sum, q_sum

    def _batch_tensors(self, batch: ReplayBatch) -> dict[str, Any]:
        dev = self.device
        data = {
            "obs": obs_to_tensor(batch.obs, self.observation_space, dev),
            "next_obs": obs_to_tensor(batch.next_obs, self.observation_space, dev),
            "actions": torch.as_tensor(batch.actions, dtype=torch.int64, device=dev),
            "returns": torch.as_tensor(batch.returns, device=dev),
            "discounts": torch.as_tensor(batch.discounts, device=dev),
            "weights": torch.as_tensor(batch.weights, device=dev),
        }
        data["grad_mask"] = self._grad_mask(data["actions"], data["weights"], self.config.batch_size)
        return data

    def _grad_mask(self, actions: torch.Tensor, weights: torch.Tensor, batch: int) -> torch.Tensor:
        """(N, A): w_i / batch at each row's taken action, 0 elsewhere — the Huber gradient's scale for
        gradient steps of `batch` rows (`_update`); w_i = 1 without prioritized replay."""
        mask = nn.functional.one_hot(actions, self.n_actions).to(weights.dtype)
        if self.config.prioritized:
            return mask.mul_(weights[:, None] / batch)
        return mask.div_(batch)

    def _huber(
        self, q: torch.Tensor, y: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Huber loss mean_i w_i h(Q[i, a_i] - y_i) (w_i = 1 without prioritized replay), mean Q[i, a_i],
        |TD error| (N,)) for Q-values q (N, A) and targets y (N,); no gradients."""
        with torch.no_grad():
            q_taken = q.gather(1, actions[:, None]).squeeze(1)  # (N,)
            diff = q_taken - y
            abs_diff = diff.abs()
            huber = torch.where(abs_diff < 1.0, 0.5 * diff * diff, abs_diff - 0.5)
            if self.config.prioritized:
                huber.mul_(weights)
            return huber.mean(), q_taken.mean(), abs_diff

    @torch.no_grad()
    def _td_target(
        self, next_obs: Obs, returns: torch.Tensor, discounts: torch.Tensor, next_q_target: torch.Tensor
    ) -> torch.Tensor:
        """y = R + γ^m (1 - terminal) Q_target(s', a*) (B,); `discounts` already holds γ^m (1 - terminal).

        Double DQN (van Hasselt et al. 2016): a* = argmax_a Q_online(s', a), the target net evaluates it;
        without `double_q`: max_a Q_target(s', a) (Mnih et al. 2015).
        """
        if self.config.double_q:
            best = self.q_net(next_obs).argmax(dim=1, keepdim=True)  # (B, 1)
            next_v = next_q_target.gather(1, best).squeeze(1)
        else:
            next_v = next_q_target.max(dim=1).values
        return returns + discounts * next_v

    def _update(
        self,
        data: dict[str, Any],
        part: slice,
        next_q_target: torch.Tensor,
        target: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One gradient step on rows `part` of `data` (`target`: the TD targets y of those rows if
        already known, else computed from `next_q_target`); returns (Q-values (B, A), y (B,)), detached."""
        cfg = self.config
        if target is None:
            target = self._td_target(
                tree_map(lambda x: x[part], data["next_obs"]),
                data["returns"][part],
                data["discounts"][part],
                next_q_target,
            )
        mask = data.get("grad_mask")
        mask = (
            self._grad_mask(data["actions"][part], data["weights"][part], len(data["actions"][part]))
            if mask is None
            else mask[part]
        )
        obs = tree_map(lambda x: x[part], data["obs"])
        net = self.q_net
        hand = net if isinstance(net, QNetwork) and net.hand_backward else None
        q = hand.forward_train(obs) if hand is not None else net(obs)  # (B, A)
        # Huber loss (δ = 1) L = mean_i w_i h(Q[i, a_i] - y_i). Its gradient w.r.t. Q is written by hand,
        # dL/dQ[i, a] = [a = a_i] w_i clip(Q[i, a] - y_i, -1, 1) / B (mask = [a = a_i] w_i / B): the same
        # gradient as autograd through gather + smooth_l1 + mean, without those graph nodes.
        with torch.no_grad():
            grad_q = (q.detach() - target[:, None]).clamp_(-1.0, 1.0).mul_(mask)
        if hand is not None:
            if hand.encoder_trains:  # the head's backward overwrites its gradients, autograd accumulates
                self.optimizer.zero_grad()
            hand.backward_train(grad_q)
        else:
            self.optimizer.zero_grad()
            q.backward(grad_q)
        self.optimizer.step(cfg.max_grad_norm)
        return q.detach(), target

    # -- checkpoint state --------------------------------------------------------------------------

    def _get_state(self) -> dict[str, Any]:
        arrays, meta = self.buffer.state_dict()
        return {
            "q_net": self.q_net.state_dict(),
            "q_target": self.q_target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "buffer_arrays": arrays,
            "buffer_meta": meta,
            "rng": self.rng.bit_generator.state,
            "n_updates": self.n_updates,
            "vector_steps": self._vector_steps,
            "last_target_step": self._last_target_step,
            "target_stale": self._target_stale,
            "exploration_rate": self.exploration_rate,
            **(
                {}
                if self.imagined is None
                else dict(zip(("imagined_arrays", "imagined_meta"), self.imagined.state_dict()))
            ),
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self.q_net.load_state_dict(state["q_net"])
        self.q_target.load_state_dict(state["q_target"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["buffer_meta"].get("num_envs") == self.buffer.num_envs:
            self.buffer.load_state_dict(state["buffer_arrays"], state["buffer_meta"])
        else:  # loaded to act or evaluate with another number of envs: the replay memory does not fit
            warnings.warn(
                f"replay buffer not restored: saved with {state['buffer_meta'].get('num_envs')} envs, loaded with "
                f"{self.buffer.num_envs}; further training starts from an empty buffer.",
                stacklevel=3,
            )
        self.rng.bit_generator.state = state["rng"]
        self.n_updates = int(state["n_updates"])
        self._vector_steps = int(state["vector_steps"])
        self._last_target_step = int(state["last_target_step"])
        self._target_stale = bool(state["target_stale"])
        self.exploration_rate = float(state["exploration_rate"])
        if self.imagined is not None and "imagined_meta" in state:
            self.imagined.load_state_dict(state["imagined_arrays"], state["imagined_meta"])


def _mixed(real: ReplayBatch, imagined: ReplayBatch, k: int) -> ReplayBatch:
    """k batches side by side, each its share of `real` rows then its share of `imagined` rows."""
    r, m = len(real.actions) // k, len(imagined.actions) // k
    order = np.concatenate(
        [np.r_[j * r : (j + 1) * r, k * r + j * m : k * r + (j + 1) * m] for j in range(k)]
    )

    def both(a: Any, b: Any) -> Any:
        if isinstance(a, dict):
            return {key: np.concatenate([a[key], b[key]])[order] for key in a}
        return np.concatenate([a, b])[order]

    return ReplayBatch(*(both(getattr(real, f), getattr(imagined, f)) for f in (
        "obs", "actions", "returns", "next_obs", "discounts", "weights", "indices")))  # fmt: skip


@contextmanager
def _flush_denormal(on: bool) -> Iterator[None]:
    """Flush subnormals to zero inside the block (torch has no getter: the flag is reset to off after)."""
    if not (on and torch.set_flush_denormal(True)):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
