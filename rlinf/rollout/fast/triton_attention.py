"""Split-K decode attention in Triton (CUDA only): one query token per slot, grouped-query.

Each program handles one (slot, KV head, chunk of ``CHUNK`` cached positions) and stops at the
slot's length, so the cache is read only up to each sequence's real length; the query heads of
a KV head share every K/V load. Chunks are merged by their log-sum-exp in a second kernel
(skipped when one chunk covers the whole length).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 512
BLOCK_N = 64


@triton.jit
def _attn_chunk_kernel(
    Q, K, V, Lens, Out, MidO, MidL, sm_scale,
    stride_qb, stride_qh,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_ob, stride_oh,
    num_heads,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, D: tl.constexpr,
    BLOCK: tl.constexpr, CHUNK_LEN: tl.constexpr, NUM_CHUNKS: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    c = tl.program_id(2)
    length = tl.load(Lens + b).to(tl.int32)
    start = c * CHUNK_LEN
    end = tl.minimum(start + CHUNK_LEN, length)
    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, D)
    heads = kvh * GROUP + offs_g
    gmask = offs_g < GROUP
    q = tl.load(
        Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
        mask=gmask[:, None],
        other=0.0,
    )
    m_i = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, D], dtype=tl.float32)
    k_base = K + b * stride_kb + kvh * stride_kh
    v_base = V + b * stride_vb + kvh * stride_vh
    for n0 in range(start, end, BLOCK):
        offs_n = n0 + tl.arange(0, BLOCK)
        nmask = offs_n < end
        k = tl.load(
            k_base + offs_n[:, None] * stride_kl + offs_d[None, :], mask=nmask[:, None], other=0.0
        )
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(nmask[None, :], s * sm_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            v_base + offs_n[:, None] * stride_vl + offs_d[None, :], mask=nmask[:, None], other=0.0
        )
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    if NUM_CHUNKS == 1:
        o = acc / l_i[:, None]
        tl.store(
            Out + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
            o.to(Out.dtype.element_ty),
            mask=gmask[:, None],
        )
    else:
        o = acc / tl.maximum(l_i, 1e-30)[:, None]
        lse = m_i + tl.log(l_i)  # -inf for an empty chunk
        row = (b * num_heads + heads) * NUM_CHUNKS + c
        tl.store(MidO + row[:, None] * D + offs_d[None, :], o, mask=gmask[:, None])
        tl.store(MidL + row, lse, mask=gmask)


@triton.jit
def _merge_kernel(
    MidO, MidL, Out, stride_ob, stride_oh, num_heads,
    D: tl.constexpr, NUM_CHUNKS: tl.constexpr, CHUNKS_PAD: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_c = tl.arange(0, CHUNKS_PAD)
    offs_d = tl.arange(0, D)
    cmask = offs_c < NUM_CHUNKS
    row = (b * num_heads + h) * NUM_CHUNKS + offs_c
    lse = tl.load(MidL + row, mask=cmask, other=float("-inf"))
    w = tl.exp(lse - tl.max(lse, 0))
    w = w / tl.sum(w, 0)
    o = tl.load(MidO + row[:, None] * D + offs_d[None, :], mask=cmask[:, None], other=0.0)
    out = tl.sum(o * w[:, None], 0)
    tl.store(Out + b * stride_ob + h * stride_oh + offs_d, out.to(Out.dtype.element_ty))


def triton_decode_attention(
    q_bhd: torch.Tensor,
    k_bgld: torch.Tensor,
    v_bgld: torch.Tensor,
    lengths_b: torch.Tensor,
    scale: float,
    chunk: int = CHUNK,
    block: int = BLOCK_N,
    num_warps: int = 4,
    num_stages: int = 2,
) -> torch.Tensor:
    """Attention of ``q_bhd`` [bs, H, D] over the first ``lengths_b[b]`` positions of
    ``k/v_bgld`` [bs, KV, L, D] (strided views of the cache are fine); returns [bs, H * D].
    ``chunk`` positions per program (split-K), ``block`` positions per inner step."""
    bs, heads, d = q_bhd.shape
    kv_heads, max_len = k_bgld.shape[1], k_bgld.shape[2]
    assert k_bgld.stride(-1) == 1 and v_bgld.stride(-1) == 1 and q_bhd.stride(-1) == 1
    assert d == triton.next_power_of_2(d), "head_dim must be a power of two"
    group = heads // kv_heads
    num_chunks = triton.cdiv(max_len, chunk)
    out = torch.empty(bs, heads, d, dtype=q_bhd.dtype, device=q_bhd.device)
    if num_chunks > 1:
        mid_o = torch.empty(bs * heads * num_chunks, d, dtype=torch.float32, device=q_bhd.device)
        mid_l = torch.empty(bs * heads * num_chunks, dtype=torch.float32, device=q_bhd.device)
    else:
        mid_o = mid_l = out
    _attn_chunk_kernel[(bs, kv_heads, num_chunks)](
        q_bhd, k_bgld, v_bgld, lengths_b, out, mid_o, mid_l, scale,
        q_bhd.stride(0), q_bhd.stride(1),
        k_bgld.stride(0), k_bgld.stride(1), k_bgld.stride(2),
        v_bgld.stride(0), v_bgld.stride(1), v_bgld.stride(2),
        out.stride(0), out.stride(1),
        heads,
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), D=d,
        BLOCK=block, CHUNK_LEN=chunk, NUM_CHUNKS=num_chunks,
        IEEE=q_bhd.dtype == torch.float32,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    if num_chunks > 1:
        _merge_kernel[(bs, heads)](
            mid_o, mid_l, out, out.stride(0), out.stride(1), heads,
            D=d, NUM_CHUNKS=num_chunks, CHUNKS_PAD=triton.next_power_of_2(num_chunks),
            num_warps=4,
        )  # fmt: skip
    return out.view(bs, heads * d)
