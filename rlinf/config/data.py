"""`data`: prompt datasets (reasoning) and supervised data (sft)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class SyntheticDataConfig:
    """Generate the arithmetic dataset into the output dir when no paths are given."""

    enable: bool = False
    n_train: int = 2000
    n_val: int = 200
    seed: int = 0
    max_digits: int = 1  # operand size: 1 keeps the CPU demo learnable by a tiny model
    ops: list[str] = field(default_factory=lambda: ["+", "-", "*"])  # also "max", "min"


@dataclass
class DataConfig:
    type: Literal["math", "sft"] = "math"
    train_data_paths: list[str] = field(default_factory=list)
    val_data_paths: list[str] = field(default_factory=list)
    prompt_key: str = "prompt"
    answer_key: str = "answer"
    response_key: str = "solution"  # sft targets
    apply_chat_template: bool = False
    system_prompt: str | None = None
    max_prompt_length: int = 256
    rollout_batch_size: int = 16  # prompts per step, over all ranks
    val_rollout_batch_size: int = 64
    shuffle: bool = True
    seed: int = 1
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
