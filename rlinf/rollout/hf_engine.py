"""The transformers rollout engine (``rollout.backend: hf``): slow but runs any causal LM.

Prompts are left-padded and decoded with the model's own KV cache in a plain loop, sampling
with the shared ``sampling.sample_tokens`` so that log-probs follow the engine convention.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch

from rlinf.rollout.base import (
    FINISH_LENGTH,
    FINISH_STOP,
    GenerationOutput,
    RolloutEngine,
    SamplingParams,
    eos_ids_from_config,
    validate_prompts,
)
from rlinf.rollout.sampling import sample_tokens

logger = logging.getLogger(__name__)


def _load_model(model_or_path: Any, dtype: torch.dtype | None) -> Any:
    from transformers import AutoModelForCausalLM

    if isinstance(model_or_path, str) or hasattr(model_or_path, "__fspath__"):
        path = str(model_or_path)
        try:
            return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
        except TypeError:  # transformers < 4.56 names it torch_dtype
            return AutoModelForCausalLM.from_pretrained(
                path, torch_dtype=dtype, local_files_only=True
            )
    if hasattr(model_or_path, "model_type") and not hasattr(model_or_path, "state_dict"):
        return AutoModelForCausalLM.from_config(model_or_path)
    if hasattr(model_or_path, "state_dict") and hasattr(model_or_path, "config"):
        return model_or_path
    raise ValueError(
        "hf engine needs a transformers causal-LM model, a local checkpoint path or a config, "
        f"got {type(model_or_path).__name__}"
    )


class HFEngine(RolloutEngine):
    """Generation with a transformers ``AutoModelForCausalLM``.

    Args:
        model_or_path: a model object (used as is, not copied), a local checkpoint folder, or
            a config (random weights).
        device: where to run (default: the model's device, or CUDA if available for paths).
        dtype: cast the model to this dtype (default: keep it).
        max_batch_size: prompts per forward batch (default: all at once).
        eos_token_id: EOS id(s); default from the model config.
        name_mapping: renames incoming ``load_weights`` names (None drops a tensor).
    """

    def __init__(
        self,
        model_or_path: Any,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_batch_size: int | None = None,
        eos_token_id: int | Iterable[int] | None = None,
        name_mapping: Callable[[str], str | None] | None = None,
    ) -> None:
        self.model = _load_model(model_or_path, dtype)
        if device is None:
            device = next(self.model.parameters()).device
            if device.type == "cpu" and not hasattr(model_or_path, "state_dict"):
                device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(device)
        if dtype is not None:
            self.model.to(device=self.device, dtype=dtype)
        else:
            self.model.to(self.device)
        self.model.eval()
        config = self.model.config
        self.vocab_size = config.vocab_size
        self.eos_token_ids = (
            eos_ids_from_config(config)
            if eos_token_id is None
            else ((eos_token_id,) if isinstance(eos_token_id, int) else tuple(eos_token_id))
        )
        self.max_batch_size = max_batch_size
        self.name_mapping = name_mapping
        self._asleep = 0
        try:
            fwd = inspect.signature(self.model.forward).parameters
        except (TypeError, ValueError):
            fwd = {}
        # the prefill needs the last position's logits only (what transformers' generate does)
        names = [n for n in ("logits_to_keep", "num_logits_to_keep") if n in fwd]
        self._prefill_kw = {names[0]: 1} if names else {}

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        state = self.model.state_dict()
        with torch.no_grad():
            for raw, tensor in weights:
                name = self.name_mapping(raw) if self.name_mapping is not None else raw
                if name is None:
                    continue
                if name not in state:
                    raise ValueError(
                        f"load_weights: unknown parameter {name!r} for the hf engine's "
                        f"{type(self.model).__name__} (expected its state_dict names)"
                    )
                dst = state[name]
                if tuple(dst.shape) != tuple(tensor.shape):
                    raise ValueError(
                        f"load_weights: {name!r} has shape {tuple(tensor.shape)}, the model "
                        f"expects {tuple(dst.shape)}"
                    )
                if hasattr(tensor, "full_tensor"):
                    tensor = tensor.full_tensor()
                dst.copy_(tensor)

    def sleep(self, level: int = 1) -> None:
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 or 2, got {level}")
        if level == 2 and self.device.type == "cuda":
            self.model.to("cpu")
        self._asleep = level
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def wake(self) -> None:
        if self._asleep == 2:
            self.model.to(self.device)
        self._asleep = 0

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> GenerationOutput:
        if self._asleep == 2:
            raise RuntimeError("hf engine is asleep: call wake() before generate()")
        validate_prompts(prompts, self.vocab_size)
        out = GenerationOutput()
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        step = self.max_batch_size or max(len(prompts), 1)
        for i in range(0, len(prompts), step):
            toks, lps, reasons = self._generate_batch(prompts[i : i + step], params, generator)
            out.token_ids += toks
            out.logprobs += lps
            out.finish_reasons += reasons
        return out

    def _generate_batch(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        generator: torch.Generator | None,
    ) -> tuple[list[list[int]], list[list[float]], list[str]]:
        dev = self.device
        b, width = len(prompts), max(len(p) for p in prompts)
        ids = torch.zeros(b, width, dtype=torch.long)
        mask = torch.zeros(b, width, dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p) :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        stop_set = set(params.stop_set(self.eos_token_ids))
        stop_ids = torch.tensor(sorted(stop_set), dtype=torch.long, device=dev)
        finished = torch.zeros(b, dtype=torch.bool, device=dev)
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **self._prefill_kw
        )
        steps_tok, steps_lp = [], []
        for t in range(params.max_new_tokens):
            tok, lp = sample_tokens(out.logits[:, -1], params, generator)
            steps_tok.append(tok)
            steps_lp.append(lp)
            if stop_ids.numel():
                finished |= torch.isin(tok, stop_ids)
            if t + 1 == params.max_new_tokens or bool(finished.all()):
                break
            mask = torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype, device=dev)], dim=1)
            pos = pos[:, -1:] + 1
            out = self.model(
                input_ids=tok.unsqueeze(1),
                attention_mask=mask,
                position_ids=pos,
                past_key_values=out.past_key_values,
                use_cache=True,
            )
        all_tok = torch.stack(steps_tok, dim=1).tolist()
        all_lp = torch.stack(steps_lp, dim=1).tolist()
        toks, lps, reasons = [], [], []
        for row_tok, row_lp in zip(all_tok, all_lp):
            n = next((j + 1 for j, x in enumerate(row_tok) if x in stop_set), len(row_tok))
            toks.append(row_tok[:n])
            lps.append(row_lp[:n])
            reasons.append(FINISH_STOP if row_tok[n - 1] in stop_set else FINISH_LENGTH)
        return toks, lps, reasons
