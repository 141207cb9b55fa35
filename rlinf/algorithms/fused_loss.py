"""PPO policy + value loss as one autograd node, for small unmasked batches.

A small policy takes thousands of optimizer steps per run on ``[B]`` vectors of a few hundred
entries, where every elementwise op costs more in dispatch and autograd bookkeeping than in
arithmetic. :func:`ppo_actor_critic_loss` computes exactly what
``ppo_policy_loss(...) + value_coef * value_loss(...)`` (token-mean over all rows, no mask, no
Huber) computes, with the gradient with respect to the log-probs and values written out: one
graph node instead of some forty ops. The reference functions in :mod:`.losses` stay the
definition; the tests check values and gradients against them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlinf.algorithms.kl import LOG_RATIO_CLAMP

__all__ = [
    "METRIC_NAMES",
    "check_hyperparameters",
    "ppo_actor_critic_loss",
    "ppo_actor_critic_terms",
]

METRIC_NAMES = (
    "policy_loss",
    "value_loss",
    "clip_frac",
    "approx_kl",
    "ratio_mean",
    "dual_clip_frac",
)


def ppo_actor_critic_terms(
    logprob: Tensor,
    value: Tensor,
    old_logprob: Tensor,
    adv: Tensor,
    old_value: Tensor,
    returns: Tensor,
    hp: tuple,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The loss of :func:`ppo_actor_critic_loss` and its gradient, without autograd.

    ``hp`` is ``(clip_low, clip_high, clip_c, value_clip, value_coef)``, already checked.
    Returns ``(loss, metrics, d_logprob, d_value)``: the scalar loss, the metrics [6] in the
    order of :data:`METRIC_NAMES`, and d loss / d logprob and d loss / d value, each [B].
    Every input is treated as constant (call it under ``torch.no_grad()`` with tensors that
    require grad).
    """
    clip_low, clip_high, clip_c, value_clip, value_coef = hp
    n = logprob.numel()
    raw = logprob - old_logprob
    log_ratio = raw.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    unclipped = pg1 >= pg2  # the max takes pg1 (ties: inside the range, same gradient)
    per = torch.maximum(pg1, pg2)
    keep = unclipped
    dual_frac = None
    if clip_c is not None:
        pg3 = -adv * clip_c
        dual = (adv < 0) & (per > pg3)
        per = torch.where(dual, pg3, per)
        keep = unclipped & ~dual
        dual_frac = dual.to(ratio.dtype).mean()
    pg_loss = per.mean()

    err = value - returns
    if value_clip is None:
        v_loss = 0.5 * err.square().mean()
        v_grad = err
    else:
        delta = value - old_value
        err2 = old_value + delta.clamp(-value_clip, value_clip) - returns
        take2 = err2.square() > err.square()
        v_loss = 0.5 * torch.maximum(err.square(), err2.square()).mean()
        inside = delta.abs() <= value_clip
        v_grad = torch.where(take2, err2 * inside, err)
    loss = pg_loss + value_coef * v_loss

    # d loss / d logprob = -adv * ratio / n where the unclipped, un-dual-clipped branch is
    # taken and the log-ratio guard is not active; d loss / d value = coef * err / n.
    in_guard = raw.abs() <= LOG_RATIO_CLAMP
    d_logprob = torch.where(keep & in_guard, pg1, 0.0).mul_(1.0 / n)
    d_value = v_grad * (value_coef / n)
    metrics = torch.stack(
        [
            pg_loss,
            v_loss,
            (~unclipped).to(ratio.dtype).mean(),  # clip_frac: pg2 > pg1
            ((ratio - 1.0) - log_ratio).mean(),  # approx_kl (k3)
            ratio.mean(),
            dual_frac if dual_frac is not None else ratio.new_zeros(()),
        ]
    )
    return loss, metrics, d_logprob, d_value


class _PPOActorCritic(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logprob, value, old_logprob, adv, old_value, returns, hp):
        loss, metrics, d_logprob, d_value = ppo_actor_critic_terms(
            logprob, value, old_logprob, adv, old_value, returns, hp
        )
        ctx.save_for_backward(d_logprob, d_value)
        ctx.mark_non_differentiable(metrics)
        return loss, metrics

    @staticmethod
    def backward(ctx, grad_loss, _grad_metrics):
        d_logprob, d_value = ctx.saved_tensors
        return d_logprob * grad_loss, d_value * grad_loss, None, None, None, None, None


def check_hyperparameters(
    clip_ratio_low: float,
    clip_ratio_high: float | None,
    clip_ratio_c: float | None,
    value_clip: float | None,
    value_coef: float,
) -> tuple:
    """The ``hp`` tuple of :func:`ppo_actor_critic_terms` (``clip_ratio_high`` defaults to
    ``clip_ratio_low``); raises on a dual clip <= 1."""
    if clip_ratio_high is None:
        clip_ratio_high = clip_ratio_low
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"ppo_actor_critic_loss: clip_ratio_c must be > 1 (got {clip_ratio_c})")
    return (clip_ratio_low, clip_ratio_high, clip_ratio_c, value_clip, value_coef)


def ppo_actor_critic_loss(
    logprob: Tensor,
    value: Tensor,
    old_logprob: Tensor,
    advantages: Tensor,
    old_value: Tensor,
    returns: Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float | None = None,
    clip_ratio_c: float | None = None,
    value_clip: float | None = None,
    value_coef: float = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``ppo_policy_loss + value_coef * value_loss`` over ``[B]`` rows, all valid.

    Args are those of :func:`~rlinf.algorithms.losses.ppo_policy_loss` and
    :func:`~rlinf.algorithms.losses.value_loss` (``value_clip`` is the latter's ``clip``);
    ``logprob`` and ``value`` carry the gradient, the rest is treated as constant.

    Returns:
        ``(loss, metrics)``: the scalar loss and detached 0-d metrics ``policy_loss``,
        ``value_loss``, ``clip_frac``, ``approx_kl``, ``ratio_mean``, ``dual_clip_frac``.
    """
    hp = check_hyperparameters(
        clip_ratio_low, clip_ratio_high, clip_ratio_c, value_clip, value_coef
    )
    shapes = {t.shape for t in (logprob, value, old_logprob, advantages, old_value, returns)}
    if len(shapes) != 1 or logprob.dim() != 1:
        raise ValueError(
            "ppo_actor_critic_loss: every input must be one [B] vector, got shapes "
            f"{sorted(tuple(s) for s in shapes)}"
        )
    loss, m = _PPOActorCritic.apply(
        logprob,
        value,
        old_logprob.detach(),
        advantages.detach(),
        old_value.detach(),
        returns.detach(),
        hp,
    )
    return loss, dict(zip(METRIC_NAMES, m.unbind(), strict=True))
