"""Per-token KL estimators between the policy and a reference policy.

Estimators of KL(pi || pi_ref) from samples of pi, given the log-probs of the sampled
tokens under both (Schulman, "Approximating KL divergence"). With
``log_r = logprobs - ref_logprobs``:

- ``k1`` (alias ``kl``): ``log_r``; unbiased, high variance, can be negative.
- ``k2`` (alias ``mse``): ``0.5 * log_r ** 2``; biased, low variance, >= 0.
- ``k3`` (alias ``low_var_kl``): ``exp(-log_r) - 1 + log_r``; unbiased, >= 0. As in verl,
  ``log_r`` is clamped to [-20, 20] before ``exp`` and the result to [-10, 10].
- ``abs``: ``|log_r|``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["KL_KINDS", "kl_estimate", "kl_in_reward"]

_ALIASES = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}
KL_KINDS = ("k1", "k2", "k3", "abs", *_ALIASES)

# Bounds on log-ratios before exp() and on the k3 value (verl's choices).
LOG_RATIO_CLAMP = 20.0
K3_CLAMP = 10.0


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref), same shape as the inputs.

    ``logprobs`` are log pi(a) of the sampled tokens (the gradient flows through them),
    ``ref_logprobs`` log pi_ref(a). ``kind`` is one of :data:`KL_KINDS`. Padding positions
    are not special here: mask them when aggregating.
    """
    k = _ALIASES.get(kind, kind)
    log_r = logprobs - ref_logprobs
    if k == "k1":
        return log_r
    if k == "k2":
        return 0.5 * log_r.square()
    if k == "abs":
        return log_r.abs()
    if k == "k3":
        neg = (-log_r).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return (torch.exp(neg) - 1.0 - neg).clamp(-K3_CLAMP, K3_CLAMP)
    raise ValueError(f"kl_estimate: unknown kind {kind!r}; choose one of {', '.join(KL_KINDS)}")


def kl_in_reward(
    token_rewards: Tensor, kl: Tensor, beta: float, mask: Tensor | None = None
) -> Tensor:
    """Token rewards with a KL penalty folded in: ``r_t - beta * kl_t`` (``[B, L]``).

    ``kl`` is a per-token estimate (:func:`kl_estimate`), detached here since the reward
    is a constant for the policy gradient; masked-out tokens keep their reward unchanged.
    """
    pen = beta * kl.detach().to(token_rewards.dtype)
    if mask is not None:
        pen = torch.where(mask != 0, pen, 0.0)
    return token_rewards - pen
