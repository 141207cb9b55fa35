"""`runner.task_type: reasoning` — GRPO / PPO-style RL of a language model on verifiable math.

Every rank runs this loop and takes the branches of its roles:

    actor ranks    hold the prompt data; send prompts; receive scored groups; compute
                   advantages, recompute log-probs, update with FSDP2; export the model
    rollout ranks  generate `group_size` answers per prompt; score them (unless reward ranks
                   are placed); evaluate on the held-out set
    reward ranks   (optional) score sequences between rollout and actor

Colocated (`actor,rollout: all`) and disaggregated (`actor: 0-1, rollout: 2-3`) placements
run the same code; weights go actor -> rollout after every `runner.weight_sync_interval` steps.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from rlinf.algorithms import (
    dynamic_sampling_keep,
    group_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)
from rlinf.dist.batch import TensorBatch, balanced_sizes
from rlinf.dist.channel import Channel, wait_all
from rlinf.dist.weight_sync import WeightSync
from rlinf.runners.base import RunContext
from rlinf.runners.common import Stats, add_stat, control_vote, gather_metrics, seed_everything
from rlinf.train import checkpoint as ckpt
from rlinf.utils.dtypes import DTYPES
from rlinf.utils.metrics import MetricLogger

log = logging.getLogger(__name__)


def prepare_assets(cfg, output_dir: str) -> None:
    """Rank 0 writes the synthetic dataset and builds the tiny model when the config asks."""
    d, m = cfg.data, cfg.actor.model
    if d.synthetic.enable and not d.train_data_paths:
        data_dir = Path(output_dir) / "data"
        d.train_data_paths = [str(data_dir / "train.jsonl")]
        d.val_data_paths = d.val_data_paths or [str(data_dir / "val.jsonl")]
    if dist.get_rank() == 0:
        from rlinf.data.synthetic import write_arithmetic_dataset

        if d.synthetic.enable and not Path(d.train_data_paths[0]).is_file():
            write_arithmetic_dataset(
                Path(d.train_data_paths[0]).parent,
                d.synthetic.n_train,
                d.synthetic.n_val,
                seed=d.synthetic.seed,
                max_digits=d.synthetic.max_digits,
                ops=tuple(d.synthetic.ops),
            )
        if m.tiny.enable and not (Path(m.model_path) / "config.json").is_file():
            from rlinf.data.sft import read_jsonl
            from rlinf.models.tiny_lm import build_tiny_lm

            rows = read_jsonl(d.train_data_paths[0])
            corpus = [f"{r[d.prompt_key]} {r.get(d.response_key, '')}" for r in rows]
            t = m.tiny
            build_tiny_lm(
                m.model_path,
                corpus,
                arch=t.arch,
                vocab_size=t.vocab_size,
                hidden_size=t.hidden_size,
                num_layers=t.num_layers,
                num_heads=t.num_heads,
                num_kv_heads=t.num_kv_heads,
                seed=t.seed,
            )
    dist.barrier()


class ReasoningRunner:
    def __init__(self, ctx: RunContext):
        from rlinf.models.causal_lm import load_tokenizer

        self.ctx, self.cfg, self.topo = ctx, ctx.cfg, ctx.topo
        cfg, topo = self.cfg, self.topo
        seed_everything(cfg.runner.seed * 1000 + topo.rank)
        prepare_assets(cfg, ctx.output_dir)
        self.tok = load_tokenizer(cfg.actor.model.model_path)
        self.g = cfg.algorithm.group_size
        self.has_reward_role = topo.role_size("reward") > 0
        self.actor = self.rollout = self.scorer = None
        self.step = 0
        d = cfg.data
        from rlinf.data.prompts import PromptDataset, PromptSampler

        ds_kw = dict(
            tokenizer=self.tok,
            prompt_key=d.prompt_key,
            answer_key=d.answer_key,
            max_prompt_length=d.max_prompt_length,
            apply_chat_template=d.apply_chat_template,
            system_prompt=d.system_prompt,
        )
        self.train_ds = PromptDataset(d.train_data_paths, **ds_kw)
        self.val_ds = (
            PromptDataset(d.val_data_paths, **ds_kw)
            if d.val_data_paths and (topo.has("rollout"))
            else None
        )
        self.sampler = PromptSampler(
            len(self.train_ds), d.rollout_batch_size, seed=d.seed, shuffle=d.shuffle
        )
        steps_per_epoch = self.sampler.batches_per_epoch
        r = cfg.runner
        self.max_steps = r.max_steps if r.max_steps > 0 else steps_per_epoch * r.max_epochs
        if topo.has("actor"):
            from rlinf.train.lm_actor import LMActor

            a = cfg.algorithm
            per_step = a.update_epoch * max(
                1, d.rollout_batch_size * self.g // cfg.actor.global_batch_size
            )
            self.actor = LMActor(
                cfg, topo.group("actor"), topo.device, total_steps=self.max_steps * per_step
            )
        if topo.has("rollout"):
            from rlinf.rollout.reasoning import ReasoningRollout

            self.rollout = ReasoningRollout(
                cfg, topo.device, self.tok, score_here=not self.has_reward_role
            )
        if topo.has("reward"):
            from rlinf.rollout.reasoning import RewardScorer

            self.scorer = RewardScorer(cfg, self.tok)
        self.prompt_ch = Channel(topo.ranks("actor"), topo.ranks("rollout"))
        if self.has_reward_role:
            self.score_ch = Channel(topo.ranks("rollout"), topo.ranks("reward"))
            self.seq_ch = Channel(topo.ranks("reward"), topo.ranks("actor"))
        else:
            self.seq_ch = Channel(topo.ranks("rollout"), topo.ranks("actor"))
        wd = (
            cfg.rollout.weight_sync.dtype
            or cfg.rollout.model.precision
            or ("bf16" if topo.device.type == "cuda" else None)
        )
        self.sync = WeightSync(
            topo.ranks("actor"),
            topo.ranks("rollout"),
            [g for _, g in topo.extra_groups("weight_sync")],
            bucket_mb=cfg.rollout.weight_sync.bucket_mb,
            dtype=DTYPES[wd] if wd else None,
        )
        self.ckpt = ckpt.CheckpointWriter(ctx.output_dir, r.keep_checkpoints)

    # -- phases ---------------------------------------------------------------------------------
    def sync_weights(self) -> None:
        if self.actor is not None:
            lw = self.rollout.engine.load_weights if self.rollout is not None else None
            self.sync.sync(self.actor.model, version=self.step, load_weights=lw)
            if self.rollout is not None:
                self.rollout.version = self.step
        elif self.rollout is not None:
            self.rollout.version = self.sync.receive(self.rollout.engine.load_weights)

    def _prompt_batch(self, indices: list[int]) -> TensorBatch:
        items = [self.train_ds[i] for i in indices]
        P = self.cfg.data.max_prompt_length
        ids = torch.full((len(items), P), self.tok.pad_token_id, dtype=torch.long)
        for i, it in enumerate(items):
            ids[i, : len(it.prompt_ids)] = torch.tensor(it.prompt_ids)
        return TensorBatch(
            {
                "index": torch.tensor(indices, dtype=torch.long),
                "prompt_ids": ids,
                "prompt_len": torch.tensor([len(it.prompt_ids) for it in items]),
            }
        )

    def generate_round(self, stats: Stats) -> TensorBatch | None:
        """Prompts actor -> rollout, groups rollout (-> reward) -> actor; the actor's share back."""
        handles = None
        if self.actor is not None:
            global_idx = next(self.sampler)
            me, n = self.topo.role_rank("actor"), self.topo.role_size("actor")
            sizes = balanced_sizes(len(global_idx), n)
            start = sum(sizes[:me])
            handles = self.prompt_ch.send(
                self._prompt_batch(global_idx[start : start + sizes[me]]), async_op=True
            )
        out_handles = None
        if self.rollout is not None:
            prompts = self.prompt_ch.recv()
            if self.actor is not None:
                self.actor.offload()
            groups, gstats = self.rollout.generate(
                prompts, self.g, seed=self.cfg.runner.seed * 100003 + self.step
            )
            stats.update(gstats)
            if self.rollout.scorer is not None:
                self._score(self.rollout.scorer, groups, stats)
            ch = self.score_ch if self.has_reward_role else self.seq_ch
            out_handles = ch.send(groups, async_op=True)
        if self.scorer is not None:
            groups = self.score_ch.recv()
            self._score(self.scorer, groups, stats)
            out_handles = (out_handles or []) + (self.seq_ch.send(groups, async_op=True) or [])
        result = None
        if self.actor is not None:
            result = self.seq_ch.recv()
            self.actor.reload()
        wait_all(handles)
        wait_all(out_handles)
        return result

    def _score(self, scorer, groups: TensorBatch, stats: Stats) -> None:
        t0 = time.monotonic()
        answers = [self.train_ds[int(i)].answer for i in groups["index"]]
        s = scorer.score(groups, answers)
        add_stat(stats, "time/reward_s", time.monotonic() - t0)
        add_stat(stats, "train/reward_mean", *s["reward_sum"])
        add_stat(stats, "train/accuracy", *s["correct_sum"])
        add_stat(stats, "train/response_len_mean", *s["len_sum"])
        add_stat(stats, "reward/timeouts", *s["timeouts"])

    def advantages(self, groups: TensorBatch, stats: Stats) -> TensorBatch:
        """Flatten groups to sequences with per-sequence (or per-token) advantages."""
        a = self.cfg.algorithm
        G, g, L = groups["input_ids"].shape
        flat = TensorBatch(
            {k: v.reshape(G * g, *v.shape[2:]) for k, v in groups.items() if k != "index"}
        )
        scores = flat["reward"]
        if a.adv_type == "grpo":
            flat["advantages"] = group_advantages(scores, g, normalize_std=a.group_std_normalize)
        elif a.adv_type == "rloo":
            flat["advantages"] = rloo_advantages(scores, g)
        elif a.adv_type == "reinforce++":
            mask = flat["response_mask"]
            last = mask.long().cumsum(-1).argmax(-1)
            tok_r = torch.zeros(mask.shape, dtype=torch.float32)
            tok_r[torch.arange(G * g), last] = scores
            flat["advantages"] = reinforce_pp_advantages(tok_r, mask, gamma=1.0)
        else:
            raise ValueError(
                "algorithm.adv_type gae needs a critic; reasoning supports grpo, rloo, reinforce++"
            )
        return flat

    def train_step(self, stats: Stats) -> None:
        a = self.cfg.algorithm
        kept: list[TensorBatch] = []
        rounds = 0
        while True:
            groups = self.generate_round(stats)
            rounds += 1
            more = torch.zeros(1, dtype=torch.int64)
            if self.actor is not None:
                if a.dynamic_sampling:
                    keep = dynamic_sampling_keep(groups["reward"].reshape(-1), self.g)
                    add_stat(stats, "train/kept_group_frac", float(keep.sum()), int(keep.numel()))
                    groups = groups[keep.nonzero().flatten()] if keep.any() else None
                if groups is not None:
                    kept.append(groups)
                n_kept = torch.tensor([sum(k.batch_size for k in kept)])
                dist.all_reduce(n_kept, group=self.topo.group("actor"))
                more[0] = int(
                    a.dynamic_sampling
                    and int(n_kept) < self.cfg.data.rollout_batch_size
                    and rounds < a.max_num_gen_batches
                )
            if not a.dynamic_sampling:
                break
            dist.all_reduce(more, op=dist.ReduceOp.MAX, group=self.topo.group("actor", "rollout"))
            if not int(more):
                break
        if self.actor is None:
            return
        if not kept:
            raise RuntimeError(
                "dynamic sampling kept no group on an actor rank; raise max_num_gen_batches"
            )
        t0 = time.monotonic()
        flat = self.advantages(TensorBatch.cat(kept), stats)
        flat = flat.to(self.topo.device)
        on_policy = self.actor.on_policy(flat.batch_size)
        if a.recompute_logprobs and not on_policy:
            rollout_lp = flat["old_logprobs"]
            flat["old_logprobs"] = self.actor.compute_logprobs(flat)
            mask = flat["response_mask"]
            diff = ((flat["old_logprobs"] - rollout_lp).abs() * mask).sum() / mask.sum().clamp(
                min=1
            )
            add_stat(stats, "train/rollout_logprob_diff", float(diff))
        if self.actor.ref is not None:
            flat["ref_logprobs"] = self.actor.compute_logprobs(flat, reference=True)
        stats.update(self.actor.update(flat, on_policy=on_policy))
        add_stat(stats, "time/actor_s", time.monotonic() - t0)  # update() ends host-synced

    def evaluate(self) -> Stats:
        """Greedy answers to this rollout rank's share of the held-out prompts."""
        stats: Stats = {}
        if self.rollout is None or self.val_ds is None:
            return stats
        me, n = self.topo.role_rank("rollout"), self.topo.role_size("rollout")
        idx = list(range(me, len(self.val_ds), n))
        bs = self.cfg.data.val_rollout_batch_size
        scorer = self.rollout.scorer or self.scorer
        if scorer is None:
            from rlinf.rollout.reasoning import RewardScorer

            scorer = self.scorer = RewardScorer(self.cfg, self.tok)
        for i in range(0, len(idx), bs):
            chunk = idx[i : i + bs]
            items = [self.val_ds[j] for j in chunk]
            P = self.cfg.data.max_prompt_length
            ids = torch.full((len(items), P), self.tok.pad_token_id, dtype=torch.long)
            for k, it in enumerate(items):
                ids[k, : len(it.prompt_ids)] = torch.tensor(it.prompt_ids)
            prompts = TensorBatch(
                {
                    "index": torch.tensor(chunk),
                    "prompt_ids": ids,
                    "prompt_len": torch.tensor([len(it.prompt_ids) for it in items]),
                }
            )
            groups, _ = self.rollout.generate(prompts, 1, greedy=True)
            s = scorer.score(groups, [it.answer for it in items])
            add_stat(stats, "eval/accuracy", *s["correct_sum"])
            add_stat(stats, "eval/response_len_mean", *s["len_sum"])
        return stats

    def sft_warmup(self, logger: MetricLogger) -> None:
        """A short supervised pass on the train set's solutions before RL (fresh runs only)."""
        w = self.cfg.actor.sft_warmup
        if w.steps <= 0 or self.actor is None:
            return
        from rlinf.data.sft import SFTDataset

        d = self.cfg.data
        ds = SFTDataset(
            d.train_data_paths,
            self.tok,
            d.prompt_key,
            d.response_key,
            d.max_prompt_length + self.cfg.algorithm.length_params.max_new_token,
            d.apply_chat_template,
        )
        for group in self.actor.optim.param_groups:
            group["initial_lr_rl"] = group["lr"]
            group["lr"] = w.lr
        gen = torch.Generator().manual_seed(self.cfg.runner.seed)
        me, n = self.topo.role_rank("actor"), self.topo.role_size("actor")
        for s in range(w.steps):
            idx = torch.randint(len(ds), (w.batch_size,), generator=gen).tolist()
            mine = idx[me::n]
            loss = self.actor.sft_step(ds.batch(mine))
            if s % 20 == 0 or s == w.steps - 1:
                log.info("sft warm-up step %d/%d: loss %.4f", s + 1, w.steps, loss)
        for group in self.actor.optim.param_groups:
            group["lr"] = group.pop("initial_lr_rl")
        self.actor.optim.state.clear()  # RL starts with fresh Adam moments

    # -- checkpoint -----------------------------------------------------------------------------
    def save(self) -> None:
        state = {"step": self.step, "rng": ckpt.capture_rng(), "sampler": self.sampler.state_dict()}
        actor_state = None
        if self.actor is not None:
            state["sched"] = self.actor.sched.state_dict()
            actor_state = self.actor.state_dict()
        self.ckpt.save(
            self.step, state, actor_state, self.topo.group("actor") if self.actor else None
        )

    def resume(self, path) -> None:
        state = ckpt.load_rank_state(path)
        if self.actor is not None:
            st = self.actor.state_dict()
            ckpt.load_actor_state(path, st, self.topo.group("actor"))
            self.actor.load_state_dict(st)
            self.actor.sched.load_state_dict(state["sched"])
        self.sampler.load_state_dict(state["sampler"])
        self.step = state["step"]
        ckpt.restore_rng(state["rng"])
        log.info("resumed from %s at step %d", path, self.step)

    # -- loop -------------------------------------------------------------------------------------
    def run(self) -> int:
        r = self.cfg.runner
        resume = ckpt.resolve_resume_dir(r.resume_dir, self.ctx.output_dir)
        rank0 = self.topo.rank == 0
        if resume is not None:
            self.resume(resume)
        logger = MetricLogger(
            self.ctx.output_dir,
            r.logger.logger_backends,
            enabled=rank0,
            total_steps=self.max_steps,
            log_interval=r.log_interval,
            resume_step=self.step,
        )
        t_start = time.monotonic()
        reason, early = "", False
        try:
            if resume is None:
                self.sft_warmup(logger)
            self.sync_weights()
            if self.step == 0 and r.val_check_interval:
                m = gather_metrics(self.evaluate())
                logger.log(0, m)
            while self.step < self.max_steps:
                timed_out = r.max_time_s is not None and time.monotonic() - t_start > r.max_time_s
                reason, early = control_vote(self.ctx.stop.reason, early, timed_out)
                if reason or early:
                    break
                stats: Stats = {}
                t0 = time.monotonic()
                self.train_step(stats)
                t1 = time.monotonic()
                self.step += 1
                if self.step % r.weight_sync_interval == 0:
                    self.sync_weights()
                    if self.topo.device.type == "cuda":
                        torch.cuda.synchronize()  # the copies count here, not in the next rollout
                t2 = time.monotonic()
                if r.val_check_interval and (
                    self.step % r.val_check_interval == 0 or self.step == self.max_steps
                ):
                    stats.update(self.evaluate())
                t3 = time.monotonic()
                for key, dt in (("step", t1 - t0), ("sync", t2 - t1), ("eval", t3 - t2)):
                    add_stat(stats, f"time/{key}_s", dt)
                m = gather_metrics(stats)
                if rank0 and "time/generate_s" in m:
                    m["time/rollout_s"] = m["time/generate_s"]
                    m["time/train_s"] = m["time/step_s"] - m["time/generate_s"]
                    n_ro = self.topo.role_size("rollout")
                    m["rollout/tokens_per_s"] = m.get("rollout/tokens_per_s", 0.0) * n_ro
                logger.log(self.step, m)
                es = r.early_stop
                early = (
                    rank0
                    and es.metric in m
                    and (
                        m[es.metric] >= es.threshold
                        if es.mode == "max"
                        else m[es.metric] <= es.threshold
                    )
                )
                if r.save_interval and self.step % r.save_interval == 0:
                    self.save()
            reason, early = control_vote(self.ctx.stop.reason, early, False)
            saved = bool(r.save_interval) and self.step % r.save_interval == 0
            if self.step > 0 and not saved:
                self.save()
            if self.actor is not None and not reason:
                self.actor.export(os.path.join(self.ctx.output_dir, "hf_model"), self.tok)
        finally:
            logger.close()
            for s in (self.scorer, self.rollout.scorer if self.rollout else None):
                if s is not None:
                    s.close()
        if reason == "requeue" and rank0:
            from rlinf.dist.slurm import requeue_current_job

            requeue_current_job()
        return 0


def run(ctx: RunContext) -> int:
    return ReasoningRunner(ctx).run()
