"""FlatAdam (PPO's and DQN's Adam) against torch.optim.Adam, on the fused kernel and on the public path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmrl.optim import HAS_FUSED_ADAM, FlatAdam


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    b = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize(
    "fused",
    [pytest.param(True, marks=pytest.mark.skipif(not HAS_FUSED_ADAM, reason="no fused kernel")), False],
)
def test_flat_adam_equals_torch_adam_with_grad_clipping_and_lr_changes(fused):
    a, b = _pair()
    flat, ref = FlatAdam(a, 1e-2, eps=1e-5, fused=fused), torch.optim.Adam(b.parameters(), lr=1e-2, eps=1e-5)
    for i in range(6):
        lr = 1e-2 * (1 - i / 6)  # PPO's annealing changes lr between steps
        flat.lr = lr
        for group in ref.param_groups:
            group["lr"] = lr
        x = torch.randn(8, 5) * 10
        flat.zero_grad()
        a(x).pow(2).sum().backward()
        flat.step(1.0 if i % 2 else None)  # odd steps: norm >> 1, clipped
        ref.zero_grad()
        b(x).pow(2).sum().backward()
        if i % 2:
            nn.utils.clip_grad_norm_(b.parameters(), 1.0)
        ref.step()
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert flat.steps == 6


def test_flat_adam_loads_a_torch_adam_state_over_the_flat_parameter():
    """PPO checkpoints written before PPO used FlatAdam hold torch.optim.Adam's state of one flat tensor."""
    a, b = _pair()
    flat = FlatAdam(a, 1e-2, fused=False)
    ref_param = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in b.parameters()]))
    ref = torch.optim.Adam([ref_param], lr=1e-2)
    for _ in range(3):
        ref_param.grad = torch.randn_like(ref_param)
        ref.step()
    flat.load_state_dict(ref.state_dict())
    assert flat.steps == 3
    torch.testing.assert_close(flat.exp_avg, ref.state[ref_param]["exp_avg"])
    torch.testing.assert_close(flat.exp_avg_sq, ref.state[ref_param]["exp_avg_sq"])
    fresh = FlatAdam(b, 1e-2)
    fresh.load_state_dict(torch.optim.Adam([nn.Parameter(torch.zeros(3))]).state_dict())  # before any step
    assert fresh.steps == 0
