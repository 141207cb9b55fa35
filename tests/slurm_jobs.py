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
