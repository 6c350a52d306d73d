"""Proximal Policy Optimization (Schulman et al. 2017, arXiv 1707.06347), CleanRL-style, in one file.

    agent = PPO(gymnasium.make("CartPole-v1"), seed=0).learn(100_000)

Read top to bottom: the config, the actor-critic network, GAE, then the agent (rollout, update).
Defaults are Stable-Baselines3's, so results compare with `stable_baselines3.PPO("MlpPolicy", env)`.

Vector envs use Gymnasium's NEXT_STEP autoreset: the step after an episode ends only resets that env.
Such reset steps stay in the (n_steps, num_envs) rollout arrays but are masked out of the update, and at
a done step the next observation is the true final one, so truncated episodes bootstrap from
V(final observation) (Pardo et al. 2018, "Time Limits in Reinforcement Learning").
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from llmrl.agents.base import Agent, check, check_numbers
from llmrl.errors import CheckpointError
from llmrl.nets import (
    Obs,
    StackedMLP,
    build_encoder,
    build_network,
    copy_obs_,
    empty_obs_storage,
    has_image,
    is_image_space,
    mlp,
    tree_map,
)
from llmrl.optim import FlatAdam

__all__ = [
    "PPO",
    "PPOConfig",
    "ActorCritic",
    "StackedMLPActorCritic",
    "SeparateActorCritic",
    "SharedActorCritic",
    "CustomActorCritic",
    "actor_critic",
    "Rollout",
    "compute_gae",
    "ppo_loss",
    "PPOLoss",
    "ppo_loss_and_grads",
    "LossAndGrads",
]

_LOG_2PI = math.log(2 * math.pi)
_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU}


@dataclass
class PPOConfig:
    n_steps: int = 2048
    """Env steps per env in each rollout (rollout size = n_steps * num_envs)."""
    batch_size: int = 64
    """Minibatch size for the gradient steps."""
    n_epochs: int = 10
    """Passes over each rollout."""
    learning_rate: float = 3e-4
    """Adam step size (start value when anneal_lr is on)."""
    anneal_lr: bool = False
    """Decay the learning rate linearly to 0 over learn()'s total_timesteps (CleanRL's default)."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE's lambda (Schulman et al. 2016, arXiv 1506.02438): 0 = one-step TD, 1 = Monte Carlo."""
    clip_range: float = 0.2
    """Surrogate clipping: the probability ratio is clipped to [1 - clip_range, 1 + clip_range]."""
    clip_range_vf: float | None = None
    """Clip the value update to +-clip_range_vf around the rollout's value (None: no value clipping)."""
    normalize_advantage: bool = True
    """Normalise advantages per minibatch to zero mean and unit std."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    max_grad_norm: float = 0.5
    """Clip the global gradient norm to this value."""
    target_kl: float | None = None
    """Stop the epochs early once the approximate KL to the rollout policy exceeds 1.5 * target_kl."""
    net_arch: tuple[int, ...] | None = None
    """Hidden layer sizes of the actor and critic MLPs; None: (64, 64), or (512,) after a conv encoder."""
    activation: str = "tanh"
    """Hidden activation of the MLPs for vector observations: tanh, relu, elu or gelu."""
    shared_encoder: bool | None = None
    """Actor and critic share one encoder + trunk; None: shared when the observation holds an image."""
    log_std_init: float = 0.0
    """Initial log standard deviation of the Gaussian policy (Box action spaces)."""
    adam_eps: float = 1e-5
    """Adam's epsilon (SB3 and CleanRL use 1e-5 for PPO)."""

    def __post_init__(self) -> None:
        check_numbers(self)
        for name in ("n_steps", "batch_size", "n_epochs"):
            v = getattr(self, name)
            check(isinstance(v, int) and not isinstance(v, bool) and v > 0, name, v, "use a positive int")
        for name in ("learning_rate", "clip_range", "adam_eps"):
            v = getattr(self, name)
            check(isinstance(v, (int, float)) and v > 0, name, v, "use a positive number")
        for name in ("gamma", "gae_lambda"):
            v = getattr(self, name)
            check(isinstance(v, (int, float)) and 0 <= v <= 1, name, v, "use a number in [0, 1]")
        for name in ("ent_coef", "vf_coef", "max_grad_norm"):
            v = getattr(self, name)
            check(isinstance(v, (int, float)) and v >= 0, name, v, "use a number >= 0")
        for name in ("clip_range_vf", "target_kl"):
            v = getattr(self, name)
            check(
                v is None or (isinstance(v, (int, float)) and v > 0), name, v, "use a positive number or None"
            )
        if self.net_arch is not None:
            check(all(isinstance(h, int) and h > 0 for h in self.net_arch), "net_arch", self.net_arch,
                  "use a tuple of positive layer sizes, e.g. (64, 64)")  # fmt: skip
            self.net_arch = tuple(self.net_arch)
        check(
            self.activation in _ACTIVATIONS,
            "activation",
            self.activation,
            f"use one of {sorted(_ACTIVATIONS)}",
        )


class ActorCritic(nn.Module):
    """PPO's network: obs -> (logits (B, n) for Discrete actions or Gaussian mean (B, d) for Box actions,
    value (B,)), and the policy's distribution over actions (`log_prob`, `entropy`, `sample`).

    One subclass per layout, picked by `actor_critic(...)`: `StackedMLPActorCritic` (vector observations,
    the fast path), `SeparateActorCritic` (two encoder + MLP networks), `SharedActorCritic` (one encoder
    and trunk, two heads: images) and `CustomActorCritic` (a user's module). Gradient steps use
    `forward_train(obs)` then `backward(out, value, grad_out, grad_value)`: autograd here, the hand-written
    pass in the stacked MLP.
    """

    separate: bool = False
    """True when the actor needs no critic computation (so rollouts run the actor alone)."""
    hand_written: bool = False
    """True when `backward` is the hand-written pass (PPO then takes the loss gradient from
    `ppo_loss_and_grads` instead of autograd)."""

    def __init__(self, action_space: spaces.Space, cfg: PPOConfig):
        super().__init__()
        self.discrete = isinstance(action_space, spaces.Discrete)
        self.n_out = (
            int(action_space.n)
            if isinstance(action_space, spaces.Discrete)
            else int(np.prod(action_space.shape or ()))
        )
        # a module's own parameters come first in parameters() and state_dict() whenever they are
        # registered, so log_std sits where it always did (the flat Adam state of checkpoints relies on it)
        self.log_std = (
            None if self.discrete else nn.Parameter(torch.full((self.n_out,), float(cfg.log_std_init)))
        )

    def forward(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def policy_out(self, obs: Obs) -> torch.Tensor:
        """The actor's output alone (logits or Gaussian mean)."""
        return self(obs)[0]

    def forward_train(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        """forward(obs) for a gradient step."""
        return self(obs)

    def backward(self, out: torch.Tensor, value: torch.Tensor, grad_out: torch.Tensor,
                 grad_value: torch.Tensor) -> None:  # fmt: skip
        """Backpropagate d loss / d (out, value) of the last `forward_train` into the parameters' .grad."""
        torch.autograd.backward((out, value), (grad_out, grad_value))

    def log_prob(self, out: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Log-probability (B,) of `actions` under the policy `out` (logits or Gaussian mean). Hand-written
        rather than torch.distributions: same math, far less per-call overhead on small batches."""
        if self.discrete:
            return torch.log_softmax(out, dim=-1).gather(1, actions.long().unsqueeze(1)).squeeze(1)
        log_std = self.log_std.expand_as(out)  # type: ignore[union-attr]
        z = (actions - out) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std - 0.5 * _LOG_2PI).sum(-1)

    def entropy(self, out: torch.Tensor) -> torch.Tensor:
        """Entropy (B,) of the policy `out`."""
        if self.discrete:
            logp_all = torch.log_softmax(out, dim=-1)  # (B, n)
            return -(logp_all.exp() * logp_all).sum(-1)
        return (self.log_std + 0.5 + 0.5 * _LOG_2PI).sum(-1).expand(out.shape[0])  # type: ignore[operator,union-attr]

    def sample(self, out: torch.Tensor, deterministic: bool) -> torch.Tensor:
        if self.discrete:
            if deterministic:
                return out.argmax(-1)
            # inverse-CDF sampling: one uniform per row; cheaper than torch.multinomial at batch 1
            cdf = torch.softmax(out, -1).cumsum(-1)  # (B, n)
            idx = (cdf < torch.rand(out.shape[0], 1, device=out.device)).sum(-1)
            return idx.clamp_(max=out.shape[-1] - 1)
        if deterministic:
            return out
        return out + torch.randn_like(out) * self.log_std.exp()  # type: ignore[union-attr]


class StackedMLPActorCritic(ActorCritic):
    """Vector observations, tanh or relu: SB3's MlpPolicy (separate actor and critic MLPs, same init draws
    as `SeparateActorCritic`) run as one `StackedMLP` — one batched matmul per layer, and a hand-written
    backward pass: on classic control's small minibatches an autograd graph costs more than the arithmetic."""

    separate = True
    hand_written = True

    def __init__(self, obs_space: spaces.Box, action_space: spaces.Space, cfg: PPOConfig):
        super().__init__(action_space, cfg)
        self.pair = StackedMLP(int(np.prod(obs_space.shape)), cfg.net_arch or (64, 64), (self.n_out, 1),
                               activation=_ACTIVATIONS[cfg.activation], out_gains=(0.01, 1.0))  # fmt: skip

    def forward(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        o = self.pair(obs.flatten(1).float())  # type: ignore[union-attr]
        # o: (2, B, n_out), the actor's logits/mean in o[0], the critic's value in o[1, :, 0]
        return o[0, :, : self.n_out], o[1, :, 0]

    def policy_out(self, obs: Obs) -> torch.Tensor:
        return self.pair.forward_one(obs.flatten(1).float(), 0)  # type: ignore[union-attr]

    def forward_train(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        """forward(obs) keeping the layers' activations for `backward`, building no graph."""
        o = self.pair.forward_saved(obs.flatten(1).float())  # type: ignore[union-attr]
        return o[0, :, : self.n_out], o[1, :, 0]

    def backward(self, out: torch.Tensor, value: torch.Tensor, grad_out: torch.Tensor,
                 grad_value: torch.Tensor) -> None:  # fmt: skip
        g = out.new_zeros(2, out.shape[0], max(self.pair.out_dims))  # (2, B, n_out)
        g[0, :, : self.n_out] = grad_out
        g[1, :, 0] = grad_value
        self.pair.backward(g)


class SeparateActorCritic(ActorCritic):
    """Separate actor and critic networks, each an encoder + MLP (SB3's MlpPolicy), for observations
    the stacked MLP does not take (Discrete, Dict without an image, other activations)."""

    separate = True

    def __init__(self, obs_space: spaces.Space, action_space: spaces.Space, cfg: PPOConfig):
        super().__init__(action_space, cfg)
        act, arch = _ACTIVATIONS[cfg.activation], cfg.net_arch
        self.actor = build_network(obs_space, self.n_out, hidden=arch, activation=act, out_gain=0.01)
        self.critic = build_network(obs_space, 1, hidden=arch, activation=act, out_gain=1.0)

    def forward(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor(obs), self.critic(obs).squeeze(-1)

    def policy_out(self, obs: Obs) -> torch.Tensor:
        return self.actor(obs)


class SharedActorCritic(ActorCritic):
    """One encoder + trunk (512 ReLU units after a conv encoder) shared by a linear actor head and a linear
    critic head (CleanRL's Atari PPO): observations with an image, or `shared_encoder=True`."""

    def __init__(self, obs_space: spaces.Space, action_space: spaces.Space, cfg: PPOConfig):
        super().__init__(action_space, cfg)
        encoder, dim = build_encoder(obs_space)
        hidden = cfg.net_arch or (512,)
        act = nn.ReLU if has_image(obs_space) else _ACTIVATIONS[cfg.activation]
        self.trunk = nn.Sequential(encoder, mlp(dim, hidden, activation=act))
        self.actor = mlp(hidden[-1], (), self.n_out, out_gain=0.01)
        self.critic = mlp(hidden[-1], (), 1, out_gain=1.0)

    def forward(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(obs)
        return self.actor(h), self.critic(h).squeeze(-1)


class CustomActorCritic(ActorCritic):
    """A user's module `body`: obs -> (logits or Gaussian mean, value) (e.g. `llmrl.roles.policy.LLMPolicy`)."""

    def __init__(self, body: nn.Module, action_space: spaces.Space, cfg: PPOConfig):
        super().__init__(action_space, cfg)
        self.body = body

    def forward(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        out, value = self.body(obs)
        return out, value.reshape(-1)


def actor_critic(obs_space: spaces.Space, action_space: spaces.Space, cfg: PPOConfig,
                 body: nn.Module | None = None) -> ActorCritic:  # fmt: skip
    """PPO's network for these spaces and config: the one place a layout is chosen."""
    if body is not None:
        return CustomActorCritic(body, action_space, cfg)
    if cfg.shared_encoder if cfg.shared_encoder is not None else has_image(obs_space):
        return SharedActorCritic(obs_space, action_space, cfg)
    if (isinstance(obs_space, spaces.Box) and not is_image_space(obs_space)
            and _ACTIVATIONS[cfg.activation] in StackedMLP.BACKWARD):  # fmt: skip
        return StackedMLPActorCritic(obs_space, action_space, cfg)
    return SeparateActorCritic(obs_space, action_space, cfg)


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    next_value: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> np.ndarray:
    """Generalized advantage estimates, (T, N) arrays in, (T, N) out, for NEXT_STEP rollouts.

    values[t] = V(obs_t); next_value = V(obs after the last step). At a done step t the next
    observation (values[t + 1] or next_value) is the episode's final observation: a terminated episode
    bootstraps 0, a truncated one bootstraps V(final obs), and the recursion does not cross into the
    reset step that follows (its own advantage is meaningless and masked out by the caller).
    """
    next_values = np.concatenate([values[1:], np.asarray(next_value)[None]], axis=0)  # (T, N)
    # bootstrap value if not terminated (a truncated episode keeps V(final obs))
    delta = rewards + gamma * next_values * (1.0 - terminated) - values
    # the advantage chain stops at any episode end
    decay = gamma * gae_lambda * (1.0 - (terminated | truncated))
    # A_t = delta_t + decay_t * A_{t+1}: sequential in t; plain python floats beat numpy on these short rows
    cols = []
    for d_col, c_col in zip(delta.T.tolist(), decay.T.tolist()):
        last, col = 0.0, [0.0] * len(d_col)
        for t in range(len(d_col) - 1, -1, -1):
            last = d_col[t] + c_col[t] * last
            col[t] = last
        cols.append(col)
    return np.asarray(cols, dtype=np.float32).T.reshape(rewards.shape)


class PPOLoss(NamedTuple):
    """One minibatch's PPO loss (with its graph) and its terms for logging."""

    loss: torch.Tensor  # () pg_loss + vf_coef * v_loss - ent_coef * entropy
    pg_loss: torch.Tensor  # () clipped surrogate loss
    v_loss: torch.Tensor  # () value loss
    log_ratio: torch.Tensor  # (B,) log pi(a|s) - log pi_old(a|s)


def ppo_loss(model: ActorCritic, out: torch.Tensor, value: torch.Tensor, actions: torch.Tensor,
             old_logp: torch.Tensor, old_values: torch.Tensor, adv: torch.Tensor, returns: torch.Tensor,
             cfg: PPOConfig) -> PPOLoss:  # fmt: skip
    """The PPO loss, written plainly for autograd (CleanRL's form): the reference, and the path for every
    network but the stacked MLP (`ppo_loss_and_grads` is the same math with its gradient by hand)."""
    log_ratio = model.log_prob(out, actions) - old_logp
    ratio = log_ratio.exp()
    # clipped surrogate objective (Schulman et al. 2017, eq. 7), as a loss to minimise
    pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range)).mean()
    if cfg.clip_range_vf is None:
        v_loss = (value - returns).pow(2).mean()
    else:  # PPO2's clipped value loss: the worse of clipped and unclipped
        v_clip = old_values + (value - old_values).clamp(-cfg.clip_range_vf, cfg.clip_range_vf)
        v_loss = torch.max((value - returns).pow(2), (v_clip - returns).pow(2)).mean()
    loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * model.entropy(out).mean()
    return PPOLoss(loss, pg_loss, v_loss, log_ratio)


class LossAndGrads(NamedTuple):
    """One minibatch's PPO loss terms (for logging) and the loss's gradient w.r.t. the network outputs."""

    pg_loss: torch.Tensor  # () clipped surrogate loss
    v_loss: torch.Tensor  # () value loss
    log_ratio: torch.Tensor  # (B,) log pi(a|s) - log pi_old(a|s)
    grad_out: torch.Tensor  # (B, n) d loss / d (logits or Gaussian mean)
    grad_value: torch.Tensor  # (B,) d loss / d value
    grad_log_std: torch.Tensor | None  # (d,) d loss / d log_std (Box actions), else None


class Rollout(NamedTuple):
    """One rollout of T steps of N envs; tensors on the agent's device, arrays in numpy."""

    obs: Obs  # (T, N, ...) observations (a dict of them for Dict spaces)
    actions: torch.Tensor  # (T, N) or (T, N, d)
    logps: torch.Tensor  # (T, N) log pi_old(a|s)
    values: torch.Tensor  # (T, N) V_old(s)
    next_value: torch.Tensor  # (N,) V_old(observation after the last step)
    rewards: np.ndarray  # (T, N) float32
    terminated: np.ndarray  # (T, N) bool
    truncated: np.ndarray  # (T, N) bool
    valid: np.ndarray  # (T, N) bool, False on NEXT_STEP reset steps


@torch.no_grad()
def ppo_loss_and_grads(model: ActorCritic, out: torch.Tensor, value: torch.Tensor, actions: torch.Tensor,
                       old_logp: torch.Tensor, old_values: torch.Tensor, adv: torch.Tensor,
                       returns: torch.Tensor, cfg: PPOConfig) -> LossAndGrads:  # fmt: skip
    """loss = pg_loss + vf_coef * v_loss - ent_coef * entropy, and its gradient, by hand.

    The same math autograd would do (tests check it against autograd), without building a graph:
    on minibatches of 64 the graph's bookkeeping costs more than the arithmetic. Means are over the
    minibatch, so every per-sample gradient carries a 1/B.
    """
    B = adv.shape[0]
    if model.discrete:
        logp_all = torch.log_softmax(out, -1)  # (B, n)
        p = logp_all.exp()
        onehot = torch.zeros_like(out).scatter_(1, actions.long().unsqueeze(1), 1.0)
        logp = (logp_all * onehot).sum(1)
        dlogp_dout = onehot - p  # d log softmax(out)[a] / d out
    else:
        log_std = model.log_std.detach()  # type: ignore[union-attr]
        inv_std = torch.exp(-log_std)
        z = (actions - out) * inv_std  # (B, d)
        logp = (-0.5 * z.pow(2) - log_std - 0.5 * _LOG_2PI).sum(-1)
        dlogp_dout = z * inv_std  # d log N(a; mean, std) / d mean
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()

    # clipped surrogate objective (Schulman et al. 2017, eq. 7), as a loss to minimise; the gradient
    # flows only where the unclipped term is the smaller one (inside the clip range both are equal)
    surr = adv * ratio
    surr_clipped = adv * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range)
    pg_loss = -torch.min(surr, surr_clipped).mean()
    # d pg_loss / d logp (d ratio = ratio * d logp)
    grad_logp = torch.where(surr <= surr_clipped, -surr / B, 0.0)
    grad_out = grad_logp.unsqueeze(1) * dlogp_dout

    if cfg.clip_range_vf is None:
        v_loss = (value - returns).pow(2).mean()
        grad_value = (2 * cfg.vf_coef / B) * (value - returns)
    else:  # PPO2's clipped value loss: the worse of clipped and unclipped
        delta = value - old_values
        v_clip = old_values + delta.clamp(-cfg.clip_range_vf, cfg.clip_range_vf)
        err, err_clip = (value - returns).pow(2), (v_clip - returns).pow(2)
        v_loss = torch.max(err, err_clip).mean()
        inside = (delta.abs() <= cfg.clip_range_vf).to(value.dtype)  # where v_clip moves with value
        grad_err = torch.where(err >= err_clip, value - returns, (v_clip - returns) * inside)
        grad_value = (2 * cfg.vf_coef / B) * grad_err

    grad_log_std = None
    if not model.discrete:  # d logp / d log_std = z^2 - 1; the entropy sum(log_std) + const adds 1 per dim
        grad_log_std = (grad_logp.unsqueeze(1) * (z.pow(2) - 1)).sum(0) - cfg.ent_coef
    elif cfg.ent_coef > 0:  # entropy H = -sum p log p; dH/d out = -p (log p + H)
        entropy = -(p * logp_all).sum(1, keepdim=True)  # (B, 1)
        grad_out += (cfg.ent_coef / B) * p * (logp_all + entropy)
    return LossAndGrads(pg_loss, v_loss, log_ratio, grad_out, grad_value, grad_log_std)


class PPO(Agent):
    """PPO with clipped surrogate, GAE, optional value clipping, entropy bonus, advantage normalisation,
    grad-norm clipping and LR annealing; Discrete or Box actions; any observation kind of `llmrl.nets`.

    `PPO(env, seed=0, policy=None, **PPOConfig fields)`. A custom `policy` is an nn.Module mapping the
    observation tensor (dict of tensors for Dict spaces) to (logits or Gaussian mean, value).
    """

    config_class = PPOConfig
    config: PPOConfig

    def _build(self, policy: nn.Module | None) -> None:
        if not isinstance(self.action_space, (spaces.Discrete, spaces.Box)):
            raise TypeError(f"PPO supports Discrete and Box action spaces, not {self.action_space}.")
        self.model = actor_critic(self.observation_space, self.action_space, self.config, policy).to(
            self.device
        )
        # one flat parameter tensor: one fused Adam kernel and one-op grad clipping (llmrl.optim.FlatAdam)
        self.optimizer = FlatAdam(self.model, self.config.learning_rate, eps=self.config.adam_eps)
        self.flat_params = self.optimizer.flat
        # the hand-derived loss gradient (ppo_loss_and_grads) only where it pays: the stacked MLP, whose
        # small minibatches cost more in graph bookkeeping than in arithmetic; autograd elsewhere
        self.hand_written_loss = self.model.hand_written
        self.n_updates = 0

    # -- acting ---------------------------------------------------------------------------------------------

    def _act(self, obs: Obs, deterministic: bool) -> torch.Tensor:
        return self.model.sample(self.model.policy_out(obs), deterministic)

    def action_values(self, obs: Any) -> tuple[str, np.ndarray]:
        """("p", action probabilities) for Discrete actions; ("mean", Gaussian mean) for Box actions."""
        batch, _ = self._batched(obs)
        with torch.inference_mode():
            out = self.model.policy_out(self._to_tensor(batch))
        if self.model.discrete:
            return "p", torch.softmax(out, -1)[0].cpu().numpy()
        return "mean", out[0].cpu().numpy()

    def _values(self, obs: Obs, chunk: int = 1024) -> torch.Tensor:
        """V(obs) for a flat batch (B, ...) in chunks (bounded memory for images) -> (B,)."""
        n = (obs if isinstance(obs, torch.Tensor) else next(iter(obs.values()))).shape[0]
        parts = [
            self.model(tree_map(functools.partial(_rows, start=i, stop=i + chunk, device=self.device), obs))[
                1
            ]
            for i in range(0, n, chunk)
        ]
        return torch.cat(parts)

    # -- one iteration: rollout, advantages, update -----------------------------------------------------------

    def _iteration(self, total_timesteps: int) -> dict[str, float]:
        self._anneal_lr(total_timesteps)
        return self._train_on(self._collect())

    def _anneal_lr(self, total_timesteps: int) -> None:
        if self.config.anneal_lr:
            frac = max(1.0 - self.num_timesteps / total_timesteps, 0.0)
            self.optimizer.lr = frac * self.config.learning_rate

    def _collect(self) -> Rollout:
        """Step the env n_steps times with the current policy (the rollout workers of
        `llmrl.distributed` call this too, and send the result to the learner)."""
        T, N, model = self.config.n_steps, self.num_envs, self.model
        obs_buf = empty_obs_storage(self.observation_space, (T, N))
        rewards = np.zeros((T, N), dtype=np.float32)
        terminated = np.zeros((T, N), dtype=bool)
        truncated = np.zeros((T, N), dtype=bool)
        valid = np.zeros((T, N), dtype=bool)
        outs, actions, values = [], [], []
        clip_low = clip_high = None
        if isinstance(self.action_space, spaces.Box):
            clip_low, clip_high = self.action_space.low, self.action_space.high

        with torch.inference_mode():
            for t in range(T):
                stored = tree_map(operator.itemgetter(t), obs_buf)
                copy_obs_(stored, self._obs)
                obs_t: Obs = tree_map(lambda x: x.to(self.device), stored)
                # separate actor and critic: only the actor runs per step; values come batched after the rollout
                if model.separate:
                    out = model.policy_out(obs_t)
                else:
                    out, value = model(obs_t)
                    values.append(value)
                action = model.sample(out, deterministic=False)
                outs.append(out)
                actions.append(action)
                env_action = action.cpu().numpy()
                if clip_low is not None:  # the Gaussian is unbounded; the env gets the clipped action
                    env_action = np.clip(env_action, clip_low, clip_high)
                _, r, term, trunc, infos, ok = self._env_step(env_action)
                rewards[t], terminated[t], truncated[t], valid[t] = r, term, trunc, ok
                if "reward_relabel" in infos:
                    self._apply_relabel(infos, rewards, valid, t)

            actions_t = torch.stack(actions)  # (T, N) or (T, N, d)
            logps_t = model.log_prob(torch.cat(outs), actions_t.reshape(T * N, *actions_t.shape[2:])).reshape(
                T, N
            )
            if model.separate:
                values_t = self._values(tree_map(lambda x: x.reshape(T * N, *x.shape[2:]), obs_buf)).reshape(
                    T, N
                )
            else:
                values_t = torch.stack(values)  # (T, N)
            next_value = self._values(self._to_tensor(self._obs))
        return Rollout(
            obs_buf, actions_t, logps_t, values_t, next_value, rewards, terminated, truncated, valid
        )

    def _train_on(self, rollout: Rollout) -> dict[str, float]:
        """Advantages and the PPO update from one rollout (T, N): this agent's own or gathered from workers."""
        cfg = self.config
        obs_buf, actions_t, logps_t, values_t, next_value, rewards, terminated, truncated, valid = rollout
        adv = compute_gae(rewards, values_t.cpu().numpy(), next_value.cpu().numpy(), terminated, truncated,
                          cfg.gamma, cfg.gae_lambda)  # fmt: skip
        adv_t = torch.as_tensor(adv, device=self.device)
        returns_t = adv_t + values_t
        metrics = self._update(obs_buf, actions_t, logps_t, values_t, adv_t, returns_t, valid)
        mask = torch.as_tensor(valid, device=self.device)
        var_y = returns_t[mask].var()
        metrics["explained_variance"] = (
            float(1 - (returns_t - values_t)[mask].var() / var_y) if var_y > 0 else float("nan")
        )
        metrics["learning_rate"] = self.optimizer.lr
        return metrics

    def _apply_relabel(self, infos: dict, rewards: np.ndarray, valid: np.ndarray, t: int) -> None:
        """Add info["reward_relabel"] (L,) to the last L transitions of that env still in this rollout."""
        mask = infos.get("_reward_relabel", np.ones(self.num_envs, dtype=bool))
        for i in np.flatnonzero(mask):
            extra = np.asarray(infos["reward_relabel"][i], dtype=np.float32).reshape(-1)
            k, s = len(extra) - 1, t
            while k >= 0 and s >= 0:  # walk back over this env's transitions, skipping reset steps
                if valid[s, i]:
                    rewards[s, i] += extra[k]
                    k -= 1
                s -= 1

    def _update(
        self, obs_buf: Obs, actions, old_logp, old_values, advantages, returns, valid
    ) -> dict[str, float]:
        cfg, model, bs = self.config, self.model, self.config.batch_size
        keep = torch.as_tensor(np.flatnonzero(valid.reshape(-1)), device=self.device)  # reset steps dropped
        n = len(keep)
        flat = lambda x: x.reshape(-1, *x.shape[2:]).to(self.device)[keep]  # noqa: E731  (T, N, ...) -> (n, ...)
        b_obs = tree_map(flat, obs_buf)
        b_actions, b_logp, b_values, b_adv, b_returns = map(
            flat, (actions, old_logp, old_values, advantages, returns)
        )
        pg_losses, v_losses, log_ratios, outs = [], [], [], []
        stop = False
        # one minibatch holds the whole rollout (e.g. RL-Zoo's CartPole PPO): its order changes nothing but
        # float rounding, so it is neither shuffled nor re-normalised per epoch
        whole = n <= bs
        for epoch in range(cfg.n_epochs):
            if not whole or epoch == 0:
                # shuffle once per epoch; minibatches are then contiguous slices (views, no per-minibatch gathers)
                perm = torch.randperm(n, device=self.device) if not whole else None

                def pick(x: torch.Tensor, perm: torch.Tensor | None = perm) -> torch.Tensor:
                    return x if perm is None else x[perm]

                e_obs = tree_map(pick, b_obs)
                e_actions, e_logp, e_values, e_adv, e_returns = map(
                    pick, (b_actions, b_logp, b_values, b_adv, b_returns)
                )
                if cfg.normalize_advantage:  # per minibatch, as SB3 and CleanRL do; all minibatches in one go
                    e_adv = _normalize_chunks(e_adv, bs)
            for start in range(0, n, bs):
                sl = slice(start, start + bs)
                mb = (e_actions[sl], e_logp[sl], e_values[sl], e_adv[sl], e_returns[sl])
                grad = self.optimizer.grad
                if self.hand_written_loss:  # the stacked MLP: gradients by hand, no autograd graph
                    out, v = model.forward_train(tree_map(operator.itemgetter(sl), e_obs))
                    step = ppo_loss_and_grads(model, out.detach(), v.detach(), *mb, cfg)
                    terms = (step.pg_loss, step.v_loss, step.log_ratio)
                else:  # the reference: autograd through ppo_loss
                    out, v = model(tree_map(operator.itemgetter(sl), e_obs))
                    ref = ppo_loss(model, out, v, *mb, cfg)
                    terms = (ref.pg_loss.detach(), ref.v_loss.detach(), ref.log_ratio.detach())
                if cfg.target_kl is not None and _approx_kl(terms[2]) > 1.5 * cfg.target_kl:
                    stop = True
                    break
                grad.zero_()
                if self.hand_written_loss:
                    model.backward(out, v, step.grad_out, step.grad_value)
                    if step.grad_log_std is not None:
                        model.log_std.grad += step.grad_log_std  # type: ignore[union-attr, operator]
                else:
                    ref.loss.backward()
                with torch.no_grad():  # clip_grad_norm_'s math on the one flat gradient
                    grad.mul_((cfg.max_grad_norm / (grad.norm() + 1e-6)).clamp_(max=1.0))
                self.optimizer.step()  # the gradient is clipped above
                self.n_updates += 1
                # diagnostics are computed once at the end from these pieces
                pg_losses.append(terms[0])
                v_losses.append(terms[1])
                log_ratios.append(terms[2])
                outs.append(out.detach())
            if stop:
                break
        if not pg_losses:
            return {"n_updates": float(self.n_updates)}
        with torch.no_grad():
            log_ratio = torch.cat(log_ratios)
            ratio = log_ratio.exp()
            return {
                "loss/policy": float(torch.stack(pg_losses).mean()),
                "loss/value": float(torch.stack(v_losses).mean()),
                "entropy": float(model.entropy(torch.cat(outs)).mean()),
                "approx_kl": float(_approx_kl(log_ratio)),
                "clip_fraction": float(((ratio - 1).abs() > cfg.clip_range).float().mean()),
                "n_updates": float(self.n_updates),
            }

    # -- checkpoint state -------------------------------------------------------------------------------------

    def _get_state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "n_updates": self.n_updates,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:  # keys or shapes differ: the config builds another network
            raise CheckpointError(
                f"the checkpoint's network does not fit the {type(self.model).__name__} its config builds "
                f"({' '.join(str(err).split())[:300]}); load it with the policy module and llmrl version "
                "that saved it"
            ) from err
        self.optimizer.load_state_dict(state["optimizer"])
        self.n_updates = int(state["n_updates"])


def _approx_kl(log_ratio: torch.Tensor) -> torch.Tensor:
    """KL(old || new) estimate from log(new / old) per sample (http://joschu.net/blog/kl-approx.html)."""
    return ((log_ratio.exp() - 1) - log_ratio).mean()


def _normalize_chunks(x: torch.Tensor, size: int) -> torch.Tensor:
    """Normalise each consecutive chunk of `size` entries to zero mean, unit std (a chunk of 1 is left as is)."""
    n_full = (len(x) // size) * size
    parts = []
    if n_full:
        full = x[:n_full].view(-1, size)  # (n_minibatches, size)
        parts.append(((full - full.mean(1, keepdim=True)) / (full.std(1, keepdim=True) + 1e-8)).reshape(-1))
    rest = x[n_full:]
    if len(rest) > 1:
        rest = (rest - rest.mean()) / (rest.std() + 1e-8)
    parts.append(rest)
    return torch.cat(parts)


def _rows(x: torch.Tensor, *, start: int, stop: int, device: torch.device) -> torch.Tensor:
    return x[start:stop].to(device)
