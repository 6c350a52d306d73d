"""Networks built from an observation space: encoders, MLP heads, and the tensors that feed them.

    encoder, dim = build_encoder(env.single_observation_space)   # nn.Module, its output width
    q_net = build_network(space, n_actions)                       # encoder -> MLP head

Observation kinds and their encoders:

- Box vector (any float shape) -> flattened float32.
- Image: a uint8 Box of rank 3 (or rank 2 = one grey channel). Channels-first (C, H, W) or
  channels-last (H, W, C) is detected: the smaller of the first and last dimension is the channel
  axis (so (4, 84, 84) frame stacks and (84, 84, 3) RGB frames both work). Pixels are scaled by 1/255
  and go through the classic Atari conv stack (Mnih et al. 2015, Nature): 32 filters 8x8 stride 4 ->
  64 filters 4x4 stride 2 -> 64 filters 3x3 stride 1, ReLU after each, flattened.
- Discrete(n) -> one-hot of width n (a `start` offset is honoured).
- MultiBinary -> flattened float32.
- Dict of the above -> each key encoded, features concatenated in sorted key order. With an image and
  an "llm" vector this is the seed's two-input Q-network: conv features ++ LLM features -> MLP head.

Custom networks are plain `nn.Module`s taking the observation tensor (a dict of tensors for Dict
spaces) as built by `obs_to_tensor`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from llmrl.errors import ConfigError

__all__ = [
    "Obs",
    "is_image_space",
    "image_channels_first",
    "build_encoder",
    "build_network",
    "mlp",
    "StackedMLP",
    "NatureCNN",
    "Flatten",
    "obs_to_tensor",
    "space_dtype",
    "empty_obs_storage",
    "copy_obs_",
    "stored_zeros",
    "tree_map",
    "has_image",
    "flatten_parameters",
]

Obs = torch.Tensor | dict[str, torch.Tensor]
"""A batched observation as networks consume it: a tensor, or a dict of tensors for Dict spaces."""


def is_image_space(space: gym.Space) -> bool:
    """A uint8 Box of rank 2 or 3 is an image."""
    return isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) in (2, 3)


def image_channels_first(shape: Sequence[int]) -> bool:
    """True for (C, H, W), False for (H, W, C): the channel axis is the smaller end dimension."""
    return len(shape) == 3 and shape[0] <= shape[-1]


def has_image(space: gym.Space) -> bool:
    """True if the space is an image or a Dict holding one (such nets default to a 512-unit head)."""
    if isinstance(space, spaces.Dict):
        return any(has_image(s) for s in space.spaces.values())
    return is_image_space(space)


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int | None = None,
    *,
    activation: type[nn.Module] = nn.ReLU,
    out_gain: float | None = None,
    orthogonal: bool = True,
) -> nn.Sequential:
    """Linear layers with `activation` between them; the last layer has no activation.

    With `orthogonal=True` weights get orthogonal init with gain sqrt(2) (hidden) and `out_gain`
    (output; 1.0 if None), biases zero — the init PPO implementations rely on (Engstrom et al. 2020,
    "Implementation Matters in Deep Policy Gradients"). `out_dim=None` ends with the last hidden layer
    and its activation (a feature trunk).
    """
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden]
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [_init(nn.Linear(a, b), math.sqrt(2), orthogonal), activation()]
    if out_dim is not None:
        layers.append(_init(nn.Linear(dims[-1], out_dim), 1.0 if out_gain is None else out_gain, orthogonal))
    return nn.Sequential(*layers)


def _init(layer: nn.Module, gain: float, orthogonal: bool) -> nn.Module:
    if orthogonal and isinstance(layer, (nn.Linear, nn.Conv2d)):
        nn.init.orthogonal_(layer.weight, gain)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return layer


class StackedMLP(nn.Module):
    """K MLPs of the same hidden shape on the same input (PPO's actor and critic), run as one batched
    matmul per layer: x (B, in) -> (K, B, max(out_dims)), net k's output in columns [:out_dims[k]].

    Each net is initialised exactly as `mlp(...)` would (same RNG draws, in order), then stacked:
    weights (K, in, out), biases (K, 1, out). Output columns beyond a net's own width are zero and,
    receiving no gradient, stay zero. `forward_saved` + `backward` are a hand-written backward pass:
    for the tiny networks of classic control an autograd graph costs several times the arithmetic.
    Activations: tanh or relu, whose backward needs only their outputs y (one fused op each).
    `orthogonal=False` keeps PyTorch's default init (DQN's Q-network, as SB3's), same draws as `mlp`.
    """

    # (grad w.r.t. y, y) -> grad w.r.t. the activation's input: g * (1 - y^2) for tanh, g * (y > 0) for relu
    BACKWARD: dict[type[nn.Module], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        nn.Tanh: torch.ops.aten.tanh_backward,
        nn.ReLU: lambda g, y: torch.ops.aten.threshold_backward(g, y, 0),
    }

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dims: Sequence[int], *,
                 activation: type[nn.Module] = nn.Tanh, out_gains: Sequence[float | None] | None = None,
                 orthogonal: bool = True):  # fmt: skip
        super().__init__()
        if activation not in self.BACKWARD:
            raise ConfigError(f"StackedMLP supports activations {list(self.BACKWARD)}, not {activation}.")
        self.out_dims = tuple(out_dims)
        # the function, not a module: a module call costs more than the op on the tiny batches of acting
        self._act_fn: Callable[[torch.Tensor], torch.Tensor] = (
            torch.relu if activation is nn.ReLU else torch.tanh
        )
        self.act_backward = self.BACKWARD[activation]
        gains = out_gains or [None] * len(out_dims)
        nets = [mlp(in_dim, hidden, k, activation=activation, out_gain=g, orthogonal=orthogonal)
                for k, g in zip(out_dims, gains)]  # fmt: skip
        width = max(self.out_dims)
        weights, biases = [], []
        for layer in range(len(hidden) + 1):
            # (Linear, activation) pairs, the last Linear alone
            linears: list[nn.Linear] = [net[2 * layer] for net in nets]  # type: ignore[misc]
            out = linears[0].out_features if layer < len(hidden) else width
            w = torch.zeros(len(nets), linears[0].in_features, out)
            b = torch.zeros(len(nets), 1, out)
            for k, lin in enumerate(linears):
                w[k, :, : lin.out_features] = lin.weight.detach().T
                b[k, 0, : lin.out_features] = lin.bias.detach()
            weights.append(nn.Parameter(w))
            biases.append(nn.Parameter(b))
        self.weights, self.biases = nn.ParameterList(weights), nn.ParameterList(biases)
        self._layers = list(zip(weights, biases))  # plain list: ParameterList indexing is slow per step
        self._saved: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.expand(len(self.out_dims), *x.shape)  # (K, B, in): every net reads the same input
        for w, b in self._layers[:-1]:
            h = self._act_fn(torch.baddbmm(b, h, w))
        w, b = self._layers[-1]
        return torch.baddbmm(b, h, w)

    def forward_one(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Net k alone, (B, in) -> (B, out_dims[k]) (e.g. the actor during rollouts)."""
        h = x
        for w, b in self._layers[:-1]:
            h = self._act_fn(torch.addmm(b[k], h, w[k]))
        w, b = self._layers[-1]
        return torch.addmm(b[k, :, : self.out_dims[k]], h, w[k, :, : self.out_dims[k]])

    def forward_saved(self, x: torch.Tensor) -> torch.Tensor:
        """forward(x) without an autograd graph, keeping the layer inputs for `backward`."""
        with torch.no_grad():
            h = x.expand(len(self.out_dims), *x.shape)
            self._saved = [h]
            for w, b in self._layers[:-1]:
                h = self._act_fn(torch.baddbmm(b, h, w))
                self._saved.append(h)
            w, b = self._layers[-1]
            return torch.baddbmm(b, h, w)

    def backward(self, grad_out: torch.Tensor, *, input_grad: bool = False) -> torch.Tensor | None:
        """Write d loss / d parameters into each parameter's `.grad` (overwriting it), given
        grad_out = d loss / d forward_saved(x), (K, B, max(out_dims)). With `input_grad`, also return
        d loss / d x (B, in), summed over the K nets (to continue backward into an encoder)."""
        g = grad_out
        gx = None
        if self._layers[0][0].grad is None:
            for p in self.parameters():
                p.grad = torch.zeros_like(p)
        with torch.no_grad():
            for i in range(len(self._layers) - 1, -1, -1):
                (w, b), h_in = self._layers[i], self._saved[i]
                torch.sum(g, 1, keepdim=True, out=b.grad)  # (K, 1, out)
                torch.bmm(h_in.transpose(1, 2), g, out=w.grad)  # (K, in, out)
                if i > 0:  # through the layer, then the activation that produced h_in
                    g = self.act_backward(torch.bmm(g, w.transpose(1, 2)), h_in)
                elif input_grad:
                    gx = torch.bmm(g, w.transpose(1, 2)).sum(0)  # (B, in)
        self._saved = []
        return gx


class NatureCNN(nn.Module):
    """The classic Atari conv stack on uint8 images; (B, C, H, W) or (B, H, W, C) -> (B, features)."""

    def __init__(self, shape: Sequence[int], *, orthogonal: bool = True):
        super().__init__()
        shape = tuple(shape)
        if len(shape) == 2:
            shape = (1, *shape)
        self.channels_first = image_channels_first(shape)
        c, h, w = shape if self.channels_first else (shape[2], shape[0], shape[1])
        if h < 36 or w < 36:
            raise ConfigError(
                f"image observations of {h}x{w} pixels are too small for the Atari conv stack (needs >= 36x36); "
                "resize them (e.g. llmrl's image-observation wrapper with size=84) or pass a custom policy network."
            )
        g = math.sqrt(2)
        self.conv = nn.Sequential(
            _init(_PixelConv2d(c, 32, 8, stride=4), g, orthogonal), nn.ReLU(),
            _init(nn.Conv2d(32, 64, 4, stride=2), g, orthogonal), nn.ReLU(),
            _init(nn.Conv2d(64, 64, 3, stride=1), g, orthogonal), nn.ReLU(),
            nn.Flatten(),
        )  # fmt: skip
        with torch.no_grad():
            self.out_dim = int(self.conv(torch.zeros(1, c, h, w)).shape[1])  # 3136 for 84x84

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # (B, H, W) grey
            x = x.unsqueeze(1)
        elif not self.channels_first:
            x = x.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
        # channels-last memory: oneDNN's fast conv layout on CPU, ~1.5x faster training steps than NCHW
        # for this stack. A no-op for HWC input and for batches read from `empty_obs_storage`, which
        # stores images channels-last; otherwise a transposing copy of the uint8 input (4x smaller than
        # the float one). The 1/255 scaling happens in the first conv's weights (_PixelConv2d).
        x = x.contiguous(memory_format=torch.channels_last)
        return self.conv(x.float())


class _PixelConv2d(nn.Conv2d):
    """A conv on raw pixel values 0..255 that acts as on pixels scaled to [0, 1]: W * (x / 255) is computed
    as (W / 255) * x, so the (B, C, H, W) float batch is not divided element by element (a full pass over
    the largest tensor of the step). Parameters and state-dict keys are those of nn.Conv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight / 255.0, self.bias)


class Flatten(nn.Module):
    """The encoder of vector observations: (B, *shape) -> (B, prod(shape)) float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).float()


class _OneHot(nn.Module):
    def __init__(self, n: int, start: int):
        super().__init__()
        self.n, self.start = n, start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x.long().reshape(-1) - self.start, self.n).float()


class _DictEncoder(nn.Module):
    def __init__(self, encoders: dict[str, nn.Module]):
        super().__init__()
        self.keys = sorted(encoders)
        self.encoders = nn.ModuleDict(encoders)

    def forward(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.encoders[k](x[k]) for k in self.keys], dim=1)


def build_encoder(space: gym.Space, *, orthogonal: bool = True) -> tuple[nn.Module, int]:
    """An encoder for one (unbatched) observation space and the width of its output features."""
    if is_image_space(space):
        cnn = NatureCNN(tuple(space.shape or ()), orthogonal=orthogonal)
        return cnn, cnn.out_dim
    if isinstance(space, spaces.Box):
        return Flatten(), int(np.prod(space.shape))
    if isinstance(space, spaces.Discrete):
        return _OneHot(int(space.n), int(space.start)), int(space.n)
    if isinstance(space, spaces.MultiBinary):
        return Flatten(), int(np.prod(space.shape))
    if isinstance(space, spaces.Dict):
        encoders, total = {}, 0
        for key, sub in space.spaces.items():
            if isinstance(sub, spaces.Dict):
                raise ConfigError(
                    f"nested Dict observation at key {key!r} is not supported; flatten the Dict."
                )
            enc, dim = build_encoder(sub, orthogonal=orthogonal)
            encoders[key], total = enc, total + dim
        return _DictEncoder(encoders), total
    raise ConfigError(
        f"observation space {space} is not supported by the built-in encoders (Box, uint8 image, Discrete, "
        "MultiBinary, Dict of those); pass a custom network as `policy=` (a plain nn.Module)."
    )


def build_network(
    space: gym.Space,
    out_dim: int | None,
    *,
    hidden: Sequence[int] | None = None,
    activation: type[nn.Module] | None = None,
    out_gain: float | None = None,
) -> nn.Sequential:
    """encoder -> MLP. Defaults: hidden (512,) ReLU when the space holds an image (the seed's
    Q-network head), else (64, 64) Tanh (SB3's MlpPolicy)."""
    image = has_image(space)
    hidden = tuple(hidden) if hidden is not None else ((512,) if image else (64, 64))
    activation = activation or (nn.ReLU if image else nn.Tanh)
    encoder, dim = build_encoder(space)
    return nn.Sequential(encoder, mlp(dim, hidden, out_dim, activation=activation, out_gain=out_gain))


# -- observations as tensors --------------------------------------------------------------------


def space_dtype(space: gym.Space) -> torch.dtype:
    """The torch dtype observations of `space` are stored in (uint8 images stay uint8)."""
    if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete)):
        return torch.int64
    if isinstance(space, spaces.Box) and space.dtype == np.uint8:
        return torch.uint8
    return torch.float32


def obs_to_tensor(obs: Any, space: gym.Space, device: torch.device | str = "cpu") -> Any:
    """Batched numpy observations (leading dim = batch) -> tensors in the dtype of `space_dtype`."""
    if isinstance(space, spaces.Dict):
        return {k: obs_to_tensor(obs[k], s, device) for k, s in space.spaces.items()}
    return torch.as_tensor(np.asarray(obs), dtype=space_dtype(space), device=device)


def empty_obs_storage(space: gym.Space, lead: Sequence[int], device: torch.device | str = "cpu") -> Any:
    """Preallocated zeros of shape (*lead, *space.shape) for each leaf of `space`.

    Channels-first images (C, H, W) keep that shape but are laid out channels-last in memory, the conv
    stack's layout: a batch gathered from the storage (indexing keeps the strides) reaches `NatureCNN`
    without a transposing copy, which costs about as much as the first conv's forward at batch 256. The
    transposition happens once per stored step instead (`copy_obs_`), on a few frames.
    """
    if isinstance(space, spaces.Dict):
        return {k: empty_obs_storage(s, lead, device) for k, s in space.spaces.items()}
    shape = () if isinstance(space, spaces.Discrete) else tuple(space.shape or ())
    return stored_zeros(lead, shape, space_dtype(space), device)


def stored_zeros(
    lead: Sequence[int], shape: Sequence[int], dtype: torch.dtype, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Zeros of shape (*lead, *shape); a uint8 (C, H, W) image shape is laid out channels-last."""
    if dtype == torch.uint8 and len(shape) == 3 and image_channels_first(shape):
        c, h, w = shape
        return torch.zeros((*lead, h, w, c), dtype=dtype, device=device).movedim(-1, len(lead))
    return torch.zeros((*lead, *shape), dtype=dtype, device=device)


def copy_obs_(dst: Any, src: Any) -> None:
    """dst[...] = src for one step of observations (numpy, a dict of them for Dict spaces) into a slice of
    `empty_obs_storage` (torch tensors or their numpy views). Channels-last image slices are copied by
    torch, about 2x faster than numpy's strided assignment; everything else by plain numpy assignment,
    the cheapest for the tiny vectors of classic control."""
    if isinstance(dst, dict):
        for k, d in dst.items():
            copy_obs_(d, src[k])
    elif isinstance(dst, torch.Tensor):
        if dst.is_contiguous() and dst.device.type == "cpu":
            dst.numpy()[...] = src
        else:
            dst.copy_(torch.from_numpy(np.asarray(src)))
    elif dst.flags.c_contiguous:
        dst[...] = src
    else:
        torch.from_numpy(dst).copy_(torch.from_numpy(np.asarray(src)))


def tree_map(fn: Callable[[Any], Any], x: Any) -> Any:
    """Apply `fn` to a tensor or to each tensor of a dict (e.g. indexing a minibatch)."""
    if isinstance(x, dict):
        return {k: fn(v) for k, v in x.items()}
    return fn(x)


def flatten_parameters(module: nn.Module) -> nn.Parameter:
    """Make all parameters of `module` (and their gradients) views into one flat tensor.

    Returns the flat parameter, whose `.grad` holds every gradient: give it alone to the optimizer
    (`torch.optim.Adam([flat], fused=True)`), clip its gradient norm in one op, and zero it with
    `flat.grad.zero_()` (never `zero_grad(set_to_none=True)` on the module, which would cut the views).
    For the small networks of classic control this removes most per-tensor optimizer overhead
    (one fused Adam kernel instead of one per weight); the math is unchanged.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"{type(module).__name__} has no trainable parameters.")
    dtypes = {(p.dtype, p.device) for p in params}
    if len(dtypes) != 1:
        raise ConfigError(
            f"parameters of {type(module).__name__} mix dtypes/devices {dtypes}; cannot flatten them."
        )
    n = sum(p.numel() for p in params)
    flat = nn.Parameter(torch.empty(n, dtype=params[0].dtype, device=params[0].device))
    flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        k = p.numel()
        flat.data[offset : offset + k].copy_(p.data.reshape(-1))
        p.data = flat.data[offset : offset + k].view_as(p)
        p.grad = flat.grad[offset : offset + k].view_as(p)  # backward accumulates in place into these views
        offset += k
    return flat
