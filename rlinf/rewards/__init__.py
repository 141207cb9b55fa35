"""Verifiable rewards for reasoning RL (math answer checking with timeouts)."""

from rlinf.rewards.math import MathReward, RewardResult

__all__ = ["MathReward", "RewardResult"]
