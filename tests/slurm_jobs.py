"""Submit and watch jobs on the real Slurm of this machine (CI starts it: .ci/run)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from launchers import REPO, base_env, require

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "DEADLINE"}


def require_slurm() -> None:
    """Skip without Slurm (fail in CI), and fail if its controller does not answer."""
    require("sbatch")
    p = subprocess.run(["sinfo", "-h", "-o", "%D %t"], capture_output=True, text=True, timeout=30)
    if p.returncode != 0 or "idle" not in p.stdout:
        msg = f"Slurm is installed but not ready: {p.stdout}{p.stderr}"
        if os.environ.get("RLINF_CI"):
            pytest.fail(msg + " (.ci/run starts it with ../shared/tools/local-slurm.sh)")
        pytest.skip(msg)


def slurm_env(extra: dict | None = None) -> dict:
    env = base_env(extra)
    conf = Path(os.environ.get("LOCAL_SLURM_DIR", "/tmp/local-slurm")) / "env.sh"
    if conf.exists():  # Open MPI loopback settings for the fake nodes
        for m in re.finditer(r"export (.+)", conf.read_text()):
            for kv in m.group(1).split():
                k, _, v = kv.partition("=")
                env.setdefault(k, v)
    return env


def submit(args: list[str], env: dict | None = None) -> str:
    """`sbatch --parsable ARGS` from the repository; returns the job id."""
    p = subprocess.run(
        ["sbatch", "--parsable", *args],
        cwd=REPO,
        env=slurm_env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, f"sbatch failed: {p.stdout}{p.stderr}"
    return p.stdout.strip().split(";")[0]


def job_info(job: str) -> dict[str, str]:
    p = subprocess.run(
        ["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30
    )
    return dict(re.findall(r"(\w+)=(\S*)", p.stdout))


def wait(job: str, timeout: float, poll: float = 0.5) -> dict[str, str]:
    """Like `sbatch --wait` (whose poll interval grows to 32 s), polling every `poll` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = job_info(job)
        if info.get("JobState") in TERMINAL:
            return info
        time.sleep(poll)
    subprocess.run(["scancel", job], timeout=30)
    pytest.fail(f"job {job} still {job_info(job).get('JobState')} after {timeout:.0f} s")


def cancel(job: str) -> None:
    subprocess.run(["scancel", job], capture_output=True, timeout=30)


def two_group_config(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A 2-node CPU config whose node groups run under two venvs with different env vars.

    Node 0 (group `train`: actor on both processes) uses venv `a` and RLINF_GROUP_MARK="train
    side"; node 1 (group `sim`: rollout and env) uses venv `b` and RLINF_GROUP_MARK=sim. The
    venvs sit over this interpreter (so torch and rlinf import) but are distinct executables.
    Returns (config, python of a, python of b).
    """
    import sys

    pys = []
    for name in ("a", "b"):
        subprocess.run(
            [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
             str(tmp_path / f"venv_{name}")],
            check=True,
        )  # fmt: skip
        pys.append(tmp_path / f"venv_{name}" / "bin" / "python")
    cfg = tmp_path / "two_groups.yaml"
    cfg.write_text(f"""
cluster:
  num_nodes: 2
  accelerator_type: cpu
  accelerators_per_node: 2
  component_placement:
    actor: {{node_group: train, placement: 0-1}}
    rollout: {{node_group: sim, placement: 0}}
    env: {{node_group: sim, placement: 1}}
  node_groups:
    - label: train
      node_ranks: 0
      env_configs:
        - python_interpreter_path: {pys[0]}
          env_vars: [{{RLINF_GROUP_MARK: "train side"}}]
    - label: sim
      node_ranks: 1
      env_configs:
        - python_interpreter_path: {pys[1]}
          env_vars: {{RLINF_GROUP_MARK: sim}}
runner:
  task_type: check
  output_dir: {tmp_path / "run"}
  logger: {{logger_backends: [console]}}
""")
    return cfg, pys[0], pys[1]


def assert_two_groups_ran(text: str, py_a: Path, py_b: Path) -> None:
    """Rank 0's check report shows each rank under its group's interpreter and env var."""
    assert "check passed: 4 ranks" in text, text[-4000:]
    for rank, node, group, py, mark in (
        (0, 0, "train", py_a, "train side"),
        (1, 0, "train", py_a, "train side"),
        (2, 1, "sim", py_b, "sim"),
        (3, 1, "sim", py_b, "sim"),
    ):
        pat = rf"rank {rank} node {node} host \S+ device cpu .*\| python {re.escape(str(py))} "
        pat += rf"RLINF_GROUP_MARK={mark}\n"
        assert re.search(pat, text), f"rank {rank} ({group}) lacks {py}, {mark}:\n{text[-4000:]}"
