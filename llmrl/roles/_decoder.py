"""Running a transformers decoder stack layer by layer, with our own mask and positions.

`LLMPolicy` packs a prompt and all its candidate actions into one sequence (a tree: each action sees the
prompt and itself) and splits the stack into a frozen, cached bottom and a trained top. transformers' own
`forward` builds a causal mask and always starts at layer 0, so the layers are called directly here. The
decoder layers' call signatures changed across transformers versions (Gemma 3 took separate global and
local rotary embeddings, later versions one per layer type); this module is the one place that knows.

`layer_rows` is one decoder layer written out (the same arithmetic as the layer's own forward) so that
its queries can be a subset of its rows and its keys and values can start with a cached prefix:
`last_layer_rows` runs the stack's last layer for a few query rows only (every other row of that layer is
needed only as a key and value, so its query, attention output and MLP are skipped: for a 60-token prompt
and GLAM's six actions, 5 rows of 70 go through the MLP), and `VLMPolicy` computes an instruction's keys
and values once (`prefix_cache`) and runs only its image tokens through every layer afterwards.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from llmrl.errors import ConfigError

__all__ = ["Stack", "KV", "run_layers", "layer_rows", "last_layer_rows", "prefix_cache"]


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
    """Decoder layers [start, stop) of `stack` (a `Stack`) over h (B, S, d).

    mask: (B, 1, S, S) bool, True where a query row may attend to a key column; pos: (B, S) positions.
    """
    if start >= stop:
        return h
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
    """The stack's last layer over h (B, S, d), output only at `rows` (B, R) -> (B, R, d)."""
    take = torch.arange(h.shape[0])[:, None], rows  # (B, R) gather index
    return layer_rows(stack, len(stack.layers) - 1, h, pos, mask[:, 0][take], rows=rows)[0]


KV = tuple[torch.Tensor, torch.Tensor]


def layer_rows(stack: Any, i: int, h: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, *,
               past: KV | None = None, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, KV]:  # fmt: skip
    """Decoder layer `i` of `stack` over the rows h (B, S, d) at positions pos (B, S).

    past: keys and values (B, KV, P, hd) of earlier rows (rotary embedding applied), attended before h's own.
    rows: (B, R) the rows of h whose output is wanted (default: all S).
    mask: (B, R, P + S) bool, True where a query row may attend to a key column (past columns first).
    Returns (the layer's output at `rows` (B, R, d), h's own keys and values (B, KV, S, hd)).

    The same arithmetic as the layer's own forward (Llama: pre-norm attention and MLP; Gemma 3: plus
    post-norms and q/k norms), so a prefix cached with `prefix_cache` gives the result of running the
    prefix and h as one sequence.
    """
    layer, attn = stack.layers[i], stack.layers[i].self_attn
    B, S, _ = h.shape
    hd = attn.head_dim
    hn = layer.input_layernorm(h)  # (B, S, d)
    rope = _Rope(stack, h, pos).kwargs(layer, i)
    cos, sin = rope.get("position_embeddings") or rope["position_embeddings_local" if getattr(
        attn, "is_sliding", False) else "position_embeddings_global"]  # fmt: skip
    k = attn.k_proj(hn).view(B, S, -1, hd).transpose(1, 2)  # (B, KV, S, hd)
    v = attn.v_proj(hn).view(B, S, -1, hd).transpose(1, 2)
    if rows is None:
        hq, qcos, qsin = hn, cos, sin
    else:
        take = torch.arange(B)[:, None], rows  # (B, R) gather index
        hq, qcos, qsin = hn[take], cos[take], sin[take]
    R = hq.shape[1]
    q = attn.q_proj(hq).view(B, R, -1, hd).transpose(1, 2)  # (B, H, R, hd)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    q = q * qcos[:, None] + _rotate_half(q) * qsin[:, None]  # cos, sin: (B, S, hd)
    k = k * cos[:, None] + _rotate_half(k) * sin[:, None]
    own = (k, v)
    if past is not None:
        k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)  # (B, KV, P + S, hd)
    g = attn.num_key_value_groups
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)  # (B, H, P + S, hd)
    scores = (q @ k.transpose(2, 3)) * attn.scaling + _additive(mask[:, None], q.dtype)  # (B, H, R, P + S)
    o = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v  # (B, H, R, hd)
    o = attn.o_proj(o.transpose(1, 2).reshape(B, R, -1))
    gemma = hasattr(layer, "pre_feedforward_layernorm")
    if gemma:
        o = layer.post_attention_layernorm(o)
    x = (h if rows is None else h[take]) + o
    m = layer.mlp(layer.pre_feedforward_layernorm(x) if gemma else layer.post_attention_layernorm(x))
    if gemma:
        m = layer.post_feedforward_layernorm(m)
    return x + m, own


def prefix_cache(stack: Any, ids: torch.Tensor, stop: int | None = None) -> list[KV]:
    """Each layer's keys and values (1, KV, P, hd) for the token ids (P,) read causally from position 0
    (layers [0, stop), default all): what `layer_rows(past=...)` needs to continue the sequence at P."""
    P = ids.shape[0]
    h = stack.embed(ids[None]).to(next(stack.layers[0].parameters()).dtype)  # (1, P, d) in the layers' dtype
    pos = torch.arange(P)[None]
    mask = torch.ones(P, P, dtype=torch.bool).tril()[None]
    out = []
    for i in range(len(stack.layers) if stop is None else stop):
        h, kv = layer_rows(stack, i, h, pos, mask)
        out.append(kv)
    return out


class Stack:
    """A transformers causal LM with a Llama-style decoder stack (Llama, Qwen2, Mistral, Gemma, Gemma 3; the
    language model of a LLaVA-NeXT), run layer by layer with an explicit attention mask and positions, so
    LLMPolicy's packed tree of actions, the frozen-prefix caches and restricted output rows can all be
    done from outside the model."""

    def __init__(self, net: Any) -> None:
        inner: Any = getattr(net, "model", None)
        inner = getattr(inner, "language_model", inner)  # an image-text model: its language model
        layers = getattr(inner, "layers", None)
        if inner is None or layers is None or not hasattr(net, "lm_head"):
            raise ConfigError(
                f"{type(net).__name__} is not a decoder-only model with model.layers and lm_head; the LLM "
                "policies support Llama-style causal LMs (Llama, Qwen2, Mistral, Gemma, Gemma 3)"
            )
        self.net, self.inner, self.layers = net, inner, layers
        cfg = getattr(net.config, "text_config", None) or net.config
        self.config = cfg
        self.hidden = int(cfg.hidden_size)
        window = getattr(cfg, "sliding_window", None) or 10**9
        # a dense mask is exact only while no sequence is longer than the sliding window of local layers
        self.context = int(min(getattr(cfg, "max_position_embeddings", 2048), window))
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        self.dtype = next(net.parameters()).dtype
        self.fast_rows = fast_rows_supported(self)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.inner.embed_tokens(ids)

    def run(
        self, h: torch.Tensor, start: int, stop: int, mask: torch.Tensor, pos: torch.Tensor
    ) -> torch.Tensor:
        """Decoder layers [start, stop) over h (B, S, d) with a bool mask (B, 1, S, S) and positions (B, S)."""
        return run_layers(self, h, start, stop, mask, pos)

    def last_rows(
        self, h: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        return last_layer_rows(self, h, mask, pos, rows)

    def final_norm(self, h: torch.Tensor) -> torch.Tensor:
        return self.inner.norm(h)

    def output_rows(self, token_ids: Sequence[int]) -> torch.Tensor:
        """The output layer's rows for `token_ids` (U, d), frozen."""
        return self.net.lm_head.weight[torch.tensor(list(token_ids))].detach().clone()

    def logits(self, h: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        out = self.net.lm_head(h) if rows is None else h @ rows.T
        if self.softcap:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out
