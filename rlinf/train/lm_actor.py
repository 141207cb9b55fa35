"""The actor role for language models: FSDP2 training of a causal LM with PPO-style losses.

Sequences arrive right-padded: `input_ids`, `attention_mask`, `response_mask` (the response
tokens, the only ones trained on), rollout log-probs and per-sequence advantages. The actor
recomputes old and reference log-probs, then runs minibatch updates whose token counts are
agreed across actor ranks, so that a token-mean loss is the same whatever the placement.

Cost model (a 0.5B model with a 150k vocabulary): each micro-batch runs the model on its
columns up to the last attended token only, and the LM head and the float32 log-softmax only
on the response window (:mod:`rlinf.train.logprob`); the loop has no host synchronisation
(metrics stay on the device until the end of the update), so the host queues work ahead of
the GPU. One actor rank on a GPU runs the plain module under autocast: FSDP2 on a single
rank saves no memory and only adds per-layer hooks (``actor.fsdp_config.shard_single_rank``).
"""

from __future__ import annotations

import contextlib
import inspect
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from rlinf.algorithms import entropy_from_logits, kl_estimate, masked_mean, ppo_policy_loss
from rlinf.algorithms.losses import aggregate
from rlinf.config import RLinfConfig
from rlinf.dist.batch import TensorBatch, balanced_sizes
from rlinf.train.fsdp import actor_mesh, clip_grad_norm_, full_state_dict, shard_model
from rlinf.train.logprob import token_entropy, token_logprobs
from rlinf.train.optim import build_optimizer, build_scheduler, fused_adam_if_possible
from rlinf.utils.dtypes import DTYPES


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
        self.amp_dtype: torch.dtype | None = None  # autocast dtype of an unsharded GPU model
        self._keep_kwarg: dict[int, str | None] = {}
        self.model = self._load(m.model_path, train=True)
        self.ref = self._load(m.model_path, train=False) if cfg.algorithm.kl_beta > 0 else None
        self.optim = fused_adam_if_possible(build_optimizer(self.model, cfg.actor.optim))
        self.sched = build_scheduler(self.optim, cfg.actor.optim, max(1, total_steps))

    def _load(self, path: str, train: bool) -> torch.nn.Module:
        from rlinf.models.causal_lm import load_causal_lm

        model = load_causal_lm(path, dtype=torch.float32, device=self.device)
        if train and self.cfg.actor.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        model.config.use_cache = False
        if train and self.cfg.actor.model.torch_compile:
            # the layers' forward only: FSDP2's hooks and checkpointing stay eager around it.
            # The layers share their graphs, compiled for any batch size and length (dynamic:
            # no recompilation as lengths vary); one with and one without a padding mask.
            for layer in getattr(getattr(model, "model", None), "layers", None) or []:
                layer.forward = torch.compile(layer.forward, dynamic=True)
        fsdp_cfg = self.cfg.actor.fsdp_config
        if self.device.type == "cuda" and fsdp_cfg.param_dtype is None:
            from dataclasses import replace

            fsdp_cfg = replace(fsdp_cfg, param_dtype=self.cfg.actor.model.precision or "bf16")
        if self.world > 1 or (self.device.type == "cuda" and fsdp_cfg.shard_single_rank):
            model = shard_model(
                model, actor_mesh(self.group, self.device), fsdp_cfg, _decoder_block_type(model)
            )
        elif self.device.type == "cuda" and fsdp_cfg.param_dtype not in (None, "fp32"):
            # fp32 master weights, matmuls in param_dtype (what FSDP2's policy does, minus hooks)
            self.amp_dtype = DTYPES[fsdp_cfg.param_dtype]
        if not train:
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
        return model

    # -- forward pieces -----------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _logits_to_keep_kwarg(self, model) -> str | None:
        """The forward argument that limits the LM head to the last k positions, if any."""
        key = id(model)
        if key not in self._keep_kwarg:
            try:
                params = inspect.signature(model.forward).parameters
            except (TypeError, ValueError):
                params = {}
            names = [n for n in ("logits_to_keep", "num_logits_to_keep") if n in params]
            self._keep_kwarg[key] = names[0] if names else None
        return self._keep_kwarg[key]

    def _forward(
        self,
        model,
        b: TensorBatch,
        temperature: float,
        window: tuple[int, int] | None = None,
        entropy: bool = False,
    ):
        """Log-probs ``[B, L]`` (position j: log p(token j | < j)) of the tokens in columns
        ``window = [lo, hi)`` (default: :func:`token_window` of ``b``), 0 elsewhere.

        The model runs on columns ``[0, hi - 1)`` only and its LM head on the last ``hi - lo``
        of them; ``entropy`` adds the entropy at the same positions (with grad only when it is
        a loss term)."""
        ids, attn = b["input_ids"], b["attention_mask"]
        L = ids.shape[1]
        lo, hi = window if window is not None else token_window(token_spans(b), L)
        keep = hi - lo
        x_attn = attn[:, : hi - 1].long()
        pos = (x_attn.cumsum(-1) - 1).clamp(min=0)
        kwarg = self._logits_to_keep_kwarg(model)
        extra = {kwarg: keep} if kwarg else {}
        with self._autocast():
            logits = model(
                input_ids=ids[:, : hi - 1],
                attention_mask=x_attn,
                position_ids=pos,
                use_cache=False,
                **extra,
            ).logits
        logits = logits[:, -keep:]  # a no-op when the model kept only those
        fused = self.cfg.actor.model.torch_compile
        lp = F.pad(token_logprobs(logits, ids[:, lo:hi], temperature, fused=fused), (lo, L - hi))
        ent = None
        if entropy:
            if torch.is_grad_enabled() and self.cfg.algorithm.entropy_bonus > 0:
                ent = entropy_from_logits(logits / temperature)  # a loss term: with grad
            else:
                ent = token_entropy(logits.detach(), temperature, fused=fused)  # a metric
            ent = F.pad(ent, (lo, L - hi))
        return lp, ent

    @torch.no_grad()
    def compute_logprobs(self, b: TensorBatch, reference: bool = False) -> torch.Tensor:
        """Teacher-forced log-probs [N, L] of the current (or reference) policy, micro-batched;
        0 outside each micro-batch's response window."""
        model = self.ref if reference else self.model
        t = self.cfg.algorithm.sampling_params.temperature_train
        spans = token_spans(b)
        n_micro = self._agreed_chunks(b.batch_size, self.cfg.actor.micro_batch_size)
        outs = [
            self._forward(model, b[s:e], t, token_window(spans[s:e], b["input_ids"].shape[1]))[0]
            for s, e in _ranges(b.batch_size, n_micro)
        ]
        return torch.cat(outs)

    def _agreed_chunks(self, n_local: int, size: int) -> int:
        """Every actor rank runs the same number of forwards (FSDP collectives must match)."""
        chunks = math.ceil(n_local / max(1, size))
        if self.world > 1:
            t = torch.tensor([chunks], device=self.device)
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
        total = n_local
        if self.world > 1:
            t = torch.tensor([n_local], device=self.device)
            dist.all_reduce(t, group=self.group)
            total = int(t.item())
        return max(1, total // self.cfg.actor.global_batch_size)

    def on_policy(self, n_local: int) -> bool:
        """One epoch of one minibatch: the policy being updated is the one that sampled, so the
        old log-probs equal the current ones and need no separate forward pass."""
        return self.cfg.algorithm.update_epoch == 1 and self.num_minibatches(n_local) == 1

    def _plan(self, n: int, tokens: torch.Tensor) -> tuple[list[torch.Tensor], list[int], list]:
        """Row permutations (one per epoch), minibatch sizes, and per minibatch (in order) the
        token and sequence counts summed over ranks and the micro-batch count (max over ranks):
        two collectives for the whole update instead of several per minibatch."""
        a, act = self.cfg.algorithm, self.cfg.actor
        num_mb = self.num_minibatches(n)
        gen = torch.Generator().manual_seed(self.sched.last_epoch)
        perms = [torch.randperm(n, generator=gen) for _ in range(a.update_epoch)]
        sizes = balanced_sizes(n, num_mb)
        counts, micros = [], []
        for perm in perms:
            for rows in perm.split(sizes):
                counts.append([float(tokens[rows].sum()), float(len(rows))])
                micros.append(math.ceil(len(rows) / max(1, act.micro_batch_size)))
        if self.world > 1:
            c = torch.tensor(counts, dtype=torch.float64, device=self.device)
            mi = torch.tensor(micros, dtype=torch.int64, device=self.device)
            dist.all_reduce(c, group=self.group)
            dist.all_reduce(mi, op=dist.ReduceOp.MAX, group=self.group)
            counts, micros = c.tolist(), mi.tolist()
        for size, n_micro in zip(sizes * len(perms), micros, strict=True):
            if size < n_micro:
                raise RuntimeError(
                    f"actor rank has {size} sequences but must run {n_micro} micro-batches; "
                    "balance data.rollout_batch_size over the actor ranks"
                )
        plan = [(tok, seq, mi) for (tok, seq), mi in zip(counts, micros, strict=True)]
        return perms, sizes, plan

    def update(self, b: TensorBatch, on_policy: bool = False) -> dict[str, tuple[float, int]]:
        """PPO-style update. ``on_policy``: old log-probs are the current ones (detached), and
        ``b["old_logprobs"]`` (the rollout's) only feed the rollout/train mismatch metric."""
        a = self.cfg.algorithm
        b = b.to(self.device)
        L = b["input_ids"].shape[1]
        spans = token_spans(b)  # the update's one host sync before the last metric read-out
        perms, sizes, plan = self._plan(b.batch_size, spans[:, 2])
        temperature = a.sampling_params.temperature_train
        metrics: dict[str, list[torch.Tensor]] = {}
        count = 0
        step = 0
        for perm in perms:
            bp = b[perm.to(self.device)]  # one gather per epoch; minibatches are row slices
            sp = spans[perm]
            start = 0
            for size in sizes:
                tok, seq, n_micro = plan[step]
                step += 1
                d = (tok if a.loss_agg_func == "token-mean" else seq) / self.world
                self.optim.zero_grad(set_to_none=True)
                for s, e in _ranges(size, n_micro):
                    s, e = start + s, start + e
                    m = self._micro_loss(
                        bp[s:e],
                        temperature,
                        d,
                        on_policy,
                        entropy=count == 0,
                        window=token_window(sp[s:e], L),
                    )
                    for k, v in m.items():
                        metrics.setdefault(k, []).append(v)
                    count += 1
                gn = clip_grad_norm_(self.model, self.cfg.actor.optim.clip_grad)
                metrics.setdefault("train/grad_norm", []).append(gn)
                self.optim.step()
                self.sched.step()
                start += size
        keys = list(metrics)
        dev = self.device
        sums = torch.stack([torch.stack(metrics[k]).float().sum().to(dev) for k in keys]).tolist()
        out = {k: (v, len(metrics[k])) for k, v in zip(keys, sums, strict=True)}
        out["train/lr"] = (self.sched.get_last_lr()[0], 1)
        return out

    def _micro_loss(
        self,
        mb: TensorBatch,
        temperature: float,
        denom: float,
        on_policy: bool,
        entropy: bool,
        window: tuple[int, int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss of one micro-batch (backward included); metrics as detached 0-d tensors (no host
        sync). Entropy is computed where it is a loss term, else on the first micro-batch of the
        update only, as a metric sample."""
        a = self.cfg.algorithm
        mask = mb["response_mask"]
        lp, ent = self._forward(
            self.model, mb, temperature, window, entropy=entropy or a.entropy_bonus > 0
        )
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
            "train/policy_loss": pg.detach(),
            "train/clip_frac": pm["clip_frac"],
            "train/approx_kl": pm["approx_kl"],
        }
        n_tok = mask.sum().clamp(min=1)
        if on_policy:
            diff = ((lp.detach() - mb["old_logprobs"]).abs() * mask).sum() / n_tok
            metrics["train/rollout_logprob_diff"] = diff
        if ent is not None:
            metrics["train/entropy"] = masked_mean(ent.detach(), mask)
            if a.entropy_bonus > 0:
                loss = loss - a.entropy_bonus * aggregate(ent, mask, a.loss_agg_func, denom=denom)
        if self.ref is not None and "ref_logprobs" in mb:
            kl_tok = kl_estimate(lp, mb["ref_logprobs"], a.kl_penalty)
            kl = aggregate(kl_tok, mask, a.loss_agg_func, denom=denom)
            if a.use_kl_loss:
                loss = loss + a.kl_beta * kl
            metrics["train/kl"] = ((kl_tok.detach() * mask).sum() / n_tok).detach()
        loss.backward()
        return metrics

    # -- supervised warm-start ------------------------------------------------------------------
    def sft_step(self, b: TensorBatch) -> float:
        """One optimizer step of next-token loss on the response tokens (token mean over ranks)."""
        b = b.to(self.device)
        spans = token_spans(b)
        d = float(spans[:, 2].sum())
        if self.world > 1:
            denom = torch.tensor([d], device=self.device)
            dist.all_reduce(denom, group=self.group)
            d = float(denom)
        d /= self.world
        self.optim.zero_grad(set_to_none=True)
        losses = []
        n_micro = self._agreed_chunks(b.batch_size, self.cfg.actor.micro_batch_size)
        L = b["input_ids"].shape[1]
        for s, e in _ranges(b.batch_size, n_micro):
            mb = b[s:e]
            lp, _ = self._forward(self.model, mb, 1.0, token_window(spans[s:e], L))
            loss = -(lp * mb["response_mask"]).sum() / d
            loss.backward()
            losses.append(loss.detach())
        clip_grad_norm_(self.model, self.cfg.actor.optim.clip_grad)
        self.optim.step()
        return float(torch.stack(losses).sum())

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


def _ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` consecutive ``(start, end)`` row ranges of balanced sizes covering ``n`` rows."""
    out, start = [], 0
    for size in balanced_sizes(n, parts):
        out.append((start, start + size))
        start += size
    return out


def token_spans(b: TensorBatch) -> torch.Tensor:
    """Per row, on the host: ``[first response column, last attended (or response) column + 1,
    response token count]`` (first is ``L`` for a row without response tokens). One
    device-to-host copy."""
    resp = b["response_mask"].bool()
    used = resp | b["attention_mask"].bool()
    L = resp.shape[1]
    cols = torch.arange(L, device=resp.device)
    first = torch.where(resp, cols, L).amin(-1)
    end = torch.where(used, cols + 1, 0).amax(-1)
    return torch.stack([first, end, resp.sum(-1)], dim=1).cpu()


def token_window(spans: torch.Tensor, L: int) -> tuple[int, int]:
    """Columns ``[lo, hi)`` holding every response token of the rows of ``spans``; the model
    then runs on columns ``[0, hi - 1)``. At least one column (a dummy one when no row has a
    response token: every rank still runs the forward)."""
    lo, hi = int(spans[:, 0].min()), int(spans[:, 1].max())
    hi = min(L, max(hi, 2))
    lo = min(max(lo, 1), hi - 1)
    return lo, hi


__all__ = ["LMActor", "token_spans", "token_window"]
