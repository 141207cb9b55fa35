"""Config precision names to torch dtypes (`fp32`, `bf16`, `fp16`)."""

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
