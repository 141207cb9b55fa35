"""The sbatch scripts on a real Slurm: dry runs, a 2-node training job, preemption and requeue.

The local Slurm (../shared/tools/local-slurm.sh, started by .ci/run) emulates nodes n1, n2 on this
machine with 2 CPUs each, so a job of 2 nodes x 2 tasks fills it.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time

import pytest
from launchers import REPO, base_env, read_metrics
from slurm_jobs import TERMINAL, cancel, job_info, require_slurm, submit, wait

from rlinf.dist.slurm import in_slurm_job, requeue_current_job, restart_count

# 2 nodes x 2 CPU processes: env on both processes of node 0, rollout and actor on node 1.
CARTPOLE_2X2 = [
    "cluster.num_nodes=2",
    "cluster.accelerators_per_node=2",
    "cluster.component_placement={env: 0-1, rollout: 2, actor: 3}",
    "runner.val_check_interval=0",
    "runner.early_stop.metric=null",
    "algorithm.update_epoch=4",
]
# sbatch flags that fit the header of a GPU script onto the CPU-only local cluster.
CPU_2X2 = ["--nodes=2", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1"]


def _dry_run(script: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", f"slurm/{script}"],
        cwd=REPO,
        env=base_env({"RLINF_PLAN": "1", **env}),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_math_32node_dry_run_prints_256_rank_map_and_srun_line():
    p = _dry_run("train_math_32node.sh")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "world_size=256 num_nodes=32" in p.stdout
    # every one of the 256 ranks is accounted for: actor on nodes 0-15, rollout on 16-31
    assert re.search(r"actor +128 process\(es\): global ranks 0-127", p.stdout), p.stdout
    assert re.search(r"rollout +128 process\(es\): global ranks 128-255", p.stdout), p.stdout
    line = re.search(
        r"this script runs \(32 nodes x 8 tasks = 256 ranks\):\n\s+(srun .*)", p.stdout
    )
    assert line, p.stdout
    assert "--nodes=32 --ntasks-per-node=8" in line.group(1)
    assert "-m rlinf.launch --config math_grpo_32node.yaml runner.resume_dir=auto" in line.group(1)
    assert "warning" not in p.stderr


def test_math_32node_dry_run_as_json_lists_every_rank():
    p = _dry_run("train_math_32node.sh", RLINF_PLAN="json")
    assert p.returncode == 0, p.stdout + p.stderr
    plan = json.loads(p.stdout[: p.stdout.index("\nthis script runs")])
    assert [r["rank"] for r in plan["ranks"]] == list(range(256))
    assert [r["node"] for r in plan["ranks"]] == [n for n in range(32) for _ in range(8)]
    assert {r["device"] for r in plan["ranks"]} == {f"cuda:{i}" for i in range(8)}


def test_libero_dry_run_and_a_mismatched_header_is_reported():
    p = _dry_run("train_libero_2node.sh")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "srun --nodes=2 --ntasks-per-node=8" in p.stdout
    # the same script with a config that needs another size says so before anyone waits in a queue
    p = _dry_run("train_libero_2node.sh", CONFIG="check_4rank.yaml")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "the placement needs 4 ranks but the SBATCH header gives 16" in p.stderr


def test_hetero_dry_run_shows_how_each_node_group_starts():
    p = _dry_run("train_embodied_hetero.sh")
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert "world_size=530 num_nodes=18" in out
    assert "python /opt/venv/openpi/bin/python3  env GLOO_SOCKET_IFNAME=eth0" in out
    assert re.search(
        r"0-463 /usr/bin/env GLOO_SOCKET_IFNAME=eth0 .*/opt/venv/openpi/bin/python3", out
    )
    assert "--ntasks=530 --distribution=arbitrary" in out
    assert "<node0>  (x108)" in out


def test_requeue_outside_slurm_warns_and_does_nothing(caplog):
    env = {"PATH": "/usr/bin:/bin"}
    assert not in_slurm_job(env)
    assert restart_count({"SLURM_RESTART_COUNT": "2"}) == 2
    with caplog.at_level(logging.WARNING, logger="rlinf.dist.slurm"):
        assert requeue_current_job(env) is False
    assert "not in a Slurm job" in caplog.text
    assert "runner.resume_dir=auto" in caplog.text


@pytest.mark.slurm
def test_sbatch_2_nodes_x_2_tasks_trains_and_writes_metrics(tmp_path):
    require_slurm()
    out = tmp_path / "run"
    log = tmp_path / "slurm.out"
    job = submit(
        [*CPU_2X2, f"--output={log}", "slurm/train_libero_2node.sh", *CARTPOLE_2X2,
         "runner.max_steps=3", "runner.save_interval=0"],
        {"CONFIG": "cartpole_ppo.yaml", "RLINF_OUTPUT_DIR": str(out)},
    )  # fmt: skip
    info = wait(job, timeout=240)
    text = log.read_text() if log.exists() else ""
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text[-4000:]
    assert "srun --nodes=2 --ntasks-per-node=2 --kill-on-bad-exit=1" in text
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["env/return_mean"] > 0 and "train/policy_loss" in r for r in rows)
    assert (out / "checkpoints" / "global_step_3").is_dir()  # the final checkpoint


@pytest.mark.slurm
def test_sigusr1_checkpoints_requeues_and_the_job_resumes(tmp_path):
    require_slurm()
    out = tmp_path / "run"
    log = tmp_path / "slurm.out"
    job = submit(
        [*CPU_2X2, f"--output={log}", "slurm/train_libero_2node.sh", *CARTPOLE_2X2,
         "runner.max_steps=8", "runner.save_interval=100"],
        {"CONFIG": "cartpole_ppo.yaml", "RLINF_OUTPUT_DIR": str(out)},
    )  # fmt: skip
    try:
        metrics = out / "metrics.jsonl"
        deadline = time.monotonic() + 180
        while not (metrics.exists() and metrics.read_text().strip()):
            assert time.monotonic() < deadline, log.read_text() if log.exists() else "no output"
            assert job_info(job).get("JobState") in ("PENDING", "RUNNING"), log.read_text()
            time.sleep(0.2)
        # What Slurm does at --signal=USR1@120, sent now: every task of the job gets SIGUSR1.
        subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)
        # Slurm holds a requeued job for ~2 minutes before it may start again; let it go now.
        deadline = time.monotonic() + 120
        while int(job_info(job).get("Restarts", 0)) < 1:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        seen_pending = False
        while time.monotonic() < deadline:
            state = job_info(job).get("JobState")
            if state == "PENDING":
                seen_pending = True
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], timeout=30)
            elif seen_pending or state in TERMINAL:
                break
            time.sleep(0.5)
        info = wait(job, timeout=240)
    finally:
        cancel(job)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", text[-4000:]
    first, _, second = text.partition("restart 1: resuming from the newest checkpoint")
    assert second, text[-4000:]
    assert "received SIGUSR1" in first
    saved = re.findall(r"checkpoint saved: \S+/global_step_(\d+)", first)
    assert saved, first[-3000:]
    k = int(saved[-1])
    assert f"requeueing Slurm job {job}" in first
    assert 1 <= k < 8
    assert re.search(rf"resumed from \S+global_step_{k} at step {k}", second), second[-3000:]
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl")]
    assert steps == list(range(1, 9)), steps  # run 1 wrote 1..k, the resumed run k+1..8


@pytest.mark.slurm
def test_torchrun_sh_takes_its_rendezvous_from_slurm(tmp_path):
    require_slurm()
    log = tmp_path / "slurm.out"
    job = submit(
        ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=2", f"--output={log}", "--wrap",
         "bash launch/torchrun.sh --config check_4rank.yaml cluster.num_nodes=2 "
         f"cluster.accelerators_per_node=2 runner.output_dir={tmp_path}/run"],
    )  # fmt: skip
    info = wait(job, timeout=180)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED", text[-4000:]
    assert "[torchrun.sh node 0/2]" in text and "[torchrun.sh node 1/2]" in text
    assert "--master-addr n1" in text
    assert "check passed: 4 ranks" in text
    assert re.search(r"rank 3 node 1 host \S+ device cpu roles env,reward", text)
