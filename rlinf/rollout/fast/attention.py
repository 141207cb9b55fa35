"""Decode-time attention of one query token per slot over that slot's cached K/V.

Grouped-query attention without expanding K/V: the query heads that share a KV head are laid
out as the "query length" dimension, so K and V are read once per KV head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DECODE_ATTN_IMPLS = ("sdpa", "matmul", "triton")


def decode_mask(lengths_b: torch.Tensor, kv_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [bs, 1, 1, kv_len]: 0 where position < length, -inf elsewhere."""
    pos = torch.arange(kv_len, device=lengths_b.device)
    keep = pos.unsqueeze(0) < lengths_b.unsqueeze(1)
    mask = torch.zeros(keep.shape, dtype=dtype, device=lengths_b.device)
    return mask.masked_fill_(~keep, float("-inf")).view(-1, 1, 1, kv_len)


def decode_attention(
    q_bhd: torch.Tensor,
    k_bgld: torch.Tensor,
    v_bgld: torch.Tensor,
    mask_b11l: torch.Tensor | None,
    scale: float,
    impl: str = "sdpa",
    lengths_b: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of ``q_bhd`` [bs, heads, D] over ``k/v_bgld`` [bs, kv_heads, L, D]; returns
    [bs, heads * D]. "sdpa"/"matmul" take the additive ``mask_b11l``; "triton" (CUDA) takes
    ``lengths_b`` [bs] and reads each slot's cache only up to its length."""
    if impl == "triton":
        from rlinf.rollout.fast.triton_attention import triton_decode_attention

        return triton_decode_attention(q_bhd, k_bgld, v_bgld, lengths_b, scale)
    bs, heads, d = q_bhd.shape
    kv_heads = k_bgld.shape[1]
    q = q_bhd.view(bs, kv_heads, heads // kv_heads, d)
    if impl == "sdpa":
        o = F.scaled_dot_product_attention(q, k_bgld, v_bgld, attn_mask=mask_b11l, scale=scale)
    elif impl == "matmul":
        scores = torch.matmul(q, k_bgld.transpose(-1, -2)).float() * scale + mask_b11l
        o = torch.matmul(scores.softmax(dim=-1).to(v_bgld.dtype), v_bgld)
    else:
        raise ValueError(f"decode attention impl must be one of {DECODE_ATTN_IMPLS}, got {impl!r}")
    return o.reshape(bs, heads * d)
