"""Supervised pairs (prompt -> response) for SFT and the reasoning warm-start."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlinf.dist.batch import TensorBatch


class SFTDataset:
    """Rows of jsonl with a prompt and a response; loss is on the response tokens only."""

    def __init__(
        self,
        paths: list[str],
        tokenizer,
        prompt_key: str,
        response_key: str,
        max_length: int,
        apply_chat_template: bool = False,
    ):
        self.examples: list[tuple[list[int], list[int]]] = []
        for path in paths:
            with open(path, encoding="utf-8") as f:
                for line_no, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    for key in (prompt_key, response_key):
                        if not isinstance(row.get(key), str):
                            raise ValueError(
                                f"{path}: line {line_no}: '{key}' missing or not a string "
                                f"(set data.prompt_key / data.response_key)"
                            )
                    prompt = row[prompt_key]
                    if apply_chat_template:
                        prompt = tokenizer.apply_chat_template(
                            [{"role": "user", "content": prompt}],
                            tokenize=False,
                            add_generation_prompt=True,
                        )
                    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                    r_ids = tokenizer(row[response_key], add_special_tokens=False)["input_ids"]
                    r_ids = r_ids + [tokenizer.eos_token_id]
                    if len(p_ids) + len(r_ids) <= max_length:
                        self.examples.append((p_ids, r_ids))
        if not self.examples:
            raise ValueError(f"no SFT examples in {paths} within {max_length} tokens")
        self.pad_id = tokenizer.pad_token_id

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, indices: list[int]) -> TensorBatch:
        """Right-padded sequences with a mask of the response tokens (the ones trained on)."""
        seqs = [self.examples[i] for i in indices]
        L = max(len(p) + len(r) for p, r in seqs)
        ids = torch.full((len(seqs), L), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(seqs), L), dtype=torch.bool)
        resp = torch.zeros((len(seqs), L), dtype=torch.bool)
        for i, (p, r) in enumerate(seqs):
            ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            attn[i, : len(p) + len(r)] = True
            resp[i, len(p) : len(p) + len(r)] = True
        return TensorBatch({"input_ids": ids, "attention_mask": attn, "response_mask": resp})


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
