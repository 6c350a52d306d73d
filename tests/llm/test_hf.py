"""The transformers backend with a tiny random-weight causal LM the test builds in a temp folder."""

from __future__ import annotations

import numpy as np
import pytest

from llmrl.errors import ConfigError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("tiny_lm")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["the key opens the door", "go left or right", "the capital of france is paris"] * 20
    tok.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"])
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def test_causal_lm_protocol(tiny_lm):
    from llmrl.llm import load

    llm = load(f"hf:{tiny_lm}", device="cpu", require=("generate", "score", "features"))
    a = llm.generate(["the key"], max_tokens=5)
    assert a == llm.generate(["the key"], max_tokens=5) and isinstance(a[0], str)
    s = llm.score("the key", [" opens", " door", " go left"])
    # the same sums from one plain forward pass over prompt + continuation, no cache sharing
    module, tok = llm.trainable()
    for cont, got in zip([" opens", " door", " go left"], s):
        p, f = tok("the key")["input_ids"], tok("the key" + cont)["input_ids"]
        k = next(i for i, (x, y) in enumerate(zip(p + [-1], f)) if x != y)
        with torch.no_grad():
            logp = torch.log_softmax(module(torch.tensor([f])).logits[0], -1)
        assert got == pytest.approx(float(sum(logp[j - 1, f[j]] for j in range(k, len(f)))), abs=1e-4)
    h = llm.features(["the key", "go left"])
    assert h.shape == (2, 32) and h.dtype == np.float32
    lp = llm.features(
        ["go"], kind="logits", tokens=[tok.convert_tokens_to_string([tok.convert_ids_to_tokens(5)])]
    )
    assert lp.shape == (1, 1) and lp[0, 0] < 0


def test_gradients_flow(tiny_lm):
    from llmrl.llm.hf import HFLLM

    llm = HFLLM(tiny_lm, device="cpu")
    module, tok = llm.trainable()
    ids = torch.tensor([tok("the key opens the door")["input_ids"]])
    loss = module(ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)


def test_4bit_needs_cuda(tiny_lm):
    from llmrl.llm.hf import HFLLM

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ConfigError, match="CUDA"):
        HFLLM(tiny_lm, load_in_4bit=True)


@pytest.mark.slow
def test_embedded_gguf_through_transformers_agrees_with_llamacpp(embedded):
    # De-quantising the Q4_K_M GGUF to float32 takes ~45 s; same weights, other kernels.
    from llmrl.llm.hf import HFLLM

    hf = HFLLM.from_gguf(device="cpu")
    prompt, conts = "The capital of France is", [" Paris", " London", " Tokyo"]
    np.testing.assert_allclose(hf.score(prompt, conts), embedded.score(prompt, conts), atol=0.5)
