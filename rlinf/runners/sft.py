"""`runner.task_type: sft` — supervised fine-tuning of a causal LM (full parameters, FSDP2).

Actor ranks train on `data.train_data_paths` (jsonl rows with `data.prompt_key` and
`data.response_key`; the loss is on the response tokens), `data.rollout_batch_size` sequences per
optimizer step over all actor ranks; `eval/loss` on `data.val_data_paths` every
`runner.val_check_interval` steps; checkpoints and `runner.resume_dir: auto` as for RL; the model
is exported to `<output_dir>/hf_model` at the end.
"""

from __future__ import annotations

import logging
import os
import time

import torch

from rlinf.data.prompts import PromptSampler
from rlinf.data.sft import SFTDataset
from rlinf.runners.base import RunContext
from rlinf.runners.common import Stats, add_stat, control_vote, gather_metrics, seed_everything
from rlinf.train import checkpoint as ckpt
from rlinf.utils.metrics import MetricLogger

log = logging.getLogger(__name__)


def run(ctx: RunContext) -> int:
    from rlinf.models.causal_lm import load_tokenizer
    from rlinf.runners.reasoning import prepare_assets
    from rlinf.train.lm_actor import LMActor

    cfg, topo, r, d = ctx.cfg, ctx.topo, ctx.cfg.runner, ctx.cfg.data
    seed_everything(r.seed * 1000 + topo.rank)
    prepare_assets(cfg, ctx.output_dir)
    tok = load_tokenizer(cfg.actor.model.model_path)
    max_len = d.max_prompt_length + cfg.algorithm.length_params.max_new_token
    train = SFTDataset(
        d.train_data_paths, tok, d.prompt_key, d.response_key, max_len, d.apply_chat_template
    )
    val = (
        SFTDataset(
            d.val_data_paths, tok, d.prompt_key, d.response_key, max_len, d.apply_chat_template
        )
        if d.val_data_paths
        else None
    )
    sampler = PromptSampler(len(train), d.rollout_batch_size, seed=d.seed, shuffle=d.shuffle)
    max_steps = r.max_steps if r.max_steps > 0 else sampler.batches_per_epoch * r.max_epochs
    actor = LMActor(cfg, topo.group("actor"), topo.device, total_steps=max_steps)
    me, n = topo.role_rank("actor"), topo.role_size("actor")
    writer = ckpt.CheckpointWriter(ctx.output_dir, r.keep_checkpoints)
    step = 0
    resume = ckpt.resolve_resume_dir(r.resume_dir, ctx.output_dir)
    if resume is not None:
        state = ckpt.load_rank_state(resume)
        st = actor.state_dict()
        ckpt.load_actor_state(resume, st, topo.group("actor"))
        actor.load_state_dict(st)
        actor.sched.load_state_dict(state["sched"])
        sampler.load_state_dict(state["sampler"])
        ckpt.restore_rng(state["rng"])
        step = state["step"]
        log.info("resumed from %s at step %d", resume, step)
    logger = MetricLogger(
        ctx.output_dir,
        r.logger.logger_backends,
        enabled=topo.rank == 0,
        total_steps=max_steps,
        log_interval=r.log_interval,
        resume_step=step,
    )

    def save() -> None:
        state = {
            "step": step,
            "rng": ckpt.capture_rng(),
            "sampler": sampler.state_dict(),
            "sched": actor.sched.state_dict(),
        }
        writer.save(step, state, actor.state_dict(), topo.group("actor"))

    @torch.no_grad()
    def evaluate() -> Stats:
        stats: Stats = {}
        if val is None:
            return stats
        idx = list(range(me, len(val), n))
        bs = d.val_rollout_batch_size
        chunks = [idx[i : i + bs] for i in range(0, len(idx), bs)]
        count = torch.tensor([len(chunks)], device=topo.device)
        torch.distributed.all_reduce(
            count, op=torch.distributed.ReduceOp.MAX, group=topo.group("actor")
        )
        for k in range(int(count)):  # the same number of forwards on every rank (FSDP)
            b = val.batch(chunks[k] if k < len(chunks) else idx[:1]).to(topo.device)
            lp = actor.compute_logprobs(b)
            mask = b["response_mask"]
            if k < len(chunks):
                add_stat(stats, "eval/loss", float(-(lp * mask).sum()), int(mask.sum()))
        return stats

    t_start, reason = time.monotonic(), ""
    try:
        if step == 0 and r.val_check_interval:
            logger.log(0, gather_metrics(evaluate()))
        while step < max_steps:
            timed_out = r.max_time_s is not None and time.monotonic() - t_start > r.max_time_s
            reason, _ = control_vote(ctx.stop.reason, False, timed_out)
            if reason:
                break
            t0 = time.monotonic()
            idx = next(sampler)
            loss = actor.sft_step(train.batch(idx[me::n]))
            actor.sched.step()
            step += 1
            stats: Stats = {"train/loss": (loss, 1), "time/step_s": (time.monotonic() - t0, 1)}
            if r.val_check_interval and (step % r.val_check_interval == 0 or step == max_steps):
                stats.update(evaluate())
            logger.log(step, gather_metrics(stats))
            if r.save_interval and step % r.save_interval == 0:
                save()
        control_vote(ctx.stop.reason, False, False)
        if step > 0 and not (r.save_interval and step % r.save_interval == 0):
            save()
        if not reason:
            actor.export(os.path.join(ctx.output_dir, "hf_model"), tok)
    finally:
        logger.close()
    if reason == "requeue" and topo.rank == 0:
        from rlinf.dist.slurm import requeue_current_job

        requeue_current_job()
    return 0
