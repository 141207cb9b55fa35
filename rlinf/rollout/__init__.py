"""Rollout engines behind one interface (``base.RolloutEngine``) and a factory to build them.

Backends: ``hf`` (transformers, any causal LM), ``fast`` (built in, torch only, Llama / Qwen2
/ Qwen3), and the optional extras ``vllm`` and ``sglang`` (imported only when asked for).
"""

from __future__ import annotations

from typing import Any

from rlinf.rollout.base import GenerationOutput, RolloutEngine, SamplingParams

BACKENDS = ("hf", "huggingface", "fast", "vllm", "sglang")

__all__ = ["BACKENDS", "GenerationOutput", "RolloutEngine", "SamplingParams", "build_engine"]


def build_engine(backend: str, model_or_path: Any, **kwargs: Any) -> RolloutEngine:
    """Build the rollout engine named by ``backend`` for a model object, local path or config.

    ``kwargs`` go to the engine's constructor (see ``HFEngine``, ``FastEngine``).
    """
    name = backend.lower()
    if name in ("hf", "huggingface"):
        from rlinf.rollout.hf_engine import HFEngine

        return HFEngine(model_or_path, **kwargs)
    if name == "fast":
        from rlinf.rollout.fast.engine import FastEngine

        return FastEngine(model_or_path, **kwargs)
    if name == "vllm":
        from rlinf.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(model_or_path, **kwargs)
    if name == "sglang":
        from rlinf.rollout.sglang_engine import SGLangEngine

        return SGLangEngine(model_or_path, **kwargs)
    raise ValueError(f"rollout.backend must be one of {BACKENDS}, got {backend!r}")
