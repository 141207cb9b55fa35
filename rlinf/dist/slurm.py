"""Slurm job control from inside a run: am I in a Slurm job, and requeue it on preemption.

The sbatch scripts ask Slurm for `--signal=USR1@120`: two minutes before the time limit (or when
an operator runs `scancel --signal=USR1 <job>`) every task gets SIGUSR1. The runner finishes its
step, writes a checkpoint, then calls `requeue_current_job()` on one rank. Slurm puts the same
job id back in the queue and later runs the batch script again from the top, where
`runner.resume_dir=auto` resumes from the newest complete checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping

log = logging.getLogger(__name__)


def in_slurm_job(env: Mapping[str, str] | None = None) -> bool:
    """True inside a Slurm allocation (batch script, srun task or salloc shell)."""
    env = os.environ if env is None else env
    return bool(env.get("SLURM_JOB_ID"))


def restart_count(env: Mapping[str, str] | None = None) -> int:
    """How many times Slurm has requeued and restarted this job (0 on the first run)."""
    env = os.environ if env is None else env
    return int(env.get("SLURM_RESTART_COUNT") or 0)


def requeue_current_job(env: Mapping[str, str] | None = None, timeout_s: float = 60.0) -> bool:
    """Run `scontrol requeue $SLURM_JOB_ID`; return True when Slurm accepted it.

    Call it on one rank, after the checkpoint is complete: Slurm ends every task of the job
    right away, then starts the batch script again (after its requeue delay, about two minutes).
    Outside Slurm this logs a warning and returns False, so a runner can call it unconditionally.
    """
    env = os.environ if env is None else env
    if not in_slurm_job(env):
        log.warning(
            "not in a Slurm job (SLURM_JOB_ID is unset): nothing to requeue; start the run again "
            "with runner.resume_dir=auto to resume from the checkpoint just written"
        )
        return False
    job = env["SLURM_JOB_ID"]
    scontrol = shutil.which("scontrol", path=env.get("PATH"))
    if scontrol is None:
        log.error("cannot requeue Slurm job %s: scontrol is not on PATH on this node", job)
        return False
    log.warning(
        "requeueing Slurm job %s (scontrol requeue %s, restart %d): it will run its batch "
        "script again and resume from the newest checkpoint (runner.resume_dir=auto)",
        job,
        job,
        restart_count(env) + 1,
    )
    try:
        p = subprocess.run(
            [scontrol, "requeue", job], capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        log.error("scontrol requeue %s did not answer within %.0f s", job, timeout_s)
        return False
    if p.returncode != 0:
        log.error(
            "scontrol requeue %s failed (exit %d): %s; submit the job with --requeue (the "
            "sbatch scripts in slurm/ do) and check that the cluster allows requeueing "
            "(JobRequeue in slurm.conf)",
            job,
            p.returncode,
            (p.stderr or p.stdout).strip(),
        )
        return False
    return True
