"""Timing shared by the multi-rank benchmarks: median over runs of the slowest rank's time."""

import time

import torch
import torch.distributed as dist


def sync_device() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, iters: int, warmup: int) -> float:
    """Median seconds of ``fn()`` over ``iters`` runs, the slowest rank's time each run."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync_device()
        dist.barrier()
        start = time.perf_counter()
        fn()
        sync_device()
        t = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        times.append(t.item())
    return sorted(times)[len(times) // 2]
