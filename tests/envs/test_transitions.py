"""Transitions in words: fully observable describers, state differences, JSONL files, episode splits."""

from __future__ import annotations

import numpy as np
import pytest

import llmrl
from llmrl.envs.transitions import (
    NO_CHANGE,
    FullMiniGridDescriber,
    apply_diff,
    collect,
    full_describer_for,
    load_jsonl,
    save_jsonl,
    split,
    state_diff,
)
from llmrl.errors import ConfigError


def test_grid_text_has_the_map_and_the_cat():
    env = llmrl.make("llmrl/Grid-v0", slip=0.0)
    data = collect(env, 50, seed=0)
    assert (
        data[0].state
        == "map: ...G/.#.P/S...\ncat: column 1, row 1\naround: up free, right free, down edge, left edge"
    )
    up = next(t for t in data if t.state == data[0].state and t.action == "up")
    assert up.next_state.endswith("cat: column 1, row 2\naround: up free, right wall, down free, left edge")
    assert up.reward == -0.04 and not up.terminated
    assert {t.episode for t in data} == set(range(data[-1].episode + 1))


def test_state_diff_round_trip_and_errors():
    a = "agent: 1,1 facing up\ncarrying: nothing\nyellow key: 1,2"
    b = "agent: 1,1 facing up\ncarrying: yellow key\nyellow key: carried"
    d = state_diff(a, b)
    assert d == "carrying: yellow key\nyellow key: carried"
    assert apply_diff(a, d) == b and state_diff(a, a) == NO_CHANGE and apply_diff(a, NO_CHANGE) == a
    with pytest.raises(ValueError, match="does not have"):
        apply_diff(a, "door: 2,2 open")
    with pytest.raises(ConfigError):
        state_diff("free text", "other text")


def test_doorkey_full_text_follows_the_dynamics():
    pytest.importorskip("minigrid")
    env = llmrl.make("MiniGrid-DoorKey-5x5-v0")
    assert isinstance(full_describer_for(env), FullMiniGridDescriber)
    data = collect(env, 400, seed=0)
    keys = [line.split(": ")[0] for line in data[0].state.split("\n")]
    assert keys == ["agent", "carrying", "goal", "yellow door", "yellow key", "walls", "ahead"]
    for t in data:  # the set of lines never changes, so every step has a difference
        state_diff(t.state, t.next_state)
    turns = [t for t in data if t.action == "turn right"]
    assert turns and all(state_diff(t.state, t.next_state).startswith("agent: ") for t in turns)


def test_derived_lines_are_what_the_env_says_and_derive_puts_them_back():
    pytest.importorskip("minigrid")
    from llmrl.envs.transitions import FullGridDescriber, strip_derived

    env = llmrl.make("MiniGrid-DoorKey-5x5-v0")
    d = FullMiniGridDescriber()
    obs, _ = env.reset(seed=3)
    u = env.unwrapped
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(300):
        text = d.text(d.snapshot(env, obs))
        front = u.grid.get(*u.front_pos)
        where, _, ahead = text.rpartition("ahead: ")[2].partition(" ")
        assert where == "{},{}".format(*u.front_pos)
        kinds.add(ahead.split()[-1])
        if front is None:
            assert ahead == "nothing"
        elif front.type == "wall":
            assert ahead == "wall"
        else:
            assert front.type in ahead and (front.type != "door" or ahead.endswith(
                "open" if front.is_open else "locked" if front.is_locked else "closed"))  # fmt: skip
        assert d.derive(strip_derived(text, d.derived)) == text
        obs, _, term, trunc, _ = env.step(int(rng.integers(6)))
        if term or trunc:
            obs, _ = env.reset(seed=int(rng.integers(100)))
    assert {"wall", "nothing", "key"} <= kinds
    with pytest.raises(ConfigError, match="size"):
        FullMiniGridDescriber().derive("agent: 1,1 facing up\ncarrying: nothing\nwalls: none")
    assert full_describer_for(env).size == (5, 5)  # ready to derive before any state is described
    with pytest.raises(ConfigError, match="without its derived line"):
        d.derive(text)
    grid = llmrl.make("llmrl/Grid-v0").unwrapped
    plain = FullGridDescriber(grid, hints=False)
    assert plain.derived == () and "around" not in plain.text((2, 0))


def test_jsonl_round_trip_and_bad_lines(tmp_path):
    data = collect(llmrl.make("llmrl/Grid-v0"), 30, seed=1, source="random")
    path = save_jsonl(data, tmp_path / "d" / "grid.jsonl")
    assert load_jsonl(path) == data
    path.write_text(path.read_text() + '{"state": "x"}\n')
    with pytest.raises(ConfigError, match=r"grid.jsonl:31"):
        load_jsonl(path)


def test_split_keeps_episodes_whole():
    data = collect(llmrl.make("llmrl/Grid-v0"), 400, seed=0)
    train, test = split(data, test_fraction=0.25, seed=0)
    assert len(train) + len(test) == len(data) and test
    assert not {t.episode for t in train} & {t.episode for t in test}
    with pytest.raises(ConfigError):
        split(data, test_fraction=1.0)


def test_minigrid_text_features_read_the_state():
    pytest.importorskip("minigrid")
    from llmrl.envs import WithText
    from llmrl.envs.transitions import MiniGridTextFeatures, TextFeatures

    f = MiniGridTextFeatures(5)
    text = "agent: 1,3 facing up\ncarrying: nothing\ngoal: 3,3\nyellow door: 2,1 locked\nyellow key: 1,2\nwalls: 2,2 2,3"
    v = f(text).reshape(-1)
    planes = v[:-5].reshape(len(f.CHANNELS), 5, 5)  # (channel, y, x)
    on = {(f.CHANNELS[c], x, y) for c, y, x in zip(*np.nonzero(planes))}
    assert on == {
        ("agent", 1, 3),
        ("goal", 3, 3),
        ("door locked", 2, 1),
        ("key", 1, 2),
        ("wall", 2, 2),
        ("wall", 2, 3),
    }
    assert v[-5:].tolist() == [0, 0, 0, 1, 0]  # facing up, carrying nothing
    carried = f(
        text.replace("carrying: nothing", "carrying: yellow key").replace(
            "yellow key: 1,2", "yellow key: carried"
        )
    )
    assert (
        carried[-1] == 1
        and carried[f.CHANNELS.index("key") * 25 : (f.CHANNELS.index("key") + 1) * 25].sum() == 0
    )
    with pytest.raises(ValueError):
        f(text.replace("1,3", "7,3"))
    # the wrapper gives exactly the features of the text it shows
    env = TextFeatures(WithText(llmrl.make("MiniGrid-DoorKey-5x5-v0"), describer=FullMiniGridDescriber()), f)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and np.array_equal(obs, f(info["text"]))
    obs, *_, info = env.step(2)
    assert np.array_equal(obs, f(info["text"]))
    with pytest.raises(ConfigError, match="space"):
        TextFeatures(env, lambda text: np.zeros(3))
