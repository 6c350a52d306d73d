"""Proxy reward from an LLM judge (Kwon et al., "Reward Design with Language Models", arXiv 2303.00001).

The user states the objective in words (optionally with examples of episodes and their verdicts). At
episode end (or every k steps) the LLM reads the episode's transcript -- the captions of what
happened, `info["caption"]` from `llmrl.envs.WithText` -- and answers "Did the agent achieve the
objective?". The verdict becomes the reward, given on the step where it is made.

The verdict compares the scores of "Yes" and "No" rather than parsing free text. Two ways:

- `method="channel"` (default; "noisy channel" prompting, Min et al. 2022, arXiv 2108.04106): the
  margin log p(transcript | "the agent succeeded") - log p(transcript | "the agent failed"). The
  transcript is scored under both verdicts, so the model's prior over answer words cancels.
- `method="score"`: log p(" Yes" | prompt) - log p(" No" | prompt) after the question, *calibrated*
  (Zhao et al. 2021, "Calibrate Before Use"): the margin under a content-free episode ("N/A") is
  subtracted.

The transcript keeps the last `max_lines` events (default 1: the outcome; see the argument).

Why channel is the default: the embedded model (Gemma 3 270M, a base model) leans "Yes" whatever the
episode; measured on labelled Grid and DoorKey transcripts (benchmarks/rewards.py), the calibrated
Yes/No margin was at chance while the channel margin was right on most (see RESULTS.md for the
figures). Free-text answers are a third option (`method="generate"`), with unparseable answers
counted and mapped to `fallback`.

With `every=k` the judge also rules on the partial transcript every k steps and the reward is the
change of the verdict since the last ruling, so an episode's judge rewards still sum to its final
verdict (a potential difference; Ng et al. 1999).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from llmrl.errors import ConfigError
from llmrl.llm.base import LLM
from llmrl.roles.rewards.common import BadOutputPolicy, RewardRole, check_llm, yes_no_prompt_logit

__all__ = ["JudgeReward", "transcript"]

_CONTENT_FREE = "N/A"
_QUESTION = "Question: Did the agent achieve the objective?\nAnswer:"
_VERDICT = "This is an episode where the agent {}.\nEpisode:\n"


def transcript(captions: Sequence[str], *, max_lines: int = 12) -> str:
    """Captions -> a compact transcript: empty ones dropped, runs of repeats folded ("moved up (x3)").

    Folding keeps the prompt short and makes similar episodes give the same text (cache hits).
    Only the last `max_lines` lines are kept (the end of an episode decides success).
    """
    lines: list[list[Any]] = []
    for c in captions:
        c = str(c).strip()
        if not c:
            continue
        if lines and lines[-1][0] == c:
            lines[-1][1] += 1
        else:
            lines.append([c, 1])
    text = [f"- {c}" + (f" (x{k})" if k > 1 else "") for c, k in lines[-max_lines:]]
    return "\n".join(text) if text else "- nothing happened"


class JudgeReward(RewardRole):
    """Reward = an LLM's verdict on whether the episode achieved an objective stated in words.

        env = JudgeReward(WithText(gymnasium.make("llmrl/Grid-v0")), llm, objective="Reach the goal.")

    Works with any agent (the verdict is added to the reward of the step where it is made, the
    episode's last step by default). `info["judge_p"]` holds the calibrated probability of "Yes".
    """

    metric_name = "judge"

    def __init__(
        self,
        env: Any,
        llm: LLM,
        objective: str,
        *,
        examples: Sequence[tuple[Sequence[str], bool]] = (),
        every: int | None = None,
        method: Literal["channel", "score", "generate"] = "channel",
        calibrate: bool | None = None,
        output: Literal["binary", "probability"] = "binary",
        success: float = 1.0,
        failure: float = 0.0,
        fallback: float = 0.0,
        key: str = "caption",
        final_text: bool = False,
        max_lines: int = 1,
        max_calls: int | None = None,
        on_bad_output: BadOutputPolicy = "raise",
        fallback_reward: float = 0.0,
    ):
        """
        Args:
            llm: backend with `score` (method "channel"/"score") or `generate` (method="generate").
            objective: the goal in words, e.g. "Reach the goal square without falling into the pit."
            examples: few-shot examples, (captions of an episode, achieved?) pairs; help small models.
            every: also judge every k steps of an episode (reward = change of verdict); None = at the end only.
            method: "channel" scores the transcript under "succeeded" vs "failed"; "score" ranks
                " Yes"/" No" after the question; "generate" parses a short free-text answer.
            calibrate: subtract the margin of a content-free episode ("N/A"); default True for
                method="score" (where it matters), False for "channel" (measured to change little).
            output: "binary" gives `success`/`failure`; "probability" interpolates them by p(Yes).
            success, failure: reward for a Yes / a No verdict.
            fallback: reward when a free-text answer is unparseable or the call budget is spent.
            key: info key whose per-step text makes the transcript ("caption", or "text" for states).
            final_text: append the final `info["text"]` (the state in words) to the transcript.
            max_lines: transcript lines (events) kept, the last ones. Default 1, the episode's outcome:
                with more lines the 270M model is swayed by bad-sounding events on the way (measured
                accuracy on Grid/DoorKey episodes: 1.0 with the last event, 0.67-0.75 with the last 3;
                benchmarks/rewards.py). Raise it for larger models or objectives about the whole episode.
            max_calls: budget of LLM prompts for this role; beyond it verdicts are `fallback`.
            on_bad_output, fallback_reward: what a bad LLM answer (NaN, wrong count) does; see RewardRole.
        """
        super().__init__(
            env, llm=llm, max_calls=max_calls, on_bad_output=on_bad_output, fallback_reward=fallback_reward
        )
        if method not in ("channel", "score", "generate"):
            raise ConfigError(f"method must be 'channel', 'score' or 'generate', got {method!r}.")
        if output not in ("binary", "probability"):
            raise ConfigError(f"output must be 'binary' or 'probability', got {output!r}.")
        if every is not None and every < 1:
            raise ConfigError(f"every must be a positive number of steps or None (episode end), got {every}.")
        if not objective or not objective.strip():
            raise ConfigError("objective must state the goal in words, e.g. objective='Reach the goal.'")
        check_llm(llm, ["generate"] if method == "generate" else ["score"], "JudgeReward")
        calibrate = (method == "score") if calibrate is None else calibrate
        self.objective, self.every, self.method, self.calibrate = objective.strip(), every, method, calibrate
        self.output, self.success, self.failure, self.fallback = output, success, failure, fallback
        self.key, self.final_text, self.max_lines = key, final_text, max_lines
        self._header = self._make_header(examples) if method != "channel" else self._channel_header(examples)
        self._bias: float | None = None
        n = self.num_envs
        self._captions: list[list[str]] = [[] for _ in range(n)]
        self._last_verdict = np.zeros(n, dtype=np.float64)
        self.counters.update(judgements=0, yes=0, unparseable=0)

    # -- prompts --------------------------------------------------------------------------------

    def _make_header(self, examples: Sequence[tuple[Sequence[str], bool]]) -> str:
        head = (
            "A judge reads what an agent did in an episode and says whether it achieved the objective.\n"
            f"Objective: {self.objective}\n\n"
        )
        for caps, ok in examples:
            head += f"Episode:\n{transcript(caps, max_lines=self.max_lines)}\n{_QUESTION} {'Yes' if ok else 'No'}\n\n"
        return head

    def _channel_header(self, examples: Sequence[tuple[Sequence[str], bool]]) -> str:
        head = f"Objective: {self.objective}\n"
        for caps, ok in examples:
            head += (
                _VERDICT.format("succeeded" if ok else "failed")
                + transcript(caps, max_lines=self.max_lines)
                + "\n\n"
            )
        return head

    def margin(self, episode_texts: Sequence[str]) -> np.ndarray:
        """Uncalibrated Yes-minus-No log-prob margin of each transcript (methods "channel", "score"). (n,)."""
        if self.method == "score":
            return yes_no_prompt_logit(self.llm, [self.prompt(t) for t in episode_texts])
        yes = self._header + _VERDICT.format("succeeded")
        no = self._header + _VERDICT.format("failed")
        # p(transcript | verdict): the transcripts are the continuations; each prompt is evaluated once
        texts = list(episode_texts)
        return np.asarray(self.llm.score(yes, texts), dtype=np.float64) - np.asarray(
            self.llm.score(no, texts), dtype=np.float64
        )

    def prompt(self, episode_text: str) -> str:
        """The full judge prompt for one transcript; the answer continues it with " Yes" or " No"."""
        return f"{self._header}Episode:\n{episode_text}\n{_QUESTION}"

    def bias(self) -> float:
        """Yes-No log-prob margin under a content-free episode (computed once; 0 if not calibrating)."""
        if self._bias is None:
            self._bias = 0.0
            if self.calibrate and self.method != "generate":
                self._bias = float(self.margin([_CONTENT_FREE])[0])
        return self._bias

    # -- judging --------------------------------------------------------------------------------

    def judge(self, transcripts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Verdicts for a batch of transcripts: (rewards (n,), p_yes (n,); NaN where unparseable)."""
        n = len(transcripts)
        if n == 0:
            return np.zeros(0), np.zeros(0)
        if not self.spend(n):
            return np.full(n, self.fallback, dtype=np.float64), np.full(n, np.nan)
        if self.method != "generate":
            margin = self.margin(transcripts) - self.bias()
            p = 1.0 / (1.0 + np.exp(-margin))
        else:
            prompts = [self.prompt(t) for t in transcripts]
            answers = self.llm.generate(prompts, max_tokens=4, temperature=0.0, stop=["\n"])
            p = np.array([_parse_yes_no(a) for a in answers], dtype=np.float64)
        bad = np.isnan(p)
        self.counters["judgements"] += n
        self.counters["unparseable"] += int(bad.sum())
        self.counters["yes"] += int((p[~bad] > 0.5).sum())
        if self.output == "binary":
            rewards = np.where(p > 0.5, self.success, self.failure)
        else:
            rewards = self.failure + (self.success - self.failure) * p
        return np.where(bad, self.fallback, rewards), p

    def intrinsic(self, obs, rewards, terminated, truncated, infos, starts):
        n = len(rewards)
        out = np.zeros(n, dtype=np.float64)
        due: list[int] = []
        for i in range(n):
            if starts[i]:
                self._captions[i] = []
                self._last_verdict[i] = 0.0
                continue
            if self.key not in infos[i]:  # else every episode would be judged on empty lines
                raise ConfigError(
                    f"JudgeReward reads info[{self.key!r}], which the env does not provide; "
                    "wrap it with llmrl.envs.WithText(env) first."
                )
            self._captions[i].append(str(infos[i][self.key] or ""))
            ended = bool(terminated[i] or truncated[i])
            if ended or (self.every is not None and len(self._captions[i]) % self.every == 0):
                due.append(i)
        if due:
            texts = [self._transcript(i, infos[i]) for i in due]
            verdicts, p = self.judge(texts)
            for j, i in enumerate(due):
                out[i] = verdicts[j] - self._last_verdict[i]
                self._last_verdict[i] = verdicts[j]
                infos[i]["judge_p"] = float(p[j])
        return out

    def _transcript(self, i: int, info: dict) -> str:
        text = transcript(self._captions[i], max_lines=self.max_lines)
        if self.final_text and info.get("text"):
            text += f"\nFinal state: {info['text']}"
        return text

    def extra_metrics(self) -> dict[str, float]:
        return {"judge/bias": float(self._bias)} if self._bias is not None else {}


def _parse_yes_no(answer: str) -> float:
    """1.0 for an answer starting with yes, 0.0 for no, NaN otherwise."""
    m = re.match(r"\W*(yes|no)\b", answer.strip().lower())
    return float("nan") if m is None else (1.0 if m.group(1) == "yes" else 0.0)
