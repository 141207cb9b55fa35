"""World discovery: who am I, from whichever launcher started this process.

Order of precedence (each launcher's variables are only trusted where they mean what we need):
1. torchrun (TORCHELASTIC_RUN_ID): RANK, WORLD_SIZE, LOCAL_RANK, GROUP_RANK, MASTER_ADDR/PORT.
2. MPI (Open MPI's OMPI_COMM_WORLD_*, PMIx's PMIX_RANK, MPICH/Hydra's PMI_RANK/PMI_SIZE). MPI wins
   over Slurm: under `mpirun` inside an allocation SLURM_PROCID is the batch step's, not the rank.
3. A Slurm job step (SLURM_STEP_ID set, i.e. under `srun`): SLURM_PROCID/NTASKS/LOCALID/NODEID;
   master = first host of the step's node list, port derived from the job and step ids. In the
   batch script itself SLURM_PROCID is 0 but there is no step: that is not a world.
4. Plain RANK/WORLD_SIZE/MASTER_ADDR (set by hand or by another launcher).
5. Nothing: a world of one on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import socket
import zlib
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class WorldInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int | None  # None: the launcher does not say (MPI); derived after start-up
    master_addr: str
    master_port: int | None  # None: to be agreed over MPI at start-up
    launcher: str  # "torchrun" | "mpi" | "slurm" | "env" | "single"


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand Slurm's compressed host lists: 'n[1-3,7],gpu-[01-02]' -> n1 n2 n3 n7 gpu-01 gpu-02."""
    hosts: list[str] = []
    for m in re.finditer(r"([^,\[]+)(?:\[([^\]]+)\])?([^,\[]*)", hostlist):
        prefix, ranges, suffix = m.group(1), m.group(2), m.group(3)
        if not prefix and not ranges:
            continue
        if ranges is None:
            hosts.append(prefix + suffix)
            continue
        for part in ranges.split(","):
            if "-" in part:
                lo, hi = part.split("-", 1)
                width = len(lo)
                hosts += [f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1)]
            else:
                hosts.append(prefix + part + suffix)
    return hosts


def slurm_port(job_id: str, step_id: str | None) -> int:
    """A port every task of one step computes alike, spread over 20000-59999 by job and step."""
    key = f"{job_id}.{step_id or 0}".encode()
    return 20000 + zlib.crc32(key) % 40000


def _int(env: Mapping[str, str], *names: str, default: int | None = None) -> int | None:
    for n in names:
        if env.get(n, "") != "":
            return int(env[n])
    return default


def discover(env: Mapping[str, str] | None = None) -> WorldInfo:
    """Read rank, size, local rank, node and rendezvous from the launcher's environment."""
    env = os.environ if env is None else env
    master_port_override = _int(env, "RLINF_MASTER_PORT", "MASTER_PORT")
    if env.get("TORCHELASTIC_RUN_ID") is not None and env.get("RANK") is not None:
        return WorldInfo(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=_int(env, "LOCAL_RANK", default=0),
            local_world_size=_int(env, "LOCAL_WORLD_SIZE", default=1),
            node_rank=_int(env, "GROUP_RANK"),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=_int(env, "MASTER_PORT"),
            launcher="torchrun",
        )
    mpi_rank = _int(env, "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")
    if mpi_rank is not None:
        size = _int(env, "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MPI_LOCALNRANKS")
        if size is None and "PMIX_RANK" in env:
            size = _int(env, "SLURM_NTASKS", "PMIX_SIZE")  # PMIx under srun
        if size is None:
            raise RuntimeError(
                "MPI launch detected (rank variable set) but the world size is unknown: "
                "use Open MPI's mpirun, MPICH's mpiexec, or srun --mpi=pmix"
            )
        local_rank = _int(
            env, "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", default=0
        )
        local_size = _int(
            env, "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE", default=1
        )
        return WorldInfo(
            rank=mpi_rank,
            world_size=size,
            local_rank=local_rank,
            local_world_size=local_size,
            node_rank=_int(env, "RLINF_NODE_RANK"),
            master_addr=env.get("MASTER_ADDR", ""),
            master_port=master_port_override,
            launcher="mpi",
        )
    if env.get("SLURM_STEP_ID") is not None and env.get("SLURM_PROCID") is not None:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        hosts = expand_hostlist(nodelist)
        ntasks = _int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", default=1)
        return WorldInfo(
            rank=int(env["SLURM_PROCID"]),
            world_size=ntasks,
            local_rank=_int(env, "SLURM_LOCALID", default=0),
            local_world_size=_slurm_local_size(env),
            node_rank=_int(env, "SLURM_NODEID"),
            master_addr=env.get("MASTER_ADDR") or hosts[0],
            master_port=master_port_override
            or slurm_port(env.get("SLURM_JOB_ID", "0"), env.get("SLURM_STEP_ID")),
            launcher="slurm",
        )
    if env.get("RANK") is not None and env.get("WORLD_SIZE") is not None:
        return WorldInfo(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=_int(env, "LOCAL_RANK", default=0),
            local_world_size=_int(env, "LOCAL_WORLD_SIZE", default=1),
            node_rank=_int(env, "GROUP_RANK", "RLINF_NODE_RANK"),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=master_port_override,
            launcher="env",
        )
    return WorldInfo(0, 1, 0, 1, 0, "127.0.0.1", master_port_override, "single")


def _slurm_local_size(env: Mapping[str, str]) -> int:
    # SLURM_STEP_TASKS_PER_NODE looks like "2(x3),1": this node's count is at SLURM_NODEID.
    spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    node = _int(env, "SLURM_NODEID", default=0)
    if spec:
        counts: list[int] = []
        for part in spec.split(","):
            m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
            if m:
                counts += [int(m.group(1))] * int(m.group(2) or 1)
        if node < len(counts):
            return counts[node]
    return 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def agree_on_master(info: WorldInfo) -> WorldInfo:
    """Fill in the master address/port for MPI launches (broadcast from rank 0 over mpi4py)."""
    if info.master_addr and info.master_port:
        return info
    if info.world_size == 1:  # a lone process: nobody to agree with (importing MPI takes seconds)
        return _replace(
            info,
            master_addr=info.master_addr or "127.0.0.1",
            master_port=info.master_port or free_port(),
        )
    try:
        from mpi4py import MPI
    except ImportError:
        if info.world_size == info.local_world_size:
            # One node, no mpi4py: every rank derives the same port from the MPI job id.
            job = os.environ.get("OMPI_MCA_orte_hnp_uri") or os.environ.get("PMIX_NAMESPACE") or ""
            job = job or os.environ.get("OMPI_MCA_ess_base_jobid", "") or str(os.getppid())
            port = info.master_port or 20000 + zlib.crc32(job.encode()) % 40000
            return _replace(info, master_addr=info.master_addr or "127.0.0.1", master_port=port)
        raise RuntimeError(
            "multi-node MPI launch needs mpi4py to agree on a rendezvous address "
            "(pip install mpi4py), or MASTER_ADDR and MASTER_PORT exported to every rank"
        ) from None
    comm = MPI.COMM_WORLD
    payload = None
    if comm.Get_rank() == 0:
        addr = info.master_addr or _routable_hostname()
        payload = (addr, info.master_port or free_port())
    addr, port = comm.bcast(payload, root=0)
    return _replace(info, master_addr=addr, master_port=port)


def _routable_hostname() -> str:
    host = socket.gethostname()
    try:
        socket.getaddrinfo(host, None)
        return host
    except OSError:
        return "127.0.0.1"


def _replace(info: WorldInfo, **kw) -> WorldInfo:
    from dataclasses import replace

    return replace(info, **kw)
