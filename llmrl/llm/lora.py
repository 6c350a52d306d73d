"""LoRA adapters: train them on a transformers model, run them on llama.cpp. No RL.

    params = add_lora(hf.module, rank=16, layers=6)        # freeze the model, adapt its last 6 blocks
    ... train params ...
    save_lora(hf.module, "wm.safetensors"); export_lora_gguf(hf.module, "wm-lora.gguf")
    llm = llamacpp_with_lora(embedded_gguf_path(), "wm-lora.gguf")   # the fast CPU path, adapted

LoRA (Hu et al. 2021): y = W x + (alpha / r) B A x with A (r, in) random and B (out, r) zero, so training
starts at the base model. The GGUF export writes llama.cpp's adapter format (`general.type = adapter`,
`adapter.lora.alpha`, tensors `blk.<i>.<name>.weight.lora_a|lora_b`), so a model fine-tuned through
transformers (de-quantised from the embedded GGUF) answers on llama.cpp over its quantised base.
By default only the value/output projections and the MLP are adapted: llama.cpp's GGUF conversion
permutes the rows of q/k for Llama-family models (its rotary layout), which an adapter trained in
transformers' layout would miss. Gemma 3's GGUF keeps transformers' order, so its q/k adapters export as
they are (the world model adapts them; `export_lora_gguf` refuses q/k for any other `arch`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmrl.errors import ConfigError, optional_import

__all__ = ["LORA_TARGETS", "add_lora", "save_lora", "load_lora", "export_lora_gguf", "llamacpp_with_lora"]

LORA_TARGETS = ("v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Linear layers adapted by default (transformers names)."""
_QK_AS_IS = frozenset({"gemma3"})
"""GGUF architectures whose q/k rows are in transformers' order (checked against llama.cpp in the tests)."""
_GGUF_NAMES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _lora_class() -> Any:
    torch = optional_import("torch", "hf")
    nn: Any = torch.nn

    class LoRALinear(nn.Module):
        """A frozen nn.Linear plus a trainable low-rank update, kept in float32 whatever the base's dtype
        (a bfloat16 base runs at twice the speed on CPUs with bf16 instructions; Adam wants float32)."""

        def __init__(self, base: Any, rank: int, alpha: float, seed: int) -> None:
            super().__init__()
            self.base = base
            self.rank, self.alpha = rank, alpha
            g = torch.Generator().manual_seed(seed)
            a = torch.randn(rank, base.in_features, generator=g) / math.sqrt(base.in_features)
            self.lora_a = nn.Parameter(a.to(base.weight.device))
            self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))

        def forward(self, x: Any) -> Any:
            y = self.base(x)
            low = x.to(self.lora_a.dtype) @ self.lora_a.T @ self.lora_b.T  # (..., out), float32
            return y + (low * (self.alpha / self.rank)).to(y.dtype)

    return LoRALinear


def _adapted(module: Any) -> list[tuple[str, Any]]:
    return [(n, m) for n, m in module.named_modules() if hasattr(m, "lora_a") and hasattr(m, "lora_b")]


def add_lora(
    module: Any,
    *,
    rank: int = 16,
    layers: int = 6,
    targets: Sequence[str] = LORA_TARGETS,
    alpha: float | None = None,
    seed: int = 0,
) -> list[Any]:
    """Freeze `module` and put adapters on the `targets` linears of its last `layers` decoder blocks
    (modules named `*.layers.<i>.*`); return the adapter parameters. alpha defaults to 2 * rank.
    On a module that already has adapters, unfreezes and returns those (training continues)."""
    torch = optional_import("torch", "hf")
    if rank < 1 or layers < 1:
        raise ConfigError(f"LoRA needs rank >= 1 and layers >= 1, got rank={rank}, layers={layers}")
    for p in module.parameters():
        p.requires_grad_(False)
    found = _adapted(module)
    if found:
        params = [p for _, m in found for p in (m.lora_a, m.lora_b)]
        for p in params:
            p.requires_grad_(True)
        return params
    lora_linear = _lora_class()
    blocks: dict[int, list[tuple[Any, str, Any]]] = {}
    for name, m in module.named_modules():
        hit = _LAYER.search(name + ".")
        if not hit:
            continue
        for child_name, child in m.named_children():
            if isinstance(child, torch.nn.Linear) and child_name in targets:
                blocks.setdefault(int(hit.group(1)), []).append((m, child_name, child))
    if not blocks:
        raise ConfigError(
            f"no linear layers named {list(targets)} inside '*.layers.<i>.*' modules: cannot place LoRA adapters"
        )
    params = []
    for i in sorted(blocks)[-layers:]:
        for parent, child_name, lin in blocks[i]:
            lora = lora_linear(lin, rank, float(alpha if alpha is not None else 2 * rank), seed + i)
            setattr(parent, child_name, lora)
            params += [lora.lora_a, lora.lora_b]
    return params


def save_lora(module: Any, path: str | Path) -> Path:
    """The adapters of `module` as safetensors, with their rank/alpha/layers in the metadata."""
    st = optional_import("safetensors.torch", "hf", package="safetensors")
    found = _adapted(module)
    if not found:
        raise ConfigError("the module has no LoRA adapters to save (add_lora first)")
    tensors = {}
    for name, m in found:
        tensors[f"{name}.lora_a"] = m.lora_a.detach().float().cpu().contiguous()
        tensors[f"{name}.lora_b"] = m.lora_b.detach().float().cpu().contiguous()
    _, first = found[0]
    meta = {"rank": first.rank, "alpha": first.alpha, "modules": [n for n, _ in found]}
    st.save_file(tensors, str(path), metadata={"lora": json.dumps(meta)})
    return Path(path)


def load_lora(module: Any, path: str | Path) -> None:
    """Put the adapters saved by `save_lora` onto a fresh copy of the same base model."""
    torch = optional_import("torch", "hf")
    st = optional_import("safetensors", "hf")
    with st.safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["lora"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    lora_linear = _lora_class()
    for name in meta["modules"]:
        parent_name, _, child_name = name.rpartition(".")
        parent = module.get_submodule(parent_name)
        base = getattr(parent, child_name)
        if not hasattr(base, "lora_a"):
            base = lora_linear(base, int(meta["rank"]), float(meta["alpha"]), 0)
            setattr(parent, child_name, base)
        with torch.no_grad():
            base.lora_a.copy_(tensors[f"{name}.lora_a"])
            base.lora_b.copy_(tensors[f"{name}.lora_b"])


def export_lora_gguf(module: Any, path: str | Path, *, arch: str = "gemma3") -> Path:
    """Write the adapters of `module` (a transformers decoder) in llama.cpp's GGUF adapter format."""
    gguf = optional_import("gguf", "hf")
    found = _adapted(module)
    if not found:
        raise ConfigError("the module has no LoRA adapters to export (add_lora first)")
    ranks = {m.rank for _, m in found}
    alphas = {m.alpha for _, m in found}
    if len(ranks) != 1 or len(alphas) != 1:
        raise ConfigError(f"one rank and alpha for every adapter, got ranks {ranks} and alphas {alphas}")
    qk = sorted({n.rsplit(".", 1)[1] for n, _ in found} & {"q_proj", "k_proj"})
    if qk and arch not in _QK_AS_IS:
        raise ConfigError(
            f"adapters on {qk} cannot be exported for arch={arch!r}: llama.cpp permutes q/k rows there; "
            f"adapt {LORA_TARGETS} only (q/k export as they are for {sorted(_QK_AS_IS)})"
        )
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alphas.pop()))
    for name, m in found:
        hit = _LAYER.search(name + ".")
        child = name.rsplit(".", 1)[1]
        if hit is None or child not in _GGUF_NAMES:
            raise ConfigError(f"no GGUF name for the adapted layer {name!r}")
        base = f"blk.{int(hit.group(1))}.{_GGUF_NAMES[child]}.weight"
        # numpy (r, in) and (out, r): GGUF stores dims reversed, as llama.cpp expects for A and B
        writer.add_tensor(base + ".lora_a", m.lora_a.detach().float().cpu().numpy())
        writer.add_tensor(base + ".lora_b", m.lora_b.detach().float().cpu().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def llamacpp_with_lora(
    model_path: str | Path, lora_path: str | Path, *, scale: float = 1.0, **kwargs: Any
) -> Any:
    """A llama.cpp backend (`LlamaCppLLM`) on `model_path` with the GGUF adapter at `lora_path` applied.

    The adapter's file name goes into the backend's name, so cached answers of the base model are
    never reused. kwargs go to `LlamaCppLLM` (n_threads=, n_ctx=, ...).
    """
    from llmrl.llm.llamacpp import LlamaCppLLM, name_for

    lora_path = Path(lora_path)
    if not lora_path.is_file():
        raise ConfigError(f"LoRA file {str(lora_path)!r} does not exist; write one with export_lora_gguf")
    llm = LlamaCppLLM(
        model_path,
        name=kwargs.pop("name", None) or f"{name_for(Path(model_path))}+{lora_path.stem}",
        **kwargs,
    )
    lib = llm._lib
    adapter = lib.llama_adapter_lora_init(llm._model.model, str(lora_path).encode("utf-8"))
    if not adapter:
        raise ConfigError(f"llama.cpp could not load the LoRA adapter {str(lora_path)!r} for {model_path}")
    adapters = (lib.llama_adapter_lora_p_ctypes * 1)(adapter)
    import ctypes

    scales = (ctypes.c_float * 1)(scale)
    if lib.llama_set_adapters_lora(llm._ctx.ctx, adapters, 1, scales):
        raise ConfigError(f"llama.cpp could not apply the LoRA adapter {str(lora_path)!r}")
    llm._lora_adapter = adapter  # type: ignore[attr-defined]  # kept alive with the context
    return llm
