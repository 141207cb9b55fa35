"""Heterogeneous launch: start each node group under its own interpreter and environment.

`cluster.node_groups[*].env_configs` give nodes their own `python_interpreter_path` and
`env_vars`. `rlinf.launch` can apply them itself (re-exec), but only after it has started under
the launcher's interpreter, and some variables (LD_LIBRARY_PATH, CUDA_*, NCCL_*) must be set
before Python starts. So the launcher starts every rank right away under its node's interpreter
with its node's variables, in one of two MPMD forms:

- `srun --multi-prog FILE`: one line per block of ranks, `<ranks> /usr/bin/env K=V ... <python>
  -m rlinf.launch ...` (plus a SLURM_HOSTFILE when nodes run different process counts);
- `mpirun -n K --host h:K -x K=V ... <python> -m rlinf.launch ... : ...`: one app context per
  node, each also exporting RLINF_NODE_RANK (MPI does not say which node a rank is on).

Pure: builds text and argv from a PlacementPlan; `launch/hetero.py` is the command line tool.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from rlinf.dist.placement import PlacementPlan

DEFAULT_PYTHON = "python"
ENV = "/usr/bin/env"
# Set on every started rank: it already runs under its node group's interpreter (no re-exec).
STARTED_FLAG = "RLINF_REEXECUTED=1"
_SAFE = re.compile(r"[A-Za-z0-9_@+=:,./-]+")  # else quoted (srun expands %t, %o outside quotes)


@dataclass(frozen=True)
class RankBlock:
    """Consecutive global ranks on one node that start the same way."""

    first: int
    last: int
    node: int
    node_groups: tuple[str, ...]
    python: str
    env_vars: dict[str, str] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    @property
    def ranks(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


def rank_blocks(plan: PlacementPlan, python: str = DEFAULT_PYTHON) -> list[RankBlock]:
    """Split the ranks into per-node blocks of identical interpreter and env vars.

    Ranks of one node are consecutive (placement numbers ranks node by node). A rank whose node
    group names no interpreter uses ``python``.
    """
    blocks: list[RankBlock] = []
    for r in plan.ranks:
        py = r.python_interpreter_path or python
        last = blocks[-1] if blocks else None
        if last and last.node == r.node and last.python == py and last.env_vars == r.env_vars:
            groups = last.node_groups
            if r.node_group not in groups:
                groups = (*groups, r.node_group)
            blocks[-1] = RankBlock(last.first, r.rank, r.node, groups, py, last.env_vars)
        else:
            blocks.append(RankBlock(r.rank, r.rank, r.node, (r.node_group,), py, dict(r.env_vars)))
    return blocks


def program_argv(python: str, config: str, overrides: Sequence[str] = ()) -> list[str]:
    """The SPMD program every rank runs."""
    return [python, "-m", "rlinf.launch", "--config", config, *overrides]


def _mp_quote(token: str, what: str) -> str:
    """Quote for srun --multi-prog, whose parser knows single quotes only."""
    if _SAFE.fullmatch(token):
        return token
    if "'" in token or "\n" in token:
        raise ValueError(
            f"{what}: {token!r} holds a single quote or a newline, which srun --multi-prog files "
            "cannot carry; drop it, or launch with --launcher mpirun"
        )
    return f"'{token}'"


def multi_prog_text(
    plan: PlacementPlan, config: str, overrides: Sequence[str] = (), python: str = DEFAULT_PYTHON
) -> str:
    """The `srun --multi-prog` file: one line per run of ranks that start the same way."""
    _check_every_node_used(plan, "srun")
    lines = [
        "# srun --multi-prog file written by launch/hetero.py: <task ranks> <program> <args>",
        f"# {plan.world_size} ranks on {plan.num_nodes} nodes; node i runs ranks in node order",
    ]
    prev_cmd, prev_first, prev_last = None, 0, -1
    out: list[tuple[int, int, str]] = []
    for b in rank_blocks(plan, python):
        env = [f"{k}={v}" for k, v in b.env_vars.items()]
        argv = [ENV, *env, STARTED_FLAG, *program_argv(b.python, config, overrides)]
        cmd = " ".join(_mp_quote(t, f"node {b.node} ({','.join(b.node_groups)})") for t in argv)
        if cmd == prev_cmd and b.first == prev_last + 1:
            out[-1] = (prev_first, b.last, cmd)
        else:
            out.append((b.first, b.last, cmd))
            prev_first = b.first
        prev_cmd, prev_last = cmd, b.last
    for first, last, cmd in out:
        ranks = str(first) if first == last else f"{first}-{last}"
        lines.append(f"{ranks} {cmd}")
    return "\n".join(lines) + "\n"


def uniform_tasks_per_node(plan: PlacementPlan) -> int | None:
    """Processes per node when every node runs the same count, else None."""
    counts = set(plan.procs_per_node)
    return counts.pop() if len(counts) == 1 else None


def slurm_hostfile(plan: PlacementPlan, hosts: Sequence[str]) -> str:
    """SLURM_HOSTFILE for `--distribution=arbitrary`: one host per rank, in rank order."""
    _check_hosts(plan, hosts)
    return "".join(f"{hosts[r.node]}\n" for r in plan.ranks)


def srun_argv(
    plan: PlacementPlan, multi_prog_path: str, extra_args: Sequence[str] = ()
) -> list[str]:
    """The srun command for the multi-prog file.

    Uneven process counts need `--distribution=arbitrary` and SLURM_HOSTFILE (see
    `slurm_hostfile`) in the environment of this command.
    """
    _check_every_node_used(plan, "srun")
    k = uniform_tasks_per_node(plan)
    if k is not None:
        layout = [f"--nodes={plan.num_nodes}", f"--ntasks-per-node={k}"]
    else:
        layout = [
            f"--nodes={plan.num_nodes}",
            f"--ntasks={plan.world_size}",
            "--distribution=arbitrary",
        ]
    return ["srun", *layout, "--kill-on-bad-exit=1", *extra_args, "--multi-prog", multi_prog_path]


def mpirun_argv(
    plan: PlacementPlan,
    config: str,
    overrides: Sequence[str] = (),
    python: str = DEFAULT_PYTHON,
    hosts: Sequence[str] | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """An Open MPI MPMD command: one app context per node, in node order (= rank order).

    Without ``hosts`` no `--host` is given (every context runs where mpirun puts it, e.g. one
    machine). Each context exports RLINF_NODE_RANK, its env vars and RLINF_REEXECUTED.
    """
    if hosts is not None:
        _check_hosts(plan, hosts)
    argv = ["mpirun", *extra_args]
    for b in _node_blocks(plan, python):
        if len(argv) > 1 + len(extra_args):
            argv.append(":")
        argv += ["-n", str(b.count)]
        if hosts is not None:
            argv += ["--host", f"{hosts[b.node]}:{b.count}"]
        argv += ["-x", f"RLINF_NODE_RANK={b.node}", "-x", STARTED_FLAG]
        for k, v in b.env_vars.items():
            argv += ["-x", f"{k}={v}"]
        argv += program_argv(b.python, config, overrides)
    return argv


def render_argv(argv: Sequence[str]) -> str:
    """A copy-pasteable shell line, one MPMD context per line."""
    text = shlex.join(argv)
    return text.replace(" : ", " \\\n  : ")


def _node_blocks(plan: PlacementPlan, python: str) -> list[RankBlock]:
    """One block per node (interpreter and env vars are set per node by the placement)."""
    blocks = rank_blocks(plan, python)
    assert len({b.node for b in blocks}) == len(blocks), "one interpreter and env per node"
    return blocks


def _check_hosts(plan: PlacementPlan, hosts: Sequence[str]) -> None:
    if len(hosts) < plan.num_nodes:
        raise ValueError(
            f"{len(hosts)} host(s) given for cluster.num_nodes={plan.num_nodes}; pass one host per "
            "node (--hosts, or run inside a Slurm allocation of that many nodes)"
        )


def _check_every_node_used(plan: PlacementPlan, launcher: str) -> None:
    idle = [n for n, c in enumerate(plan.procs_per_node) if c == 0]
    if idle:
        raise ValueError(
            f"nodes {idle} run no process in this placement, so {launcher}'s node numbering would "
            "not match it; lower cluster.num_nodes or place a role on those nodes "
            "(or use --launcher mpirun, which numbers nodes itself)"
        )
