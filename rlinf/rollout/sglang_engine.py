"""Adapter to SGLang (``rollout.backend: sglang``, optional extra ``pip install rlinf[sglang]``).

Generation goes through ``sglang.Engine`` with token-id prompts. Not exercised by this repo's
tests (SGLang pins its own torch). Weight sync into SGLang is not wired: ``load_weights``
raises. SGLang's returned log-probs are not guaranteed to follow this repo's convention.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from rlinf.rollout.base import GenerationOutput, RolloutEngine, SamplingParams


def _import_sglang() -> Any:
    try:
        import sglang
    except ImportError as exc:
        raise ImportError(
            "rollout.backend: sglang needs SGLang installed: pip install rlinf[sglang] "
            "(or use rollout.backend: fast)"
        ) from exc
    return sglang


class SGLangEngine(RolloutEngine):
    """An ``sglang.Engine`` over a local checkpoint path; ``kwargs`` go to ``sglang.Engine``."""

    def __init__(self, model_or_path: Any, **kwargs: Any) -> None:
        sglang = _import_sglang()
        if not isinstance(model_or_path, str):
            raise ValueError("rollout.backend: sglang needs a local checkpoint path as the model")
        kwargs.setdefault("skip_tokenizer_init", True)
        self.engine = sglang.Engine(model_path=model_or_path, **kwargs)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> GenerationOutput:
        sp = {
            "max_new_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k if params.top_k > 0 else -1,
            "stop_token_ids": list(params.stop_token_ids),
            "ignore_eos": params.ignore_eos,
        }
        results = self.engine.generate(input_ids=prompts, sampling_params=sp, return_logprob=True)
        out = GenerationOutput()
        for r in results:
            meta = r["meta_info"]
            out.token_ids.append(list(r["output_ids"]))
            out.logprobs.append([float(x[0]) for x in meta["output_token_logprobs"]])
            reason = (meta.get("finish_reason") or {}).get("type")
            out.finish_reasons.append("stop" if reason == "stop" else "length")
        return out

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        raise NotImplementedError(
            "weight sync into SGLang is not wired in this adapter; use rollout.backend: fast"
        )

    def sleep(self, level: int = 1) -> None:
        self.engine.release_memory_occupation()

    def wake(self) -> None:
        self.engine.resume_memory_occupation()
