"""Pieces every training runner shares: seeding, metric merging, the per-step control vote."""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist

Stats = dict[str, tuple[float, int]]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def add_stat(stats: Stats, key: str, total: float, count: int = 1) -> None:
    """Accumulate a sum and its count under ``key``."""
    s, c = stats.get(key, (0.0, 0))
    stats[key] = (s + float(total), c + count)


def mean_stat(value: float) -> tuple[float, int]:
    """A single value that averages with the same key from other ranks."""
    return (float(value), 1)


def gather_metrics(local: Stats, rank0_only: dict[str, float] | None = None) -> dict[str, float]:
    """Sum (value, count) pairs over all ranks at rank 0 and return means (empty elsewhere)."""
    world = dist.get_world_size()
    parts: list[Stats | None] = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object(local, parts, dst=0)
    if dist.get_rank() != 0:
        return {}
    total: dict[str, list[float]] = {}
    maxed: set[str] = set()
    for p in parts:
        for k, (s, c) in (p or {}).items():
            acc = total.setdefault(k, [0.0, 0])
            acc[0] += s
            acc[1] += c
    out = {k: s / c for k, (s, c) in total.items() if c}
    for p in parts:  # phase times: the slowest rank's
        for k, (s, c) in (p or {}).items():
            if k.startswith("time/") and c:
                out[k] = max(out[k] if k in maxed else 0.0, s / c)
                maxed.add(k)
    out.update(rank0_only or {})
    return out


def control_vote(stop_reason: str, early_stop: bool, timed_out: bool) -> tuple[str, bool]:
    """One all-reduce per step: any rank's stop request, and rank 0's early-stop decision."""
    code = {"": 0, "stop": 1, "requeue": 2}[stop_reason]
    t = torch.tensor([code, int(early_stop), int(timed_out)], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    reason = {0: "", 1: "stop", 2: "requeue"}[int(t[0])]
    return reason or ("stop" if int(t[2]) else ""), bool(t[1])
