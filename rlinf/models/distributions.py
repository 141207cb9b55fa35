"""Action distributions as pure functions (no torch.distributions objects in the hot path).

Shapes: B batch, D action dims, K discrete actions. Log-probs and entropies sum over D.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "categorical_entropy",
    "categorical_log_prob",
    "gaussian_entropy",
    "gaussian_log_prob",
    "squash_to_bounds",
    "squashed_gaussian_log_prob",
    "tanh_log_abs_det_jacobian",
]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)


def gaussian_log_prob(
    mean_BD: torch.Tensor, log_std_D: torch.Tensor, x_BD: torch.Tensor
) -> torch.Tensor:
    """[B] log-density of ``x`` under the diagonal Gaussian N(mean, exp(log_std)^2)."""
    z = (x_BD - mean_BD) * torch.exp(-log_std_D)
    return (-0.5 * z.square() - log_std_D - _HALF_LOG_2PI).sum(-1)


def gaussian_entropy(log_std_D: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[B] entropy of a diagonal Gaussian with state-independent ``log_std`` [D]."""
    return (0.5 + _HALF_LOG_2PI + log_std_D).sum(-1).repeat(batch_size)


def tanh_log_abs_det_jacobian(u_BD: torch.Tensor) -> torch.Tensor:
    """[B] sum over D of log(1 - tanh(u)^2), in the stable form 2 (log 2 - u - softplus(-2u))."""
    return (2.0 * (_LOG_2 - u_BD - F.softplus(-2.0 * u_BD))).sum(-1)


def squash_to_bounds(u_BD: torch.Tensor, low_D: torch.Tensor, high_D: torch.Tensor) -> torch.Tensor:
    """[B, D] ``low + (tanh(u) + 1) (high - low) / 2``: pre-tanh sample to env action."""
    return low_D + (torch.tanh(u_BD) + 1.0) * (0.5 * (high_D - low_D))


def squashed_gaussian_log_prob(
    mean_BD: torch.Tensor,
    log_std_D: torch.Tensor,
    u_BD: torch.Tensor,
    low_D: torch.Tensor,
    high_D: torch.Tensor,
) -> torch.Tensor:
    """[B] log-density of the env action ``squash_to_bounds(u)`` with u ~ N(mean, std^2).

    Change of variables: log N(u) - sum log(1 - tanh(u)^2) - sum log((high - low) / 2).
    Taking the pre-tanh ``u`` avoids atanh of actions at the bounds.
    """
    log_half_range = torch.log(0.5 * (high_D - low_D)).sum(-1)
    return (
        gaussian_log_prob(mean_BD, log_std_D, u_BD)
        - tanh_log_abs_det_jacobian(u_BD)
        - log_half_range
    )


def categorical_log_prob(logits_BK: torch.Tensor, action_B: torch.Tensor) -> torch.Tensor:
    """[B] log-probability of integer actions under softmax(logits)."""
    log_p = torch.log_softmax(logits_BK, dim=-1)
    # clone: a fresh tensor rather than a view, as FSDP2 wants for module outputs.
    return log_p.gather(-1, action_B.long().unsqueeze(-1)).squeeze(-1).clone()


def categorical_entropy(logits_BK: torch.Tensor) -> torch.Tensor:
    """[B] entropy of softmax(logits) (masked -inf logits contribute 0)."""
    return torch.special.entr(torch.softmax(logits_BK, dim=-1)).sum(-1)
