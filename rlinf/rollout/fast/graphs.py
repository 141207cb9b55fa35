"""CUDA graphs of the decode step, one per (batch bucket, KV-length bucket), captured lazily.

Every graph reads the engine's persistent ``tokens``/``positions`` buffers and writes logits
into one shared buffer, so a replay costs one launch and no host synchronisation.
"""

from __future__ import annotations

import logging
import time

import torch

from rlinf.rollout.fast.kv_cache import KVCache
from rlinf.rollout.fast.model import FastCausalLM

logger = logging.getLogger(__name__)


def pow2_buckets(limit: int, start: int = 1) -> list[int]:
    """Powers of two from ``start`` below ``limit``, then ``limit`` itself."""
    out, b = [], start
    while b < limit:
        out.append(b)
        b *= 2
    out.append(limit)
    return out


def bucket_for(n: int, buckets: list[int]) -> int:
    """Smallest bucket >= n (buckets ascending, the last one is the cap)."""
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")


class DecodeRunner:
    """Runs ``FastCausalLM.decode`` for slots ``0..bs-1``, through CUDA graphs when enabled."""

    def __init__(
        self,
        model: FastCausalLM,
        cache: KVCache,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        attn_impl: str,
        use_graphs: bool,
    ) -> None:
        self.model = model
        self.cache = cache
        self.tokens = tokens
        self.positions = positions
        self.attn_impl = attn_impl
        self.use_graphs = use_graphs
        self.logits = torch.empty(
            cache.num_slots,
            model.spec.vocab_size,
            dtype=cache.k.dtype,
            device=cache.k.device,
        )
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._pool = None

    def __call__(self, bs: int, kv_len: int) -> torch.Tensor:
        """Logits [bs, V] of one decode step (writes the step's K/V into the cache)."""
        if not self.use_graphs:
            return self._eager(bs, kv_len)
        key = (bs, kv_len)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._capture(bs, kv_len)
            self._graphs[key] = graph
        graph.replay()
        return self.logits[:bs]

    def _eager(self, bs: int, kv_len: int) -> torch.Tensor:
        out = self.logits[:bs]
        self.model.decode(
            self.tokens[:bs], self.positions[:bs], self.cache, kv_len, self.attn_impl, out
        )
        return out

    def _capture(self, bs: int, kv_len: int) -> torch.cuda.CUDAGraph:
        # Warm-up writes the same K/V the real step will write (same token, same position),
        # so capturing in the middle of a generation changes nothing.
        t0 = time.perf_counter()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._eager(bs, kv_len)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self._eager(bs, kv_len)
        if self._pool is None:
            self._pool = graph.pool()
        logger.debug(
            "captured decode graph bs=%d kv_len=%d in %.3fs", bs, kv_len, time.perf_counter() - t0
        )
        return graph

    def num_graphs(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        """Drop every graph (their memory pool goes with them)."""
        self._graphs.clear()
        self._pool = None
