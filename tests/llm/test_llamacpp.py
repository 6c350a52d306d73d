"""The embedded model (Gemma 3 270M on llama.cpp) and MiniLM, for real."""

from __future__ import annotations

import numpy as np
import pytest

from llmrl.errors import ConfigError

# Prompts whose right continuation a 270M base model gets (measured: the right one leads by >= 1.3 nats).
RANKED = [
    ("The capital of France is", [" Paris", " London", " Tokyo"]),
    ("1, 2, 3, 4,", [" 5", " 9", " 2"]),
    ("The opposite of hot is", [" cold", " blue", " seven"]),
    ("Monday, Tuesday,", [" Wednesday", " Friday", " January"]),
    ("To open a locked door you need a", [" key", " banana", " ball"]),
]


@pytest.fixture(scope="module")
def reference(embedded):
    """llama.cpp's own logits_all path, no prefix sharing, built with the backend's buffer setting."""
    from llama_cpp import Llama

    from llmrl.llm.llamacpp import embedded_gguf_path
    from llmrl.llm.selfcheck import llama_defaults

    with llama_defaults(embedded.extra_buffers):  # the same weight layout, hence the same kernels
        ref = Llama(str(embedded_gguf_path()), logits_all=True, n_ctx=64, n_threads=1, verbose=False)
    yield ref
    ref.close()


def _reference_score(ref, llm, prompt: str, cont: str, *, split: bool) -> float:
    """Sum of per-token log-probs of the continuation's tokens, by llama.cpp's own evaluation.

    split=False: prompt + continuation in one batch. split=True: the prompt's tokens in one batch, then
    the continuation's in another -- the batch shapes llmrl's shared-prefix path decodes.
    """
    p, f = llm.tokenize(prompt), llm.tokenize(prompt + cont)
    k = next(i for i, (a, b) in enumerate(zip(p + [-1], f)) if a != b)
    ref.reset()
    for part in (f[:k], f[k:]) if split else (f,):
        ref.eval(part)
    logp = ref.logits_to_logprobs(ref.scores[: len(f)])  # (T, V): row t predicts token t + 1
    return float(sum(logp[j - 1, f[j]] for j in range(k, len(f))))


def test_generation_is_deterministic_at_temperature_0(embedded):
    a = embedded.generate(["The capital of France is", "1, 2, 3,"], max_tokens=8)
    b = embedded.generate(["The capital of France is", "1, 2, 3,"], max_tokens=8)
    assert a == b and all(isinstance(t, str) and t for t in a)
    assert a[1].startswith(" 4")
    assert embedded.generate(["1, 2, 3,"], max_tokens=8, stop=[","]) == [" 4"]
    assert embedded.generate(["x"], max_tokens=0) == [""]


def test_score_is_the_sum_of_token_logprobs(embedded, reference):
    """What holds on every x86-64 CPU, whatever llama.cpp's kernels.

    ggml picks matmul kernels by batch shape and by weight layout (plain, repacked, AMX), and they round
    differently: measured on a 2-core EPYC with plain buffers, llama.cpp's *own* one-batch and
    prompt-then-continuation evaluations of "1, 2, 3, 4," + " 5" differ by 0.102 nats (0.10 reported on
    an AMX Xeon); plain vs repacked weights differ by up to 0.13. So: exact against llama.cpp decoding
    the same batches (same kernels), and within 0.25 nats of a one-batch evaluation -- far inside the
    >= 1.3-nat margins that rank the continuations of RANKED.
    """
    for prompt, conts in RANKED:
        same_batches = [_reference_score(reference, embedded, prompt, c, split=True) for c in conts]
        one_batch = [_reference_score(reference, embedded, prompt, c, split=False) for c in conts]
        single = [embedded.score(prompt, [c])[0] for c in conts]
        np.testing.assert_allclose(single, same_batches, atol=1e-4)
        np.testing.assert_allclose(single, one_batch, atol=0.25)
        # continuations decoded together: other batch shapes again
        np.testing.assert_allclose(embedded.score(prompt, conts), one_batch, atol=0.25)
        assert int(np.argmax(one_batch)) == int(np.argmax(embedded.score(prompt, conts))) == 0


def test_score_token_boundary(embedded):
    # "is " + "Paris" is read as "is" + " Paris": the straddling token counts in the continuation.
    a = embedded.score("The capital of France is ", ["Paris"])[0]
    b = embedded.score("The capital of France is", [" Paris"])[0]
    assert a == pytest.approx(b, abs=1e-6)
    assert embedded.score("x", []).shape == (0,)


def test_score_ranks_the_right_continuation_first(embedded):
    for prompt, conts in RANKED:
        s = embedded.score(prompt, conts)
        assert s.shape == (3,) and np.all(s < 0)
        assert int(np.argmax(s)) == 0, (prompt, s)


def test_features(embedded):
    h = embedded.features(["State: key left. Action:", "State: key right. Action:"])
    assert h.shape == (2, 640) and h.dtype == np.float32 and np.all(np.isfinite(h))
    alone = embedded.features(["State: key right. Action:"])[0]
    cos = alone @ h[1] / np.linalg.norm(alone) / np.linalg.norm(h[1])
    assert cos > 0.99  # same prompt, other batch: same state up to kernel rounding
    lp = embedded.features(["Go left or right? Answer:"], kind="logits", tokens=[" left", " right"])
    assert lp.shape == (1, 2) and np.all(lp < 0)
    with pytest.raises(ConfigError, match="single-token"):
        embedded.features(["x"], kind="logits", tokens=[" antidisestablishmentarianism"])
    with pytest.raises(ConfigError):
        embedded.features(["x"], kind="logits")


def test_embed_minilm(embedded):
    texts = [
        "the agent picked up the yellow key",
        "the yellow key was picked up",
        "stock prices fell sharply",
    ]
    e = embedded.embed(texts)
    assert e.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[1, 2] + 0.3


def test_stats_and_cache_on_the_real_model(embedded, tmp_path):
    from llmrl.llm import load

    llm = load(embedded, cache=tmp_path / "c.sqlite")
    first = llm.score("The sky is", [" blue", " green"])
    again = llm.score("The sky is", [" blue", " green"])
    np.testing.assert_array_equal(first, again)
    assert (llm.stats.misses, llm.stats.hits) == (2, 2) and llm.stats.tokens > 0
