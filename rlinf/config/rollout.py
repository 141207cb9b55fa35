"""`rollout`: the generation side (policy inference for embodied, LLM engines for reasoning)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class RolloutModelConfig:
    model_path: str | None = None  # default: the actor's model
    precision: Literal["fp32", "bf16", "fp16"] | None = None  # default: bf16 on GPU, fp32 on CPU


@dataclass
class WeightSyncConfig:
    bucket_mb: int = 256  # parameters move in buckets of this size
    dtype: Literal["fp32", "bf16", "fp16"] | None = None  # default: the rollout precision


@dataclass
class RolloutConfig:
    backend: Literal["hf", "huggingface", "fast", "vllm", "sglang"] = "hf"
    model: RolloutModelConfig = field(default_factory=RolloutModelConfig)
    pipeline_stage_num: int = 1  # embodied: env/policy pipelining stages per env rank
    gpu_memory_utilization: float = 0.5
    max_num_seqs: int = 256  # concurrent sequences in the engine
    enable_offload: bool = False  # sleep() the engine between rollouts
    weight_sync: WeightSyncConfig = field(default_factory=WeightSyncConfig)
