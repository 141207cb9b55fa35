"""`algorithm`: advantage estimator, losses and their coefficients (RLinf's key names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class SamplingParamsConfig:
    """How rollout samples tokens (reasoning) or actions (embodied eval is deterministic)."""

    do_sample: bool = True
    temperature_train: float = 1.0
    temperature_eval: float = 0.0  # 0: greedy
    top_k: int = -1
    top_p: float = 1.0


@dataclass
class LengthParamsConfig:
    max_new_token: int = 256  # response tokens per sample
    max_length: int | None = (
        None  # prompt + response (default: data.max_prompt_length + max_new_token)
    )


@dataclass
class OverlongConfig:
    """DAPO soft overlong punishment."""

    enable: bool = False
    buffer_len: int = 64
    penalty_factor: float = 1.0


@dataclass
class AlgorithmConfig:
    """RL algorithm settings shared by the embodied and reasoning runners."""

    adv_type: Literal["gae", "grpo", "rloo", "reinforce++"] = "gae"
    loss_type: Literal["actor_critic", "actor"] = "actor_critic"  # actor: no value head (GRPO)
    loss_agg_func: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"] = "token-mean"
    gamma: float = 0.99
    gae_lambda: float = 0.95
    group_size: int = 1  # samples per prompt / envs sharing a reset seed (GRPO, RLOO)
    group_std_normalize: bool = True  # GRPO divides by the group std (false: Dr.GRPO)
    normalize_advantages: bool = True
    update_epoch: int = 4
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    clip_ratio_c: float | None = None  # dual clip (> 1); null disables
    value_clip: float | None = None  # clipped value loss; null disables
    huber_delta: float | None = None  # Huber value loss; null: squared error
    value_loss_coef: float = 0.5
    entropy_bonus: float = 0.0
    target_kl: float | None = None  # stop the epoch loop once approx KL exceeds it
    kl_beta: float = 0.0  # KL to the reference policy (0: no reference model)
    kl_penalty: Literal["k1", "k2", "k3", "low_var_kl", "abs"] = "low_var_kl"
    use_kl_loss: bool = True  # KL as a loss term (true) or subtracted from the reward (false)
    dynamic_sampling: bool = False  # DAPO: drop groups with equal rewards and refill
    max_num_gen_batches: int = 4  # refills allowed per step with dynamic sampling
    overlong: OverlongConfig = field(default_factory=OverlongConfig)
    sampling_params: SamplingParamsConfig = field(default_factory=SamplingParamsConfig)
    length_params: LengthParamsConfig = field(default_factory=LengthParamsConfig)
    recompute_logprobs: bool = True  # actor recomputes old log-probs instead of trusting rollout's
