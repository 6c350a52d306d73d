"""Running a transformers decoder stack layer by layer, with our own mask and positions.

`LLMPolicy` packs a prompt and all its candidate actions into one sequence (a tree: each action sees the
prompt and itself) and splits the stack into a frozen, cached bottom and a trained top. transformers' own
`forward` builds a causal mask and always starts at layer 0, so the layers are called directly here. The
decoder layers' call signatures changed across transformers versions (Gemma 3 took separate global and
local rotary embeddings, later versions one per layer type); this module is the one place that knows.

`last_layer_rows` runs the stack's last layer for a few query rows only: every other row of that layer
is needed only as a key and value, so its query, attention output and MLP are skipped (for a 60-token
prompt and GLAM's six actions, 5 rows of 70 go through the MLP).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = ["run_layers", "last_layer_rows"]


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool mask -> additive float mask (both eager and SDPA attention accept it)."""
    return torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, torch.finfo(dtype).min)


class _Rope:
    """The rotary embeddings (cos, sin) of each layer's kind, computed once per call of the stack."""

    def __init__(self, stack: Any, h: torch.Tensor, pos: torch.Tensor) -> None:
        self.inner, self.h, self.pos = stack.inner, h, pos
        # transformers >= 5: one rotary embedding per layer type (Gemma 3: sliding and full attention)
        self.types = getattr(stack.config, "layer_types", None)
        rotary = stack.inner.rotary_emb
        self.per_type = (
            self.types is not None and "layer_type" in inspect.signature(rotary.forward).parameters
        )
        self.done: dict[Any, Any] = {}

    def __call__(self, kind: Any) -> Any:
        if kind not in self.done:
            if kind == "local":
                self.done[kind] = self.inner.rotary_emb_local(self.h, self.pos)
            elif kind is not None:
                self.done[kind] = self.inner.rotary_emb(self.h, self.pos, kind)
            else:
                self.done[kind] = self.inner.rotary_emb(self.h, self.pos)
        return self.done[kind]

    def kwargs(self, layer: Any, i: int) -> dict[str, Any]:
        if "position_embeddings_global" in inspect.signature(layer.forward).parameters:  # transformers < 4.56
            return {"position_embeddings_global": self("global"), "position_embeddings_local": self("local")}
        return {"position_embeddings": self(self.types[i] if self.per_type and self.types else None)}


def run_layers(stack: Any, h: torch.Tensor, start: int, stop: int, mask: torch.Tensor,
               pos: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Decoder layers [start, stop) of `stack` (an `llmrl.roles.policy._Stack`) over h (B, S, d).

    mask: (B, 1, S, S) bool, True where a query row may attend to a key column; pos: (B, S) positions.
    """
    add = _additive(mask, h.dtype)
    rope = _Rope(stack, h, pos)
    for i in range(start, stop):
        layer = stack.layers[i]
        out = layer(h, attention_mask=add, position_ids=pos, **rope.kwargs(layer, i))
        h = out[0] if isinstance(out, tuple) else out
    return h


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def fast_rows_supported(stack: Any) -> bool:
    """Whether `last_layer_rows` knows the last layer (Llama-style attention, Gemma 3's four norms or two)."""
    layer = stack.layers[-1]
    attn = getattr(layer, "self_attn", None)
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "num_key_value_groups")
    return (attn is not None and all(hasattr(attn, n) for n in names)
            and getattr(attn, "attn_logit_softcapping", None) is None
            and hasattr(layer, "input_layernorm") and hasattr(layer, "post_attention_layernorm")
            and hasattr(layer, "mlp"))  # fmt: skip


def last_layer_rows(stack: Any, h: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor,
                    rows: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The stack's last layer over h (B, S, d), output only at `rows` (B, R) -> (B, R, d).

    The same arithmetic as the layer's own forward (Llama: pre-norm attention and MLP; Gemma 3: plus
    post-norms and q/k norms), restricted to the rows that are read afterwards.
    """
    i = len(stack.layers) - 1
    layer, attn = stack.layers[i], stack.layers[i].self_attn
    B, S, _ = h.shape
    R = rows.shape[1]
    hd = attn.head_dim
    take = torch.arange(B)[:, None], rows  # (B, R) gather index
    hn = layer.input_layernorm(h)  # (B, S, d)
    q = attn.q_proj(hn[take]).view(B, R, -1, hd).transpose(1, 2)  # (B, H, R, hd)
    k = attn.k_proj(hn).view(B, S, -1, hd).transpose(1, 2)  # (B, KV, S, hd)
    v = attn.v_proj(hn).view(B, S, -1, hd).transpose(1, 2)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    rope = _Rope(stack, h, pos).kwargs(layer, i)
    cos, sin = rope.get("position_embeddings") or rope["position_embeddings_local" if getattr(
        attn, "is_sliding", False) else "position_embeddings_global"]  # fmt: skip
    q = q * cos[take][:, None] + _rotate_half(q) * sin[take][:, None]  # cos, sin: (B, S, hd)
    k = k * cos[:, None] + _rotate_half(k) * sin[:, None]
    g = attn.num_key_value_groups
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)  # (B, H, S, hd)
    scores = (q @ k.transpose(2, 3)) * attn.scaling + _additive(
        mask[:, 0][take][:, None], q.dtype
    )  # (B, H, R, S)
    o = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v  # (B, H, R, hd)
    o = attn.o_proj(o.transpose(1, 2).reshape(B, R, -1))
    gemma = hasattr(layer, "pre_feedforward_layernorm")
    if gemma:
        o = layer.post_attention_layernorm(o)
    x = h[take] + o
    m = layer.mlp(layer.pre_feedforward_layernorm(x) if gemma else layer.post_attention_layernorm(x))
    if gemma:
        m = layer.post_feedforward_layernorm(m)
    return x + m
