"""Render a PlacementPlan as a table and as the launcher command lines that realise it."""

from __future__ import annotations

import shlex

from rlinf.dist.placement import PlacementPlan
from rlinf.dist.ranges import describe


def program_args(config: str, overrides: list[str]) -> str:
    return " ".join(
        ["-m", "rlinf.launch", "--config", shlex.quote(config), *map(shlex.quote, overrides)]
    )


def launch_commands(
    plan: PlacementPlan, config: str, overrides: list[str] | None = None
) -> dict[str, str]:
    """Command lines for torchrun (when every node runs the same count), srun and mpirun."""
    args = program_args(config, overrides or [])
    counts = plan.procs_per_node
    n, total = plan.num_nodes, plan.world_size
    cmds: dict[str, str] = {}
    used = [c for c in counts if c]
    uniform = len(set(counts)) == 1
    if uniform:
        k = counts[0]
        if n == 1:
            cmds["torchrun"] = f"torchrun --standalone --nproc_per_node {k} {args}"
        else:
            cmds["torchrun"] = (
                f"torchrun --nnodes {n} --nproc_per_node {k} --node_rank $NODE_RANK "
                f"--master_addr $MASTER_ADDR --master_port 29500 {args}"
            )
        cmds["srun"] = f"srun --nodes {n} --ntasks-per-node {k} --kill-on-bad-exit=1 python {args}"
        cmds["mpirun"] = f"mpirun -n {total} --map-by ppr:{k}:node python {args}"
    else:
        per_node = ",".join(f"node{i}:{c}" for i, c in enumerate(counts))
        cmds["srun"] = (
            f"# {per_node}\n"
            "# hostfile: one line per rank, node i repeated for each of its processes, in order\n"
            f"SLURM_HOSTFILE=hostfile srun --nodes {n} --ntasks {total} --distribution=arbitrary "
            f"--kill-on-bad-exit=1 python {args}"
        )
        cmds["mpirun"] = (
            "# hosts: one line per node, '<host> slots=<count>' with counts "
            + " ".join(map(str, counts))
            + f"\nmpirun --hostfile hosts -n {total} --map-by slot python {args}"
        )
    if not used or len(used) < n:
        idle = [i for i, c in enumerate(counts) if c == 0]
        cmds["note"] = f"nodes {describe(idle)} run no process in this placement"
    return cmds


def plan_table(plan: PlacementPlan, max_rows: int = 64) -> str:
    """A fixed-width table of the rank map; long maps are folded into runs of similar ranks."""
    header = f"{'rank':>6} {'node':>5} {'local':>5} {'device':<8} {'node_group':<12} roles"
    lines = [
        f"world_size={plan.world_size} num_nodes={plan.num_nodes} accelerator={plan.accelerator_type}",
        header,
        "-" * len(header),
    ]
    rows = []
    for r in plan.ranks:
        roles = ",".join(f"{role}[{r.role_ranks[role]}]" for role in r.roles)
        extra = ""
        if r.hardware:
            extra = " hw=" + ",".join(
                f"{k}={v}" for k, v in r.hardware.items() if k not in ("type",)
            )
        rows.append(
            (
                r,
                f"{r.rank:>6} {r.node:>5} {r.local_rank:>5} {r.device:<8} {r.node_group:<12} {roles}{extra}",
            )
        )
    if len(rows) <= max_rows:
        lines += [text for _, text in rows]
    else:
        # Fold runs of ranks that share node group and role set into one line each.
        start = 0
        while start < len(rows):
            r0 = rows[start][0]
            end = start
            while (
                end + 1 < len(rows)
                and rows[end + 1][0].node_group == r0.node_group
                and rows[end + 1][0].roles == r0.roles
                and not rows[end + 1][0].hardware
            ):
                end += 1
            r1 = rows[end][0]
            if end == start:
                lines.append(rows[start][1])
            else:
                roles = ",".join(
                    f"{role}[{r0.role_ranks[role]}-{r1.role_ranks[role]}]" for role in r0.roles
                )
                nodes = f"node {r0.node}" if r0.node == r1.node else f"nodes {r0.node}-{r1.node}"
                lines.append(
                    f"{r0.rank:>6} {'':>5} {'':>5} {'':<8} {r0.node_group:<12} "
                    f"ranks {r0.rank}-{r1.rank} on {nodes}: {roles}"
                )
            start = end + 1
    lines.append("")
    for role, ranks in plan.roles.items():
        lines.append(
            f"{role:<10} {len(ranks):>5} process(es): global ranks {describe(sorted(ranks))}"
        )
    return "\n".join(lines)
