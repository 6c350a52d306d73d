"""Running a transformers decoder stack layer by layer, with our own mask and positions.

`LLMPolicy` packs a prompt and all its candidate actions into one sequence (a tree: each action sees the
prompt and itself) and splits the stack into a frozen, cached bottom and a trained top. transformers' own
`forward` builds a causal mask and always starts at layer 0, so the layers are called directly here. The
decoder layers' call signatures changed across transformers versions (Gemma 3 took separate global and
local rotary embeddings, later versions one per layer type); this module is the one place that knows.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = ["run_layers"]


def run_layers(stack: Any, h: torch.Tensor, start: int, stop: int, mask: torch.Tensor,
               pos: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Decoder layers [start, stop) of `stack` (an `llmrl.roles.policy._Stack`) over h (B, S, d).

    mask: (B, 1, S, S) bool, True where a query row may attend to a key column; pos: (B, S) positions.
    """
    inner = stack.inner
    # additive mask, as both eager and SDPA attention accept it
    add = torch.zeros(mask.shape, dtype=h.dtype).masked_fill_(~mask, torch.finfo(h.dtype).min)
    rotary = inner.rotary_emb
    # transformers >= 5: one rotary embedding per layer type (Gemma 3: sliding and full attention)
    types = getattr(stack.config, "layer_types", None)
    per_type = types is not None and "layer_type" in inspect.signature(rotary.forward).parameters
    embeddings: dict[Any, Any] = {}

    def rope(kind: Any) -> Any:
        if kind not in embeddings:
            if kind == "local":
                embeddings[kind] = inner.rotary_emb_local(h, pos)
            elif kind is not None:
                embeddings[kind] = rotary(h, pos, kind)
            else:
                embeddings[kind] = rotary(h, pos)
        return embeddings[kind]

    for i in range(start, stop):
        layer = stack.layers[i]
        params = inspect.signature(layer.forward).parameters
        kwargs: dict[str, Any] = {"attention_mask": add, "position_ids": pos}
        if "position_embeddings_global" in params:  # Gemma 3 in transformers < 4.56
            kwargs["position_embeddings_global"] = rope("global")
            kwargs["position_embeddings_local"] = rope("local")
        else:
            kwargs["position_embeddings"] = rope(types[i] if per_type and types is not None else None)
        out = layer(h, **kwargs)
        h = out[0] if isinstance(out, tuple) else out
    return h
