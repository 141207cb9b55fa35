"""`reward`: verifiable rewards for reasoning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class RewardConfig:
    reward_type: Literal["math"] = "math"
    correct_score: float = 1.0
    incorrect_score: float = 0.0
    format_score: float = 0.0  # added when the answer is given in \boxed{}
    reward_scale: float = 1.0
    timeout_s: float = 2.0  # per answer check
    num_workers: int = 2  # verifier processes per rank
