"""transformers models: causal LMs and LLaVA-NeXT image-text models, with gradients for fine-tuning.

    llm = HFLLM("path/to/causal-lm")                                   # any AutoModelForCausalLM
    llm = HFLLM("llava-hf/llava-v1.6-mistral-7b-hf", load_in_4bit=True) # the seed's VLM, 4-bit on CUDA
    llm = HFLLM.from_gguf()                                             # the embedded GGUF, de-quantised
    llm.module, llm.tokenizer                                           # nn.Module + tokenizer to train

Weights load from a local folder or the local hub cache only (HF_HUB_OFFLINE is honoured).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from llmrl.errors import ConfigError, optional_import
from llmrl.llm.base import Image
from llmrl.llm.common import Backend, check_feature_args

__all__ = ["HFLLM"]


class HFLLM(Backend):
    """A transformers model behind the LLM protocol.

    model: hub id or local folder. gguf_file: load this GGUF file inside `model` (de-quantised).
    device: "cpu", "cuda", … (default cuda when available). dtype: torch dtype name.
    load_in_4bit: bitsandbytes 4-bit (CUDA only), as the seed loaded LLaVA-NeXT.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        gguf_file: str | None = None,
        device: str | None = None,
        dtype: str = "float32",
        load_in_4bit: bool = False,
        name: str | None = None,
    ):
        super().__init__()
        torch = optional_import("torch", "hf")
        tf = optional_import("transformers", "hf")
        self._torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
        if gguf_file is not None:
            optional_import("gguf", "hf")
            kwargs["gguf_file"] = gguf_file
        if load_in_4bit:
            if not torch.cuda.is_available():
                raise ConfigError(
                    "load_in_4bit=True needs a CUDA GPU (bitsandbytes 4-bit); on CPU load with "
                    "load_in_4bit=False, or use a GGUF model with the embedded llama.cpp backend"
                )
            optional_import("bitsandbytes", "hf")
            kwargs["quantization_config"] = tf.BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16
            )
            kwargs["device_map"] = "auto"
        config = tf.AutoConfig.from_pretrained(str(model), **({"gguf_file": gguf_file} if gguf_file else {}))
        self.is_vision = config.model_type == "llava_next"
        if self.is_vision:
            self.module = tf.LlavaNextForConditionalGeneration.from_pretrained(str(model), **kwargs)
            self.processor = tf.AutoProcessor.from_pretrained(str(model))
            self.tokenizer = self.processor.tokenizer
        else:
            self.module = tf.AutoModelForCausalLM.from_pretrained(str(model), **kwargs)
            self.processor = None
            self.tokenizer = tf.AutoTokenizer.from_pretrained(
                str(model), **({"gguf_file": gguf_file} if gguf_file else {})
            )
        if not load_in_4bit:
            self.module.to(self.device)
        self.module.eval()
        self.name = name or f"hf:{model}" + (f"/{gguf_file}" if gguf_file else "")
        caps = {"generate", "score", "features"} | ({"images"} if self.is_vision else set())
        self.capabilities = frozenset(caps)

    @classmethod
    def from_gguf(cls, path: str | Path | None = None, *, cache: bool = True, **kwargs: Any) -> HFLLM:
        """The embedded Gemma 3 270M GGUF (or `path`) through transformers: slow to load, trainable.

        De-quantising (and converting the tokenizer) takes minutes on 2 cores; with `cache`, the result is
        saved once as a plain transformers folder next to the GGUF (`<name>-hf/`) and loaded from there in
        seconds afterwards.
        """
        from llmrl.llm.llamacpp import embedded_gguf_path

        p = Path(path) if path is not None else embedded_gguf_path()
        folder = p.with_name(f"{p.stem}-hf")
        if cache and (folder / "model.safetensors").is_file():
            return cls(folder, name=f"hf:{p.stem}", **kwargs)
        llm = cls(p.parent, gguf_file=p.name, name=f"hf:{p.stem}", **kwargs)
        if cache:
            llm._save_dequantised(folder)
        return llm

    def _save_dequantised(self, folder: Path) -> None:
        """Weights (float32, tied ones once), config without the GGUF quantisation, tokenizer; atomic."""
        import shutil
        import tempfile

        from safetensors.torch import save_model

        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        try:
            config = copy.deepcopy(self.module.config)
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            config.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            save_model(self.module, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            tmp.replace(folder)
        except OSError:  # a read-only or full cache folder only costs the next load its time
            shutil.rmtree(tmp, ignore_errors=True)

    def trainable(self) -> tuple[Any, Any]:
        """(nn.Module, tokenizer) for fine-tuning; call `module.train()` before and `eval()` after."""
        return self.module, self.tokenizer

    # -- helpers -------------------------------------------------------------------------------

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def _inputs(self, prompts: Sequence[str], images: Sequence[Image | None]) -> list[dict[str, Any]]:
        """One model-input dict per prompt (with pixel values for LLaVA-NeXT when an image is given)."""
        out = []
        for p, img in zip(prompts, images):
            if img is not None:
                text = p if "<image>" in p else "<image>\n" + p
                enc = self.processor(images=np.asarray(img), text=text, return_tensors="pt")
            else:
                enc = self.tokenizer(p, return_tensors="pt")
            out.append({k: v.to(self.device) for k, v in enc.items()})
        return out

    # -- the protocol ----------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_tokens: int = 32,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        images: Sequence[Image | None] | None = None,
    ) -> list[str]:
        imgs = self._check_images_supported(images, len(prompts))
        out = []
        with self._count(len(prompts)) as tokens, self._torch.no_grad():
            for enc in self._inputs(prompts, imgs):
                n = enc["input_ids"].shape[1]
                gen = self.module.generate(
                    **enc,
                    max_new_tokens=max_tokens,
                    do_sample=temperature > 0,
                    temperature=temperature if temperature > 0 else None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                )
                text = self.tokenizer.decode(gen[0, n:], skip_special_tokens=True)
                cuts = [text.find(s) for s in (stop or ()) if s and s in text]
                out.append(text[: min(cuts)] if cuts else text)
                tokens.append(int(gen.shape[1]))
        return out

    def score(self, prompt: str, continuations: Sequence[str]) -> np.ndarray:
        """Sum of continuation log-probs; the prompt's KV cache computed once and reused.

        Same boundary rule as the llama.cpp backend: the continuation's tokens are those of
        tokenize(prompt + continuation) after the longest prefix shared with tokenize(prompt).
        """
        torch = self._torch
        p_ids = self._ids(prompt)
        full = [self._ids(prompt + c) for c in continuations]
        splits = []
        for ids in full:
            k = 0
            while k < min(len(p_ids), len(ids)) and p_ids[k] == ids[k]:
                k += 1
            splits.append(max(k, 1))
        shared = min(splits)
        out = np.zeros(len(full))
        with self._count(len(full)) as tokens, torch.no_grad():
            pre = self.module(torch.tensor([p_ids[:shared]], device=self.device), use_cache=True)
            first = torch.log_softmax(pre.logits[0, -1].float(), -1)  # (V,) predicts token `shared`
            tokens.append(shared)
            for i, (ids, k) in enumerate(zip(full, splits)):
                if len(ids) <= k:
                    continue
                rest = ids[shared:]
                o = self.module(
                    torch.tensor([rest], device=self.device),
                    past_key_values=copy.deepcopy(pre.past_key_values),
                    use_cache=True,
                )
                # row j of logp predicts token shared + j + 1; row -1 (the prefix) predicts `shared`
                logp = torch.cat([first[None], torch.log_softmax(o.logits[0, :-1].float(), -1)])
                targets = torch.tensor(ids[k:], device=logp.device)
                out[i] = float(logp[torch.arange(k - shared, len(ids) - shared), targets].sum())
                tokens.append(len(rest))
        return out

    def features(
        self,
        prompts: Sequence[str],
        *,
        images: Sequence[Image | None] | None = None,
        kind: Literal["hidden", "logits"] = "hidden",
        tokens: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Last-token final hidden state (n, d) or next-token log-probs of `tokens` (n, len(tokens))."""
        torch = self._torch
        toks = check_feature_args(kind, tokens)
        tok_ids = []
        for t in toks:
            ids = self.tokenizer(t, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ConfigError(
                    f"features(kind='logits') needs single-token strings; {t!r} is {len(ids)} tokens"
                )
            tok_ids.append(ids[0])
        imgs = self._check_images_supported(images, len(prompts))
        feats = []
        with self._count(len(prompts)) as counted, torch.no_grad():
            for enc in self._inputs(prompts, imgs):
                o = self.module(**enc, output_hidden_states=True)
                counted.append(int(enc["input_ids"].shape[1]))
                if kind == "hidden":
                    feats.append(o.hidden_states[-1][0, -1].float().cpu().numpy())
                else:
                    lp = torch.log_softmax(o.logits[0, -1].float(), -1)
                    feats.append(lp[tok_ids].cpu().numpy())
        return np.stack(feats).astype(np.float32)
