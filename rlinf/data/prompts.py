"""Prompt datasets for reasoning RL (.jsonl / .parquet) and a resumable batch sampler.

Rows hold a prompt and a gold answer. The prompt is a string, or a list of chat
messages (``{"role": ..., "content": ...}``) as in verl-style parquet files; the answer
is a string or a number. Keys may be dotted paths into nested rows
(``answer_key="reward_model.ground_truth"``). Every prompt is tokenized up front so
that too-long rows are dropped (and counted) before training starts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

logger = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".parquet")


class PromptItem(NamedTuple):
    """One prompt: its token ids (after the chat template), gold answer, and rendered text."""

    prompt_ids: list[int]
    answer: str
    prompt_text: str


def _lookup(row: dict, key: str) -> Any:
    """``row[key]``, following dots into nested dicts; KeyError when any part is missing."""
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(key)
        value = value[part]
    return value


def _iter_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, row) pairs; location reads "line N" (jsonl, 1-based) or "row N" (parquet)."""
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"line {line_no}", json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}: line {line_no}: invalid JSON ({exc.msg})") from exc
    else:
        import pyarrow.parquet as pq

        row_no = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                yield f"row {row_no} (0-based)", row
                row_no += 1


def _as_messages(prompt: Any) -> list[dict[str, str]] | None:
    """``prompt`` as chat messages when it is a list of role/content dicts, else None."""
    if not isinstance(prompt, list) or not prompt:
        return None
    for message in prompt:
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            return None
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


class PromptDataset:
    """Prompts and gold answers from .jsonl/.parquet files, tokenized and length-filtered.

    Args:
        paths: data files (``data.train_data_paths``); rows are read in file order.
        tokenizer: a Hugging Face tokenizer.
        prompt_key / answer_key: the row fields (``data.prompt_key`` / ``data.answer_key``).
        max_prompt_length: rows whose prompt is longer, in tokens, are dropped;
            ``num_dropped`` counts them.
        apply_chat_template: render the prompt as a user turn with the tokenizer's chat
            template (plus a generation prompt); otherwise the text is used as is.
        system_prompt: a system turn before the user turn (with the chat template), or a
            paragraph before the prompt (without).

    Bad rows (invalid JSON, missing key, wrong type) raise ValueError naming file, line
    and key.
    """

    def __init__(
        self,
        paths: list[str] | list[Path],
        tokenizer,
        prompt_key: str = "prompt",
        answer_key: str = "answer",
        max_prompt_length: int = 256,
        apply_chat_template: bool = False,
        system_prompt: str | None = None,
    ) -> None:
        if not paths:
            raise ValueError("data: no data files given; set data.train_data_paths")
        if max_prompt_length < 1:
            raise ValueError(f"data.max_prompt_length must be >= 1, got {max_prompt_length}")
        if apply_chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "data.apply_chat_template is true but the tokenizer has no chat template; "
                "set data.apply_chat_template=false or use a tokenizer with one"
            )
        self.tokenizer = tokenizer
        self.apply_chat_template = apply_chat_template
        self.system_prompt = system_prompt
        self.max_prompt_length = max_prompt_length
        self.items: list[PromptItem] = []
        self.num_dropped = 0
        for path in paths:
            self._load(Path(path), prompt_key, answer_key)
        if self.num_dropped:
            logger.warning(
                "data: dropped %d of %d prompts longer than data.max_prompt_length=%d tokens",
                self.num_dropped,
                self.num_dropped + len(self.items),
                max_prompt_length,
            )
        if not self.items:
            raise ValueError(
                f"data: no prompts left in {[str(p) for p in paths]} (dropped {self.num_dropped} "
                f"longer than data.max_prompt_length={max_prompt_length})"
            )

    def _load(self, path: Path, prompt_key: str, answer_key: str) -> None:
        if not path.is_file():
            raise ValueError(f"data: file '{path}' does not exist")
        if path.suffix not in SUFFIXES:
            raise ValueError(f"data: '{path}' must end with one of {SUFFIXES}")
        texts: list[str] = []
        answers: list[str] = []
        for where, row in _iter_rows(path):
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path}: {where}: expected a JSON object, got {type(row).__name__}"
                )
            values = []
            for key, config_key in ((prompt_key, "prompt_key"), (answer_key, "answer_key")):
                try:
                    values.append(_lookup(row, key))
                except KeyError:
                    raise ValueError(
                        f"{path}: {where}: missing key '{key}' (row keys: {sorted(row)}); "
                        f"set data.{config_key} to the right field"
                    ) from None
            prompt, answer = values
            texts.append(self._render(prompt, path, where, prompt_key))
            answers.append(self._answer(answer, path, where, answer_key))
        if not texts:
            return
        ids = self.tokenizer(texts, add_special_tokens=not self.apply_chat_template)["input_ids"]
        for prompt_ids, answer, text in zip(ids, answers, texts):
            if len(prompt_ids) > self.max_prompt_length:
                self.num_dropped += 1
            else:
                self.items.append(PromptItem(list(prompt_ids), answer, text))

    def _render(self, prompt: Any, path: Path, where: str, key: str) -> str:
        """The prompt text the model sees."""
        messages = _as_messages(prompt)
        if not isinstance(prompt, str) and messages is None:
            raise ValueError(
                f"{path}: {where}: key '{key}' must be a string or a list of "
                f"{{'role', 'content'}} messages, got {type(prompt).__name__}"
            )
        if not self.apply_chat_template:
            if messages is not None:
                prompt = "\n\n".join(m["content"] for m in messages)
            return f"{self.system_prompt}\n\n{prompt}" if self.system_prompt else prompt
        if messages is None:
            messages = [{"role": "user", "content": prompt}]
        if self.system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    @staticmethod
    def _answer(answer: Any, path: Path, where: str, key: str) -> str:
        if isinstance(answer, bool) or not isinstance(answer, str | int | float):
            raise ValueError(
                f"{path}: {where}: key '{key}' must be a string or a number, "
                f"got {type(answer).__name__}"
            )
        return str(answer)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> PromptItem:
        return self.items[index]


class PromptSampler:
    """Endless batches of dataset indices, epoch after epoch, resumable to the exact batch.

    Epoch ``e`` is ``torch.randperm`` under a generator seeded with ``seed + e`` (or
    ``range`` without shuffle), cut into ``batch_size`` chunks. With ``drop_last`` the
    remainder of an epoch is skipped; without it the last batch is shorter.
    ``state_dict()`` records (epoch, position) so that a restored sampler yields exactly
    the batch that would have come next.
    """

    def __init__(
        self,
        dataset_len: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if dataset_len < (batch_size if drop_last else 1):
            raise ValueError(
                f"the dataset has {dataset_len} prompts, fewer than one batch of {batch_size}; "
                "add data or lower data.rollout_batch_size"
            )
        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # indices of this epoch already handed out
        self._order: list[int] | None = None

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.dataset_len, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def _epoch_order(self) -> list[int]:
        if self._order is None:
            if self.shuffle:
                import torch

                generator = torch.Generator().manual_seed(self.seed + self.epoch)
                self._order = torch.randperm(self.dataset_len, generator=generator).tolist()
            else:
                self._order = list(range(self.dataset_len))
        return self._order

    def __iter__(self) -> PromptSampler:
        return self

    def __next__(self) -> list[int]:
        remaining = self.dataset_len - self.position
        if remaining == 0 or (self.drop_last and remaining < self.batch_size):
            self.epoch += 1
            self.position = 0
            self._order = None
        order = self._epoch_order()
        batch = order[self.position : self.position + self.batch_size]
        self.position += len(batch)
        return batch

    def state_dict(self) -> dict[str, int]:
        """Plain ints (JSON-safe): where the next batch starts, and what it was built on."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "dataset_len": self.dataset_len,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key, value in (("seed", self.seed), ("dataset_len", self.dataset_len)):
            if state.get(key, value) != value:
                logger.warning(
                    "data: resuming with sampler %s %d, the checkpoint had %d; batches differ "
                    "from the original run",
                    key,
                    value,
                    state[key],
                )
        if not 0 <= state["position"] <= self.dataset_len:
            raise ValueError(
                f"data: sampler position {state['position']} does not fit a dataset of "
                f"{self.dataset_len} prompts; was the data changed since the checkpoint?"
            )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = None
