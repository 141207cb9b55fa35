"""A compact decoder-only transformer (Llama / Qwen2 / Qwen3) for generation.

Weights are fused where one matmul can do the work of several: ``qkv`` holds q/k/v projections
stacked on the output dimension, ``gate_up`` holds the gate and up projections. Two forwards:
``prefill`` (right-padded prompts, causal SDPA, writes the KV cache) and ``decode`` (one token
per slot against the cache, static shapes so it can be captured in a CUDA graph). The residual
add is carried into the next norm (``add_rms_norm``) so each pair becomes one fused kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rlinf.rollout.fast.attention import decode_attention, decode_mask
from rlinf.rollout.fast.kv_cache import KVCache
from rlinf.rollout.fast.ops import FusedOps
from rlinf.rollout.fast.rope import rope_inv_freq, rope_tables
from rlinf.rollout.fast.spec import ModelSpec


class FastLayer(nn.Module):
    """One decoder layer's parameters (names follow the fused layout, see ``weights.py``)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        h = spec.hidden_size
        self.input_layernorm = nn.Parameter(torch.ones(h))
        self.qkv = nn.Linear(h, spec.q_size + 2 * spec.kv_size, bias=spec.qkv_bias)
        if spec.qk_norm:
            self.q_norm = nn.Parameter(torch.ones(spec.head_dim))
            self.k_norm = nn.Parameter(torch.ones(spec.head_dim))
        self.o_proj = nn.Linear(spec.q_size, h, bias=spec.o_bias)
        self.post_attention_layernorm = nn.Parameter(torch.ones(h))
        self.gate_up = nn.Linear(h, 2 * spec.intermediate_size, bias=spec.mlp_bias)
        self.down_proj = nn.Linear(spec.intermediate_size, h, bias=spec.mlp_bias)


class FastCausalLM(nn.Module):
    """Embedding, decoder layers, final norm, LM head (tied to the embedding when the config
    says so); plus RoPE tables for positions ``0..max_seq_len-1``."""

    def __init__(self, spec: ModelSpec, max_seq_len: int, ops: FusedOps | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.max_seq_len = max_seq_len
        self.ops = ops or FusedOps(use_triton=False)
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(FastLayer(spec) for _ in range(spec.num_layers))
        self.norm = nn.Parameter(torch.ones(spec.hidden_size))
        if not spec.tie_word_embeddings:
            self.lm_head = nn.Parameter(torch.empty(spec.vocab_size, spec.hidden_size))
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.scale = spec.head_dim**-0.5

    def lm_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.spec.tie_word_embeddings else self.lm_head

    def init_rope_tables(self, device: torch.device, dtype: torch.dtype) -> None:
        """Compute cos/sin for positions ``0..max_seq_len-1`` in fp32, stored in the model
        dtype (transformers casts them to the activation dtype before rotating)."""
        s = self.spec
        inv_freq, scaling = rope_inv_freq(
            s.rope, s.head_dim, s.max_position_embeddings, self.max_seq_len
        )
        cos, sin = rope_tables(inv_freq, scaling, self.max_seq_len)
        self.rope_cos = cos.to(device=device, dtype=dtype)
        self.rope_sin = sin.to(device=device, dtype=dtype)

    def _qkv(
        self,
        layer: FastLayer,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        positions: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q [N, H, D], k [N, KV, D], v [N, KV, D], residual [N, hidden]) for one layer;
        with ``cache`` (k_cache, v_cache, rows) k and v also go into the cache."""
        s = self.spec
        h, residual = self.ops.add_rms_norm(x, residual, layer.input_layernorm, s.rms_norm_eps)
        q, k, v = self.ops.qkv_rope(
            layer.qkv(h),
            positions,
            self.rope_cos,
            self.rope_sin,
            getattr(layer, "q_norm", None),
            getattr(layer, "k_norm", None),
            s.num_heads,
            s.num_kv_heads,
            s.rms_norm_eps,
            cache,
        )
        return q, k, v, residual

    def _mlp(
        self, layer: FastLayer, attn_nq: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention output projection, then the MLP; returns (mlp output, residual)."""
        x = layer.o_proj(attn_nq)
        h, residual = self.ops.add_rms_norm(
            x, residual, layer.post_attention_layernorm, self.spec.rms_norm_eps
        )
        return layer.down_proj(self.ops.silu_mul(layer.gate_up(h))), residual

    def _logits(
        self, x: torch.Tensor, residual: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        h, _ = self.ops.add_rms_norm(x, residual, self.norm, self.spec.rms_norm_eps)
        if out is None:
            return F.linear(h, self.lm_weight())
        return torch.matmul(h, self.lm_weight().t(), out=out)

    @torch.inference_mode()
    def prefill(
        self,
        tokens_bl: torch.Tensor,
        lengths_b: torch.Tensor,
        slots_b: torch.Tensor,
        cache: KVCache,
    ) -> torch.Tensor:
        """Run right-padded prompts ``tokens_bl`` [B, L] (true lengths ``lengths_b`` [B]), write
        their K/V into cache slots ``slots_b`` [B]; return last-token logits [B, V].

        Right padding keeps causal attention exact for every real position, so the causal
        (flash) SDPA kernel applies with no mask.
        """
        s = self.spec
        b, length = tokens_bl.shape
        n = b * length
        x = self.embed_tokens(tokens_bl.reshape(-1))
        residual = None
        positions = torch.arange(length, device=x.device).repeat(b)
        groups = s.num_heads // s.num_kv_heads
        for i, layer in enumerate(self.layers):
            q, k, v, residual = self._qkv(layer, x, residual, positions)
            q = q.view(b, length, s.num_heads, s.head_dim).transpose(1, 2)
            k = k.view(b, length, s.num_kv_heads, s.head_dim).transpose(1, 2)
            v = v.view(b, length, s.num_kv_heads, s.head_dim).transpose(1, 2)
            cache.write_prefill(i, slots_b, k, v)
            if groups > 1:
                k = k.repeat_interleave(groups, dim=1)
                v = v.repeat_interleave(groups, dim=1)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
            x, residual = self._mlp(layer, o.transpose(1, 2).reshape(n, s.q_size), residual)
        last = torch.arange(b, device=x.device) * length + (lengths_b - 1)
        return self._logits(x[last], residual[last])

    @torch.inference_mode()
    def decode(
        self,
        tokens_b: torch.Tensor,
        positions_b: torch.Tensor,
        cache: KVCache,
        kv_len: int,
        attn_impl: str = "sdpa",
        logits_out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One decode step for slots ``0..bs-1``: input token ``tokens_b`` [bs] at
        ``positions_b`` [bs]; attends over cache positions ``< kv_len`` that are ``<=`` the
        slot's position. Writes the new K/V; returns logits [bs, V] in the model dtype
        (written into ``logits_out`` when given, so CUDA graphs can share one buffer)."""
        bs = tokens_b.shape[0]
        x = self.embed_tokens(tokens_b)
        residual = None
        rows = cache.decode_rows(positions_b)
        lengths = positions_b + 1
        mask = decode_mask(lengths, kv_len, x.dtype) if attn_impl != "triton" else None
        for i, layer in enumerate(self.layers):
            q, _, _, residual = self._qkv(
                layer, x, residual, positions_b, (cache.k[i], cache.v[i], rows)
            )
            k_all, v_all = cache.view(i, bs, kv_len)
            o = decode_attention(q, k_all, v_all, mask, self.scale, attn_impl, lengths)
            x, residual = self._mlp(layer, o, residual)
        return self._logits(x, residual, logits_out)
