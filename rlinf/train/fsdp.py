"""FSDP2 (`fully_shard`) over the actor group: one mesh per actor group, mixed precision on GPU."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from rlinf.config.actor import FSDPConfig
from rlinf.utils.dtypes import DTYPES


def actor_mesh(group: dist.ProcessGroup, device: torch.device) -> DeviceMesh:
    """A 1-D device mesh over the actor group (data-parallel sharding)."""
    return DeviceMesh.from_group(group, device_type=device.type)


def shard_model(
    model: nn.Module,
    mesh: DeviceMesh,
    cfg: FSDPConfig,
    block_types: tuple[type[nn.Module], ...] = (),
) -> nn.Module:
    """Apply fully_shard to each block (e.g. decoder layers), then to the root."""
    mp = None
    if cfg.param_dtype is not None and mesh.device_type == "cuda":
        mp = MixedPrecisionPolicy(
            param_dtype=DTYPES[cfg.param_dtype], reduce_dtype=DTYPES[cfg.reduce_dtype]
        )
    kwargs = {"mesh": mesh, "reshard_after_forward": cfg.reshard_after_forward}
    if mp is not None:
        kwargs["mp_policy"] = mp
    # Small policies are one unit (one all-gather and one reduce-scatter per step); large
    # models shard each block so only one block's parameters are gathered at a time.
    for unit in (m for m in model.modules() if block_types and isinstance(m, block_types)):
        fully_shard(unit, **kwargs)
    fully_shard(model, **kwargs)
    return model


def full_state_dict(model: nn.Module, cpu: bool = True) -> dict[str, torch.Tensor]:
    """Gather the full (unsharded) state dict; a collective over the actor group."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=cpu)
    )


def clip_grad_norm_(model: nn.Module, max_norm: float | None) -> torch.Tensor:
    """Global grad-norm clipping over sharded (DTensor) gradients; returns the norm before, as a
    0-d tensor on the gradients' device (reading it is the caller's host sync)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return torch.zeros(())
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return norm


def clip_grad_norm(model: nn.Module, max_norm: float | None) -> float:
    """:func:`clip_grad_norm_` read back as a float."""
    return float(clip_grad_norm_(model, max_norm))
