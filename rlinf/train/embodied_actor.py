"""The actor role for embodied runs: PPO / GRPO updates of an actor-critic under FSDP2."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from rlinf.algorithms import masked_mean, normalize_advantages, ppo_policy_loss, value_loss
from rlinf.algorithms.fused_loss import (
    METRIC_NAMES,
    check_hyperparameters,
    ppo_actor_critic_loss,
    ppo_actor_critic_terms,
)
from rlinf.config import RLinfConfig
from rlinf.dist.batch import TensorBatch, balanced_sizes
from rlinf.models.mlp_grad import MLPEvaluateGrad
from rlinf.train.optim import (
    build_optimizer,
    build_scheduler,
    direct_fused_step,
    fused_adam_if_possible,
)


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
        self.sharded = dist.get_world_size(group) > 1
        if self.sharded:  # FSDP imported only here: its import alone takes seconds
            from torch.distributed.fsdp import register_fsdp_forward_method

            from rlinf.train.fsdp import actor_mesh, shard_model

            self.model = shard_model(model, actor_mesh(group, device), cfg.actor.fsdp_config)
            for method in ("act", "evaluate", "value"):
                register_fsdp_forward_method(self.model, method)
            self.optim = build_optimizer(self.model, cfg.actor.optim)
        else:  # one actor rank: sharding would only add collectives
            self.model = model
            # Small policies take hundreds of optimizer steps per update: one kernel each.
            self.optim = fused_adam_if_possible(
                build_optimizer(self.model, cfg.actor.optim), device_type=("cpu", "cuda")
            )
        self._opt_step = direct_fused_step(self.optim) or self.optim.step
        # Small MLP policies: forward and backward without autograd (same math, ~2x faster).
        unsupported = self.sharded or MLPEvaluateGrad.unsupported(self.model)
        self._grad_path = None if unsupported else MLPEvaluateGrad(self.model)
        a = cfg.algorithm
        self._hp = check_hyperparameters(
            a.clip_ratio_low, a.clip_ratio_high, a.clip_ratio_c, a.value_clip, a.value_loss_coef
        )
        updates = total_updates * cfg.algorithm.update_epoch * num_minibatches
        self.sched = build_scheduler(self.optim, cfg.actor.optim, updates)
        self.gen = torch.Generator().manual_seed(seed)

    def update(self, batch: TensorBatch) -> dict[str, tuple[float, int]]:
        """PPO epochs over this rank's samples; every actor rank runs the same number of steps.

        Each epoch gathers the samples once in a random order; minibatches and micro-batches
        are then contiguous views of it (the same rows as indexing with the permutation).
        Metrics stay tensors until the end of the update (no sync per micro-batch).
        """
        a = self.cfg.algorithm
        b = batch.to(self.device)
        n = b.batch_size
        use_value = a.loss_type == "actor_critic"
        micro = max(1, self.cfg.actor.micro_batch_size)
        names = ["obs", "action", "logprob", "advantage", "mask"]
        names += ["value", "return"] if use_value else []
        all_valid = bool(b["mask"].all())  # GAE batches: the losses can skip masking
        # Every row valid, MSE critic, no empty minibatch: gradients without autograd.
        manual = (
            self._grad_path is not None
            and all_valid
            and use_value
            and a.huber_delta is None
            and n >= self.num_minibatches
        )
        flat_grad = self._grad_path.attach_flat_grads() if manual else None
        logs: dict[str, list[torch.Tensor]] = {}
        grad_norms: list[float] = []
        count = 0
        for _epoch in range(a.update_epoch):
            perm = torch.randperm(n, generator=self.gen).to(self.device)
            shuffled = {k: b[k][perm] for k in names}
            epoch_kl: list[torch.Tensor] = []
            start = 0
            for mb_rows in balanced_sizes(n, self.num_minibatches):
                if not manual:  # the manual path overwrites the gradients
                    self.optim.zero_grad(set_to_none=True)
                mb_n = max(1, mb_rows)
                n_micro = max(1, -(-mb_n // micro))
                for j, size in enumerate(balanced_sizes(mb_rows, n_micro) if mb_rows else [0]):
                    mb = {k: v[start : start + size] for k, v in shuffled.items()}
                    start += size
                    if manual:
                        m = self._manual_loss(mb, size / mb_n, accumulate=j > 0)
                    else:
                        m = self._loss(mb, use_value, size / mb_n, masked=not (all_valid and size))
                    for k, v in m.items():
                        logs.setdefault(k, []).append(v)
                    count += 1
                    epoch_kl.append(m["train/approx_kl"])
                grad_norms += [self._clip_grad_norm(flat_grad)] * n_micro
                self._opt_step()
                self.sched.step()
            if a.target_kl is not None:
                kl = torch.stack(epoch_kl).mean().reshape(1)
                dist.all_reduce(kl, group=self.group)
                if float(kl) / dist.get_world_size(self.group) > a.target_kl:
                    break
        out = {k: (float(torch.stack(v).sum()), count) for k, v in logs.items()}
        out["train/grad_norm"] = (sum(grad_norms), count)
        out["train/lr"] = (self.sched.get_last_lr()[0], 1)
        return out

    def _clip_grad_norm(self, flat_grad: torch.Tensor | None = None) -> float:
        """Global grad-norm clipping (over the shards when sharded); the norm before.

        ``flat_grad``: one buffer of which every gradient is a view (two kernels in all).
        """
        max_norm = self.cfg.actor.optim.clip_grad
        if flat_grad is not None:
            total = float(torch.linalg.vector_norm(flat_grad))
            if max_norm and max_norm < total + 1e-6:
                flat_grad.mul_(max_norm / (total + 1e-6))
            return total
        if self.sharded:
            from rlinf.train.fsdp import clip_grad_norm

            return clip_grad_norm(self.model, max_norm)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return 0.0
        if len({(g.device, g.dtype) for g in grads}) > 1 or any(g.is_sparse for g in grads):
            return float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm or 1e30))
        # One device and dtype (the small-policy case): four kernels instead of torch's
        # per-tensor conversions, which cost more than the update itself at these sizes.
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if max_norm:
            torch._foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp_(max=1.0))
        return float(total)

    def _loss(
        self, mb: dict[str, torch.Tensor], use_value: bool, weight: float, masked: bool
    ) -> dict[str, torch.Tensor]:
        """Backward of one micro-batch's weighted loss; returns its metrics (detached 0-d)."""
        a = self.cfg.algorithm
        mask = mb["mask"] if masked else None
        adv = mb["advantage"]
        if a.normalize_advantages and a.adv_type == "gae":
            adv = normalize_advantages(adv, mask)
        logprob, entropy, value = self.model.evaluate(mb["obs"], mb["action"])
        if mask is None and use_value and a.huber_delta is None:
            return self._fused_loss(mb, adv, logprob, entropy, value, weight)
        pg_loss, pm = ppo_policy_loss(
            logprob,
            mb["logprob"],
            adv,
            mask,
            clip_ratio_low=a.clip_ratio_low,
            clip_ratio_high=a.clip_ratio_high,
            clip_ratio_c=a.clip_ratio_c,
        )
        if a.entropy_bonus:
            ent = masked_mean(entropy, mask)
            loss = pg_loss - a.entropy_bonus * ent
        else:  # only logged: keep it out of the graph
            ent = masked_mean(entropy.detach(), mask)
            loss = pg_loss
        metrics = {
            "train/policy_loss": pg_loss.detach(),
            "train/entropy": ent.detach(),
            "train/approx_kl": pm["approx_kl"],
            "train/clip_frac": pm["clip_frac"],
        }
        if use_value:
            v_loss, _ = value_loss(
                value,
                mb["value"],
                mb["return"],
                mask,
                clip=a.value_clip,
                huber_delta=a.huber_delta,
                with_metrics=False,
            )
            loss = loss + a.value_loss_coef * v_loss
            metrics["train/value_loss"] = v_loss.detach()
        else:
            loss = loss + 0.0 * value.sum()  # keep the critic in the graph for FSDP's reduce
        (loss * weight).backward()
        return metrics

    def _fused_loss(self, mb, adv, logprob, entropy, value, weight: float):
        """The common case (every row valid, MSE critic): one fused loss node (same math)."""
        a = self.cfg.algorithm
        loss, m = ppo_actor_critic_loss(
            logprob,
            value,
            mb["logprob"],
            adv,
            mb["value"],
            mb["return"],
            clip_ratio_low=a.clip_ratio_low,
            clip_ratio_high=a.clip_ratio_high,
            clip_ratio_c=a.clip_ratio_c,
            value_clip=a.value_clip,
            value_coef=a.value_loss_coef,
        )
        if a.entropy_bonus:
            ent = entropy.mean()
            loss = loss - a.entropy_bonus * ent
        else:
            ent = entropy.detach().mean()
        (loss * weight if weight != 1.0 else loss).backward()
        return _train_metrics(m, ent.detach())

    def _manual_loss(self, mb, weight: float, accumulate: bool) -> dict[str, torch.Tensor]:
        """:meth:`_fused_loss`'s math through :class:`MLPEvaluateGrad`: the gradients of the
        weighted loss are written into (``accumulate``: added to) the parameters' ``.grad``."""
        a = self.cfg.algorithm
        adv = mb["advantage"]
        if a.normalize_advantages and a.adv_type == "gae":
            adv = normalize_advantages(adv)
        path = self._grad_path
        cache = path.forward(mb["obs"], mb["action"])
        with torch.no_grad():
            _, m, d_logprob, d_value = ppo_actor_critic_terms(
                cache.logprob, cache.value, mb["logprob"], adv, mb["value"], mb["return"], self._hp
            )
            if weight != 1.0:
                d_logprob, d_value = d_logprob * weight, d_value * weight
        # loss - entropy_bonus * entropy.mean(): d / d entropy = -entropy_bonus / B per row.
        d_entropy = -a.entropy_bonus * weight / cache.logprob.shape[0]
        path.backward(cache, d_logprob, d_value, d_entropy, accumulate)
        metrics = dict(zip(METRIC_NAMES, m.unbind(), strict=True))
        return _train_metrics(metrics, path.entropy_mean(cache))

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


def _train_metrics(m: dict[str, torch.Tensor], entropy: torch.Tensor) -> dict[str, torch.Tensor]:
    """The logged metrics of the fused loss (``m``: its metrics by name) and the entropy."""
    keys = ("policy_loss", "approx_kl", "clip_frac", "value_loss")
    return {"train/entropy": entropy, **{f"train/{k}": m[k] for k in keys}}
