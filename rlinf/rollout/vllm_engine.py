"""Adapter to vLLM (``rollout.backend: vllm``, optional extra ``pip install rlinf[vllm]``).

Generation goes through ``vllm.LLM`` with token-id prompts. Not exercised by this repo's
tests (vLLM pins its own torch). Weight sync into vLLM is not wired: ``load_weights`` raises.
vLLM's ``processed_logprobs`` follow this repo's convention only when top-p and top-k are off.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from rlinf.rollout.base import GenerationOutput, RolloutEngine, SamplingParams


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(
            "rollout.backend: vllm needs vLLM installed: pip install rlinf[vllm] "
            "(or use rollout.backend: fast)"
        ) from exc
    return vllm


class VLLMEngine(RolloutEngine):
    """A ``vllm.LLM`` over a local checkpoint path; ``kwargs`` go to ``vllm.LLM``."""

    def __init__(self, model_or_path: Any, **kwargs: Any) -> None:
        vllm = _import_vllm()
        if not isinstance(model_or_path, str):
            raise ValueError("rollout.backend: vllm needs a local checkpoint path as the model")
        kwargs.setdefault("skip_tokenizer_init", True)
        kwargs.setdefault("enable_sleep_mode", True)
        kwargs.setdefault("logprobs_mode", "processed_logprobs")
        self._vllm = vllm
        self.llm = vllm.LLM(model=model_or_path, **kwargs)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> GenerationOutput:
        sp = self._vllm.SamplingParams(
            n=1,
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,
            stop_token_ids=list(params.stop_token_ids),
            ignore_eos=params.ignore_eos,
            seed=params.seed,
            logprobs=0,
            detokenize=False,
        )
        results = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        out = GenerationOutput()
        for r in results:
            c = r.outputs[0]
            toks = list(c.token_ids)
            out.token_ids.append(toks)
            out.logprobs.append([step[t].logprob for t, step in zip(toks, c.logprobs)])
            out.finish_reasons.append("stop" if c.finish_reason == "stop" else "length")
        return out

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        raise NotImplementedError(
            "weight sync into vLLM is not wired in this adapter; use rollout.backend: fast"
        )

    def sleep(self, level: int = 1) -> None:
        self.llm.sleep(level=level)

    def wake(self) -> None:
        self.llm.wake_up()
