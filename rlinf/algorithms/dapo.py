"""DAPO pieces: dynamic sampling filter and soft overlong punishment (Yu et al., 2025).

The clip-higher part of DAPO is ``clip_ratio_high`` in
:func:`rlinf.algorithms.losses.ppo_policy_loss`; token-level aggregation is its
``loss_agg_mode="token-mean"``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["dynamic_sampling_keep", "expand_group_mask", "overlong_penalty"]


def dynamic_sampling_keep(scores: Tensor, group_size: int) -> Tensor:
    """``keep[B // group_size]`` bool: True for groups whose scores are not all equal.

    ``scores[B]`` holds groups in contiguous rows. An all-equal group (all right or all
    wrong) has zero GRPO advantage for every answer, so it only dilutes the batch.
    """
    if scores.dim() != 1:
        raise ValueError(
            f"dynamic_sampling_keep: scores must be 1-D [B], got {tuple(scores.shape)}"
        )
    if group_size < 1 or scores.shape[0] % group_size != 0:
        raise ValueError(
            f"dynamic_sampling_keep: {scores.shape[0]} scores is not a whole number of "
            f"groups of group_size={group_size}"
        )
    s = scores.view(-1, group_size)
    return (s.amax(dim=1) != s.amin(dim=1)) & ~torch.isnan(s).any(dim=1)


def expand_group_mask(keep: Tensor, group_size: int) -> Tensor:
    """Row mask ``[B]`` from a group mask ``[B // group_size]`` (each group's rows alike)."""
    return keep.repeat_interleave(group_size)


def overlong_penalty(
    response_lengths: Tensor, max_response_len: int, buffer_len: int, penalty_factor: float
) -> Tensor:
    """DAPO soft overlong punishment ``[B]`` (float32, <= 0), added to the reward.

    0 for lengths up to ``max_response_len - buffer_len``, then linear down to
    ``-penalty_factor`` at ``max_response_len``, and ``-penalty_factor`` beyond.
    ``buffer_len = 0`` gives a hard ``-penalty_factor`` only past ``max_response_len``.
    """
    if max_response_len <= 0:
        raise ValueError(f"overlong_penalty: max_response_len must be > 0 (got {max_response_len})")
    if not 0 <= buffer_len <= max_response_len:
        raise ValueError(
            f"overlong_penalty: buffer_len must be in [0, max_response_len={max_response_len}]"
            f" (got {buffer_len})"
        )
    if penalty_factor < 0:
        raise ValueError(f"overlong_penalty: penalty_factor must be >= 0 (got {penalty_factor})")
    lengths = response_lengths.to(torch.float32)
    if buffer_len == 0:
        return torch.where(lengths > max_response_len, -float(penalty_factor), 0.0)
    exceed = lengths - (max_response_len - buffer_len)
    return (-exceed / buffer_len * penalty_factor).clamp(min=-float(penalty_factor), max=0.0)
