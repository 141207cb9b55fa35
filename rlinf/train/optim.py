"""Optimizer and learning-rate schedule from `actor.optim`."""

from __future__ import annotations

import math

import torch
from torch import nn

from rlinf.config.actor import OptimConfig

VALUE_PARAM_MARKERS = ("critic", "value")


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam/AdamW; parameters whose name mentions the critic get `value_lr` when it is set."""
    policy, value = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (value if any(m in name for m in VALUE_PARAM_MARKERS) else policy).append(p)
    groups = [{"params": policy, "lr": cfg.lr}]
    if cfg.value_lr is not None and cfg.value_lr != cfg.lr:
        groups.append({"params": value, "lr": cfg.value_lr})
    else:  # one group: one fused kernel and one Python pass per step
        policy += value
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    groups = [g for g in groups if g["params"]]
    return cls(
        groups,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
    )


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (warmup, then the schedule)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_scheduler == "constant" or total_steps <= cfg.warmup_steps:
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    floor = cfg.min_lr_ratio
    if cfg.lr_scheduler == "linear":
        return floor + (1 - floor) * (1 - progress)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    opt: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, cfg))
