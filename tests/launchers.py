"""Start real launchers (torchrun, mpirun, plain env ranks) around `python -m rlinf.launch`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def require(tool: str) -> str:
    """Path of a launcher; skip without it, except in CI (RLINF_CI=1) where it must be present."""
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("RLINF_CI"):
            pytest.fail(f"{tool} is required in CI but not found (.ci/run installs it)")
        pytest.skip(f"{tool} not installed")
    return path


def base_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.update(extra or {})
    return env


def run(
    cmd: list[str], timeout: float = 240, env: dict | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=cwd, env=base_env(env), capture_output=True, text=True, timeout=timeout
    )


def torchrun(nproc: int, config: str, *overrides: str, **kw) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "rlinf.launch",
        "--config",
        config,
        *overrides,
    ]
    return run(cmd, **kw)


def mpirun(nproc: int, config: str, *overrides: str, **kw) -> subprocess.CompletedProcess:
    exe = require("mpirun")
    cmd = [
        exe,
        "--oversubscribe",
        "--bind-to",
        "none",
        "-n",
        str(nproc),
        sys.executable,
        "-m",
        "rlinf.launch",
        "--config",
        config,
        *overrides,
    ]
    return run(cmd, **kw)


def read_metrics(out: Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` (``out`` is its output dir or the file itself)."""
    path = out if out.suffix == ".jsonl" else out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
