"""`FlatAdam`: the one Adam of the agents (PPO and DQN), over a network's parameters kept in one flat tensor.

Each parameter becomes a view of one flat storage and its gradient a view of another (`nets.flatten_parameters`;
the module and its state_dict are unchanged), so zeroing, clipping the global norm and Adam's step are a
handful of ops on one tensor instead of an optimizer loop over parameters — on a small network most of the
cost of a gradient step. The update is torch.optim.Adam's:
m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2; p <- p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps),
run by the fused CPU/GPU kernel `torch._fused_adam_` (what `Adam(fused=True)` calls) where torch has it,
else by the same formula in public tensor ops (tests/test_optim.py checks both against torch.optim.Adam).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from llmrl.nets import flatten_parameters

__all__ = ["FlatAdam", "HAS_FUSED_ADAM"]

HAS_FUSED_ADAM = hasattr(torch, "_fused_adam_")
"""Whether this torch has the private fused kernel (CPU from torch 2.4); without it the public path runs."""


class FlatAdam:
    """Adam over every trainable parameter of `module`, as one flat tensor (`flat`, gradient `grad`).

    `lr` may be changed between steps (learning-rate annealing). `step(max_grad_norm)` clips the global
    gradient norm first, as torch.nn.utils.clip_grad_norm_ does, folded into the kernel as its divisor.
    """

    def __init__(
        self,
        module: nn.Module,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        *,
        fused: bool | None = None,
    ):
        self.flat = flatten_parameters(module)
        self.grad: torch.Tensor = self.flat.grad  # type: ignore[assignment]  # flatten_parameters sets it
        self.lr, self.betas, self.eps = lr, betas, eps
        self.fused = (HAS_FUSED_ADAM and self.flat.device.type in ("cpu", "cuda")) if fused is None else fused
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        self._step = torch.zeros(
            (), dtype=torch.float32, device=self.flat.device
        )  # the kernel's step counter
        self._divisor = torch.ones((), dtype=self.flat.dtype, device=self.flat.device)

    @property
    def steps(self) -> int:
        """Adam steps taken (t in the bias corrections)."""
        return int(self._step.item())

    def zero_grad(self) -> None:
        self.grad.zero_()

    @torch.no_grad()
    def step(self, max_grad_norm: float | None = None) -> None:
        """One Adam step on the current gradient, first clipped to global norm <= max_grad_norm if given:
        torch.nn.utils.clip_grad_norm_ multiplies by min(1, max_norm / (norm + 1e-6)); the kernel divides by
        the reciprocal, max(1, (norm + 1e-6) / max_norm)."""
        divisor = None
        if max_grad_norm is not None:
            norm = torch.linalg.vector_norm(self.grad)
            divisor = torch.clamp_min(norm.add_(1e-6).div_(max_grad_norm), 1.0, out=self._divisor)
        b1, b2 = self.betas
        self._step.add_(1)  # the kernel reads t; torch.optim.Adam increments it before the call too
        if self.fused:
            torch._fused_adam_([self.flat.data], [self.grad], [self.exp_avg], [self.exp_avg_sq], [], [self._step],
                               lr=self.lr, beta1=b1, beta2=b2, weight_decay=0.0, eps=self.eps, amsgrad=False,
                               maximize=False, grad_scale=divisor)  # fmt: skip
            return
        # torch.optim.Adam's single-tensor formula
        t = self.steps
        grad = self.grad if divisor is None else self.grad / divisor
        self.exp_avg.lerp_(grad, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(1 - b2**t)).add_(self.eps)
        self.flat.data.addcdiv_(self.exp_avg, denom, value=-self.lr / (1 - b1**t))

    def state_dict(self) -> dict[str, Any]:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load `state_dict()`'s form, or a torch.optim.Adam state over the one flat parameter (PPO
        checkpoints written before PPO used FlatAdam)."""
        if "param_groups" in state:
            per_param = state.get("state") or {}
            saved = per_param.get(0, per_param.get("0"))
            if saved is None:  # saved before the first step
                self.exp_avg.zero_()
                self.exp_avg_sq.zero_()
                self._step.zero_()
                return
            state = {**saved, "steps": int(torch.as_tensor(saved["step"]).item())}
        self.exp_avg.copy_(torch.as_tensor(state["exp_avg"]).reshape(self.exp_avg.shape))
        self.exp_avg_sq.copy_(torch.as_tensor(state["exp_avg_sq"]).reshape(self.exp_avg_sq.shape))
        self._step.fill_(int(state["steps"]))
