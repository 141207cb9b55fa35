"""`cluster`: the machines and where each role runs (RLinf's placement vocabulary)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

RangeSpec = int | str | list[int]
"""Ranks as written by users: 3, "0-3", "0-1,4", "all" or a list of integers."""


@dataclass
class NodeEnvConfig:
    """Software environment for a subset of a node group's nodes."""

    node_ranks: RangeSpec = "all"  # subset of the group's node_ranks ("all": the whole group)
    env_vars: list[dict[str, str]] | dict[str, str] = field(
        default_factory=list
    )  # set before start
    python_interpreter_path: str | None = None  # re-exec under this interpreter if different


@dataclass
class HardwareConfig:
    """Non-accelerator hardware of a node group (e.g. Franka robots); one entry per device."""

    type: str
    configs: list[dict[str, Any]] = field(default_factory=list)  # each needs `node_rank`


@dataclass
class NodeGroupConfig:
    """Nodes that share hardware and software; referenced by `label` in placements."""

    label: str
    node_ranks: RangeSpec
    env_configs: list[NodeEnvConfig] = field(default_factory=list)
    hardware: HardwareConfig | None = None
    accelerators_per_node: int | None = None  # overrides cluster.accelerators_per_node here


@dataclass
class ClusterConfig:
    """Nodes, node groups and the placement of roles on them."""

    num_nodes: int = 1
    # role name(s) -> placement. Short form: `actor,rollout: 0-3` / `all` / `0-1:0-7`.
    # Long form: `actor: {node_group: a800, placement: 0-63}`.
    component_placement: dict[str, Any] = field(default_factory=lambda: {"actor": "all"})
    node_groups: list[NodeGroupConfig] = field(default_factory=list)
    # What a node's default resources are: GPUs ("cuda"), or process slots on the CPU ("cpu").
    # "auto": cuda when this machine has GPUs, else cpu.
    accelerator_type: Literal["auto", "cuda", "cpu"] = "auto"
    # Resources per node. cuda: GPUs (null: what the node detects); cpu: process slots (null: 1,
    # i.e. the node itself is the resource, as in RLinf).
    accelerators_per_node: int | None = None
    timeout_s: float = 600.0  # collective timeout; a stuck collective fails after this
    failure_grace_s: float = 5.0  # after one rank fails, how long the others get to exit
