"""One GRPO step, ours vs TRL's GRPOTrainer, at the same settings, one after the other.

Both sides: the same random-weight model (Qwen2.5-0.5B shape on GPU, a tiny one on CPU) saved as
a local HF directory with a word-level tokenizer (prompts are exactly --prompt-len tokens), the
same prompts, --prompts prompts x --group samples per step, --gen-len new tokens (EOS is never
produced by the random model in practice), the same reward (math-verify against a fixed answer),
loss aggregated as seq-mean-token-mean (TRL's "grpo" loss), KL coefficient --beta, one optimizer
step per generation batch, micro-batches of --micro sequences, bf16 on GPU, transformers
generation on both sides (ours: rollout.backend=hf; --ours-backend fast adds our engine).
On GPU ours runs with ``actor.model.torch_compile`` (the GPU configs' setting; the first step
pays the compilation, inside the warm-up). TRL's model is loaded in bf16 by default (pure bf16
weights and optimizer); ``--trl-dtype bf16,fp32`` also runs it with float32 master weights
under autocast, the numerics ours uses.

Ours runs as the real product (torchrun + rlinf.launch, colocated on one device, and optionally
disaggregated on two GPUs) and is read back from metrics.jsonl; TRL runs in this process. Prints
JSON: step seconds of each (median over the timed steps), the split into generation and the
rest, and the ratios.

    python bench/grpo_vs_trl.py --device cuda --out bench/results/grpo_vs_trl_h100.json
    python bench/grpo_vs_trl.py --device cpu --model-shape tiny --prompt-len 16 --gen-len 16 --prompts 4 --group 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "qwen2.5-0.5b": dict(
        hidden_size=896,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        intermediate_size=4864,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=2048,
        tie_word_embeddings=True,
    ),
}


def build_model_dir(out: Path, shape: str, n_words: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

    vocab = {
        "<pad>": 0,
        "<eos>": 1,
        "<unk>": 2,
        **{f"w{i}": i + 3 for i in range(n_words)},
        "0": n_words + 3,
    }
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    cfg = Qwen2Config(
        **SHAPES[shape],
        max_position_embeddings=4096,
        eos_token_id=1,
        pad_token_id=0,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        cfg, dtype=torch.bfloat16 if shape != "tiny" else torch.float32
    )
    model.save_pretrained(out)
    fast.save_pretrained(out)


def prompts(n: int, length: int) -> list[str]:
    return [" ".join(f"w{(i * 7 + j * 13) % 1000}" for j in range(length)) for i in range(n)]


def run_ours(args, model_dir: Path, data: Path, placement: str, nproc: int, backend: str) -> dict:
    out = Path(tempfile.mkdtemp(prefix="rlinf_grpo_bench_"))
    steps = args.warmup + args.steps
    overrides = [
        f"runner.output_dir={out}",
        "runner.task_type=reasoning",
        f"runner.max_steps={steps}",
        "runner.val_check_interval=0",
        "runner.save_interval=0",
        "runner.logger.logger_backends=[jsonl]",
        f"cluster.component_placement={placement}",
        f"cluster.accelerator_type={'cuda' if args.device == 'cuda' else 'cpu'}",
        f"cluster.accelerators_per_node={nproc}",
        f"actor.model.model_path={model_dir}",
        "actor.model.model_type=causal_lm",
        f"data.train_data_paths=[{data}]",
        f"data.max_prompt_length={args.prompt_len + 8}",
        f"data.rollout_batch_size={args.prompts}",
        "data.apply_chat_template=false",
        f"algorithm.group_size={args.group}",
        "algorithm.adv_type=grpo",
        "algorithm.loss_type=actor",
        "algorithm.loss_agg_func=seq-mean-token-mean",
        f"algorithm.kl_beta={args.beta}",
        "algorithm.update_epoch=1",
        f"algorithm.length_params.max_new_token={args.gen_len}",
        "algorithm.recompute_logprobs=true",
        f"actor.global_batch_size={args.prompts * args.group}",
        f"actor.micro_batch_size={args.ours_micro or args.micro}",
        "actor.optim.lr=1e-6",
        f"rollout.backend={backend}",
        "reward.num_workers=4",
        f"actor.model.torch_compile={str(args.ours_compile).lower()}",
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "rlinf.launch",
        "--config",
        str(REPO / "configs" / "math_grpo_tiny.yaml"),
        *overrides,
        "~actor.model.tiny",
        "~data.synthetic",
        "~actor.sft_warmup",
    ]
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"ours ({placement}) failed:\n{p.stderr[-4000:]}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r["step"] > args.warmup]
    step = [r["time/step_s"] + r.get("time/sync_s", 0.0) for r in timed]
    gen = [r["time/generate_s"] for r in timed]
    # where the non-generation time goes: scoring, the actor (advantages to optimizer step),
    # weight sync; the remainder is data movement and bookkeeping
    parts = {
        f"{k}_s": statistics.median(r[f"time/{k}_s"] for r in timed)
        for k in ("reward", "actor", "sync")
        if all(f"time/{k}_s" in r for r in timed)
    }
    return {
        "step_s": statistics.median(step),
        "generate_s": statistics.median(gen),
        "non_generate_s": statistics.median(s - g for s, g in zip(step, gen, strict=True)),
        "non_generate_parts": parts,
        "steps": [round(s, 3) for s in step],
    }


def run_trl(args, model_dir: Path, texts: list[str], dtype: str) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    if str(REPO) not in sys.path:  # run as a script from anywhere
        sys.path.insert(0, str(REPO))
    from rlinf.rewards.math import MathReward

    scorer = MathReward(num_workers=4)

    reward_times: list[float] = []

    def reward(completions, **_):
        t = time.perf_counter()
        out = [r.reward for r in scorer.score(list(completions), ["0"] * len(completions))]
        reward_times.append(time.perf_counter() - t)
        return out

    tok = AutoTokenizer.from_pretrained(model_dir)
    cuda = args.device == "cuda"
    # bf16: the checkpoint's dtype, so pure bf16 weights and Adam states (TRL's usual setup);
    # fp32: float32 master weights under bf16 autocast (the Trainer's bf16=True), like ours
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16 if cuda and dtype == "bf16" else torch.float32
    )
    gen_times: list[float] = []
    original = model.generate

    def timed_generate(*a, **k):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = original(*a, **k)
        if cuda:
            torch.cuda.synchronize()
        gen_times.append(time.perf_counter() - t)
        return out

    model.generate = timed_generate
    n = args.prompts * args.group
    cfg = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl_bench_"),
        per_device_train_batch_size=args.micro,
        gradient_accumulation_steps=n // args.micro,
        num_generations=args.group,
        max_completion_length=args.gen_len,
        temperature=1.0,
        beta=args.beta,
        loss_type="grpo",
        num_iterations=1,
        max_steps=args.warmup + args.steps,
        learning_rate=1e-6,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        bf16=cuda,
        use_cpu=not cuda,
        use_vllm=False,
        gradient_checkpointing=False,
        disable_dropout=True,
    )
    steps: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            steps.append(time.perf_counter() - self.t)

    ds = Dataset.from_list([{"prompt": t} for t in texts])
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=cfg,
        train_dataset=ds,
        processing_class=tok,
        callbacks=[Timer()],
    )
    trainer.train()
    scorer.close()
    timed = steps[args.warmup :]
    g = len(gen_times) // max(1, len(steps))  # generate() calls per step
    gen = [sum(gen_times[i * g : (i + 1) * g]) for i in range(len(steps))][args.warmup :]
    r = len(reward_times) // max(1, len(steps))  # reward calls per step
    rew = [sum(reward_times[i * r : (i + 1) * r]) for i in range(len(steps))][args.warmup :]
    return {
        "step_s": statistics.median(timed),
        "generate_s": statistics.median(gen),
        "non_generate_s": statistics.median(s - x for s, x in zip(timed, gen, strict=True)),
        "non_generate_parts": {"reward_s": statistics.median(rew)} if r else {},
        "steps": [round(s, 3) for s in timed],
        "generate_calls_per_step": g,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model-shape", default="qwen2.5-0.5b", choices=sorted(SHAPES))
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=256)
    ap.add_argument("--micro", type=int, default=16)
    ap.add_argument(
        "--ours-micro",
        type=int,
        help="our actor's micro-batch (memory knob, not an algorithm setting; default --micro)",
    )
    ap.add_argument("--beta", type=float, default=0.0)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument(
        "--disagg", action="store_true", help="also ours with actor and rollout on two GPUs"
    )
    ap.add_argument("--ours-backend", default="hf", help="comma list of rollout backends for ours")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument(
        "--trl-dtype",
        default="bf16",
        help="comma list: bf16 (TRL's model in bf16: pure bf16 training) and/or fp32 (float32 "
        "master weights under bf16 autocast, as ours); ratios are against the first",
    )
    ap.add_argument(
        "--ours-compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="actor.model.torch_compile for ours (default: on for cuda)",
    )
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.ours_compile is None:
        args.ours_compile = args.device == "cuda"
    work = Path(tempfile.mkdtemp(prefix="grpo_bench_"))
    model_dir = work / "model"
    build_model_dir(model_dir, args.model_shape, 1000)
    texts = prompts(max(64, args.prompts * (args.warmup + args.steps)), args.prompt_len)
    data = work / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": t, "answer": "0"}) + "\n" for t in texts))
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
    }
    runs = [("colocated", "{'actor,rollout': all}", 1)] + (
        [("disagg", "{actor: 0, rollout: 1}", 2)] if args.disagg else []
    )
    for backend in args.ours_backend.split(","):
        for name, placement, nproc in runs:
            try:
                result[f"ours_{name}_{backend}"] = run_ours(
                    args, model_dir, data, placement, nproc, backend
                )
            except (
                RuntimeError
            ) as e:  # keep the other measurements; the error is part of the result
                result[f"ours_{name}_{backend}"] = {"error": str(e)[-1500:]}
            print(
                json.dumps({f"ours_{name}_{backend}": result[f"ours_{name}_{backend}"]}), flush=True
            )
    if not args.skip_trl:
        for i, dtype in enumerate(args.trl_dtype.split(",")):
            name = "trl" if i == 0 else f"trl_{dtype}"
            result[name] = trl = run_trl(args, model_dir, texts, dtype)
            trl["weights"] = dtype
            print(json.dumps({name: trl}), flush=True)
            suffix = "" if i == 0 else f"_{dtype}"
            for k, v in list(result.items()):
                if k.startswith("ours_") and "error" not in v:
                    v[f"step_ratio_trl{suffix}_over_ours"] = round(trl["step_s"] / v["step_s"], 3)
                    v[f"non_generate_ratio_ours_over_trl{suffix}"] = round(
                        v["non_generate_s"] / trl["non_generate_s"], 3
                    )
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
