"""Map Hugging Face parameter names onto the fast model's fused parameters, and load them.

``model.layers.N.self_attn.{q,k,v}_proj.*`` land in row slices of ``layers.N.qkv.*`` and
``model.layers.N.mlp.{gate,up}_proj.*`` in row slices of ``layers.N.gate_up.*``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator

import torch

from rlinf.rollout.fast.spec import ModelSpec

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_SKIP_SUFFIXES = ("rotary_emb.inv_freq",)


def hf_to_fast(name: str, spec: ModelSpec) -> tuple[str, int, int] | None:
    """Target of HF parameter ``name``: (fast parameter name, first row, end row), the rows
    spanning the whole parameter when it is not fused; None for buffers that need no copy.

    Raises ValueError for a name the architecture does not have.
    """
    if name.endswith(_SKIP_SUFFIXES):
        return None
    q, kv, inter = spec.q_size, spec.kv_size, spec.intermediate_size
    if name == "model.embed_tokens.weight":
        return "embed_tokens.weight", 0, spec.vocab_size
    if name == "model.norm.weight":
        return "norm", 0, spec.hidden_size
    if name == "lm_head.weight":
        target = "embed_tokens.weight" if spec.tie_word_embeddings else "lm_head"
        return target, 0, spec.vocab_size
    m = _LAYER.match(name)
    if m is None or int(m.group(1)) >= spec.num_layers:
        raise ValueError(_unknown(name))
    i, rest = int(m.group(1)), m.group(2)
    p = f"layers.{i}."
    fused = {
        "self_attn.q_proj": ("qkv", 0, q),
        "self_attn.k_proj": ("qkv", q, q + kv),
        "self_attn.v_proj": ("qkv", q + kv, q + 2 * kv),
        "mlp.gate_proj": ("gate_up", 0, inter),
        "mlp.up_proj": ("gate_up", inter, 2 * inter),
    }
    plain = {
        "self_attn.o_proj": ("o_proj", spec.hidden_size),
        "mlp.down_proj": ("down_proj", spec.hidden_size),
    }
    module, _, kind = rest.rpartition(".")
    if kind in ("weight", "bias") and module in fused:
        target, a, b = fused[module]
        return f"{p}{target}.{kind}", a, b
    if kind in ("weight", "bias") and module in plain:
        target, rows = plain[module]
        return f"{p}{target}.{kind}", 0, rows
    norms = {
        "input_layernorm.weight": ("input_layernorm", spec.hidden_size),
        "post_attention_layernorm.weight": ("post_attention_layernorm", spec.hidden_size),
    }
    if spec.qk_norm:
        norms["self_attn.q_norm.weight"] = ("q_norm", spec.head_dim)
        norms["self_attn.k_norm.weight"] = ("k_norm", spec.head_dim)
    if rest in norms:
        target, rows = norms[rest]
        return p + target, 0, rows
    raise ValueError(_unknown(name))


def _unknown(name: str) -> str:
    return (
        f"load_weights: unknown parameter {name!r} for the fast engine; expected Hugging Face "
        "names such as 'model.layers.0.self_attn.q_proj.weight' (set engine.name_mapping to "
        "rename or drop other names)"
    )


def load_into(
    params: dict[str, torch.Tensor],
    weights: Iterable[tuple[str, torch.Tensor]],
    spec: ModelSpec,
    name_mapping: Callable[[str], str | None] | None = None,
) -> dict[str, set[tuple[int, int]]]:
    """Copy HF-named ``weights`` into ``params`` (fast names, from ``named_parameters``).

    ``name_mapping`` renames incoming names first (None drops one). Returns, per fast
    parameter, the row ranges written. Raises ValueError naming the parameter on unknown names
    or shape mismatches.
    """
    covered: dict[str, set[tuple[int, int]]] = {}
    with torch.no_grad():
        for raw_name, tensor in weights:
            name = name_mapping(raw_name) if name_mapping is not None else raw_name
            if name is None:
                continue
            target = hf_to_fast(name, spec)
            if target is None:
                continue
            fast_name, a, b = target
            if fast_name not in params:
                raise ValueError(
                    f"load_weights: {name!r} maps to {fast_name!r}, which this model lacks "
                    "(bias or norm absent from its config)"
                )
            full = params[fast_name]
            dst = full if (a, b) == (0, full.shape[0]) else full[a:b]
            if tuple(tensor.shape) != tuple(dst.shape):
                raise ValueError(
                    f"load_weights: {name!r} has shape {tuple(tensor.shape)} but the fast engine "
                    f"expects {tuple(dst.shape)} (rows {a}:{b} of {fast_name!r})"
                )
            if hasattr(tensor, "full_tensor"):  # a DTensor shard: gather it
                tensor = tensor.full_tensor()
            dst.copy_(tensor, non_blocking=True)
            covered.setdefault(fast_name, set()).add((a, b))
    return covered


def missing_params(
    params: dict[str, torch.Tensor], covered: dict[str, set[tuple[int, int]]]
) -> list[str]:
    """Fast parameters not fully written by a load (``covered`` from ``load_into``)."""
    missing = []
    for name, p in params.items():
        rows = sum(b - a for a, b in covered.get(name, ()))
        if rows < p.shape[0]:
            missing.append(name)
    return missing


def iter_checkpoint(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs from a local Hugging Face checkpoint folder (safetensors or .bin)."""
    files = sorted(os.listdir(path))
    st = [f for f in files if f.endswith(".safetensors")]
    if st:
        from safetensors import safe_open

        for f in st:
            with safe_open(os.path.join(path, f), framework="pt") as fh:
                for key in fh.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    yield key, fh.get_tensor(key)
        return
    bins = [f for f in files if f.endswith(".bin") and f.startswith("pytorch_model")]
    if not bins:
        raise ValueError(
            f"no *.safetensors or pytorch_model*.bin files in {path!r}: point the rollout model "
            "path at a Hugging Face checkpoint folder"
        )
    for f in bins:
        state = torch.load(os.path.join(path, f), map_location="cpu", weights_only=True)
        yield from state.items()
