import pytest
import torch
import torch.distributed as dist
from distributed import run_distributed


def _allreduce(rank, world_size):
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    return t.item()


def _raise_on_one(rank, world_size):
    if rank == 1:
        raise ValueError("boom on rank 1")
    return rank


def test_run_distributed_returns_results_in_rank_order():
    assert run_distributed(_allreduce, 3) == [6.0, 6.0, 6.0]


def test_run_distributed_reports_the_failing_rank():
    with pytest.raises(RuntimeError, match="rank 1 failed(.|\n)*boom on rank 1"):
        run_distributed(_raise_on_one, 2)
