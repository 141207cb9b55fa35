"""Token sampling on the logits' device: greedy, temperature, top-k, top-p, with log-probs.

The log-prob returned for a token follows the engine convention (see ``base.py``):
``log_softmax(logits / T)[token]`` in fp32 with no top-k/top-p truncation.
"""

from __future__ import annotations

import torch

from rlinf.rollout.base import SamplingParams


def mask_top_k_top_p(scaled_bv: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Return ``scaled_bv`` [B, V] with tokens outside top-k, then outside the top-p mass, at -inf.

    Same order and tie rule as transformers' warpers: top-k keeps every token whose logit is at
    least the k-th largest; top-p keeps the smallest set of most likely tokens whose probability
    reaches ``top_p`` (always at least one).
    """
    out = scaled_bv
    vocab = out.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(out, top_k, dim=-1).values[:, -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(out, dim=-1, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cum <= (1.0 - top_p)
        remove_sorted[:, -1] = False  # keep the most likely token
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        out = out.masked_fill(remove, float("-inf"))
    return out


def sample_tokens(
    logits_bv: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row of ``logits_bv`` [B, V]; return (tokens [B] int64, logprobs [B] fp32).

    Sampling uses the exponential-race trick (``argmax(p / E)``, E ~ Exp(1)), which needs no
    host synchronisation, unlike ``torch.multinomial`` on some devices.
    """
    logits = logits_bv.float()
    if params.greedy:
        tokens = logits.argmax(dim=-1)
        scaled = logits
    else:
        scaled = logits / params.temperature if params.temperature != 1.0 else logits
        kept = mask_top_k_top_p(scaled, params.top_k, params.top_p)
        probs = kept.softmax(dim=-1)
        noise = torch.empty_like(probs).exponential_(generator=generator)
        noise.clamp_(min=torch.finfo(noise.dtype).tiny)  # a zero draw would give p / 0
        tokens = (probs / noise).argmax(dim=-1)
    logprobs = token_logprobs(scaled, tokens)
    return tokens, logprobs


def token_logprobs(scaled_bv: torch.Tensor, tokens_b: torch.Tensor) -> torch.Tensor:
    """``log_softmax(scaled_bv)[b, tokens_b[b]]`` in fp32 without materialising the full softmax."""
    scaled = scaled_bv.float()
    picked = scaled.gather(-1, tokens_b.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(scaled, dim=-1)
