"""The whole config tree: one typed dataclass per top-level section (RLinf's names)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlinf.config.actor import ActorConfig
from rlinf.config.algorithm import AlgorithmConfig
from rlinf.config.cluster import ClusterConfig
from rlinf.config.data import DataConfig
from rlinf.config.env import EnvConfig
from rlinf.config.reward import RewardConfig
from rlinf.config.rollout import RolloutConfig
from rlinf.config.runner import RunnerConfig


@dataclass
class RLinfConfig:
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    data: DataConfig = field(default_factory=DataConfig)
