"""`env`: simulators for embodied runs, with RLinf's train/eval blocks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class EnvSplitConfig:
    """One block (`env.train` or `env.eval`)."""

    env_type: Literal["gym", "gymnasium", "mujoco", "maniskill", "libero"] = "gym"
    init_params: dict[str, Any] = field(default_factory=dict)  # `id` plus env kwargs
    total_num_envs: int = 8  # split evenly across env ranks
    max_episode_steps: int | None = None
    max_steps_per_rollout_epoch: int = 128  # rollout horizon per env per step
    auto_reset: bool = True
    ignore_terminations: bool = False
    group_size: int = 1  # envs sharing one reset seed (GRPO)
    seed: int = 0
    num_episodes: int = 8  # eval only: episodes per evaluation
    vector_mode: Literal["sync", "async"] = "sync"
    normalize_obs: bool = False
    normalize_reward: bool = False


@dataclass
class EnvConfig:
    train: EnvSplitConfig = field(default_factory=EnvSplitConfig)
    eval: EnvSplitConfig | None = None  # default: train's settings
    enable_offload: bool = False
