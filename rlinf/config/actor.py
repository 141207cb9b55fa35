"""`actor`: the trained model, its optimizer and the FSDP2 backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class TinyModelConfig:
    """Build a tiny random LM (tokenizer trained on the train data) at model_path if missing."""

    enable: bool = False
    arch: Literal["qwen2", "llama"] = "qwen2"
    vocab_size: int = 320
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    seed: int = 0


@dataclass
class ModelConfig:
    """Policy architecture (embodied) or model directory (reasoning, sft)."""

    model_type: Literal["mlp", "cnn", "causal_lm"] = "mlp"
    model_path: str | None = None  # causal_lm: local Hugging Face directory
    hidden_dims: list[int] = field(default_factory=lambda: [64, 64])
    activation: Literal["tanh", "relu", "gelu", "silu"] = "tanh"
    shared_trunk: bool = False
    log_std_init: float = 0.0
    tanh_squash: bool = False
    precision: Literal["fp32", "bf16", "fp16"] | None = None  # default: bf16 on GPU, fp32 on CPU
    gradient_checkpointing: bool = False
    # causal_lm: compile each decoder layer with torch.compile (fuses the norm, rotary and MLP
    # element-wise work; the first update pays the compilation)
    torch_compile: bool = False
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class OptimConfig:
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 3e-4
    value_lr: float | None = None  # separate critic lr (default: lr)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-5
    weight_decay: float = 0.0
    clip_grad: float | None = 0.5  # max global grad norm; null disables
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # final lr as a fraction of lr (linear, cosine)


@dataclass
class FSDPConfig:
    reshard_after_forward: bool = True
    param_dtype: Literal["fp32", "bf16", "fp16"] | None = None  # mixed precision (GPU); null: off
    reduce_dtype: Literal["fp32", "bf16"] = "fp32"
    offload_between_phases: bool = False  # move params/optimizer to CPU while rollout runs
    # One actor rank on a GPU: false runs the plain module under autocast(param_dtype), as
    # sharding one rank saves nothing and FSDP2's per-layer hooks cost host time every
    # micro-batch; true wraps it in FSDP2 anyway.
    shard_single_rank: bool = False


@dataclass
class SFTWarmupConfig:
    """A short supervised pass before RL (reasoning demo)."""

    steps: int = 0
    lr: float = 1e-3
    batch_size: int = 32


@dataclass
class ActorConfig:
    training_backend: Literal["fsdp", "megatron"] = "fsdp"
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    fsdp_config: FSDPConfig = field(default_factory=FSDPConfig)
    global_batch_size: int = 256  # samples per optimizer step, over all actor ranks
    micro_batch_size: int = 256  # samples per forward/backward on one rank
    enable_offload: bool = False
    sft_warmup: SFTWarmupConfig = field(default_factory=SFTWarmupConfig)
