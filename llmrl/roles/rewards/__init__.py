"""LLM and VLM as reward models: four published forms, each a Gymnasium reward wrapper (a RoleWrapper).

- `JudgeReward`      -- an LLM judges the episode's transcript against an objective in words
                        (Kwon et al., arXiv 2303.00001).
- `CLIPReward`       -- CLIP similarity of the frame to a goal sentence, goal-baseline regularised
                        (VLM-RM, arXiv 2310.12921); `TextGoalReward` does the same with the state text
                        and a sentence embedder, so it runs on the embedded default.
- `ManualReward`     -- signs of events derived from the game's manual by yes/no questions
                        (Read and Reap the Rewards, arXiv 2302.04449).
- `PreferenceReward` -- a reward model fitted to the LLM's pairwise preferences (Motif, arXiv 2310.00166).

Every wrapper adds an intrinsic reward to the env's, reports it apart (`info["intrinsic_reward"]`,
metrics `reward/intrinsic` vs `reward/extrinsic`), and reports its LLM counters in `llmrl_metrics()`.
"""

from llmrl.roles.rewards.common import RewardRole, add_relabel
from llmrl.roles.rewards.judge import JudgeReward, transcript
from llmrl.roles.rewards.manual import DEFAULT_EVENTS, ManualAnswer, ManualReward
from llmrl.roles.rewards.preference import PreferenceReward
from llmrl.roles.rewards.similarity import (
    CLIPEmbedder,
    CLIPReward,
    GoalSimilarityReward,
    TextGoalReward,
    vlmrm_projection,
    vlmrm_reward,
)

__all__ = [
    "RewardRole",
    "add_relabel",
    "JudgeReward",
    "transcript",
    "ManualReward",
    "ManualAnswer",
    "DEFAULT_EVENTS",
    "PreferenceReward",
    "CLIPEmbedder",
    "CLIPReward",
    "GoalSimilarityReward",
    "TextGoalReward",
    "vlmrm_projection",
    "vlmrm_reward",
]
