"""Intrinsic reward from an LLM's preferences between states (Motif, Klissarov et al. 2023, arXiv 2310.00166).

Motif asks an LLM which of two game messages shows more progress, fits a reward model to the answers
(Bradley-Terry), and adds its normalised output as an intrinsic reward. Here:

1. collect the distinct state texts (`info["text"]`, or captions) seen in the first `warmup_steps`;
2. sample `n_pairs` pairs and ask the LLM "Which situation is closer to the goal? A: ... B: ..."
   -- scored, not generated: log p(" A") - log p(" B"), asked in both orders and averaged, which
   cancels the model's preference for one position (small models have a strong one);
3. train a small MLP over the texts' sentence embeddings (MiniLM, (n, 384)) with the Bradley-Terry
   loss on the soft labels;
4. from then on add `coef * (r(text) - mean) / std` to every step (mean/std over the collected texts).

Labels are appended to `labels_path` (JSON lines) as they come, so an interrupted run resumes
without asking again; the LLM backend's cache makes a rerun free as well. `fit(texts)` trains from an
offline dataset instead (as Motif does), so rewards start at step 0.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llmrl.errors import ConfigError
from llmrl.llm.base import LLM
from llmrl.roles.rewards.common import BadOutputPolicy, RewardRole, check_llm, log

__all__ = ["PreferenceReward"]


class PreferenceReward(RewardRole):
    """Motif-style intrinsic reward: an MLP fitted to the LLM's pairwise preferences between state texts.

    env = PreferenceReward(WithText(gymnasium.make("llmrl/Grid-v0")), llm,
                           goal="The cat reaches the goal cell.", warmup_steps=1000)
    """

    metric_name = "preference"

    def __init__(
        self,
        env: Any,
        llm: LLM,
        goal: str,
        *,
        key: str = "text",
        warmup_steps: int = 2000,
        n_pairs: int = 128,
        coef: float = 0.1,
        labels_path: str | Path | None = None,
        hidden: int = 64,
        epochs: int = 300,
        lr: float = 3e-3,
        max_texts: int = 5000,
        seed: int = 0,
        max_calls: int | None = None,
        on_bad_output: BadOutputPolicy = "raise",
        fallback_reward: float = 0.0,
    ):
        """
        Args:
            llm: backend with `score` and `embed` (the embedded default has both).
            goal: what the agent should achieve, in words; the preference question refers to it.
            key: info key whose text is compared ("text" = the state, "caption" = the event).
            warmup_steps: env steps of text collection before labelling and training (0 = never on its
                own: call `fit(texts)` with an offline dataset).
            n_pairs: pairs the LLM labels (each costs two scored prompts, both orders).
            coef: weight of the normalised intrinsic reward.
            labels_path: JSON-lines file where labels are kept; reused and extended on the next run.
            hidden, epochs, lr: the reward MLP (2 hidden layers) and its full-batch Adam training.
            max_texts: distinct texts kept for pair sampling.
            seed: seeds pair sampling and the MLP.
            max_calls: budget of scored prompts; pairs beyond it are not labelled.
            on_bad_output, fallback_reward: what a bad LLM answer (NaN, wrong count) does; see RewardRole.
        """
        super().__init__(
            env, llm=llm, max_calls=max_calls, on_bad_output=on_bad_output, fallback_reward=fallback_reward
        )
        check_llm(llm, ["score", "embed"], "PreferenceReward")
        if not goal or not goal.strip():
            raise ConfigError("goal must state the goal in words, e.g. goal='The cat reaches the goal cell.'")
        for name, v in (("warmup_steps", warmup_steps), ("n_pairs", n_pairs), ("epochs", epochs)):
            if v < 0:
                raise ConfigError(f"{name} must be >= 0, got {v}.")
        self.goal, self.key, self.warmup_steps, self.n_pairs, self.coef = (
            goal.strip(),
            key,
            warmup_steps,
            n_pairs,
            coef,
        )
        self.hidden, self.epochs, self.lr, self.max_texts, self.seed = hidden, epochs, lr, max_texts, seed
        self.labels_path = Path(labels_path) if labels_path is not None else None
        self.labels: dict[tuple[str, str], float] = self._load_labels()
        self.net: nn.Module | None = None
        self._texts: dict[str, None] = {}  # insertion-ordered set
        self._reward_memo: dict[str, float] = {}
        self._mean, self._std = 0.0, 1.0
        self.counters.update(labelled=0, fitted=0)

    # -- labels -----------------------------------------------------------------------------------

    def prompt(self, a: str, b: str) -> str:
        return f"Goal: {self.goal}\nWhich situation is closer to the goal?\nA: {a}\nB: {b}\nAnswer (A or B):"

    def preference(self, a: str, b: str) -> float:
        """P(a is closer to the goal than b), position-debiased: mean of both orders. In [0, 1]."""
        ab = self.llm.score(self.prompt(a, b), [" A", " B"])
        ba = self.llm.score(self.prompt(b, a), [" A", " B"])
        # (log p(first) - log p(second)) in each order; a's margin is +ab, -ba
        margin = 0.5 * (float(ab[0] - ab[1]) - float(ba[0] - ba[1]))
        return float(1.0 / (1.0 + np.exp(-margin)))

    def label(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Labels for `pairs`, from `self.labels` when known, else asked (and saved) one by one."""
        out = []
        for a, b in pairs:
            if (a, b) not in self.labels:
                if not self.spend(2):
                    continue
                self.labels[(a, b)] = p = self.preference(a, b)
                self.counters["labelled"] += 1
                self._save_label(a, b, p)
            out.append(self.labels[(a, b)])
        return out

    def _load_labels(self) -> dict[tuple[str, str], float]:
        if self.labels_path is None or not self.labels_path.exists():
            return {}
        out = {}
        lines = self.labels_path.read_text(errors="replace").splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out[(str(row["a"]), str(row["b"]))] = float(row["p"])
            except (ValueError, KeyError, TypeError) as err:
                if n == len(lines):  # torn by a kill while appending: that label is asked again
                    log.warning("PreferenceReward: ignoring the torn last line of %s", self.labels_path)
                    continue
                raise ConfigError(
                    f"{self.labels_path} line {n} is not a label ({type(err).__name__}: {err}); each line must be "
                    '{"a": text, "b": text, "p": number}. Fix or delete that line (or the file: labels are asked again).'
                ) from err
        return out

    def _save_label(self, a: str, b: str, p: float) -> None:
        if self.labels_path is not None:
            self.labels_path.parent.mkdir(parents=True, exist_ok=True)
            if self.labels_path.exists():  # a kill mid-line left a torn last line: cut it off first
                data = self.labels_path.read_bytes()
                if data and not data.endswith(b"\n"):
                    with self.labels_path.open("r+b") as f:
                        f.truncate(data.rfind(b"\n") + 1)
            with self.labels_path.open("a") as f:
                f.write(json.dumps({"a": a, "b": b, "p": p}) + "\n")

    # -- the reward model -------------------------------------------------------------------------

    def sample_pairs(self, texts: Sequence[str]) -> list[tuple[str, str]]:
        """`n_pairs` distinct unordered pairs, drawn reproducibly from the sorted texts."""
        texts = sorted(set(texts))
        n = len(texts)
        if n < 2:
            raise ConfigError(f"PreferenceReward needs at least 2 distinct texts to compare, got {n}.")
        rng = np.random.default_rng(self.seed)
        total = n * (n - 1) // 2
        if total <= self.n_pairs:
            idx = [(i, j) for i in range(n) for j in range(i + 1, n)]
        else:
            seen: set[tuple[int, int]] = set()
            while len(seen) < self.n_pairs:
                i, j = sorted(rng.choice(n, size=2, replace=False).tolist())
                seen.add((i, j))
            idx = sorted(seen)
        order = rng.permutation(len(idx))
        return [(texts[idx[k][0]], texts[idx[k][1]]) for k in order]

    def fit(self, texts: Sequence[str]) -> float:
        """Label pairs of `texts`, train the reward MLP, set the normalisation. Returns the final loss."""
        texts = list(dict.fromkeys(texts))
        pairs = self.sample_pairs(texts)
        labels = self.label(pairs)
        pairs = [p for p in pairs if p in self.labels]
        if not pairs:
            raise ConfigError("No labelled pairs to train on (budget spent?); raise max_calls or n_pairs.")
        emb = {t: e for t, e in zip(texts, np.asarray(self.llm.embed(texts), dtype=np.float32))}
        d = len(next(iter(emb.values())))
        # An agent's rollout may call this (at the end of the warm-up) inside torch.inference_mode,
        # where nothing could train; and the MLP's seed must not reset the agent's global RNG stream.
        with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = self._new_net(d)
            xa = torch.as_tensor(np.stack([emb[a] for a, _ in pairs]))  # (P, d)
            xb = torch.as_tensor(np.stack([emb[b] for _, b in pairs]))  # (P, d)
            y = torch.as_tensor(labels, dtype=torch.float32)  # (P,) soft P(a > b)
            opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=1e-4)
            loss = torch.zeros(())
            for _ in range(self.epochs):
                # Bradley-Terry: P(a > b) = sigmoid(r(a) - r(b))
                logits = (self.net(xa) - self.net(xb)).squeeze(-1)
                loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            r = self.net(torch.as_tensor(np.stack(list(emb.values())))).squeeze(-1).numpy()
        self._mean, self._std = float(r.mean()), float(r.std() + 1e-6)
        self._reward_memo = {}
        self.counters["fitted"] += 1
        log.info(
            "PreferenceReward: %d labelled pairs over %d texts, final BT loss %.3f",
            len(pairs),
            len(texts),
            float(loss.detach()),
        )
        return float(loss.detach())

    def _new_net(self, d: int) -> nn.Module:
        return nn.Sequential(
            nn.Linear(d, self.hidden),
            nn.ReLU(),
            nn.Linear(self.hidden, self.hidden),
            nn.ReLU(),
            nn.Linear(self.hidden, 1),
        )

    def llmrl_state(self) -> dict[str, Any]:
        """The fitted reward model and the labels, for checkpoints (counters, texts and the reward
        normalisation are plain attributes, saved with the env state)."""
        net = None if self.net is None else {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        return {"net": net, "labels": [[a, b, p] for (a, b), p in self.labels.items()]}

    def llmrl_set_state(self, state: dict[str, Any]) -> None:
        self.labels = {(a, b): float(p) for a, b, p in state["labels"]}
        if state["net"] is None:
            self.net = None
            return
        self.net = self._new_net(int(state["net"]["0.weight"].shape[1]))
        self.net.load_state_dict(state["net"])

    def reward_of(self, texts: Sequence[str]) -> np.ndarray:
        """coef * normalised reward-model output of each text (0 before fitting). Shape (n,)."""
        if self.net is None:
            return np.zeros(len(texts))
        todo = list(dict.fromkeys(t for t in texts if t not in self._reward_memo))
        if todo:
            with torch.no_grad():
                x = torch.as_tensor(np.asarray(self.llm.embed(todo), dtype=np.float32))
                r = self.net(x).squeeze(-1).numpy()
            for t, v in zip(todo, r):
                self._reward_memo[t] = self.coef * (float(v) - self._mean) / self._std
        return np.array([self._reward_memo[t] for t in texts])

    def intrinsic(self, obs, rewards, terminated, truncated, infos, starts):
        live = [i for i in range(len(rewards)) if not starts[i]]
        texts = [str(infos[i].get(self.key, "") or "") for i in live]
        if self.net is None:
            for t in texts:
                if len(self._texts) < self.max_texts:
                    self._texts[t] = None
            due = self.warmup_steps > 0 and self.counters["steps"] + len(live) >= self.warmup_steps
            if due and len(self._texts) >= 2:
                self.fit(list(self._texts))
            return np.zeros(len(rewards))
        out = np.zeros(len(rewards))
        out[live] = self.reward_of(texts)
        return out
