"""`runner`: which loop runs, for how long, and where its outputs go."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

LoggerBackend = Literal["console", "jsonl", "tensorboard"]


@dataclass
class LoggerConfig:
    """Metric sinks and log verbosity."""

    project_name: str = "rlinf"
    experiment_name: str = "default"  # default output_dir is runs/<experiment_name>
    logger_backends: list[LoggerBackend] = field(
        default_factory=lambda: ["console", "jsonl", "tensorboard"]
    )
    per_rank: bool = False  # every rank logs at INFO (default: rank 0 INFO, others WARNING)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


@dataclass
class EarlyStopConfig:
    """Stop training once a metric reaches a threshold (e.g. eval/return_mean >= 475)."""

    metric: str | None = None
    threshold: float = 0.0
    mode: Literal["max", "min"] = "max"


@dataclass
class RunnerConfig:
    """The training loop."""

    task_type: Literal["check", "embodied", "reasoning", "sft"] = "check"
    output_dir: str | None = None  # default: runs/<runner.logger.experiment_name>
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 1
    max_steps: int = 100  # training steps (one rollout + one update each); -1: until max_epochs
    max_epochs: int = 1  # passes over the prompt data (reasoning, sft)
    max_time_s: float | None = None  # stop (and checkpoint) after this much wall-clock time
    val_check_interval: int = 0  # evaluate every N steps (0: never; also evaluates at step 0)
    save_interval: int = 0  # checkpoint every N steps (0: only at the end and on stop signals)
    keep_checkpoints: int = 2  # newest complete checkpoints kept on disk (0: keep all)
    resume_dir: str | None = None  # "auto": newest checkpoint of output_dir; or a checkpoint path
    weight_sync_interval: int = 1  # sync actor -> rollout weights every N steps
    only_eval: bool = False
    deterministic: bool = False  # torch deterministic algorithms (bit-reproducible CPU runs)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    log_interval: int = 1  # console progress line every N steps

    def resolved_output_dir(self) -> str:
        return self.output_dir or f"runs/{self.logger.experiment_name}"
