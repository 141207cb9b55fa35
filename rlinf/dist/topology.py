"""The one object that owns the topology: world, placement and every process group.

Groups are created here and nowhere else, in the same order on every rank (the SPMD rule):
one per role, then the joins that move data or weights (actor ∪ rollout, rollout ∪ env), then
any extra groups a data path declares through `group_specs` (e.g. weight-sync broadcast groups).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

import torch
import torch.distributed as dist

from rlinf.dist.placement import PlacementPlan, RankInfo
from rlinf.dist.world import WorldInfo

log = logging.getLogger(__name__)

JOINS = (("actor", "rollout"), ("rollout", "env"))


class Topology:
    """World + placement + process groups of this run, as seen from one rank."""

    def __init__(
        self,
        world: WorldInfo,
        plan: PlacementPlan,
        extra_specs: Iterable[tuple[str, list[list[int]]]] = (),
    ):
        self.world = world
        self.plan = plan
        self.rank = world.rank
        self.me: RankInfo = plan.ranks[world.rank]
        self.device = torch.device(self.me.device)
        self._by_ranks: dict[tuple[int, ...], dist.ProcessGroup | None] = {}
        self._named: dict[str, dist.ProcessGroup | None] = {}
        self._extra: dict[str, list[tuple[list[int], dist.ProcessGroup | None]]] = {}
        if dist.is_initialized():
            self._create_groups(extra_specs)

    # -- creation ---------------------------------------------------------------------------
    def _new_group(self, ranks: list[int]) -> dist.ProcessGroup | None:
        key = tuple(sorted(ranks))
        if key not in self._by_ranks:
            if len(key) == dist.get_world_size():
                self._by_ranks[key] = dist.group.WORLD
            else:
                grp = dist.new_group(list(key))
                self._by_ranks[key] = grp if self.rank in key else None
        return self._by_ranks[key]

    def _create_groups(self, extra_specs: Iterable[tuple[str, list[list[int]]]]) -> None:
        for role in sorted(self.plan.roles):
            self._named[role] = self._new_group(self.plan.roles[role])
        for a, b in JOINS:
            if a in self.plan.roles and b in self.plan.roles:
                ranks = sorted(set(self.plan.roles[a]) | set(self.plan.roles[b]))
                self._named[f"{a}+{b}"] = self._new_group(ranks)
        for name, specs in extra_specs:
            self._extra[name] = [(list(r), self._new_group(list(r))) for r in specs]

    # -- queries ----------------------------------------------------------------------------
    @property
    def roles(self) -> list[str]:
        return self.me.roles

    def has(self, role: str) -> bool:
        return role in self.me.roles

    def ranks(self, role: str) -> list[int]:
        """Global ranks of a role, in role-rank order (empty when the role is not placed)."""
        return list(self.plan.roles.get(role, []))

    def role_rank(self, role: str) -> int:
        return self.me.role_ranks[role]

    def role_size(self, role: str) -> int:
        return len(self.plan.roles.get(role, []))

    def group(self, *roles: str) -> dist.ProcessGroup | None:
        """The group of one role, or of a declared join ("actor", "rollout"); None if not a member."""
        name = "+".join(roles)
        if name not in self._named:
            raise KeyError(f"no process group for {name!r}; created: {sorted(self._named)}")
        return self._named[name]

    def group_names(self) -> list[str]:
        return list(self._named)

    def extra_groups(self, name: str) -> list[tuple[list[int], dist.ProcessGroup | None]]:
        return self._extra[name]

    def member_groups(self) -> dict[str, dist.ProcessGroup]:
        """Every named group this rank belongs to."""
        return {n: g for n, g in self._named.items() if g is not None}


def init_world(world: WorldInfo, plan: PlacementPlan, timeout_s: float) -> None:
    """Initialise the one world group: cpu:gloo,cuda:nccl with GPUs, gloo alone without."""
    import os

    os.environ["MASTER_ADDR"] = world.master_addr
    os.environ["MASTER_PORT"] = str(world.master_port)
    use_cuda = plan.accelerator_type == "cuda" and torch.cuda.is_available()
    me = plan.ranks[world.rank]
    kwargs = {}
    if use_cuda and me.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(me.device))
    backend = "cpu:gloo,cuda:nccl" if use_cuda else "gloo"
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=world.rank,
        world_size=world.world_size,
        timeout=timedelta(seconds=timeout_s),
        **kwargs,
    )
    log.debug("world initialised: backend=%s rank=%d/%d", backend, world.rank, world.world_size)
