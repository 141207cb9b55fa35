"""Token log-probs and entropies from LM-head logits without float32 copies of ``[N, V]``.

With a vocabulary of 150k, the logits of one micro-batch are gigabytes: a plain
``logits.float().log_softmax(-1).gather(...)`` keeps a float32 copy for backward and runs
several float32 passes over it. :func:`token_logprobs` instead keeps only the (bf16) logits
and one float32 log-sum-exp per row; the float32 work happens a chunk of rows at a time, in
the forward and again in the backward, which writes the logits' gradient in their own dtype.

``fused=True`` runs each chunk's forward and backward as ``torch.compile``d functions: one
kernel reads the chunk's logits once and writes its log-sum-exp (forward), or its gradient
(backward), with the float32 values only in registers. Same results to float32 rounding; the
first call of each pays the compilation.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from rlinf.algorithms.losses import check_token_logits, compute_dtype

CHUNK_ELEMENTS = 1 << 26  # float32 temporaries of one chunk: 256 MiB


def _chunk_rows(n_rows: int, vocab: int, chunk_rows: int | None) -> int:
    if chunk_rows is None:
        chunk_rows = CHUNK_ELEMENTS // max(1, vocab)
    return max(1, min(n_rows, chunk_rows))


def _scaled(rows: Tensor, temperature: float) -> tuple[Tensor, bool]:
    """``rows / temperature`` in the compute dtype, and whether it is a fresh tensor (writable)."""
    dtype = compute_dtype(rows)
    if temperature != 1.0:
        return rows.to(dtype) / temperature, True
    return rows.to(dtype), rows.dtype != dtype


def _chunk_forward(rows: Tensor, tokens: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """``(log p(token), log-sum-exp)`` of each row of ``rows / temperature``, in the compute
    dtype (eager, or compiled into one kernel)."""
    x, _ = _scaled(rows, temperature)
    lse = torch.logsumexp(x, dim=-1)
    return x.gather(-1, tokens[:, None]).squeeze(-1) - lse, lse


def _fused_backward(rows: Tensor, tokens: Tensor, lse: Tensor, g: Tensor, temperature: float):
    """``g * d log p(token) / d rows = g / t * (onehot(token) - softmax(rows / t))``, in the dtype
    of ``rows``; the one-hot is a comparison, so compiled, the chunk is one element-wise kernel."""
    x = rows.to(lse.dtype) / temperature
    cols = torch.arange(rows.shape[-1], device=rows.device)
    onehot = (cols[None, :] == tokens[:, None]).to(lse.dtype)
    grad = (onehot - torch.exp(x - lse[:, None])) * (g / temperature)[:, None]
    return grad.to(rows.dtype)


def _chunk_entropy(rows: Tensor, temperature: float) -> Tensor:
    """Entropy of each row's ``softmax(rows / temperature)`` (-inf logits contribute nothing)."""
    x, _ = _scaled(rows, temperature)
    logp = x - torch.logsumexp(x, dim=-1, keepdim=True)
    p = torch.exp(logp)
    return -(p * torch.where(p > 0, logp, 0.0)).sum(-1)


@functools.cache
def _compiled(fn):
    return torch.compile(fn, dynamic=True)


class _TokenLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, logits: Tensor, tokens: Tensor, temperature: float, chunk: int, fused: bool
    ) -> Tensor:
        n = logits.shape[0]
        dtype = compute_dtype(logits)
        lp = torch.empty(n, dtype=dtype, device=logits.device)
        lse = torch.empty(n, dtype=dtype, device=logits.device)
        fwd = _compiled(_chunk_forward) if fused else _chunk_forward
        for s in range(0, n, chunk):
            e = s + chunk
            lp[s:e], lse[s:e] = fwd(logits[s:e], tokens[s:e], temperature)
        ctx.save_for_backward(logits, tokens, lse)
        ctx.temperature, ctx.chunk, ctx.fused = temperature, chunk, fused
        return lp

    @staticmethod
    def backward(ctx, grad_lp: Tensor):
        logits, tokens, lse = ctx.saved_tensors
        t, chunk = ctx.temperature, ctx.chunk
        grad = torch.empty_like(logits)
        g = grad_lp.to(lse.dtype)
        if ctx.fused:
            bwd = _compiled(_fused_backward)
            for s in range(0, logits.shape[0], chunk):
                e = s + chunk
                grad[s:e] = bwd(logits[s:e], tokens[s:e], lse[s:e], g[s:e], t)
            return grad, None, None, None, None
        if t != 1.0:
            g = g / t  # d x / d logits = 1 / t
        for s in range(0, logits.shape[0], chunk):
            # d lp / d x = onehot(token) - softmax(x)
            x, fresh = _scaled(logits[s : s + chunk], t)
            p = x.sub_(lse[s : s + chunk, None]) if fresh else x - lse[s : s + chunk, None]
            p.exp_()
            gs = g[s : s + chunk, None]
            p.mul_(-gs)
            p.scatter_add_(-1, tokens[s : s + chunk, None], gs)
            grad[s : s + chunk] = p
            del x, p
        return grad, None, None, None, None


def token_logprobs(
    logits: Tensor,
    tokens: Tensor,
    temperature: float = 1.0,
    chunk_rows: int | None = None,
    fused: bool = False,
) -> Tensor:
    """``log_softmax(logits / temperature)[token]``, ``[...]`` for ``logits[..., V]``, in float32
    (float64 for float64 logits).

    Same values as :func:`rlinf.algorithms.logprobs_from_logits`; differentiable with respect to
    ``logits``, whose gradient comes back in their dtype. ``chunk_rows`` bounds the float32
    temporaries (default: 256 MiB worth of rows); ``fused`` compiles each chunk's work into one
    kernel.
    """
    check_token_logits("token_logprobs", logits, tokens, temperature)
    v = logits.shape[-1]
    flat = logits.reshape(-1, v)
    idx = tokens.reshape(-1).long()
    if flat.shape[0] == 0:
        return logits.new_zeros(tokens.shape, dtype=compute_dtype(logits))
    chunk = _chunk_rows(flat.shape[0], v, chunk_rows)
    return _TokenLogProbs.apply(flat, idx, float(temperature), chunk, fused).reshape(tokens.shape)


@torch.no_grad()
def token_entropy(
    logits: Tensor, temperature: float = 1.0, chunk_rows: int | None = None, fused: bool = False
) -> Tensor:
    """Entropy ``[...]`` of ``softmax(logits[..., V] / temperature)`` in float32, without grad
    (a metric); chunked (and ``fused``) like :func:`token_logprobs`."""
    v = logits.shape[-1]
    flat = logits.reshape(-1, v)
    out = torch.empty(flat.shape[0], dtype=compute_dtype(logits), device=logits.device)
    chunk = _chunk_rows(flat.shape[0], v, chunk_rows)
    ent = _compiled(_chunk_entropy) if fused else _chunk_entropy
    for s in range(0, flat.shape[0], chunk):
        out[s : s + chunk] = ent(flat[s : s + chunk], temperature)
    return out.reshape(logits.shape[:-1])


__all__ = ["token_entropy", "token_logprobs"]
