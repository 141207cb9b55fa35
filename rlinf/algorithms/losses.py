"""Policy-gradient losses as small pure torch functions: PPO clip (with dual clip), value
loss, entropy and log-probs from logits, loss aggregation.

Shapes: ``[B]`` (embodied: one log-prob per action) or ``[B, L]`` (tokens; ``[B, ...]`` is
flattened to ``[B, L]``). Masks are bool or float (``1`` = valid). Metrics are detached
0-d tensors (call ``.item()`` when logging; keeping tensors avoids a device sync per
micro-batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rlinf.algorithms.advantages import masked_mean, masked_sum, masked_var
from rlinf.algorithms.kl import LOG_RATIO_CLAMP

__all__ = [
    "LOSS_AGG_MODES",
    "aggregate",
    "approx_kl",
    "entropy_from_logits",
    "logprobs_from_logits",
    "ppo_policy_loss",
    "value_loss",
]

LOSS_AGG_MODES = (
    "token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)


def _zero_masked(x: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return x
    return torch.where(mask != 0, x, 0.0)


def aggregate(
    loss: Tensor,
    mask: Tensor | None = None,
    mode: str = "token-mean",
    denom: float | Tensor | None = None,
) -> Tensor:
    """Reduce a per-token ``[B, L]`` (or per-sample ``[B]``) loss to a scalar.

    Modes:
        - ``token-mean``: mean over all valid tokens of the batch (DAPO; long answers weigh
          more).
        - ``seq-mean-token-sum``: per-row sum over tokens, mean over rows.
        - ``seq-mean-token-mean``: per-row token mean, mean over rows (original GRPO).
        - ``seq-mean-token-sum-norm``: per-row sum divided by the padded length ``L``, mean
          over rows (Dr.GRPO: a normaliser independent of answer length).

    Rows with no valid token are left out of the row mean. For ``[B]`` every mode is the
    masked mean. ``denom``, if given, replaces the local count (valid tokens for
    ``token-mean``, valid rows otherwise): pass the count over all micro-batches and ranks
    of the step to make gradient accumulation exact.
    """
    if mode not in LOSS_AGG_MODES:
        raise ValueError(
            f"aggregate: unknown loss_agg_mode {mode!r}; choose one of {', '.join(LOSS_AGG_MODES)}"
        )
    if loss.dim() == 0:
        raise ValueError("aggregate: loss must be [B] or [B, L], got a scalar")
    if mask is not None and mask.shape != loss.shape:
        raise ValueError(
            f"aggregate: mask shape {tuple(mask.shape)} != loss shape {tuple(loss.shape)}"
        )
    if mask is None and (mode == "token-mean" or loss.dim() == 1):  # the unmasked hot path
        return loss.mean() if denom is None else loss.sum() / denom
    loss2 = loss.reshape(loss.shape[0], -1)
    if mask is None:
        mask2 = torch.ones_like(loss2, dtype=torch.bool)
    else:
        mask2 = mask.reshape(mask.shape[0], -1)
    m = mask2.to(loss2.dtype if loss2.is_floating_point() else torch.float32)
    tiny = torch.finfo(m.dtype).tiny

    if mode == "token-mean":
        count = m.sum() if denom is None else torch.as_tensor(denom, dtype=m.dtype)
        return masked_sum(loss2, mask2) / count.clamp_min(tiny)

    tokens_per_row = m.sum(dim=-1)
    if mode == "seq-mean-token-sum":
        per_row = masked_sum(loss2, mask2, dim=-1)
    elif mode == "seq-mean-token-mean":
        per_row = masked_sum(loss2, mask2, dim=-1) / tokens_per_row.clamp_min(tiny)
    else:  # seq-mean-token-sum-norm
        per_row = masked_sum(loss2, mask2, dim=-1) / loss2.shape[-1]
    row_valid = tokens_per_row > 0
    count = row_valid.sum().to(m.dtype) if denom is None else torch.as_tensor(denom, dtype=m.dtype)
    return masked_sum(per_row, row_valid) / count.clamp_min(tiny)


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor | None = None,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float | None = None,
    clip_ratio_c: float | None = None,
    loss_agg_mode: str = "token-mean",
    denom: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate loss (to minimise), optionally with dual clip.

    Args:
        logprobs: ``[B]`` or ``[B, L]`` log-probs under the current policy (with grad).
        old_logprobs: same shape, log-probs under the behaviour policy (detached here).
        advantages: same shape, or ``[B]`` broadcast over ``L`` (detached here).
        mask: valid positions; masked-out log-probs may be -inf or NaN.
        clip_ratio_low / clip_ratio_high: ratio clipped to ``[1 - low, 1 + high]``;
            ``high`` defaults to ``low`` (DAPO clip-higher sets it larger).
        clip_ratio_c: dual-clip bound (> 1, e.g. 3.0): for negative advantages the loss
            is capped at ``-A * c`` so a huge ratio cannot blow it up (Ye et al., 2020).
        loss_agg_mode, denom: see :func:`aggregate`.

    Returns:
        ``(loss, metrics)`` with metrics ``clip_frac`` (share of valid positions where the
        clip bounds the objective), ``dual_clip_frac``, ``approx_kl`` (k3 of KL(old||new))
        and ``ratio_mean``, all detached 0-d tensors.
    """
    if clip_ratio_high is None:
        clip_ratio_high = clip_ratio_low
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"ppo_policy_loss: clip_ratio_c must be > 1 (got {clip_ratio_c})")
    if logprobs.shape != old_logprobs.shape:
        raise ValueError(
            f"ppo_policy_loss: logprobs {tuple(logprobs.shape)} and old_logprobs "
            f"{tuple(old_logprobs.shape)} differ in shape"
        )
    adv = advantages.detach()
    if adv.dim() == 1 and logprobs.dim() == 2:
        adv = adv.unsqueeze(-1)
    adv = adv.expand_as(logprobs)

    # Sanitise masked-out positions before exp so their gradient is 0, not NaN.
    log_ratio = _zero_masked(logprobs - old_logprobs.detach(), mask)
    log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)

    pg1 = -adv * ratio
    pg2 = -adv * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    clipped = torch.maximum(pg1, pg2)
    per_token = clipped
    if clip_ratio_c is not None:
        pg3 = -adv * clip_ratio_c
        dual = torch.minimum(clipped, pg3)
        per_token = torch.where(adv < 0, dual, clipped)
        dual_active = (clipped > pg3) & (adv < 0)
    else:
        dual_active = None

    loss = aggregate(per_token, mask, loss_agg_mode, denom)
    with torch.no_grad():
        metrics = {
            "clip_frac": masked_mean((pg2 > pg1).to(ratio.dtype), mask),
            "dual_clip_frac": (
                masked_mean(dual_active.to(ratio.dtype), mask)
                if dual_active is not None
                else ratio.new_zeros(())
            ),
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, {k: v.detach() for k, v in metrics.items()}


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor | None = None,
    clip: float | None = None,
    huber_delta: float | None = None,
    loss_agg_mode: str = "token-mean",
    denom: float | Tensor | None = None,
    with_metrics: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Critic loss ``0.5 * (V - R)^2`` (or Huber), optionally PPO value-clipped.

    With ``clip``, the prediction is also taken as ``old + clamp(V - old, -clip, clip)``
    and the larger of the two losses is used (pessimistic, as in PPO2). Shapes ``[B]`` or
    ``[B, L]``; ``old_values`` and ``returns`` are detached here.

    Returns:
        ``(loss, metrics)`` with ``value_clip_frac`` (share of valid positions where the
        clipped loss is the larger) and ``explained_variance``
        (``1 - Var[R - V] / Var[R]``; NaN when the returns have no variance); with
        ``with_metrics=False`` the metrics are skipped (an empty dict: small-batch hot loops).
    """
    # Masked-out positions (padding) may hold garbage; zero them so gradients stay finite.
    values = _zero_masked(values, mask)
    old_values = _zero_masked(old_values.detach(), mask)
    returns = _zero_masked(returns.detach(), mask)

    def per_elem(pred: Tensor) -> Tensor:
        err = pred - returns
        if huber_delta is None:
            return 0.5 * err.square()
        return F.huber_loss(pred, returns, reduction="none", delta=huber_delta)

    loss1 = per_elem(values)
    if clip is not None:
        clipped_pred = old_values + (values - old_values).clamp(-clip, clip)
        loss2 = per_elem(clipped_pred)
        per = torch.maximum(loss1, loss2)
        clip_active = loss2 > loss1
    else:
        per = loss1
        clip_active = None

    loss = aggregate(per, mask, loss_agg_mode, denom)
    if not with_metrics:
        return loss, {}
    with torch.no_grad():
        v = values.detach()
        var_r = masked_var(returns, mask, unbiased=False)
        var_res = masked_var(returns - v, mask, unbiased=False)
        ev = torch.where(var_r > 0, 1.0 - var_res / var_r.clamp_min(1e-12), float("nan"))
        metrics = {
            "value_clip_frac": (
                masked_mean(clip_active.to(per.dtype), mask)
                if clip_active is not None
                else per.new_zeros(())
            ),
            "explained_variance": ev,
        }
    return loss, metrics


def approx_kl(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor | None = None) -> Tensor:
    """k3 estimate of KL(old || new) from samples of the old policy, averaged (0-d).

    ``(r - 1) - log r`` with ``r = exp(logprobs - old_logprobs)``; >= 0 and unbiased. Used
    for logging and for early stopping an epoch loop at ``target_kl``.
    """
    log_r = _zero_masked(logprobs - old_logprobs, mask).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return masked_mean(torch.expm1(log_r) - log_r, mask)


def _rows(x: Tensor, chunk_size: int | None):
    n = x.shape[0]
    step = n if not chunk_size or chunk_size <= 0 else chunk_size
    for start in range(0, max(n, 1), max(step, 1)):
        yield start, min(start + step, n)


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 for float64 logits, else float32: the dtype log-prob math runs in."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_token_logits(fn: str, logits: Tensor, tokens: Tensor, temperature: float) -> None:
    """The argument checks shared by the token log-prob functions (``fn`` names the caller)."""
    if temperature <= 0:
        raise ValueError(f"{fn}: temperature must be > 0 (got {temperature})")
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(
            f"{fn}: logits {tuple(logits.shape)} do not match tokens "
            f"{tuple(tokens.shape)} (expected logits of shape tokens.shape + [V])"
        )


def entropy_from_logits(logits: Tensor, chunk_size: int | None = None) -> Tensor:
    """Entropy ``[...]`` of the categorical distributions given by ``logits[..., V]``.

    Computed in float32 (float64 for float64 input) from ``log_softmax``, so large logits
    are stable and ``-inf`` logits (banned tokens) contribute 0 with finite gradients.
    ``chunk_size`` processes that many rows of the flattened leading dims at a time, which
    bounds the float32 temporaries for a big ``[B, L, V]`` (useful under ``no_grad``).
    """
    flat = logits.reshape(-1, logits.shape[-1])
    dtype = compute_dtype(logits)
    parts = []
    for s, e in _rows(flat, chunk_size):
        logp = torch.log_softmax(flat[s:e].to(dtype), dim=-1)
        p = logp.exp()
        safe_logp = torch.where(p > 0, logp, 0.0)
        parts.append(-(p * safe_logp).sum(dim=-1))
    out = torch.cat(parts) if len(parts) > 1 else parts[0]
    return out.reshape(logits.shape[:-1])


def logprobs_from_logits(
    logits: Tensor,
    tokens: Tensor,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> Tensor:
    """Log-probs ``[...]`` of ``tokens[...]`` under ``softmax(logits[..., V] / temperature)``.

    ``logit[token] - logsumexp(logits)``: no full ``[B, L, V]`` log-softmax is kept, and
    the float32 upcast happens per chunk of ``chunk_size`` rows. ``temperature`` must
    match the sampler's so that the log-probs are those of the sampling distribution.
    """
    check_token_logits("logprobs_from_logits", logits, tokens, temperature)
    flat = logits.reshape(-1, logits.shape[-1])
    idx = tokens.reshape(-1, 1).long()
    dtype = compute_dtype(logits)
    parts = []
    for s, e in _rows(flat, chunk_size):
        x = flat[s:e].to(dtype)
        if temperature != 1.0:
            x = x / temperature
        parts.append(x.gather(-1, idx[s:e]).squeeze(-1) - torch.logsumexp(x, dim=-1))
    out = torch.cat(parts) if len(parts) > 1 else parts[0]
    return out.reshape(tokens.shape)
