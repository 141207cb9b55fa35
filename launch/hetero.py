#!/usr/bin/env python3
"""Start an RLinf job whose node groups use different interpreters and environment variables.

    python launch/hetero.py --launcher srun   --config X.yaml [key=value ...]   # in an allocation
    python launch/hetero.py --launcher mpirun --config X.yaml [--hosts a,b,...] [key=value ...]
    python launch/hetero.py --launcher srun   --config X.yaml --plan            # show, run nothing

From `cluster.node_groups[*].env_configs` (python_interpreter_path, env_vars) it writes an
`srun --multi-prog` file (and a SLURM_HOSTFILE when nodes run different process counts) or an
`mpirun` MPMD command line, then replaces itself with that launcher. Every rank starts directly
under its node's interpreter, with its node's variables set before Python starts.
Files go to --workdir (default: <runner.output_dir>/launch).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="launch/hetero.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="a YAML path, or a file name inside configs/")
    p.add_argument("--launcher", choices=("srun", "mpirun"), default="srun")
    p.add_argument("--plan", action="store_true", help="print what would run, start nothing")
    p.add_argument(
        "--python",
        default=os.environ.get("RLINF_PYTHON", "python"),
        help="interpreter for ranks whose node group names none (default: $RLINF_PYTHON or python)",
    )
    p.add_argument(
        "--hosts",
        default=None,
        help="comma-separated host per node (mpirun/hostfile; default: the Slurm node list)",
    )
    p.add_argument("--workdir", default=None, help="where the multi-prog file/hostfile go")
    p.add_argument(
        "--launcher-args",
        default="",
        help="extra arguments for srun/mpirun, one shell-quoted string (e.g. '--oversubscribe')",
    )
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    return p.parse_args(argv)


def _detected_gpus() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _hosts(args: argparse.Namespace) -> list[str] | None:
    if args.hosts:
        return [h for h in args.hosts.split(",") if h]
    nodelist = os.environ.get("SLURM_JOB_NODELIST")
    if nodelist:
        from rlinf.dist.world import expand_hostlist

        return expand_hostlist(nodelist)
    return None


def _runs(lines: list[str]) -> list[str]:
    """Fold repeated hostfile lines: `n1` x 8 -> `n1  (x8)`."""
    out: list[list] = []
    for line in lines:
        if out and out[-1][0] == line:
            out[-1][1] += 1
        else:
            out.append([line, 1])
    return [f"{h}  (x{c})" if c > 1 else h for h, c in out]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rlinf.config import ConfigError, load_config
    from rlinf.dist import hetero
    from rlinf.dist.commands import plan_table
    from rlinf.dist.placement import resolve

    detected = _detected_gpus()
    try:
        cfg = load_config(args.config, args.overrides, detected_accelerators=detected)
        plan = resolve(cfg.cluster, detected)
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    workdir = Path(args.workdir or os.path.join(cfg.runner.resolved_output_dir(), "launch"))
    extra = shlex.split(args.launcher_args)
    hosts = _hosts(args)
    if hosts is None and args.plan and args.launcher == "srun":
        hosts = [f"<node{i}>" for i in range(plan.num_nodes)]  # placeholders, to show the layout
    env = dict(os.environ)
    files: dict[Path, str] = {}
    try:
        if args.launcher == "srun":
            mp = workdir / "multi_prog.conf"
            files[mp] = hetero.multi_prog_text(plan, args.config, args.overrides, args.python)
            argv_ = hetero.srun_argv(plan, str(mp.resolve()), extra)
            if hetero.uniform_tasks_per_node(plan) is None:
                if hosts is None:
                    raise ValueError(
                        "nodes run different process counts, so srun needs a SLURM_HOSTFILE: "
                        "run inside the allocation or pass --hosts"
                    )
                hf = workdir / "hostfile"
                files[hf] = hetero.slurm_hostfile(plan, hosts)
                env["SLURM_HOSTFILE"] = str(hf.resolve())
        else:
            argv_ = hetero.mpirun_argv(plan, args.config, args.overrides, args.python, hosts, extra)
    except ValueError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2

    if args.plan:
        _out(plan_table(plan))
        _out("\nhow each node starts:")
        for b in hetero.rank_blocks(plan, args.python):
            env_text = " ".join(f"{k}={v}" for k, v in b.env_vars.items()) or "-"
            _out(
                f"  node {b.node:>3} ranks {b.ranks:<9} groups {','.join(b.node_groups):<12} "
                f"python {b.python}  env {env_text}"
            )
        for path, text in files.items():
            lines = text.splitlines()
            _out(f"\n{path} ({len(lines)} lines):")
            if path.name == "hostfile":
                lines = _runs(lines)
            shown = lines if len(lines) <= 40 else [*lines[:20], "...", *lines[-5:]]
            _out("\n".join(f"  {line}" for line in shown))
        prefix = f"SLURM_HOSTFILE={env['SLURM_HOSTFILE']} " if "SLURM_HOSTFILE" in env else ""
        _out(f"\n[{args.launcher}] {prefix}{hetero.render_argv(argv_)}")
        return 0

    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    sys.stderr.write(f"launch/hetero.py: {shlex.join(argv_)}\n")
    sys.stderr.flush()
    os.execvpe(argv_[0], argv_, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
