"""Hand-written Triton kernels for the fast engine's pointwise work (CUDA only).

Each kernel reproduces transformers' bf16 rounding points (round after every op that rounds
in the reference), so fused results equal the unfused ones up to fp32 reassociation:
- ``add_rms_norm``: residual add and RMSNorm in one pass;
- ``qkv_rope``: split the fused qkv output, optional per-head q/k RMSNorm (Qwen3), RoPE from
  the cos/sin tables by position, and (decode) the K/V cache write;
- ``silu_mul``: SwiGLU activation;
- ``sample``: Gumbel-max sampling (or argmax) with the untruncated log-prob, random numbers
  drawn in the kernel, one read of the logits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rms_norm_kernel(
    X, R, W, Out, ROut, stride_x, stride_r, stride_o, stride_ro, H, eps,
    HAS_RES: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < H
    x = tl.load(X + row * stride_x + offs, mask=mask, other=0.0)
    dt = x.dtype
    x = x.to(tl.float32)
    if HAS_RES:
        r = tl.load(R + row * stride_r + offs, mask=mask, other=0.0).to(tl.float32)
        xs = (x + r).to(dt)
        tl.store(ROut + row * stride_ro + offs, xs, mask=mask)
        x = xs.to(tl.float32)
    var = tl.sum(x * x, axis=0) / H
    y = (x * tl.rsqrt(var + eps)).to(dt).to(tl.float32)
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Out + row * stride_o + offs, (y * w).to(dt), mask=mask)


def add_rms_norm(
    x_nh: torch.Tensor, residual_nh: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual); see ``ops.add_rms_norm``."""
    n, h = x_nh.shape
    assert x_nh.stride(-1) == 1 and (residual_nh is None or residual_nh.stride(-1) == 1)
    out = torch.empty_like(x_nh)
    res_out = torch.empty_like(x_nh) if residual_nh is not None else x_nh
    r = residual_nh if residual_nh is not None else x_nh
    block = triton.next_power_of_2(h)
    _add_rms_norm_kernel[(n,)](
        x_nh, r, weight, out, res_out,
        x_nh.stride(0), r.stride(0), out.stride(0), res_out.stride(0), h, eps,
        HAS_RES=residual_nh is not None, BLOCK=block, num_warps=max(1, min(8, block // 256)),
    )  # fmt: skip
    return out, res_out


@triton.jit
def _silu_mul_kernel(GU, Out, stride_gu, stride_o, inter, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < inter
    g = tl.load(GU + row * stride_gu + offs, mask=mask, other=0.0)
    dt = g.dtype
    g = g.to(tl.float32)
    u = tl.load(GU + row * stride_gu + inter + offs, mask=mask, other=0.0).to(tl.float32)
    s = (g * tl.sigmoid(g)).to(dt).to(tl.float32)
    tl.store(Out + row * stride_o + offs, (s * u).to(dt), mask=mask)


def silu_mul(gate_up_nf: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for the fused [N, 2I] gate/up output; returns [N, I]."""
    n, two_i = gate_up_nf.shape
    inter = two_i // 2
    out = torch.empty(n, inter, dtype=gate_up_nf.dtype, device=gate_up_nf.device)
    block = 1024
    _silu_mul_kernel[(n, triton.cdiv(inter, block))](
        gate_up_nf, out, gate_up_nf.stride(0), out.stride(0), inter, BLOCK=block, num_warps=4
    )
    return out


@triton.jit
def _qkv_rope_kernel(
    QKV, Pos, Cos, Sin, QN, KN, Q, K, V, CacheK, CacheV, CacheRow,
    stride_qkv, num_heads, num_kv, cache_len, eps,
    D: tl.constexpr, QK_NORM: tl.constexpr, WRITE_CACHE: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    half: tl.constexpr = D // 2
    offs = tl.arange(0, half)
    base = QKV + n * stride_qkv + h * D
    x1 = tl.load(base + offs)
    dt = x1.dtype
    x1 = x1.to(tl.float32)
    x2 = tl.load(base + half + offs).to(tl.float32)
    if h < num_heads + num_kv:
        if QK_NORM:
            if h < num_heads:
                w1 = tl.load(QN + offs).to(tl.float32)
                w2 = tl.load(QN + half + offs).to(tl.float32)
            else:
                w1 = tl.load(KN + offs).to(tl.float32)
                w2 = tl.load(KN + half + offs).to(tl.float32)
            inv = tl.rsqrt((tl.sum(x1 * x1, axis=0) + tl.sum(x2 * x2, axis=0)) / D + eps)
            x1 = ((x1 * inv).to(dt).to(tl.float32) * w1).to(dt).to(tl.float32)
            x2 = ((x2 * inv).to(dt).to(tl.float32) * w2).to(dt).to(tl.float32)
        pos = tl.load(Pos + n).to(tl.int64)
        c1 = tl.load(Cos + pos * D + offs).to(tl.float32)
        c2 = tl.load(Cos + pos * D + half + offs).to(tl.float32)
        s1 = tl.load(Sin + pos * D + offs).to(tl.float32)
        s2 = tl.load(Sin + pos * D + half + offs).to(tl.float32)
        o1 = ((x1 * c1).to(dt).to(tl.float32) + (-x2 * s1).to(dt).to(tl.float32)).to(dt)
        o2 = ((x2 * c2).to(dt).to(tl.float32) + (x1 * s2).to(dt).to(tl.float32)).to(dt)
        if h < num_heads:
            dst = Q + (n * num_heads + h) * D
        else:
            dst = K + (n * num_kv + (h - num_heads)) * D
            if WRITE_CACHE:
                row = tl.load(CacheRow + n) + (h - num_heads) * cache_len
                tl.store(CacheK + row * D + offs, o1)
                tl.store(CacheK + row * D + half + offs, o2)
    else:
        o1 = x1.to(dt)
        o2 = x2.to(dt)
        dst = V + (n * num_kv + (h - num_heads - num_kv)) * D
        if WRITE_CACHE:
            row = tl.load(CacheRow + n) + (h - num_heads - num_kv) * cache_len
            tl.store(CacheV + row * D + offs, o1)
            tl.store(CacheV + row * D + half + offs, o2)
    tl.store(dst + offs, o1)
    tl.store(dst + half + offs, o2)


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
    """Split fused qkv [N, (H + 2KV) * D] into q [N, H, D], k and v [N, KV, D] with q/k norm
    (when given) and RoPE at ``positions_n`` [N] from ``cos/sin_table`` [L, D]. With ``cache``
    = (k_cache [slots, KV, L, D], v_cache, rows [N]: ``slot * KV * L + position``), k and v
    are also written into the cache."""
    n = qkv_nf.shape[0]
    d = cos_table.shape[-1]
    assert qkv_nf.stride(-1) == 1 and cos_table.is_contiguous()
    dev, dt = qkv_nf.device, qkv_nf.dtype
    q = torch.empty(n, num_heads, d, dtype=dt, device=dev)
    k = torch.empty(n, num_kv_heads, d, dtype=dt, device=dev)
    v = torch.empty(n, num_kv_heads, d, dtype=dt, device=dev)
    ck, cv, rows = cache if cache is not None else (k, v, positions_n)
    cache_len = ck.shape[2] if cache is not None else 0
    qn = q_norm if q_norm is not None else cos_table
    kn = k_norm if k_norm is not None else cos_table
    _qkv_rope_kernel[(n, num_heads + 2 * num_kv_heads)](
        qkv_nf, positions_n, cos_table, sin_table, qn, kn, q, k, v, ck, cv, rows,
        qkv_nf.stride(0), num_heads, num_kv_heads, cache_len, eps,
        D=d, QK_NORM=q_norm is not None, WRITE_CACHE=cache is not None, num_warps=1,
    )  # fmt: skip
    return q, k, v


@triton.jit
def _sample_update(Logits, row, stride_l, vocab, inv_t, base, u, m, s, g, gi,
                   QBLOCK: tl.constexpr, GREEDY: tl.constexpr):  # fmt: skip
    """Fold logits ``base .. base + QBLOCK`` into per-lane running state: max ``m``, sum-exp
    ``s`` (relative to ``m``), best score ``g`` and its index ``gi``; ``u`` are the draws."""
    offs = base + tl.arange(0, QBLOCK)
    mask = offs < vocab
    x = tl.load(Logits + row * stride_l + offs, mask=mask, other=float("-inf"))
    x = x.to(tl.float32) * inv_t
    m_new = tl.maximum(m, x)
    live = m_new > float("-inf")
    s = tl.where(live, s * tl.exp(m - m_new) + tl.exp(x - m_new), 0.0)
    if GREEDY:
        score = x
    else:
        u = tl.minimum(u, 0.99999994)  # the fp32 grid tops out just below 1
        score = tl.where(mask, x - tl.log(-tl.log(u)), float("-inf"))  # Gumbel noise
    take = score > g  # strict: each lane keeps its first (lowest-index) best
    return m_new, s, tl.where(take, score, g), tl.where(take, offs, gi)


@triton.jit
def _sample_partial_kernel(
    Logits, stride_l, vocab, inv_t, seed, PM, PS, PG, PI, num_splits, blocks_per_row,
    SPLIT: tl.constexpr, QBLOCK: tl.constexpr, GREEDY: tl.constexpr,
):  # fmt: skip
    # Each step covers 4 * QBLOCK logits with one Philox call per 4 of them (rand4x); state
    # stays per lane and is reduced across lanes once at the end.
    row = tl.program_id(0).to(tl.int64)
    sp = tl.program_id(1)
    q = tl.arange(0, QBLOCK)
    m = tl.full([QBLOCK], float("-inf"), dtype=tl.float32)
    s = tl.zeros([QBLOCK], dtype=tl.float32)
    g = tl.full([QBLOCK], float("-inf"), dtype=tl.float32)
    gi = tl.zeros([QBLOCK], dtype=tl.int32)
    for start in range(sp * SPLIT, (sp + 1) * SPLIT, 4 * QBLOCK):
        if GREEDY:
            u0 = tl.zeros([QBLOCK], dtype=tl.float32)
            u1 = u0
            u2 = u0
            u3 = u0
        else:
            counter = (row * blocks_per_row + start // (4 * QBLOCK)) * QBLOCK + q
            u0, u1, u2, u3 = tl.rand4x(seed, counter.to(tl.int32))
        m, s, g, gi = _sample_update(
            Logits, row, stride_l, vocab, inv_t, start, u0, m, s, g, gi, QBLOCK, GREEDY
        )
        m, s, g, gi = _sample_update(
            Logits, row, stride_l, vocab, inv_t, start + QBLOCK, u1, m, s, g, gi, QBLOCK, GREEDY
        )
        m, s, g, gi = _sample_update(
            Logits, row, stride_l, vocab, inv_t, start + 2 * QBLOCK, u2, m, s, g, gi,
            QBLOCK, GREEDY,
        )  # fmt: skip
        m, s, g, gi = _sample_update(
            Logits, row, stride_l, vocab, inv_t, start + 3 * QBLOCK, u3, m, s, g, gi,
            QBLOCK, GREEDY,
        )  # fmt: skip
    mm = tl.max(m, axis=0)
    ss = tl.sum(tl.where(m > float("-inf"), s * tl.exp(m - mm), 0.0), axis=0)
    gg = tl.max(g, axis=0)
    best_i = tl.min(tl.where(g == gg, gi, 2147483647), axis=0)
    out = row * num_splits + sp
    tl.store(PM + out, mm)
    tl.store(PS + out, ss)
    tl.store(PG + out, gg)
    tl.store(PI + out, best_i)


@triton.jit
def _sample_final_kernel(
    Logits, stride_l, inv_t, PM, PS, PG, PI, Tok, LP, num_splits, SPLITS_PAD: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, SPLITS_PAD)
    mask = offs < num_splits
    m = tl.load(PM + row * num_splits + offs, mask=mask, other=float("-inf"))
    s = tl.load(PS + row * num_splits + offs, mask=mask, other=0.0)
    g = tl.load(PG + row * num_splits + offs, mask=mask, other=float("-inf"))
    idx = tl.load(PI + row * num_splits + offs, mask=mask, other=0)
    mm = tl.max(m, axis=0)
    lse = mm + tl.log(tl.sum(tl.where(mask, s * tl.exp(m - mm), 0.0), axis=0))
    _, j = tl.max(g, axis=0, return_indices=True)
    tok = tl.sum(tl.where(offs == j, idx, 0), axis=0)
    x = tl.load(Logits + row * stride_l + tok).to(tl.float32) * inv_t
    tl.store(Tok + row, tok.to(tl.int64))
    tl.store(LP + row, x - lse)


def sample(
    logits_bv: torch.Tensor, temperature: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [B] int64, log_softmax(logits / T)[token] [B] fp32). ``temperature`` 0 is
    greedy (log-probs at T = 1); otherwise Gumbel-max sampling with Philox noise from ``seed``
    (one draw per (row, token), so the same seed gives the same tokens)."""
    b, vocab = logits_bv.shape
    dev = logits_bv.device
    greedy = temperature == 0.0
    inv_t = 1.0 if greedy else 1.0 / temperature
    qblock = 256
    step = 4 * qblock
    split = step * max(1, triton.cdiv(triton.cdiv(vocab, 16), step))  # <= 16 splits per row
    num_splits = triton.cdiv(vocab, split)
    pm = torch.empty(b, num_splits, dtype=torch.float32, device=dev)
    ps, pg = torch.empty_like(pm), torch.empty_like(pm)
    pi = torch.empty(b, num_splits, dtype=torch.int32, device=dev)
    _sample_partial_kernel[(b, num_splits)](
        logits_bv, logits_bv.stride(0), vocab, inv_t, seed, pm, ps, pg, pi, num_splits,
        num_splits * split // step,
        SPLIT=split, QBLOCK=qblock, GREEDY=greedy, num_warps=4,
    )  # fmt: skip
    tok = torch.empty(b, dtype=torch.long, device=dev)
    lp = torch.empty(b, dtype=torch.float32, device=dev)
    _sample_final_kernel[(b,)](
        logits_bv, logits_bv.stride(0), inv_t, pm, ps, pg, pi, tok, lp, num_splits,
        SPLITS_PAD=triton.next_power_of_2(num_splits), num_warps=1,
    )  # fmt: skip
    return tok, lp
