"""Benchmark Channel transfers against raw dist.send/recv of the same bytes, in the same run.

    torchrun --standalone --nproc_per_node 2 bench/channel.py              # GPU: NCCL, 256 MB
    torchrun --standalone --nproc_per_node 3 bench/channel.py --mb 8       # CPU: gloo

Cases: one-to-one (rank 0 -> 1) of a large batch and of a small one (per-step latency: the
header dominates), many-to-one and one-to-many (with 3+ ranks), and a colocated handover
(rank 0 -> 0). The batch mixes dtypes and a padded ragged field (tokens + lengths). The raw
baseline sends one flat uint8 tensor per peer with the same bytes. Prints one JSON object per
case on rank 0.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist
from _timing import timed

from rlinf.dist.batch import TensorBatch, balanced_sizes
from rlinf.dist.channel import Channel, channel_pairs


def make_batch(rows: int, seq: int, device: torch.device) -> TensorBatch:
    """A reasoning-style batch: tokens, log-probs, mask, rewards, lengths (~13 bytes/token),
    and per-row checksums."""
    lengths = torch.randint(1, seq + 1, (rows,), device=device)
    mask = torch.arange(seq, device=device)[None, :] < lengths[:, None]
    batch = TensorBatch(
        {
            "tokens": torch.randint(0, 150_000, (rows, seq), device=device),
            "logprobs": torch.randn(rows, seq, device=device),
            "mask": mask,
            "rewards": torch.randn(rows, device=device, dtype=torch.bfloat16),
            "lengths": lengths,
        },
        meta={"policy_version": 3},
    )
    batch["check"] = _row_sums(batch)  # lets the receivers check what arrived, row by row
    return batch


def _row_sums(batch: TensorBatch) -> torch.Tensor:
    """Per-row float64 sum of every tensor but ``check`` (survives splits and merges)."""
    rows = [t.reshape(t.shape[0], -1).double().sum(1) for n, t in batch.items() if n != "check"]
    return torch.stack(rows).sum(0)


def bench_case(name, src, dst, rows, seq, header, device, args) -> dict:
    rank = dist.get_rank()
    ch = Channel(src, dst, header_device=header)
    batch = make_batch(rows, seq, device) if rank in src else None

    received = []

    def run():
        if ch.is_src:
            ch.send(batch)
        if ch.is_dst:
            received[:] = ch.recv_parts()

    seconds = timed(run, args.iters, args.warmup)
    ok = torch.tensor([1.0])
    for part in received:  # (colocated parts are the sent batch itself)
        ok[0] = min(ok[0].item(), float(torch.equal(_row_sums(part), part["check"])))
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    # raw: the same bytes per (src, dst) pair as one flat tensor, posted all at once
    sizes = ch.split_sizes(rows) if ch.is_src else []
    per_row = batch.nbytes() // rows if batch is not None else 0
    sends = [
        (peer, torch.empty(n * per_row, dtype=torch.uint8, device=device))
        for peer, n in zip(ch.out_peers, sizes)
        if peer != rank
    ]
    row_bytes = make_batch(1, seq, torch.device("meta")).nbytes()
    recvs = [
        (peer, torch.empty(_rows_from(peer, src, dst, rows) * row_bytes, dtype=torch.uint8))
        for peer in ch.in_peers
        if peer != rank
    ]
    recvs = [(p, t.to(device)) for p, t in recvs]

    def raw():
        works = [dist.isend(t, dst=p) for p, t in sends if t.numel()]
        works += [dist.irecv(t, src=p) for p, t in recvs if t.numel()]
        for w in works:
            w.wait()

    remote = any(s != d for s, d in ch.pairs)
    raw_s = timed(raw, args.iters, args.warmup) if remote else None
    total = torch.tensor([batch.nbytes() if batch is not None else 0], dtype=torch.int64)
    dist.all_reduce(total)
    nbytes = int(total.item())
    out = {
        "case": name,
        "src": src,
        "dst": dst,
        "bytes": nbytes,
        "seconds": round(seconds, 6),
        "GBps": round(nbytes / seconds / 1e9, 3),
        "tensors": 6,
        "header_device": ch._header_device().type,
        "verified": bool(ok.item()),
    }
    if not remote:
        out |= {"GBps": None, "note": "colocated: handed over locally, no copy"}
    if raw_s is not None:
        out |= {
            "raw_seconds": round(raw_s, 6),
            "raw_GBps": round(nbytes / raw_s / 1e9, 3),
            "ratio_vs_raw": round(seconds / raw_s, 3),
        }
    return out


def _rows_from(peer: int, src: list[int], dst: list[int], rows: int) -> int:
    """Rows this rank receives from ``peer`` (every source sends ``rows`` in this benchmark)."""
    peers = sorted((d for s, d in channel_pairs(src, dst) if s == peer), key=dst.index)
    return balanced_sizes(rows, len(peers))[peers.index(dist.get_rank())]


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=256.0 if cuda else 8.0, help="batch size")
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    world = dist.get_world_size()
    if world < 2:
        raise SystemExit("run with at least 2 ranks: torchrun --nproc_per_node 2 ...")
    torch.manual_seed(dist.get_rank())
    row_bytes = make_batch(1, args.seq, torch.device("meta")).nbytes()
    rows = max(world, int(args.mb * 2**20 // row_bytes))
    last = world - 1
    cases = [
        ("one_to_one", [0], [1], rows, args.seq, None),
        ("one_to_one_small", [0], [1], 8, 16, None),
        ("colocated", [0], [0], rows, args.seq, None),
    ]
    if cuda:  # headers over NCCL too: a small GPU batch is then a single NCCL message
        cases += [
            ("one_to_one", [0], [1], rows, args.seq, "cuda"),
            ("one_to_one_small", [0], [1], 8, 16, "cuda"),
        ]
    if world >= 3:
        cases += [
            ("many_to_one", list(range(last)), [last], rows // last, args.seq, None),
            ("one_to_many", [0], list(range(1, world)), rows, args.seq, None),
        ]
    results = [bench_case(*c, device, args) for c in cases]
    if dist.get_rank() == 0:
        for r in results:
            r |= {"device": torch.cuda.get_device_name() if cuda else "cpu"}
            print(json.dumps(r))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
