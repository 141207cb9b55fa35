"""Rollout throughput: the fast engine against transformers' generate, in one run.

Random weights of a Qwen2-shaped model, random prompts, EOS ignored, every response exactly
``--gen-len`` tokens. Reports generated tokens/s of both, their ratio, and the fast engine as a
fraction of the decode memory-bandwidth roofline (weights + mean KV cache read per step).

    python bench/rollout_engine.py --batch-sizes 64,256,1024 --hf-batch-sizes 64,256 \
        --prompt-len 256 --gen-len 256 --dtype bf16 --device cuda --out bench/results/rollout.json
    python bench/rollout_engine.py --model-shape tiny --device cpu --dtype fp32 \
        --batch-sizes 4 --prompt-len 8 --gen-len 8
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time

import torch

from rlinf.rollout.base import SamplingParams
from rlinf.rollout.fast.engine import FastEngine
from rlinf.rollout.fast.spec import spec_from_hf_config

SHAPES = {
    "qwen2.5-1.5b": dict(
        hidden_size=1536,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        intermediate_size=8960,
        vocab_size=151936,
        tie_word_embeddings=True,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
    ),
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=256,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
    ),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
HBM_GBPS = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hbm_gbps(device: torch.device, flag: float | None) -> tuple[float, str]:
    """HBM bandwidth in GB/s: the flag, else by GPU name, else a nominal guess."""
    if flag is not None:
        return flag, "flag"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, gbps in HBM_GBPS.items():
            if key in name:
                return gbps, f"device name {name!r}"
        return 2000.0, f"unknown GPU {name!r}: nominal guess, pass --hbm-gbps"
    return 50.0, "CPU: nominal guess, pass --hbm-gbps"


def build_hf_model(shape: str, dtype: torch.dtype, device: torch.device):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**SHAPES[shape], eos_token_id=None, bos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(dtype)
    return model.eval()


def time_hf(model, prompts: torch.Tensor, gen_len: int) -> float:
    """Seconds for transformers' generate to sample ``gen_len`` tokens for every prompt."""
    from transformers import GenerationConfig

    gc = GenerationConfig(
        max_new_tokens=gen_len,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        pad_token_id=0,
        eos_token_id=None,
    )
    warm = copy.deepcopy(gc)
    warm.max_new_tokens = 4
    mask = torch.ones_like(prompts)
    with torch.inference_mode():
        model.generate(prompts[:, :8], attention_mask=mask[:, :8], generation_config=warm)
        _sync(prompts.device)
        t0 = time.perf_counter()
        out = model.generate(prompts, attention_mask=mask, generation_config=gc)
        _sync(prompts.device)
        elapsed = time.perf_counter() - t0
    assert out.shape[1] == prompts.shape[1] + gen_len, out.shape
    return elapsed


def time_fast(engine: FastEngine, prompts: list[list[int]], gen_len: int) -> float:
    """Seconds for the fast engine (after one warm-up call that captures its graphs)."""
    params = SamplingParams(max_new_tokens=gen_len, temperature=1.0, ignore_eos=True, seed=0)
    engine.generate(prompts, params)
    _sync(engine.device)
    t0 = time.perf_counter()
    out = engine.generate(prompts, params)
    _sync(engine.device)
    elapsed = time.perf_counter() - t0
    assert all(len(t) == gen_len for t in out.token_ids)
    return elapsed


def roofline_step_seconds(spec, batch: int, context: float, elem: int, gbps: float) -> float:
    """Seconds a decode step needs to read the weights and ``batch`` KV caches of ``context``
    tokens at ``gbps``: the memory-bandwidth floor of one step."""
    weights = spec.num_params()
    if not spec.tie_word_embeddings:
        weights -= spec.vocab_size * spec.hidden_size  # the input table is only gathered
    step_bytes = weights * elem + batch * context * spec.kv_bytes_per_token(elem)
    return step_bytes / (gbps * 1e9)


def roofline_tokens_per_s(
    spec, batch: int, prompt_len: int, gen_len: int, elem: int, gbps: float
) -> float:
    """Decode tokens/s if every step only had to read the weights and the mean KV cache."""
    return batch / roofline_step_seconds(spec, batch, prompt_len + gen_len / 2, elem, gbps)


def profile(engine: FastEngine, prompts: list[list[int]], gen_len: int) -> str:
    """Kernel-time table of one generate call (torch.profiler), most expensive first."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    params = SamplingParams(max_new_tokens=gen_len, temperature=1.0, ignore_eos=True, seed=0)
    engine.generate(prompts, params)
    acts = [ProfilerActivity.CPU]
    if engine.device.type == "cuda":
        acts.append(ProfilerActivity.CUDA)
    with torch_profile(activities=acts) as prof:
        engine.generate(prompts, params)
        _sync(engine.device)
    key = "self_cuda_time_total" if engine.device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70)
    logging.info("profile of batch %d:\n%s", len(prompts), table)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default="64,256,1024")
    ap.add_argument("--hf-batch-sizes", default="64,256", help="'' to skip transformers")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--gen-len", type=int, default=256)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model-shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    ap.add_argument("--hbm-gbps", type=float, default=None)
    ap.add_argument("--decode-attn-impl", default="auto")
    ap.add_argument("--sync-interval", type=int, default=16)
    ap.add_argument("--no-cuda-graphs", action="store_true")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    ap.add_argument("--triton-ops", type=int, default=1, help="1: fused Triton kernels")
    ap.add_argument("--profile", type=int, default=0, help="profile one batch of this size")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    hf_sizes = {int(b) for b in args.hf_batch_sizes.split(",") if b}
    gbps, gbps_source = hbm_gbps(device, args.hbm_gbps)
    elem = torch.empty((), dtype=dtype).element_size()

    model = build_hf_model(args.model_shape, dtype, device)
    spec = spec_from_hf_config(model.config)
    gen = torch.Generator().manual_seed(1)
    all_prompts = torch.randint(
        0, spec.vocab_size, (max(batch_sizes + list(hf_sizes)), args.prompt_len), generator=gen
    )
    hf_seconds: dict[int, float] = {}
    for b in sorted(hf_sizes):
        hf_seconds[b] = time_hf(model, all_prompts[:b].to(device), args.gen_len)
        logging.info("transformers generate batch %d: %.2fs", b, hf_seconds[b])
    engine = FastEngine(
        model,
        device=device,
        dtype=dtype,
        max_seq_len=args.prompt_len + args.gen_len,
        max_num_seqs=max(batch_sizes),
        gpu_memory_utilization=args.gpu_memory_utilization,
        enable_cuda_graphs=not args.no_cuda_graphs,
        sync_interval=args.sync_interval,
        decode_attn_impl=args.decode_attn_impl,
        triton_ops=bool(args.triton_ops),
    )
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    results = []
    for b in batch_sizes:
        seconds = time_fast(engine, all_prompts[:b].tolist(), args.gen_len)
        first = time_fast(engine, all_prompts[:b].tolist(), 1)  # prefill + one token
        step = (seconds - first) / max(args.gen_len - 1, 1)
        floor = roofline_step_seconds(spec, b, args.prompt_len + args.gen_len / 2, elem, gbps)
        fast_tps = b * args.gen_len / seconds
        hf_tps = b * args.gen_len / hf_seconds[b] if b in hf_seconds else None
        roof = roofline_tokens_per_s(spec, b, args.prompt_len, args.gen_len, elem, gbps)
        results.append(
            {
                "batch_size": b,
                "fast_seconds": seconds,
                "fast_tokens_per_s": fast_tps,
                "hf_seconds": hf_seconds.get(b),
                "hf_tokens_per_s": hf_tps,
                "speedup": fast_tps / hf_tps if hf_tps else None,
                "roofline_tokens_per_s": roof,
                "roofline_fraction": fast_tps / roof,
                "prefill_seconds": first,
                "decode_step_ms": step * 1e3,
                "decode_step_roofline_ms": floor * 1e3,
            }
        )
        logging.info("fast engine batch %d: %.2fs, %.0f tokens/s", b, seconds, fast_tps)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model_shape": args.model_shape,
        "params": spec.num_params(),
        "dtype": args.dtype,
        "prompt_len": args.prompt_len,
        "gen_len": args.gen_len,
        "hbm_gbps": gbps,
        "hbm_gbps_source": gbps_source,
        "engine": {
            "slots": engine.num_slots,
            "cuda_graphs": engine.use_graphs,
            "graphs_captured": engine.runner.num_graphs() if engine.runner else 0,
            "decode_attn_impl": engine.decode_attn_impl,
            "triton_ops": engine.ops.use_triton,
            "sync_interval": args.sync_interval,
        },
        "results": results,
        "torch": torch.__version__,
    }
    print(json.dumps(report, indent=2))
    if args.profile:
        report["profile"] = profile(engine, all_prompts[: args.profile].tolist(), args.gen_len)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
