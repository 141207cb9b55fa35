"""A preallocated KV cache: one fixed-length region per sequence slot.

Layout ``[layers, slots, kv_heads, max_seq_len, head_dim]`` for K and for V, so that the
decode step reads ``cache[layer, :bs, :, :L]`` as a strided view (no gather, no copy) and
writes one position per slot by row index (static shapes, CUDA-graph safe).
"""

from __future__ import annotations

import torch

from rlinf.rollout.fast.spec import ModelSpec


class KVCache:
    """K and V tensors for ``num_slots`` sequences of up to ``max_seq_len`` tokens."""

    def __init__(
        self,
        spec: ModelSpec,
        num_slots: int,
        max_seq_len: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (spec.num_layers, num_slots, spec.num_kv_heads, max_seq_len, spec.head_dim)
        # Zeros, not empty: masked positions are multiplied by a zero weight, and 0 * NaN
        # from uninitialised memory would poison the output.
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.num_slots = num_slots
        self.max_seq_len = max_seq_len
        self.num_kv_heads = spec.num_kv_heads
        self.head_dim = spec.head_dim

    @staticmethod
    def bytes_per_slot(spec: ModelSpec, max_seq_len: int, dtype: torch.dtype) -> int:
        elem = torch.empty((), dtype=dtype).element_size()
        return spec.kv_bytes_per_token(elem) * max_seq_len

    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def decode_rows(self, positions_b: torch.Tensor) -> torch.Tensor:
        """Row [bs] of KV head 0 of slots ``0..bs-1`` at ``positions_b`` [bs] in a layer's
        ``view(-1, head_dim)``; KV head h is ``h * max_seq_len`` rows further."""
        slots = torch.arange(positions_b.shape[0], device=positions_b.device)
        return slots * (self.num_kv_heads * self.max_seq_len) + positions_b

    def write_prefill(
        self, layer: int, slots_b: torch.Tensor, k_bhld: torch.Tensor, v_bhld: torch.Tensor
    ) -> None:
        """Write positions ``0..L-1`` of slots ``slots_b`` [B]: ``k_bhld`` [B, kv_heads, L, D]."""
        length = k_bhld.shape[2]
        self.k[layer, :, :, :length].index_copy_(0, slots_b, k_bhld)
        self.v[layer, :, :, :length].index_copy_(0, slots_b, v_bhld)

    def view(self, layer: int, bs: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of slots ``0..bs-1``, positions ``0..length-1``: [bs, kv_heads, length, D]."""
        return self.k[layer, :bs, :, :length], self.v[layer, :bs, :, :length]

    def zero_(self) -> None:
        self.k.zero_()
        self.v.zero_()
