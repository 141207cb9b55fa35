"""Load and export Hugging Face causal LMs from local directories, with errors that cite the key.

No hub access: a path is always a local directory. Errors name the config key that
gave the path (``actor.model.model_path`` ...) so that the user knows what to fix.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _check_dir(path: str | Path, key: str) -> Path:
    directory = Path(path).expanduser()
    if not directory.exists():
        raise ValueError(
            f"{key}: directory '{directory}' does not exist; set {key} to a local "
            "Hugging Face model directory (hub downloads are not used)"
        )
    if not directory.is_dir():
        raise ValueError(f"{key}: '{directory}' is a file, expected a model directory")
    return directory


def check_model_dir(path: str | Path, key: str = "actor.model.model_path") -> Path:
    """Raise ValueError naming ``key`` unless ``path`` holds a config.json and weights."""
    directory = _check_dir(path, key)
    if not (directory / "config.json").is_file():
        raise ValueError(
            f"{key}: '{directory}' has no config.json; it must be a Hugging Face model "
            "directory written by save_pretrained"
        )
    if not any((directory / name).is_file() for name in WEIGHT_FILES):
        raise ValueError(
            f"{key}: '{directory}' has no weights (looked for {', '.join(WEIGHT_FILES)})"
        )
    return directory


def load_causal_lm(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    key: str = "actor.model.model_path",
    attn_implementation: str | None = None,
) -> torch.nn.Module:
    """``AutoModelForCausalLM`` from a local directory, in ``dtype`` on ``device``."""
    from transformers import AutoModelForCausalLM

    directory = check_model_dir(path, key)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            directory, dtype=dtype, local_files_only=True, **kwargs
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{key}: could not load a causal LM from '{directory}': {exc}") from exc
    return model.to(device)


def load_tokenizer(path: str | Path, key: str = "actor.model.model_path"):
    """``AutoTokenizer`` from a local directory; a missing pad token falls back to eos."""
    from transformers import AutoTokenizer

    directory = _check_dir(path, key)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{key}: could not load a tokenizer from '{directory}': {exc}") from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{key}: the tokenizer in '{directory}' has neither pad nor eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def export_hf(
    model: torch.nn.Module,
    tokenizer,
    out_dir: str | Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` (config + safetensors) and ``tokenizer`` as a Hugging Face directory.

    ``state_dict`` overrides the model's own: pass the full (gathered) state dict of an
    FSDP-sharded model, with plain CPU tensors; gathering is the caller's job. Call this
    on one rank only. Returns ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from torch.distributed.tensor import DTensor

    if state_dict is None:
        state_dict = model.state_dict()
    sharded = [name for name, t in state_dict.items() if isinstance(t, DTensor)]
    assert not sharded, f"export_hf needs full tensors; gather these DTensors first: {sharded[:3]}"
    state_dict = {name: t.detach().to("cpu").contiguous() for name, t in state_dict.items()}
    model.save_pretrained(out, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    logger.info("exported %s to %s", type(model).__name__, out)
    return out
