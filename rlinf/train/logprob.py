"""Token log-probs and entropies from LM-head logits without float32 copies of ``[N, V]``.

With a vocabulary of 150k, the logits of one micro-batch are gigabytes: a plain
``logits.float().log_softmax(-1).gather(...)`` keeps a float32 copy for backward and runs
several float32 passes over it. :func:`token_logprobs` instead keeps only the (bf16) logits
and one float32 log-sum-exp per row; the float32 work happens a chunk of rows at a time, in
the forward and again in the backward, which writes the logits' gradient in their own dtype.
"""

from __future__ import annotations

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


class _TokenLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, tokens: Tensor, temperature: float, chunk: int) -> Tensor:
        n = logits.shape[0]
        dtype = compute_dtype(logits)
        lp = torch.empty(n, dtype=dtype, device=logits.device)
        lse = torch.empty(n, dtype=dtype, device=logits.device)
        for s in range(0, n, chunk):
            x, _ = _scaled(logits[s : s + chunk], temperature)
            lse[s : s + chunk] = torch.logsumexp(x, dim=-1)
            lp[s : s + chunk] = x.gather(-1, tokens[s : s + chunk, None]).squeeze(-1)
            del x
        lp.sub_(lse)
        ctx.save_for_backward(logits, tokens, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        return lp

    @staticmethod
    def backward(ctx, grad_lp: Tensor):
        logits, tokens, lse = ctx.saved_tensors
        t, chunk = ctx.temperature, ctx.chunk
        grad = torch.empty_like(logits)
        g = grad_lp.to(lse.dtype)
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
        return grad, None, None, None


def token_logprobs(
    logits: Tensor, tokens: Tensor, temperature: float = 1.0, chunk_rows: int | None = None
) -> Tensor:
    """``log_softmax(logits / temperature)[token]``, ``[...]`` for ``logits[..., V]``, in float32
    (float64 for float64 logits).

    Same values as :func:`rlinf.algorithms.logprobs_from_logits`; differentiable with respect to
    ``logits``, whose gradient comes back in their dtype. ``chunk_rows`` bounds the float32
    temporaries (default: 256 MiB worth of rows).
    """
    check_token_logits("token_logprobs", logits, tokens, temperature)
    v = logits.shape[-1]
    flat = logits.reshape(-1, v)
    idx = tokens.reshape(-1).long()
    if flat.shape[0] == 0:
        return logits.new_zeros(tokens.shape, dtype=compute_dtype(logits))
    chunk = _chunk_rows(flat.shape[0], v, chunk_rows)
    return _TokenLogProbs.apply(flat, idx, float(temperature), chunk).reshape(tokens.shape)


@torch.no_grad()
def token_entropy(
    logits: Tensor, temperature: float = 1.0, chunk_rows: int | None = None
) -> Tensor:
    """Entropy ``[...]`` of ``softmax(logits[..., V] / temperature)`` in float32, without grad
    (a metric); chunked like :func:`token_logprobs`."""
    v = logits.shape[-1]
    flat = logits.reshape(-1, v)
    out = torch.empty(flat.shape[0], dtype=compute_dtype(logits), device=logits.device)
    chunk = _chunk_rows(flat.shape[0], v, chunk_rows)
    for s in range(0, flat.shape[0], chunk):
        x, _ = _scaled(flat[s : s + chunk], temperature)
        logp = torch.log_softmax(x, dim=-1)
        p = logp.exp()
        # -inf logits (p = 0) contribute nothing
        out[s : s + chunk] = -(p * torch.where(p > 0, logp, 0.0)).sum(-1)
    return out.reshape(logits.shape[:-1])


__all__ = ["token_entropy", "token_logprobs"]
