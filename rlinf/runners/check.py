"""`runner.task_type: check` — prove every rank's roles and groups work, then exit 0.

What a user runs on a new cluster before a long job: each rank reports where it is and what
it holds, then runs one all-reduce in every group it belongs to and checks the sum equals the
group's size, on the rank's own device (so NCCL is exercised on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import logging
import os
import socket
import sys

import torch
import torch.distributed as dist

from rlinf.runners.base import RunContext

log = logging.getLogger(__name__)


def run(ctx: RunContext) -> int:
    topo = ctx.topo
    me = topo.me
    log.info(
        "rank %d on node %d (%s): roles %s, device %s, node group %s%s",
        me.rank,
        me.node,
        socket.gethostname(),
        ",".join(me.roles) or "-",
        me.device,
        me.node_group,
        f", hardware {me.hardware}" if me.hardware else "",
    )
    fail_rank = os.environ.get("RLINF_FAIL_RANK")  # fault injection for the failure test
    if fail_rank is not None and int(fail_rank) == me.rank:
        raise RuntimeError(f"injected failure on rank {me.rank} (RLINF_FAIL_RANK)")
    report = []
    for name, group in topo.member_groups().items():
        t = torch.ones(1, device=topo.device)
        dist.all_reduce(t, group=group)
        expected = dist.get_world_size(group)
        if int(t.item()) != expected:
            raise RuntimeError(
                f"group {name}: all-reduce gave {int(t.item())}, expected {expected}"
            )
        report.append(f"{name}({expected})")
    world = torch.ones(1)
    dist.all_reduce(world)
    env = {k: os.environ.get(k) for k in me.env_vars}
    mine = (
        me.rank,
        me.node,
        socket.gethostname(),
        me.device,
        me.roles,
        report,
        sys.executable,
        env,
    )
    rows = [None] * dist.get_world_size()
    dist.all_gather_object(rows, mine)
    if me.rank == 0:
        for rank, node, host, device, roles, groups, exe, env in rows:
            log.info(
                "rank %d node %d host %s device %s roles %s: proved %s | python %s%s",
                rank,
                node,
                host,
                device,
                ",".join(roles) or "-",
                " ".join(groups) or "-",
                exe,
                "".join(f" {k}={v}" for k, v in env.items()),
            )
        log.info("check passed: %d ranks, every role group answered", len(rows))
    return 0
