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


def fused_adam_if_possible(
    opt: torch.optim.Optimizer, device_type: str | tuple[str, ...] = "cuda"
) -> torch.optim.Optimizer:
    """The same Adam/AdamW with ``fused=True`` (one kernel per step) when every parameter is a
    plain (not sharded) floating-point tensor on ``device_type`` (one type or several) and no
    step was taken yet; else ``opt``."""
    types = (device_type,) if isinstance(device_type, str) else device_type
    params = [p for g in opt.param_groups for p in g["params"]]
    if (
        type(opt) not in (torch.optim.Adam, torch.optim.AdamW)
        or opt.state
        or not params
        or any(
            p.device.type not in types or not p.is_floating_point() or hasattr(p, "device_mesh")
            for p in params
        )
    ):
        return opt
    groups = [
        {k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in opt.param_groups
    ]
    return type(opt)(groups, fused=True)


def direct_fused_step(opt: torch.optim.Optimizer):
    """A ``step()`` for a fused single-group Adam/AdamW that calls torch's fused kernel itself.

    ``torch.optim``'s ``step()`` spends ~100 µs of Python per call around a ~15 µs kernel,
    which dominates small-policy updates of thousands of optimizer steps. The returned callable
    does what that step does for this case (the state stays torch's own, so checkpoints and
    ``load_state_dict`` are unchanged): the first call and any unusual call go through
    ``opt.step()``. Returns None when the optimizer is not such a case (use ``opt.step``).
    """
    if not isinstance(opt, torch.optim.Adam | torch.optim.AdamW) or len(opt.param_groups) != 1:
        return None
    g = opt.param_groups[0]
    if not g.get("fused") or g.get("amsgrad") or g.get("maximize") or g.get("capturable"):
        return None
    if g.get("differentiable"):
        return None
    decoupled = isinstance(opt, torch.optim.AdamW) or g.get("decoupled_weight_decay", False)
    kernel = getattr(torch, "_fused_adamw_" if decoupled else "_fused_adam_", None)
    if kernel is None:
        return None

    def step() -> None:
        g = opt.param_groups[0]  # load_state_dict() replaces the group dicts
        params = g["params"]
        states = [opt.state.get(p) for p in params]
        if any(p.grad is None for p in params) or not all(states) or torch.is_tensor(g["lr"]):
            opt.step()
            return
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        beta1, beta2 = g["betas"]
        kernel(
            params,
            [p.grad for p in params],
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [],
            steps,
            amsgrad=False,
            lr=g["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=g["weight_decay"],
            eps=g["eps"],
            maximize=False,
        )

    return step
