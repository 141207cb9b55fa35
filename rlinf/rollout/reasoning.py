"""The rollout role for language models: generate `group_size` answers per prompt and score them.

Output batches are grouped: dim 0 is the prompt (group), dim 1 the sample, so that a channel
split never breaks a group apart (group-relative advantages need whole groups).
"""

from __future__ import annotations

import time

import torch

from rlinf.algorithms import overlong_penalty
from rlinf.config import RLinfConfig
from rlinf.dist.batch import TensorBatch
from rlinf.rollout.base import SamplingParams
from rlinf.utils.dtypes import DTYPES


def build_lm_engine(cfg: RLinfConfig, device: torch.device, tokenizer):
    from rlinf.rollout import build_engine

    ro = cfg.rollout
    path = ro.model.model_path or cfg.actor.model.model_path
    precision = ro.model.precision or ("bf16" if device.type == "cuda" else "fp32")
    kwargs = {"device": device, "dtype": DTYPES[precision], "eos_token_id": tokenizer.eos_token_id}
    if ro.backend == "fast":
        a = cfg.algorithm
        kwargs.update(
            max_seq_len=cfg.data.max_prompt_length + a.length_params.max_new_token,
            max_num_seqs=ro.max_num_seqs,
            gpu_memory_utilization=ro.gpu_memory_utilization,
        )
    return build_engine(ro.backend, path, **kwargs)


class ReasoningRollout:
    def __init__(self, cfg: RLinfConfig, device: torch.device, tokenizer, score_here: bool):
        self.cfg, self.device, self.tok = cfg, device, tokenizer
        self.engine = build_lm_engine(cfg, device, tokenizer)
        self.scorer = RewardScorer(cfg, tokenizer) if score_here else None
        self.max_len = cfg.data.max_prompt_length + cfg.algorithm.length_params.max_new_token
        self.version = -1

    def params(self, greedy: bool, seed: int | None) -> SamplingParams:
        a = self.cfg.algorithm
        sp = a.sampling_params
        return SamplingParams(
            max_new_tokens=a.length_params.max_new_token,
            temperature=0.0 if greedy or not sp.do_sample else sp.temperature_train,
            top_p=sp.top_p,
            top_k=sp.top_k,
            stop_token_ids=(self.tok.eos_token_id,),
            seed=seed,
        )

    def generate(
        self, prompts: TensorBatch, group_size: int, greedy: bool = False, seed: int | None = None
    ) -> tuple[TensorBatch, dict[str, tuple[float, int]]]:
        """Sample ``group_size`` responses per prompt; returns grouped sequences and stats."""
        plens = prompts["prompt_len"].tolist()
        ids = [prompts["prompt_ids"][i, :n].tolist() for i, n in enumerate(plens)]
        flat = [p for p in ids for _ in range(group_size)]
        t0 = time.monotonic()
        out = self.engine.generate(flat, self.params(greedy, seed))
        dt = time.monotonic() - t0
        n, L = len(flat), self.max_len
        seq = torch.full((n, L), self.tok.pad_token_id, dtype=torch.long)
        attn = torch.zeros((n, L), dtype=torch.bool)
        resp = torch.zeros((n, L), dtype=torch.bool)
        old = torch.zeros((n, L), dtype=torch.float32)
        rlen = torch.zeros(n, dtype=torch.long)
        for i, (p, r, lp) in enumerate(zip(flat, out.token_ids, out.logprobs, strict=True)):
            r = r[: L - len(p)]
            k = len(p) + len(r)
            seq[i, :k] = torch.tensor(p + r)
            attn[i, :k] = True
            resp[i, len(p) : k] = True
            old[i, len(p) : k] = torch.tensor(lp[: len(r)], dtype=torch.float32)
            rlen[i] = len(r)
        g = group_size
        batch = TensorBatch(
            {
                "index": prompts["index"],
                "input_ids": seq.view(-1, g, L),
                "attention_mask": attn.view(-1, g, L),
                "response_mask": resp.view(-1, g, L),
                "old_logprobs": old.view(-1, g, L),
                "response_len": rlen.view(-1, g),
            },
            meta={"version": self.version},
        )
        tokens = int(rlen.sum())
        stats = {"rollout/tokens_per_s": (tokens / max(dt, 1e-9), 1), "time/generate_s": (dt, 1)}
        return batch, stats


class RewardScorer:
    """Decode responses and score them against gold answers (math-verify under timeouts)."""

    def __init__(self, cfg: RLinfConfig, tokenizer):
        from rlinf.rewards.math import MathReward

        r = cfg.reward
        self.cfg, self.tok = cfg, tokenizer
        self.reward = MathReward(
            correct_score=r.correct_score,
            incorrect_score=r.incorrect_score,
            format_score=r.format_score,
            timeout_s=r.timeout_s,
            num_workers=r.num_workers,
        )

    def score(self, batch: TensorBatch, answers: list[str]) -> dict[str, tuple[float, int]]:
        """Add `reward` and `correct` [G, g] to ``batch``; answers are per group."""
        ids, mask = batch["input_ids"], batch["response_mask"]
        G, g, _ = ids.shape
        flat_ids, flat_mask = ids.reshape(G * g, -1), mask.reshape(G * g, -1)
        texts = self.tok.batch_decode(  # one call into the (Rust) tokenizer
            [row[m].tolist() for row, m in zip(flat_ids, flat_mask, strict=True)],
            skip_special_tokens=True,
        )
        golds = [a for a in answers for _ in range(g)]
        results = self.reward.score(texts, golds)
        reward = (
            torch.tensor([res.reward for res in results], dtype=torch.float32)
            * self.cfg.reward.reward_scale
        )
        correct = torch.tensor([res.correct for res in results], dtype=torch.float32)
        a = self.cfg.algorithm
        rlen = batch["response_len"].reshape(-1)
        if a.overlong.enable:
            reward = reward + overlong_penalty(
                rlen,
                a.length_params.max_new_token,
                a.overlong.buffer_len,
                a.overlong.penalty_factor,
            )
        batch["reward"] = reward.view(G, g)
        batch["correct"] = correct.view(G, g)
        n = len(results)
        return {
            "reward_sum": (float(reward.sum()), n),
            "correct_sum": (float(correct.sum()), n),
            "len_sum": (float(rlen.float().sum()), n),
            "timeouts": (float(sum(r.timed_out for r in results)), n),
        }

    def close(self) -> None:
        self.reward.close()
