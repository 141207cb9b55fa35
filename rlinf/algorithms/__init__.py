"""Algorithm math: pure torch functions for advantages, losses, KL and DAPO pieces."""

from rlinf.algorithms.advantages import (
    episode_mask,
    gae,
    group_advantages,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    next_values_from,
    normalize_advantages,
    reinforce_pp_advantages,
    reinforce_pp_returns,
    rloo_advantages,
)
from rlinf.algorithms.dapo import dynamic_sampling_keep, expand_group_mask, overlong_penalty
from rlinf.algorithms.kl import KL_KINDS, kl_estimate, kl_in_reward
from rlinf.algorithms.losses import (
    LOSS_AGG_MODES,
    aggregate,
    approx_kl,
    entropy_from_logits,
    logprobs_from_logits,
    ppo_policy_loss,
    value_loss,
)

__all__ = [
    "KL_KINDS",
    "LOSS_AGG_MODES",
    "aggregate",
    "approx_kl",
    "dynamic_sampling_keep",
    "entropy_from_logits",
    "episode_mask",
    "expand_group_mask",
    "gae",
    "group_advantages",
    "kl_estimate",
    "kl_in_reward",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "next_values_from",
    "normalize_advantages",
    "overlong_penalty",
    "ppo_policy_loss",
    "reinforce_pp_advantages",
    "reinforce_pp_returns",
    "rloo_advantages",
    "value_loss",
]
