"""The SPMD program under real launchers: check runs, world mismatch, failures, re-exec."""

import subprocess
import sys
import time

from distributed import free_port
from launchers import base_env, mpirun, run, torchrun


def test_torchrun_check_4rank_exits_zero():
    p = torchrun(4, "check_4rank.yaml")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "check passed: 4 ranks" in p.stderr
    assert (
        "rank 1 node 0" in p.stderr
        and "roles actor,rollout: proved actor(2) rollout(2) actor+rollout(3)" in p.stderr
    )


def test_mpirun_check_4rank_exits_zero():
    p = mpirun(4, "check_4rank.yaml")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "check passed: 4 ranks" in p.stdout + p.stderr


def test_world_that_does_not_match_the_plan_says_how_to_launch():
    p = torchrun(2, "check_4rank.yaml")
    assert p.returncode != 0
    assert "started 2 process(es) but the placement" in p.stderr
    assert "torchrun --standalone --nproc_per_node 4" in p.stderr


def test_single_process_without_launcher_runs_a_world_of_one():
    p = run(
        [
            sys.executable,
            "-m",
            "rlinf.launch",
            "--config",
            "check_4rank.yaml",
            "cluster.accelerators_per_node=1",
            "cluster.component_placement={actor: 0}",
        ]
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "check passed: 1 ranks" in p.stderr


def test_one_rank_fails_every_rank_exits_nonzero_fast_and_rank0_names_it():
    """Plain env ranks (no launcher that kills siblings): our watchdog alone must stop them."""
    port = free_port()
    procs = []
    t0 = time.monotonic()
    for rank in range(3):
        env = base_env(
            {
                "RANK": str(rank),
                "WORLD_SIZE": "3",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "RLINF_FAIL_RANK": "2",
            }
        )
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "rlinf.launch",
                    "--config",
                    "check_4rank.yaml",
                    "cluster.accelerators_per_node=3",
                    "cluster.component_placement={actor: 0-1, env: 2}",
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [p.communicate(timeout=90) for p in procs]
    elapsed = time.monotonic() - t0
    codes = [p.returncode for p in procs]
    assert all(c != 0 for c in codes), codes
    assert elapsed < 60, elapsed
    rank0_log = outs[0][1]
    assert "rank 2 failed: RuntimeError: injected failure on rank 2" in rank0_log, rank0_log[-2000:]


def test_failure_under_torchrun_exits_nonzero_within_60s():
    t0 = time.monotonic()
    p = torchrun(4, "check_4rank.yaml", env={"RLINF_FAIL_RANK": "3"}, timeout=90)
    assert p.returncode != 0
    assert time.monotonic() - t0 < 60
    assert "injected failure on rank 3" in p.stderr


def test_node_group_interpreter_and_env_vars_apply_before_start(tmp_path):
    # A second interpreter: a venv over this one (so rlinf and torch import), as a cluster's
    # node group would have its own.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "venv",
            "--system-site-packages",
            "--without-pip",
            str(tmp_path / "venv"),
        ],
        check=True,
    )
    interp = tmp_path / "venv" / "bin" / "python"
    cfg = tmp_path / "hetero.yaml"
    cfg.write_text(f"""
cluster:
  num_nodes: 1
  accelerator_type: cpu
  accelerators_per_node: 2
  component_placement: {{actor: 0, env: 1}}
  node_groups:
    - label: cpu
      node_ranks: 0
      env_configs:
        - node_ranks: 0
          python_interpreter_path: {interp}
          env_vars:
            - RLINF_TEST_MARK: hello
runner: {{task_type: check, logger: {{logger_backends: [console]}}}}
""")
    p = torchrun(2, str(cfg))
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"python {interp} RLINF_TEST_MARK=hello" in p.stderr
