"""The non-generation half of a GRPO step: our actor's update against a bare transformers step.

One batch of ``--prompts x --group`` sequences (``--prompt-len`` prompt + ``--gen-len`` response
tokens; ``--ragged`` draws response lengths in [gen_len/2, gen_len] and right-pads) goes through

- ours: :meth:`rlinf.train.lm_actor.LMActor.update` with ``on_policy=True`` (what the reasoning
  runner calls for one epoch of one minibatch), built from ``math_grpo_tiny.yaml`` with the
  bench's overrides (``--set key=value`` adds more, e.g. ``--set actor.model.compile=true``);
- the baseline: what a minimal trainer does for the same update, micro-batch by micro-batch:
  the HF model's forward with the LM head on the completion positions, float32 log-softmax
  gather, the same clipped policy loss aggregated seq-mean-token-mean, backward, gradient
  clipping and a fused AdamW step; ``--baseline-dtype bf16`` (TRL's setup when the model is
  loaded in bf16: bf16 weights and optimizer) or ``fp32`` (fp32 weights under bf16 autocast,
  like ours).

Both run in this process, one after the other, on the same device; prints JSON with the median
seconds of each and the ratio. ``--profile`` adds a table of our update's top kernels.

    python bench/lm_actor_update.py --device cuda --micro 64
    python bench/lm_actor_update.py --device cpu --model-shape tiny --prompt-len 16 --gen-len 16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _timing import sync_device  # noqa: E402
from grpo_vs_trl import build_model_dir  # noqa: E402

from rlinf.dist.batch import TensorBatch  # noqa: E402


def make_batch(args, vocab: int, device) -> TensorBatch:
    g = torch.Generator().manual_seed(0)
    n, P, R = args.prompts * args.group, args.prompt_len, args.gen_len
    L = P + R
    ids = torch.randint(3, vocab, (n, L), generator=g)
    lens = torch.randint(R // 2, R + 1, (n,), generator=g) if args.ragged else torch.full((n,), R)
    cols = torch.arange(L)
    attn = cols[None] < (P + lens)[:, None]
    resp = attn & (cols[None] >= P)
    ids = ids * attn
    return TensorBatch(
        {
            "input_ids": ids,
            "attention_mask": attn,
            "response_mask": resp,
            "old_logprobs": -torch.rand(n, L, generator=g) * resp,
            "advantages": torch.randn(n, generator=g),
        }
    ).to(device)


def ours(args, model_dir: Path, device) -> tuple:
    from rlinf.config import load_config
    from rlinf.train.lm_actor import LMActor

    n = args.prompts * args.group
    overrides = [
        f"actor.model.model_path={model_dir}",
        "~actor.model.tiny",
        f"actor.global_batch_size={n}",
        f"actor.micro_batch_size={args.micro}",
        "actor.optim.lr=1e-6",
        "algorithm.loss_agg_func=seq-mean-token-mean",
        "algorithm.update_epoch=1",
        f"algorithm.kl_beta={args.beta}",
        *args.set,
    ]
    cfg = load_config("math_grpo_tiny.yaml", overrides, validate=False)
    actor = LMActor(cfg, dist.group.WORLD, device, total_steps=1000)
    return actor, lambda b: actor.update(b, on_policy=True)


def baseline(args, model_dir: Path, device) -> tuple:
    from transformers import AutoModelForCausalLM

    bf16 = args.baseline_dtype == "bf16" and device.type == "cuda"
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16 if bf16 else torch.float32
    ).to(device)
    model.config.use_cache = False
    amp = device.type == "cuda" and not bf16
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device.type == "cuda")
    P, R = args.prompt_len, args.gen_len

    def step(b: TensorBatch) -> None:
        opt.zero_grad(set_to_none=True)
        n = b.batch_size
        micro = args.baseline_micro or args.micro
        for s in range(0, n, micro):
            mb = b[s : s + micro]
            ids, attn, mask = mb["input_ids"], mb["attention_mask"], mb["response_mask"][:, P:]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=R + 1).logits
            logits = logits[:, :-1].float()
            lp = logits.log_softmax(-1).gather(-1, ids[:, P:, None]).squeeze(-1)
            ratio = torch.exp(lp - lp.detach())
            adv = mb["advantages"][:, None]
            per_tok = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv)
            loss = ((per_tok * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / n
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return model, step


def timed(fn, b, iters: int, warmup: int) -> list[float]:
    """Seconds of each of ``iters`` calls ``fn(b)`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn(b)
    out = []
    for _ in range(iters):
        sync_device()
        t = time.perf_counter()
        fn(b)
        sync_device()
        out.append(time.perf_counter() - t)
    return out


def profile(fn, b, device) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with prof(activities=acts) as p:
        fn(b)
        sync_device()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return p.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=60)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model-shape", default="qwen2.5-0.5b")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=256)
    ap.add_argument("--micro", type=int, default=64)
    ap.add_argument("--beta", type=float, default=0.0)
    ap.add_argument("--ragged", action="store_true")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--baseline-dtype", choices=["bf16", "fp32"], default="fp32")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument(
        "--baseline-micro", type=int, help="the baseline's micro-batch (default --micro)"
    )
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="extra config override for ours")
    ap.add_argument("--out")
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", 0)
        torch.cuda.set_device(0)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        rank=0,
        world_size=1,
        device_id=device if device.type == "cuda" else None,
    )
    model_dir = Path(tempfile.mkdtemp(prefix="lm_actor_bench_")) / "model"
    build_model_dir(model_dir, args.model_shape, 1000)
    result: dict = {"settings": {k: v for k, v in vars(args).items() if k != "out"}}
    result["device_name"] = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"

    actor, fn = ours(args, model_dir, device)
    b = make_batch(args, actor.model.config.vocab_size, device)
    t0 = time.perf_counter()
    fn(b)
    result["ours_first_update_s"] = time.perf_counter() - t0  # includes any compilation
    times = timed(fn, b, args.iters, args.warmup)
    result["ours_s"] = statistics.median(times)
    result["ours_runs"] = [round(t, 4) for t in times]
    if device.type == "cuda":
        result["ours_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    table = profile(fn, b, device) if args.profile else None
    del actor, fn
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if not args.skip_baseline:
        _, base = baseline(args, model_dir, device)
        times = timed(base, b, args.iters, args.warmup)
        result["baseline_s"] = statistics.median(times)
        result["baseline_runs"] = [round(t, 4) for t in times]
        if device.type == "cuda":
            result["baseline_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["ratio_ours_over_baseline"] = round(result["ours_s"] / result["baseline_s"], 3)
    text = json.dumps(result, indent=1)
    print(text)
    if table:
        print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
