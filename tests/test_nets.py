"""Encoders for every observation kind, the seed's two-input network, flat parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

from llmrl.errors import ConfigError
from llmrl.nets import (
    NatureCNN,
    StackedMLP,
    build_encoder,
    build_network,
    copy_obs_,
    empty_obs_storage,
    flatten_parameters,
    image_channels_first,
    mlp,
    obs_to_tensor,
)


def test_channel_layout_is_detected():
    assert image_channels_first((4, 84, 84))
    assert not image_channels_first((84, 84, 3))
    assert not image_channels_first((84, 84, 1))


def test_atari_conv_stack_shapes_and_layout_equivalence():
    chw = NatureCNN((3, 84, 84))
    hwc = NatureCNN((84, 84, 3))
    hwc.load_state_dict(chw.state_dict())
    x = torch.randint(0, 256, (2, 3, 84, 84), dtype=torch.uint8)
    assert chw.out_dim == 3136  # 64 * 7 * 7
    assert [m.kernel_size for m in chw.conv if isinstance(m, nn.Conv2d)] == [(8, 8), (4, 4), (3, 3)]
    assert [m.stride for m in chw.conv if isinstance(m, nn.Conv2d)] == [(4, 4), (2, 2), (1, 1)]
    torch.testing.assert_close(chw(x), hwc(x.permute(0, 2, 3, 1)))


def test_first_conv_scales_pixels_through_its_weights():
    cnn = NatureCNN((4, 36, 36))
    x = torch.randint(0, 256, (3, 4, 36, 36), dtype=torch.uint8)
    conv1 = cnn.conv[0]
    ref = torch.nn.functional.conv2d(x.float() / 255.0, conv1.weight, conv1.bias, stride=4)
    torch.testing.assert_close(conv1(x.float()), ref, rtol=1e-5, atol=1e-6)
    assert list(cnn.state_dict()) == ["conv.0.weight", "conv.0.bias", "conv.2.weight", "conv.2.bias",
                                      "conv.4.weight", "conv.4.bias"]  # fmt: skip


def test_image_storage_is_channels_last_so_batches_reach_the_convs_without_a_copy():
    space = spaces.Dict({"image": spaces.Box(0, 255, (4, 36, 36), np.uint8), "vec": spaces.Box(-1, 1, (3,))})
    store = empty_obs_storage(space, (5, 2))
    assert store["image"].shape == (5, 2, 4, 36, 36) and store["vec"].shape == (5, 2, 3)
    rng = np.random.default_rng(0)
    steps = [{"image": rng.integers(0, 256, (2, 4, 36, 36), dtype=np.uint8), "vec": rng.random((2, 3))}
             for _ in range(5)]  # fmt: skip
    for t, obs in enumerate(steps):
        copy_obs_({k: v[t] for k, v in store.items()}, obs)
    np.testing.assert_array_equal(store["image"].numpy(), np.stack([o["image"] for o in steps]))
    np.testing.assert_allclose(store["vec"].numpy(), np.stack([o["vec"] for o in steps]), rtol=1e-6)
    batch = store["image"].reshape(10, 4, 36, 36)[torch.tensor([7, 0, 3])]
    assert batch.is_contiguous(memory_format=torch.channels_last)
    # the stored layout is already the conv layout: NatureCNN's `contiguous` returns the same memory
    assert batch.contiguous(memory_format=torch.channels_last).data_ptr() == batch.data_ptr()


def test_discrete_is_one_hot_and_box_is_flattened():
    enc, dim = build_encoder(spaces.Discrete(5, start=1))
    assert dim == 5
    torch.testing.assert_close(enc(torch.tensor([1, 5])), torch.eye(5)[[0, 4]])
    enc, dim = build_encoder(spaces.Box(-1, 1, (2, 3), np.float32))
    assert dim == 6 and enc(torch.ones(4, 2, 3)).shape == (4, 6)


def test_dict_image_plus_llm_vector_is_the_seeds_two_input_network():
    space = spaces.Dict({"image": spaces.Box(0, 255, (84, 84, 1), np.uint8), "llm": spaces.Box(-9, 9, (16,))})
    net = build_network(space, 4)
    # encoder concat (3136 + 16) -> Linear(512) -> ReLU -> Linear(4)
    linears = [m for m in net[1] if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3136 + 16, 512), (512, 4)]
    obs = obs_to_tensor({"image": np.zeros((3, 84, 84, 1), np.uint8), "llm": np.zeros((3, 16))}, space)
    assert obs["image"].dtype == torch.uint8 and obs["llm"].dtype == torch.float32
    assert net(obs).shape == (3, 4)


def test_unsupported_inputs_raise_clear_errors():
    with pytest.raises(ConfigError, match="too small"):
        NatureCNN((3, 10, 10))
    with pytest.raises(ConfigError, match="custom network"):
        build_encoder(spaces.Text(5))


def test_flatten_parameters_shares_storage_and_gradients():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    before = [p.detach().clone() for p in net.parameters()]
    flat = flatten_parameters(net)
    for p, b in zip(net.parameters(), before):
        assert torch.equal(p, b)
    net(torch.ones(5, 3)).sum().backward()
    assert flat.grad.abs().sum() > 0
    assert torch.equal(flat.grad[:12].view(4, 3), net[0].weight.grad)
    with torch.no_grad():
        flat.add_(1.0)
    assert torch.equal(net[0].weight, before[0] + 1.0)


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU])
def test_stacked_mlp_matches_separate_mlps_and_autograd(activation):
    torch.manual_seed(0)
    stacked = StackedMLP(5, (7, 6), (3, 1), activation=activation, out_gains=(0.01, 1.0))
    torch.manual_seed(0)  # the same init draws as two mlp() calls in order
    nets = [mlp(5, (7, 6), 3, activation=activation, out_gain=0.01), mlp(5, (7, 6), 1, activation=activation)]
    x = torch.randn(4, 5)
    out = stacked(x)  # (2, 4, 3); the critic's padded columns are zero
    torch.testing.assert_close(out[0], nets[0](x))
    torch.testing.assert_close(out[1, :, :1], nets[1](x))
    assert torch.equal(out[1, :, 1:], torch.zeros(4, 2))
    torch.testing.assert_close(stacked.forward_one(x, 0), nets[0](x))

    grad_out = torch.randn(2, 4, 3)
    stacked.forward_saved(x)
    stacked.backward(grad_out)
    manual = [p.grad.clone() for p in stacked.parameters()]
    for p in stacked.parameters():
        p.grad = None
    (stacked(x) * grad_out).sum().backward()
    for got, want in zip(manual, (p.grad for p in stacked.parameters())):
        torch.testing.assert_close(got, want)
