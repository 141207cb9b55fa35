"""Entry point of every process: `python -m rlinf.launch --config X.yaml [key=value ...]`.

Started by torchrun, srun or mpirun (or alone: a world of one). Every process runs this same
program: load and validate the config (before any process group exists), discover the world
from the launcher, resolve the placement, apply the rank's environment (re-executing under the
node group's interpreter if it names another one), initialise the world, create the role groups
and run the runner of `runner.task_type`, taking the branches of this rank's roles.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import traceback

RUNNERS = {
    "check": "rlinf.runners.check",
    "embodied": "rlinf.runners.embodied",
    "reasoning": "rlinf.runners.reasoning",
    "sft": "rlinf.runners.sft",
}
REEXEC_FLAG = "RLINF_REEXECUTED"
log = logging.getLogger("rlinf.launch")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m rlinf.launch",
        description="Run one RLinf job as an SPMD program (start it with torchrun, srun or mpirun).",
    )
    p.add_argument("--config", required=True, help="a YAML path, or a file name inside configs/")
    p.add_argument(
        "--plan", action="store_true", help="print the rank map and launch commands, then exit"
    )
    p.add_argument("--json", action="store_true", help="with --plan: print the map as JSON")
    p.add_argument("overrides", nargs="*", help="key=value, +key=value (add) or ~key (delete)")
    return p.parse_args(argv)


def _detected_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _print_plan(plan, args) -> None:
    from rlinf.dist.commands import launch_commands, plan_table

    cmds = launch_commands(plan, args.config, args.overrides)
    if args.json:
        out = plan.to_json()
        out["launch_commands"] = cmds
        print(json.dumps(out, indent=1))
    else:
        print(plan_table(plan))
        print("\nlaunch with one of:")
        for name, cmd in cmds.items():
            print(f"  [{name}] {cmd}")


def _maybe_reexec(interpreter: str | None) -> None:
    """Re-execute this process under the node group's interpreter (same args, same env)."""
    if not interpreter or os.environ.get(REEXEC_FLAG):
        return
    if os.path.abspath(interpreter) == os.path.abspath(sys.executable):
        return
    if not os.access(interpreter, os.X_OK):
        raise RuntimeError(
            f"cluster.node_groups[*].env_configs[*].python_interpreter_path: {interpreter} "
            "is not an executable on this node"
        )
    os.environ[REEXEC_FLAG] = "1"
    log.info("re-executing under %s", interpreter)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(interpreter, [interpreter, "-m", "rlinf.launch", *sys.argv[1:]])


def _check_nodes(plan, world) -> None:
    """Every rank is on the node the plan puts it on, and that node has the GPUs it needs."""
    import socket

    import torch.distributed as dist

    from rlinf.dist.commands import launch_commands

    rows = [None] * world.world_size
    dist.all_gather_object(rows, (world.node_rank, socket.gethostname(), _detected_gpus()))
    if all(r[0] is not None for r in rows):
        nodes = [r[0] for r in rows]
    else:  # MPI: nodes in order of first appearance of their host name
        order: dict[str, int] = {}
        nodes = [order.setdefault(r[1], len(order)) for r in rows]
    wrong = [r for r in range(world.world_size) if nodes[r] != plan.ranks[r].node]
    problems = []
    if wrong:
        r = wrong[0]
        problems.append(
            f"rank {r} runs on node {nodes[r]} ({rows[r][1]}) but the placement puts it on node "
            f"{plan.ranks[r].node}; the launcher must start {plan.procs_per_node} processes per node"
        )
    for r, info in enumerate(plan.ranks):
        if info.accelerators and max(info.accelerators) >= rows[r][2]:
            problems.append(
                f"rank {r} needs GPU {max(info.accelerators)} on node {info.node} ({rows[r][1]}), "
                f"which has {rows[r][2]} GPU(s); set cluster.accelerators_per_node to match"
            )
            break
    if problems:
        cmds = launch_commands(plan, "<config>")
        hint = "\n".join(f"  [{k}] {v}" for k, v in cmds.items())
        raise RuntimeError(
            "the started world does not match the placement:\n  "
            + "\n  ".join(problems)
            + f"\nlaunch commands that match:\n{hint}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rlinf.config import ConfigError, load_config
    from rlinf.dist.world import discover
    from rlinf.utils.logging import setup_logging

    world = discover()
    setup_logging(world.rank)
    detected = _detected_gpus()
    notes: list = []
    try:
        cfg = load_config(
            args.config,
            args.overrides,
            detected_accelerators=detected,
            plan_only=args.plan,
            notes=notes,
        )
    except ConfigError as e:
        if world.rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    from rlinf.dist.placement import resolve

    plan = resolve(cfg.cluster, detected)
    if args.plan:
        if world.rank == 0:
            _print_plan(plan, args)
            for n in notes:
                print(f"note: a run will also need {n}", file=sys.stderr)
        return 0
    if world.world_size != plan.world_size:
        from rlinf.dist.commands import launch_commands

        if world.rank == 0:
            cmds = launch_commands(plan, args.config, args.overrides)
            print(
                f"error: the launcher started {world.world_size} process(es) but the placement of "
                f"{args.config} needs {plan.world_size} ({plan.procs_per_node} per node). Launch with:\n"
                + "\n".join(f"  [{k}] {v}" for k, v in cmds.items()),
                file=sys.stderr,
            )
        return 2
    me = plan.ranks[world.rank]
    os.environ.update(me.env_vars)
    _maybe_reexec(me.python_interpreter_path)
    return _run(cfg, plan, world)


def _run(cfg, plan, world) -> int:
    import torch.distributed as dist

    from rlinf.dist.failure import FailureWatchdog, wait_and_exit
    from rlinf.dist.topology import Topology, init_world
    from rlinf.dist.world import agree_on_master
    from rlinf.runners.base import RunContext, StopSignal
    from rlinf.utils.logging import setup_logging

    setup_logging(world.rank, cfg.runner.logger.per_rank, cfg.runner.logger.log_level)
    world = agree_on_master(world)
    if world.master_port is None:
        from rlinf.dist.world import free_port

        if world.world_size > 1:
            raise RuntimeError(
                "no rendezvous port: export MASTER_PORT (and MASTER_ADDR) to every rank"
            )
        world = world.__class__(**{**world.__dict__, "master_port": free_port()})
    stop = StopSignal()
    stop.install()
    init_world(world, plan, cfg.cluster.timeout_s)
    watchdog = FailureWatchdog(world.master_addr, world.master_port, world.rank, world.world_size)
    try:
        _check_nodes(plan, world)
        topo = Topology(world, plan, _extra_group_specs(plan))
        output_dir = cfg.runner.resolved_output_dir()
        if world.rank == 0:
            _write_resolved_config(cfg, output_dir)
        runner = importlib.import_module(RUNNERS[cfg.runner.task_type])
        rc = runner.run(RunContext(cfg=cfg, topo=topo, output_dir=output_dir, stop=stop))
    except BaseException as e:  # noqa: BLE001 - every failure is reported to the peers
        name = type(e).__name__
        log.error("rank %d failed: %s: %s\n%s", world.rank, name, e, traceback.format_exc())
        watchdog.report(f"{name}: {e}")
        wait_and_exit(130 if isinstance(e, KeyboardInterrupt) else 1, cfg.cluster.failure_grace_s)
        return 1  # not reached
    watchdog.close()
    dist.barrier()
    dist.destroy_process_group()
    return rc


def _extra_group_specs(plan) -> list[tuple[str, list[list[int]]]]:
    """Groups that data paths need beyond role groups (declared here, created by Topology)."""
    specs = []
    try:
        from rlinf.dist.weight_sync import weight_sync_group_specs
    except ImportError:
        return specs
    if "actor" in plan.roles and "rollout" in plan.roles:
        specs.append(
            ("weight_sync", weight_sync_group_specs(plan.roles["actor"], plan.roles["rollout"]))
        )
    return specs


def _write_resolved_config(cfg, output_dir: str) -> None:
    import yaml

    from rlinf.config.typed import to_dict

    os.makedirs(output_dir, exist_ok=True)
    tmp = os.path.join(output_dir, ".config.yaml.tmp")
    with open(tmp, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    os.replace(tmp, os.path.join(output_dir, "config.yaml"))


if __name__ == "__main__":
    sys.exit(main())
