"""Pointwise pieces of the forward, in eager torch (the reference and the CPU path).

Each function keeps transformers' rounding points (fp32 norm, cast back, then the weight), so
results match the reference model; ``triton_ops`` has one fused kernel for each.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, computed in fp32 and cast back (transformers' rounding)."""
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def add_rms_norm(
    x_nh: torch.Tensor, residual_nh: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual): the residual add fused with the next norm."""
    if residual_nh is not None:
        x_nh = x_nh + residual_nh
    return rms_norm(x_nh, weight, eps), x_nh


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, rotate-half convention: ``x`` [N, H, D], ``cos``/``sin`` [N, 1, D]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def qkv_rope(
    qkv_nf: torch.Tensor,
    positions_n: torch.Tensor,
    cos_table: torch.Tensor,
    sin_table: torch.Tensor,
    q_norm: torch.Tensor | None,
    k_norm: torch.Tensor | None,
    num_heads: int,
    num_kv_heads: int,
    eps: float,
    cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused qkv [N, (H + 2 KV) * D] -> q [N, H, D], k and v [N, KV, D] (contiguous), with
    the optional per-head q/k RMSNorm (Qwen3) and RoPE at ``positions_n`` [N] from the
    ``cos/sin_table`` [L, D]. With ``cache`` = (k_cache [slots, KV, L, D], v_cache, rows [N]
    = ``slot * KV * L + position``), k and v are also written into the cache."""
    n = qkv_nf.shape[0]
    d = cos_table.shape[-1]
    x = qkv_nf.view(n, num_heads + 2 * num_kv_heads, d)
    q, k, v = x.split([num_heads, num_kv_heads, num_kv_heads], dim=1)
    if q_norm is not None:
        q = rms_norm(q, q_norm, eps)
        k = rms_norm(k, k_norm, eps)
    cos, sin = cos_table[positions_n].unsqueeze(1), sin_table[positions_n].unsqueeze(1)
    q, k, v = rotate(q, cos, sin), rotate(k, cos, sin), v.contiguous()
    if cache is not None:
        k_cache, v_cache, rows = cache
        cache_len = k_cache.shape[2]
        heads = torch.arange(num_kv_heads, device=rows.device) * cache_len
        index = (rows.unsqueeze(1) + heads).reshape(-1)
        k_cache.view(-1, d).index_copy_(0, index, k.reshape(-1, d))
        v_cache.view(-1, d).index_copy_(0, index, v.reshape(-1, d))
    return q, k, v


def silu_mul(gate_up_nf: torch.Tensor) -> torch.Tensor:
    """SwiGLU activation: silu(gate) * up for the fused [N, 2I] gate/up output."""
    gate, up = gate_up_nf.chunk(2, dim=-1)
    return F.silu(gate) * up


class FusedOps:
    """The forward's pointwise ops: hand-written Triton kernels (``triton_ops``) when
    ``use_triton``, else the eager functions above (CPU, or CUDA without Triton)."""

    def __init__(self, use_triton: bool) -> None:
        self.use_triton = use_triton
        if use_triton:
            from rlinf.rollout.fast import triton_ops

            self.add_rms_norm = triton_ops.add_rms_norm
            self.qkv_rope = triton_ops.qkv_rope
            self.silu_mul = triton_ops.silu_mul
        else:
            self.add_rms_norm = add_rms_norm
            self.qkv_rope = qkv_rope
            self.silu_mul = silu_mul


def triton_available(device: torch.device) -> bool:
    """Whether the Triton kernels can run: a CUDA device and an importable triton."""
    if device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        logger.info("triton not importable: the fast engine runs its pointwise ops eagerly")
        return False
    return True
