"""Advantage estimators and masked statistics, as small pure torch functions.

Shapes: ``T`` time steps, ``N`` parallel envs (embodied); ``B`` rows (sequences or
samples), ``L`` tokens per row (reasoning). Masks may be bool or float (``1`` = valid);
float masks act as weights. Positions where the mask is zero never leak into a result,
even if they hold NaN or inf (padding log-probs often do).

Conventions for grouped scores (GRPO, RLOO, DAPO): the ``group_size`` answers to one
prompt sit in contiguous rows, ``[p0 x G, p1 x G, ...]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "episode_mask",
    "gae",
    "group_advantages",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "next_values_from",
    "normalize_advantages",
    "reinforce_pp_advantages",
    "reinforce_pp_returns",
    "rloo_advantages",
]


# ---------------------------------------------------------------------------
# masked statistics
# ---------------------------------------------------------------------------


def _float_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.float32


def masked_sum(x: Tensor, mask: Tensor | None = None, dim: int | None = None) -> Tensor:
    """Sum of ``x * mask`` over ``dim`` (all dims if None); masked-out NaN/inf are ignored."""
    if mask is None:
        return x.sum() if dim is None else x.sum(dim)
    valid = mask != 0
    weighted = torch.where(valid, x * mask.to(_float_dtype(x)), 0.0)
    return weighted.sum() if dim is None else weighted.sum(dim)


def masked_mean(x: Tensor, mask: Tensor | None = None, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the valid positions of ``mask`` along ``dim`` (all dims if None).

    Returns 0 (not NaN) where the mask has no valid position, so that an empty micro-batch
    or a fully padded row contributes nothing instead of poisoning the step.
    """
    if mask is None:
        return x.mean() if dim is None else x.mean(dim)
    num = masked_sum(x, mask, dim)
    m = mask.to(num.dtype)
    den = m.sum() if dim is None else m.sum(dim)
    return num / den.clamp_min(torch.finfo(num.dtype).tiny)


def masked_var(
    x: Tensor, mask: Tensor | None = None, unbiased: bool = True, dim: int | None = None
) -> Tensor:
    """Variance of ``x`` over the valid positions (Bessel-corrected if ``unbiased``).

    With fewer than two valid positions the (biased) variance is returned, which is 0:
    no spread can be measured, and 0 keeps callers finite.
    """
    if mask is None:  # every position valid: one kernel
        n = x.numel() if dim is None else x.shape[dim]
        correction = 1 if unbiased and n > 1 else 0
        return x.var(correction=correction) if dim is None else x.var(dim, correction=correction)
    mean = masked_mean(x, mask, dim)
    if dim is not None:
        mean = mean.unsqueeze(dim)
    var = masked_mean((x - mean) ** 2, mask, dim)
    if unbiased:
        n = mask.to(var.dtype)
        n = n.sum() if dim is None else n.sum(dim)
        var = torch.where(n > 1, var * n / (n - 1).clamp_min(1e-8), var)
    return var


def masked_whiten(
    x: Tensor, mask: Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8
) -> Tensor:
    """Whiten ``x`` with the mean and (unbiased) variance of its valid positions.

    ``(x - mean) / sqrt(var + eps)``; with ``shift_mean=False`` the mean is added back
    (only the scale changes). Masked-out positions are set to 0. Zero valid positions or
    all-equal valid values give all zeros (with ``shift_mean``), never NaN.
    """
    if mask is None:  # every position valid: the fewest kernels (small-batch hot path)
        var, mean = torch.var_mean(x, correction=1 if x.numel() > 1 else 0)
    else:
        mean = masked_mean(x, mask)
        var = masked_var(x, mask, unbiased=True)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    if mask is not None:
        out = torch.where(mask != 0, out, 0.0)
    return out


def normalize_advantages(adv: Tensor, mask: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """Per-batch advantage normalisation (zero mean, unit variance over valid positions).

    The usual PPO trick; ``adv`` is ``[B]``, ``[T, N]`` or ``[B, L]``. Masked-out positions
    become 0.
    """
    return masked_whiten(adv, mask, shift_mean=True, eps=eps)


# ---------------------------------------------------------------------------
# embodied: GAE over [T, N] rollouts
# ---------------------------------------------------------------------------


def next_values_from(
    values: Tensor,
    last_values: Tensor,
    dones: Tensor | None = None,
    final_values: Tensor | None = None,
) -> Tensor:
    """Build ``next_values[T, N]`` for :func:`gae` from a rollout with auto-reset envs.

    ``values[T, N]`` are V(obs_t) for the observations the policy acted on,
    ``last_values[N]`` is V of the observation after the last step. Without auto-reset,
    ``next_values[t] = values[t + 1]``. Where ``dones[t]`` and ``final_values`` is given,
    the env reset after step t, so ``values[t + 1]`` belongs to a new episode: use
    ``final_values[t]`` = V(true final observation of step t) instead, which makes
    truncated episodes bootstrap correctly (terminated ones ignore it in :func:`gae`).
    """
    nv = torch.cat([values[1:], last_values.unsqueeze(0).to(values.dtype)], dim=0)
    if final_values is not None:
        if dones is None:
            raise ValueError("next_values_from: final_values needs dones to know where to use it")
        nv = torch.where(dones.bool(), final_values.to(nv.dtype), nv)
    return nv


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    dones: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over a ``[T, N]`` rollout (any trailing dims).

    Args:
        rewards, values: ``[T, N]``, r_t and V(s_t).
        next_values: ``[T, N]``, V of the observation after step t; after an auto-reset
            it must be V of the true final observation (see :func:`next_values_from`).
            Ignored (may be NaN) where ``terminated``.
        terminated: ``[T, N]``, the MDP ended at step t (no bootstrap).
        dones: ``[T, N]``, terminated or truncated at step t: the advantage trace stops.

    ``delta_t = r_t + gamma * V(s_{t+1}) * (1 - term_t) - V(s_t)``,
    ``A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}`` with ``A_T = 0``.

    Returns:
        ``(advantages[T, N], returns[T, N])`` with ``returns = advantages + values``.
    """
    if not (rewards.shape == values.shape == next_values.shape):
        raise ValueError(
            f"gae: rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and "
            f"next_values {tuple(next_values.shape)} must have the same [T, N] shape"
        )
    dtype = torch.promote_types(_float_dtype(rewards), _float_dtype(values))
    r = rewards.to(dtype)
    v = values.to(dtype)
    term = terminated.bool()
    nv = torch.where(term, 0.0, next_values.to(dtype))
    deltas = r + gamma * nv - v
    carry = gamma * lam * (1.0 - dones.to(dtype))
    adv = torch.empty_like(deltas)
    last = torch.zeros_like(deltas[0])
    for t in range(deltas.shape[0] - 1, -1, -1):
        last = deltas[t] + carry[t] * last
        adv[t] = last
    return adv, adv + v


def episode_mask(dones: Tensor) -> Tensor:
    """``[T, N]`` bool mask: True up to and including each env's first done, False after.

    For embodied GRPO, where each env plays one episode per rollout and steps after its
    end (auto-reset into a new episode) must not be trained on.
    """
    d = dones.to(torch.int64)
    dones_before = torch.cumsum(d, dim=0) - d
    return dones_before == 0


# ---------------------------------------------------------------------------
# reasoning / grouped: GRPO, Dr.GRPO, RLOO, REINFORCE++
# ---------------------------------------------------------------------------


def _grouped(scores: Tensor, group_size: int, who: str) -> Tensor:
    if scores.dim() != 1:
        raise ValueError(f"{who}: scores must be 1-D [B], got shape {tuple(scores.shape)}")
    if group_size < 1 or scores.shape[0] % group_size != 0:
        raise ValueError(
            f"{who}: batch of {scores.shape[0]} scores is not a whole number of groups of "
            f"group_size={group_size}; keep the group_size answers of a prompt together"
        )
    return scores.to(_float_dtype(scores)).view(-1, group_size)


def group_advantages(
    scores: Tensor, group_size: int, normalize_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """GRPO outcome advantages ``[B]``: score minus its group mean, over the group std.

    ``scores[B]`` with groups in contiguous rows. ``normalize_std=False`` gives Dr.GRPO
    (no std division, which otherwise up-weights near-uniform groups). The std is the
    unbiased one (as ``torch.std``); groups of one answer get advantage 0, all-equal
    groups get 0 (no learning signal, no NaN).
    """
    s = _grouped(scores, group_size, "group_advantages")
    adv = s - s.mean(dim=1, keepdim=True)
    if normalize_std:
        std = s.std(dim=1, keepdim=True, correction=1 if group_size > 1 else 0)
        adv = adv / (std + eps)
    return adv.reshape(-1)


def rloo_advantages(scores: Tensor, group_size: int) -> Tensor:
    """RLOO advantages ``[B]``: score minus the mean score of the *other* answers of its group.

    Equals ``G / (G - 1) * (s_i - mean_group)``; needs ``group_size >= 2``.
    """
    if group_size < 2:
        raise ValueError(f"rloo_advantages: group_size must be >= 2 (got {group_size})")
    s = _grouped(scores, group_size, "rloo_advantages")
    others = (s.sum(dim=1, keepdim=True) - s) / (group_size - 1)
    return (s - others).reshape(-1)


def reinforce_pp_returns(token_rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Discounted return-to-go ``[B, L]`` over valid tokens: ``G_t = r_t + gamma * G_{t+1}``.

    Masked-out tokens have return 0 and end the chain (as in verl): a token before a
    masked-out one sees no reward from beyond it. Rewards at masked-out tokens are ignored.
    """
    dtype = _float_dtype(token_rewards)
    valid = mask != 0
    r = torch.where(valid, token_rewards.to(dtype), 0.0)
    vf = valid.to(dtype)
    out = torch.empty_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in range(r.shape[1] - 1, -1, -1):
        running = (r[:, t] + gamma * running) * vf[:, t]
        out[:, t] = running
    return out


def reinforce_pp_advantages(
    token_rewards: Tensor, mask: Tensor, gamma: float = 1.0, eps: float = 1e-8
) -> Tensor:
    """REINFORCE++ advantages ``[B, L]``: return-to-go whitened over all valid batch tokens.

    The baseline is the batch (not a group), so no per-prompt grouping is needed; masked
    positions are 0.
    """
    returns = reinforce_pp_returns(token_rewards, mask, gamma)
    return masked_whiten(returns, mask, shift_mean=True, eps=eps)
