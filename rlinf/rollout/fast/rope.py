"""Rotary position embeddings: inverse frequencies for the scaled variants, cos/sin tables.

Formulas follow transformers' ``modeling_rope_utils`` so that positions rotate identically.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def _base_inv_freq(base: float, dim: int) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _llama3(inv_freq: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    factor = p["factor"]
    low, high = p["low_freq_factor"], p["high_freq_factor"]
    old_len = p["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    out = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, out)


def _yarn(base: float, dim: int, p: dict[str, Any], max_pos: int) -> tuple[torch.Tensor, float]:
    factor = p.get("factor")
    orig = p.get("original_max_position_embeddings") or max_pos
    if factor is None:
        factor = max_pos / orig

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attn = p.get("attention_factor")
    if attn is None:
        m, m_all = p.get("mscale"), p.get("mscale_all_dim")
        attn = float(mscale(factor, m) / mscale(factor, m_all)) if m and m_all else mscale(factor)
    beta_fast = p.get("beta_fast") or 32
    beta_slow = p.get("beta_slow") or 1

    def corr_dim(rot: float) -> float:
        return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extra, inter = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    extra_factor = 1 - ramp
    return inter * (1 - extra_factor) + extra * extra_factor, float(attn)


def rope_inv_freq(
    rope: dict[str, Any], head_dim: int, max_position_embeddings: int, max_seq_len: int
) -> tuple[torch.Tensor, float]:
    """Return (inv_freq [rot_dim / 2] fp32, attention_scaling) for a ``rope_parameters`` dict.

    ``dynamic`` NTK scaling depends on the running length; it is evaluated once at
    ``max_seq_len`` (exact whenever sequences stay within ``max_position_embeddings``).
    """
    rope_type = rope.get("rope_type", "default")
    base = float(rope.get("rope_theta", 10000.0))
    dim = int(head_dim * rope.get("partial_rotary_factor", 1.0))
    if dim != head_dim:
        raise ValueError(
            f"fast rollout engine needs partial_rotary_factor 1.0, got {dim / head_dim}; "
            "use rollout.backend: hf"
        )
    if rope_type == "default":
        return _base_inv_freq(base, dim), 1.0
    if rope_type == "linear":
        return _base_inv_freq(base, dim) / rope["factor"], 1.0
    if rope_type == "llama3":
        return _llama3(_base_inv_freq(base, dim), rope), 1.0
    if rope_type == "dynamic":
        seq = max(max_seq_len, max_position_embeddings)
        factor = rope["factor"]
        base = base * ((factor * seq / max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
        return _base_inv_freq(base, dim), 1.0
    if rope_type == "yarn":
        return _yarn(base, dim, rope, max_position_embeddings)
    raise ValueError(
        f"fast rollout engine does not support rope_type {rope_type!r} (supported: default, "
        "linear, dynamic, yarn, llama3); use rollout.backend: hf"
    )


def rope_tables(
    inv_freq: torch.Tensor, attention_scaling: float, max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (cos, sin), each [max_len, head_dim] fp32, for positions 0..max_len-1."""
    pos = torch.arange(max_len, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq.float())
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * attention_scaling, emb.sin() * attention_scaling


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [..., T, H, D] by ``cos``/``sin`` [..., T, 1, D] (rotate-half convention)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos + rotated * sin
