"""The built-in fast rollout engine (``rollout.backend: fast``): torch only.

Continuous batching over a fixed set of sequence slots: queued prompts are prefilled into free
slots in batches, every active slot advances one token per decode step (a CUDA graph on GPU),
and every ``sync_interval`` steps the host reads which sequences finished, collects them, frees
their slots and admits queued prompts. Between syncs nothing waits on the device.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
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
from rlinf.rollout.fast.attention import DECODE_ATTN_IMPLS
from rlinf.rollout.fast.graphs import DecodeRunner, bucket_for, pow2_buckets
from rlinf.rollout.fast.kv_cache import KVCache
from rlinf.rollout.fast.model import FastCausalLM
from rlinf.rollout.fast.ops import FusedOps, triton_available
from rlinf.rollout.fast.spec import ModelSpec, spec_from_hf_config
from rlinf.rollout.fast.weights import iter_checkpoint, load_into, missing_params
from rlinf.rollout.sampling import sample_tokens

logger = logging.getLogger(__name__)

_GIB = 1 << 30


def _resolve_source(model_or_path: Any) -> tuple[Any, Callable[[], Iterable] | None, Any]:
    """(HF config, weight iterator factory or None for random init, dtype hint or None)."""
    if isinstance(model_or_path, str | bytes) or hasattr(model_or_path, "__fspath__"):
        from transformers import AutoConfig

        path = str(model_or_path)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        hint = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        return config, lambda: iter_checkpoint(path), hint
    if hasattr(model_or_path, "state_dict") and hasattr(model_or_path, "config"):
        model = model_or_path
        dtype = next(model.parameters()).dtype
        return model.config, lambda: model.state_dict().items(), dtype
    if hasattr(model_or_path, "model_type"):
        return model_or_path, None, None
    raise ValueError(
        "fast engine needs a transformers model, a local checkpoint path or a transformers "
        f"config, got {type(model_or_path).__name__}"
    )


def _dtype(value: Any, default: torch.dtype) -> torch.dtype:
    if value is None:
        return default
    if isinstance(value, torch.dtype):
        return value
    names = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }
    key = str(value).removeprefix("torch.")
    if key not in names:
        raise ValueError(f"rollout dtype must be one of {sorted(names)}, got {value!r}")
    return names[key]


class FastEngine(RolloutEngine):
    """Continuous-batching generation for Llama / Qwen2 / Qwen3 models.

    Args:
        model_or_path: a transformers causal-LM model (weights are copied), a local checkpoint
            folder, or a transformers config (random weights, for benchmarks).
        device: where to run (default: CUDA if available).
        dtype: model and KV-cache dtype (default: the model's dtype on CUDA, fp32 on CPU).
        max_seq_len: longest prompt + response a slot holds.
        max_num_seqs: most sequences decoded at once (the slot count; on CUDA, fewer when the
            memory budget is smaller).
        gpu_memory_utilization: fraction of the GPU's memory this engine may use in total
            (weights, KV cache, activations), minus what others already use.
        enable_cuda_graphs: capture the decode step (CUDA only).
        sync_interval: decode steps between host checks for finished sequences.
        max_prefill_tokens: padded prompt tokens per prefill batch.
        decode_attn_impl: "triton" (CUDA), "sdpa" or "matmul"; "auto" picks triton where
            it can run.
        triton_ops: run the pointwise ops and sampling as fused Triton kernels (CUDA only).
        eos_token_id: EOS id(s); default from the model config.
        name_mapping: renames incoming weight names before they are mapped onto the fused
            parameters (None drops a tensor); also settable later as ``engine.name_mapping``.
    """

    def __init__(
        self,
        model_or_path: Any,
        *,
        device: str | torch.device | None = None,
        dtype: Any = None,
        max_seq_len: int | None = None,
        max_num_seqs: int | None = None,
        gpu_memory_utilization: float = 0.9,
        enable_cuda_graphs: bool = True,
        sync_interval: int = 16,
        max_prefill_tokens: int = 16384,
        decode_attn_impl: str = "auto",
        triton_ops: bool = True,
        eos_token_id: int | Iterable[int] | None = None,
        name_mapping: Callable[[str], str | None] | None = None,
    ) -> None:
        if decode_attn_impl not in (*DECODE_ATTN_IMPLS, "auto"):
            raise ValueError(
                f"decode_attn_impl must be 'auto' or one of {DECODE_ATTN_IMPLS}, got "
                f"{decode_attn_impl!r}"
            )
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}"
            )
        if sync_interval < 1:
            raise ValueError(f"sync_interval must be >= 1, got {sync_interval}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        config, weights, dtype_hint = _resolve_source(model_or_path)
        self.spec: ModelSpec = spec_from_hf_config(config)
        on_cuda = self.device.type == "cuda"
        try:
            hint = _dtype(dtype_hint, torch.bfloat16)
        except ValueError:
            hint = torch.bfloat16
        default_dtype = hint if on_cuda else torch.float32
        self.dtype = _dtype(dtype, default_dtype)
        self.max_seq_len = int(max_seq_len or min(self.spec.max_position_embeddings, 4096))
        if self.max_seq_len < 2:
            raise ValueError(f"max_seq_len must be >= 2, got {self.max_seq_len}")
        self.eos_token_ids = (
            eos_ids_from_config(config)
            if eos_token_id is None
            else ((eos_token_id,) if isinstance(eos_token_id, int) else tuple(eos_token_id))
        )
        self.sync_interval = sync_interval
        self.max_prefill_tokens = max(int(max_prefill_tokens), self.max_seq_len)
        triton_ok = triton_available(self.device)
        if decode_attn_impl == "auto":
            decode_attn_impl = "triton" if triton_ok else "sdpa"
        if decode_attn_impl == "triton" and not triton_ok:
            raise ValueError(
                "decode_attn_impl 'triton' needs a CUDA device and triton installed; use 'sdpa'"
            )
        self.decode_attn_impl = decode_attn_impl
        self.ops = FusedOps(use_triton=triton_ops and triton_ok)
        self.use_graphs = enable_cuda_graphs and on_cuda
        self.gpu_memory_utilization = gpu_memory_utilization
        self.requested_slots = max_num_seqs
        self.name_mapping = name_mapping

        self.model = self._build_model(config, weights)
        self.cache: KVCache | None = None
        self.runner: DecodeRunner | None = None
        self._asleep = 0
        self._allocate_cache()

    # ----------------------------------------------------------------- setup
    def _build_model(self, config: Any, weights: Callable[[], Iterable] | None) -> FastCausalLM:
        with torch.device("meta"):
            model = FastCausalLM(self.spec, self.max_seq_len, self.ops)
        model = model.to_empty(device=self.device).to(self.dtype)
        model.init_rope_tables(self.device, self.dtype)
        model.requires_grad_(False)
        model.eval()
        if weights is None:
            std = getattr(config, "initializer_range", 0.02)
            for name, p in model.named_parameters():
                if p.dim() == 1 and "bias" not in name:
                    p.data.fill_(1.0)
                elif "bias" in name:
                    p.data.zero_()
                else:
                    p.data.normal_(0.0, std)
        else:
            params = dict(model.named_parameters())
            missing = missing_params(params, self._load(model, weights()))
            if missing:
                raise ValueError(
                    f"checkpoint lacks weights for {missing[:5]} ({len(missing)} fast-engine "
                    "parameters in all); is it a complete Llama/Qwen2/Qwen3 checkpoint?"
                )
        return model

    def _load(self, model: FastCausalLM, weights: Iterable) -> dict[str, set[tuple[int, int]]]:
        params = dict(model.named_parameters())
        covered = load_into(params, weights, self.spec, self.name_mapping)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        logger.debug("fast engine loaded %d parameters", len(covered))
        return covered

    def _num_slots(self) -> int:
        if self.device.type != "cuda":
            return int(self.requested_slots or 8)
        per_slot = KVCache.bytes_per_slot(self.spec, self.max_seq_len, self.dtype)
        free, total = torch.cuda.mem_get_info(self.device)
        want = int(self.requested_slots or 1024)
        elem = torch.empty((), dtype=self.dtype).element_size()
        s = self.spec
        prefill_act = (
            self.max_prefill_tokens
            * elem
            * (4 * s.hidden_size + 3 * s.q_size + 4 * s.kv_size + 3 * s.intermediate_size)
        )
        sampling = min(want, 1024) * s.vocab_size * (elem + 4 * 4)
        reserve = prefill_act + sampling + _GIB // 2
        ours = sum(p.numel() * p.element_size() for p in self.model.parameters())
        budget = min(total * self.gpu_memory_utilization - ours, free) - reserve
        slots = min(want, int(budget // per_slot))
        if slots < 1:
            raise ValueError(
                f"no room for a KV cache: {budget / _GIB:.2f} GiB left for it, one slot of "
                f"max_seq_len={self.max_seq_len} needs {per_slot / _GIB:.3f} GiB; raise "
                "rollout.gpu_memory_utilization or lower rollout.max_seq_len"
            )
        return slots

    def _allocate_cache(self) -> None:
        slots = self._num_slots()
        self.cache = KVCache(self.spec, slots, self.max_seq_len, self.dtype, self.device)
        dev = self.device
        self._tokens = torch.zeros(slots, dtype=torch.long, device=dev)
        self._positions = torch.zeros(slots, dtype=torch.long, device=dev)
        self.runner = DecodeRunner(
            self.model,
            self.cache,
            self._tokens,
            self._positions,
            self.decode_attn_impl,
            self.use_graphs,
        )
        self._bs_buckets = pow2_buckets(slots)
        self._len_buckets = pow2_buckets(self.max_seq_len, start=min(64, self.max_seq_len))
        logger.info(
            "fast engine: %d slots x %d tokens, KV cache %.2f GiB, dtype %s, graphs %s",
            slots,
            self.max_seq_len,
            self.cache.nbytes() / _GIB,
            self.dtype,
            self.use_graphs,
        )

    @property
    def num_slots(self) -> int:
        assert self.cache is not None, "engine is asleep"
        return self.cache.num_slots

    # ---------------------------------------------------------- interface
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors into the fused parameters (in place: graphs stay valid)."""
        self._load(self.model, weights)

    def sleep(self, level: int = 1) -> None:
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 or 2, got {level}")
        if self.runner is not None:
            self.runner.clear()
        self.runner, self.cache = None, None
        if level == 2 and self.device.type == "cuda":
            self.model.to("cpu")
        self._asleep = level
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def wake(self) -> None:
        if not self._asleep:
            return
        if self._asleep == 2 and self.device.type == "cuda":
            self.model.to(self.device)
        self._asleep = 0
        self._allocate_cache()

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> GenerationOutput:
        if self._asleep:
            raise RuntimeError("fast engine is asleep: call wake() before generate()")
        validate_prompts(prompts, self.spec.vocab_size)
        for i, p in enumerate(prompts):
            if len(p) >= self.max_seq_len:
                raise ValueError(
                    f"prompts[{i}] has {len(p)} tokens, leaving no room to generate within "
                    f"max_seq_len={self.max_seq_len}; raise rollout.max_seq_len"
                )
        if not prompts:
            return GenerationOutput()
        return _Generation(self, prompts, params).run()


class _Generation:
    """State of one ``generate`` call: device-side slot state plus the host-side scheduler.

    The host never reads the device between syncs; it keeps upper bounds of each slot's
    position and generated count (exact unless the slot stopped early) to pick the decode
    batch bucket, the KV-length bucket and how many steps to run before the next sync.
    """

    def __init__(self, engine: FastEngine, prompts: list[list[int]], params: SamplingParams):
        self.e = engine
        self.prompts = prompts
        self.params = params
        dev = engine.device
        slots = engine.num_slots
        self.stop_set = set(params.stop_set(engine.eos_token_ids))
        self.stop_ids = torch.tensor(sorted(self.stop_set), dtype=torch.long, device=dev)
        self.max_new = [min(params.max_new_tokens, engine.max_seq_len - len(p)) for p in prompts]
        width = max(self.max_new) + 1
        self.out_tokens = torch.zeros(slots, width, dtype=torch.long, device=dev)
        self.out_logprobs = torch.zeros(slots, width, dtype=torch.float32, device=dev)
        self.gen_count = torch.zeros(slots, dtype=torch.long, device=dev)
        self.max_new_dev = torch.ones(slots, dtype=torch.long, device=dev)
        self.live = torch.zeros(slots, dtype=torch.bool, device=dev)
        self.rows = torch.arange(slots, device=dev)
        self.generator = None
        if params.seed is not None:
            self.generator = torch.Generator(device=dev).manual_seed(params.seed)
        # Seeds of the in-kernel sampler: from params.seed, else from torch's CPU RNG.
        self.base_seed = (
            params.seed if params.seed is not None else int(torch.randint(2**31 - 1, ()).item())
        )
        self.sample_calls = 0
        self.pending = deque(range(len(prompts)))
        self.free = list(range(slots))  # kept sorted: lowest slots first keeps batches compact
        self.slot_req = np.full(slots, -1, dtype=np.int64)
        self.pos_ub = np.zeros(slots, dtype=np.int64)  # position of the next decode input
        self.pos_cap = np.zeros(slots, dtype=np.int64)
        self.gen_ub = np.zeros(slots, dtype=np.int64)  # tokens generated so far
        self.gen_cap = np.zeros(slots, dtype=np.int64)
        self.result = GenerationOutput(
            token_ids=[[] for _ in prompts],
            logprobs=[[] for _ in prompts],
            finish_reasons=[""] * len(prompts),
        )

    def run(self) -> GenerationOutput:
        while self.pending or (self.slot_req >= 0).any():
            self._admit()
            act = np.flatnonzero(self.slot_req >= 0)
            steps = min(self.e.sync_interval, int((self.gen_cap - self.gen_ub)[act].max()))
            bs = bucket_for(int(act.max()) + 1, self.e._bs_buckets)
            for j in range(steps):
                longest = int(np.minimum(self.pos_ub[act] + j, self.pos_cap[act]).max())
                self._decode_step(bs, bucket_for(longest + 1, self.e._len_buckets))
            self.pos_ub[act] = np.minimum(self.pos_ub[act] + steps, self.pos_cap[act])
            self.gen_ub[act] = np.minimum(self.gen_ub[act] + steps, self.gen_cap[act])
            self._harvest(act)
        return self.result

    # --------------------------------------------------------------- admit
    def _admit(self) -> None:
        if not self.pending or not self.free:
            return
        n = min(len(self.pending), len(self.free))
        reqs = [self.pending.popleft() for _ in range(n)]
        slots, self.free = self.free[:n], self.free[n:]
        pairs = sorted(zip(reqs, slots), key=lambda rs: len(self.prompts[rs[0]]))
        chunk: list[tuple[int, int]] = []
        for pair in pairs:
            longest = len(self.prompts[pair[0]])  # sorted ascending: the newest is the longest
            if chunk and (len(chunk) + 1) * longest > self.e.max_prefill_tokens:
                self._prefill(chunk)
                chunk = []
            chunk.append(pair)
        if chunk:
            self._prefill(chunk)

    def _prefill(self, pairs: list[tuple[int, int]]) -> None:
        e, dev = self.e, self.e.device
        lens = [len(self.prompts[r]) for r, _ in pairs]
        padded = torch.zeros(len(pairs), max(lens), dtype=torch.long)
        for row, (r, _) in enumerate(pairs):
            padded[row, : lens[row]] = torch.tensor(self.prompts[r], dtype=torch.long)
        meta = torch.tensor([[s for _, s in pairs], lens, [self.max_new[r] for r, _ in pairs]])
        slots_t, lens_t, max_new_t = meta.to(dev).unbind(0)
        logits = e.model.prefill(padded.to(dev), lens_t, slots_t, e.cache)
        tok, lp = self._sample(logits)
        e._tokens[slots_t] = tok
        e._positions[slots_t] = lens_t
        self.out_tokens[slots_t, 0] = tok
        self.out_logprobs[slots_t, 0] = lp
        self.gen_count[slots_t] = 1
        self.max_new_dev[slots_t] = max_new_t
        done = max_new_t <= 1
        if self.stop_ids.numel():
            done |= torch.isin(tok, self.stop_ids)
        self.live[slots_t] = ~done
        for (r, s), n in zip(pairs, lens):
            self.slot_req[s] = r
            self.pos_ub[s] = n
            self.pos_cap[s] = n + self.max_new[r] - 1
            self.gen_ub[s] = 1
            self.gen_cap[s] = self.max_new[r]

    def _sample(self, logits_bv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [B], log-probs [B]); without top-k/top-p on CUDA, one fused kernel."""
        p = self.params
        if not self.e.ops.use_triton or p.top_k > 0 or p.top_p < 1.0:
            return sample_tokens(logits_bv, p, self.generator)
        from rlinf.rollout.fast.triton_ops import sample

        self.sample_calls += 1
        seed = (self.base_seed * 1_000_003 + self.sample_calls) % (2**31 - 1)
        return sample(logits_bv, p.temperature, seed)

    # -------------------------------------------------------------- decode
    def _decode_step(self, bs: int, kv_len: int) -> None:
        e = self.e
        logits = e.runner(bs, kv_len)
        tok, lp = self._sample(logits)
        live = self.live[:bs]
        count = self.gen_count[:bs]
        rows = self.rows[:bs]
        # Writes past a finished slot's count are scratch: only [:count] is read back.
        self.out_tokens[rows, count] = tok
        self.out_logprobs[rows, count] = lp
        count += live
        done = count >= self.max_new_dev[:bs]
        if self.stop_ids.numel():
            done |= torch.isin(tok, self.stop_ids)
        live &= ~done
        e._tokens[:bs] = tok
        e._positions[:bs] += live

    # ------------------------------------------------------------- harvest
    def _harvest(self, act: np.ndarray) -> None:
        """One host sync: collect finished sequences of the active slots ``act``, free them."""
        act_t = torch.from_numpy(act).to(self.e.device)
        still_live = self.live[act_t].cpu().numpy()
        finished = act[~still_live]
        if finished.size == 0:
            return
        fin_t = torch.from_numpy(finished).to(self.e.device)
        counts = self.gen_count[fin_t].cpu().tolist()
        toks = self.out_tokens[fin_t].cpu()
        lps = self.out_logprobs[fin_t].cpu()
        for i, (slot, n) in enumerate(zip(finished.tolist(), counts)):
            r = int(self.slot_req[slot])
            self.slot_req[slot] = -1
            t = toks[i, :n].tolist()
            self.result.token_ids[r] = t
            self.result.logprobs[r] = lps[i, :n].tolist()
            stopped = t[-1] in self.stop_set
            self.result.finish_reasons[r] = FINISH_STOP if stopped else FINISH_LENGTH
            self.free.append(slot)
        self.free.sort()


def kv_read_bytes(spec: ModelSpec, num_seqs: int, mean_len: float, elem: int) -> float:
    """KV-cache bytes a decode step reads for ``num_seqs`` sequences of ``mean_len`` tokens."""
    return num_seqs * mean_len * spec.kv_bytes_per_token(elem)


def weight_bytes(spec: ModelSpec, elem: int) -> int:
    return spec.num_params() * elem
