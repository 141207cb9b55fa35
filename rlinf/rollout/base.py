"""The rollout-engine interface: one ``generate`` over token ids, weight loading, sleep/wake.

Log-prob convention (the PPO ratio depends on it): the log-prob of a sampled token is
``log_softmax(logits / T)[token]`` with ``T`` the sampling temperature (``T = 1`` when greedy),
computed in fp32 and *without* top-p/top-k truncation, so that a teacher-forced recompute with
the same temperature reproduces it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one batch of responses.

    ``temperature == 0`` means greedy; ``top_k <= 0`` disables top-k; ``stop_token_ids`` stop a
    sequence (the stop token is kept in the response). The model's EOS also stops a sequence
    unless ``ignore_eos`` is set. ``seed`` makes sampling reproducible for one call.
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def logprob_temperature(self) -> float:
        """The T of the log-prob convention: the sampling temperature, 1 when greedy."""
        return 1.0 if self.greedy else float(self.temperature)

    def stop_set(self, eos_token_ids: Iterable[int]) -> tuple[int, ...]:
        """Token ids that end a sequence: ``stop_token_ids`` plus EOS unless ``ignore_eos``."""
        ids = set(self.stop_token_ids)
        if not self.ignore_eos:
            ids.update(int(t) for t in eos_token_ids)
        return tuple(sorted(ids))


@dataclass
class GenerationOutput:
    """Responses for a batch of prompts, in prompt order.

    ``token_ids[i]`` is the response only (the stop token included when one ended it),
    ``logprobs[i]`` holds one log-prob per response token, ``finish_reasons[i]`` is ``"stop"``
    or ``"length"``.
    """

    token_ids: list[list[int]] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)


class RolloutEngine(ABC):
    """A generation engine behind one interface (hf, fast, vllm, sglang)."""

    @abstractmethod
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> GenerationOutput:
        """Generate one response per prompt (token ids in, token ids and log-probs out)."""

    @abstractmethod
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy new weights in, named as in the Hugging Face state dict."""

    @abstractmethod
    def sleep(self, level: int = 1) -> None:
        """Release memory between rollouts: 1 frees the KV cache, 2 also moves weights off GPU."""

    @abstractmethod
    def wake(self) -> None:
        """Undo ``sleep``: weights back on the device, KV cache allocated again."""


def eos_ids_from_config(config: object) -> tuple[int, ...]:
    """The EOS token ids a transformers config (or generation config) declares, possibly none."""
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return ()
    if isinstance(eos, int):
        return (eos,)
    return tuple(int(t) for t in eos)


def validate_prompts(prompts: list[list[int]], vocab_size: int) -> None:
    """Raise ValueError naming the first bad prompt (empty, or a token id out of the vocab)."""
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompts[{i}] is empty: every prompt needs at least one token")
        lo, hi = min(p), max(p)
        if lo < 0 or hi >= vocab_size:
            raise ValueError(
                f"prompts[{i}] has token id {lo if lo < 0 else hi} outside the vocabulary "
                f"[0, {vocab_size})"
            )
