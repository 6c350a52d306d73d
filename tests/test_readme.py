"""Every Python example in the README runs, as a newcomer would paste it, scaled down.

The blocks run in order in one namespace (later blocks use `model` and `llmrl` from earlier ones), with
step counts shrunk and the README's two placeholders (a CLIP folder, a planner's value function) filled in.
A README edit that breaks an example, or a code change that breaks the README, fails here.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from llmrl.testing import tiny_clip

README = Path(__file__).resolve().parents[1] / "README.md"

# (pattern, replacement): fewer steps and episodes, the placeholders filled in
SCALE_DOWN = [
    (r"\.learn\(\d[\d_]*", ".learn(256"),
    (
        r"llmrl\.PPO\(env\)",
        "llmrl.PPO(env, n_steps=128, batch_size=64)",
    ),  # the default rollout is 2,048 steps
    (r"n_episodes=100", "n_episodes=2"),
    (r"max_steps=200", "max_steps=20"),
    (r"max_minutes=\d+", "max_minutes=0.02"),
    (r"value=\.\.\.", "value=lambda text: 0.0"),
]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def scaled(code: str, clip: str) -> str:
    for pattern, replacement in SCALE_DOWN:
        code = re.sub(pattern, replacement, code)
    return code.replace('"<CLIP folder>"', repr(clip))


def test_the_readme_has_examples_and_every_step_count_is_scaled():
    blocks = python_blocks()
    assert len(blocks) >= 8
    for code in blocks:
        lines = [line.split("#")[0] for line in scaled(code, "clip").splitlines()]  # code, not comments
        assert not any("..." in line for line in lines), "a README placeholder this test does not fill in"
        assert not any(re.search(r"\.learn\((?!256)", line) for line in lines)


def test_every_readme_example_runs(tmp_path, monkeypatch):
    """Blocks 1-7 (everything but the Ray cluster, which tests/test_distributed.py covers at full size)."""
    monkeypatch.chdir(tmp_path)  # the examples write runs/, GIFs and adapters to the working directory
    clip = tiny_clip(tmp_path / "clip")
    namespace: dict = {}
    blocks = [b for b in python_blocks() if "DistributedPPO" not in b]
    for i, code in enumerate(blocks, 1):
        t0 = time.perf_counter()
        try:
            exec(compile(scaled(code, clip), f"README.md python block {i}", "exec"), namespace)
        except Exception as err:  # name the block: the traceback alone points at generated code
            pytest.fail(f"README python block {i} failed: {err!r}\n{code}")
        print(f"block {i}: {time.perf_counter() - t0:.1f} s")
    assert (tmp_path / "cartpole.gif").exists() and (tmp_path / "wm.gguf").exists()


@pytest.mark.slow
def test_the_readme_ray_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    code = [b for b in python_blocks() if "DistributedPPO" in b]
    assert len(code) == 1
    exec(compile(scaled(code[0], ""), "README.md Ray block", "exec"), namespace)
    assert namespace["agent"].num_timesteps >= 256
