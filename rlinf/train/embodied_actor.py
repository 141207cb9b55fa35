"""The actor role for embodied runs: PPO / GRPO updates of an actor-critic under FSDP2."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import register_fsdp_forward_method

from rlinf.algorithms import masked_mean, normalize_advantages, ppo_policy_loss, value_loss
from rlinf.config import RLinfConfig
from rlinf.dist.batch import TensorBatch, balanced_sizes
from rlinf.train.fsdp import actor_mesh, clip_grad_norm, shard_model
from rlinf.train.optim import build_optimizer, build_scheduler


class EmbodiedActor:
    def __init__(
        self,
        model: nn.Module,
        cfg: RLinfConfig,
        group: dist.ProcessGroup,
        device: torch.device,
        num_minibatches: int,
        total_updates: int,
        seed: int,
    ):
        self.cfg = cfg
        self.group = group
        self.device = device
        self.num_minibatches = num_minibatches
        model = model.to(device)
        if dist.get_world_size(group) > 1:
            self.model = shard_model(model, actor_mesh(group, device), cfg.actor.fsdp_config)
            for method in ("act", "evaluate", "value"):
                register_fsdp_forward_method(self.model, method)
        else:  # one actor rank: sharding would only add collectives
            self.model = model
        self.optim = build_optimizer(self.model, cfg.actor.optim)
        updates = total_updates * cfg.algorithm.update_epoch * num_minibatches
        self.sched = build_scheduler(self.optim, cfg.actor.optim, updates)
        self.gen = torch.Generator().manual_seed(seed)

    def update(self, batch: TensorBatch) -> dict[str, tuple[float, int]]:
        """PPO epochs over this rank's samples; every actor rank runs the same number of steps."""
        a = self.cfg.algorithm
        b = batch.to(self.device)
        n = b.batch_size
        use_value = a.loss_type == "actor_critic"
        micro = max(1, self.cfg.actor.micro_batch_size)
        sums: dict[str, float] = {}
        count = 0
        for _epoch in range(a.update_epoch):
            perm = torch.randperm(n, generator=self.gen).to(self.device)
            epoch_kl = torch.zeros((), device=self.device)
            for mb_idx in perm.split(balanced_sizes(n, self.num_minibatches)):
                self.optim.zero_grad(set_to_none=True)
                mb_n = max(1, int(mb_idx.numel()))
                n_micro = max(1, -(-mb_n // micro))
                for idx in (
                    mb_idx.split(balanced_sizes(mb_n, n_micro)) if mb_idx.numel() else [mb_idx]
                ):
                    m = self._loss(b, idx, use_value, weight=idx.numel() / mb_n)
                    for k, v in m.items():
                        sums[k] = sums.get(k, 0.0) + v
                    count += 1
                    epoch_kl += m["train/approx_kl"]
                grad_norm = clip_grad_norm(self.model, self.cfg.actor.optim.clip_grad)
                sums["train/grad_norm"] = sums.get("train/grad_norm", 0.0) + grad_norm * n_micro
                self.optim.step()
                self.sched.step()
            if a.target_kl is not None:
                kl = epoch_kl / max(1, count)
                dist.all_reduce(kl, group=self.group)
                if float(kl) / dist.get_world_size(self.group) > a.target_kl:
                    break
        out = {k: (v, count) for k, v in sums.items()}
        out["train/lr"] = (self.sched.get_last_lr()[0], 1)
        return out

    def _loss(
        self, b: TensorBatch, idx: torch.Tensor, use_value: bool, weight: float
    ) -> dict[str, float]:
        a = self.cfg.algorithm
        mask = b["mask"][idx]
        adv = b["advantage"][idx]
        if a.normalize_advantages and a.adv_type == "gae":
            adv = normalize_advantages(adv, mask)
        logprob, entropy, value = self.model.evaluate(b["obs"][idx], b["action"][idx])
        pg_loss, pm = ppo_policy_loss(
            logprob,
            b["logprob"][idx],
            adv,
            mask,
            clip_ratio_low=a.clip_ratio_low,
            clip_ratio_high=a.clip_ratio_high,
            clip_ratio_c=a.clip_ratio_c,
        )
        ent = masked_mean(entropy, mask)
        loss = pg_loss - a.entropy_bonus * ent
        metrics = {
            "train/policy_loss": float(pg_loss),
            "train/entropy": float(ent),
            "train/approx_kl": float(pm["approx_kl"]),
            "train/clip_frac": float(pm["clip_frac"]),
        }
        if use_value:
            v_loss, vm = value_loss(
                value,
                b["value"][idx],
                b["return"][idx],
                mask,
                clip=a.value_clip,
                huber_delta=a.huber_delta,
            )
            loss = loss + a.value_loss_coef * v_loss
            metrics["train/value_loss"] = float(v_loss)
        else:
            loss = loss + 0.0 * value.sum()  # keep the critic in the graph for FSDP's reduce
        (loss * weight).backward()
        return metrics

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optim)
        return {"model": model_sd, "optim": optim_sd}

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        set_state_dict(
            self.model, self.optim, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )

    def extra_state(self) -> dict:
        return {"sched": self.sched.state_dict(), "gen": self.gen.get_state()}

    def load_extra_state(self, state: dict) -> None:
        self.sched.load_state_dict(state["sched"])
        self.gen.set_state(state["gen"])
