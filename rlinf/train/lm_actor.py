"""The actor role for language models: FSDP2 training of a causal LM with PPO-style losses.

Sequences arrive right-padded: `input_ids`, `attention_mask`, `response_mask` (the response
tokens, the only ones trained on), rollout log-probs and per-sequence advantages. The actor
recomputes old and reference log-probs, then runs minibatch updates whose token counts are
agreed across actor ranks, so that a token-mean loss is the same whatever the placement.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from rlinf.algorithms import (
    entropy_from_logits,
    kl_estimate,
    logprobs_from_logits,
    masked_mean,
    ppo_policy_loss,
)
from rlinf.algorithms.losses import aggregate
from rlinf.config import RLinfConfig
from rlinf.dist.batch import TensorBatch, balanced_sizes
from rlinf.train.fsdp import actor_mesh, clip_grad_norm, full_state_dict, shard_model
from rlinf.train.optim import build_optimizer, build_scheduler


def _decoder_block_type(model: torch.nn.Module) -> tuple[type, ...]:
    layers = getattr(getattr(model, "model", None), "layers", None)
    return (type(layers[0]),) if layers is not None and len(layers) else ()


class LMActor:
    def __init__(
        self, cfg: RLinfConfig, group: dist.ProcessGroup, device: torch.device, total_steps: int
    ):
        self.cfg, self.group, self.device = cfg, group, device
        m = cfg.actor.model
        self.world = dist.get_world_size(group)
        self.model = self._load(m.model_path, train=True)
        self.ref = self._load(m.model_path, train=False) if cfg.algorithm.kl_beta > 0 else None
        self.optim = build_optimizer(self.model, cfg.actor.optim)
        self.sched = build_scheduler(self.optim, cfg.actor.optim, max(1, total_steps))

    def _load(self, path: str, train: bool) -> torch.nn.Module:
        from rlinf.models.causal_lm import load_causal_lm

        model = load_causal_lm(path, dtype=torch.float32, device=self.device)
        if train and self.cfg.actor.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        model.config.use_cache = False
        fsdp_cfg = self.cfg.actor.fsdp_config
        if self.device.type == "cuda" and fsdp_cfg.param_dtype is None:
            from dataclasses import replace

            fsdp_cfg = replace(fsdp_cfg, param_dtype=self.cfg.actor.model.precision or "bf16")
        if self.world > 1 or self.device.type == "cuda":
            model = shard_model(
                model, actor_mesh(self.group, self.device), fsdp_cfg, _decoder_block_type(model)
            )
        if not train:
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
        return model

    # -- forward pieces -----------------------------------------------------------------------
    def _forward(self, model, b: TensorBatch, temperature: float, entropy: bool = False):
        ids, attn = b["input_ids"], b["attention_mask"]
        pos = (attn.long().cumsum(-1) - 1).clamp(min=0)
        logits = model(
            input_ids=ids, attention_mask=attn.long(), position_ids=pos, use_cache=False
        ).logits
        logits = logits[:, :-1].float()
        lp = logprobs_from_logits(logits, ids[:, 1:], temperature=temperature)
        lp = torch.nn.functional.pad(lp, (1, 0))  # position j holds log p(token j | < j)
        ent = None
        if entropy:  # with grad only when it is a loss term
            with torch.set_grad_enabled(
                torch.is_grad_enabled() and self.cfg.algorithm.entropy_bonus > 0
            ):
                ent = torch.nn.functional.pad(entropy_from_logits(logits / temperature), (1, 0))
        return lp, ent

    @torch.no_grad()
    def compute_logprobs(self, b: TensorBatch, reference: bool = False) -> torch.Tensor:
        """Teacher-forced log-probs [N, L] of the current (or reference) policy, micro-batched."""
        model = self.ref if reference else self.model
        t = self.cfg.algorithm.sampling_params.temperature_train
        micro = self.cfg.actor.micro_batch_size
        n_micro = self._agreed_chunks(b.batch_size, micro)
        outs = [
            self._forward(model, b[idx], t)[0]
            for idx in _index_chunks(b.batch_size, n_micro, self.device)
        ]
        return torch.cat(outs)

    def _agreed_chunks(self, n_local: int, size: int) -> int:
        """Every actor rank runs the same number of forwards (FSDP collectives must match)."""
        t = torch.tensor([math.ceil(n_local / max(1, size))], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        chunks = int(t.item())
        if n_local < chunks:
            raise RuntimeError(
                f"actor rank has {n_local} sequences but must run {chunks} micro-batches; "
                "balance data.rollout_batch_size over the actor ranks"
            )
        return chunks

    # -- update -------------------------------------------------------------------------------
    def num_minibatches(self, n_local: int) -> int:
        """Optimizer steps per epoch: the global sequence count over actor.global_batch_size."""
        total = torch.tensor([n_local], device=self.device)
        dist.all_reduce(total, group=self.group)
        return max(1, int(total.item()) // self.cfg.actor.global_batch_size)

    def on_policy(self, n_local: int) -> bool:
        """One epoch of one minibatch: the policy being updated is the one that sampled, so the
        old log-probs equal the current ones and need no separate forward pass."""
        return self.cfg.algorithm.update_epoch == 1 and self.num_minibatches(n_local) == 1

    def update(self, b: TensorBatch, on_policy: bool = False) -> dict[str, tuple[float, int]]:
        """PPO-style update. ``on_policy``: old log-probs are the current ones (detached), and
        ``b["old_logprobs"]`` (the rollout's) only feed the rollout/train mismatch metric."""
        a, act = self.cfg.algorithm, self.cfg.actor
        b = b.to(self.device)
        num_mb = self.num_minibatches(b.batch_size)
        temperature = a.sampling_params.temperature_train
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        count = 0
        gen = torch.Generator().manual_seed(self.sched.last_epoch)
        for _ in range(a.update_epoch):
            perm = torch.randperm(b.batch_size, generator=gen).to(self.device)
            for mb_idx in perm.split(balanced_sizes(b.batch_size, num_mb)):
                mb = b[mb_idx]
                mask = mb["response_mask"]
                denom = torch.tensor([float(mask.sum()), float(mb.batch_size)], device=self.device)
                dist.all_reduce(denom, group=self.group)
                tok_denom = float(denom[0]) / self.world
                seq_denom = float(denom[1]) / self.world
                d = tok_denom if a.loss_agg_func == "token-mean" else seq_denom
                self.optim.zero_grad(set_to_none=True)
                n_micro = self._agreed_chunks(mb.batch_size, act.micro_batch_size)
                for idx in _index_chunks(mb.batch_size, n_micro, self.device):
                    m = self._micro_loss(mb[idx], temperature, d, on_policy, entropy=count == 0)
                    for k, v in m.items():
                        sums[k] = sums.get(k, 0.0) + v
                        counts[k] = counts.get(k, 0) + 1
                    count += 1
                gn = clip_grad_norm(self.model, act.optim.clip_grad)
                sums["train/grad_norm"] = sums.get("train/grad_norm", 0.0) + gn
                counts["train/grad_norm"] = counts.get("train/grad_norm", 0) + 1
                self.optim.step()
                self.sched.step()
        out = {k: (v, counts[k]) for k, v in sums.items()}
        out["train/lr"] = (self.sched.get_last_lr()[0], 1)
        return out

    def _micro_loss(
        self, mb: TensorBatch, temperature: float, denom: float, on_policy: bool, entropy: bool
    ) -> dict[str, float]:
        """Loss of one micro-batch (backward included). Entropy is computed where it is a loss
        term, else on the first micro-batch of the update only, as a metric sample."""
        a = self.cfg.algorithm
        mask = mb["response_mask"]
        lp, ent = self._forward(self.model, mb, temperature, entropy=entropy or a.entropy_bonus > 0)
        adv = mb["advantages"]
        adv = adv.unsqueeze(-1).expand_as(lp) if adv.dim() == 1 else adv
        old = lp.detach() if on_policy else mb["old_logprobs"]
        pg, pm = ppo_policy_loss(
            lp,
            old,
            adv,
            mask,
            clip_ratio_low=a.clip_ratio_low,
            clip_ratio_high=a.clip_ratio_high,
            clip_ratio_c=a.clip_ratio_c,
            loss_agg_mode=a.loss_agg_func,
            denom=denom,
        )
        loss = pg
        metrics = {
            "train/policy_loss": float(pg),
            "train/clip_frac": float(pm["clip_frac"]),
            "train/approx_kl": float(pm["approx_kl"]),
        }
        if on_policy:
            diff = ((lp.detach() - mb["old_logprobs"]).abs() * mask).sum() / mask.sum().clamp(min=1)
            metrics["train/rollout_logprob_diff"] = float(diff)
        if ent is not None:
            metrics["train/entropy"] = float(masked_mean(ent.detach(), mask))
            if a.entropy_bonus > 0:
                loss = loss - a.entropy_bonus * aggregate(ent, mask, a.loss_agg_func, denom=denom)
        if self.ref is not None and "ref_logprobs" in mb:
            kl_tok = kl_estimate(lp, mb["ref_logprobs"], a.kl_penalty)
            kl = aggregate(kl_tok, mask, a.loss_agg_func, denom=denom)
            if a.use_kl_loss:
                loss = loss + a.kl_beta * kl
            metrics["train/kl"] = float((kl_tok * mask).sum() / mask.sum().clamp(min=1))
        loss.backward()
        return metrics

    # -- supervised warm-start ------------------------------------------------------------------
    def sft_step(self, b: TensorBatch) -> float:
        """One optimizer step of next-token loss on the response tokens (token mean over ranks)."""
        b = b.to(self.device)
        mask = b["response_mask"]
        denom = torch.tensor([float(mask.sum())], device=self.device)
        dist.all_reduce(denom, group=self.group)
        d = float(denom) / self.world
        self.optim.zero_grad(set_to_none=True)
        total = 0.0
        n_micro = self._agreed_chunks(b.batch_size, self.cfg.actor.micro_batch_size)
        for idx in _index_chunks(b.batch_size, n_micro, self.device):
            mb = b[idx]
            lp, _ = self._forward(self.model, mb, 1.0)
            loss = -(lp * mb["response_mask"]).sum() / d
            loss.backward()
            total += float(loss)
        clip_grad_norm(self.model, self.cfg.actor.optim.clip_grad)
        self.optim.step()
        return total

    # -- memory between phases ------------------------------------------------------------------
    def offload(self) -> None:
        if self.device.type != "cuda" or not self.cfg.actor.fsdp_config.offload_between_phases:
            return
        self.model.to("cpu")
        for st in self.optim.state.values():
            for k, v in st.items():
                if torch.is_tensor(v) and v.device.type == "cuda":
                    st[k] = v.to("cpu", non_blocking=True)
        torch.cuda.empty_cache()

    def reload(self) -> None:
        if self.device.type != "cuda" or not self.cfg.actor.fsdp_config.offload_between_phases:
            return
        self.model.to(self.device)
        for st in self.optim.state.values():
            for k, v in st.items():
                if torch.is_tensor(v) and v.device.type == "cpu" and k != "step":
                    st[k] = v.to(self.device, non_blocking=True)

    # -- checkpoint / export --------------------------------------------------------------------
    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optim)
        return {"model": model_sd, "optim": optim_sd}

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        set_state_dict(
            self.model, self.optim, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )

    def export(self, out_dir: str, tokenizer) -> None:
        """Gather the full weights (collective) and write an HF directory on actor rank 0."""
        from rlinf.models.causal_lm import export_hf

        sd = full_state_dict(self.model)
        if dist.get_rank(self.group) == 0:
            export_hf(self.model, tokenizer, out_dir, state_dict=sd)
            # FSDP2 wraps the class as FSDP<Name>: record the model's own architecture name
            import json
            from pathlib import Path

            cfg_path = Path(out_dir) / "config.json"
            conf = json.loads(cfg_path.read_text())
            conf["architectures"] = [
                a.removeprefix("FSDP") for a in conf.get("architectures") or []
            ]
            cfg_path.write_text(json.dumps(conf, indent=2))


def _index_chunks(n: int, parts: int, device: torch.device) -> list[torch.Tensor]:
    return list(torch.arange(n, device=device).split(balanced_sizes(n, parts)))


__all__ = ["LMActor"]
