"""Benchmark weight sync against a raw broadcast of the same bytes, in the same run.

    torchrun --standalone --nproc_per_node 2 bench/weight_sync.py            # GPU: Qwen2.5-1.5B
    torchrun --standalone --nproc_per_node 2 bench/weight_sync.py --model tiny   # CPU (gloo)

Modes (``--mode all`` runs all three):
- ``disagg``: a 1-rank actor (rank 0, plain bf16 tensors) -> a 1-rank rollout (rank 1);
  baseline: one ``dist.broadcast`` of a flat buffer of the same total bytes;
- ``hybrid``: the same actor -> rollout ranks 0 and 1 (rank 0 loads in place, rank 1 receives);
- ``colocated``: actor = rollout = every rank; the actor holds FSDP2-style DTensor shards
  (Shard(0) over all ranks), each rank loads the gathered weights into its own engine copy;
  reports the peak extra GPU memory of the sync against the bucket size; baselines: a raw
  broadcast and a raw all-gather of the same bytes.
The weights are random tensors with the model's names and shapes (no transformers import).
Prints one JSON object per mode on rank 0.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist
from _timing import timed

from rlinf.dist.weight_sync import WeightSync, weight_sync_group_specs

MODELS = {  # hidden, layers, heads, kv heads, intermediate, vocab, tied embeddings
    "qwen2.5-1.5b": (1536, 28, 12, 2, 8960, 151936, True),
    "qwen2.5-0.5b": (896, 24, 14, 2, 4864, 151936, True),
    "tiny": (64, 2, 4, 2, 128, 1000, False),
}


def qwen2_shapes(
    hidden: int, layers: int, heads: int, kv_heads: int, inter: int, vocab: int, tied: bool
) -> dict[str, tuple[int, ...]]:
    """HF Qwen2 parameter names and shapes, in ``named_parameters()`` order."""
    kv = kv_heads * (hidden // heads)
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.q_proj.bias": (hidden,),
            p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, hidden),
            p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        }
    shapes["model.norm.weight"] = (hidden,)
    if not tied:
        shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def _engine_loader(engine: dict[str, torch.Tensor]):
    def load_weights(weights):
        for name, t in weights:
            engine[name].copy_(t)

    return load_weights


def _checksum(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.double().sum() for t in tensors.values()]).cpu()


def _result(mode, nbytes, sync_s, raw_s, extra=None) -> dict:
    gb = nbytes / 1e9
    out = {
        "mode": mode,
        "bytes": nbytes,
        "sync_s": round(sync_s, 6),
        "sync_GBps": round(gb / sync_s, 2),
        "raw_broadcast_s": round(raw_s, 6),
        "raw_broadcast_GBps": round(gb / raw_s, 2),
        "ratio_vs_raw": round(sync_s / raw_s, 3),
    }
    out.update(extra or {})
    return out


def _raw_broadcast_s(nbytes: int, device, group, member: bool, args) -> float:
    """Baseline: one broadcast of ``nbytes`` from rank 0 (``member``: this rank takes part)."""
    flat = torch.empty(nbytes, dtype=torch.uint8, device=device)
    return timed(
        lambda: dist.broadcast(flat, src=0, group=group) if member else None,
        args.iters,
        args.warmup,
    )


def _raw_all_gather_s(nbytes: int, device, args) -> float:
    """Baseline: one all-gather whose output is ``nbytes`` (what a colocated gather moves)."""
    world = dist.get_world_size()
    out = torch.empty(nbytes // world * world, dtype=torch.uint8, device=device)
    shard = torch.empty(nbytes // world, dtype=torch.uint8, device=device)
    return timed(lambda: dist.all_gather_into_tensor(out, shard), args.iters, args.warmup)


def bench_actor_to_rollout(args, shapes, device, dtype, rollout: list[int]) -> dict:
    """A 1-rank actor (rank 0, plain tensors) to ``rollout`` ranks; rank 0 may be one of them."""
    rank = dist.get_rank()
    groups = [dist.new_group(r) for r in weight_sync_group_specs([0], rollout)]
    sync = WeightSync([0], rollout, groups, args.bucket_mb, dtype, inflight=args.inflight)
    gen = torch.Generator(device=device).manual_seed(0)
    nbytes = sum(torch.Size(s).numel() for s in shapes.values()) * dtype.itemsize
    engine = {}
    if rank in rollout:
        engine = {n: torch.zeros(s, device=device, dtype=dtype) for n, s in shapes.items()}
    load = _engine_loader(engine) if engine else None
    params = {}
    if rank == 0:
        actor_dtype = getattr(torch, args.actor_dtype)
        params = {
            n: torch.randn(s, generator=gen, device=device, dtype=actor_dtype)
            for n, s in shapes.items()
        }
        run = lambda: sync.sync(params.items(), version=1, load_weights=load)  # noqa: E731
    elif rank in rollout:
        run = lambda: sync.receive(load)  # noqa: E731
    else:
        run = lambda: None  # noqa: E731
    sync_s = timed(run, args.iters, args.warmup)
    buckets = len(sync.last_buckets)

    # correctness: every rollout engine equals the actor's weights cast to the sync dtype
    sums = torch.empty(len(shapes), dtype=torch.float64)
    if rank == 0:
        sums.copy_(_checksum({n: p.to(dtype) for n, p in params.items()}))
    dist.broadcast(sums, src=0)
    same = torch.tensor([float(torch.equal(sums, _checksum(engine)) if engine else 1.0)])
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    sync.release_buffers()
    params.clear()
    engine.clear()
    raw_s = _raw_broadcast_s(nbytes, device, None, True, args)
    extra = {
        "buckets": buckets,
        "bucket_mb": args.bucket_mb,
        "inflight": args.inflight,
        "checksums_equal": bool(same.item()),
    }
    ranks = "_".join(map(str, rollout))
    name = "disagg_1actor_to_1rollout" if 0 not in rollout else f"hybrid_actor0_rollout{ranks}"
    return _result(name, nbytes, sync_s, raw_s, extra)


def bench_colocated(args, shapes, device, dtype) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    world, rank = dist.get_world_size(), dist.get_rank()
    ranks = list(range(world))
    sync = WeightSync(ranks, ranks, [], bucket_mb=args.bucket_mb, dtype=dtype)
    mesh = init_device_mesh(device.type, (world,))
    gen = torch.Generator(device=device).manual_seed(rank)
    actor_dtype = getattr(torch, args.actor_dtype)
    params = {}
    for n, s in shapes.items():
        rows = -(-s[0] // world)  # torch.chunk sizes, as FSDP2 shards dim 0
        local_rows = max(0, min(rows, s[0] - rank * rows))
        local = torch.randn((local_rows, *s[1:]), generator=gen, device=device, dtype=actor_dtype)
        stride = torch.empty(s, device="meta").stride()
        params[n] = DTensor.from_local(local, mesh, [Shard(0)], shape=torch.Size(s), stride=stride)
    engine = {n: torch.zeros(s, device=device, dtype=dtype) for n, s in shapes.items()}
    load = _engine_loader(engine)
    nbytes = sum(torch.Size(s).numel() for s in shapes.values()) * dtype.itemsize
    largest = max(torch.Size(s).numel() for s in shapes.values()) * dtype.itemsize

    sync_s = timed(lambda: sync.sync(params.items(), 1, load_weights=load), args.iters, args.warmup)
    peak_extra = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        sync.sync(params.items(), 2, load_weights=load)
        torch.cuda.synchronize()
        peak_extra = torch.cuda.max_memory_allocated() - base
        t = torch.tensor([peak_extra], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        peak_extra = int(t.item())
    full = {n: p.full_tensor() for n, p in params.items()}
    same = torch.tensor([float(all(torch.equal(full[n].to(dtype), engine[n]) for n in full))])
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    del full
    engine.clear()
    params.clear()
    raw_s = _raw_broadcast_s(nbytes, device, None, True, args)
    gather_s = _raw_all_gather_s(nbytes, device, args)
    bucket_bytes = sync.bucket_bytes
    extra = {
        "ranks": world,
        "buckets": len(sync.last_buckets),
        "bucket_mb": args.bucket_mb,
        "bucket_bytes": bucket_bytes,
        "largest_param_bytes": largest,
        "peak_extra_gpu_bytes": peak_extra,
        "peak_within_one_bucket": None
        if peak_extra is None
        else peak_extra <= max(bucket_bytes, largest),
        "raw_all_gather_s": round(gather_s, 6),
        "ratio_vs_raw_all_gather": round(sync_s / gather_s, 3),
        "bit_identical": bool(same.item()),
    }
    return _result(f"colocated_{world}ranks_fsdp", nbytes, sync_s, raw_s, extra)


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", choices=sorted(MODELS), default="qwen2.5-1.5b" if cuda else "tiny"
    )
    parser.add_argument("--mode", choices=["disagg", "hybrid", "colocated", "all"], default="all")
    parser.add_argument("--bucket-mb", type=float, default=512.0)
    parser.add_argument("--dtype", default="bfloat16", help="rollout dtype (sync casts to it)")
    parser.add_argument("--actor-dtype", default="bfloat16", help="e.g. float32 master weights")
    parser.add_argument("--inflight", type=int, default=2, help="flat buffers per rank")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    if cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    if dist.get_world_size() < 2:
        raise SystemExit("run with at least 2 ranks: torchrun --nproc_per_node 2 ...")
    dtype = getattr(torch, args.dtype)
    shapes = qwen2_shapes(*MODELS[args.model])
    results = []
    if args.mode in ("disagg", "all"):
        results.append(bench_actor_to_rollout(args, shapes, device, dtype, [1]))
    if args.mode in ("hybrid", "all"):
        results.append(bench_actor_to_rollout(args, shapes, device, dtype, [0, 1]))
    if args.mode in ("colocated", "all"):
        results.append(bench_colocated(args, shapes, device, dtype))
    if dist.get_rank() == 0:
        for r in results:
            r |= {
                "model": args.model,
                "device": torch.cuda.get_device_name() if cuda else "cpu",
                "backend": str(dist.get_backend()),
            }
            print(json.dumps(r))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
