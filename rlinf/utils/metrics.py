"""Metric sinks: console progress line, metrics.jsonl and tensorboard (rank 0 writes)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping

log = logging.getLogger("rlinf.metrics")

# Shown on the console progress line when present, in this order.
CONSOLE_KEYS = (
    "env/return_mean",
    "eval/return_mean",
    "eval/success_rate",
    "train/loss",
    "eval/loss",
    "train/reward_mean",
    "train/accuracy",
    "eval/accuracy",
    "train/policy_loss",
    "train/value_loss",
    "train/approx_kl",
    "rollout/env_steps_per_s",
    "rollout/tokens_per_s",
)


def _fmt(v: float) -> str:
    if isinstance(v, float) and (abs(v) >= 1e4 or (0 < abs(v) < 1e-3)):
        return f"{v:.3e}"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class MetricLogger:
    """Writes each step's metrics to the chosen backends; a no-op on ranks other than 0."""

    def __init__(
        self,
        output_dir: str,
        backends: list[str],
        enabled: bool = True,
        total_steps: int | None = None,
        log_interval: int = 1,
        resume_step: int = 0,
    ):
        self.enabled = enabled
        self.backends = set(backends)
        self.total_steps = total_steps
        self.log_interval = max(1, log_interval)
        self._t0 = time.monotonic()
        self._step0 = resume_step
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        if "jsonl" in self.backends:
            self._jsonl = open(os.path.join(output_dir, "metrics.jsonl"), "a", buffering=1)  # noqa: SIM115
        if "tensorboard" in self.backends:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError(
                    "runner.logger.logger_backends has tensorboard but it is not installed: "
                    "pip install tensorboard (or drop it from logger_backends)"
                ) from e
            self._tb = SummaryWriter(os.path.join(output_dir, "tensorboard"))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items() if v is not None and not _is_nan(v)}
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, step)
        if "console" in self.backends and (step % self.log_interval == 0 or self._last(step)):
            log.info(self._line(step, clean))

    def _last(self, step: int) -> bool:
        return self.total_steps is not None and step >= self.total_steps

    def _line(self, step: int, m: Mapping[str, float]) -> str:
        elapsed = time.monotonic() - self._t0
        done = step - self._step0
        parts = [f"step {step}" + (f"/{self.total_steps}" if self.total_steps else "")]
        parts += [
            f"{k.split('/', 1)[1]}={_fmt(m[k])}" if k.startswith("env/") else f"{k}={_fmt(m[k])}"
            for k in CONSOLE_KEYS
            if k in m
        ]
        if done > 0 and self.total_steps:
            eta = elapsed / done * max(self.total_steps - step, 0)
            parts.append(f"elapsed={elapsed:.0f}s eta={eta:.0f}s")
        else:
            parts.append(f"elapsed={elapsed:.0f}s")
        return " | ".join(parts)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _is_nan(v: object) -> bool:
    return isinstance(v, float) and math.isnan(v)
